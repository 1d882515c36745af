"""drsformer-fast: fused Triton kernels for DRSformer.

``load_checkpoint``, ``save_checkpoint``, ``infer_config`` and ``CheckpointError`` are imported on
first use (``import drsformer_fast`` itself loads neither torch nor triton).
"""

__version__ = "0.1.0"

_LAZY = {
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "infer_config": "checkpoint",
    "CheckpointError": "checkpoint",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
