"""CUDA graphs for inference (``drsformer_fast.graphs``).

On the CPU the graph cache runs on a stand-in capture backend whose "replay" runs the module
eagerly into the static output buffer: keying, warm-up, eviction, fallbacks and the copies in and
out are the real code's. Capture safety (nothing in a forward that a CUDA graph cannot record) is
checked on fake tensors with the real launchers in their sm_90 configuration. With
``DRSFORMER_FAST_TEST_GPU=1`` the real CUDA backend runs the fast model too.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from capture_safety import hazards
from conftest import GPU_MODE
from helpers import randn

from drsformer_fast import graphs
from drsformer_fast.graphs import Captured, GraphedModule, graph_key


class StandIn:
    """A capture backend for the CPU: records what was asked, replays by running the module."""

    def __init__(self):
        self.warmups = 0
        self.captured: list[tuple] = []
        self.released = 0
        self.freed = 0

    def capture(self, fn, example, warmup):
        for _ in range(warmup):
            fn(example)
            self.warmups += 1
        static_input = example.detach().clone()
        static_output = fn(static_input)
        self.captured.append(tuple(example.shape))

        def replay():
            static_output.copy_(fn(static_input))

        def release():
            self.released += 1

        return Captured(static_input, static_output, replay, release)

    def free(self):
        self.freed += 1


class Counting(nn.Module):
    """A small conv net that counts its forwards."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.conv(x.to(self.conv.weight.dtype)).relu().to(x.dtype) + x


def _graphed(max_graphs=4, warmup=1):
    backend = StandIn()
    model = Counting().eval()
    return GraphedModule(model, max_graphs=max_graphs, warmup=warmup, backend=backend), model, backend


def test_first_call_eager_second_captures_then_replays():
    g, model, backend = _graphed(warmup=2)
    x = randn(1, 3, 9, 13, seed=1)
    expected = model(x)
    model.calls = 0
    with torch.no_grad():
        outs = [g(randn(1, 3, 9, 13, seed=1)) for _ in range(4)]
    assert g.stats == {"captures": 1, "replays": 3, "evictions": 0, "eager": 1}
    assert backend.warmups == 2 and backend.captured == [(1, 3, 9, 13)]
    # 1 eager + 2 warm-up + 1 capture + 3 replays
    assert model.calls == 7
    for out in outs:
        torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_replay_returns_a_copy_and_reads_the_new_input():
    g, model, _ = _graphed()
    a, b = randn(2, 3, 8, 8, seed=2), randn(2, 3, 8, 8, seed=3)
    with torch.no_grad():
        g(a)
        out_a = g(a)  # captured and replayed
        out_b = g(b)  # replayed with another input of the same key
    assert g.stats["replays"] == 2
    torch.testing.assert_close(out_a, model(a), rtol=0, atol=0)  # not overwritten by the next replay
    torch.testing.assert_close(out_b, model(b), rtol=0, atol=0)
    assert out_a.data_ptr() != out_b.data_ptr()


def test_every_key_field_gets_its_own_graph():
    g, _, backend = _graphed(max_graphs=16)
    x = randn(1, 3, 8, 8, seed=4)

    def twice(t):
        g(t)
        g(t)

    keys = set()
    with torch.no_grad():
        twice(x)
        keys.add(graph_key(x))
        twice(randn(1, 3, 8, 16, seed=5))  # shape
        twice(randn(2, 3, 8, 8, seed=5))  # batch
        twice(x.double())  # dtype
        with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast
            twice(x)
            keys.add(graph_key(x))
        matmul = torch.backends.cuda.matmul
        saved = torch.get_float32_matmul_precision(), getattr(matmul, "fp32_precision", None)
        try:
            torch.set_float32_matmul_precision("medium" if saved[0] != "medium" else "high")  # precision
            twice(x)
            keys.add(graph_key(x))
        finally:
            torch.set_float32_matmul_precision(saved[0])
            if saved[1] is not None:
                matmul.fp32_precision = saved[1]
        twice(x)  # back to the first key: a replay, no capture
    assert len(backend.captured) == 6 and g.stats["captures"] == 6
    assert len(keys) == 3
    assert g.stats["replays"] == 8


def test_tf32_setting_is_part_of_the_key():
    cudnn = torch.backends.cudnn
    x = randn(1, 3, 8, 8, seed=6)
    if hasattr(getattr(cudnn, "conv", None), "fp32_precision"):
        saved = cudnn.conv.fp32_precision
        flip = "ieee" if saved == "tf32" else "tf32"

        def set_flag(v):
            cudnn.conv.fp32_precision = v
    else:
        saved, flip = cudnn.allow_tf32, not cudnn.allow_tf32

        def set_flag(v):
            cudnn.allow_tf32 = v
    before = graph_key(x)
    try:
        set_flag(flip)
        after = graph_key(x)
    finally:
        set_flag(saved)
    assert before != after and graph_key(x) == before


def test_least_recently_used_graph_is_evicted():
    g, _, backend = _graphed(max_graphs=2)
    shapes = [(1, 3, 8, 8), (1, 3, 8, 16), (1, 3, 16, 8)]
    xs = [randn(*s, seed=i) for i, s in enumerate(shapes)]
    with torch.no_grad():
        for x in xs[:2]:
            g(x)
            g(x)
        g(xs[0])  # xs[0] most recently used: xs[1] goes first
        g(xs[2])
        g(xs[2])
    assert [k.shape for k in g.graph_keys] == [shapes[0], shapes[2]]
    assert g.stats["evictions"] == 1 and backend.released == 1
    with torch.no_grad():
        out = g(xs[1])  # seen before: captured afresh, never another shape's graph
    torch.testing.assert_close(out, g.module(xs[1]), rtol=0, atol=0)
    assert backend.captured[-1] == shapes[1] and g.stats["evictions"] == 2
    g.clear()
    assert g.graph_keys == [] and backend.released == 4 and backend.freed == 1


