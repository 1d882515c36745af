"""What an implementation does, independent of the device: kernel launches and bytes moved.

Used by ``drsformer-fast bench`` without a GPU (and by the microbenchmarks for GB/s). One dispatch
mode (:class:`OpRecorder`), normally run on fake tensors (real shapes, no memory, no compute), by
:func:`profile`, records a forward and a backward pass op by op:

* **Kernel launches.** Every ATen op that reaches the dispatcher is classified: views, allocations
  (``empty``, ``new_empty``...) and metadata (``prim.*``, ``set_``, ``detach``) launch nothing on a
  GPU; every other op that returns a tensor is one launch. Composite ops (``conv2d``, ``einsum``,
  ``reshape``) are decomposed first, so what is counted is what runs (``einsum`` -> ``bmm`` and the
  copies it needs; a ``reshape`` that must copy -> ``clone``). The fast path's custom ops
  (``drsformer_fast::*``) are opened up: their real launcher runs under the same mode, so its ATen
  ops (the cuBLAS 1x1 convolutions, the small einsums and partial-sum reductions) count like any
  other, and each Triton launch is counted by wrapping ``run`` of Triton's ``JITFunction`` and
  ``InterpretedFunction``. On fake tensors the Triton launches are counted, not executed: the
  launchers never read data back to the host (CONTRIBUTING), so what they launch cannot depend on
  the data. With real tensors (``profile(..., fake=False)``: a GPU, or Triton's interpreter) every
  kernel runs and the interpreter's own tensor traffic is ignored; the tests check that both ways
  give the same counts. Counts are taken at the real shape because they can depend on it: the
  original's reshapes copy only for a batch > 1. One ATen op can be more than one GPU kernel (cuDNN
  may run a layout transform, a large reduction may take two passes), so the ATen part is a lower
  bound, the same for both implementations.

* **Bytes moved.** Every counted ATen op outside a fused op is charged the bytes of its tensor
  inputs and outputs, each read or written once (the model the kernel docstrings use for "the
  original": ``qkv 4 units, dwconv 6, ...``; broadcast inputs count their real memory, not their
  expanded size). Each fused op is charged its **compulsory** bytes instead, from the analytic
  models below, which restate the byte tables of the kernel docstrings (``kernels/layernorm.py``,
  ``kernels/attention.py``, ``kernels/feedforward.py``; large tensors only: C x C matrices,
  per-program partial sums and halo re-reads are left out, as there). The tests check these models
  against the docstrings' numbers. The MEFC step ops take their totals from the kernel modules'
  own ``traffic_bytes`` (``kernels/mefc.py``, ``kernels/mefc_backward.py``): see :func:`mefc_step_bytes`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

NAMESPACE = "drsformer_fast"

# ATen ops that launch no GPU kernel (beyond the views, which ``OpOverload.is_view`` reports).
_NO_KERNEL = {
    "empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "set_", "resize_",
    "_unsafe_view", "detach", "alias", "lift_fresh", "_local_scalar_dense", "is_same_size", "promote_types",
    "result_type", "_has_compatible_shallow_copy_type", "sym_size", "sym_stride", "sym_numel",
    "sym_storage_offset", "dim", "size", "stride", "storage_offset", "is_contiguous",
}
# ops that take a tensor argument only for its metadata (or overwrite it without reading it)
_READS_NO_INPUT = {
    "zeros_like", "ones_like", "full_like", "rand_like", "randn_like", "randint_like", "new_zeros", "new_ones",
    "new_full", "fill_", "zero_", "scalar_tensor", "zeros", "ones", "full",
}


def _base_name(func) -> str:
    return func._schema.name.split("::")[-1]


def launches_kernel(func, out) -> bool:
    """Whether an ATen op that returned ``out`` launched (at least) one kernel on a GPU."""
    if func.namespace in ("prim", NAMESPACE) or func.is_view or _base_name(func) in _NO_KERNEL:
        return False
    return bool(_tensors(out))


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a kernel touches reading or writing ``t``: broadcast (stride-0) dimensions count once."""
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            n *= size
    return n * t.element_size()


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


