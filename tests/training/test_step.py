"""The training step (``drsformer_fast.training.step``): run eagerly it is the training loop's
iteration bit for bit, and it holds nothing that a CUDA graph cannot record.

The loop around it (graphed on a stand-in backend, resume across graphed and eager runs) is tested
in ``test_train``."""

from __future__ import annotations

import contextlib
import copy
import importlib
import types

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from capture_safety import hazards
from conftest import GPU_MODE
from helpers import randn

from drsformer_fast.graphs import Captured
from drsformer_fast.training import step as step_mod
from drsformer_fast.training.step import GraphedStep, TrainStep, build_optimizer, prepare_optimizer

ADAMW = {"type": "AdamW", "lr": 3e-4, "weight_decay": 1e-4, "betas": [0.9, 0.999]}  # Options/Deraining.yml
TINY = {"dim": 8, "num_blocks": [1, 1, 1, 1], "heads": [1, 1, 1, 1], "ffn_expansion_factor": 2.66, "bias": False,
        "LayerNorm_type": "WithBias"}


def _iteration_as_the_loop_wrote_it(net, ema, optimizer, lq, gt, *, clip, decay, amp_dtype):
    """The training loop's iteration before the step had a module of its own, statement by statement."""
    optimizer.zero_grad(set_to_none=True)
    ctx = torch.autocast("cpu", dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    with ctx:
        out = net(lq)
    loss = 1.0 * F.l1_loss(out.float(), gt, reduction="mean")
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(net.parameters(), 0.01)
    optimizer.step()
    if ema is not None:
        with torch.no_grad():
            ema_params = dict(ema.named_parameters())
            for k, p in net.named_parameters():
                ema_params[k].mul_(decay).add_(p, alpha=1 - decay)
    return loss.detach()


def _tiny_net():
    from drsformer_fast.model import DRSformer

    torch.manual_seed(0)
    return DRSformer(**TINY).train()


CASES = {
    "plain": dict(clip=False, ema=False),
    "clip-ema": dict(clip=True, ema=True),
    # a graphed run's settings, on the CPU: the rates as float64 tensors, autocast without its cache
    "tensor-lr": dict(clip=True, ema=True, tensor_lr=True),
    "bf16-uncached": dict(clip=True, ema=True, amp=torch.bfloat16, uncached=True),
}


@pytest.mark.usefixtures("one_thread", "torch_path")
@pytest.mark.parametrize("case", CASES)
def test_eager_step_is_the_loops_iteration_bit_for_bit(case):
    c = CASES[case]
    decay, amp = 0.9, c.get("amp")
    nets = [_tiny_net(), _tiny_net()]
    emas = [copy.deepcopy(n).eval().requires_grad_(False) if c["ema"] else None for n in nets]
    okw = {k: v for k, v in ADAMW.items() if k != "type"}
    okw["betas"] = tuple(okw["betas"])
    by_hand = torch.optim.AdamW(nets[0].parameters(), **okw)  # as the loop built it
    optimizer = build_optimizer(list(nets[1].parameters()), ADAMW, capturable=False)
    prepare_optimizer(optimizer, capturable=False, lr_device=torch.device("cpu") if c.get("tensor_lr") else None)
    step = TrainStep(nets[1], nets[1], optimizer, grad_clip=c["clip"], ema=emas[1], ema_decay=decay, amp_dtype=amp,
                     uncached_autocast=c.get("uncached", False))
    for i in range(3):
        lq, gt = randn(2, 3, 16, 16, seed=10 + i), randn(2, 3, 16, 16, seed=20 + i)
        expected = _iteration_as_the_loop_wrote_it(nets[0], emas[0], by_hand, lq, gt, clip=c["clip"], decay=decay,
                                                   amp_dtype=amp)
        assert torch.equal(step(lq, gt), expected), i
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        assert torch.equal(a, b)
    if c["ema"]:
        for a, b in zip(emas[0].parameters(), emas[1].parameters()):
            assert torch.equal(a, b)
    for pa, pb in zip(nets[0].parameters(), nets[1].parameters()):
        sa, sb = by_hand.state[pa], optimizer.state[pb]
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k
    assert isinstance(optimizer.param_groups[0]["lr"], torch.Tensor) == bool(c.get("tensor_lr"))


# --------------------------------------------------------------------------------------------
# GraphedStep: which iterations run eagerly, are captured, replayed
# --------------------------------------------------------------------------------------------


class _CallsLikeCudaGraphs:
    """A capture backend that calls the step as ``CudaGraphBackend`` does: ``warmup`` times on a
    copy of the batch, then once while "capturing" (the step trains on nothing then: its result is
    the graph's output buffer, unset); a replay runs the step on the static input into that buffer."""

    def __init__(self):
        self.capturing = False
        self.released = self.freed = 0

    def capture(self, fn, example, warmup):
        static_input = tuple(t.clone() for t in example)
        for _ in range(warmup):
            fn(static_input)
        self.capturing = True
        try:
            static_output = fn(static_input)
        finally:
            self.capturing = False

        def replay():
            static_output.copy_(fn(static_input))

        def release():
            self.released += 1

        return Captured(static_input, static_output, replay, release)

    def free(self):
        self.freed += 1


class _RecordingStep:
    """Stands for TrainStep: "trains" on a batch by recording its number (every value of ``lq``)
    and returns it as the loss; during a capture it records nothing and returns NaN."""

    def __init__(self, backend):
        self.backend = backend
        self.trained: list[float] = []
        self.zeroed = 0
        self.optimizer = types.SimpleNamespace(zero_grad=self._zero_grad)

    def _zero_grad(self, set_to_none):
        self.zeroed += 1

    def __call__(self, lq, gt):
        if self.backend.capturing:
            return torch.tensor(float("nan"))
        self.trained.append(float(lq.flatten()[0]))
        return lq.flatten()[0] + gt.flatten()[0]


def test_graphed_step_trains_every_batch_once_in_order():
    """Per shape: the first iteration eager, the second a warm-up on its own batch (its loss
    returned) and a capture, the rest replays; a new shape drops the graph held. Every batch is
    trained on once, in order, and each iteration returns its own loss."""
    backend = _CallsLikeCudaGraphs()
    step = _RecordingStep(backend)
    graphed = GraphedStep(step, backend)
    a, b = (1, 3, 4, 4), (1, 3, 2, 2)
    shapes = [a, a, a, a, b, b, b, a, a]
    losses = [float(graphed(torch.full(s, float(i)), torch.zeros(s))) for i, s in enumerate(shapes)]
    assert step.trained == [float(i) for i in range(len(shapes))]
    assert losses == [float(i) for i in range(len(shapes))]
    assert graphed.stats == {"eager": 3, "captures": 3, "replays": 3, "dropped": 2}
    assert graphed.captured_shapes == [(a, a), (b, b), (a, a)]
    assert (backend.released, backend.freed, step.zeroed) == (2, 2, 2)  # gradients dropped with each graph


# --------------------------------------------------------------------------------------------
# capture safety: the training step as a graphed run builds it, on fake tensors
# --------------------------------------------------------------------------------------------


def _graphed_run_step(net, ema, lr_device, *, amp=None):
    """What the trainer builds for a graphed run on CUDA: AdamW with ``capturable=True``, float32
    rates on the device, gradient clipping, EMA, the autocast cache off."""
    ema.eval().requires_grad_(False)
    optimizer = build_optimizer(list(net.parameters()), ADAMW, capturable=True)
    prepare_optimizer(optimizer, capturable=True, lr_device=lr_device, lr_tensor_dtype=torch.float32)
    return TrainStep(net, net, optimizer, grad_clip=True, ema=ema, ema_decay=0.999, amp_dtype=amp,
                     uncached_autocast=True)


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_training_step_is_capture_safe(autocast, monkeypatch):
    """The default model (MEFC included; one block per level) trained as a graphed run trains it, every launcher in its
    sm_90 configuration, on fake CPU tensors: the forward, the L1 loss, backward through every fused
    op, gradient clipping, AdamW with ``capturable=True`` and a float32 rate tensor, the EMA update.
    No host sync, no tensor from Python data, no device copy, no RNG. The first step (which creates
    the optimizer's state, as a graphed run's first, eager, iteration does) is not recorded; the
    second is. What the CPU changes: AdamW's capturable device check is told that the CPU is
    capturable, and on fake tensors AdamW and clipping take their one-tensor-at-a-time paths (a GPU
    takes the multi-tensor ones: the next test records those)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from drsformer_fast.model import DRSformer
    from drsformer_fast.perf.bench import model_config
    from drsformer_fast.perf.launches import forced_triton_path

    adam_mod = importlib.import_module("torch.optim.adam")  # AdamW steps with its functions
    monkeypatch.setattr(adam_mod, "_get_capturable_supported_devices", lambda *a, **k: ["cuda", "cpu"])
    with FakeTensorMode(allow_non_fake_inputs=True), forced_triton_path(90):
        torch.manual_seed(0)
        # the default model's widths and heads (the launchers' GPU configurations), one block per level
        config = {**model_config("with-mefc"), "num_blocks": [1, 1, 1, 1]}
        net, ema = DRSformer(**config).train(), DRSformer(**config)  # fake parameters
        step = _graphed_run_step(net, ema, torch.device("cpu"), amp=torch.bfloat16 if autocast else None)
        lq, gt = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
        step(lq, gt)
        found, launches = hazards(step, lq, gt)
    assert found == []
    assert launches > 200  # forward and backward through the Triton launchers (on fake tensors)


class _Small(nn.Module):
    """Two parameters, made without random numbers (fake CUDA tensors cannot draw them without a GPU)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.full((3, 3, 3, 3), 0.1))
        self.scale = nn.Parameter(torch.ones(1, 3, 1, 1))


