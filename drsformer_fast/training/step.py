"""One training iteration, run eagerly (:class:`TrainStep`) or replayed from a CUDA graph
(:class:`GraphedStep`).

:class:`TrainStep` is the body of the training loop's iteration: ``zero_grad(set_to_none=True)``,
the forward (under autocast for bf16 and fp16), ``loss_weight * l1_loss(out.float(), gt,
reduction)``, backward, ``clip_grad_norm_(parameters, 0.01)`` when ``use_grad_clip``, the optimizer
step (through the GradScaler under fp16) and the EMA update of the parameters
(``ema_p.mul_(decay).add_(p, alpha=1 - decay)``). It returns the loss as a tensor and reads
nothing back on the host.

:class:`GraphedStep` serves the same step from CUDA graphs. On a GPU the fast model's eager
iteration is bound by the host (about 960 Triton launches besides the custom-op dispatches and the
optimizer's and the EMA's launches, each paying Python and launch overhead); a replayed graph costs
two copies into its input buffers and one launch. A graph belongs to one pair of input shapes
(patch size and mini-batch, which a progressive schedule changes) and one is held at a time:

1. the first iteration with new shapes runs eagerly (Triton compiles, cuDNN autotunes: neither may
   happen during a capture); the graph of the previous shapes, if any, is dropped first;
2. the second runs eagerly on a side stream (the warm-up a capture needs), then the step is captured
   into static ``lq``/``gt`` buffers; the step sets the gradients to None first, so that backward
   allocates them in the graph's memory pool, and every replay overwrites them;
3. every later iteration copies its batch into the buffers and replays.

Warm-up iterations are real steps on real data and a capture runs nothing, so the iterations and
their data are those of an eager run, none skipped or repeated.

What a capture needs from the rest of the loop (:func:`build_optimizer`, :func:`prepare_optimizer`):
Adam/AdamW built with ``capturable=True`` (its step count lives on the GPU; the eager iterations of
a graphed run use it too, so that eager and replayed steps compute alike) and the learning rates as
0-d tensors on the device, written in place by the schedulers and the warm-up
(``schedulers.set_lr``): a Python float would be frozen into the graph. The step holds nothing that
a graph cannot record: no host sync, no tensor from Python data, no device copy, no RNG (tested on
fake tensors with the GPU's launchers). Under autocast a graphed run's forward runs with the
weight-cast cache off (``graphs._uncached_autocast``).

The capture backend is :class:`~drsformer_fast.graphs.CudaGraphBackend` (:func:`capture_backend`),
the one inference uses; the tests replace it with a stand-in that "replays" by running the step
eagerly on the static buffers, on the CPU.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn.functional as F

from ..graphs import CaptureBackend, Captured, CudaGraphBackend, _uncached_autocast
from .options import GRAD_CLIP_MAX_NORM
from .schedulers import lrs_as_floats, lrs_as_tensors

__all__ = ["TrainStep", "GraphedStep", "capture_backend", "build_optimizer", "prepare_optimizer", "lr_dtype"]

# PyTorch warns once when a capturable optimizer steps outside a capture: a graphed run's eager
# iterations do so on purpose
_CAPTURABLE_UNCAPTURED = "This instance was constructed with capturable=True"


def capture_backend(device: torch.device) -> CaptureBackend | None:
    """What captures the training step on ``device``: CUDA graphs on a CUDA device, nothing
    elsewhere (the tests put a stand-in here)."""
    if device.type != "cuda":
        return None
    return CudaGraphBackend(capture_error_mode="thread_local")


def lr_dtype(device: torch.device) -> torch.dtype:
    """The dtype of the learning-rate tensors of a graphed run: float32 on CUDA, the parameters'
    dtype, so that Adam's multi-tensor kernels keep their fast path (a float64 rate sends
    ``_foreach_mul_`` / ``_foreach_div_`` to a per-tensor loop); float64 elsewhere (a stand-in
    backend on the CPU), where the optimizer reads the rate as a Python number: exactly the float."""
    return torch.float32 if device.type == "cuda" else torch.float64


def build_optimizer(params, optim_opt: dict, *, capturable: bool) -> torch.optim.Optimizer:
    """``train.optim_g`` (Adam or AdamW, options validated), ``capturable=True`` when asked."""
    kw = {k: v for k, v in optim_opt.items() if k != "type"}
    if "betas" in kw:
        kw["betas"] = tuple(kw["betas"])
    if capturable:
        kw["capturable"] = True
    return (torch.optim.AdamW if optim_opt["type"] == "AdamW" else torch.optim.Adam)(params, **kw)


def prepare_optimizer(optimizer: torch.optim.Optimizer, *, capturable: bool, lr_device: torch.device | None = None,
                      lr_tensor_dtype: torch.dtype | None = None) -> None:
    """Make ``optimizer`` what this run steps with, after construction or ``load_state_dict`` (a
    state saved by a graphed run loads in an eager one and the other way round): every group's
    ``capturable`` flag, the step counts where that flag keeps them (the parameters' device, or the
    CPU), and the learning rates as 0-d tensors on ``lr_device`` (``lr_tensor_dtype``, by default
    :func:`lr_dtype`) or, with None, Python floats."""
    for g in optimizer.param_groups:
        g["capturable"] = capturable
        for p in g["params"]:
            state = optimizer.state.get(p)
            if state and torch.is_tensor(state.get("step")):
                where = p.device if capturable else torch.device("cpu")
                if state["step"].device != where:
                    state["step"] = state["step"].to(where)
    if lr_device is None:
        lrs_as_floats(optimizer)
    else:
        lrs_as_tensors(optimizer, lr_device, lr_tensor_dtype or lr_dtype(lr_device))


class TrainStep:
    """One training iteration on ``(lq, gt)`` (see the module docstring); returns the loss tensor.

    ``model`` is what the forward calls (``net`` itself, or ``net`` wrapped by DDP or
    ``torch.compile``); ``net``'s parameters are clipped and averaged into ``ema``.
    ``uncached_autocast``: the forward's autocast without its weight-cast cache (graphed runs)."""

    def __init__(self, model, net: torch.nn.Module, optimizer: torch.optim.Optimizer, *, loss_weight: float = 1.0,
                 reduction: str = "mean", grad_clip: bool = False, ema: torch.nn.Module | None = None,
                 ema_decay: float = 0.0, amp_dtype: torch.dtype | None = None, scaler=None,
                 uncached_autocast: bool = False):
        self.model, self.net, self.optimizer = model, net, optimizer
        self.loss_weight, self.reduction = loss_weight, reduction
        self.amp_dtype, self.scaler = amp_dtype, scaler
        self.uncached_autocast = uncached_autocast
        self.device_type = next(net.parameters()).device.type
        self._clip = list(net.parameters()) if grad_clip else None
        self.ema_decay = ema_decay
        self._ema: list[tuple[torch.Tensor, torch.Tensor]] = []
        if ema is not None:
            ema_params = dict(ema.named_parameters())
            self._ema = [(ema_params[k], p) for k, p in net.named_parameters()]
        self._quiet = all(g.get("capturable", False) for g in optimizer.param_groups)

    def __call__(self, lq: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        out = self._forward(lq)
        loss = self.loss_weight * F.l1_loss(out.float(), gt, reduction=self.reduction)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        self.update()
        return loss.detach()

    def update(self) -> None:
        """What follows backward: clipping, the optimizer step, the EMA update."""
        if self.scaler is not None:
            if self._clip is not None:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self._clip, GRAD_CLIP_MAX_NORM)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if self._clip is not None:
                torch.nn.utils.clip_grad_norm_(self._clip, GRAD_CLIP_MAX_NORM)
            self._optimizer_step()
        if self._ema:
            decay = self.ema_decay
            with torch.no_grad():
                for ema_p, p in self._ema:
                    ema_p.mul_(decay).add_(p, alpha=1 - decay)

    def _forward(self, lq):
        if self.amp_dtype is None:
            return self.model(lq)
        with torch.autocast(self.device_type, dtype=self.amp_dtype):
            with _uncached_autocast(self.device_type) if self.uncached_autocast else contextlib.nullcontext():
                return self.model(lq)

    def _optimizer_step(self) -> None:
        if not self._quiet:
            self.optimizer.step()
            return
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_CAPTURABLE_UNCAPTURED)
            self.optimizer.step()


