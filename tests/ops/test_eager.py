"""Custom ops called in eager mode without the dispatcher (``drsformer_fast.ops._eager``): the same
outputs and gradients, bit for bit, as through ``torch.library``; the dispatcher wherever something
must see the op (fake tensors, dispatch modes)."""

from __future__ import annotations

import pytest
import torch
from helpers import randn
from torch.utils._python_dispatch import TorchDispatchMode

from drsformer_fast import modules as M
from drsformer_fast.ops import _eager
from drsformer_fast.ops import attention as A
from drsformer_fast.ops import feedforward as FF
from drsformer_fast.ops import layernorm as LN
from drsformer_fast.ops import mefc as MEFC

OPS = (A._attention_fwd, A._attention_bwd, LN._layer_norm_fwd, LN._layer_norm_bwd, FF._ffn_fwd, FF._ffn_bwd,
       MEFC._mefc_step_fwd, MEFC._mefc_step_bwd, MEFC._mefc_mixing)


def _perturbed(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return module


def _run(module, x, grad):
    module.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    out = module(x)
    out.backward(grad)
    return [out.detach(), x.grad] + [p.grad for p in module.parameters()]


@pytest.mark.parametrize("make", [
    lambda: M.ChannelLayerNorm(13, "WithBias"),
    lambda: M.TopKSparseAttention(12, 2, True),
    lambda: M.MixedScaleFeedForward(10, 2.66, True),
    lambda: M.FeatureCompensator(8),
], ids=["layernorm", "attention", "feedforward", "mefc"])
def test_direct_calls_equal_the_dispatcher_bitwise(make, monkeypatch):
    module = _perturbed(make(), seed=1)
    dim = module.dim
    x = randn(2, dim, 7, 9, seed=2)
    grad = randn(2, dim, 7, 9, seed=3)
    direct = _run(module, x, grad)
    with torch.no_grad():
        direct_nograd = module(x)
    monkeypatch.setattr(_eager, "_direct", lambda op, args: False)
    dispatched = _run(module, x, grad)
    with torch.no_grad():
        dispatched_nograd = module(x)
    assert len(direct) == len(dispatched) > 2
    for i, (a, b) in enumerate(zip(direct, dispatched)):
        assert a is not None and torch.equal(a, b), f"tensor {i} differs"
    assert torch.equal(direct_nograd, dispatched_nograd)


def test_plain_eager_goes_direct_everything_else_through_the_dispatcher():
    from torch._subclasses.fake_tensor import FakeTensorMode

    x = torch.ones(2)
    assert all(_eager._direct(op, (x,)) for op in OPS)

    class Mode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    with Mode():
        assert not any(_eager._direct(op, (x,)) for op in OPS)
    with FakeTensorMode():
        assert not _eager._direct(OPS[0], (torch.ones(2),))

    class Sub(torch.Tensor):
        pass

    assert not _eager._direct(OPS[0], (x.as_subclass(Sub),))
    # among plain arguments, in a list, and next to arguments of types looked at one by one
    w = torch.nn.Parameter(torch.ones(2))
    assert _eager._direct(OPS[0], (x, w, None, 3, 0.5, True, "s", [x, w]))
    assert not _eager._direct(OPS[0], (x, w, None, 3, x.as_subclass(Sub)))
    assert not _eager._direct(OPS[0], (x, [x], object(), x.as_subclass(Sub)))


def test_dispatch_modes_still_see_every_custom_op():
    """What the accounting and the static report rely on: each fused op is one dispatched op."""
    seen = []

    class Mode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.namespace == "drsformer_fast":
                seen.append(func.__name__.split(".")[0])
            return func(*args, **(kwargs or {}))

    module = _perturbed(M.ChannelLayerNorm(13, "WithBias"), seed=4)
    x = randn(1, 13, 5, 6, seed=5).requires_grad_()
    with Mode():
        module(x).sum().backward()
    assert seen == ["layer_norm_fwd", "layer_norm_bwd"]


def test_function_apply_fallback_gives_the_same_gradients(monkeypatch):
    """Without the C++ apply (a torch that lacks it) the eager path uses ``Function.apply``: same results."""
    module = _perturbed(M.TopKSparseAttention(12, 2, True), seed=4)
    x, grad = randn(1, 12, 5, 6, seed=5), randn(1, 12, 5, 6, seed=6)
    fast = _run(module, x, grad)
    monkeypatch.setattr(_eager, "_C_APPLY", None)
    monkeypatch.setattr(_eager, "_FUNCTIONS", {})
    plain = _run(module, x, grad)
    fn = _eager._FUNCTIONS[A._attention_fwd]  # the bound classmethod Function.apply, not the lambda
    assert fn.__func__ is torch.autograd.Function.apply.__func__, fn
    for i, (a, b) in enumerate(zip(fast, plain)):
        assert a is not None and torch.equal(a, b), f"tensor {i} differs"


_AUX = [(lambda: M.ChannelLayerNorm(13, "WithBias"), LN._layer_norm_fwd, 2),
        (lambda: M.TopKSparseAttention(12, 2, True), A._attention_fwd, 4)]


def _zero_fills(fn) -> list[str]:
    """The ATen ops that build a new zero tensor while ``fn`` runs, as the autograd engine does for a
    gradient it fills in (the profiler sees both call paths). In-place ``zero_`` is not counted: CPU
    convolution backwards zero their own outputs that way."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return [e.name for e in prof.events() if e.name in ("aten::zeros", "aten::zeros_like", "aten::new_zeros")]


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "dispatcher"])
@pytest.mark.parametrize("make,op,n_aux", _AUX, ids=["layernorm", "attention"])
def test_auxiliary_outputs_are_not_differentiated(make, op, n_aux, direct, monkeypatch):
    """The statistics the forward ops return for their backward (LayerNorm's mean and rstd, the
    attention's t0, Gram, norms and P) are not differentiable, and the backward gets no zero-filled
    gradients for them: nothing builds a zero tensor in a backward, by either call path."""
    if not direct:
        monkeypatch.setattr(_eager, "_direct", lambda op, args: False)
    module = _perturbed(make(), seed=7)
    x = randn(2, module.dim, 5, 7, seed=8).requires_grad_()
    out = module(x)
    grad = randn(*out.shape, seed=9)
    assert _zero_fills(lambda: out.backward(grad)) == []
    assert x.grad is not None and all(p.grad is not None for p in module.parameters())
    # the op called directly: only its first output carries a gradient
    m = module
    if op is LN._layer_norm_fwd:
        args = (x.detach(), m.body.weight, m.body.bias)
    else:
        args = (x.detach(), m.qkv.weight, m.qkv.bias, m.qkv_dwconv.weight, m.qkv_dwconv.bias, m.temperature,
                m.attn1, m.attn2, m.attn3, m.attn4, m.project_out.weight, m.project_out.bias, None, m.num_heads)
    outs = op(*args)
    assert outs[0].requires_grad and not any(o.requires_grad for o in outs[1:])
    assert len(outs) == 1 + n_aux


class _NoGrad(torch.autograd.Function):
    """Identity whose backward gives its input no gradient (``None``)."""

    @staticmethod
    def forward(ctx, y):
        return y.clone()

    @staticmethod
    def backward(ctx, g):
        return None


@pytest.mark.parametrize("make,op,n_aux", _AUX, ids=["layernorm", "attention"])
def test_an_output_without_gradient_counts_as_zero(make, op, n_aux):
    """When the output's only path to the loss gives it no gradient, the backward still runs (the
    engine calls it with ``None``) and gives the zero gradients a zero upstream gradient gives."""
    module = _perturbed(make(), seed=10)
    x = randn(2, module.dim, 5, 7, seed=11).requires_grad_()
    (_NoGrad.apply(module(x)).sum() + (2 * x).sum()).backward()
    assert torch.equal(x.grad, torch.full_like(x, 2.0))
    for name, p in module.named_parameters():
        assert p.grad is not None and torch.equal(p.grad, torch.zeros_like(p)), name


def _graph_names(t: torch.Tensor) -> set[str]:
    names, todo, seen = set(), [t.grad_fn], set()
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        # a Python Function's node names the class it was made for (the eager path's Eager_<op>)
        names.add(getattr(getattr(fn, "_forward_cls", None), "__name__", type(fn).__name__))
        todo.extend(f for f, _ in fn.next_functions)
    return names


def test_tensor_list_ops_go_direct_with_autograd(monkeypatch):
    """The MEFC step (tensor-list arguments) records its own autograd node in eager mode, not the
    dispatcher's, and gives the dispatcher's gradients bit for bit, also with some weights frozen
    (``needs_input_grad`` reaches the op's backward per list entry) and a frozen input."""
    def run(module, x, grad):
        module.zero_grad(set_to_none=True)
        out = module(x)
        out.backward(grad)
        return out, [out.detach(), x.grad] + [p.grad for p in module.parameters()]

    module = _perturbed(M.FeatureCompensator(8), seed=7)
    step = module.layers[1]._ops[0]._ops
    frozen = (step[0].op[0].weight, step[5].op[0].weight)  # a sep conv's dw1, a dil conv's depthwise weight
    for p in frozen:
        p.requires_grad_(False)
    grad = randn(1, 8, 4, 5, seed=9)
    for x in (randn(1, 8, 4, 5, seed=8).requires_grad_(), randn(1, 8, 4, 5, seed=8)):
        out, direct = run(module, x, grad)
        assert any(n.startswith("Eager_mefc_step_fwd") for n in _graph_names(out)), _graph_names(out)
        with monkeypatch.context() as m:
            m.setattr(_eager, "_direct", lambda op, args: False)
            out_d, dispatched = run(module, x, grad)
        assert not any(n.startswith("Eager_") for n in _graph_names(out_d))
        for i, (a, b) in enumerate(zip(direct, dispatched)):
            assert (a is None) == (b is None) and (a is None or torch.equal(a, b)), f"tensor {i} differs"
        assert all(p.grad is None for p in frozen)
        assert (x.grad is not None) == x.requires_grad