def test_clipping_optimizer_and_ema_on_the_gpu_paths_are_capture_safe(monkeypatch):
    """What follows backward in a graphed run's step (``TrainStep.update``), on fake CUDA tensors
    (no GPU needed), in the multi-tensor (``foreach``) paths that PyTorch picks for CUDA tensors:
    gradient clipping, AdamW with ``capturable=True`` (step counts on the device) and a float32
    rate tensor on the device, the EMA update. Fake tensors are not of the types PyTorch's foreach
    checks accept, so those checks are told they are; autograd cannot run on fake CUDA tensors
    without a GPU, so the gradients are set by hand (the test above covers forward and backward)."""
    import torch.optim.optimizer as optimizer_mod
    import torch.utils._foreach_utils as foreach_utils
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    monkeypatch.setattr(foreach_utils, "_foreach_supported_types", [torch.Tensor, FakeTensor])
    monkeypatch.setattr(optimizer_mod, "_foreach_supported_types", [torch.Tensor, nn.Parameter, FakeTensor])
    ops = []
    with FakeTensorMode(allow_non_fake_inputs=True):
        cuda = torch.device("cuda", 0)
        with cuda:
            net, ema = _Small().train(), _Small()
        step = _graphed_run_step(net, ema, cuda)
        for p in net.parameters():
            p.grad = torch.full_like(p, 0.01)
        step.update()  # the optimizer's state is created (a graphed run's first, eager, iteration)
        assert all(t.device == cuda for t in step.optimizer.state[net.scale].values())
        assert step.optimizer.param_groups[0]["lr"].device == cuda
        found, _ = hazards(step.update, ops=ops)
    assert found == []
    names = set(ops)
    assert {"_foreach_norm", "_foreach_mul_", "_foreach_addcdiv_", "_foreach_div_"} <= names, sorted(names)