class GraphedStep:
    """``step`` served by CUDA graphs, one per pair of input shapes, one held at a time (see the
    module docstring). ``stats`` counts eager iterations, captures (each one after its warm-up
    iteration), replays and graphs dropped; ``captured_shapes`` lists the shapes captured, in order."""

    def __init__(self, step: TrainStep, backend: CaptureBackend):
        self.step = step
        self._backend = backend
        self._shapes: tuple | None = None  # the shapes of the last iteration
        self._captured: Captured | None = None
        self.stats = {"eager": 0, "captures": 0, "replays": 0, "dropped": 0}
        self.captured_shapes: list[tuple] = []

    def __call__(self, lq: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        shapes = (tuple(lq.shape), tuple(gt.shape))
        if self._captured is not None:
            if shapes == self._shapes:
                static_lq, static_gt = self._captured.static_input
                static_lq.copy_(lq)
                static_gt.copy_(gt)
                self._captured.replay()
                self.stats["replays"] += 1
                return self._captured.static_output
            self.drop()
        if shapes != self._shapes:  # first iteration with these shapes: eager
            self._shapes = shapes
            self.stats["eager"] += 1
            return self.step(lq, gt)
        losses = []

        def run(inputs):
            loss = self.step(*inputs)
            losses.append(loss)
            return loss

        # the warm-up is this iteration's step (on a copy of its batch); the capture runs nothing
        self._captured = self._backend.capture(run, (lq, gt), warmup=1)
        self.stats["captures"] += 1
        self.captured_shapes.append(shapes)
        return losses[0]

    def drop(self) -> None:
        """Let go of the graph held (its gradients first: they live in the graph's memory pool)."""
        if self._captured is None:
            return
        self.step.optimizer.zero_grad(set_to_none=True)
        captured, self._captured = self._captured, None
        captured.release()
        self._backend.free()
        self.stats["dropped"] += 1
