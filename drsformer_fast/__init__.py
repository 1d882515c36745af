"""drsformer-fast: fused Triton kernels for DRSformer.

Public API (each imported on first use: ``import drsformer_fast`` itself loads neither torch nor
triton): ``DRSformer`` (the fast model), ``load_checkpoint``, ``save_checkpoint``, ``infer_config``,
``CheckpointError``, ``patch``, ``graphed`` / ``GraphedModule`` (CUDA graphs for inference),
``saved_tensor_bytes``, ``kernel_path``, the modules
``ChannelLayerNorm``, ``TopKSparseAttention``, ``MixedScaleFeedForward``, ``FastTransformerBlock``,
``FeatureCompensator`` (MEFC),
and ``reference`` (the original model in plain PyTorch).
"""

__version__ = "0.1.0"

from . import _moved  # noqa: E402  (old module paths, e.g. drsformer_fast.static_report, still import)

_moved.install()

_LAZY = {
    "DRSformer": "model",
    "patch": "patching",
    "PatchReport": "patching",
    "saved_tensor_bytes": "memory",
    "kernel_path": "_dispatch",
    "graphed": "graphs",
    "GraphedModule": "graphs",
    "ChannelLayerNorm": "modules",
    "TopKSparseAttention": "modules",
    "MixedScaleFeedForward": "modules",
    "FastTransformerBlock": "modules",
    "FeatureCompensator": "modules",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "infer_config": "checkpoint",
    "CheckpointError": "checkpoint",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name == "reference":
        import importlib

        return importlib.import_module(".reference", __name__)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
