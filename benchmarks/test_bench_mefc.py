"""MEFC (the mixture-of-experts feature compensator): the original ``subnet`` vs the fused
``FeatureCompensator``, per MEFC shape of the default model (``benchmarking.mefc_shapes()``:
encoder_level0 at 48 and refinement at 96 channels, full resolution; see ``conftest.py`` for
variants and passes).

Besides the common ``extra_info``, records ``table_bytes``: the fused steps' own byte figures
(``kernels.mefc.traffic_bytes`` per step forward, ``kernels.mefc_backward.traffic_bytes`` per step
backward, times the 4 steps; activations only, routing and preprocess not included).
"""

import dataclasses

import pytest
from conftest import DTYPES, SMOKE, bench_block, dtypes, requires_gpu, variants
from drsformer_fast.kernels.mefc import traffic_bytes as fwd_bytes
from drsformer_fast.kernels.mefc_backward import traffic_bytes as bwd_bytes

from drsformer_fast import reference as R
from drsformer_fast.modules import FeatureCompensator
from drsformer_fast.perf import benchmarking

PASSES = ("forward", "forward-backward")
STEPS = 4


def mefc_shapes():
    shapes = benchmarking.mefc_shapes()
    if SMOKE:  # one tiny shape: level enc0's width, batch 2 (per-sample routing), 8x8
        shapes = [dataclasses.replace(shapes[0], batch=2, height=8, width=8)]
    return shapes


@requires_gpu
@pytest.mark.parametrize("dtype", dtypes())
@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("variant", variants())
@pytest.mark.parametrize("shape", mefc_shapes(), ids=lambda s: s.id)
def test_mefc(benchmark, shape, variant, pass_, dtype):
    original = R.subnet(shape.dim)
    module = FeatureCompensator.from_original(original) if variant == "fused" else original
    es = DTYPES[dtype].itemsize  # under autocast the fused steps run their activations in bf16
    dims = (shape.batch, shape.dim, shape.height, shape.width)
    table = STEPS * (fwd_bytes(*dims, es) + (bwd_bytes(*dims, es) if pass_ == "forward-backward" else 0))
    bench_block(benchmark, module, shape, variant, pass_, dtype, block="mefc",
                extra_info={"table_bytes": table if variant == "fused" else None})