def test_capture_backend_is_cuda_graphs_on_cuda_only():
    assert step_mod.capture_backend(torch.device("cpu")) is None
    backend = step_mod.capture_backend(torch.device("cuda", 0))  # constructing it touches no GPU
    assert backend.capture_error_mode == "thread_local"


@pytest.mark.skipif(not GPU_MODE, reason="needs an NVIDIA GPU (DRSFORMER_FAST_TEST_GPU=1)")
def test_cuda_graphed_steps_give_what_eager_steps_give():
    """On a GPU, the real capture backend: 6 iterations over two patch sizes (per size: eager,
    warm-up and capture, replay) against the same steps run eagerly with the same optimizer (capturable
    AdamW, a float32 rate tensor that changes every iteration), clipping and EMA."""
    from imaging import TINY

    from drsformer_fast.model import DRSformer

    cuda = torch.device("cuda")
    runs = []
    for graphed in (False, True):
        torch.manual_seed(0)
        net = DRSformer(**TINY).to(cuda).train()
        ema = copy.deepcopy(net)
        step = _graphed_run_step(net, ema, cuda)
        run = GraphedStep(step, step_mod.capture_backend(cuda)) if graphed else step
        losses = []
        for i, size in enumerate([16, 16, 16, 8, 8, 8]):
            step.optimizer.param_groups[0]["lr"].fill_(3e-4 * (1 - i / 10))
            lq, gt = randn(2, 3, size, size, seed=i, device=cuda), randn(2, 3, size, size, seed=100 + i, device=cuda)
            losses.append(float(run(lq, gt)))
        runs.append((losses, [t.detach().clone() for t in (*net.parameters(), *ema.parameters())]))
        if graphed:
            assert run.stats == {"eager": 2, "captures": 2, "replays": 2, "dropped": 1}
    assert runs[1][0] == pytest.approx(runs[0][0], rel=1e-5)
    for eager, replayed in zip(runs[0][1], runs[1][1]):
        torch.testing.assert_close(replayed, eager, rtol=1e-5, atol=1e-7)
