"""Helpers shared by the launchers (no kernels here), and the notes the kernel modules refer to.

The compile options every launch passes (``LAUNCH_OPTIONS``) and the register cap a CTA can launch
with (:func:`register_cap`); the layouts of the stencil kernels, each with its reason: coalesced taps
(1 pixel per thread along W), row pairs and quads (vertically adjacent outputs per thread) and words
(two fp16/bf16 pixels per 4-byte load); the TF32 rule of the dots that stand for convolutions
(:func:`conv_fp32_precision`); device queries (SM count, compute capability) and the interpreter's
own tile sizes.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import triton

from .._validation import SUPPORTED_DTYPES, check_tensor  # noqa: F401 (re-exported for the launchers)

# Compile options every launch passes (and the compile check uses, so it checks what runs):
# - enable_fp_fusion: explicit so the kernels do not depend on TRITON_DEFAULT_FP_FUSION (Triton 3.9
#   warns that its default will change); fused multiply-add is what cuBLAS and PyTorch use.
# - maxnreg=255: without an explicit bound, ptxas (CUDA 12.9/13.x as shipped with Triton 3.9) was
#   seen to cap itself well below the hardware limit and spill a few bytes around loops (e.g. 72
#   registers + 8 B of stack); with the bound stated it allocates what the code needs, no spills.
LAUNCH_OPTIONS = {"enable_fp_fusion": True, "maxnreg": 255}

# Registers. An SM's register file (64 K 32-bit registers on sm_80 and sm_90) must hold a whole CTA:
# ptxas honours an explicit ``maxnreg`` even above what the CTA's ``num_warps`` leave per thread, and
# such a kernel compiles but cannot launch (Triton raises OutOfResources "threads"). Launchers that
# pass a cap take it through :func:`register_cap` (at 16 warps: 128); the compile check refuses any
# kernel whose registers x threads exceed the file (static_report.compile_spec).
REGISTERS_PER_SM = 65536


def register_cap(num_warps: int, wanted: int = 255) -> int:
    """The ``maxnreg`` a CTA of ``num_warps`` can launch with: ``wanted`` or less (a multiple of 8,
    ptxas's allocation unit per thread)."""
    return min(wanted, REGISTERS_PER_SM // (32 * num_warps) // 8 * 8)


# Stencil layout. Triton's coalesce pass gives all the loads and stores of one tile shape the widest
# vector any of them allows: a 16-B-aligned store of the output tile puts 4 pixels in each thread,
# and the shifted (unaligned) tap loads of a depthwise convolution then become 4 scalar loads per
# thread with lanes 16 B apart: 4 L1 wavefronts for every 128 useful bytes. Stencil kernels
# therefore write their pixel offsets as ``tl.multiple_of(o_n, 1)`` (always true: it only takes
# back the alignment Triton inferred): every access of the tile gets 1 pixel per thread along W,
# lanes 4 B apart, coalesced taps (scalar stores, the same wavefronts). The static report
# (``python -m drsformer_fast.perf.static_report``) shows the effect per load.

# Row pairs. Even coalesced, a stencil's taps bound it by L1 wavefronts, not DRAM: a K x K tap
# window costs K*K row loads per output pixel, plus one broadcast weight load per tap and channel
# row a thread holds (one wavefront per warp, as many as the tap loads when a thread holds 1 pixel
# per row). Stencil kernels whose taps dominate compute two vertically adjacent output pixels per
# thread instead: a program owns BLOCK_Q *row pairs*, pair q = (h // 2) * W + w standing for
# pixels (2 (q // W), q % W) and the one below it (the lower one masked out on the last row of an odd
# H). Flattened like pixels, pairs need no W-dependent tile shape and waste no lanes on narrow
# images. For each column shift the K + 1 input rows are loaded once and feed both outputs (K + 1
# row loads instead of 2K), and each tap's weight, loaded once, serves both. The FFN's stage-2
# forward, whose taps are the heaviest (68 per hidden channel and pixel), takes row quads the same
# way (pixels 4 (q // W) + s, s = 0..3: K + 3 row loads for four outputs).

# Words. In fp16/bf16 a tap load of one 2-byte pixel per lane moves 64 bytes per warp instruction,
# half an L1 wavefront, so the stencils above stay L1-bound at half the bytes. Where a tensor's rows
# are whole aligned 4-byte words (2-byte dtype, W even, unit W stride, even batch/channel/row
# strides, 4-byte-aligned first element: ``dwconv._whole_words``), the word kernels give each thread
# horizontally adjacent pixel pairs: word t of a row holds pixels 2t and 2t + 1, loaded through an
# int32 pointer and split in registers (``dwconv._split_words``; ``_join_words`` packs the outputs).
# For K <= 5 the words t - 1 .. t + 1 hold every column shift of both pixels of word t, so a tap row
# costs 3 full-wavefront loads for two outputs instead of K half-filled ones per output. Kernels:
# ``_dw_fwd_words_kernel``, ``_dw_bwd_words_kernel`` and ``_ffn_fwd_words_kernel`` (2 x 2 quads: words
# and row pairs together), ``_ffn_bwd_uv_words_kernel`` and the attention's ``_attn_dout_v_words_kernel`` and
# ``_attn_qk_gram_words_kernel`` (sums over tokens, whose order is free: the words' even and odd
# pixels make two dots); the launchers fall back to the pixel kernels for anything else and name
# their choice (``forward_path``, ``backward_path``, ``fwd_path``, ``bwd_uv_path``, ``dout_v_path``,
# ``gram_path``).


def conv_fp32_precision() -> str:
    """``input_precision`` for an fp32 ``tl.dot`` that stands in for a convolution: what ``nn.Conv2d``
    does for the original under PyTorch's current setting. ``"tf32"`` when cuDNN convolutions may use
    TF32 (PyTorch's default on Ampere/Hopper: ``torch.backends.cudnn.conv.fp32_precision == "tf32"``,
    legacy ``torch.backends.cudnn.allow_tf32``), ``"ieee"`` otherwise. Read at launch time, so a user
    who switches TF32 off gets exact fp32 dots from the next call on. fp16/bf16 dots ignore it.
    Dots whose values choose top-k entries never use this: they are always ``"ieee"``.
    """
    if _FP32_PRECISION is not None:  # torch >= 2.9: the per-operator flags
        # "none" inherits from the parent flag (cudnn, then the global backend flag)
        for backend, op in _CONV_PRECISION_FLAGS:
            flag = _FP32_PRECISION(backend, op)
            if flag != "none":
                return "tf32" if flag == "tf32" else "ieee"
        return "ieee"
    return "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"


# The getter behind torch.backends.cudnn.conv.fp32_precision, torch.backends.cudnn.fp32_precision and
# torch.backends.fp32_precision (torch >= 2.9), called directly: the same flags without the ~5 us of
# module attribute lookups per call (conv_fp32_precision runs at every convolution-like launch).
_FP32_PRECISION = getattr(torch._C, "_get_fp32_precision_getter", None)
_CONV_PRECISION_FLAGS = (("cuda", "conv"), ("cuda", "all"), ("generic", "all"))


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def device_guard(t: torch.Tensor):
    """Enter the tensor's CUDA device so that a launch lands on the right GPU (and stream)."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


@functools.lru_cache(maxsize=16)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def multiprocessor_count(device: torch.device) -> int:
    """SMs of a CUDA device; a small fixed number for the CPU interpreter (keeps grids small there)."""
    if device.type == "cuda":
        return _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    return 4


@functools.lru_cache(maxsize=16)
def _capability(index: int) -> int:
    major, minor = torch.cuda.get_device_capability(index)
    return 10 * major + minor


def compute_capability(device: torch.device) -> int:
    """A CUDA device's compute capability as one number (80: A100, 90: H100); 90 for the CPU
    interpreter, whose launches stand for an H100's. Launchers whose best configuration differs by
    architecture read it (the compile check and the static report patch it per target)."""
    if device.type == "cuda":
        return _capability(device.index if device.index is not None else torch.cuda.current_device())
    return 90


def is_interpreter() -> bool:
    """True when kernels were built by Triton's interpreter (``TRITON_INTERPRET=1`` at import)."""
    return _probe.__class__.__name__ == "InterpretedFunction"


# The static report counts the work of the GPU's own launches by running one program of each in the
# interpreter (drsformer_fast.perf.static_report): there the launchers must keep their GPU tiles.
_GPU_TILES_IN_INTERPRETER = [False]


def interpreter_tiles() -> bool:
    """True when launchers take their interpreter tiles: under Triton's CPU interpreter, outside
    :func:`gpu_tiles`. The interpreter pays per executed operation and per program (65 ms to 1 s a
    program), not per element, so there every launcher takes its largest tiles (its module's
    ``INTERPRETER_*`` constants: a test image is one or two programs). Tests that check the GPU's own
    tiles run them in the interpreter under ``tests/helpers.launch_tiles("gpu")``."""
    return is_interpreter() and not _GPU_TILES_IN_INTERPRETER[0]


@contextlib.contextmanager
def gpu_tiles():
    """Launchers use their GPU tiles even under the interpreter (what the static report counts)."""
    saved = _GPU_TILES_IN_INTERPRETER[0]
    _GPU_TILES_IN_INTERPRETER[0] = True
    try:
        yield
    finally:
        _GPU_TILES_IN_INTERPRETER[0] = saved


@triton.jit
def _probe():
    pass
