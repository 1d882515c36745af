"""CUDA graphs for inference: the model's launches recorded once per input shape, then replayed.

In eager mode the fast model's forward is bound by the host: hundreds of Triton launches, custom-op
dispatches and ATen calls, each paying Python and launch overhead, against a few milliseconds of GPU
work. A CUDA graph records the whole forward once and replays it as one launch, so the host cost per
call becomes a copy into the graph's input buffer, the replay and a copy out of its output buffer.

:class:`GraphedModule` wraps any ``nn.Module`` taking one ``[B, C, H, W]`` tensor (the fast
``DRSformer``, a patched original, the reference); :func:`graphed` builds one. The first call with a
new :func:`graph_key` runs the module eagerly (Triton compiles its kernels, cuDNN autotunes: neither
may happen during a capture), so a folder of images of all different sizes costs what eager mode
costs. The second call with that key runs ``warmup`` more forwards on a side stream, captures one
forward into a graph with static input and output buffers, and replays it; every later call copies
the input in, replays, and returns a copy of the output (the buffer is overwritten by the next
replay). At most ``max_graphs`` graphs are kept, the least recently used evicted first; a key never
seen runs eagerly and then gets a fresh capture, so a graph is never replayed for a shape, dtype or
setting it was not recorded with.

Memory: the graphs of one :class:`GraphedModule` share one memory pool, so they hold about the
largest forward's peak, not the sum. Sharing is safe here because each call copies its output out
right after its replay: a graph's intermediates may later be reused by another graph's replay, but
nothing of a graph is read after its own call returns. :meth:`GraphedModule.clear` frees the pool.

The key holds everything that changes which kernels a forward launches or what they compute: the
input's shape, dtype and device, autocast (on or off, its dtype) and PyTorch's fp32 precision
settings (TF32 for cuDNN convolutions and for matmuls, deterministic algorithms). Switching TF32 off
therefore takes effect on the next call, as it does in eager mode. Under autocast, warm-up and
capture run with autocast's weight cache off (a cached cast made outside the capture would be freed
when the caller's autocast region ends, under a graph that still reads it).

Calls that a graph cannot serve run the module eagerly: a CPU input, autograd recording (grad mode
on with an input or parameter that requires grad: graphs here are for inference), a module in
training mode. When the module's parameters or buffers were replaced by new tensors
(``model.to(...)``, new ``Parameter`` objects), every graph is dropped before the call: a graph reads
the memory it was captured with (``load_state_dict`` copies in place and keeps them).

The capture itself is a :class:`CaptureBackend`; :class:`CudaGraphBackend` (CUDA) is the default,
and the tests drive the cache with a stand-in that "replays" by running the module eagerly. The
training loop captures its whole step with the same backend (``drsformer_fast.training.step``).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch
import torch.nn as nn
from torch.utils._pytree import tree_leaves, tree_map

__all__ = ["GraphKey", "GraphedModule", "graphed", "graph_key", "precision_state", "CaptureBackend",
           "CudaGraphBackend", "Captured", "DEFAULT_MAX_GRAPHS", "DEFAULT_WARMUP"]

DEFAULT_MAX_GRAPHS = 4
DEFAULT_WARMUP = 1
_SEEN_KEYS = 64  # keys remembered as seen once (a folder of many sizes must not grow without bound)


def precision_state() -> tuple:
    """PyTorch's settings that change what an fp32 forward computes on a GPU: whether cuDNN
    convolutions and matmuls may use TF32 (the per-operator ``fp32_precision`` flags resolved through
    their parents where this PyTorch has them, the legacy ``allow_tf32`` flags otherwise), the fp32
    matmul precision and deterministic algorithms. Two spellings of one setting give one state."""
    backends = torch.backends
    matmul_precision = torch.get_float32_matmul_precision()
    conv = getattr(backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        glob = backends.fp32_precision
        conv_tf32 = _resolve(conv.fp32_precision, backends.cudnn.fp32_precision, glob)
        matmul_tf32 = _resolve(getattr(backends.cuda.matmul, "fp32_precision", "none"), glob)
        if conv_tf32 is None:
            conv_tf32 = False
        if matmul_tf32 is None:
            matmul_tf32 = matmul_precision != "highest"
    else:
        conv_tf32, matmul_tf32 = backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32
    return conv_tf32, matmul_tf32, matmul_precision, torch.are_deterministic_algorithms_enabled()


def _resolve(*flags: str) -> bool | None:
    """TF32 or not from a chain of ``fp32_precision`` flags, the first one set deciding ("none"
    inherits from the next); None when none is set."""
    for flag in flags:
        if flag != "none":
            return flag == "tf32"
    return None


class GraphKey(NamedTuple):
    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    autocast: tuple[bool, torch.dtype | None]  # (enabled, dtype) for the input's device type
    precision: tuple


def graph_key(x: torch.Tensor) -> GraphKey:
    """What a graph captured for ``x`` under the current settings can be replayed for."""
    kind = x.device.type
    enabled = torch.is_autocast_enabled(kind)
    return GraphKey(tuple(x.shape), x.dtype, x.device,
                    (enabled, torch.get_autocast_dtype(kind) if enabled else None), precision_state())


@dataclass
class Captured:
    """A recorded call: write the input into ``static_input`` (a tensor, or a pytree of tensors
    shaped as the example), call ``replay()``, read ``static_output`` (a tensor or a pytree of
    tensors) before the next replay of any graph that shares its memory pool."""

    static_input: Any
    static_output: Any
    replay: Callable[[], None]
    release: Callable[[], None]


class CaptureBackend(Protocol):
    """``capture(fn, example, warmup)``: run ``fn`` ``warmup`` times on a copy of ``example`` (a
    tensor or a pytree of tensors), then record one call of ``fn`` on that copy, which becomes
    ``static_input``; ``free()`` lets go of the backend's memory pools."""

    def capture(self, fn: Callable[[Any], Any], example: Any, warmup: int) -> Captured: ...

    def free(self) -> None: ...