# --------------------------------------------------------------------------------------------
# compulsory bytes of the fused kernels (the byte tables of the kernel docstrings)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelBytes:
    """One kernel (or library call) of a fused op: what it must read and write."""

    name: str
    read: int
    written: int

    @property
    def total(self) -> int:
        return self.read + self.written


def layer_norm_bytes(shape, element_size: int = 4, *, backward: bool = False) -> list[KernelBytes]:
    """``kernels/layernorm.py``: forward reads x, writes y and fp32 mean/rstd per pixel (8 B/elem + 8 B/pixel
    in fp32); backward reads x, dy and mean/rstd, writes dx (12 B/elem + 8 B/pixel)."""
    B, C, H, W = shape
    elems, pixels = B * C * H * W, B * H * W
    if not backward:
        return [KernelBytes("_ln_fwd_kernel", elems * element_size, elems * element_size + 8 * pixels)]
    return [KernelBytes("_ln_bwd_kernel", 2 * elems * element_size + 8 * pixels, elems * element_size)]


def attention_bytes(shape, element_size: int = 4, *, residual: bool = False, backward: bool = False,
                    input_grad: bool = True) -> list[KernelBytes]:
    """``kernels/attention.py`` in units of one d-channel tensor (B*d*H*W elements): forward 8 units
    (+1 with the residual read), backward 29 units (25 without the input gradient)."""
    B, D, H, W = shape
    u = B * D * H * W * element_size
    if not backward:
        return [
            KernelBytes("qkv 1x1 (cuBLAS): read x, write t0", u, 3 * u),
            KernelBytes("_attn_qk_gram_kernel: read q, k of t0", 2 * u, 0),
            KernelBytes("_attn_mix_kernel: read v of t0 (+ residual), write out", u * (2 if residual else 1), u),
        ]
    return [
        KernelBytes("_attn_dout_v_kernel: read dout, v", 2 * u, 0),
        KernelBytes("depthwise 3x3 of q, k: read t0's q, k, write q, k", 2 * u, 2 * u),
        KernelBytes("_attn_dqk_kernel: read q, k, write dq, dk", 2 * u, 2 * u),
        KernelBytes("_attn_mix_kernel (dV = M^T dout): read dout, write dv", u, u),
        KernelBytes("depthwise 3x3 backward: read dt, t0, write dt0", 6 * u, 3 * u),
        KernelBytes("qkv 1x1 backward (cuBLAS): dx = W^T dt0, dW = dt0 x^T",
                    (6 + 1) * u if input_grad else 4 * u, u if input_grad else 0),
    ]


def feedforward_bytes(shape, hidden: int, element_size: int = 4, *, residual: bool = False,
                      backward: bool = False, input_grad: bool = True) -> list[KernelBytes]:
    """``kernels/feedforward.py`` in channel planes (B*H*W elements), d = dim, h = hidden: forward
    2d + 12h (+ d with the residual), backward 5d + 40h (1620 and 5320 planes = 0.42 and 1.39 GB at
    level 1, 256x256). The backward recomputes y and ab from x, its uv kernel writes duv and uv (for
    dW_out by cuBLAS), and the three cuBLAS products read dout, uv, dy (twice) and x."""
    B, D, H, W = shape
    p = B * H * W * element_size
    h = hidden
    if not backward:
        return [
            KernelBytes("project_in (cuBLAS): read x, write y", D * p, 2 * h * p),
            KernelBytes("depthwise 3x3 + 5x5 (stage 1): read y, write ab", 2 * h * p, 4 * h * p),
            KernelBytes("_ffn_fwd[_words]_kernel (stage 2 + project_out): read ab (+ residual), write out",
                        (4 * h + (D if residual else 0)) * p, D * p),
        ]
    return [
        KernelBytes("recompute y, ab: read x, y, write y, ab", (D + 2 * h) * p, 6 * h * p),
        KernelBytes("_ffn_bwd_uv_kernel: read ab, dout, write duv, uv", (4 * h + D) * p, 4 * h * p),
        KernelBytes("_ffn_bwd_x_kernel: read duv, ab, write dab", 6 * h * p, 4 * h * p),
        KernelBytes("depthwise backward (stage 1): read dab, y, write dy", 6 * h * p, 2 * h * p),
        KernelBytes("cuBLAS: dW_out = dout uv^T, dW_in = dy x^T" + (", dx = W_in^T dy" if input_grad else ""),
                    (2 * D + (6 if input_grad else 4) * h) * p, (D if input_grad else 0) * p),
    ]


