"""Triton launches without ``JITFunction.run``'s per-call work once a launch has been specialised.

``launch_kernel(kernel, grid, *args, **kwargs)`` does what ``kernel[grid](*args, **kwargs)`` does. The first
launch of a *launch key* goes through ``JITFunction.run`` (which binds the arguments, computes Triton's
specialisation, compiles or finds the ``CompiledKernel`` in Triton's own cache, launches it and
returns it); the compiled kernel is kept under the key, and later launches with the same key call its
launcher directly with the arguments in the kernel's parameter order, as ``JITFunction.run`` does.

The launch key is

* the ``JITFunction``'s id (its entry holds the kernel, so the id cannot pass to another) and the
  current device,
* for each tensor argument: its dtype and whether its address is a multiple of 16 (Triton's only
  facts about a pointer: element type and ``tt.divisibility=16``),
* for every other positional argument and every keyword (constexprs and options such as
  ``num_warps``/``num_stages``): its name (keywords), type and value,
* the knobs ``JITFunction.run`` folds into the compile options (``debug``, the kernel's ``debug``,
  ``instrumentation_mode`` and, where Triton has it, ``fpsan_homomorphic_casts``).

That is sufficient: Triton specialises an integer on its value (``== 1``, ``% 16``, its range) and a
float, bool, string or ``None`` on its type or value, so equal values give equal specialisations; the
key is finer than Triton's (two keys may share a compiled kernel), never coarser. Grids, strides and
shapes are integers passed at launch, never baked into a key's kernel beyond what their values decide.

The direct path is taken only where it is exactly ``JITFunction.run``'s launch: a plain
``JITFunction`` whose ``run`` nobody wraps (the launch-capture tooling and tests that wrap
``JITFunction.run`` or a kernel's ``run`` see every launch), no pre-run hooks, no launch enter/exit hook
set (an empty hook chain, Triton's default, calls nothing: the launcher then gets ``None`` for the hooks
and their metadata), no stage-inspection hook, a grid given as a tuple, and tensors passed
positionally. Anything else, Triton's interpreter and stand-ins for kernels included, is launched as
``kernel[grid](*args, **kwargs)``. Nothing here reads the GPU's state or synchronises with it.
"""

from __future__ import annotations

import contextlib

import torch

try:
    from triton import knobs
    from triton.compiler import CompiledKernel
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction
except ImportError:  # pragma: no cover (Triton without the JIT runtime: every launch takes kernel.run)
    JITFunction = None

__all__ = ["launch_kernel", "direct_launches", "clear_cache", "MAX_ENTRIES"]

# launch keys kept before the cache is emptied (a model uses a few hundred; shapes add a few each)
MAX_ENTRIES = 4096
_CACHE: dict = {}
_ENABLED = [JITFunction is not None]
_PLAIN = (int, float, bool, str, type(None))
_Tensor, _Parameter = torch.Tensor, torch.nn.Parameter
_KEYED = (_Tensor, _Parameter, *_PLAIN)  # argument types a launch key describes by value (tensors: dtype, alignment)

if JITFunction is not None:
    _TRITON_RUN = JITFunction.run
    _runtime = knobs.runtime
    _compilation = knobs.compilation
    _HookChain = getattr(knobs, "HookChain", None)
    _HAS_FPSAN = hasattr(_compilation, "fpsan_homomorphic_casts")
    _HAS_STAGES_HOOK = hasattr(_runtime, "add_stages_inspection_hook")


def _no_hook(hook) -> bool:
    return hook is None or (type(hook) is _HookChain and not hook.calls)


def _direct(kernel, grid) -> bool:
    """Whether a launch may skip ``JITFunction.run`` (see the module docstring)."""
    return (_ENABLED[0] and type(kernel) is JITFunction and JITFunction.run is _TRITON_RUN
            and "run" not in kernel.__dict__ and not kernel.pre_run_hooks and type(grid) is tuple
            and _no_hook(_runtime.launch_enter_hook) and _no_hook(_runtime.launch_exit_hook)
            and not (_HAS_STAGES_HOOK and _runtime.add_stages_inspection_hook is not None))


