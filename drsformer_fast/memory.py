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
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor):
        if id(t) not in params and not isinstance(t, nn.Parameter):
            saved[StorageWeakRef(t.untyped_storage()).cdata] = t.untyped_storage().nbytes()
        return t

    def run(x: torch.Tensor) -> None:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x.requires_grad_())

    p = next(model.parameters())
    if fake:
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            x = (mode.from_tensor(inputs.detach()) if isinstance(inputs, torch.Tensor)
                 else torch.empty(tuple(inputs), dtype=p.dtype, device=p.device))
            run(x)
    else:
        x = inputs.detach().clone() if isinstance(inputs, torch.Tensor) else torch.randn(
            tuple(inputs), dtype=p.dtype, device=p.device)
        run(x)
    return sum(saved.values())
