"""Every Triton launch the fast modules make at a given shape, captured on fake tensors, with the
specialisation Triton would compile for a given GPU.

Used by the static performance report (``static_report``), the compile check
(``drsformer_fast/perf/compile_check.py``) and the size-limit test (``tests/kernels/test_grid_limits.py``). The modules
run under ``accounting.profile(..., fake=True, keep_calls=True)``: real shapes, no memory, no
compute; each ``JITFunction.run`` is recorded (kernel, arguments, keywords, grid), not executed
(the launchers never read data back to the host, so what they launch does not depend on the data).

Without ``TRITON_INTERPRET`` the fast ops take the Triton path only for CUDA tensors; here the
tensors are fake CPU tensors, so :func:`forced_triton_path` makes them take it anyway and makes the
launchers see the target's GPU (``arch``: 90 for an H100 SXM, 80 for an A100): its multiprocessor count
(132, 108) where they size grids by the GPU, its compute capability where their configuration depends
on the architecture.

The specialisation is Triton's own (its binder and ``_pack_args``, as ``JITFunction.run`` does), for
a stand-in of each tensor whose address is ``storage_offset * element_size`` above a 16-byte
aligned base (PyTorch's allocator aligns every allocation to >= 512 bytes). So the rule is Triton's:
a pointer 16-byte aligned gets ``tt.divisibility=16``; an int equal to 1 becomes a constexpr; an
int divisible by 16 gets ``tt.divisibility=16``; an int >= 2**31 is passed as i64; parameters the
kernel marks ``do_not_specialize`` are left alone; ``num_stages`` is Triton's default (3) unless the
launch passes one.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field

import torch

# shapes: (name, channels, heads, downsampling factor) of the default model's blocks
from .benchmarking import BlockShape, block_shapes, ffn_hidden  # noqa: F401 (re-exported)

H100_SMS = 132
SMS = {80: 108, 90: H100_SMS}
_BASE_ADDRESS = 1 << 20  # any 16-byte (in fact 512-byte) aligned allocation


@dataclass
class Launch:
    """One captured Triton launch."""

    kernel: object  # the JITFunction (InterpretedFunction under TRITON_INTERPRET=1)
    args: tuple
    kwargs: dict
    grid: tuple[int, int, int]
    op: str | None = None  # the custom op whose launcher made it
    tags: dict = field(default_factory=dict)  # where it was captured (shape, pass, dtype)

    @property
    def name(self) -> str:
        return getattr(getattr(self.kernel, "fn", self.kernel), "__name__", str(self.kernel))

    @property
    def module(self) -> str:
        return getattr(getattr(self.kernel, "fn", self.kernel), "__module__", "")

    @property
    def programs(self) -> int:
        g = self.grid
        return g[0] * g[1] * g[2]

    def bound(self) -> dict:
        """Argument name -> value (positional arguments, keywords, defaults)."""
        import inspect

        fn = getattr(self.kernel, "fn", self.kernel)
        sig = inspect.signature(fn)
        names = set(sig.parameters)
        kw = {k: v for k, v in self.kwargs.items() if k in names}
        b = sig.bind(*self.args, **kw)
        b.apply_defaults()
        return dict(b.arguments)

    def tensors(self) -> list[tuple[str, torch.Tensor]]:
        return [(k, v) for k, v in self.bound().items() if isinstance(v, torch.Tensor)]


def _resolve_grid(kernel, args, kwargs, grid) -> tuple[int, int, int]:
    if callable(grid):
        import inspect

        fn = getattr(kernel, "fn", kernel)
        sig = inspect.signature(fn)
        kw = {k: v for k, v in kwargs.items() if k in sig.parameters}
        b = sig.bind(*args, **kw)
        b.apply_defaults()
        grid = grid(dict(b.arguments))
    g = tuple(int(v) for v in grid) + (1, 1, 1)
    return g[0], g[1], g[2]


@contextlib.contextmanager
def forced_triton_path(arch: int = 90):
    """Fake CPU tensors take the Triton path (as CUDA tensors would), and the launchers see sm_<arch>:
    ``SMS[arch]`` multiprocessors, compute capability ``arch`` and the GPU's tiles (``gpu_tiles``: under
    Triton's interpreter the launchers would otherwise take the interpreter's larger ones)."""
    from .. import (
        _dispatch,
        kernels,  # noqa: F401 (imports every kernel module, whose device queries are patched below)
    )
    from ..kernels._utils import gpu_tiles

    if arch not in SMS:
        raise ValueError(f"unknown target sm_{arch}: choose from {', '.join(f'sm_{a}' for a in SMS)}")
    state = _dispatch._kernels_state()
    if not state[0]:
        raise RuntimeError(f"the Triton kernels cannot be imported: {state[2]}")
    saved_state = _dispatch._STATE
    _dispatch._STATE = (True, True, "")  # "interpreted": every CPU tensor takes the Triton launchers
    target = {"multiprocessor_count": lambda device, _n=SMS[arch]: _n,
              "compute_capability": lambda device, _a=arch: _a}
    patched = []
    for name, mod in list(sys.modules.items()):
        if not name.startswith("drsformer_fast.kernels"):
            continue
        for attr, fake in target.items():
            if getattr(mod, attr, None) is not None:
                patched.append((mod, attr, getattr(mod, attr)))
                setattr(mod, attr, fake)
    try:
        with gpu_tiles():
            yield
    finally:
        _dispatch._STATE = saved_state
        for mod, attr, fn in reversed(patched):
            setattr(mod, attr, fn)


def _launches(records, tags) -> list[Launch]:
    out = []
    for r in records:
        if r.kind == "triton" and r.call is not None:
            kernel, args, kwargs, grid = r.call
            out.append(Launch(kernel, args, dict(kwargs), _resolve_grid(kernel, args, kwargs, grid), r.inside,
                              dict(tags)))
    return out


def capture(module: torch.nn.Module, shape, *, backward: bool, arch: int = 90, tags: dict | None = None,
            tf32: bool = True) -> tuple[list[Launch], list[Launch]]:
    """(forward launches, backward launches) of ``module`` on a fake input of ``shape`` (the module's
    dtype). ``backward=False``: an inference forward (no autograd), no backward launches. ``tf32``:
    PyTorch's cuDNN TF32 setting during the capture (its default on a GPU is on)."""
    from . import accounting

    tags = dict(tags or {})
    cudnn = torch.backends.cudnn
    saved = cudnn.allow_tf32
    try:
        cudnn.allow_tf32 = tf32
        with forced_triton_path(arch):
            prof = accounting.profile(module, tuple(shape), backward=backward, fake=True, keep_calls=True)
    finally:
        cudnn.allow_tf32 = saved
    # each launch also carries its pass's bytes by accounting's byte tables (every op, cuBLAS included)
    return (_launches(prof.forward, {**tags, "pass": "fwd", "pass_bytes": prof.bytes_of(prof.forward)}),
            _launches(prof.backward, {**tags, "pass": "bwd", "pass_bytes": prof.bytes_of(prof.backward)}))