def launch_kernel(kernel, grid, *args, **kwargs):
    """``kernel[grid](*args, **kwargs)``, through the compiled kernel's launcher once the launch key
    (module docstring) has been seen. Returns what ``JITFunction.run`` returns (the CompiledKernel)."""
    if not _direct(kernel, grid):
        return kernel[grid](*args, **kwargs)
    drv = driver.active
    device = drv.get_current_device()
    # built by C-level tuple operations where it can be (~1.3 us less than a per-argument loop at the
    # model's 25-30 arguments); the argument and keyword types keep True apart from 1 and 1.0
    key = (id(kernel), device, _runtime.debug, kernel.debug, _compilation.instrumentation_mode,
           _compilation.fpsan_homomorphic_casts if _HAS_FPSAN else None,
           tuple(map(type, args)),
           tuple([(a.dtype, not a.data_ptr() & 15) if type(a) is _Tensor or type(a) is _Parameter else a
                  for a in args]),
           tuple(kwargs.items()), tuple(map(type, kwargs.values())))
    entry = _CACHE.get(key)
    if entry is None:
        return _first_launch(key, kernel, grid, args, kwargs)
    _, compiled, order, defaults = entry
    if type(order) is int:  # the kernel's parameters are the first `order` arguments and keywords, in order
        values = (*args, *kwargs.values())[:order]
    else:
        values = (*args, *kwargs.values(), *defaults)
        values = [values[i] for i in order]
    n = len(grid)
    compiled.run(grid[0], grid[1] if n > 1 else 1, grid[2] if n > 2 else 1, drv.get_current_stream(device),
                 compiled.function, compiled.packed_metadata, None, None, None, *values)
    return compiled


def _first_launch(key, kernel, grid, args, kwargs):
    """Launch through ``JITFunction.run`` and keep its compiled kernel under ``key`` with the order that
    puts ``(*args, *kwargs.values(), *defaults)`` into the kernel's parameter order."""
    compiled = kernel.run(*args, grid=grid, warmup=False, **kwargs)
    if not isinstance(compiled, CompiledKernel) or kernel.used_global_vals:
        return compiled  # (an asynchronous compile, or globals Triton re-checks at every launch)
    if not all(type(v) in _PLAIN for v in kwargs.values()):
        return compiled  # a tensor (or other object) passed by keyword: not keyed by value
    if not all(type(a) in _KEYED for a in args):
        return compiled  # e.g. a tensor subclass: the key would hold the object itself, not its facts
    if len(kernel.params) < len(args):
        return compiled
    position = {name: i for i, name in enumerate(kwargs, start=len(args))}
    defaults, order = [], []
    for i, p in enumerate(kernel.params):
        if i < len(args):
            order.append(i)
        elif p.name in position:
            order.append(position[p.name])
        else:  # not passed: its default, as JITFunction.run's binder applies it
            order.append(len(args) + len(kwargs) + len(defaults))
            defaults.append(p.default)
    if len(_CACHE) >= MAX_ENTRIES:
        _CACHE.clear()
    prefix = not defaults and order == list(range(len(order)))  # (options such as num_warps come after)
    _CACHE[key] = (kernel, compiled, len(order) if prefix else tuple(order), tuple(defaults))
    return compiled


def clear_cache() -> None:
    """Forget every launch key (the next launch of each goes through ``JITFunction.run`` again)."""
    _CACHE.clear()


@contextlib.contextmanager
def direct_launches(enabled: bool):
    """Within the block, launches take the direct path (``True``, the default) or always
    ``JITFunction.run`` (``False``: what a plain ``kernel[grid](...)`` does)."""
    saved = _ENABLED[0]
    _ENABLED[0] = bool(enabled) and JITFunction is not None
    try:
        yield
    finally:
        _ENABLED[0] = saved
