"""``torch.library`` custom ops wrapping the Triton launchers, with fake (meta) implementations
and registered autograd, plus the public functions that choose between them and plain PyTorch.

Each fused op is registered under the ``drsformer_fast::`` namespace, so ``torch.compile`` with
``fullgraph=True`` traces through it and CUDA graphs capture it.
"""

from .attention import topk_sparse_attention
from .feedforward import mixed_scale_feed_forward
from .layernorm import layer_norm
from .mefc import feature_compensation, mefc_step, mixing_matrices, routing_weights

__all__ = ["feature_compensation", "layer_norm", "mefc_step", "mixed_scale_feed_forward", "mixing_matrices",
           "routing_weights", "topk_sparse_attention"]