# --------------------------------------------------------------------------------------------
# the modules at the default model's shapes
# --------------------------------------------------------------------------------------------

KINDS = ("layernorm", "attention", "feedforward", "block")


def build_module(kind: str, dim: int, heads: int, dtype: torch.dtype = torch.float32, seed: int = 0):
    """A fast module of one kind at one width (random weights, parameters in ``dtype``)."""
    from .. import modules as M

    torch.manual_seed(seed)
    if kind == "layernorm":
        m = M.ChannelLayerNorm(dim, "WithBias")
    elif kind == "attention":
        m = M.TopKSparseAttention(dim, heads, False)
    elif kind == "feedforward":
        m = M.MixedScaleFeedForward(dim, 2.66, False)
    elif kind == "block":
        m = M.FastTransformerBlock(dim, heads, 2.66, False, "WithBias")
    elif kind == "model":
        from ..model import DRSformer
        from .bench import model_config

        m = DRSformer(**model_config("with-mefc"))
    else:
        raise ValueError(f"unknown module kind {kind!r}")
    return m.to(dtype)


def capture_block(shape: BlockShape, dtype: torch.dtype, *, kind: str = "block", arch: int = 90,
                  tf32: bool = True) -> list[Launch]:
    """Forward and backward launches of one block kind at one of the default model's block shapes:
    an inference scenario's forward runs without autograd, a training scenario's with it."""
    m = build_module(kind, shape.dim, shape.heads, dtype)
    x = (shape.batch, shape.dim, shape.height, shape.width)
    tags = {"shape": shape.id, "level": shape.level, "scenario": shape.scenario, "dtype": str(dtype).split(".")[-1],
            "kind": kind}
    training = shape.scenario.startswith("train")
    fwd, bwd = capture(m, x, backward=True, arch=arch, tags=tags, tf32=tf32)
    if not training:
        fwd, _ = capture(m, x, backward=False, arch=arch, tags=tags, tf32=tf32)
    return fwd + bwd


# --------------------------------------------------------------------------------------------
# Triton's specialisation of a launch for a target
# --------------------------------------------------------------------------------------------


class _Pointer:
    """Stands in for a (fake) tensor in Triton's binder: its dtype and an address with the tensor's
    alignment (``storage_offset * element_size`` above an aligned base)."""

    def __init__(self, t: torch.Tensor):
        self.dtype = t.dtype
        self._address = _BASE_ADDRESS + t.storage_offset() * t.element_size()

    def data_ptr(self) -> int:
        return self._address


