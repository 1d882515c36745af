"""Mixed-scale feed-forward (MSFN): the original ``FeedForward`` vs the fused kernels, per
transformer-block shape of the default model (see ``conftest.py`` for variants and passes).

Besides the common ``extra_info``, records ``hidden`` and the figures of the feed-forward's own byte
table (``kernels.feedforward.traffic_bytes``, activations only): ``table_bytes`` for this variant and
pass (for the original's backward an estimate of autograd's kernels) and ``stage_fused_fwd_bytes``,
the forward with stage 1 inside stage 2 (not built), as a target.
"""

import pytest
from conftest import DTYPES, PASSES, bench_block, block_shapes, dtypes, requires_gpu, variants
from drsformer_fast.kernels.feedforward import traffic_bytes

from drsformer_fast import reference as R
from drsformer_fast.modules import MixedScaleFeedForward
from drsformer_fast.perf.benchmarking import ffn_hidden


@requires_gpu
@pytest.mark.parametrize("dtype", dtypes())
@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("variant", variants())
@pytest.mark.parametrize("shape", block_shapes(), ids=lambda s: s.id)
def test_feedforward(benchmark, shape, variant, pass_, dtype):
    original = R.FeedForward(shape.dim, 2.66, False)
    module = MixedScaleFeedForward.from_original(original) if variant == "fused" else original
    hidden = ffn_hidden(shape.dim)
    element_size = DTYPES[dtype].itemsize  # under autocast both run their activations in bf16
    table = traffic_bytes(shape.batch, shape.dim, shape.height, shape.width, hidden, element_size)
    kind = "fused" if variant == "fused" else "original"
    table_bytes = table[f"{kind}_fwd"] + (table[f"{kind}_bwd"] if pass_ == "forward-backward" else 0)
    bench_block(benchmark, module, shape, variant, pass_, dtype, block="feedforward",
                extra_info={"hidden": hidden, "table_bytes": table_bytes,
                            "stage_fused_fwd_bytes": table["stage_fused_fwd"]})
