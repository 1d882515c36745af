"""How many bytes a model keeps for its backward pass (activations, not parameters).

    >>> saved_bytes = drsformer_fast.saved_tensor_bytes(model, (2, 3, 128, 128))

Measured with ``torch.autograd.graph.saved_tensors_hooks`` during one forward pass: every tensor
autograd saves is recorded once per storage (views and tensors saved by several ops count once;
parameters are excluded, they exist anyway). By default the forward runs on fake tensors
(``FakeTensorMode``): real shapes, no memory, no compute, so a 256x256 estimate takes
milliseconds on any machine.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from torch.multiprocessing.reductions import StorageWeakRef


def saved_tensor_bytes(model: nn.Module, inputs: torch.Tensor | Sequence[int], *, fake: bool = True) -> int:
    """Bytes autograd saves for backward in one forward of ``model`` on ``inputs`` (a tensor, or a
    shape for a random input of the model's parameter dtype and device)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    params = {id(p) for p in model.parameters()}
    saved: list[tuple[StorageWeakRef, int]] = []

    def pack(t: torch.Tensor):
        if id(t) not in params and not isinstance(t, nn.Parameter):
            saved.append((StorageWeakRef(t.untyped_storage()), t.untyped_storage().nbytes()))
        return t

    def run(x: torch.Tensor) -> int:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(x.requires_grad_())
        # Counted while the graph is alive: the storages still held for backward, each once. A tensor
        # saved by a node freed during the forward (e.g. a topk whose values are discarded) is gone,
        # and its address may since belong to another saved storage: keying by address while
        # recording made the total depend on the allocator.
        alive = {ref.cdata: nbytes for ref, nbytes in saved if not ref.expired()}
        del out
        return sum(alive.values())

    p = next(model.parameters())
    if fake:
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            x = (mode.from_tensor(inputs.detach()) if isinstance(inputs, torch.Tensor)
                 else torch.empty(tuple(inputs), dtype=p.dtype, device=p.device))
            return run(x)
    x = inputs.detach().clone() if isinstance(inputs, torch.Tensor) else torch.randn(
        tuple(inputs), dtype=p.dtype, device=p.device)
    return run(x)
