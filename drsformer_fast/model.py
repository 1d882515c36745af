"""The fast DRSformer: the original architecture with every transformer block fused.

``DRSformer(...)`` takes the original constructor keywords (plus ``mefc``) and has exactly the
original's state-dict keys and shapes, so original checkpoints load unchanged. Each block runs the
Triton LayerNorm, top-k attention and mixed-scale feed-forward kernels, with the residual adds in
the kernels' epilogues; the MEFC compensators (``encoder_level0``, ``refinement``) run the fused
MEFC steps (:class:`~drsformer_fast.modules.FeatureCompensator`). The patch embedding, the
down/up-sampling convolutions and the output convolution stay in PyTorch.
"""

from __future__ import annotations

from . import reference
from .modules import FastTransformerBlock, FeatureCompensator


class DRSformer(reference.DRSformer):
    """Fused DRSformer; see :class:`drsformer_fast.reference.DRSformer` for the keywords."""

    block_cls = FastTransformerBlock
    mefc_cls = FeatureCompensator
