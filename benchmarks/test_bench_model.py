"""The whole model: inference (batch 1, ``no_grad``) and a training step (forward, L1 loss, backward,
AdamW step), the original vs the fast model with the same weights, at the shared scenarios
(``benchmarking.SCENARIOS``: 1x3x256x256 inference, 4x3x128x128 training). ``drsformer-fast bench``
measures the same with CUDA events, plus 512x512, peak memory and output differences."""

import pytest
import torch
from conftest import DEVICE, SMOKE, Autocast, dtypes, maybe_compile, record, requires_gpu, run_cuda, variants

from drsformer_fast.perf import bench, benchmarking

SMOKE_CONFIG = {"dim": 8, "num_blocks": [1, 1, 1, 1], "heads": [1, 2, 2, 4]}


def scenarios():
    return [pytest.param(name, batch, 16 if SMOKE else size, id=name) for name, batch, size in benchmarking.SCENARIOS]


@pytest.fixture
def smoke_torch_path(monkeypatch):
    """Smoke mode: the fast model takes its plain-PyTorch path (this suite's code is what is checked;
    the whole model in Triton's interpreter would take minutes, and the kernels are tested in tests/)."""
    if SMOKE:
        from drsformer_fast import _dispatch

        monkeypatch.setattr(_dispatch, "_STATE", (True, False, ""))


@requires_gpu
@pytest.mark.usefixtures("smoke_torch_path")
@pytest.mark.parametrize("dtype", dtypes())
@pytest.mark.parametrize("variant", variants())
@pytest.mark.parametrize("name, batch, size", scenarios())
def test_model(benchmark, name, batch, size, variant, dtype):
    if variant == "fused" and bench.fast_unavailable_reason():
        pytest.skip(bench.fast_unavailable_reason())
    config = {**bench.model_config("with-mefc"), **(SMOKE_CONFIG if SMOKE else {})}
    reference, fast = bench.build_models(config)
    model = (fast if variant == "fused" else reference).to(DEVICE)
    del reference, fast
    run = maybe_compile(Autocast(model, dtype), variant)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, size, size, generator=gen).to(DEVICE)
    training = name.startswith("train")
    if not training:
        model.eval()

        def step():
            with torch.no_grad():
                return run(x)
    else:
        target = torch.rand(batch, 3, size, size, generator=gen).to(DEVICE)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.999), weight_decay=1e-4)

        def step():
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.l1_loss(run(x).float(), target).backward()
            opt.step()

    record(benchmark, model="DRSformer", config=config, scenario=name, input=[batch, 3, size, size],
           variant=variant, dtype=dtype, **{"pass": "training-step" if training else "inference"})
    run_cuda(benchmark, step, rounds=10, warmup_rounds=3)