def _attention_fwd_op(args, out):
    x, residual = args[0], args[12]
    return attention_bytes(x.shape, x.element_size(), residual=residual is not None)


def _attention_bwd_op(args, out):
    x, needs_input_grad = args[1], args[16]
    return attention_bytes(x.shape, x.element_size(), backward=True, input_grad=bool(needs_input_grad))


def _layer_norm_fwd_op(args, out):
    return layer_norm_bytes(args[0].shape, args[0].element_size())


def _layer_norm_bwd_op(args, out):
    return layer_norm_bytes(args[1].shape, args[1].element_size(), backward=True)


def _ffn_fwd_op(args, out):
    x, in_weight, residual = args[0], args[1], args[13]
    return feedforward_bytes(x.shape, in_weight.shape[0] // 2, x.element_size(), residual=residual is not None)


def _ffn_bwd_op(args, out):
    x, in_weight, need_input_grad = args[1], args[2], args[14]
    return feedforward_bytes(x.shape, in_weight.shape[0] // 2, x.element_size(), backward=True,
                             input_grad=bool(need_input_grad))


def mefc_step_bytes(shape, element_size: int = 4, *, backward: bool = False,
                    input_grad: bool = True) -> list[KernelBytes]:
    """One MEFC step (``drsformer_fast::mefc_step_fwd`` / ``_bwd``) on ``s: [B, C, H, W]``: the total is
    the kernel module's ``traffic_bytes`` (``kernels/mefc.py`` for the forward, ``kernels/mefc_backward.py``
    for the backward; the planned forward: read s, write the four sep-conv intermediates t (4C), read t
    and s, write s_out: 11 C-planes). Those publish one number per pass, so the split is: written =
    the op's own outputs (s_out; ds when ``input_grad``), read = the rest, intermediates included.
    Per-sample [C, 8C] matrices and weight gradients are small and left out, as for the other ops."""
    B, C, H, W = shape
    if not backward:
        from ..kernels.mefc import traffic_bytes

        total = traffic_bytes(B, C, H, W, element_size)
        out = B * C * H * W * element_size
        return [KernelBytes("mefc step forward (kernels.mefc.traffic_bytes; written: s_out only)", total - out, out)]
    from ..kernels.mefc_backward import traffic_bytes

    total = traffic_bytes(B, C, H, W, element_size)
    out = B * C * H * W * element_size if input_grad else 0
    return [KernelBytes("mefc step backward (kernels.mefc_backward.traffic_bytes; written: ds only)",
                        total - out, out)]


def _mefc_step_fwd_op(args, out):
    return mefc_step_bytes(args[0].shape, args[0].element_size())


def _mefc_step_bwd_op(args, out):
    s, needs_input_grad = args[1], args[8]
    return mefc_step_bytes(s.shape, s.element_size(), backward=True, input_grad=bool(needs_input_grad))


def _mefc_mixing_op(args, out):
    """The mixing matrices of all steps (``drsformer_fast::mefc_mixing``): the routing weights and the
    stacked weights read once, m written once (the backward is plain ATen, counted launch by launch)."""
    w, w_out, last = args
    read = sum(t.numel() * t.element_size() for t in (w, w_out, last))
    return [KernelBytes("mefc mixing matrices: read w and the stacked weights, write m", read,
                        out.numel() * out.element_size())]


# custom op name -> compulsory bytes from its (args, outputs)
FUSED_OP_BYTES: dict[str, Callable] = {
    "ffn_fwd": _ffn_fwd_op,
    "ffn_bwd": _ffn_bwd_op,
    "layer_norm_fwd": _layer_norm_fwd_op,
    "layer_norm_bwd": _layer_norm_bwd_op,
    "topk_attention_fwd": _attention_fwd_op,
    "topk_attention_bwd": _attention_bwd_op,
    "mefc_step_fwd": _mefc_step_fwd_op,
    "mefc_step_bwd": _mefc_step_bwd_op,
    "mefc_mixing": _mefc_mixing_op,
}


# --------------------------------------------------------------------------------------------
# the dispatch mode
# --------------------------------------------------------------------------------------------


@dataclass
class OpRecord:
    """One op. ``kind``: "aten" or "triton" (one launch each) or "fused" (a custom op: no launch of its
    own, charged its compulsory bytes). ``inside``: the custom op whose launcher ran this launch (its
    bytes are in that op's charge, so ``read``/``written`` are None here)."""

    name: str
    kind: str
    read: int | None = None
    written: int | None = None
    inside: str | None = None
    parts: list[KernelBytes] = field(default_factory=list)
    # a Triton launch as called (with ``OpRecorder(keep_calls=True)``): the JIT function, its
    # positional arguments, keywords (constexprs, num_warps, ...) and grid (``drsformer_fast.perf.launches``)
    call: tuple | None = None

    @property
    def launch(self) -> bool:
        return self.kind in ("aten", "triton")


class OpRecorder(TorchDispatchMode):
    """Records kernel launches and bytes moved while active (see the module docstring).

    Each custom op is charged its compulsory bytes (:data:`FUSED_OP_BYTES`), then its launcher runs
    under the mode so that its ATen ops and Triton launches are counted. With ``run_triton=False``
    Triton launches are counted but not executed: that is how the launchers run on fake tensors
    (they never read data back to the host, so what they launch cannot depend on the data).
    """

    def __init__(self, run_triton: bool = True, keep_calls: bool = False):
        super().__init__()
        self.run_triton = run_triton
        self.keep_calls = keep_calls
        self.records: list[OpRecord] = []
        self._in_triton = 0
        self._open: list[str] = []  # custom ops whose launcher is running

    def triton_launch(self, name: str, call: tuple | None = None) -> None:
        self.records.append(OpRecord(name, "triton", inside=self._open[-1] if self._open else None,
                                     call=call if self.keep_calls else None))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # prim ops are metadata (device, ...); inside a Triton launch the interpreter moves tensors to
        # and from NumPy: neither is the model's work
        if self._in_triton or func.namespace == "prim":
            return func(*args, **kwargs)
        if func.namespace == NAMESPACE:
            return self._fused(func, args, kwargs)
        if torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), torch._C.DispatchKey.CompositeImplicitAutograd):
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        out = func(*args, **kwargs)
        if launches_kernel(func, out):
            name = f"aten.{_base_name(func)}"
            if self._open:
                self.records.append(OpRecord(name, "aten", inside=self._open[-1]))
            else:
                base = _base_name(func)
                inputs = [] if base in _READS_NO_INPUT else _tensors((args, kwargs))
                if base == "copy_":
                    inputs = _tensors(args[1])
                self.records.append(OpRecord(name, "aten", sum(map(tensor_bytes, inputs)),
                                             sum(map(tensor_bytes, _tensors(out)))))
        return out

    def _fused(self, func, args, kwargs):
        name = _base_name(func)
        model = FUSED_OP_BYTES.get(name)
        if model is None:
            raise KeyError(f"no byte model for the custom op {NAMESPACE}::{name}; add one to "
                           "drsformer_fast.perf.accounting.FUSED_OP_BYTES")
        record = OpRecord(f"{NAMESPACE}::{name}", "fused")
        self.records.append(record)
        device = next((t.device for t in _tensors((args, kwargs))), torch.device("cpu"))
        key = torch._C.DispatchKey.CUDA if device.type == "cuda" else torch._C.DispatchKey.CPU
        self._open.append(record.name)
        try:
            with self:  # the launcher itself, straight at the backend's kernel, with this mode active
                out = func.redispatch(torch._C.DispatchKeySet(key), *args, **kwargs)
        finally:
            self._open.pop()
        record.parts = model(args, out)
        record.read = sum(p.read for p in record.parts)
        record.written = sum(p.written for p in record.parts)
        return out