def _uncached_autocast(device_type: str):
    """Autocast as the caller set it, with the weight-cast cache off (a cast cached outside the
    capture must not be read by the graph); nothing when autocast is off."""
    if not torch.is_autocast_enabled(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=torch.get_autocast_dtype(device_type), cache_enabled=False)


class CudaGraphBackend:
    """Warm-up on a side stream, then ``torch.cuda.graph`` capture; the graphs of one backend share
    a memory pool (see the module docstring). ``capture_error_mode`` is ``torch.cuda.graph``'s:
    "global" (the default) fails a capture when any thread makes a call that a capture forbids,
    "thread_local" only when the capturing thread does (the training loop's choice: a data
    loader's pin-memory thread may allocate pinned memory during a capture)."""

    def __init__(self, capture_error_mode: str = "global"):
        self._pools: dict[torch.device, Any] = {}
        self.capture_error_mode = capture_error_mode

    def capture(self, fn, example, warmup):
        device = next(t for t in tree_leaves(example) if isinstance(t, torch.Tensor)).device
        with torch.cuda.device(device):
            static_input = tree_map(lambda t: t.detach().clone() if isinstance(t, torch.Tensor) else t, example)
            current = torch.cuda.current_stream()
            side = torch.cuda.Stream()
            side.wait_stream(current)
            with torch.cuda.stream(side), _uncached_autocast("cuda"):
                for _ in range(warmup):
                    fn(static_input)
            current.wait_stream(side)
            pool = self._pools.get(device)
            if pool is None:
                pool = self._pools[device] = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with _uncached_autocast("cuda"), torch.cuda.graph(graph, pool=pool,
                                                               capture_error_mode=self.capture_error_mode):
                static_output = fn(static_input)
        return Captured(static_input, static_output, graph.replay, graph.reset)

    def free(self) -> None:
        """Forget the pools (their memory returns to PyTorch's cache once no graph uses them)."""
        self._pools.clear()
        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()


