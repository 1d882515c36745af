"""drsformer-fast: fused Triton kernels for DRSformer."""

__version__ = "0.1.0"