@contextlib.contextmanager
def _count_triton_launches(recorder: OpRecorder):
    """Wrap ``run`` of Triton's kernel classes: each call with ``warmup=False`` is one launch (run,
    or only counted when the recorder does not run Triton)."""
    from triton.runtime.jit import JITFunction

    classes = [JITFunction]
    try:
        from triton.runtime.interpreter import InterpretedFunction

        classes.append(InterpretedFunction)
    except ImportError:  # pragma: no cover (older Triton)
        pass
    originals = {cls: cls.__dict__["run"] for cls in classes if "run" in cls.__dict__}

    def wrap(run):
        def counted(self, *args, grid, warmup, **kwargs):
            if warmup:
                return run(self, *args, grid=grid, warmup=warmup, **kwargs)
            recorder.triton_launch(getattr(getattr(self, "fn", None), "__name__", type(self).__name__),
                                   (self, args, kwargs, grid))
            if not recorder.run_triton:
                return None
            recorder._in_triton += 1
            try:
                return run(self, *args, grid=grid, warmup=warmup, **kwargs)
            finally:
                recorder._in_triton -= 1

        return counted

    for cls, run in originals.items():
        cls.run = wrap(run)
    try:
        yield
    finally:
        for cls, run in originals.items():
            cls.run = run


@dataclass
class Profile:
    """What one forward (and backward) did: the records of each pass."""

    forward: list[OpRecord]
    backward: list[OpRecord]

    @staticmethod
    def launches_of(records: list[OpRecord]) -> int:
        return sum(1 for r in records if r.launch)

    @staticmethod
    def bytes_of(records: list[OpRecord]) -> int:
        return sum(r.read + r.written for r in records if r.read is not None)

    def summary(self) -> dict:
        fwd, bwd = self.forward, self.backward
        return {
            "launches_forward": self.launches_of(fwd),
            "launches_forward_backward": self.launches_of(fwd) + self.launches_of(bwd),
            "bytes_forward": self.bytes_of(fwd),
            "bytes_forward_backward": self.bytes_of(fwd) + self.bytes_of(bwd),
        }

    def fused_parts(self) -> dict:
        """The compulsory bytes of every fused kernel, per pass: {"forward": [...], "backward": [...]}."""
        return {name: [{"op": r.name, "kernel": p.name, "read": p.read, "written": p.written}
                       for r in records if r.kind == "fused" for p in r.parts]
                for name, records in (("forward", self.forward), ("backward", self.backward))}


