"""A memory checker for Triton's CPU interpreter (test support, switched on by ``tests/conftest.py``).

The interpreter does not check memory: a lane outside a tensor reads or writes whatever host memory
lies there, where a GPU would fault or return garbage. Once :func:`install` has run, every launch of
a ``@triton.jit`` kernel in the interpreter is checked:

- per launch, the bytes of every element of every tensor argument (tuples included) are known from
  the tensor's pointer, shape, strides and element size: a strided view's gaps are not its bytes;
- every active lane of every load, store and atomic must lie inside one element run of some argument
  (an access wider than the element, e.g. an int32 word over two fp16 elements, must cover whole
  elements of one tensor) and be aligned to its own width (2-byte halves, 4-byte words, 8-byte
  pairs), as the GPU requires;
- ``tl.multiple_of``, ``tl.max_contiguous`` and ``tl.max_constancy`` hints are checked against the
  values they are given, on every lane (the compiler trusts them for masked-off lanes too).

Lanes that fail are masked off before the real access, so a bad store is reported instead of
corrupting memory, and a bad load reads ``other`` (zero). The findings of a launch are raised as one
:class:`MemcheckError` when the launch returns, each naming the kernel, the source line, the program,
the launch's arguments (shapes, strides, storage offsets) and the offending address relative to the
nearest tensor, e.g. ``x_ptr[4, 3] + 12 bytes (past the end of x_ptr)``. Every finding is also kept
in :data:`FINDINGS`, which the test fixture checks, so that a test catching the exception still fails.

The interpreter's internals differ between Triton versions (3.6 passes the cache modifier and
eviction policy to ``create_masked_load`` where 3.9 passes one cache policy): the hooks wrap the
methods and pass every argument after the ones they read through unchanged. :func:`install` refuses
(``RuntimeError``) a Triton whose interpreter lacks one of the hook points, rather than not checking.
Tensor descriptors (TMA) are not checked: a kernel making one fails with a clear error.

``DRSFORMER_FAST_MEMCHECK=0`` in the environment leaves the checker off (``enabled_by_env``), for
timing the tests without it.
"""

from __future__ import annotations

import contextlib
import linecache
import os
import sys
from dataclasses import dataclass, field

import numpy as np

ENV_SWITCH = "DRSFORMER_FAST_MEMCHECK"
MAX_REPORTED = 6  # findings printed per launch (all are counted)

# Every finding since the last :func:`take_findings` (the conftest fixture empties it per test).
FINDINGS: list[Finding] = []

_STATE = {"installed": False, "collecting": 0, "accesses": 0}
_LAUNCHES: list[_Launch] = []
_HINTS = {"tt.divisibility": "multiple_of", "tt.contiguity": "max_contiguous", "tt.constancy": "max_constancy"}


class MemcheckError(AssertionError):
    """One launch's findings: out-of-bounds, gap, misaligned accesses or false hints."""


def enabled_by_env() -> bool:
    return os.environ.get(ENV_SWITCH, "1") != "0"


def installed() -> bool:
    return _STATE["installed"]


def access_count() -> int:
    """Loads, stores and atomics checked so far in this process (a test can see the checker work)."""
    return _STATE["accesses"]


def take_findings() -> list[Finding]:
    """The findings recorded since the last call, removed from :data:`FINDINGS`."""
    out = list(FINDINGS)
    FINDINGS.clear()
    return out


@contextlib.contextmanager
def collecting():
    """Inside, launches record their findings without raising; yields the list they go to."""
    start = len(FINDINGS)
    found: list[Finding] = []
    _STATE["collecting"] += 1
    try:
        yield found
    finally:
        _STATE["collecting"] -= 1
        found.extend(FINDINGS[start:])
        del FINDINGS[start:]


# --------------------------------------------------------------------------------------------------
# tensor arguments as byte regions


