"""The learning-rate schedules of the original's ``basicsr/models/lr_scheduler.py`` (same formulas,
same step convention), and the linear warm-up of its ``update_learning_rate``.

Step convention (the original's training loop): during iteration ``i`` (1-based) the scheduler has
been stepped ``i - 1`` times, i.e. its ``last_epoch`` is ``i - 1``; during warm-up
(``i < warmup_iter``) the learning rate is ``initial_lr * i / warmup_iter`` instead.

- ``CosineAnnealingRestartCyclicLR(periods, restart_weights, eta_mins)``: with cumulative periods
  ``c_k``, the cycle ``k`` is the first with ``last_epoch <= c_k``;
  ``lr = eta_min_k + w_k * (base - eta_min_k) * (1 + cos(pi * (last_epoch - c_{k-1}) / period_k)) / 2``.
- ``CosineAnnealingRestartLR(periods, restart_weights, eta_min)``: the same with one ``eta_min``.
- ``MultiStepRestartLR`` / ``MultiStepLR(milestones, gamma, restarts, restart_weights)``: at a restart
  ``initial_lr * weight``; at a milestone the previous rate times ``gamma`` (once per occurrence).
- ``TrueCosineAnnealingLR(T_max, eta_min)``: PyTorch's ``CosineAnnealingLR``.
- ``LinearLR``: ``initial_lr * (1 - last_epoch / total_iter)``.
- ``VibrateLR``: the original's triangular schedule with a decaying envelope over ``total_iter``.

A learning rate is a Python float in each param group, or, where the training step is captured in
a CUDA graph (the graph would freeze a float), a 0-d tensor on the device (:func:`lrs_as_tensors`)
that every update writes in place: PyTorch's ``LRScheduler.step`` fills a tensor rate, so the
schedules here (which compute floats from the floats ``initial_lr``, or chain from ``group["lr"]``)
do too, and the warm-up goes through :func:`set_lr`. Rates are read as floats (``float(g["lr"])``)
only where they are printed or saved: :func:`with_float_lrs` gives the state_dicts that training
states hold, the same whichever form the run used.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler

__all__ = ["build_scheduler", "warmup_lrs", "cosine_restart_lr", "set_lr", "lrs_as_tensors",
           "lrs_as_floats", "with_float_lrs"]


def _cycle(last_epoch: int, cumulative: list[int]) -> int:
    for i, c in enumerate(cumulative):
        if last_epoch <= c:
            return i
    raise ValueError(f"iteration {last_epoch} is past the last period (cumulative periods {cumulative})")


def cosine_restart_lr(last_epoch: int, base_lr: float, periods, restart_weights, eta_mins) -> float:
    """The learning rate of CosineAnnealingRestart(Cyclic)LR at ``last_epoch``."""
    cumulative = [sum(periods[: i + 1]) for i in range(len(periods))]
    k = _cycle(last_epoch, cumulative)
    start = 0 if k == 0 else cumulative[k - 1]
    eta_min = eta_mins[k]
    return eta_min + restart_weights[k] * 0.5 * (base_lr - eta_min) * (
        1 + math.cos(math.pi * ((last_epoch - start) / periods[k])))


class CosineAnnealingRestartCyclicLR(LRScheduler):
    def __init__(self, optimizer, periods, restart_weights=(1,), eta_mins=(0.0,), last_epoch=-1):
        self.periods = list(periods)
        self.restart_weights = list(restart_weights)
        self.eta_mins = list(eta_mins)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        return [cosine_restart_lr(self.last_epoch, b, self.periods, self.restart_weights, self.eta_mins)
                for b in self.base_lrs]


class CosineAnnealingRestartLR(CosineAnnealingRestartCyclicLR):
    def __init__(self, optimizer, periods, restart_weights=(1,), eta_min=0.0, last_epoch=-1):
        super().__init__(optimizer, periods, restart_weights, [eta_min] * len(periods), last_epoch)


class MultiStepRestartLR(LRScheduler):
    def __init__(self, optimizer, milestones, gamma=0.1, restarts=(0,), restart_weights=(1,), last_epoch=-1):
        self.milestones: dict[int, int] = {}
        for m in milestones:
            self.milestones[int(m)] = self.milestones.get(int(m), 0) + 1
        self.gamma = gamma
        self.restarts = list(restarts)
        self.restart_weights = list(restart_weights)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        groups = self.optimizer.param_groups
        if self.last_epoch in self.restarts:
            w = self.restart_weights[self.restarts.index(self.last_epoch)]
            return [g["initial_lr"] * w for g in groups]
        if self.last_epoch not in self.milestones:
            return [g["lr"] for g in groups]
        return [g["lr"] * self.gamma ** self.milestones[self.last_epoch] for g in groups]


class LinearLR(LRScheduler):
    def __init__(self, optimizer, total_iter, last_epoch=-1):
        self.total_iter = total_iter
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        weight = 1 - self.last_epoch / self.total_iter
        return [weight * g["initial_lr"] for g in self.optimizer.param_groups]


class VibrateLR(LRScheduler):
    def __init__(self, optimizer, total_iter, last_epoch=-1):
        self.total_iter = total_iter
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        process = self.last_epoch / self.total_iter
        f = 0.1
        if process < 3 / 8:
            f = 1 - process * 8 / 3
        elif process < 5 / 8:
            f = 0.2
        period = self.total_iter // 80
        half = period // 2
        t = self.last_epoch % period
        f2 = t / half
        if t >= half:
            f2 = 2 - f2
        weight = f * f2
        if self.last_epoch < half:
            weight = max(0.1, weight)
        return [weight * g["initial_lr"] for g in self.optimizer.param_groups]


def build_scheduler(optimizer: torch.optim.Optimizer, sched_opt: dict, total_iter: int) -> LRScheduler:
    """The scheduler ``train.scheduler`` names (options already validated)."""
    kw = {k: v for k, v in sched_opt.items() if k != "type"}
    stype = sched_opt["type"]
    if stype in ("MultiStepRestartLR", "MultiStepLR"):
        return MultiStepRestartLR(optimizer, **kw)
    if stype == "CosineAnnealingRestartLR":
        return CosineAnnealingRestartLR(optimizer, **kw)
    if stype == "CosineAnnealingRestartCyclicLR":
        return CosineAnnealingRestartCyclicLR(optimizer, **kw)
    if stype == "TrueCosineAnnealingLR":
        return CosineAnnealingLR(optimizer, **kw)
    if stype == "LinearLR":
        return LinearLR(optimizer, total_iter)
    if stype == "VibrateLR":
        return VibrateLR(optimizer, total_iter)
    raise ValueError(f"unknown scheduler {stype!r}")


def warmup_lrs(optimizer: torch.optim.Optimizer, current_iter: int, warmup_iter: int) -> list[float] | None:
    """The original's linear warm-up: ``initial_lr / warmup_iter * current_iter`` while
    ``current_iter < warmup_iter``; None otherwise (the scheduler's rate stands)."""
    if current_iter < warmup_iter:
        return [g["initial_lr"] / warmup_iter * current_iter for g in optimizer.param_groups]
    return None


def set_lr(group: dict, value: float) -> None:
    """``group["lr"] = value``, written in place when the rate is a tensor (as ``LRScheduler.step``
    does): a captured optimizer step reads the tensor it was captured with."""
    if isinstance(group["lr"], torch.Tensor):
        group["lr"].fill_(value)
    else:
        group["lr"] = value


def lrs_as_tensors(optimizer: torch.optim.Optimizer, device: torch.device, dtype: torch.dtype) -> None:
    """Every group's rate as a 0-d ``dtype`` tensor on ``device`` (same value, rounded to ``dtype``);
    ``initial_lr`` stays a float."""
    for g in optimizer.param_groups:
        g["lr"] = torch.tensor(float(g["lr"]), dtype=dtype, device=device)


def lrs_as_floats(optimizer: torch.optim.Optimizer) -> None:
    """Every group's rate as a Python float."""
    for g in optimizer.param_groups:
        g["lr"] = float(g["lr"])


_LR_LISTS = ("base_lrs", "_last_lr")  # a scheduler's state_dict keys that hold one rate per group


def with_float_lrs(state: dict) -> dict:
    """A shallow copy of an optimizer's or a scheduler's ``state_dict()`` with every learning rate
    (the groups' ``lr`` and ``initial_lr``, a scheduler's ``base_lrs`` and ``_last_lr``) a Python
    float; the state tensors are shared, not copied."""
    out = dict(state)
    if "param_groups" in out:
        out["param_groups"] = [{k: float(v) if k in ("lr", "initial_lr") else v for k, v in g.items()}
                               for g in out["param_groups"]]
    for key in _LR_LISTS:
        if key in out:
            out[key] = [float(v) for v in out[key]]
    return out
