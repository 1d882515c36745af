"""Depthwise 2-D convolution ('same' padding, odd K in {3, 5, 7}), one or two branches: forward and
backward. Used by the mixed-scale feed-forward (the 3x3 and 5x5 of stage 1 read ``y`` once) and by
the attention's 3x3 ``qkv_dwconv`` backward.

Layout: a program owns ``BLOCK_C`` channels x ``BLOCK_N`` pixels of one image, pixels flattened
(n = h * W + w, the contiguous axis of NCHW, so loads coalesce along n). A pixel index is split into
(n // W, n % W) once per tile; every tap (dh, dw) is then a load at a scalar offset
``dh * stride_h + dw * stride_w`` with the out-of-image pixels masked to zero (the zero padding).
The neighbouring rows a tap reads belong to the next/previous tiles and come from L1/L2.
Any strides are accepted for every input; outputs are written with a dense [C, H, W] per image.
Element offsets are int64 (an image of the feed-forward's 2h-channel y or 4h-channel ab spans more
than 2**31 elements from ~4 MP on); pixel indices are int32 (H*W <= MAX_PIXELS). Kernel sizes are
constexpr (Triton 3.6's interpreter cannot loop over runtime scalars); the tap loops stay loops:
unrolled, ptxas hoists every tap's load and the kernels take 255 registers and spill on sm_90.

Launch picture on sm_90 (compiled as launched, 8 warps, num_stages 3; `python -m
drsformer_fast.perf.static_report`): forward 2 channels x 512 row pairs (kernels/_utils.py: each thread
computes two vertically adjacent pixels from K + 1 row loads per column shift; 1024 pixels per
program, 8128 programs at level 1, 256x256, C = 2h = 254), 88 registers, 16 resident warps per SM;
backward 2 channels x 512 pixels, 79-96 registers, 16-24 resident warps. Loads: the taps are
coalesced (1 pixel per thread along W: ``tl.multiple_of``, see kernels/_utils.py), so their L1
wavefronts equal their bytes / 128; each tap also loads one weight per channel row a thread holds (a
broadcast: one wavefront per warp), which 4 pixels per thread and channel row amortise (forward: 2
row pairs; backward: 4 pixels of a row). By the static model the forward is HBM-bound in fp32 at level 1
(79 -> 60 us with the row pairs, its roofline); the backward is L1-bound (per-warp L1 factor 1.3
fp32, 2.5 bf16). FMA bound (2h * 34 FMA per pixel, ~33.5 T FMA/s fp32 on CUDA cores): 17 us at level 1.

Words (fp16/bf16, forward and backward). A 2-byte tap load of one pixel per lane fills half an L1 wavefront, so in
bf16 the forward above stays L1-bound (57 us against a 30 us roofline at level 1). When x's rows are
whole 4-byte words (W even, unit W stride, even strides, 4-byte-aligned x and outputs:
``forward_path``), ``_dw_fwd_words_kernel`` runs instead: one channel per program on the GPU (its
weights are loaded once, uniform across the CTA; the interpreter takes up to 64 channels), each
thread on 2 x 2 pixel quads, taps read as aligned words of two pixels and
split in registers (the words t - 1 .. t + 1 around a quad's own word t hold every column shift of
both its columns for K <= 5), outputs written as words. Per 4 output pixels of the 5x5 + 3x3 pair:
6 rows x 3 full-wavefront word loads, against 6 x 5 half-filled loads per 2 pixels. Static model
(sm_90, level 1, bf16): 57 -> 30 us, its HBM roofline; 96 registers, 16 resident warps per SM.
The backward has the same twin (``_dw_bwd_words_kernel``, ``backward_path``: every gradient, and x
where the parameter gradients read it, in whole words): g's rows are loaded once per branch as words
and feed both rows of the quads (row i gives tap 2R - i of the upper row and, with row i + 1, of the
lower one), x and dx are words, the weight and bias partials are per-tap sums over the program's
quads. Static model (level 1, bf16, two branches): 95 -> 41 us (HBM-bound; 256 quads, 117 registers,
16 resident warps per SM). Anything else (odd W, fp32, odd offsets) takes ``_dw_fwd_kernel`` /
``_dw_bwd_kernel``.

Two branches share the read of x: the taps of the smaller kernel are a subset of the larger one's,
so one loop over the larger window loads each shifted tile once and feeds both accumulators.

Backward (out = sum_t w_t * x(p + t)):
  dx(p)   = sum_i sum_t w_i,t * g_i(p - t)           (the transposed convolution, written once)
  dw_i,t  = sum_p g_i(p - t) * x(p)                   (x loaded once, unshifted; g shifted per tap)
  db_i    = sum_p g_i(p)
The weight and bias gradients are reduced deterministically: each program writes its per-channel
sums for every tap to its own row of a [programs, K*K + 1, C] fp32 buffer, summed afterwards over
programs in a fixed order (no atomics).

Bytes (per element of x = B*C*H*W, element size s; halo re-reads hit the cache):
  forward,  1 or 2 branches : read x once, write each output      -> (1 + branches) * s
  backward                  : read every g_i and x, write dx       -> (2 + branches) * s
                              + (K_i^2 + 1) * 4 / BLOCK_N bytes per element and branch of partials
PyTorch runs one cuDNN depthwise kernel per branch (reading x once per branch) and, in backward,
separate input- and weight-gradient kernels per branch (reading g_i twice and x once per branch).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import FakeTensor

from ._launch import launch_kernel
from ._registry import CompileConfig, ptr, register_compile_configs
from ._utils import (
    LAUNCH_OPTIONS,
    SUPPORTED_DTYPES,
    cdiv,
    check_tensor,
    device_guard,
    interpreter_tiles,
    next_pow2,
)

KERNEL_SIZES = (3, 5, 7)
# Tiles: few channels x many pixels. With coalesced taps (1 pixel per thread per row, see
# kernels/_utils.py) every row a thread holds costs one warp-wide broadcast load of its weight per
# tap, as many L1 wavefronts as the tap loads themselves when a thread holds one pixel per row: 2
# channels x 1024 pixels at 8 warps give each thread 4 pixels per row (sm_90, fp32: forward 80
# registers, backward at 512 pixels 79-96; 1024 would take the backward to 152).
FWD_BLOCK_C = 2
FWD_BLOCK_Q = 512  # row pairs (kernels/_utils.py): 1024 pixels
BWD_BLOCK_C = 2
BWD_BLOCK_N = 512
# under Triton's interpreter (_utils.interpreter_tiles: it pays per program, not per element): 64 x 1024
INTERPRETER_BLOCK_C = 64
INTERPRETER_BLOCK_N = 1024

# the kernels for 2-byte dtypes (_dw_fwd_words_kernel, _dw_bwd_words_kernel): 2 x 2 pixel quads per
# program, one channel per program on the GPU (its weights are uniform across the CTA: one broadcast
# load each). sm_90, 8 warps: forward 96 registers at 512 quads; backward 117 at 256 (205 at 512: 8
# resident warps per SM)
WORDS_BLOCK_C = 1
WORDS_BLOCK_Q = 512
WORDS_BWD_BLOCK_Q = 256
# under the interpreter: up to 64 channels (the next power of two of C) x 256 quads per program
INTERPRETER_WORDS_BLOCK_C = 64
INTERPRETER_WORDS_BLOCK_Q = 256
_MAX_GRID_YZ = 65535  # CUDA's limit on grid dimensions y and z (the words kernel's channels)

NUM_WARPS = 8
# Passed at every launch and registered with the compile configs, so the check compiles what runs
# (Triton's default is 3; the tap loops are unrolled, so there is no loop to pipeline either way).
NUM_STAGES = 3
_INT32_LIMIT = 2**31 - 1


def words_tiles(C: int, backward: bool) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_Q) of the word kernels' launch for C channels (the interpreter's own on CPU)."""
    if interpreter_tiles():
        return min(INTERPRETER_WORDS_BLOCK_C, next_pow2(C)), INTERPRETER_WORDS_BLOCK_Q
    return WORDS_BLOCK_C, WORDS_BWD_BLOCK_Q if backward else WORDS_BLOCK_Q