def profile(module: torch.nn.Module, x: torch.Tensor | tuple, *, backward: bool = True, fake: bool = True,
            keep_calls: bool = False) -> Profile:
    """One forward of ``module`` and (with ``backward``) one backward from a ones gradient, recorded
    pass by pass. ``x``: an input tensor, or a shape for a zero input in the module's dtype.

    With ``fake`` (the default) everything runs on fake tensors (real shapes, no memory, no compute)
    and Triton launches are counted without running; otherwise ``x`` is real and every kernel runs
    (on a GPU, or in Triton's interpreter). The module's output must have the input's shape (true of
    every DRSformer block and of the model). ``keep_calls``: keep each Triton launch's arguments and
    grid in its record (``OpRecord.call``).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    p = next(module.parameters())
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext()
    with fake_mode:
        if isinstance(x, torch.Tensor):
            x = fake_mode.from_tensor(x) if fake else x
        else:
            x = torch.zeros(tuple(x), dtype=p.dtype, device=p.device)
        x = x.detach().requires_grad_(backward)
        grad = torch.ones_like(x) if backward else None
        leaves = [x] + [q for q in module.parameters() if q.requires_grad]
        recorder = OpRecorder(run_triton=not fake, keep_calls=keep_calls)
        with _count_triton_launches(recorder), recorder, torch.set_grad_enabled(backward):
            out = module(x)
            n = len(recorder.records)
            if backward:
                # gradients returned, not accumulated into .grad: what a training step after
                # zero_grad(set_to_none=True) does (AccumulateGrad takes the tensor: no kernel), and
                # the module's .grad stays untouched (no fake tensors left behind)
                torch.autograd.grad(out, leaves, grad, allow_unused=True)
    return Profile(recorder.records[:n], recorder.records[n:])
