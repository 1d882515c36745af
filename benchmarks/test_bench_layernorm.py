"""Channel LayerNorm: the original (``to_3d``, mean, var, normalise, ``to_4d``) vs the fused kernel,
per transformer-block shape of the default model (see ``conftest.py`` for variants and passes)."""

import pytest
from conftest import PASSES, bench_block, block_shapes, dtypes, requires_gpu, variants

from drsformer_fast import reference as R
from drsformer_fast.modules import ChannelLayerNorm


@requires_gpu
@pytest.mark.parametrize("dtype", dtypes())
@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("variant", variants())
@pytest.mark.parametrize("shape", block_shapes(), ids=lambda s: s.id)
def test_layernorm(benchmark, shape, variant, pass_, dtype):
    original = R.LayerNorm(shape.dim, "WithBias")
    module = ChannelLayerNorm.from_original(original) if variant == "fused" else original
    bench_block(benchmark, module, shape, variant, pass_, dtype, block="layernorm")
