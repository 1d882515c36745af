"""DistributedDataParallel: two CPU processes (gloo) train the fast model for one step; their
weights equal a single-process run on the same global batch."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from original_arch import perturb_

from drsformer_fast.model import DRSformer

CFG = dict(dim=8, num_blocks=[1, 1, 1, 1], heads=[1, 2, 2, 4], ffn_expansion_factor=2.66, bias=False,
           LayerNorm_type="WithBias", mefc=True)
# One SGD step is enough to see DDP average the gradients of the fused ops across the processes:
# rank 0 then holds w0 - lr * (g0 + g1) / 2, the single-process step on the global batch of 2; a
# DDP that did not all-reduce (w0 - lr * g0), or summed (w0 - lr * (g0 + g1)), misses it by
# lr * |g0 - g1| / 2 or more in every parameter whose gradients differ between the two random
# images. A second step only repeats the same ops at new weights, and in Triton's interpreter each
# step of the three runs (two ranks, one single process) costs minutes of CI.
STEPS = 1


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 8, 16, generator=g)  # not 8x8: a 1-pixel latent makes top-k break ties
    return x, (x * 0.8 + 0.1).clamp(0, 1)


def _train(model, x, y, steps, wrap=lambda m: m):
    net = wrap(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(x), y).backward()  # smooth: L1 flips sign on rounding
        opt.step()
    return model


def _worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = perturb_(DRSformer(**CFG), seed=3)
        x, y = _data()
        local = slice(rank, rank + 1)  # one image per process: the global batch is 2
        _train(model, x[local], y[local], STEPS, wrap=lambda m: torch.nn.parallel.DistributedDataParallel(m))
        if rank == 0:
            torch.save(model.state_dict(), out_file)
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_match_single_process(tmp_path):
    assert os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()
    out_file = str(tmp_path / "ddp.pt")
    mp.spawn(_worker, args=(2, str(tmp_path / "rendezvous"), out_file), nprocs=2, join=True)
    ddp_state = torch.load(out_file, weights_only=True)

    torch.set_num_threads(1)
    single = perturb_(DRSformer(**CFG), seed=3)
    x, y = _data()
    _train(single, x, y, STEPS)
    for name, p in single.state_dict().items():
        torch.testing.assert_close(ddp_state[name], p, rtol=1e-5, atol=1e-6, msg=name)
    assert any(not torch.equal(ddp_state[n], perturb_(DRSformer(**CFG), seed=3).state_dict()[n])
               for n in ddp_state), "training changed nothing: the test would not see a difference"
