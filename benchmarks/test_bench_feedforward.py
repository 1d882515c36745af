"""Mixed-scale feed-forward (MSFN) at every block shape of the default model: the original module in
eager mode and under torch.compile, and the fused op; forward alone and forward + backward.

``extra_info`` records the shape, the variant, the DRAM bytes of the variant from
``kernels.feedforward.traffic_bytes`` (activations; for the original's backward an estimate) and the
peak memory of one call, so GB/s and memory can be read off.
"""

import pytest
import torch
from conftest import requires_gpu, run_cuda

from drsformer_fast import reference as R
from drsformer_fast.benchmarking import block_shapes, ffn_hidden, peak_memory_bytes
from drsformer_fast.modules import MixedScaleFeedForward

VARIANTS = ("original-eager", "original-compile", "fused")
PASSES = ("fwd", "fwd+bwd")


def _module(variant: str, dim: int):
    torch.manual_seed(0)
    orig = R.FeedForward(dim, 2.66, False).cuda()
    if variant == "fused":
        return MixedScaleFeedForward.from_original(orig)
    if variant == "original-compile":
        return torch.compile(orig)
    return orig


@requires_gpu
@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", block_shapes(), ids=lambda s: s.id)
def test_feedforward(benchmark, shape, variant, pass_):
    from drsformer_fast.kernels.feedforward import traffic_bytes

    m = _module(variant, shape.dim)
    x = torch.randn(shape.batch, shape.dim, shape.height, shape.width, device="cuda",
                    requires_grad=pass_ == "fwd+bwd")
    g = torch.randn_like(x)

    if pass_ == "fwd":
        def fn():
            with torch.no_grad():
                m(x)
    else:
        def fn():
            m(x).backward(g)

    hidden = ffn_hidden(shape.dim)
    t = traffic_bytes(shape.batch, shape.dim, shape.height, shape.width, hidden, x.element_size())
    kind = "fused" if variant == "fused" else "original"
    model_bytes = t[f"{kind}_fwd"] + (t[f"{kind}_bwd"] if pass_ == "fwd+bwd" else 0)
    fn()  # compile / autotune outside the measurement
    benchmark.extra_info.update({
        "op": "feed_forward", "shape": shape.id, "dim": shape.dim, "hidden": hidden, "variant": variant,
        "pass": pass_, "dtype": "float32", "model_bytes": model_bytes,
        "model_bytes_note": "activations only; the original's backward is an estimate of autograd's kernels",
        "stage_fused_fwd_bytes": t["stage_fused_fwd"], "peak_memory_bytes": peak_memory_bytes(fn),
    })
    run_cuda(benchmark, fn)