@dataclass(frozen=True)
class Specialisation:
    """What ``triton.compile`` gets for a launch: enough to compile it in another process."""

    module: str
    kernel: str
    signature: tuple  # ((name, type), ...)
    constexprs: tuple  # ((path, value), ...)
    attrs: tuple  # ((path, ((attr, value), ...)), ...)
    options: tuple  # ((option, value), ...): num_warps, num_stages, LAUNCH_OPTIONS...
    arg_names: tuple = ()  # the kernel's parameter names (for display)

    @property
    def num_warps(self) -> int:
        return int(dict(self.options).get("num_warps", 4))

    @property
    def num_stages(self) -> int:
        return int(dict(self.options).get("num_stages", 3))

    def describe(self) -> str:
        names = self.arg_names

        def name(path):
            i = path[0] if isinstance(path, tuple) else path
            return names[i] if isinstance(i, int) and i < len(names) else str(path)

        consts = ",".join(f"{name(k)}={v}" for k, v in self.constexprs)
        dtypes = ",".join(sorted({t[1:] for _, t in self.signature if isinstance(t, str) and t.startswith("*")}))
        return f"{self.kernel}[{dtypes}]({consts};w{self.num_warps},s{self.num_stages})"


def _freeze(v):
    if isinstance(v, dict):
        return tuple(sorted((_freeze(k), _freeze(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    return v


def specialise(launch: Launch, arch: int = 90) -> Specialisation:
    """The signature, constexprs, attributes and options Triton's ``JITFunction.run`` would compile
    this launch with on a ``GPUTarget("cuda", arch, 32)``."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = launch.kernel
    if not hasattr(fn, "_pack_args"):
        raise RuntimeError(f"{launch.name}: not a JITFunction (specialisation needs TRITON_INTERPRET unset)")
    backend = make_backend(GPUTarget("cuda", arch, 32))
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    args = [_Pointer(a) if isinstance(a, torch.Tensor) else a for a in launch.args]
    kwargs = {k: (_Pointer(v) if isinstance(v, torch.Tensor) else v) for k, v in launch.kwargs.items()}
    bound, spec, options = binder(*args, **kwargs)
    opts, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, options)
    options_dict = {k: v for k, v in vars(opts).items()}
    keep = {"num_warps", "num_stages", "num_ctas", "enable_fp_fusion", "maxnreg"}
    options_t = tuple(sorted((k, _freeze(v)) for k, v in options_dict.items() if k in keep or k in launch.kwargs))
    return Specialisation(fn.fn.__module__, fn.fn.__name__, tuple(signature.items()),
                          tuple((k, v) for k, v in constexprs.items()),
                          tuple((k, _freeze(v)) for k, v in attrs.items()), options_t,
                          tuple(p.name for p in fn.params))


def capture_function(fn, make_inputs, *, arch: int = 90, tags: dict | None = None) -> list[Launch]:
    """Launches of ``fn(*make_inputs())``, the inputs made as fake tensors (for a launcher called
    directly, e.g. ``kernels.dwconv.depthwise_conv_fwd``)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from . import accounting

    recorder = accounting.OpRecorder(run_triton=False, keep_calls=True)
    with FakeTensorMode(), forced_triton_path(arch):
        inputs = make_inputs()
        with accounting._count_triton_launches(recorder), recorder:
            fn(*inputs)
    return _launches(recorder.records, tags or {})


# CUDA's grid limits: x < 2**31, y and z <= 65535
GRID_LIMITS = (2**31 - 1, 65535, 65535)


def grid_problems(launch: Launch) -> list[str]:
    """What in the launch's grid a CUDA GPU would refuse (empty when it fits)."""
    return [f"grid {'xyz'[i]} = {g} > {limit}" for i, (g, limit) in enumerate(zip(launch.grid, GRID_LIMITS))
            if g > limit] + [f"grid {'xyz'[i]} = {g} < 1" for i, g in enumerate(launch.grid) if g < 1]


# the whole default model (with MEFC): (batch, size, training)
MODEL_CASES = {"model-infer256": (1, 256, False), "model-train4x128": (4, 128, True)}


def capture_case(case: str, dtype: torch.dtype, *, arch: int = 90, tf32: bool = True) -> list[Launch]:
    """The launches of a block shape id (``benchmarking.block_shapes()``) or of a whole-model case
    (:data:`MODEL_CASES`: every block, MEFC and the rest of the default model)."""
    if case in MODEL_CASES:
        batch, size, training = MODEL_CASES[case]
        m = build_module("model", 48, 1, dtype)
        tags = {"shape": case, "level": "model", "scenario": case.split("-", 1)[1],
                "dtype": str(dtype).split(".")[-1], "kind": "model"}
        fwd, bwd = capture(m, (batch, 3, size, size), backward=True, arch=arch, tags=tags, tf32=tf32)
        if not training:
            fwd, _ = capture(m, (batch, 3, size, size), backward=False, arch=arch, tags=tags, tf32=tf32)
        return fwd + bwd
    shapes = {s.id: s for s in block_shapes()}
    if case not in shapes:
        raise ValueError(f"unknown shape {case!r}: choose from {', '.join([*shapes, *MODEL_CASES])}")
    return capture_block(shapes[case], dtype, arch=arch, tf32=tf32)