class _Region:
    """The elements of one tensor argument: byte offsets ``sum(i_k * stride_k) * itemsize``."""

    def __init__(self, name: str, t) -> None:
        self.name = name
        self.ptr = int(t.data_ptr())
        self.item = int(t.element_size())
        self.shape = tuple(int(s) for s in t.shape)
        self.strides = tuple(int(s) for s in t.stride())
        self.offset = int(t.storage_offset())
        self.dtype = str(t.dtype).replace("torch.", "")
        self.numel = int(t.numel())
        # dims that address distinct elements, by byte stride, largest first
        dims = [(self.strides[d] * self.item, self.shape[d], d) for d in range(len(self.shape))
                if self.shape[d] > 1 and self.strides[d] != 0]
        dims.sort(key=lambda x: -x[0])
        self.dims = dims
        neg = any(s < 0 for s, _, _ in dims)
        if self.numel == 0:
            self.lo = self.hi = self.ptr
        else:
            self.lo = self.ptr + sum(min(0, s * (n - 1)) for s, n, _ in dims)
            self.hi = self.ptr + sum(max(0, s * (n - 1)) for s, n, _ in dims) + self.item
        # dense: the elements tile [lo, hi) without gaps (contiguous, channels-last, permuted, ...)
        self.dense = not neg and self.hi - self.lo == self.numel * self.item
        # non-overlapping strided layouts decompose an offset greedily, dimension by dimension
        ok = not neg
        inner = self.item
        for s, n, _ in reversed(dims):
            ok = ok and s >= inner
            inner = s * n
        self.greedy = ok
        self._starts = None
        if not self.dense and not self.greedy and self.numel:
            offs = np.zeros(1, dtype=np.int64)
            for s, n, _ in dims:
                offs = (offs[:, None] + np.arange(n, dtype=np.int64)[None, :] * s).reshape(-1)
            self._starts = np.unique(offs)

    def describe(self) -> str:
        return f"{self.name}: {self.dtype}{list(self.shape)} strides {list(self.strides)} offset {self.offset}"

    def _residual(self, off: np.ndarray):
        """(index valid, byte offset from the start of the element at or below ``off``)."""
        if self.greedy:
            valid = off >= 0
            r = off.copy()
            for s, n, _ in self.dims:
                i = r // s
                valid &= i < n
                r -= i * s
            return valid & (r < self.item), r
        idx = np.searchsorted(self._starts, off, side="right") - 1
        r = off - self._starts[np.maximum(idx, 0)]
        return (idx >= 0) & (r < self.item), r

    def valid(self, a: np.ndarray, width: int) -> np.ndarray:
        """Whether each access of ``width`` bytes at address ``a`` lies on this tensor's elements."""
        off = a - self.ptr
        if self.numel == 0:
            return np.zeros(a.shape, dtype=bool)
        inside = (a >= self.lo) & (a + width <= self.hi)
        if width >= self.item:
            if self.dense:
                return inside & ((a - self.lo) % self.item == 0)
            ok = inside
            for k in range(0, width, self.item):  # every element the access covers
                v, r = self._residual(off + k)
                ok = ok & v & (r == 0)
            return ok
        if self.dense:
            return inside & ((a - self.lo) % self.item + width <= self.item)
        v, r = self._residual(off)
        return inside & v & (r + width <= self.item)

    def nearest(self, addr: int) -> str:
        """``name[i, j] + k bytes``: the element at or before ``addr`` (clamped to the tensor)."""
        if self.numel == 0:
            return f"{self.name} (empty) + {addr - self.ptr} bytes"
        r = addr - self.ptr
        index = [0] * len(self.shape)
        for s, n, d in self.dims:
            i = min(max(r // s, 0), n - 1) if s > 0 else 0
            index[d] = i
            r -= i * s
        where = f"{self.name}[{', '.join(map(str, index))}]"
        return where if r == 0 else f"{where} {'+' if r > 0 else '-'} {abs(r)} bytes"


def _regions(name: str, arg, out: list) -> None:
    if isinstance(arg, tuple):
        for i, a in enumerate(arg):
            _regions(f"{name}[{i}]", a, out)
        return
    base = getattr(arg, "base", None)  # triton's TensorWrapper (reinterpreted dtype)
    if base is not None and hasattr(base, "data_ptr") and not hasattr(arg, "untyped_storage"):
        out.append(_Region(name, base))
    elif hasattr(arg, "data_ptr") and hasattr(arg, "stride"):
        out.append(_Region(name, arg))


def _scalar_text(name, v) -> str | None:
    if isinstance(v, bool | int | float):
        return f"{name}={v}"
    value = getattr(v, "value", None)  # tl.constexpr
    if isinstance(value, bool | int | float):
        return f"{name}={value}"
    return None


# --------------------------------------------------------------------------------------------------
# findings


@dataclass
class Finding:
    kernel: str
    kind: str  # "out of bounds", "gap", "misaligned", "hint"
    op: str  # "load", "store", "atomic", or the hint's name
    site: str  # file:line: source
    program: tuple
    detail: str
    launch: str
    count: int = 1
    extra: dict = field(default_factory=dict)

    def __str__(self) -> str:
        head = {"out of bounds": f"out-of-bounds {self.op}", "gap": f"{self.op} in a strided view's gap",
                "misaligned": f"misaligned {self.op}", "hint": f"false tl.{self.op} hint"}[self.kind]
        return (f"memcheck: {head} in kernel {self.kernel} at {self.site}, program {self.program} "
                f"({self.count} bad lane{'s' if self.count != 1 else ''} in this launch)\n"
                f"    {self.detail}\n    launch: {self.launch}")


def _site() -> str:
    """``file:line: source`` of the innermost kernel (or jit helper) frame on the stack."""
    f = sys._getframe(1)
    while f is not None:
        path = f.f_code.co_filename
        if not (path.startswith(_TRITON_DIR) or path == __file__ or path.startswith(_NUMPY_DIR)
                or "<" in path):
            line = linecache.getline(path, f.f_lineno).strip()
            rel = os.path.relpath(path) if path.startswith(os.getcwd()) else path
            return f"{rel}:{f.f_lineno}: `{line}`"
        f = f.f_back
    return "<unknown line>"


class _Launch:
    def __init__(self, executor) -> None:
        self.executor = executor
        fn = executor.fn
        self.kernel = getattr(fn, "__name__", str(fn))
        self.regions: list[_Region] = []
        self.summary = ""
        self.findings: dict[tuple, Finding] = {}

    def register(self, arg_names, args, kwargs) -> None:
        named = list(zip(arg_names, args)) + list(kwargs.items())
        scalars = []
        for name, arg in named:
            before = len(self.regions)
            _regions(name, arg, self.regions)
            if len(self.regions) == before:
                text = _scalar_text(name, arg)
                if text is not None:
                    scalars.append(text)
        self.summary = "; ".join([r.describe() for r in self.regions] + ([", ".join(scalars)] if scalars else []))

    def program(self):
        return tuple(getattr(_interp().interpreter_builder, "grid_idx", ()))

    def record(self, kind, op, detail, count) -> None:
        site = _site()
        key = (kind, op, site)
        if key in self.findings:
            self.findings[key].count += count
            return
        finding = Finding(self.kernel, kind, op, site, self.program(), detail, self.summary, count)
        self.findings[key] = finding
        FINDINGS.append(finding)

    def locate(self, a: np.ndarray, width: int) -> np.ndarray:
        """Which accesses lie on some argument's elements (the region hit last is tried first)."""
        ok = np.zeros(a.shape, dtype=bool)
        todo = None  # indices of a still unmatched; None: all
        sub = a
        for k, reg in enumerate(self.regions):
            if sub.size == 0:
                break
            if reg.hi <= sub.min() or reg.lo >= sub.max() + width:
                continue
            v = reg.valid(sub, width)
            if not v.any():
                continue
            if k:
                self.regions.insert(0, self.regions.pop(k))
            if todo is None:
                ok = v
            else:
                ok[todo[v]] = True
            if v.all():
                break
            todo = np.flatnonzero(~ok)
            sub = a[todo]
        return ok

    def explain(self, addr: int, width: int) -> tuple[str, str]:
        """(kind, where) for one bad access: relative to the tensor whose span holds it, else the
        nearest one."""
        misaligned = addr % width != 0
        spans = [r for r in self.regions if r.lo <= addr < r.hi]
        if spans:
            r = spans[0]
            ok = r.valid(np.array([addr - addr % width], dtype=np.int64), width)[0]
            if misaligned and (ok or addr + width <= r.hi):
                kind = "misaligned"
                where = f"{r.nearest(addr)}: a {width}-byte access at an address not a multiple of {width}"
            elif addr + width > r.hi:
                kind = "out of bounds"
                where = f"{r.nearest(addr)}, running {addr + width - r.hi} bytes past the end of {r.name}"
            else:
                kind = "gap"
                where = (f"{r.nearest(addr)}: inside the span of {r.name} but not on its elements "
                         f"(strides {list(r.strides)}, {r.item}-byte elements)")
            return kind, where
        if not self.regions:
            return "out of bounds", f"address {addr:#x}: the launch has no tensor arguments"

        def dist(r):
            return r.lo - addr if addr < r.lo else addr - r.hi + 1

        r = min(self.regions, key=dist)
        side = f"before the start of {r.name}" if addr < r.lo else f"past the end of {r.name}"
        return "out of bounds", f"{r.nearest(addr)} ({side})"

    def check(self, op: str, ptrs, mask) -> np.ndarray | None:
        """The mask with every bad lane cleared, or None when every active lane is good."""
        _STATE["accesses"] += 1
        addr = ptrs.data
        width = max(1, ptrs.get_element_ty().primitive_bitwidth // 8)
        if mask is None:
            m = np.ones(addr.shape, dtype=bool)
        else:
            m = np.broadcast_to(np.asarray(mask.data, dtype=bool), addr.shape)
        a = addr[m].astype(np.int64)
        if a.size == 0:
            return None
        good = self.locate(a, width) & (a % width == 0)
        if good.all():
            return None
        bad = np.flatnonzero(~good)
        seen: dict[str, list] = {}
        for i in bad[:64]:  # classify the first few bad lanes
            kind, where = self.explain(int(a[i]), width)
            seen.setdefault(kind, [where, 0])[1] += 1
        dtype = ptrs.get_element_ty()
        if len(seen) == 1:
            seen[next(iter(seen))][1] = len(bad)
        for kind, (where, n) in seen.items():
            self.record(kind, op, f"{len(bad)} of {a.size} active lanes bad ({width}-byte {dtype} accesses); "
                        f"first at {where}", n)
        new = np.array(np.broadcast_to(m, addr.shape), copy=True)
        flat_idx = np.flatnonzero(new)
        new.reshape(-1)[flat_idx[bad]] = False
        return new

    def check_hint(self, handle, name: str, values) -> None:
        what = _HINTS[name]
        x = np.asarray(handle.data)
        if x.ndim == 0:
            x = x.reshape(1)
        ty = handle.dtype
        is_ptr = hasattr(ty, "element_ty") and getattr(ty, "is_ptr", lambda: False)()
        step = max(1, ty.element_ty.primitive_bitwidth // 8) if is_ptr else 1
        if not np.issubdtype(x.dtype, np.integer):
            return
        x = x.astype(np.int64)
        for d, n in enumerate(values):
            n = int(n)
            if n <= 1 or d >= x.ndim:
                continue
            length = x.shape[d]
            diff = np.diff(x, axis=d)
            pos = np.arange(length - 1).reshape([-1 if k == d else 1 for k in range(x.ndim)])
            if what == "multiple_of":
                # the first value of every contiguous run along d must be a multiple of n
                starts = np.concatenate([np.ones_like(np.take(x, [0], axis=d), dtype=bool), diff != step], axis=d)
                bad = starts & (x % n != 0)
                if bad.any():
                    i = tuple(int(v) for v in np.argwhere(bad)[0])
                    self.record("hint", what, f"tl.multiple_of(..., {n}) along dim {d}: element {list(i)} is "
                                f"{int(x[i])}, which starts a run and is not a multiple of {n} "
                                f"({int(bad.sum())} such)", int(bad.sum()))
                    return
            else:
                within = ((pos + 1) % min(n, length)) != 0
                want = step if what == "max_contiguous" else 0
                bad = np.broadcast_to(within, diff.shape) & (diff != want)
                if bad.any():
                    i = tuple(int(v) for v in np.argwhere(bad)[0])
                    j = list(i)
                    j[d] += 1
                    rule = "increase by 1" if what == "max_contiguous" else "be equal"
                    self.record("hint", what, f"tl.{what}(..., {n}) along dim {d}: elements {list(i)} and {j} are "
                                f"{int(x[i])} and {int(x[tuple(j)])}; within each group of {min(n, length)} "
                                f"they must {rule} ({int(bad.sum())} such)", int(bad.sum()))
                    return

    def finish(self) -> None:
        if not self.findings or _STATE["collecting"]:
            return
        found = list(self.findings.values())
        text = "\n".join(str(f) for f in found[:MAX_REPORTED])
        if len(found) > MAX_REPORTED:
            text += f"\n... and {len(found) - MAX_REPORTED} more findings"
        raise MemcheckError(text)


# --------------------------------------------------------------------------------------------------
# hooks into the interpreter


def _interp():
    import triton.runtime.interpreter as interp

    return interp


_TRITON_DIR = ""
_NUMPY_DIR = os.path.dirname(np.__file__)


def _current() -> _Launch | None:
    return _LAUNCHES[-1] if _LAUNCHES else None


HOOK_POINTS = [
    ("GridExecutor", "__call__"), ("GridExecutor", "_init_args_hst"),
    ("InterpreterBuilder", "create_masked_load"), ("InterpreterBuilder", "create_masked_store"),
    ("InterpreterBuilder", "create_load"), ("InterpreterBuilder", "create_store"),
    ("InterpreterBuilder", "create_atomic_rmw"), ("InterpreterBuilder", "create_atomic_cas"),
    ("TensorHandle", "set_attr"),
]


def install() -> None:
    """Patch the interpreter (idempotent). Raises RuntimeError if a hook point is missing."""
    global _TRITON_DIR
    if _STATE["installed"]:
        return
    import triton

    interp = _interp()
    _TRITON_DIR = os.path.dirname(triton.__file__)
    missing = [f"{c}.{m}" for c, m in HOOK_POINTS if not hasattr(getattr(interp, c, None), m)]
    if not hasattr(interp, "interpreter_builder"):
        missing.append("interpreter_builder")
    if missing:
        raise RuntimeError(f"memcheck: Triton {triton.__version__}'s interpreter lacks {', '.join(missing)}: "
                           f"the memory checker cannot run (set {ENV_SWITCH}=0 to run the tests unchecked)")
    _check_load_routes(interp)
    GE, IB, TH = interp.GridExecutor, interp.InterpreterBuilder, interp.TensorHandle

    call, init = GE.__call__, GE._init_args_hst

    def grid_call(self, *args, **kwargs):
        launch = _Launch(self)
        _LAUNCHES.append(launch)
        try:
            result = call(self, *args, **kwargs)
        finally:
            _LAUNCHES.pop()
        launch.finish()
        return result

    def init_args(self, *args, **kwargs):
        args_hst, kwargs_hst = init(self, *args, **kwargs)
        launch = _current()
        if launch is not None and launch.executor is self:
            launch.register(self.arg_names, args_hst, kwargs_hst)
        return args_hst, kwargs_hst

    masked_load, masked_store = IB.create_masked_load, IB.create_masked_store
    atomic_rmw, atomic_cas = IB.create_atomic_rmw, IB.create_atomic_cas

    def _masked(op, ptrs, mask):
        launch = _current()
        if launch is None:
            return mask
        new = launch.check(op, ptrs, mask)
        return mask if new is None else interp.TensorHandle(new, mask.dtype)

    def load(self, ptrs, mask, other, *rest):
        return masked_load(self, ptrs, _masked("load", ptrs, mask), other, *rest)

    def store(self, ptrs, value, mask, *rest):
        return masked_store(self, ptrs, value, _masked("store", ptrs, mask), *rest)

    def rmw(self, op, ptrs, val, mask, *rest):
        return atomic_rmw(self, op, ptrs, val, _masked("atomic", ptrs, mask), *rest)

    def cas(self, ptrs, cmp, val, *rest):
        launch = _current()
        if launch is not None and launch.check("atomic", ptrs, None) is not None:
            raise MemcheckError("memcheck: bad atomic_cas (no mask to clear lanes with):\n"
                                + "\n".join(str(f) for f in launch.findings.values()))
        return atomic_cas(self, ptrs, cmp, val, *rest)

    set_attr = TH.set_attr

    def hinted(self, key, value):
        set_attr(self, key, value)
        launch = _current()
        if launch is not None and key in _HINTS:
            launch.check_hint(self, key, value if isinstance(value, list | tuple) else [value])

    GE.__call__, GE._init_args_hst = grid_call, init_args
    IB.create_masked_load, IB.create_masked_store = load, store
    IB.create_atomic_rmw, IB.create_atomic_cas = rmw, cas
    TH.set_attr = hinted
    if hasattr(IB, "create_make_tensor_descriptor"):
        def no_descriptors(self, *args, **kwargs):
            raise NotImplementedError("memcheck does not check tensor descriptors (TMA): run with "
                                      f"{ENV_SWITCH}=0 to use them in the interpreter")

        IB.create_make_tensor_descriptor = no_descriptors
    _STATE["installed"] = True


def _check_load_routes(interp) -> None:
    """The unmasked load and store must go through the masked ones (what the hooks wrap)."""
    import inspect

    for name, target in (("create_load", "create_masked_load"), ("create_store", "create_masked_store")):
        src = inspect.getsource(getattr(interp.InterpreterBuilder, name))
        if target not in src:
            raise RuntimeError(f"memcheck: the interpreter's {name} no longer calls {target}: "
                               "unmasked accesses would go unchecked; adapt tests/memcheck.py")