def test_calls_a_graph_cannot_serve_run_eagerly():
    g, model, backend = _graphed()
    x = randn(1, 3, 8, 8, seed=7)
    for _ in range(3):  # autograd recording: the parameters require grad
        out = g(x)
        assert out.requires_grad
    model.train()
    with torch.no_grad():
        for _ in range(3):
            g(x)
    assert backend.captured == [] and g.stats["eager"] == 6
    # the CUDA backend serves CUDA inputs only
    cuda_only = GraphedModule(Counting().eval())
    with torch.no_grad():
        for _ in range(3):
            cuda_only(x)
    assert cuda_only.stats["eager"] == 3 and cuda_only.graph_keys == []


def test_replaced_parameters_drop_every_graph():
    g, model, backend = _graphed()
    x = randn(1, 3, 8, 8, seed=8)
    with torch.no_grad():
        g(x)
        g(x)
        model.conv.weight.mul_(2)  # in place: the graph reads the new values
        torch.testing.assert_close(g(x), model(x), rtol=0, atol=0)
        assert g.stats["captures"] == 1
        model.conv.weight = nn.Parameter(model.conv.weight * 0.5)  # new memory: graphs dropped
        out = g(x)
    torch.testing.assert_close(out, model(x), rtol=0, atol=0)
    assert g.graph_keys == [] and backend.released == 1 and g.stats["eager"] == 2


def test_bad_settings_are_refused():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_graphs"):
            GraphedModule(Counting(), max_graphs=bad)
        with pytest.raises(ValueError, match="warmup"):
            GraphedModule(Counting(), warmup=bad)


def test_tiled_derain_captures_one_graph_for_every_tile():
    from drsformer_fast.images.inference import derain_tensor

    g, model, backend = _graphed()
    img = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(9))
    expected = derain_tensor(model, img, tile=16, tile_overlap=4)
    out = derain_tensor(g, img, tile=16, tile_overlap=4)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert backend.captured == [(1, 3, 16, 16)]
    tiles = len(range(0, 40 - 16, 12)) + 1, len(range(0, 56 - 16, 12)) + 1
    assert g.stats["replays"] == tiles[0] * tiles[1] - 1


def test_graphed_is_the_public_entry_point():
    import drsformer_fast

    model = Counting().train()
    g = drsformer_fast.graphed(model, max_graphs=3)
    assert isinstance(g, GraphedModule) and not model.training and g.max_graphs == 3


# --------------------------------------------------------------------------------------------
# capture safety: what a CUDA graph cannot record, looked for in the real forward
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, why", [
    (lambda x: x * torch.tensor([2.0]), "host-to-device"),
    (lambda x: x + torch.rand_like(x), "random"),
    (lambda x: x.to("meta"), "copy between devices"),
    (lambda x: x if bool((x > 0).any()) else -x, "on the host"),
    (lambda x: x * x.sum().item(), "on the host"),
], ids=["from-python", "rng", "device-copy", "bool", "item"])
def test_hazard_recorder_finds_what_a_capture_cannot_hold(bad, why):
    found, _ = hazards(bad, torch.ones(2))
    assert len(found) == 1 and why in found[0], found


def test_hazard_recorder_passes_a_clean_forward():
    assert hazards(lambda t: (t * 2 + 1).to(torch.float16), torch.ones(2))[0] == []


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_inference_forward_is_capture_safe(autocast):
    """The default model's inference forward (MEFC included), every launcher in its sm_90
    configuration: no host sync, no tensor from Python data, no device copy, no RNG."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from drsformer_fast.perf.launches import build_module, forced_triton_path

    model = build_module("model", 48, 1).eval()
    with FakeTensorMode(allow_non_fake_inputs=True), forced_triton_path(90), torch.no_grad():
        x = torch.rand(1, 3, 64, 48)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
        with ctx:
            found, launches = hazards(model, x)
    assert found == []
    assert launches > 100  # the Triton launchers ran (on fake tensors)


@pytest.mark.skipif(not GPU_MODE, reason="needs an NVIDIA GPU (DRSFORMER_FAST_TEST_GPU=1)")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graphs_give_what_eager_gives(precision):
    from imaging import TINY

    from drsformer_fast.images.inference import derain_tensor
    from drsformer_fast.model import DRSformer

    torch.manual_seed(0)
    model = DRSformer(**TINY).cuda().eval()
    g = graphs.graphed(model)
    img = torch.rand(1, 3, 45, 61, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    expected = derain_tensor(model, img, precision=precision, tile=32, tile_overlap=8)
    out = derain_tensor(g, img, precision=precision, tile=32, tile_overlap=8)
    assert g.stats["captures"] == 1 and g.stats["replays"] > 1
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_replaced_submodule_drops_every_graph():
    """A submodule swapped in (what ``patch()`` does) brings tensors the graphs never read."""
    g, model, backend = _graphed()
    x = randn(1, 3, 8, 8, seed=10)
    with torch.no_grad():
        g(x)
        g(x)
        assert g.stats["captures"] == 1
        torch.manual_seed(1)
        model.conv = nn.Conv2d(3, 3, 3, padding=1)
        out = g(x)
    torch.testing.assert_close(out, model(x), rtol=0, atol=0)
    assert g.graph_keys == [] and backend.released == 1