def tiles(backward: bool) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_N) of the backward launch or (BLOCK_C, BLOCK_Q) of the forward's row pairs (the
    interpreter's own on CPU)."""
    if interpreter_tiles():
        return INTERPRETER_BLOCK_C, INTERPRETER_BLOCK_N // (1 if backward else 2)
    return (BWD_BLOCK_C, BWD_BLOCK_N) if backward else (FWD_BLOCK_C, FWD_BLOCK_Q)


@triton.jit
def _dw_fwd_store(b_acc, b_ptr, o_ptr, o_out, m, o_cl, RELU: tl.constexpr):
    """Bias (b_ptr may be None), ReLU and the store of one branch's tile (one row of the row pairs)."""
    if b_ptr is not None:
        b_acc += tl.load(b_ptr + o_cl)[:, None]
    if RELU:
        b_acc = tl.maximum(b_acc, 0.0)
    tl.store(o_ptr + o_out, b_acc.to(o_ptr.dtype.element_ty), mask=m)


@triton.jit
def _dw_fwd_kernel(
    x_ptr,  # x: [B, C, H, W], any strides
    w1_ptr,  # weight of branch 1: [C, K1*K1] fp32
    b1_ptr,  # bias of branch 1: [C] fp32, or None (Triton specialises None away: no load, no fill launch)
    w2_ptr,  # weight of branch 2: [C, K2*K2] fp32 (unused without TWO)
    b2_ptr,  # bias of branch 2: [C] fp32, or None
    xb_ptr,  # input bias: [C] fp32, added to x inside the image (unused when not HAS_XBIAS)
    o1_ptr,  # output of branch 1: [B, C, H, W], dense per image, batch stride stride_ob
    o2_ptr,  # output of branch 2: same layout (unused without TWO)
    C, N, H, W,
    stride_xb, stride_xc, stride_xh, stride_xw,
    stride_ob,
    K1: tl.constexpr,  # kernel size of branch 1 (with two branches, the smaller one: K1 <= K2)
    K2: tl.constexpr,  # kernel size of branch 2 (unused without TWO)
    TWO: tl.constexpr,
    RELU: tl.constexpr,
    HAS_XBIAS: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_Q: tl.constexpr,  # row pairs per program (kernels/_utils.py): 2 * BLOCK_Q pixels
):
    i_q = tl.program_id(0)
    i_c = tl.program_id(1)
    i_b = tl.program_id(2).to(tl.int64)
    o_c = i_c * BLOCK_C + tl.arange(0, BLOCK_C)
    # 1 pixel per thread along W: coalesced tap loads (kernels/_utils.py, stencil layout)
    o_q = tl.multiple_of(i_q * BLOCK_Q + tl.arange(0, BLOCK_Q), 1)
    m_c = o_c < C
    m_q = o_q < tl.cdiv(H, 2) * W
    # loads use clamped channels (always in bounds, never stored), so the tap masks stay 1-D
    o_cl = tl.minimum(o_c, C - 1)
    o_h = (o_q // W) * 2  # upper row of each pair
    o_w = o_q % W
    # int64 element offsets (one image may span >= 2**31 elements); pixel indices stay int32
    p_x = x_ptr + i_b * stride_xb + o_cl.to(tl.int64)[:, None] * stride_xc
    s_xh = tl.cast(stride_xh, tl.int64)
    s_xw = tl.cast(stride_xw, tl.int64)
    p_w1 = w1_ptr + o_cl * (K1 * K1)
    if HAS_XBIAS:
        b_xb = tl.load(xb_ptr + o_cl)[:, None]
    R1: tl.constexpr = K1 // 2
    # the main window is the larger one (branch 2 with two branches); the inner one is branch 1's
    KM: tl.constexpr = K2 if TWO else K1
    RM: tl.constexpr = KM // 2
    if TWO:
        p_wm = w2_ptr + o_cl * (K2 * K2)
    else:
        p_wm = p_w1

    b_m0 = tl.zeros([BLOCK_C, BLOCK_Q], dtype=tl.float32)  # main window, upper row
    b_m1 = tl.zeros([BLOCK_C, BLOCK_Q], dtype=tl.float32)  # main window, lower row
    b_i0 = tl.zeros([BLOCK_C, BLOCK_Q], dtype=tl.float32)  # inner window (TWO), upper row
    b_i1 = tl.zeros([BLOCK_C, BLOCK_Q], dtype=tl.float32)  # inner window (TWO), lower row
    # one pass over the main window: each shifted row of x is loaded once for both branches and both
    # rows of the pairs. Column shifts are a loop, not unrolled: unrolled, ptxas hoists every tap's load
    # (255 registers and spills on sm_90)
    for kw in range(0, KM):
        dw = kw - RM
        o_col = o_w + dw
        m_col = m_q & (o_col >= 0) & (o_col < W)
        o_colx = o_col.to(tl.int64) * s_xw
        b_wm = tl.zeros([BLOCK_C, 1], dtype=tl.float32)  # set below before its first use (r = 0)
        for r in tl.static_range(KM + 1):
            # input row o_h - RM + r: tap row r of the upper output, r - 1 of the lower one
            o_r = o_h + (r - RM)
            m = (m_col & (o_r >= 0) & (o_r < H))[None, :]
            b_x = tl.load(p_x + (o_r.to(tl.int64) * s_xh + o_colx)[None, :], mask=m, other=0.0).to(tl.float32)
            if HAS_XBIAS:
                b_x = tl.where(m, b_x + b_xb, 0.0)
            if r > 0:  # the previous row's weight: tap (r - 1, kw)
                b_m1 += b_wm * b_x
            if r < KM:
                b_wm = tl.load(p_wm + (r * KM + kw))[:, None]
                b_m0 += b_wm * b_x
            if TWO:
                # inner taps: rows r - RM (upper) and r - 1 - RM (lower) within [-R1, R1], and the column
                # (a runtime test: kw is a loop variable; no zero-weight FMAs, so an inf outside the
                # smaller window cannot reach its output)
                if (r - RM >= -R1) & (r - RM <= R1):
                    if (dw >= -R1) & (dw <= R1):
                        b_i0 += tl.load(p_w1 + ((r - RM + R1) * K1 + dw + R1))[:, None] * b_x
                if (r - 1 - RM >= -R1) & (r - 1 - RM <= R1):
                    if (dw >= -R1) & (dw <= R1):
                        b_i1 += tl.load(p_w1 + ((r - 1 - RM + R1) * K1 + dw + R1))[:, None] * b_x

    o_out = i_b * stride_ob + o_c.to(tl.int64)[:, None] * N + (o_h * W + o_w)[None, :]
    m_0 = m_c[:, None] & m_q[None, :]
    m_1 = m_c[:, None] & (m_q & (o_h + 1 < H))[None, :]
    if TWO:
        _dw_fwd_store(b_i0, b1_ptr, o1_ptr, o_out, m_0, o_cl, RELU)
        _dw_fwd_store(b_i1, b1_ptr, o1_ptr, o_out + W, m_1, o_cl, RELU)
        _dw_fwd_store(b_m0, b2_ptr, o2_ptr, o_out, m_0, o_cl, RELU)
        _dw_fwd_store(b_m1, b2_ptr, o2_ptr, o_out + W, m_1, o_cl, RELU)
    else:
        _dw_fwd_store(b_m0, b1_ptr, o1_ptr, o_out, m_0, o_cl, RELU)
        _dw_fwd_store(b_m1, b1_ptr, o1_ptr, o_out + W, m_1, o_cl, RELU)


@triton.jit
def _split_words(b_w, DTYPE: tl.constexpr):
    """The two 2-byte elements of each 4-byte word as fp32: (lower address, upper address)."""
    b_lo = (b_w & 0xFFFF).to(tl.int16).to(DTYPE, bitcast=True).to(tl.float32)
    b_hi = (b_w >> 16).to(tl.int16).to(DTYPE, bitcast=True).to(tl.float32)
    return b_lo, b_hi


@triton.jit
def _unpack_pair(b_w):
    """(low, high) fp32 halves of int64 words holding two packed fp32 values (little-endian: the
    first value of each pair is the low word): two weights from one 8-byte broadcast load."""
    return b_w.to(tl.int32).to(tl.float32, bitcast=True), (b_w >> 32).to(tl.int32).to(tl.float32, bitcast=True)


@triton.jit
def _join_words(b_lo, b_hi, DTYPE: tl.constexpr):
    """One 4-byte word of two fp32 values rounded to the 2-byte DTYPE (b_lo at the lower address)."""
    b_lo = b_lo.to(DTYPE).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    return b_lo | (b_hi.to(DTYPE).to(tl.int16, bitcast=True).to(tl.int32) << 16)


@triton.jit
def _dw_fwd_words_store(b_e0, b_o0, b_e1, b_o1, b_ptr, o_ptr, o_out, WW, m_0, m_1, o_cl, RELU: tl.constexpr):
    """Bias (b_ptr may be None), ReLU and the two word stores (upper and lower row) of one branch:
    [BLOCK_C, BLOCK_Q] blocks, o_cl the (clamped) channels of their rows."""
    if b_ptr is not None:
        b_bias = tl.load(b_ptr + o_cl)[:, None]
        b_e0 += b_bias
        b_o0 += b_bias
        b_e1 += b_bias
        b_o1 += b_bias
    if RELU:
        b_e0 = tl.maximum(b_e0, 0.0)
        b_o0 = tl.maximum(b_o0, 0.0)
        b_e1 = tl.maximum(b_e1, 0.0)
        b_o1 = tl.maximum(b_o1, 0.0)
    p_o = o_ptr.to(tl.pointer_type(tl.int32))
    tl.store(p_o + o_out, _join_words(b_e0, b_o0, o_ptr.dtype.element_ty), mask=m_0)
    tl.store(p_o + (o_out + WW), _join_words(b_e1, b_o1, o_ptr.dtype.element_ty), mask=m_1)


@triton.jit
def _dw_fwd_words_kernel(
    x_ptr,  # x: [B, C, H, W] fp16/bf16, W even, unit W stride, even strides, 4-byte aligned
    w1_ptr,  # weight of branch 1: [C, K1*K1] fp32
    b1_ptr,  # bias of branch 1: [C] fp32, or None
    w2_ptr,  # weight of branch 2: [C, K2*K2] fp32 (unused without TWO)
    b2_ptr,  # bias of branch 2: [C] fp32, or None
    xb_ptr,  # input bias: [C] fp32 (unused when not HAS_XBIAS)
    o1_ptr,  # output of branch 1: [B, C, H, W], dense per image, even batch stride, 4-byte aligned
    o2_ptr,  # output of branch 2: same layout (unused without TWO)
    C, H, W,
    stride_xb, stride_xc, stride_xh,  # element strides (all even)
    stride_ob,
    K1: tl.constexpr,
    K2: tl.constexpr,
    TWO: tl.constexpr,
    RELU: tl.constexpr,
    HAS_XBIAS: tl.constexpr,
    BLOCK_C: tl.constexpr,  # channels per program (the GPU's: 1, see WORDS_BLOCK_C)
    BLOCK_Q: tl.constexpr,  # 2 x 2 pixel quads per program
):
    """_dw_fwd_kernel for 2-byte dtypes, BLOCK_C channels per program, each thread on 2 x 2 pixel quads.

    A 2-byte tap load of one pixel per lane fills half an L1 wavefront (64 of its 128 bytes). Here the
    taps are aligned 4-byte words of two horizontally adjacent pixels, split in registers: quad q =
    (row pair q // (W / 2), word q % (W / 2)) reads, per input row, the words t - (R + 1) // 2 ..
    t + (R + 1) // 2 around its own word t (3 words for K <= 5: every column shift of both columns),
    one full 128-byte wavefront per warp each, and K + 1 input rows feed both output rows (the row
    pairs of kernels/_utils.py). The channels' weights are [BLOCK_C, 1] columns, loaded once per
    program. Outputs are written as words too. Per 4 output pixels and 5x5 window: 6 rows x 3 words,
    against 6 x 5 = 30 half-filled loads for the 2 pixels of a row pair in _dw_fwd_kernel.
    """
    i_q = tl.program_id(0)
    i_c = tl.program_id(1)
    i_b = tl.program_id(2).to(tl.int64)
    WW = W // 2  # words per row
    o_c = i_c * BLOCK_C + tl.arange(0, BLOCK_C)
    m_c = o_c < C
    o_cl = tl.minimum(o_c, C - 1)  # the last block's surplus rows re-read the last channel (stores masked)
    # 1 word per thread along W: coalesced word loads (kernels/_utils.py, stencil layout)
    o_q = tl.multiple_of(i_q * BLOCK_Q + tl.arange(0, BLOCK_Q), 1)
    m_q = o_q < tl.cdiv(H, 2) * WW
    o_h = (o_q // WW) * 2  # upper row of each quad
    o_t = o_q % WW  # word in the row: pixels 2 o_t and 2 o_t + 1
    # word pointers of the channels' planes ([BLOCK_C, 1]); word offsets from here are element
    # offsets / 2 (int64)
    p_x = (x_ptr + (i_b * stride_xb + o_cl.to(tl.int64)[:, None] * stride_xc)).to(tl.pointer_type(tl.int32))
    s_xh = tl.cast(stride_xh // 2, tl.int64)
    if HAS_XBIAS:
        b_xb = tl.load(xb_ptr + o_cl)[:, None]
    KM: tl.constexpr = K2 if TWO else K1
    RM: tl.constexpr = KM // 2
    R1: tl.constexpr = K1 // 2
    WR: tl.constexpr = (RM + 1) // 2  # words each side of the own word
    if TWO:
        p_wm = w2_ptr + o_cl[:, None] * (K2 * K2)
    else:
        p_wm = w1_ptr + o_cl[:, None] * (K1 * K1)
    p_w1 = w1_ptr + o_cl[:, None] * (K1 * K1)
    # the channels' weights, once: [BLOCK_C, 1] columns (a tuple, row-major taps)
    w_m = ()
    for t in tl.static_range(KM * KM):
        w_m = w_m + (tl.load(p_wm + t),)
    w_i = ()
    if TWO:
        for t in tl.static_range(K1 * K1):
            w_i = w_i + (tl.load(p_w1 + t),)

    # (main, inner) x (upper row, lower row) x (even column, odd column)
    b_me0 = tl.zeros([BLOCK_C, BLOCK_Q], dtype=tl.float32)
    b_mo0 = tl.zeros([BLOCK_C, BLOCK_Q], dtype=tl.float32)
    b_me1 = tl.zeros([BLOCK_C, BLOCK_Q], dtype=tl.float32)
    b_mo1 = tl.zeros([BLOCK_C, BLOCK_Q], dtype=tl.float32)
    b_ie0 = tl.zeros([BLOCK_C, BLOCK_Q], dtype=tl.float32)
    b_io0 = tl.zeros([BLOCK_C, BLOCK_Q], dtype=tl.float32)
    b_ie1 = tl.zeros([BLOCK_C, BLOCK_Q], dtype=tl.float32)
    b_io1 = tl.zeros([BLOCK_C, BLOCK_Q], dtype=tl.float32)
    for r in tl.static_range(KM + 1):
        # input row o_h - RM + r: tap row r of the upper output, r - 1 of the lower one
        o_r = o_h + (r - RM)
        m_r = m_q & (o_r >= 0) & (o_r < H)
        p_row = p_x + (o_r.to(tl.int64) * s_xh)[None, :]
        # cols[j]: the pixel in column 2 o_t - 2 WR + j (zero outside the image: W is even, so a word
        # is inside or outside as a whole)
        cols = ()
        for j in tl.static_range(2 * WR + 1):
            o_u = o_t + (j - WR)
            m = (m_r & (o_u >= 0) & (o_u < WW))[None, :]
            b_lo, b_hi = _split_words(tl.load(p_row + o_u[None, :], mask=m, other=0), x_ptr.dtype.element_ty)
            if HAS_XBIAS:
                b_lo = tl.where(m, b_lo + b_xb, 0.0)
                b_hi = tl.where(m, b_hi + b_xb, 0.0)
            cols = cols + (b_lo, b_hi)
        for kw in tl.static_range(KM):
            # column shift dw = kw - RM: the even output reads column 2 o_t + dw, the odd one + 1
            b_ev = cols[kw - RM + 2 * WR]
            b_od = cols[kw - RM + 2 * WR + 1]
            if r < KM:
                b_me0 += w_m[r * KM + kw] * b_ev
                b_mo0 += w_m[r * KM + kw] * b_od
            if r > 0:
                b_me1 += w_m[(r - 1) * KM + kw] * b_ev
                b_mo1 += w_m[(r - 1) * KM + kw] * b_od
            if TWO:
                # inner taps (all static): no zero-weight FMAs outside the smaller window
                if (kw - RM >= -R1) & (kw - RM <= R1):
                    if (r - RM >= -R1) & (r - RM <= R1):
                        b_ie0 += w_i[(r - RM + R1) * K1 + kw - RM + R1] * b_ev
                        b_io0 += w_i[(r - RM + R1) * K1 + kw - RM + R1] * b_od
                    if (r - 1 - RM >= -R1) & (r - 1 - RM <= R1):
                        b_ie1 += w_i[(r - 1 - RM + R1) * K1 + kw - RM + R1] * b_ev
                        b_io1 += w_i[(r - 1 - RM + R1) * K1 + kw - RM + R1] * b_od

    # word offsets of the outputs: planes of H * W elements = H * WW words
    o_out = ((i_b * stride_ob) // 2 + o_c.to(tl.int64)[:, None] * H * WW) + (o_h * WW + o_t)[None, :]
    m_0 = m_c[:, None] & m_q[None, :]
    m_1 = m_c[:, None] & (m_q & (o_h + 1 < H))[None, :]
    if TWO:
        _dw_fwd_words_store(b_ie0, b_io0, b_ie1, b_io1, b1_ptr, o1_ptr, o_out, WW, m_0, m_1, o_cl, RELU)
        _dw_fwd_words_store(b_me0, b_mo0, b_me1, b_mo1, b2_ptr, o2_ptr, o_out, WW, m_0, m_1, o_cl, RELU)
    else:
        _dw_fwd_words_store(b_me0, b_mo0, b_me1, b_mo1, b1_ptr, o1_ptr, o_out, WW, m_0, m_1, o_cl, RELU)


@triton.jit
def _dw_bwd_branch(p_g, o_g, stride_gh, stride_gw, p_w, p_p, b_x, b_dx, o_h, o_w, m_n, m_c, C, H, W,
                   K: tl.constexpr, NEED_DX: tl.constexpr, NEED_PARAM_GRAD: tl.constexpr):
    """One branch of the backward: adds its transposed convolution to b_dx and writes its weight and
    bias partial sums (rows t < K*K and K*K of this program's slot)."""
    R: tl.constexpr = K // 2
    for kh in range(0, K):
        dh = kh - R
        # g is read at p - t: the forward's tap (dh, dw) reaches this pixel from (h - dh, w - dw)
        m_h = m_n & (o_h - dh >= 0) & (o_h - dh < H)
        for kw in range(0, K):
            dw = kw - R
            m = (m_h & (o_w - dw >= 0) & (o_w - dw < W))[None, :]
            b_g = tl.load(p_g + (o_g - (dh * tl.cast(stride_gh, tl.int64) + dw * tl.cast(stride_gw, tl.int64))),
                          mask=m, other=0.0).to(tl.float32)
            if NEED_DX:
                b_dx += tl.load(p_w + (kh * K + kw))[:, None] * b_g
            if NEED_PARAM_GRAD:
                tl.store(p_p + (kh * K + kw) * C, tl.sum(b_g * b_x, axis=1), mask=m_c)
    if NEED_PARAM_GRAD:
        tl.store(p_p + (K * K) * C, tl.sum(tl.load(p_g + o_g, mask=m_n[None, :], other=0.0).to(tl.float32), axis=1),
                 mask=m_c)
    return b_dx


@triton.jit
def _dw_bwd_kernel(
    g1_ptr,  # gradient of branch 1's (pre-activation) output: [B, C, H, W], any strides
    g2_ptr,  # gradient of branch 2's output: [B, C, H, W], any strides (unused without TWO)
    x_ptr,  # x: [B, C, H, W], any strides (unused without NEED_PARAM_GRAD)
    w1_ptr,  # [C, K1*K1] fp32
    w2_ptr,  # [C, K2*K2] fp32
    xb_ptr,  # input bias [C] fp32 (unused when not HAS_XBIAS)
    dx_ptr,  # dx: [B, C, H, W] contiguous (unused without NEED_DX)
    p1_ptr,  # partials of branch 1: [B * n_tiles, K1*K1 + 1, C] fp32 (row K1*K1: bias)
    p2_ptr,  # partials of branch 2: [B * n_tiles, K2*K2 + 1, C] fp32
    C, N, H, W,
    stride_xb, stride_xc, stride_xh, stride_xw,
    stride_g1b, stride_g1c, stride_g1h, stride_g1w,
    stride_g2b, stride_g2c, stride_g2h, stride_g2w,
    K1: tl.constexpr,
    K2: tl.constexpr,
    TWO: tl.constexpr,
    NEED_DX: tl.constexpr,
    NEED_PARAM_GRAD: tl.constexpr,
    HAS_XBIAS: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    i_n = tl.program_id(0)
    i_c = tl.program_id(1)
    i_b = tl.program_id(2).to(tl.int64)
    o_c = i_c * BLOCK_C + tl.arange(0, BLOCK_C)
    # 1 pixel per thread along W: coalesced tap loads (kernels/_utils.py, stencil layout)
    o_n = tl.multiple_of(i_n * BLOCK_N + tl.arange(0, BLOCK_N), 1)
    m_c = o_c < C
    m_n = o_n < N
    o_cl = tl.minimum(o_c, C - 1)
    o_h = o_n // W
    o_w = o_n % W
    # int64 element offsets (one image may span >= 2**31 elements); pixel indices stay int32
    o_c64 = o_cl.to(tl.int64)
    o_h64 = o_h.to(tl.int64)
    o_w64 = o_w.to(tl.int64)
    i_part = i_b * tl.num_programs(0) + i_n
    b_x = tl.zeros([BLOCK_C, BLOCK_N], dtype=tl.float32)
    if NEED_PARAM_GRAD:
        m_0 = m_n[None, :]
        b_x = tl.load(x_ptr + i_b * stride_xb + o_c64[:, None] * stride_xc
                      + (o_h64 * stride_xh + o_w64 * stride_xw)[None, :], mask=m_0, other=0.0).to(tl.float32)
        if HAS_XBIAS:
            b_x = tl.where(m_0, b_x + tl.load(xb_ptr + o_cl)[:, None], 0.0)

    b_dx = tl.zeros([BLOCK_C, BLOCK_N], dtype=tl.float32)
    b_dx = _dw_bwd_branch(
        g1_ptr + i_b * stride_g1b, o_c64[:, None] * stride_g1c + (o_h64 * stride_g1h + o_w64 * stride_g1w)[None, :],
        stride_g1h, stride_g1w, w1_ptr + o_cl * (K1 * K1), p1_ptr + i_part * ((K1 * K1 + 1) * C) + o_c,
        b_x, b_dx, o_h, o_w, m_n, m_c, C, H, W, K1, NEED_DX, NEED_PARAM_GRAD,
    )
    if TWO:
        b_dx = _dw_bwd_branch(
            g2_ptr + i_b * stride_g2b, o_c64[:, None] * stride_g2c + (o_h64 * stride_g2h + o_w64 * stride_g2w)[None, :],
            stride_g2h, stride_g2w, w2_ptr + o_cl * (K2 * K2), p2_ptr + i_part * ((K2 * K2 + 1) * C) + o_c,
            b_x, b_dx, o_h, o_w, m_n, m_c, C, H, W, K2, NEED_DX, NEED_PARAM_GRAD,
        )
    if NEED_DX:
        tl.store(dx_ptr + i_b * C * N + o_c.to(tl.int64)[:, None] * N + o_n[None, :], b_dx.to(dx_ptr.dtype.element_ty),
                 mask=m_c[:, None] & m_n[None, :])


@triton.jit
def _load_word_row(p_row, o_t, m_r, WW, DTYPE: tl.constexpr, WR: tl.constexpr):
    """Columns 2 o_t - 2 WR .. 2 o_t + 2 WR + 1 of one row of each channel as fp32 (a tuple of
    [BLOCK_C, BLOCK_Q] blocks, zero outside the image): the 2 WR + 1 aligned words around word o_t,
    each split in two. p_row: [BLOCK_C, 1] word pointers of the row; o_t, m_r: [BLOCK_Q]."""
    cols = ()
    for j in tl.static_range(2 * WR + 1):
        o_u = o_t + (j - WR)
        m = (m_r & (o_u >= 0) & (o_u < WW))[None, :]
        b_lo, b_hi = _split_words(tl.load(p_row + o_u[None, :], mask=m, other=0), DTYPE)
        cols = cols + (b_lo, b_hi)
    return cols


@triton.jit
def _dw_bwd_words_branch(p_g, s_gh, o_h, o_t, m_q, WW, H, C, p_w, p_p, m_c, b_x, b_dx,
                         K: tl.constexpr, NEED_DX: tl.constexpr, NEED_PARAM_GRAD: tl.constexpr):
    """One branch of _dw_bwd_words_kernel: adds its transposed convolution to the quads' dx (a tuple:
    upper even, upper odd, lower even, lower odd; [BLOCK_C, BLOCK_Q] each) and writes its weight and
    bias partial sums (rows t < K*K and K*K of this program's slot, columns p_p of the channels m_c).
    p_g: [BLOCK_C, 1] pointers of the channels' planes; p_w: [BLOCK_C, 1] of their weights."""
    R: tl.constexpr = K // 2
    WR: tl.constexpr = (R + 1) // 2
    DTYPE: tl.constexpr = p_g.dtype.element_ty
    p_gw = p_g.to(tl.pointer_type(tl.int32))
    b_dxe0, b_dxo0, b_dxe1, b_dxo1 = b_dx
    b_xe0, b_xo0, b_xe1, b_xo1 = b_x
    # g is read at p - t: tap (kh, kw) reaches the upper output row from g row o_h - (kh - R), the lower
    # one from the row below it. Rows o_h - R .. o_h + R + 1 in order: row i feeds tap kh = 2R - i of
    # the upper outputs and, with row i + 1, the same tap of the lower ones (each row loaded once).
    o_r = o_h - R
    prev = _load_word_row(p_gw + (o_r.to(tl.int64) * s_gh)[None, :], o_t, m_q & (o_r >= 0) & (o_r < H), WW, DTYPE,
                          WR)
    for i in tl.static_range(K):
        o_r = o_h + (i + 1 - R)
        cur = _load_word_row(p_gw + (o_r.to(tl.int64) * s_gh)[None, :], o_t, m_q & (o_r >= 0) & (o_r < H), WW,
                             DTYPE, WR)
        kh = 2 * R - i
        for kw in tl.static_range(K):
            # column w - dw, dw = kw - R: even output 2 o_t - dw, odd one 2 o_t + 1 - dw
            b_ge0 = prev[2 * WR + R - kw]
            b_go0 = prev[2 * WR + R - kw + 1]
            b_ge1 = cur[2 * WR + R - kw]
            b_go1 = cur[2 * WR + R - kw + 1]
            if NEED_DX:
                b_w = tl.load(p_w + (kh * K + kw))
                b_dxe0 += b_w * b_ge0
                b_dxo0 += b_w * b_go0
                b_dxe1 += b_w * b_ge1
                b_dxo1 += b_w * b_go1
            if NEED_PARAM_GRAD:
                b_t = b_ge0 * b_xe0 + b_go0 * b_xo0 + b_ge1 * b_xe1 + b_go1 * b_xo1
                tl.store(p_p + (kh * K + kw) * C, tl.sum(b_t, axis=1), mask=m_c)
        if NEED_PARAM_GRAD:
            if i == R:  # rows o_h and o_h + 1: the quads' own g, the bias gradient
                b_b = prev[2 * WR] + prev[2 * WR + 1] + cur[2 * WR] + cur[2 * WR + 1]
                tl.store(p_p + (K * K) * C, tl.sum(b_b, axis=1), mask=m_c)
        prev = cur
    return b_dxe0, b_dxo0, b_dxe1, b_dxo1


@triton.jit
def _dw_bwd_words_kernel(
    g1_ptr,  # gradient of branch 1's output: [B, C, H, W] fp16/bf16, whole words (see forward_path)
    g2_ptr,  # gradient of branch 2's output: same (unused without TWO)
    x_ptr,  # x: same (unused without NEED_PARAM_GRAD)
    w1_ptr,  # [C, K1*K1] fp32
    w2_ptr,  # [C, K2*K2] fp32
    xb_ptr,  # input bias [C] fp32 (unused when not HAS_XBIAS)
    dx_ptr,  # dx: [B, C, H, W] contiguous (unused without NEED_DX)
    p1_ptr,  # partials of branch 1: [B * n_tiles, K1*K1 + 1, C] fp32 (row K1*K1: bias)
    p2_ptr,  # partials of branch 2: [B * n_tiles, K2*K2 + 1, C] fp32
    C, H, W,
    stride_xb, stride_xc, stride_xh,  # element strides (even; unit W stride)
    stride_g1b, stride_g1c, stride_g1h,
    stride_g2b, stride_g2c, stride_g2h,
    K1: tl.constexpr,
    K2: tl.constexpr,
    TWO: tl.constexpr,
    NEED_DX: tl.constexpr,
    NEED_PARAM_GRAD: tl.constexpr,
    HAS_XBIAS: tl.constexpr,
    BLOCK_C: tl.constexpr,  # channels per program (the GPU's: 1, see WORDS_BLOCK_C)
    BLOCK_Q: tl.constexpr,  # 2 x 2 pixel quads per program
):
    """_dw_bwd_kernel for 2-byte dtypes on aligned 4-byte words, BLOCK_C channels per program, 2 x 2
    pixel quads per thread (as _dw_fwd_words_kernel): g's taps, x and dx are words of two pixels; each
    g row is loaded once (3 words for K <= 5) and serves both rows of the quads."""
    i_q = tl.program_id(0)
    i_c = tl.program_id(1)
    i_b = tl.program_id(2).to(tl.int64)
    WW = W // 2
    o_c = i_c * BLOCK_C + tl.arange(0, BLOCK_C)
    m_c = o_c < C
    o_cl = tl.minimum(o_c, C - 1)  # the last block's surplus rows re-read the last channel (stores masked)
    o_c64 = o_cl.to(tl.int64)[:, None]
    o_q = tl.multiple_of(i_q * BLOCK_Q + tl.arange(0, BLOCK_Q), 1)
    m_q = o_q < tl.cdiv(H, 2) * WW
    o_h = (o_q // WW) * 2
    o_t = o_q % WW
    m_1 = m_q & (o_h + 1 < H)
    i_part = i_b * tl.num_programs(0) + i_q
    b_zero = tl.zeros([BLOCK_C, BLOCK_Q], dtype=tl.float32)
    b_x = (b_zero, b_zero, b_zero, b_zero)
    if NEED_PARAM_GRAD:
        p_x = (x_ptr + (i_b * stride_xb + o_c64 * stride_xc)).to(tl.pointer_type(tl.int32))
        o_x = (o_h.to(tl.int64) * (stride_xh // 2) + o_t)[None, :]
        b_xe0, b_xo0 = _split_words(tl.load(p_x + o_x, mask=m_q[None, :], other=0), x_ptr.dtype.element_ty)
        b_xe1, b_xo1 = _split_words(tl.load(p_x + (o_x + stride_xh // 2), mask=m_1[None, :], other=0),
                                    x_ptr.dtype.element_ty)
        if HAS_XBIAS:
            b_xb = tl.load(xb_ptr + o_cl)[:, None]
            b_xe0 = tl.where(m_q[None, :], b_xe0 + b_xb, 0.0)
            b_xo0 = tl.where(m_q[None, :], b_xo0 + b_xb, 0.0)
            b_xe1 = tl.where(m_1[None, :], b_xe1 + b_xb, 0.0)
            b_xo1 = tl.where(m_1[None, :], b_xo1 + b_xb, 0.0)
        b_x = (b_xe0, b_xo0, b_xe1, b_xo1)
    b_dx = (b_zero, b_zero, b_zero, b_zero)
    b_dx = _dw_bwd_words_branch(
        g1_ptr + (i_b * stride_g1b + o_c64 * stride_g1c), tl.cast(stride_g1h // 2, tl.int64), o_h, o_t, m_q, WW, H, C,
        w1_ptr + o_cl[:, None] * (K1 * K1), p1_ptr + i_part * ((K1 * K1 + 1) * C) + o_c, m_c, b_x, b_dx, K1, NEED_DX,
        NEED_PARAM_GRAD,
    )
    if TWO:
        b_dx = _dw_bwd_words_branch(
            g2_ptr + (i_b * stride_g2b + o_c64 * stride_g2c), tl.cast(stride_g2h // 2, tl.int64), o_h, o_t, m_q, WW,
            H, C, w2_ptr + o_cl[:, None] * (K2 * K2), p2_ptr + i_part * ((K2 * K2 + 1) * C) + o_c, m_c, b_x, b_dx,
            K2, NEED_DX, NEED_PARAM_GRAD,
        )
    if NEED_DX:
        b_dxe0, b_dxo0, b_dxe1, b_dxo1 = b_dx
        p_dx = dx_ptr.to(tl.pointer_type(tl.int32))
        o_dx = (i_b * C + o_c.to(tl.int64)[:, None]) * H * WW + (o_h * WW + o_t)[None, :]
        tl.store(p_dx + o_dx, _join_words(b_dxe0, b_dxo0, dx_ptr.dtype.element_ty), mask=m_c[:, None] & m_q[None, :])
        tl.store(p_dx + (o_dx + WW), _join_words(b_dxe1, b_dxo1, dx_ptr.dtype.element_ty),
                 mask=m_c[:, None] & m_1[None, :])


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------


MAX_PIXELS = 2**31 - 2**16  # pixel indices within an image are int32 (a tile's last index must not wrap)


def _check_pixels(x: torch.Tensor) -> None:
    if x.shape[2] * x.shape[3] > MAX_PIXELS:
        raise ValueError(f"depthwise conv supports at most {MAX_PIXELS} pixels per image (H * W), "
                         f"got {x.shape[2]} x {x.shape[3]}")


def _check_image_offsets(name: str, t: torch.Tensor) -> None:
    """For kernels whose offsets inside one image are int32 (the attention's; the batch offset is
    int64): refuse an image spanning 2**31 elements or more. The kernels of this module use int64."""
    span = sum((s - 1) * abs(st) for s, st in zip(t.shape[1:], t.stride()[1:]))
    if span > _INT32_LIMIT or t.shape[1] * t.shape[2] * t.shape[3] > _INT32_LIMIT:
        raise ValueError(f"{name}: one image spans more than 2**31 elements ({tuple(t.shape)}); not supported")


def _check_branches(x: torch.Tensor, weights, biases=None) -> list[int]:
    check_tensor("x", x, ndim=4, dtypes=SUPPORTED_DTYPES)
    _check_pixels(x)
    if not isinstance(weights, (list, tuple)) or len(weights) not in (1, 2):
        raise ValueError(f"depthwise conv takes 1 or 2 branches (a list of weights), got {weights!r:.80}")
    if biases is not None and (not isinstance(biases, (list, tuple)) or len(biases) != len(weights)):
        raise ValueError(f"biases must be a list with one entry (tensor or None) per branch, got {biases!r:.80}")
    C = x.shape[1]
    sizes = []
    for i, w in enumerate(weights):
        check_tensor(f"weights[{i}]", w, ndim=4, device=x.device)
        k = w.shape[-1]
        if k not in KERNEL_SIZES or tuple(w.shape) != (C, 1, k, k):
            raise ValueError(f"weights[{i}] must have shape [{C}, 1, K, K] with K in {KERNEL_SIZES}, "
                             f"got {tuple(w.shape)}")
        if not w.is_floating_point():
            raise TypeError(f"weights[{i}] must be floating point, got {w.dtype}")
        if biases is not None and biases[i] is not None:
            check_tensor(f"biases[{i}]", biases[i], device=x.device, shape=(C,))
        sizes.append(k)
    return sizes


def _order(sizes: list[int]) -> list[int]:
    """Branch order for the kernel: the smaller kernel first (its taps are inside the larger window)."""
    return [1, 0] if len(sizes) == 2 and sizes[0] > sizes[1] else list(range(len(sizes)))


def _f32(t: torch.Tensor | None) -> torch.Tensor | None:
    """A parameter as a dense fp32 vector ([C] or [C * K * K]); None stays None (a missing bias: the
    kernels are specialised without it rather than handed a zero-filled buffer, one launch less)."""
    if t is None:
        return None
    return t.detach().to(torch.float32).contiguous().view(-1)


def forward_path(x: torch.Tensor, out: list[torch.Tensor]) -> str:
    """Which forward kernel runs: "words" (``_dw_fwd_words_kernel``: 2-byte dtypes whose rows are
    whole 4-byte words: W even, unit W stride, even strides, 4-byte-aligned x and outputs) or
    "pixels" (``_dw_fwd_kernel``: everything else)."""
    ok = _whole_words(x) and all(o.stride(0) % 2 == 0 and _word_aligned(o) for o in out)
    return "words" if ok else "pixels"


def backward_path(x: torch.Tensor, grads: list[torch.Tensor], need_param_grad: bool) -> str:
    """Which backward kernel runs: "words" (``_dw_bwd_words_kernel``) when every gradient, and x where
    the weight or bias gradient reads it, is made of whole words as in :func:`forward_path`; else
    "pixels" (``_dw_bwd_kernel``)."""
    ok = all(_whole_words(g) for g in grads) and (not need_param_grad or _whole_words(x))
    return "words" if ok and x.element_size() == 2 and x.shape[1] <= _MAX_GRID_YZ else "pixels"


def _whole_words(t: torch.Tensor) -> bool:
    """2-byte elements whose every row is whole aligned 4-byte words: W even, unit W stride, even
    batch/channel/row strides, first element 4-byte aligned, channels within a grid dimension."""
    if t.element_size() != 2 or t.shape[3] % 2 or t.stride(3) != 1 or t.shape[1] > _MAX_GRID_YZ:
        return False
    return all(s % 2 == 0 for s in t.stride()[:3]) and _word_aligned(t)


def _word_aligned(t: torch.Tensor) -> bool:
    """Whether t's first element sits at a 4-byte boundary (a fake tensor, which has no address, by
    its storage offset: storages are allocated aligned)."""
    if isinstance(t, FakeTensor):
        return t.storage_offset() * t.element_size() % 4 == 0
    return t.data_ptr() % 4 == 0


def depthwise_conv_fwd(
    x: torch.Tensor,
    weights: list[torch.Tensor],
    biases: list[torch.Tensor | None],
    relu: bool,
    *,
    input_bias: torch.Tensor | None = None,
    out: list[torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Depthwise convolutions of ``x: [B, C, H, W]`` (any strides, fp32/fp16/bf16), 1 or 2 branches.

    ``weights[i]``: [C, 1, K_i, K_i], K_i in (3, 5, 7), padding K_i // 2; ``biases[i]``: [C] or None;
    ``relu``: apply ReLU to every output. Both branches are computed from one read of x.
    ``input_bias`` ([C] or None) is added to x inside the image before the convolution (it lets the
    bias of a preceding 1x1 convolution be folded in without a pass over x).
    ``out``: optional preallocated outputs, each [B, C, H, W] in x's dtype with a dense [C, H, W]
    per image (e.g. channel slices of one larger buffer); else new contiguous tensors are returned.
    fp32 accumulation; outputs in x's dtype.
    """
    sizes = _check_branches(x, weights, biases)
    B, C, H, W = x.shape
    N = H * W
    if input_bias is not None:
        check_tensor("input_bias", input_bias, device=x.device, shape=(C,))
    if out is None:
        out = [torch.empty((B, C, H, W), device=x.device, dtype=x.dtype) for _ in sizes]
    else:
        if len(out) != len(sizes):
            raise ValueError(f"out needs {len(sizes)} tensors, got {len(out)}")
        for i, o in enumerate(out):
            check_tensor(f"out[{i}]", o, device=x.device, shape=(B, C, H, W), dtypes=(x.dtype,))
            if o.stride()[1:] != (N, W, 1) or o.stride(0) != out[0].stride(0):
                raise ValueError(f"out[{i}] must be dense per image (strides [*, {N}, {W}, 1]), got {o.stride()}")
    if x.numel() == 0:
        return list(out)
    order = _order(sizes)
    ws = [_f32(weights[i]) for i in order]
    bs = [_f32(biases[i]) for i in order]
    os_ = [out[i] for i in order]
    two = len(sizes) == 2
    xb = _f32(input_bias) if input_bias is not None else ws[0]
    if forward_path(x, out) == "words":
        block_c, block_q = words_tiles(C, backward=False)
        grid = (cdiv(cdiv(H, 2) * (W // 2), block_q), cdiv(C, block_c), B)
        with device_guard(x):
            launch_kernel(_dw_fwd_words_kernel, grid,
                x, ws[0], bs[0], ws[-1], bs[-1], xb, os_[0], os_[-1], C, H, W, *x.stride()[:3], os_[0].stride(0),
                sizes[order[0]], sizes[order[-1]], TWO=two, RELU=bool(relu),
                HAS_XBIAS=input_bias is not None, BLOCK_C=block_c, BLOCK_Q=block_q, num_warps=NUM_WARPS,
                num_stages=NUM_STAGES, **LAUNCH_OPTIONS,
            )
        return list(out)
    block_c, block_q = tiles(backward=False)
    grid = (cdiv(cdiv(H, 2) * W, block_q), cdiv(C, block_c), B)
    with device_guard(x):
        launch_kernel(_dw_fwd_kernel, grid,
            x, ws[0], bs[0], ws[-1], bs[-1], xb, os_[0], os_[-1], C, N, H, W, *x.stride(), os_[0].stride(0),
            sizes[order[0]], sizes[order[-1]], TWO=two, RELU=bool(relu),
            HAS_XBIAS=input_bias is not None, BLOCK_C=block_c, BLOCK_Q=block_q, num_warps=NUM_WARPS,
            num_stages=NUM_STAGES, **LAUNCH_OPTIONS,
        )
    return list(out)


def depthwise_conv_bwd(
    grads: list[torch.Tensor],
    x: torch.Tensor,
    weights: list[torch.Tensor],
    *,
    need_input_grad: bool = True,
    need_weight_grad: bool = True,
    need_bias_grad: bool = False,
    input_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, list[torch.Tensor | None], list[torch.Tensor | None]]:
    """Gradients of :func:`depthwise_conv_fwd` given ``grads[i]``, the gradient of branch i's output
    before any ReLU (any strides; the caller applies the ReLU mask).

    Returns ``(dx, [dweight_i], [dbias_i])``: dx [B, C, H, W] contiguous in x's dtype (the sum over
    branches, written once), dweight_i [C, 1, K_i, K_i] and dbias_i [C] in fp32, each None when not
    asked for. Weight and bias gradients are reduced deterministically (per-program partial sums,
    summed in a fixed order). ``input_bias`` must be the one given to the forward.
    """
    sizes = _check_branches(x, weights)
    B, C, H, W = x.shape
    N = H * W
    if not isinstance(grads, (list, tuple)) or len(grads) != len(sizes):
        raise ValueError(f"grads needs one tensor per branch ({len(sizes)})")
    for i, g in enumerate(grads):
        check_tensor(f"grads[{i}]", g, ndim=4, device=x.device, shape=(B, C, H, W), dtypes=SUPPORTED_DTYPES)
    grads = [g if g.dtype == x.dtype else g.to(x.dtype) for g in grads]
    if input_bias is not None:
        check_tensor("input_bias", input_bias, device=x.device, shape=(C,))
    need_param = bool(need_weight_grad or need_bias_grad)
    nb = len(sizes)
    if not (need_input_grad or need_param):
        return None, [None] * nb, [None] * nb
    if x.numel() == 0:
        dx = torch.zeros_like(x, memory_format=torch.contiguous_format) if need_input_grad else None
        dws = [torch.zeros(C, 1, k, k, device=x.device) if need_weight_grad else None for k in sizes]
        dbs = [torch.zeros(C, device=x.device) if need_bias_grad else None for _ in sizes]
        return dx, dws, dbs
    order = _order(sizes)
    two = nb == 2
    ks = [sizes[i] for i in order]
    gs = [grads[i] for i in order]
    ws = [_f32(weights[i]) for i in order]
    words = backward_path(x, gs, need_param) == "words"
    if words:
        block_c, block_q = words_tiles(C, backward=True)
        n_tiles = cdiv(cdiv(H, 2) * (W // 2), block_q)
    else:
        block_c, block_n = tiles(backward=True)
        n_tiles = cdiv(N, block_n)
    dx = torch.empty((B, C, H, W), device=x.device, dtype=x.dtype) if need_input_grad else None
    parts = [torch.empty((B * n_tiles, k * k + 1, C), device=x.device, dtype=torch.float32) if need_param else None
             for k in ks]
    xb = _f32(input_bias) if input_bias is not None else ws[0]
    dummy = ws[0]
    if words:
        with device_guard(x):
            launch_kernel(_dw_bwd_words_kernel, (n_tiles, cdiv(C, block_c), B),
                gs[0], gs[-1], x, ws[0], ws[-1], xb, dx if dx is not None else dummy,
                parts[0] if need_param else dummy, parts[-1] if need_param else dummy,
                C, H, W, *x.stride()[:3], *gs[0].stride()[:3], *gs[-1].stride()[:3], ks[0], ks[-1],
                TWO=two, NEED_DX=bool(need_input_grad), NEED_PARAM_GRAD=need_param,
                HAS_XBIAS=need_param and input_bias is not None, BLOCK_C=block_c, BLOCK_Q=block_q,
                num_warps=NUM_WARPS, num_stages=NUM_STAGES, **LAUNCH_OPTIONS,
            )
    else:
        grid = (n_tiles, cdiv(C, block_c), B)
        with device_guard(x):
            launch_kernel(_dw_bwd_kernel, grid,
                gs[0], gs[-1], x, ws[0], ws[-1], xb, dx if dx is not None else dummy,
                parts[0] if need_param else dummy, parts[-1] if need_param else dummy,
                C, N, H, W, *x.stride(), *gs[0].stride(), *gs[-1].stride(), ks[0], ks[-1],
                TWO=two, NEED_DX=bool(need_input_grad), NEED_PARAM_GRAD=need_param,
                HAS_XBIAS=need_param and input_bias is not None, BLOCK_C=block_c, BLOCK_N=block_n,
                num_warps=NUM_WARPS, num_stages=NUM_STAGES, **LAUNCH_OPTIONS,
            )
    dws: list[torch.Tensor | None] = [None] * nb
    dbs: list[torch.Tensor | None] = [None] * nb
    if need_param:
        for j, i in enumerate(order):
            k = sizes[i]
            total = parts[j].sum(0)  # fixed-order reduction over programs: deterministic
            if need_weight_grad:
                # the partials are tap-major ([K*K, C], coalesced writes); the gradient is [C, 1, K, K]
                # contiguous like the weight (C*K*K floats: the copy is negligible)
                dws[i] = total[: k * k].t().contiguous().view(C, 1, k, k)
            if need_bias_grad:
                dbs[i] = total[k * k].clone()  # its own storage: callers may return it beside dws[i]
    return dx, dws, dbs


# ----------------------------------------------------------------------------------------------
# Every configuration the launchers can choose
# ----------------------------------------------------------------------------------------------


# kernel sizes of the launches: one branch (the attention's 3x3 backward, any K in KERNEL_SIZES) and
# two branches, the smaller first (the feed-forward's 3x3 + 5x5; 3+7 and 5+7 are accepted too)
_BRANCH_SIZES = tuple((k, k, False) for k in KERNEL_SIZES) + ((3, 5, True), (3, 7, True), (5, 7, True))


_WORDS_BWD_INTS = ("C", "H", "W", "stride_xb", "stride_xc", "stride_xh", "stride_g1b", "stride_g1c", "stride_g1h",
                   "stride_g2b", "stride_g2c", "stride_g2h")


@register_compile_configs
def _compile_configs():
    ints = ("C", "N", "H", "W", "stride_xb", "stride_xc", "stride_xh", "stride_xw")
    for dtype in ("float32", "float16", "bfloat16"):
        for k1, k2, two in _BRANCH_SIZES:
            for relu in (False, True):
                for xbias in (False, True):
                    yield CompileConfig(
                        _dw_fwd_kernel,
                        {"x_ptr": ptr(dtype), "w1_ptr": "*fp32", "b1_ptr": "*fp32", "w2_ptr": "*fp32",
                         "b2_ptr": "*fp32", "xb_ptr": "*fp32", "o1_ptr": ptr(dtype), "o2_ptr": ptr(dtype),
                         **{k: "i32" for k in ints}, "stride_ob": "i32"},
                        {"K1": k1, "K2": k2, "TWO": two, "RELU": relu, "HAS_XBIAS": xbias, "BLOCK_C": FWD_BLOCK_C,
                         "BLOCK_Q": FWD_BLOCK_Q},
                        num_warps=NUM_WARPS, num_stages=NUM_STAGES, tag=dtype,
                    )
                    if dtype != "float32":
                        yield CompileConfig(
                            _dw_fwd_words_kernel,
                            {"x_ptr": ptr(dtype), "w1_ptr": "*fp32", "b1_ptr": "*fp32", "w2_ptr": "*fp32",
                             "b2_ptr": "*fp32", "xb_ptr": "*fp32", "o1_ptr": ptr(dtype), "o2_ptr": ptr(dtype),
                             **{k: "i32" for k in ("C", "H", "W", "stride_xb", "stride_xc", "stride_xh",
                                                   "stride_ob")}},
                            {"K1": k1, "K2": k2, "TWO": two, "RELU": relu, "HAS_XBIAS": xbias,
                             "BLOCK_C": WORDS_BLOCK_C, "BLOCK_Q": WORDS_BLOCK_Q},
                            num_warps=NUM_WARPS, num_stages=NUM_STAGES, tag=dtype,
                        )
            bwd_ints = ints + tuple(f"stride_g{i}{a}" for i in (1, 2) for a in "bchw")
            for need_dx, need_param, xbias in ((True, False, False), (True, True, False), (True, True, True),
                                               (False, True, False), (False, True, True)):
                if dtype != "float32":
                    yield CompileConfig(
                        _dw_bwd_words_kernel,
                        {"g1_ptr": ptr(dtype), "g2_ptr": ptr(dtype), "x_ptr": ptr(dtype), "w1_ptr": "*fp32",
                         "w2_ptr": "*fp32", "xb_ptr": "*fp32", "dx_ptr": ptr(dtype), "p1_ptr": "*fp32",
                         "p2_ptr": "*fp32", **{k: "i32" for k in _WORDS_BWD_INTS}},
                        {"K1": k1, "K2": k2, "TWO": two, "NEED_DX": need_dx, "NEED_PARAM_GRAD": need_param,
                         "HAS_XBIAS": xbias, "BLOCK_C": WORDS_BLOCK_C, "BLOCK_Q": WORDS_BWD_BLOCK_Q},
                        num_warps=NUM_WARPS, num_stages=NUM_STAGES, tag=dtype,
                    )
                yield CompileConfig(
                    _dw_bwd_kernel,
                    {"g1_ptr": ptr(dtype), "g2_ptr": ptr(dtype), "x_ptr": ptr(dtype), "w1_ptr": "*fp32",
                     "w2_ptr": "*fp32", "xb_ptr": "*fp32", "dx_ptr": ptr(dtype), "p1_ptr": "*fp32",
                     "p2_ptr": "*fp32", **{k: "i32" for k in bwd_ints}},
                    {"K1": k1, "K2": k2, "TWO": two, "NEED_DX": need_dx, "NEED_PARAM_GRAD": need_param,
                     "HAS_XBIAS": xbias, "BLOCK_C": BWD_BLOCK_C, "BLOCK_N": BWD_BLOCK_N},
                    num_warps=NUM_WARPS, num_stages=NUM_STAGES, tag=dtype,
                )