class GraphedModule(nn.Module):
    """``module`` run through CUDA graphs, one per :func:`graph_key` (see the module docstring).

    Calls under ``torch.no_grad()`` / ``torch.inference_mode()`` with the module in eval mode and a
    CUDA input are served by graphs (the first call per key eagerly); anything else runs ``module``
    eagerly. The result is a fresh tensor (a copy of the graph's output buffer). ``stats`` counts
    captures, replays, evictions and eager calls.
    """

    def __init__(self, module: nn.Module, *, max_graphs: int = DEFAULT_MAX_GRAPHS, warmup: int = DEFAULT_WARMUP,
                 backend: CaptureBackend | None = None):
        super().__init__()
        if isinstance(max_graphs, bool) or not isinstance(max_graphs, int) or max_graphs < 1:
            raise ValueError(f"max_graphs must be a positive integer, got {max_graphs!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"warmup must be a positive integer (a capture needs the work of a forward done "
                             f"on a side stream first), got {warmup!r}")
        self.module = module
        self.max_graphs = max_graphs
        self.warmup = warmup
        # the CUDA backend serves CUDA inputs only; a stand-in (the tests') serves CPU ones too
        self._backend = backend if backend is not None else CudaGraphBackend()
        self._device_types = ("cuda",) if backend is None else ("cuda", "cpu")
        self._graphs: OrderedDict[GraphKey, Captured] = OrderedDict()
        self._seen: OrderedDict[GraphKey, None] = OrderedDict()
        self._memory_of_graphs: tuple = ()
        self._slots: tuple = ((), ())  # (parameter slots, buffer slots): (dict, name) of every tensor
        self._slots_generation = -1
        self.stats = {"captures": 0, "replays": 0, "evictions": 0, "eager": 0}

    def _servable(self, x) -> bool:
        if not isinstance(x, torch.Tensor) or x.device.type not in self._device_types or self.module.training:
            return False
        if not torch.is_grad_enabled():
            return True
        return not (x.requires_grad or any(t.requires_grad for t in self._tensors(self._current_slots()[0])))

    def _current_slots(self) -> tuple:
        """Where the module's parameters and buffers live: (dict, name) pairs, found again only when
        a module, parameter or buffer was registered anywhere since (walking ~900 parameters through
        ``parameters()`` costs milliseconds; reading the slots, a tenth of that)."""
        if self._slots_generation != _GENERATION[0]:
            modules = list(self.module.modules())
            self._slots = (tuple((m._parameters, n) for m in modules for n in m._parameters),
                           tuple((m._buffers, n) for m in modules for n in m._buffers))
            self._slots_generation = _GENERATION[0]
        return self._slots

    @staticmethod
    def _tensors(slots):
        return [t for t in (d.get(n) for d, n in slots) if t is not None]

    def _memory(self) -> tuple:
        # what every graph reads besides its input: the module's parameters and buffers, where they are
        params, buffers = self._current_slots()
        return tuple([t.data_ptr() for t in self._tensors(params)] + [t.data_ptr() for t in self._tensors(buffers)])

    def forward(self, x: torch.Tensor):
        if not self._servable(x):
            return self._eager(x)
        memory = self._memory()
        if memory != self._memory_of_graphs:
            self.clear()
            self._memory_of_graphs = memory
        key = graph_key(x)
        entry = self._graphs.get(key)
        if entry is None:
            if key not in self._seen:  # first call with this key: eager (compiles, autotunes)
                self._seen[key] = None
                while len(self._seen) > _SEEN_KEYS:
                    self._seen.popitem(last=False)
                return self._eager(x)
            while len(self._graphs) >= self.max_graphs:
                self._evict()
            entry = self._backend.capture(self.module, x, self.warmup)
            self._graphs[key] = entry
            self.stats["captures"] += 1
        else:
            self._graphs.move_to_end(key)
        entry.static_input.copy_(x)
        entry.replay()
        self.stats["replays"] += 1
        return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, entry.static_output)

    def _eager(self, x):
        self.stats["eager"] += 1
        return self.module(x)

    @property
    def graph_keys(self) -> list[GraphKey]:
        """The keys of the graphs held, least recently used first."""
        return list(self._graphs)

    def _evict(self) -> None:
        _, entry = self._graphs.popitem(last=False)
        entry.release()
        self.stats["evictions"] += 1

    def clear(self) -> None:
        """Drop every graph and free their memory pool."""
        held = bool(self._graphs)
        while self._graphs:
            self._evict()
        self._seen.clear()
        if held:
            self._backend.free()


# bumped whenever any module registers a submodule, parameter or buffer: a GraphedModule then finds
# its module's tensors again (a replaced submodule, e.g. by ``patch()``, brings tensors of its own)
_GENERATION = [0]


def _registered(*_args) -> None:
    _GENERATION[0] += 1


nn.modules.module.register_module_module_registration_hook(_registered)
nn.modules.module.register_module_parameter_registration_hook(_registered)
nn.modules.module.register_module_buffer_registration_hook(_registered)


def graphed(module: nn.Module, *, max_graphs: int = DEFAULT_MAX_GRAPHS, warmup: int = DEFAULT_WARMUP) -> GraphedModule:
    """``module``, put in eval mode, run through CUDA graphs for inference: see :class:`GraphedModule`.

    Example::

        model = drsformer_fast.load_checkpoint("deraining.pth", map_location="cuda")
        fast = drsformer_fast.graphed(model)
        with torch.no_grad():
            for x in batches:  # one shape: the first call eager, then a capture, then replays
                y = fast(x)
    """
    return GraphedModule(module.eval(), max_graphs=max_graphs, warmup=warmup)
