"""What a CUDA graph cannot record, looked for in real code run on fake tensors: the recorder that
``test_graphs`` (the inference forward) and ``test_train_step`` (the training step) share."""

from __future__ import annotations

import torch

__all__ = ["HOST_SYNC", "FROM_HOST", "RANDOM", "hazards"]

# ops that read a tensor's value on the host (a sync), build a tensor from Python data (a
# host-to-device copy on a GPU), or draw random numbers (a capture freezes the RNG state)
HOST_SYNC = {"_local_scalar_dense", "item", "equal", "is_nonzero", "allclose"}
FROM_HOST = {"lift_fresh", "lift_fresh_copy", "_to_copy_from_host"}
RANDOM = {"rand", "randn", "randint", "randperm", "rand_like", "randn_like", "randint_like", "uniform_", "normal_",
          "bernoulli_", "bernoulli",
          "native_dropout", "exponential_", "multinomial", "random_"}


def _devices(args, kwargs) -> int:
    """How many devices an op's tensors and ``device`` keyword name."""
    devices = {t.device for t in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
    if (kwargs or {}).get("device") is not None:
        devices.add(torch.device(kwargs["device"]))
    return len(devices)


def hazards(fn, *args, ops: list | None = None):
    """Run ``fn(*args)`` under a recorder that also sees inside the custom ops' launchers; returns
    the capture hazards found, as 'op (why)', and the Triton launches counted; ``ops``, when given,
    receives the name of every ATen op dispatched. On fake CPU tensors a
    ``.cpu()`` of a CPU tensor dispatches nothing: device copies show where a forward names another
    device (``.to("cuda")``, ``torch.tensor(..., device=)``: the latter is a tensor from Python data)."""
    from drsformer_fast.perf.accounting import OpRecorder, _count_triton_launches

    found = []

    class Hazards(OpRecorder):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            device = (kwargs or {}).get("device")
            if ops is not None:
                ops.append(name)
            if name in HOST_SYNC:
                found.append(f"{name} (reads a value on the host)")
            elif name in FROM_HOST:
                found.append(f"{name} (a tensor from Python data: a host-to-device copy)")
            elif name in RANDOM:
                found.append(f"{name} (random numbers)")
            elif name in ("_to_copy", "to", "copy_") and _devices(args, kwargs) > 1:
                found.append(f"{name} to {device} (a copy between devices)")
            return super().__torch_dispatch__(func, types, args, kwargs)

    recorder = Hazards(run_triton=False)
    with _count_triton_launches(recorder), recorder:
        fn(*args)
    launches = sum(r.kind == "triton" for r in recorder.records)
    return found, launches
