"""The fast DRSformer: the original architecture with every transformer block fused.

``DRSformer(...)`` takes the original constructor keywords (plus ``mefc``) and has exactly the
original's state-dict keys and shapes, so original checkpoints load unchanged. Each block runs the
Triton LayerNorm, top-k attention and mixed-scale feed-forward kernels, with the residual adds in
the kernels' epilogues. The MEFC compensators (``encoder_level0``, ``refinement``), the patch
embedding, the down/up-sampling convolutions and the output convolution stay in PyTorch.
"""

from __future__ import annotations

from . import reference
from .modules import FastTransformerBlock


class DRSformer(reference.DRSformer):
    """Fused DRSformer; see :class:`drsformer_fast.reference.DRSformer` for the keywords."""

    block_cls = FastTransformerBlock
