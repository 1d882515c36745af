"""Calling the custom ops in eager mode without PyTorch's dispatcher.

A ``torch.library.custom_op`` costs tens of microseconds per call in eager mode before its
implementation runs (the dispatcher, then the generated autograd wrapper, which rebuilds the
schema's defaults for every argument of these 14-17 argument ops when autograd records). A model
forward makes ~170 such calls and a training step ~340, on a host that has the GPU waiting.

:func:`call` runs ``op(*args)`` the short way when nothing needs the dispatcher: the op's own
implementation, under a ``torch.autograd.Function`` built from the op's registered
``setup_context`` and ``backward`` when autograd records (the same functions, so the same saved
tensors and gradients), or directly when it does not. Everything that must see the op as one
operator keeps the dispatcher: ``torch.compile`` (Dynamo, fake tensors), any ``TorchDispatchMode``
(fake tensors, ``drsformer_fast.perf.accounting``'s op recorder, ``opcheck``), functorch transforms,
tensor subclasses, and ops with a device-specific kernel or autocast registration. Tensor-list
arguments (the MEFC step's weights) are flattened into the ``autograd.Function`` 's inputs, which
autograd tracks one by one; its ``setup_context`` and ``backward`` hand the op's own the lists back.
"""

from __future__ import annotations

import torch
from torch._functorch.utils import unwrap_dead_wrappers
from torch.utils._python_dispatch import _get_current_dispatch_mode

__all__ = ["call"]

_FUNCTIONS: dict = {}
_PLAIN = (torch.Tensor, torch.nn.Parameter)
# argument types that are no tensor subclass: calls made only of them pass `_direct`'s argument test
# in one C-level pass (anything else, lists included, is looked at one by one)
_PLAIN_ARGS = frozenset((*_PLAIN, type(None), bool, int, float, str))
# the C++ apply under torch.autograd.Function.apply (None in a torch without it: Function.apply is used)
_C_APPLY = getattr(torch._C, "_FunctionBase", object).__dict__.get("apply")


def _apply(function, op):
    """``function.apply``, named ``Eager_<op>``. ``Function.apply`` binds the arguments to
    ``forward``'s signature (``inspect.signature``, ~15 us) whenever ``setup_context`` is defined, to
    apply defaults; ``forward(*args)`` has none, so the C++ apply is called directly, after the same
    unwrapping of dead functorch wrappers."""
    function.__name__ = function.__qualname__ = f"Eager_{op._name}"
    if _C_APPLY is None:
        return function.apply
    apply = _C_APPLY.__get__(None, function)
    return lambda *args: apply(*unwrap_dead_wrappers(args))


def _function(op):
    """The ``apply`` of an ``autograd.Function`` running ``op``'s implementation with its registered
    autograd."""
    fn = _FUNCTIONS.get(op)
    if fn is None:
        impl, setup, backward = op._init_fn, op._setup_context_fn, op._backward_fn

        class Function(torch.autograd.Function):
            @staticmethod
            def forward(*args):
                return impl(*args)

            @staticmethod
            def setup_context(ctx, inputs, output):
                setup(ctx, inputs, output)

            @staticmethod
            def backward(ctx, *grads):
                return backward(ctx, *grads)

        fn = _FUNCTIONS[op] = _apply(Function, op)
    return fn


def _unflatten(spec: tuple, flat) -> list:
    """The op's arguments from the flat ones: ``spec`` gives each argument's list length, or None for
    an argument that is not a list."""
    out, i = [], 0
    for n in spec:
        if n is None:
            out.append(flat[i])
            i += 1
        else:
            out.append(list(flat[i:i + n]))
            i += n
    return out


def _list_function(op, spec: tuple):
    """``_function`` for an op with tensor-list arguments (their lengths in ``spec``): the lists'
    tensors become inputs of their own (autograd tracks tensors, not lists), and the registered
    ``setup_context`` and ``backward`` see the op's structure: its arguments, ``needs_input_grad``
    with a list of flags per list argument, and the backward's per-list gradients flattened back."""
    key = (op, spec)
    fn = _FUNCTIONS.get(key)
    if fn is None:
        impl, setup, backward = op._init_fn, op._setup_context_fn, op._backward_fn

        class Function(torch.autograd.Function):
            @staticmethod
            def forward(*flat):
                return impl(*_unflatten(spec, flat))

            @staticmethod
            def setup_context(ctx, inputs, output):
                ctx.needs_input_grad = tuple(_unflatten(spec, ctx.needs_input_grad))
                setup(ctx, tuple(_unflatten(spec, inputs)), output)

            @staticmethod
            def backward(ctx, *grads):
                flat = []
                for n, g in zip(spec, backward(ctx, *grads)):
                    if n is None:
                        flat.append(g)
                    else:
                        flat.extend(g if g is not None else [None] * n)
                return tuple(flat)

        fn = _FUNCTIONS[key] = _apply(Function, op)
    return fn


def _direct(op, args) -> bool:
    """Whether ``op(*args)`` may skip the dispatcher (see the module docstring)."""
    if (torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None
            or torch._C._are_functorch_transforms_active()):
        return False
    # a kernel for a device type (the None key is the op's own function), autocast or dispatch rules
    if len(op._backend_fns) > (None in op._backend_fns) or op._autocast_dtype or op._disabled_kernel \
            or op._torch_dispatch_fns:
        return False
    if _PLAIN_ARGS.issuperset(map(type, args)):  # the common case, in one C-level pass
        return True
    for a in args:
        if isinstance(a, torch.Tensor) and type(a) not in _PLAIN:
            return False
        if isinstance(a, (list, tuple)) and not _PLAIN_ARGS.issuperset(map(type, a)):
            return False  # (a list holding a tensor subclass, or anything but plain values)
    return True


def call(op, *args, validate=None):
    """``op(*args)`` for a ``torch.library.custom_op`` ``op`` whose positional arguments are
    ``args``: the same results and gradients, without the dispatcher where nothing needs it.

    ``validate``: the op's input check, for an op whose implementation (the kernel launcher) makes
    the same check before any launch. It runs here only where the dispatcher is taken (fake tensors,
    ``torch.compile``, dispatch modes): there the implementation may not run, and a bad argument must
    not reach the fake implementation or the schema's checks. Inputs are thus checked once per call."""
    if not _direct(op, args):
        if validate is not None:
            validate()
        return op(*args)
    if not torch.is_grad_enabled():
        return op._init_fn(*args)
    spec = flat = None
    if any(isinstance(a, (list, tuple)) for a in args):  # (the tensors of a tuple are not looked at below)
        spec = tuple(len(a) if isinstance(a, (list, tuple)) else None for a in args)
        flat = [t for a in args for t in (a if isinstance(a, (list, tuple)) else (a,))]
    if not torch._C._any_requires_grad(*(args if flat is None else flat)):
        with torch.no_grad():  # what the dispatcher's below-autograd call gives: nothing recorded inside
            return op._init_fn(*args)
    if op._backward_fn is None:
        return op(*args)
    if flat is not None:
        return _list_function(op, spec)(*flat)
    return _function(op)(*args)
