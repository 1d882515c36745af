"""Top-k sparse channel attention of DRSformer (``Attention``): fused forward and backward.

Notation: x [B, d, H, W], N = H*W tokens, ``heads`` heads of C = d / heads channels.
``t0 = qkv(x)`` [B, 3d, H, W] is the 1x1 projection; ``t = dwconv3x3(t0)`` gives Q, K, V (not saved:
the forward's kernels and dOut V^T recompute the 3x3 depthwise conv of ``t0`` on the fly from 9
shifted, cache-resident loads; the backward writes Q and K once for the dQ/dK matmul).

Forward (per sample b and head h)::

    A   = (Q K^T / (|Q| |K|^T)) * temperature[h]            (C x C; |.| = max(L2 norm over N, 1e-12))
    P   = sum_i attn_i * softmax(top-k_i(A))               (k_i = int(C/2), int(2C/3), int(3C/4), int(4C/5))
    out = W_o blockdiag(P) V + b_o (+ residual)            (W_o blockdiag(P) = M: one d x d matrix per sample)

Kernels:
  1. ``_attn_qk_gram_kernel``: Q, K tiles from t0, accumulates Q K^T and the row sums of squares over
     token blocks; each split of the tokens writes its own partial (deterministic, no atomics); the
     partials are summed by one parallel torch reduction (fixed order for a given shape and device).
     fp16/bf16 t0 made of whole 4-byte words takes ``_attn_qk_gram_words_kernel``; above 64 channels
     per head Q and K are written once by the depthwise conv and ``_attn_qk_gram_dense_kernel``
     multiplies them (``gram_path``).
  2. ``_attn_topk_softmax_kernel``: a few rows of A per program (one row from C = 64 up): normalises
     (IEEE sqrt and division), ranks each row once (one rank decides all four nested masks; ties go
     to the lower column index), one exp shared by the four softmaxes, writes Ghat, the norms and P.
     No -inf tensors, no masks in memory.
  3. ``_attn_mix_kernel``: out = M V with V recomputed from t0, project_out folded into M (a d x d
     matrix per sample, formed by a tiny einsum), output bias and the block's residual add in the
     epilogue. Also used in the backward for dV = M^T dOut.
Backward (dT = gradient of t = [dQ; dK; dV], then the depthwise conv's and the 1x1's backward):
  4. ``_attn_dout_v_kernel``: G = dOut V^T (d x d per sample, split-N partials) and the row sums of
     dOut: dW_o = sum_b G_b blockdiag(P_b)^T, dP_h = (W_o^T G)_hh, d b_o (tiny einsums). fp16/bf16
     tensors made of whole 4-byte words take ``_attn_dout_v_words_kernel`` (``dout_v_path``).
  5. ``_attn_softmax_bwd_kernel``: per row, the same masks from the saved normalised Gram, the
     softmax backward of the four branches, d attn_i, d temperature, and dG = d(QK^T) and the
     per-row norm terms.
  6. Q and K written once by the depthwise conv (``dwconv.depthwise_conv_fwd``), then
     ``_attn_dqk_kernel``: dQ = dG K + alpha Q, dK = dG^T Q + beta K, a dense batched matmul.
  7. dV with kernel 3 (M^T via strides), the 3x3 depthwise conv backward (``dwconv.py``), and the
     1x1 projection's backward (cuBLAS via ``aten.convolution_backward``).

Precision of the dots ("fp32" means what it means for the original under PyTorch's settings):
  - the Gram Q K^T, whose values choose the top-k entries: in fp32 exact fp32 ("ieee") whatever the
    TF32 setting (fp32 operands rebuilt from t0); in fp16/bf16 Q and K are rounded to t0's dtype, as
    the original stores them, and multiplied on tensor cores (HALF_DOT; products exact in the fp32
    accumulator: the Gram of the original's own Q and K). Its normalisation and the softmaxes use
    IEEE sqrt and division (``tl.sqrt_rn``, ``tl.div_rn``), as PyTorch does.
  - dots that contain a convolution (project_out is folded into M): the forward mix M V, and in the
    backward G = dOut V^T (dW_o and dP) and dV = M^T dOut: in fp32 they follow PyTorch's setting for
    convolutions, ``conv_fp32_precision()`` read at launch ("tf32" by default on Ampere/Hopper,
    "ieee" with ``torch.backends.cudnn.allow_tf32 = False``), passed as the constexpr
    ``DOT_PRECISION``; the original's matmul P V is not TF32, but it is followed by the TF32
    project_out conv, whose rounding the fused product then shares.
  - dots that stand only for the original's ``torch.matmul`` (the backward of Q K^T in
    ``_attn_dqk_kernel``): exact fp32, as torch.matmul's default (no TF32).
  - fp16/bf16: operands in the input dtype on tensor cores with fp32 accumulation (Gram, mix, dOut
    V^T, dQ/dK). dQ/dK multiply what the original's backward of q_n k_n^T does under autocast: dGhat
    and the normalised Q and K in half precision (dG = dGhat / (|q| |k|) itself can fall out of
    fp16's range), the rows' own 1 / |q| and 1 / |k| applied to the fp32 accumulator.

sm_90 as launched (num_stages=3, 16-byte-aligned pointers, batch 1, 256x256, fp32 with TF32 on):
programs, registers at num_warps, resident warps per SM (65536 registers), and a predicted time =
max(bytes / 3.35 TB/s, FFMA / 33.5 T/s, TF32 MAC / ~250 T/s), before -> after issue 9:
  level 1 (48@256^2, C = 48)     programs      regs @ warps   warps/SM  bytes    FFMA        predicted
  _attn_qk_gram_kernel           512 -> 512    212@8 -> 128@8   8 -> 16   30 MB   344 M       10 us (FMA)
  gram reduce / topk_softmax     3+3 -> torch sum + 48 programs (serial 16-row loops -> 1 row each)
  _attn_mix_kernel (fwd, +res)   1024 -> 2048  142@8 -> 96@8    8 -> 16   38 MB   28 M+201 M MAC: FFMA -> TF32, 11 us (HBM)
  _attn_dout_v_kernel            512 -> 256    96@8 -> 64@8    16 -> 32   28 MB   306 M FFMA -> 38 M+TF32: 9 -> 8 us (HBM)
  _attn_dqk_kernel               2048 -> 4096  209@8 -> 94@8    8 -> 16   50 MB   535 M       16 us (FMA, 1.07x)
  _attn_mix_kernel (dV)          1024 -> 2048  78@8 -> 40@8    24 -> 48   25 MB   201 M MAC: FFMA -> TF32, 7.5 us (HBM)
  decoder level 1 (96@256^2, C = 96)
  _attn_qk_gram_kernel           512 -> 512    213@8 -> 128@8   8 -> 16   50 MB   1.38 G      41 us (FMA, 2.7x HBM)
  _attn_mix_kernel (fwd, +res)   2048 -> 2048  104@8 -> 112@8  16 -> 16   76 MB   805 M MAC: 26 us FFMA -> 22.5 us HBM (TF32)
  _attn_dout_v_kernel            512 -> 1024   96@8 -> 66@8    16 -> 24   50 MB   1.07 G MAC: 32 us FFMA -> 15 us HBM (TF32)
  _attn_dqk_kernel               4096 -> 8192  209@8 -> 94@8    8 -> 16  100 MB   1.99 G      59 us (FMA, 2x HBM)
  _attn_topk_softmax_kernel      12 -> 96      128@4 -> 71@4   16 -> 28   tiny (plus 12 programs of gram reduce before)
The Gram and dQ/dK stay exact fp32 FFMA (top-k values; torch.matmul is not TF32): at C = 96 they are
FMA-bound. The Gram's taps load 16 lanes per row (a warp load fills 2 half wavefronts: per-warp L1
factor 2.8, static_report), and the dV mix's fp32 dOut tiles are transposed into shared memory by
4-byte cp.async (3.3). Since: the Gram's 64 x 64 tiles (C > 32) run 16 warps capped at 128
registers (16 warps per SM, no spills; the 16-token steps Triton 3.6 needs took 208-214@8); the
backward's G = dOut V^T takes 1 pixel per thread along W (coalesced taps), 64 x 32
tokens at 16 warps, 125-128@16 (16 warps per SM; per-warp L1 factor fp32 4.97 -> 1.85, bf16 13.7 ->
3.6), and dQ/dK, 32 rows x 32 tokens at 8 warps for every C, 150@8 (8 warps per SM; fp32
6.1-6.5 -> 2.0, bf16 12.3 -> 3.7; ~11% more FFMA at C = 96 than 64-row blocks; uncapped: 8 warps per
SM, Triton 3.6 spills at the 128 cap).
Row pairs (kernels/_utils.py): the Gram and dQ/dK rebuild Q and K at two vertically adjacent pixels
per thread (``_dwconv3x3_pairs``: 4 row loads per column shift for both, each weight loaded once),
two dots per step. Static picture (sm_90, fp32, 256x256): Gram level 1 21 -> 14 us (12 us HBM),
decoder level 1 84 -> 55 us; dQ/dK 40 -> 25 us (16), 122 -> 73 us (38), 200 registers @ 8 warps
(8 warps per SM as before; 32 row pairs = 64 tokens per program).
Words (fp16/bf16, kernels/_utils.py): G = dOut V^T takes 32 words (64 tokens) per step, V rebuilt
at both pixels of a word from 3 word loads per tap row (``_dwconv3x3_words``), dOut as words, 8
token blocks per split (a full wave at level 1). Static picture (sm_90, bf16, 256x256): level 1
7.4 -> 6.2 us (6.0 HBM), decoder level 1 37.5 -> 18.2 us (16.3), L1 factor 3.6 -> 1.7; 107-126
registers at the 128 cap (16 warps per SM), no spills on sm_80/sm_90 (Triton 3.9 and 3.6).
The Gram on words (fp16/bf16): Q and K at both pixels of 32 words per step, rounded, two tensor-core
dots (it was FFMA on fp32 Q and K). Static picture (sm_90, bf16, 256x256): level 1 12.8 -> 9.3 us
(6.0 HBM), decoder level 1 51.2 -> 37.1 us (11.9; 2 x 2 tiles of 64 channels rebuild each channel
twice per side: one 128-channel tile needs ~236 registers at 16 warps), 118-128 registers at the cap;
with a depthwise bias (not the default model) 16 words per step (32 spilled 8 bytes on sm_80 in bf16).
Both word kernels then take a tap row's three weights from two 8-byte broadcast loads (the weight as
fp32 pairs, ``_weight_row_pairs``) instead of three 4-byte ones: a broadcast costs a wavefront per
warp whatever its width, and the weights were half of the wavefronts beside the word loads. Static
(sm_90, bf16): Gram level 1 9.3 -> 7.8 us (L1 factor 1.94 -> 1.62), dOut V^T 1.47; registers as before.
dQ/dK as a matmul: the fused kernel above rebuilt Q and K of all C channels for every 32-row block
(3 x (64 + 192) channel stencils for 192 channels at C = 96: L1-bound, 200 registers, 8 warps per
SM). Now the depthwise conv writes Q and K once (at its HBM roofline) and ``_attn_dqk_kernel`` runs
dense tiles, one product per program: 86-120 registers at 8 warps (16 warps per SM), 4 units more
of HBM. Static picture (sm_90, 256x256), fused -> conv + matmul: bf16 level 1 23.1 -> 7.7 + 7.8 us,
decoder level 1 73.1 -> 15.5 + 18.1 us; fp32 decoder level 1 73.2 -> 31.0 + 39.9 us (FMA-bound,
1.33x), level 1 23.7 -> 15.5 + 18.1 us (the one loss: the extra bytes outweigh the stencils at C = 48).
The Gram above 64 channels per head takes the same route (``gram_path`` "dense"): at C = 96 the stencil
kernels' 2 x 2 tiles of 64 rebuilt every channel twice per side. Static picture (sm_90, decoder level 1,
256x256), stencil Gram -> conv + dense Gram: bf16 37.1 -> 15.5 + 9.1 us (block forward 231.0 -> 218.4,
1.51x -> 1.32x), fp32 51.2 (2.15x) -> 31.0 + 22.0 us (32 x 32 FMA tiles, compute-bound 1.40x).

Bytes moved, level 1 at 256x256 (d = 48, fp32, one unit = d*N*4 B = 12.6 MB):
  original forward : qkv 4, dwconv 6, normalize q/k 6, QK^T 2, four (S_i V) 8, weighted sum 17,
                     project_out 2                                            = 45 units = 0.57 GB
  fused forward    : qkv 1x1 4 (read x, write t0), kernel 1 reads q,k 2, kernel 3 reads v 1 and
                     writes out 1 (+1 with the residual read)                  = 8 units  = 0.10 GB
  fused backward   : kernel 4 2, Q K dwconv 4, kernel 6 4, dV 2, dwconv bwd 9,
                     1x1 bwd 8                                                 = 29 units = 0.36 GB
  saved for backward: x and t0 (4 units) + C x C matrices, vs the original's ~14 units (x, t0, t,
                     normalised q and k, the four S_i V, project_out's input).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .._validation import MAX_CHANNELS_PER_HEAD, check_attention_inputs
from ._launch import launch_kernel
from ._registry import CompileConfig, ptr, register_compile_configs
from ._utils import (
    LAUNCH_OPTIONS,
    cdiv,
    conv_fp32_precision,
    device_guard,
    interpreter_tiles,
    multiprocessor_count,
    next_pow2,
)
from .dwconv import _split_words, _unpack_pair, _whole_words, depthwise_conv_bwd, depthwise_conv_fwd

L2_EPS = 1e-12
__all__ = ["attention_fwd", "attention_bwd", "MAX_CHANNELS_PER_HEAD", "topk_counts"]


def topk_counts(c: int) -> tuple[int, int, int, int]:
    # Python float arithmetic then int(), exactly as the original (C=48 -> 24, 32, 36, 38)
    return int(c / 2), int(c * 2 / 3), int(c * 3 / 4), int(c * 4 / 5)


# ----------------------------------------------------------------------------------------------
# shared device functions
# ----------------------------------------------------------------------------------------------
#
# Loop trip counts are constexprs (ITERS, K_ITERS, ...), functions of channel counts and of a
# power-of-two split size, never runtime integers: Triton 3.6's interpreter cannot run range() over
# runtime integers with NumPy >= 2.4, and a constant trip count is what the software pipeliner wants.
# Offsets: every channel offset is int64 (t0 spans 3*d*H*W elements); offsets within one channel
# plane are int32 (the launchers guarantee a plane spans < 2**31 elements, copying if needed).


@triton.jit
def _dwconv3x3_tile(
    t_ptr,  # one image of t0: [3d, H, W] (already offset to the batch), any strides
    w_ptr,  # depthwise weight: [3d, 9] fp32
    b_ptr,  # depthwise bias: [3d] fp32 (unused without HAS_BIAS)
    o_c, m_c,  # channel indices into t0 and their mask: [BLOCK_C]
    o_h, o_w, m_n,  # pixel coordinates and mask of the token block: [BLOCK_N]
    H, W, stride_c, stride_h, stride_w,
    HAS_BIAS: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """3x3 depthwise conv (zero padding 1) at the given channels and pixels, fp32, 0 where masked."""
    b_acc = tl.zeros([BLOCK_C, BLOCK_N], dtype=tl.float32)
    p_c = t_ptr + o_c.to(tl.int64) * stride_c
    # a runtime loop over the taps (not unrolled): only one shifted tile is live at a time, which
    # keeps the register footprint of the callers' larger tiles free of spills
    for tap in range(9):
        o_hh = o_h + (tap // 3 - 1)
        o_ww = o_w + (tap % 3 - 1)
        m_p = m_n & (o_hh >= 0) & (o_hh < H) & (o_ww >= 0) & (o_ww < W)
        b_t = tl.load(p_c[:, None] + (o_hh * stride_h + o_ww * stride_w)[None, :],
                      mask=m_c[:, None] & m_p[None, :], other=0.0)
        b_w = tl.load(w_ptr + o_c * 9 + tap, mask=m_c, other=0.0)
        b_acc += b_t.to(tl.float32) * b_w[:, None]
    if HAS_BIAS:
        b_acc += tl.load(b_ptr + o_c, mask=m_c, other=0.0)[:, None]
    return tl.where(m_c[:, None] & m_n[None, :], b_acc, 0.0)


@triton.jit
def _dwconv3x3_pairs(
    t_ptr,  # one image of t0: [3d, H, W] (already offset to the batch), any strides
    w_ptr,  # depthwise weight: [3d, 9] fp32
    b_ptr,  # depthwise bias: [3d] fp32 (unused without HAS_BIAS)
    o_c, m_c,  # channel indices into t0 and their mask: [BLOCK_C]
    o_h, o_w, m_q,  # row pairs (kernels/_utils.py): upper row, column and mask of the pairs: [BLOCK_N]
    H, W, stride_c, stride_h, stride_w,
    HAS_BIAS: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """_dwconv3x3_tile at the row pairs' two pixels (upper, lower), fp32, 0 where masked (the lower
    pixel of a pair on the last row of an odd H included): 4 row loads per column shift for both
    pixels instead of 6, each tap's weight loaded once for both."""
    b_acc0 = tl.zeros([BLOCK_C, BLOCK_N], dtype=tl.float32)
    b_acc1 = tl.zeros([BLOCK_C, BLOCK_N], dtype=tl.float32)
    p_c = (t_ptr + o_c.to(tl.int64) * stride_c)[:, None]
    p_w = w_ptr + o_c * 9
    # a runtime loop over the column shifts (not unrolled): the 4 shifted rows of one shift are live
    # at a time, which keeps the callers' larger tiles free of spills
    for kw in range(3):
        o_ww = o_w + (kw - 1)
        m_col = m_c[:, None] & (m_q & (o_ww >= 0) & (o_ww < W))[None, :]
        b_w = tl.zeros([BLOCK_C], dtype=tl.float32)  # set below before its first use (r = 0)
        for r in tl.static_range(4):
            # input row o_h - 1 + r: tap row r of the upper pixel, r - 1 of the lower one
            o_hh = o_h + (r - 1)
            m = m_col & ((o_hh >= 0) & (o_hh < H))[None, :]
            b_t = tl.load(p_c + (o_hh * stride_h + o_ww * stride_w)[None, :], mask=m, other=0.0).to(tl.float32)
            if r > 0:  # the previous row's weight: tap (r - 1, kw)
                b_acc1 += b_t * b_w[:, None]
            if r < 3:
                b_w = tl.load(p_w + (r * 3 + kw), mask=m_c, other=0.0)
                b_acc0 += b_t * b_w[:, None]
    if HAS_BIAS:
        b_b = tl.load(b_ptr + o_c, mask=m_c, other=0.0)[:, None]
        b_acc0 += b_b
        b_acc1 += b_b
    b_acc0 = tl.where(m_c[:, None] & m_q[None, :], b_acc0, 0.0)
    b_acc1 = tl.where(m_c[:, None] & (m_q & (o_h + 1 < H))[None, :], b_acc1, 0.0)
    return b_acc0, b_acc1


@triton.jit
def _dwconv3x3_words(
    t_ptr,  # one image of t0 as int32 words: [3d, H, W / 2] (already offset to the batch)
    wp_ptr,  # depthwise weight by tap rows as fp32 pairs: [3d, 3, 2] int64 (_weight_row_pairs)
    o_c,  # channel indices into t0, all valid (callers clamp padding rows): [BLOCK_C]
    o_h, o_t, m_u,  # words (kernels/_utils.py, Words): row, word column and mask: [BLOCK_N]
    H, WW, stride_c, stride_h,  # WW = W / 2 words per row; strides in words
    DTYPE: tl.constexpr,  # t0's 2-byte dtype
    BLOCK_C: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """_dwconv3x3_tile without its bias at both pixels of each word (even 2t, odd 2t + 1), fp32, 0 at
    masked words: per tap row the words t - 1, t, t + 1 hold columns 2t - 2 .. 2t + 3, every column
    shift of both pixels (3 full-wavefront loads for two outputs instead of 3 half-filled ones for
    one). Masks per token only, offsets within an image int32 (callers keep an image's words below
    2**31): what lets a 64 x 32 tile fit 128 registers on sm_80. A tap row's 3 weights come from two
    8-byte broadcast loads (a warp-wide broadcast costs an L1 wavefront whatever its width: three
    4-byte ones were half of the wavefronts beside the 3 full-width word loads)."""
    b_even = tl.zeros([BLOCK_C, BLOCK_N], dtype=tl.float32)
    b_odd = tl.zeros([BLOCK_C, BLOCK_N], dtype=tl.float32)
    o_cc = (o_c * stride_c)[:, None]
    p_w = wp_ptr + o_c * 6
    m_l = (m_u & (o_t >= 1))[None, :]
    m_r = (m_u & (o_t + 1 < WW))[None, :]
    # a runtime loop over the tap rows (not unrolled): the 3 words of one row are live at a time
    for kh in range(3):
        o_r = o_h + (kh - 1)
        m_h = (o_r >= 0) & (o_r < H)
        p_r = t_ptr + (o_cc + (o_r * stride_h + o_t)[None, :])
        # columns 2t - 1 (upper half of word t - 1), 2t, 2t + 1 (word t) and 2t + 2 (lower half of t + 1)
        _, b_c1 = _split_words(tl.load(p_r - 1, mask=m_l & m_h[None, :], other=0), DTYPE)
        b_c2, b_c3 = _split_words(tl.load(p_r, mask=(m_u & m_h)[None, :], other=0), DTYPE)
        b_c4, _ = _split_words(tl.load(p_r + 1, mask=m_r & m_h[None, :], other=0), DTYPE)
        b_w0, b_w1 = _unpack_pair(tl.load(p_w + kh * 2))
        b_w2, _ = _unpack_pair(tl.load(p_w + (kh * 2 + 1)))
        b_w0 = b_w0[:, None]
        b_w1 = b_w1[:, None]
        b_w2 = b_w2[:, None]
        b_even += b_c1 * b_w0 + b_c2 * b_w1 + b_c3 * b_w2
        b_odd += b_c2 * b_w0 + b_c3 * b_w1 + b_c4 * b_w2
    return b_even, b_odd


@triton.jit
def _ghat_tile(
    p_g,  # NORMALISE: summed Gram of one (sample, head) [C*C + 2C] (G, then sums of squares of Q and K
          # rows); else the stored normalised Gram Ghat [C, C]. fp32
    o_r, m_r,  # rows: [BLOCK_R]
    o_l,  # columns: [L]
    C, eps,
    NORMALISE: tl.constexpr,
):
    """Ghat[r, l] = G[r, l] / (max(|q_r|, eps) max(|k_l|, eps)), IEEE sqrt and division: the values
    that choose the top-k entries, bit for bit the same wherever they are rebuilt. 0 outside C x C."""
    m_l = o_l < C
    b_g = tl.load(p_g + o_r[:, None] * C + o_l[None, :], mask=m_r[:, None] & m_l[None, :], other=0.0)
    if NORMALISE:
        b_nq = tl.maximum(tl.sqrt_rn(tl.load(p_g + C * C + o_r, mask=m_r, other=1.0)), eps)
        b_nk = tl.maximum(tl.sqrt_rn(tl.load(p_g + C * C + C + o_l, mask=m_l, other=1.0)), eps)
        b_g = tl.div_rn(b_g, b_nq[:, None] * b_nk[None, :])
    return b_g


@triton.jit
def _topk_softmax_rows(
    p_g,  # see _ghat_tile
    o_r, m_r,  # the rows of this program and their mask: [BLOCK_R]
    tau, k1, k2, k3, k4, C, eps,
    NORMALISE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
    CHUNK: tl.constexpr,
):
    """Rows of A = Ghat * tau: Ghat and the four top-k softmaxes S_1..S_4 ([BLOCK_R, BLOCK_C] fp32,
    0 outside the C x C matrix).

    One rank per entry decides all four nested masks (kept in mask i iff rank < k_i). rank_j counts
    the entries of its row that beat j: larger, or equal with a lower column index, so ties at the
    k-th value go to the lower column index (deterministic; torch.topk leaves the choice open).
    The forward (from the summed Gram) and the backward (from the stored Ghat) see the same bits.
    """
    o_j = tl.arange(0, BLOCK_C)
    m_rj = m_r[:, None] & (o_j < C)[None, :]
    b_ghat = _ghat_tile(p_g, o_r, m_r, o_j, C, eps, NORMALISE)
    b_a = tl.where(m_rj, b_ghat * tau, float("-inf"))
    b_rank = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.int32)
    for i_l in range(BLOCK_C // CHUNK):  # constexpr trip count over the padded row; padding is masked
        o_l = i_l * CHUNK + tl.arange(0, CHUNK)
        m_rl = m_r[:, None] & (o_l < C)[None, :]
        b_al = tl.where(m_rl, _ghat_tile(p_g, o_r, m_r, o_l, C, eps, NORMALISE) * tau, float("-inf"))
        # [BLOCK_R, CHUNK, BLOCK_C]: does entry l of the row beat entry j?
        beats = (b_al[:, :, None] > b_a[:, None, :]) | (
            (b_al[:, :, None] == b_a[:, None, :]) & (o_l[None, :, None] < o_j[None, None, :]))
        b_rank += tl.sum(beats.to(tl.int32), axis=1)
    # the row max is in every top-k set, so one exp serves all four softmaxes
    b_max = tl.where(m_r, tl.max(b_a, axis=1), 0.0)  # padded rows are all -inf: keep them finite
    b_e = tl.exp(b_a - b_max[:, None])
    b_s1 = tl.where(b_rank < k1, b_e, 0.0)
    b_s2 = tl.where(b_rank < k2, b_e, 0.0)
    b_s3 = tl.where(b_rank < k3, b_e, 0.0)
    b_s4 = tl.where(b_rank < k4, b_e, 0.0)
    # IEEE division as PyTorch's softmax; padded rows are all zero: divide by 1 there instead of 0
    b_s1 = tl.div_rn(b_s1, tl.where(m_r, tl.sum(b_s1, axis=1), 1.0)[:, None])
    b_s2 = tl.div_rn(b_s2, tl.where(m_r, tl.sum(b_s2, axis=1), 1.0)[:, None])
    b_s3 = tl.div_rn(b_s3, tl.where(m_r, tl.sum(b_s3, axis=1), 1.0)[:, None])
    b_s4 = tl.div_rn(b_s4, tl.where(m_r, tl.sum(b_s4, axis=1), 1.0)[:, None])
    return b_ghat, b_s1, b_s2, b_s3, b_s4


# ----------------------------------------------------------------------------------------------
# forward kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def _gram_program(HEADS, n_cb):
    """Who a Gram program is (grid: splits, n_cb * n_cb tiles, B * heads): its split, the number of
    splits, its (sample, head) index, sample (int64), head, and tile row and column."""
    i_t = tl.program_id(1)
    i_bh = tl.program_id(2)
    return (tl.program_id(0), tl.num_programs(0), i_bh, (i_bh // HEADS).to(tl.int64), i_bh % HEADS, i_t // n_cb,
            i_t % n_cb)


@triton.jit
def _store_gram_partial(p_part, C, o_i, o_j, m_i, m_j, i_ib, i_jb, b_gram, b_ssq_q, b_ssq_k):
    """One program's partial of a Gram tile: the (i, j) entries of Q K^T, and the rows' sums of
    squares, written by the tiles of the first column (Q) / first row (K).
    p_part: [C*C + 2C] fp32 of this (sample, head, split)."""
    tl.store(p_part + o_i[:, None] * C + o_j[None, :], b_gram, mask=m_i[:, None] & m_j[None, :])
    tl.store(p_part + C * C + o_i, b_ssq_q, mask=m_i & ((o_i * 0 + i_jb) == 0))
    tl.store(p_part + C * C + C + o_j, b_ssq_k, mask=m_j & ((o_j * 0 + i_ib) == 0))


@triton.jit
def _attn_qk_gram_kernel(
    t_ptr,  # t0: [B, 3d, H, W], any strides
    w_ptr,  # depthwise weight: [3d, 9] fp32
    b_ptr,  # depthwise bias: [3d] fp32
    part_ptr,  # out, partials: [B*heads, S, C*C + 2C] fp32 (Q K^T, then row sums of squares of Q, of K)
    C, D, HEADS, H, W,
    n_cb,  # channel blocks per side: the C x C Gram is n_cb x n_cb tiles
    stride_b, stride_c, stride_h, stride_w,
    HAS_BIAS: tl.constexpr,
    HALF_DOT: tl.constexpr,  # Q and K rounded to t0's fp16/bf16 (as the original stores them), tensor cores
    BLOCK_C: tl.constexpr,
    BLOCK_N: tl.constexpr,  # row pairs per token block (kernels/_utils.py): 2 * BLOCK_N tokens
    ITERS: tl.constexpr,  # token blocks per split (program)
):
    i_s, S, i_bh, i_b, i_h, i_ib, i_jb = _gram_program(HEADS, n_cb)
    NQ = tl.cdiv(H, 2) * W

    o_i = i_ib * BLOCK_C + tl.arange(0, BLOCK_C)
    o_j = i_jb * BLOCK_C + tl.arange(0, BLOCK_C)
    m_i = o_i < C
    m_j = o_j < C
    p_t = t_ptr + i_b * stride_b
    b_gram = tl.zeros([BLOCK_C, BLOCK_C], dtype=tl.float32)
    b_ssq_q = tl.zeros([BLOCK_C], dtype=tl.float32)
    b_ssq_k = tl.zeros([BLOCK_C], dtype=tl.float32)
    for it in range(ITERS):  # blocks past the image in the last split are fully masked (o_q >= NQ)
        o_q = (i_s * ITERS + it) * BLOCK_N + tl.arange(0, BLOCK_N)
        m_q = o_q < NQ
        o_h = (o_q // W) * 2
        o_w = o_q % W
        b_q0, b_q1 = _dwconv3x3_pairs(p_t, w_ptr, b_ptr, i_h * C + o_i, m_i, o_h, o_w, m_q, H, W,
                                      stride_c, stride_h, stride_w, HAS_BIAS, BLOCK_C, BLOCK_N)
        b_k0, b_k1 = _dwconv3x3_pairs(p_t, w_ptr, b_ptr, D + i_h * C + o_j, m_j, o_h, o_w, m_q, H, W,
                                      stride_c, stride_h, stride_w, HAS_BIAS, BLOCK_C, BLOCK_N)
        if HALF_DOT:
            # products of two fp16/bf16 values are exact in the fp32 accumulator: the Gram of the
            # rounded Q and K, and their sums of squares from the same values
            b_q0 = b_q0.to(t_ptr.dtype.element_ty)
            b_q1 = b_q1.to(t_ptr.dtype.element_ty)
            b_k0 = b_k0.to(t_ptr.dtype.element_ty)
            b_k1 = b_k1.to(t_ptr.dtype.element_ty)
            b_gram += tl.dot(b_q0, tl.trans(b_k0))
            b_gram += tl.dot(b_q1, tl.trans(b_k1))
            b_q0 = b_q0.to(tl.float32)
            b_q1 = b_q1.to(tl.float32)
            b_k0 = b_k0.to(tl.float32)
            b_k1 = b_k1.to(tl.float32)
        else:
            # exact fp32 whatever PyTorch's TF32 setting: these values choose the top-k entries
            b_gram += tl.dot(b_q0, tl.trans(b_k0), input_precision="ieee")
            b_gram += tl.dot(b_q1, tl.trans(b_k1), input_precision="ieee")
        b_ssq_q += tl.sum(b_q0 * b_q0 + b_q1 * b_q1, axis=1)
        b_ssq_k += tl.sum(b_k0 * b_k0 + b_k1 * b_k1, axis=1)

    _store_gram_partial(part_ptr + (i_bh.to(tl.int64) * S + i_s) * (C * C + 2 * C), C, o_i, o_j, m_i, m_j, i_ib,
                        i_jb, b_gram, b_ssq_q, b_ssq_k)


@triton.jit
def _gram_words_side(p_t, w_ptr, b_ptr, o_c, o_h, o_t, m_u, H, WW, stride_c, stride_h,
                     HAS_BIAS: tl.constexpr, DTYPE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr):
    """Q or K of the words Gram at both pixels of each word (bias added, 0 at masked words), rounded
    to DTYPE, and the rows' sums of squares of the rounded values: [BLOCK_C, BLOCK_N] x 2, [BLOCK_C].
    One side at a time, so that only one side's fp32 tiles are live; the bias is reloaded per step
    (an L1 hit) rather than held across the loop."""
    b_e, b_o = _dwconv3x3_words(p_t, w_ptr, o_c, o_h, o_t, m_u, H, WW, stride_c, stride_h, DTYPE, BLOCK_C, BLOCK_N)
    if HAS_BIAS:  # masked words are 0 before the bias, which must not reach them
        b_bias = tl.load(b_ptr + o_c)[:, None]
        b_e = tl.where(m_u[None, :], b_e + b_bias, 0.0)
        b_o = tl.where(m_u[None, :], b_o + b_bias, 0.0)
    b_e = b_e.to(DTYPE)
    b_o = b_o.to(DTYPE)
    b_ef = b_e.to(tl.float32)
    b_of = b_o.to(tl.float32)
    return b_e, b_o, tl.sum(b_ef * b_ef + b_of * b_of, axis=1)


@triton.jit
def _attn_qk_gram_words_kernel(
    t_ptr,  # t0: [B, 3d, H, W] fp16/bf16, whole words (kernels/_utils.py, Words)
    w_ptr,  # depthwise weight by tap rows as fp32 pairs: [3d, 3, 2] int64 (_weight_row_pairs)
    b_ptr,  # depthwise bias: [3d] fp32 (unused without HAS_BIAS)
    part_ptr,  # out, partials: [B*heads, S, C*C + 2C] fp32 (Q K^T, then row sums of squares of Q, of K)
    C, D, HEADS, H, WW,  # WW = W / 2 words per row
    n_cb,  # channel blocks per side: the C x C Gram is n_cb x n_cb tiles
    stride_b, stride_c, stride_h,  # t0's strides in words
    HAS_BIAS: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_N: tl.constexpr,  # words (2 tokens each) per token block
    ITERS: tl.constexpr,  # token blocks per split (program)
):
    """_attn_qk_gram_kernel (HALF_DOT) on words: the Gram sums over tokens, whose order is free, so
    the even and odd pixels of the words make two dots of BLOCK_N tokens each; Q and K are rebuilt at
    both pixels from 3 word loads per tap row (``_dwconv3x3_words``) and rounded to t0's dtype, as
    the original stores them. Padding channels repeat channel C - 1 of the head (masks per token
    only); their entries are not stored. Bytes: Q's and K's t0 channels once (taps from L1), C x C + 2C
    fp32 partials per program."""
    DTYPE: tl.constexpr = t_ptr.dtype.element_ty
    i_s, S, i_bh, i_b, i_h, i_ib, i_jb = _gram_program(HEADS, n_cb)
    NW = H * WW

    o_i = i_ib * BLOCK_C + tl.arange(0, BLOCK_C)
    o_j = i_jb * BLOCK_C + tl.arange(0, BLOCK_C)
    m_i = o_i < C
    m_j = o_j < C
    o_qc = i_h * C + tl.minimum(o_i, C - 1)
    o_kc = D + i_h * C + tl.minimum(o_j, C - 1)
    p_t = t_ptr.to(tl.pointer_type(tl.int32)) + i_b * stride_b
    b_gram = tl.zeros([BLOCK_C, BLOCK_C], dtype=tl.float32)
    b_ssq_q = tl.zeros([BLOCK_C], dtype=tl.float32)
    b_ssq_k = tl.zeros([BLOCK_C], dtype=tl.float32)
    for it in range(ITERS):  # blocks past the image in the last split are fully masked (o_u >= NW)
        # 1 word per thread along W: coalesced 4-byte loads
        o_u = tl.multiple_of((i_s * ITERS + it) * BLOCK_N + tl.arange(0, BLOCK_N), 1)
        m_u = o_u < NW
        o_h = o_u // WW
        o_t = o_u % WW
        b_qe, b_qo, b_sq = _gram_words_side(p_t, w_ptr, b_ptr, o_qc, o_h, o_t, m_u, H, WW, stride_c, stride_h,
                                            HAS_BIAS, DTYPE, BLOCK_C, BLOCK_N)
        b_ssq_q += b_sq
        b_ke, b_ko, b_sk = _gram_words_side(p_t, w_ptr, b_ptr, o_kc, o_h, o_t, m_u, H, WW, stride_c, stride_h,
                                            HAS_BIAS, DTYPE, BLOCK_C, BLOCK_N)
        b_ssq_k += b_sk
        b_gram += tl.dot(b_qe, tl.trans(b_ke))
        b_gram += tl.dot(b_qo, tl.trans(b_ko))

    _store_gram_partial(part_ptr + (i_bh.to(tl.int64) * S + i_s) * (C * C + 2 * C), C, o_i, o_j, m_i, m_j, i_ib,
                        i_jb, b_gram, b_ssq_q, b_ssq_k)


@triton.jit
def _attn_qk_gram_dense_kernel(
    qk_ptr,  # Q and K: [B, 2d, N] (the depthwise conv of t0's first 2d channels), t0's dtype
    part_ptr,  # out, partials: [B*heads, S, C*C + 2C] fp32 (Q K^T, then row sums of squares of Q, of K)
    C, D, HEADS, N,
    n_cb,  # channel blocks per side: the C x C Gram is n_cb x n_cb tiles
    stride_qb, stride_qc,  # Q and K's batch and channel strides (tokens: unit stride)
    HALF_DOT: tl.constexpr,  # fp16/bf16 Q and K (rounded as the original stores them) on tensor cores
    BLOCK_C: tl.constexpr,
    BLOCK_N: tl.constexpr,  # tokens per step (the dot's K)
    ITERS: tl.constexpr,  # token blocks per split (program)
):
    """The Gram of Q and K written once by the depthwise conv (``gram_path`` "dense": C > 64, where
    the stencil kernels' n_cb x n_cb tiles would rebuild every channel n_cb times per side). fp32:
    exact fp32 FMA dots whatever the TF32 setting (these values choose the top-k entries); fp16/bf16:
    the stored, rounded Q and K on tensor cores (products exact in the fp32 accumulator). Bytes: Q and
    K once (the n_cb tiles of a row or column re-read their channels, from L2 where they run
    together), C x C + 2C fp32 partials per program."""
    i_s, S, i_bh, i_b, i_h, i_ib, i_jb = _gram_program(HEADS, n_cb)

    o_i = i_ib * BLOCK_C + tl.arange(0, BLOCK_C)
    o_j = i_jb * BLOCK_C + tl.arange(0, BLOCK_C)
    m_i = o_i < C
    m_j = o_j < C
    # channel offsets int64 (Q and K span 2 d N elements per image), tokens int32
    p_q = qk_ptr + i_b * stride_qb + (i_h * C + o_i).to(tl.int64)[:, None] * stride_qc
    p_k = qk_ptr + i_b * stride_qb + (D + i_h * C + o_j).to(tl.int64)[:, None] * stride_qc
    b_gram = tl.zeros([BLOCK_C, BLOCK_C], dtype=tl.float32)
    b_ssq_q = tl.zeros([BLOCK_C], dtype=tl.float32)
    b_ssq_k = tl.zeros([BLOCK_C], dtype=tl.float32)
    for it in range(ITERS):  # blocks past the image in the last split are fully masked (o_n >= N)
        o_n = (i_s * ITERS + it) * BLOCK_N + tl.arange(0, BLOCK_N)
        m_n = o_n < N
        b_q = tl.load(p_q + o_n[None, :], mask=m_i[:, None] & m_n[None, :], other=0.0)
        b_k = tl.load(p_k + o_n[None, :], mask=m_j[:, None] & m_n[None, :], other=0.0)
        if HALF_DOT:
            b_gram += tl.dot(b_q, tl.trans(b_k))
        else:
            b_gram += tl.dot(b_q, tl.trans(b_k), input_precision="ieee")
        b_qf = b_q.to(tl.float32)
        b_kf = b_k.to(tl.float32)
        b_ssq_q += tl.sum(b_qf * b_qf, axis=1)
        b_ssq_k += tl.sum(b_kf * b_kf, axis=1)

    _store_gram_partial(part_ptr + (i_bh.to(tl.int64) * S + i_s) * (C * C + 2 * C), C, o_i, o_j, m_i, m_j, i_ib,
                        i_jb, b_gram, b_ssq_q, b_ssq_k)


@triton.jit
def _attn_topk_softmax_kernel(
    g_ptr,  # summed Gram and sums of squares: [B*heads, C*C + 2C] fp32
    temp_ptr,  # temperature: [heads] fp32
    a1_ptr, a2_ptr, a3_ptr, a4_ptr,  # attn1..attn4: [1] fp32 each
    ghat_ptr,  # out, normalised Gram Q_n K_n^T: [B*heads, C, C] fp32
    norm_ptr,  # out, clamped L2 norms max(|.|, eps): [B*heads, 2, C] fp32 (0: Q rows, 1: K rows)
    p_ptr,  # out, P = sum_i attn_i S_i: [B*heads, C, C] fp32
    C, HEADS, k1, k2, k3, k4, eps,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
    CHUNK: tl.constexpr,
):
    i_rb = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    o_r = i_rb * BLOCK_R + tl.arange(0, BLOCK_R)
    m_r = o_r < C
    o_j = tl.arange(0, BLOCK_C)
    m_j = o_j < C
    m_rj = m_r[:, None] & m_j[None, :]
    p_g = g_ptr + i_bh * (C * C + 2 * C)
    tau = tl.load(temp_ptr + i_bh % HEADS)
    b_ghat, b_s1, b_s2, b_s3, b_s4 = _topk_softmax_rows(p_g, o_r, m_r, tau, k1, k2, k3, k4, C, eps, True,
                                                        BLOCK_R, BLOCK_C, CHUNK)
    b_p = tl.load(a1_ptr) * b_s1 + tl.load(a2_ptr) * b_s2 + tl.load(a3_ptr) * b_s3 + tl.load(a4_ptr) * b_s4
    tl.store(p_ptr + i_bh * C * C + o_r[:, None] * C + o_j[None, :], b_p, mask=m_rj)
    tl.store(ghat_ptr + i_bh * C * C + o_r[:, None] * C + o_j[None, :], b_ghat, mask=m_rj)
    tl.store(norm_ptr + i_bh * 2 * C + o_r, tl.maximum(tl.sqrt_rn(tl.load(p_g + C * C + o_r, mask=m_r, other=1.0)),
                                                        eps), mask=m_r)
    b_nk = tl.maximum(tl.sqrt_rn(tl.load(p_g + C * C + C + o_j, mask=m_j, other=1.0)), eps)
    tl.store(norm_ptr + i_bh * 2 * C + C + o_j, b_nk, mask=m_j & ((o_j * 0 + i_rb) == 0))


@triton.jit
def _attn_mix_kernel(
    m_ptr,  # per-sample channel mix M: [B, D, D] fp32 (read through strides: M^T needs no copy)
    src_ptr,  # CONV: t0 [B, 3d, H, W] (V = dwconv of channels V_OFFSET..); else src [B, D, H, W]
    w_ptr,  # depthwise weight [3d, 9] fp32 (CONV only)
    dwb_ptr,  # depthwise bias [3d] fp32 (CONV and HAS_BIAS)
    ob_ptr,  # output bias [D] fp32 (CONV and HAS_BIAS)
    res_ptr,  # residual [B, D, H, W] (HAS_RESIDUAL), any strides
    out_ptr,  # out: [B, D, H, W], any strides (may be a channel slice of a larger tensor)
    D, H, W, v_offset,
    stride_mb, stride_mo, stride_mk,
    stride_sb, stride_sc, stride_sh, stride_sw,
    stride_rb, stride_rc, stride_rh, stride_rw,
    stride_ob, stride_oc, stride_oh, stride_ow,
    CONV: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    HALF_DOT: tl.constexpr,  # operands in src's fp16/bf16 on tensor cores (fp32 accumulate)
    DOT_PRECISION: tl.constexpr,  # fp32 operands: "tf32" or "ieee", PyTorch's setting for convolutions
    BLOCK_O: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
    K_ITERS: tl.constexpr,  # cdiv(D, BLOCK_K)
):
    i_n = tl.program_id(0)
    i_o = tl.program_id(1)
    i_b = tl.program_id(2).to(tl.int64)
    N = H * W
    o_o = i_o * BLOCK_O + tl.arange(0, BLOCK_O)
    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_o = o_o < D
    m_n = o_n < N
    o_h = o_n // W
    o_w = o_n % W
    p_src = src_ptr + i_b * stride_sb
    p_m = m_ptr + i_b * stride_mb

    b_acc = tl.zeros([BLOCK_O, BLOCK_N], dtype=tl.float32)
    for i_k in range(K_ITERS):
        o_k = i_k * BLOCK_K + tl.arange(0, BLOCK_K)
        m_k = o_k < D
        if CONV:
            b_v = _dwconv3x3_tile(p_src, w_ptr, dwb_ptr, v_offset + o_k, m_k, o_h, o_w, m_n, H, W,
                                  stride_sc, stride_sh, stride_sw, HAS_BIAS, BLOCK_K, BLOCK_N)
        else:
            b_v = tl.load(p_src + (o_k.to(tl.int64) * stride_sc)[:, None]
                          + (o_h * stride_sh + o_w * stride_sw)[None, :],
                          mask=m_k[:, None] & m_n[None, :], other=0.0).to(tl.float32)
        b_m = tl.load(p_m + o_o[:, None] * stride_mo + o_k[None, :] * stride_mk,
                      mask=m_o[:, None] & m_k[None, :], other=0.0)
        if HALF_DOT:
            b_acc += tl.dot(b_m.to(src_ptr.dtype.element_ty), b_v.to(src_ptr.dtype.element_ty))
        else:
            b_acc += tl.dot(b_m, b_v, input_precision=DOT_PRECISION)

    m_out = m_o[:, None] & m_n[None, :]
    o_oc = o_o.to(tl.int64)
    if CONV and HAS_BIAS:
        b_acc += tl.load(ob_ptr + o_o, mask=m_o, other=0.0)[:, None]
    if HAS_RESIDUAL:
        b_acc += tl.load(res_ptr + i_b * stride_rb + (o_oc * stride_rc)[:, None]
                         + (o_h * stride_rh + o_w * stride_rw)[None, :], mask=m_out, other=0.0).to(tl.float32)
    tl.store(out_ptr + i_b * stride_ob + (o_oc * stride_oc)[:, None] + (o_h * stride_oh + o_w * stride_ow)[None, :],
             b_acc.to(out_ptr.dtype.element_ty), mask=m_out)


# ----------------------------------------------------------------------------------------------
# backward kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def _attn_dout_v_kernel(
    do_ptr,  # dOut: [B, D, H, W], any strides
    t_ptr,  # t0: [B, 3d, H, W], any strides (V recomputed from channels 2d..3d)
    w_ptr,  # depthwise weight [3d, 9] fp32
    b_ptr,  # depthwise bias [3d] fp32
    g_ptr,  # out, partial G = dOut V^T: [B, S, D, D] fp32
    rs_ptr,  # out, partial row sums of dOut: [B, S, D] fp32
    D, H, W,
    n_db,  # channel blocks per side of the D x D tile grid
    stride_db, stride_dc, stride_dh, stride_dw,
    stride_tb, stride_tc, stride_th, stride_tw,
    HAS_BIAS: tl.constexpr,
    HALF_DOT: tl.constexpr,  # operands in dOut's fp16/bf16 on tensor cores (fp32 accumulate)
    DOT_PRECISION: tl.constexpr,  # fp32 operands: PyTorch's setting for convolutions (G folds project_out)
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    ITERS: tl.constexpr,  # token blocks per split (program)
):
    i_s = tl.program_id(0)
    i_t = tl.program_id(1)
    i_b = tl.program_id(2).to(tl.int64)
    S = tl.num_programs(0)
    i_ob = i_t // n_db
    i_kb = i_t % n_db
    N = H * W
    o_o = i_ob * BLOCK_D + tl.arange(0, BLOCK_D)
    o_k = i_kb * BLOCK_D + tl.arange(0, BLOCK_D)
    m_o = o_o < D
    m_k = o_k < D
    p_t = t_ptr + i_b * stride_tb
    p_do = do_ptr + i_b * stride_db + (o_o.to(tl.int64) * stride_dc)[:, None]
    b_g = tl.zeros([BLOCK_D, BLOCK_D], dtype=tl.float32)
    b_rs = tl.zeros([BLOCK_D], dtype=tl.float32)
    for it in range(ITERS):  # blocks past the image in the last split are fully masked (o_n >= N)
        # 1 pixel per thread along W: coalesced tap loads (see "Stencil layout" in _utils.py)
        o_n = tl.multiple_of((i_s * ITERS + it) * BLOCK_N + tl.arange(0, BLOCK_N), 1)
        m_n = o_n < N
        o_h = o_n // W
        o_w = o_n % W
        b_do = tl.load(p_do + (o_h * stride_dh + o_w * stride_dw)[None, :],
                       mask=m_o[:, None] & m_n[None, :], other=0.0)
        b_v = _dwconv3x3_tile(p_t, w_ptr, b_ptr, 2 * D + o_k, m_k, o_h, o_w, m_n, H, W,
                              stride_tc, stride_th, stride_tw, HAS_BIAS, BLOCK_D, BLOCK_N)
        if HALF_DOT:
            b_g += tl.dot(b_do, tl.trans(b_v.to(do_ptr.dtype.element_ty)))
        else:
            b_g += tl.dot(b_do.to(tl.float32), tl.trans(b_v), input_precision=DOT_PRECISION)
        b_rs += tl.sum(b_do.to(tl.float32), axis=1)
    i_part = i_b * S + i_s
    tl.store(g_ptr + i_part * D * D + o_o[:, None] * D + o_k[None, :], b_g, mask=m_o[:, None] & m_k[None, :])
    tl.store(rs_ptr + i_part * D + o_o, b_rs, mask=m_o & ((o_o * 0 + i_kb) == 0))


@triton.jit
def _attn_dout_v_words_kernel(
    do_ptr,  # dOut: [B, D, H, W] fp16/bf16, whole words (kernels/_utils.py, Words)
    t_ptr,  # t0: [B, 3d, H, W], dOut's dtype, whole words (V recomputed from channels 2d..3d)
    w_ptr,  # depthwise weight by tap rows as fp32 pairs: [3d, 3, 2] int64 (_weight_row_pairs)
    g_ptr,  # out, partial G = dOut V^T without V's bias: [B, S, D, D] fp32
    rs_ptr,  # out, partial row sums of dOut: [B, S, D] fp32
    D, H, WW,  # WW = W / 2 words per row
    n_db,  # channel blocks per side of the D x D tile grid
    stride_db, stride_dc, stride_dh,  # dOut's strides in words (the W stride is 1 element)
    stride_tb, stride_tc, stride_th,  # t0's strides in words
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,  # words (2 tokens each) per token block
    ITERS: tl.constexpr,  # token blocks per split (program)
):
    """_attn_dout_v_kernel on words: G sums over tokens, whose order is free, so the even and odd
    pixels of the words make two dots of BLOCK_N tokens each (operands in dOut's dtype on tensor
    cores, fp32 accumulation, as the pixel kernel's HALF_DOT). V's bias b is left out: the launcher
    adds (dOut 1) b^T from the row sums (fewer registers: sm_80 spilled at the 128 cap with it).
    Triton 3.6 cannot compile the one-dot form (tl.join + reshape of the halves into 2 * BLOCK_N
    tokens: an internal error in TritonGPUOptimizeDotOperands). Bytes: dOut and V's t0 channels once
    (taps from L1), D x D fp32 partials per program."""
    DTYPE: tl.constexpr = do_ptr.dtype.element_ty
    i_s = tl.program_id(0)
    i_t = tl.program_id(1)
    i_b = tl.program_id(2).to(tl.int64)
    S = tl.num_programs(0)
    i_ob = i_t // n_db
    i_kb = i_t % n_db
    NW = H * WW
    o_o = i_ob * BLOCK_D + tl.arange(0, BLOCK_D)
    o_k = i_kb * BLOCK_D + tl.arange(0, BLOCK_D)
    m_o = o_o < D
    m_k = o_k < D
    p_t = t_ptr.to(tl.pointer_type(tl.int32)) + i_b * stride_tb
    o_kc = tl.minimum(o_k, D - 1)
    p_do = (do_ptr.to(tl.pointer_type(tl.int32)) + i_b * stride_db
            + (tl.minimum(o_o, D - 1).to(tl.int64) * stride_dc)[:, None])
    b_g = tl.zeros([BLOCK_D, BLOCK_D], dtype=tl.float32)
    b_rs = tl.zeros([BLOCK_D], dtype=tl.float32)
    for it in range(ITERS):  # blocks past the image in the last split are fully masked (o_u >= NW)
        # 1 word per thread along W: coalesced 4-byte loads
        o_u = tl.multiple_of((i_s * ITERS + it) * BLOCK_N + tl.arange(0, BLOCK_N), 1)
        m_u = o_u < NW
        o_h = o_u // WW
        o_t = o_u % WW
        # clamped channels (rows past D repeat channel D - 1; their G entries are not stored): the
        # masks are per token only
        b_de, b_dodd = _split_words(tl.load(p_do + (o_h * stride_dh + o_t)[None, :], mask=m_u[None, :], other=0),
                                    DTYPE)
        b_ve, b_vo = _dwconv3x3_words(p_t, w_ptr, 2 * D + o_kc, o_h, o_t, m_u, H, WW,
                                      stride_tc, stride_th, DTYPE, BLOCK_D, BLOCK_N)
        b_g += tl.dot(b_de.to(DTYPE), tl.trans(b_ve.to(DTYPE)))
        b_g += tl.dot(b_dodd.to(DTYPE), tl.trans(b_vo.to(DTYPE)))
        b_rs += tl.sum(b_de + b_dodd, axis=1)
    i_part = i_b * S + i_s
    tl.store(g_ptr + i_part * D * D + o_o[:, None] * D + o_k[None, :], b_g, mask=m_o[:, None] & m_k[None, :])
    tl.store(rs_ptr + i_part * D + o_o, b_rs, mask=m_o & ((o_o * 0 + i_kb) == 0))


@triton.jit
def _attn_softmax_bwd_kernel(
    ghat_ptr,  # normalised Gram: [B*heads, C, C] fp32 (saved by the forward)
    norm_ptr,  # clamped norms: [B*heads, 2, C] fp32
    dp_ptr,  # dP: [B*heads, C, C] fp32
    temp_ptr,  # temperature: [heads] fp32
    a1_ptr, a2_ptr, a3_ptr, a4_ptr,  # attn1..attn4: [1] fp32 each
    dgram_ptr,  # out, d(Q K^T) = dGhat / (|q| |k|^T), or with DGHAT dGhat itself: [B*heads, C, C] fp32
    colterm_ptr,  # out, dGhat * Ghat (summed over rows later, for the K norms): [B*heads, C, C] fp32
    alpha_ptr,  # out, d|q_r| / |q_r| (0 where the norm was clamped): [B*heads, C] fp32
    dw_ptr,  # out, per-row partial d attn_i: [B*heads, C, 4] fp32
    dtau_ptr,  # out, per-row partial d temperature: [B*heads, C] fp32
    C, HEADS, k1, k2, k3, k4, eps,
    DGHAT: tl.constexpr,  # store dGhat (the fp16/bf16 dQ/dK normalise their operands instead)
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
    CHUNK: tl.constexpr,
):
    i_rb = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    o_r = i_rb * BLOCK_R + tl.arange(0, BLOCK_R)
    m_r = o_r < C
    o_j = tl.arange(0, BLOCK_C)
    m_j = o_j < C
    m_rj = m_r[:, None] & m_j[None, :]
    o_rj = i_bh * C * C + o_r[:, None] * C + o_j[None, :]

    # the forward's rows of A, bit for bit: same Ghat, same code -> same masks
    tau = tl.load(temp_ptr + i_bh % HEADS)
    b_ghat, b_s1, b_s2, b_s3, b_s4 = _topk_softmax_rows(ghat_ptr + i_bh * C * C, o_r, m_r, tau, k1, k2, k3, k4, C,
                                                        eps, False, BLOCK_R, BLOCK_C, CHUNK)
    b_dp = tl.load(dp_ptr + o_rj, mask=m_rj, other=0.0)
    # P = sum_i w_i S_i:  d w_i = <dP, S_i>;  softmax backward: dA = sum_i w_i S_i (dP - <dP, S_i>)
    b_d1 = tl.sum(b_dp * b_s1, axis=1)
    b_d2 = tl.sum(b_dp * b_s2, axis=1)
    b_d3 = tl.sum(b_dp * b_s3, axis=1)
    b_d4 = tl.sum(b_dp * b_s4, axis=1)
    b_da = (tl.load(a1_ptr) * b_s1 * (b_dp - b_d1[:, None]) + tl.load(a2_ptr) * b_s2 * (b_dp - b_d2[:, None])
            + tl.load(a3_ptr) * b_s3 * (b_dp - b_d3[:, None]) + tl.load(a4_ptr) * b_s4 * (b_dp - b_d4[:, None]))
    b_da = tl.where(m_rj, b_da, 0.0)
    tl.store(dtau_ptr + i_bh * C + o_r, tl.sum(b_da * b_ghat, axis=1), mask=m_r)
    o_w4 = tl.arange(0, 4)
    b_dw = tl.where(o_w4[None, :] == 0, b_d1[:, None], tl.where(o_w4[None, :] == 1, b_d2[:, None],
                    tl.where(o_w4[None, :] == 2, b_d3[:, None], b_d4[:, None])))
    tl.store(dw_ptr + (i_bh * C + o_r)[:, None] * 4 + o_w4[None, :], b_dw, mask=m_r[:, None])

    # Ghat = G / (nq nk):  dG = dGhat / (nq nk);  d nq_r = -<dGhat_r, Ghat_r> / nq_r
    b_dghat = b_da * tau
    b_nq = tl.load(norm_ptr + i_bh * 2 * C + o_r, mask=m_r, other=1.0)
    b_nk = tl.load(norm_ptr + i_bh * 2 * C + C + o_j, mask=m_j, other=1.0)
    b_colterm = b_dghat * b_ghat
    if DGHAT:
        tl.store(dgram_ptr + o_rj, b_dghat, mask=m_rj)
    else:
        tl.store(dgram_ptr + o_rj, tl.div_rn(b_dghat, b_nq[:, None] * b_nk[None, :]), mask=m_rj)
    tl.store(colterm_ptr + o_rj, b_colterm, mask=m_rj)
    # |q| = sqrt(sum q^2) matters only where it was not clamped to eps; d|q|/dq = q / |q|
    b_dnq = tl.div_rn(-tl.sum(b_colterm, axis=1), b_nq)
    tl.store(alpha_ptr + i_bh * C + o_r, tl.where(b_nq > eps, tl.div_rn(b_dnq, b_nq), 0.0), mask=m_r)


@triton.jit
def _attn_dqk_kernel(
    qk_ptr,  # Q and K: [B, 2d, N] (the depthwise conv of t0's first 2d channels), t0's dtype
    dg_ptr,  # HALF_DOT: dGhat, the gradient of the normalised Gram; else d(Q K^T): [B*heads, C, C] fp32
    norm_ptr,  # clamped norms |q|, |k|: [B*heads, 2, C] fp32
    ab_ptr,  # alpha, beta: [B*heads, 2, C] fp32 (dQ += alpha Q, dK += beta K)
    dt_ptr,  # out, dT: [B, 3d, N], t0's dtype (this kernel writes the Q and K channels)
    C, D, HEADS, N, n_ib,  # n_ib = cdiv(C, BLOCK_C) row blocks
    stride_qb, stride_qc,  # Q and K's batch and channel strides (tokens: unit stride)
    stride_tb, stride_tc,  # dT's
    HALF_DOT: tl.constexpr,
    BLOCK_C: tl.constexpr,  # rows of dQ or dK per program
    BLOCK_J: tl.constexpr,  # contraction chunk (16: fp32 FMA dots hold their operands' whole K extent)
    BLOCK_N: tl.constexpr,  # tokens per program
    J_ITERS: tl.constexpr,  # cdiv(C, BLOCK_J)
):
    """dQ = dG K + alpha Q (even programs) or dK = dG^T Q + beta K (odd ones) for BLOCK_C rows and
    BLOCK_N tokens of one (sample, head): a batched matmul over dense Q and K, no stencil. One product
    per program: an FMA dot's operands take (rows + columns per thread) x BLOCK_J registers, two
    products in one program did not fit 128. fp32: dG as stored, exact fp32 FMA dots ("ieee": they
    stand for the backward of the original's torch.matmul, which is not TF32). HALF_DOT (fp16/bf16):
    what the original's backward of q_n k_n^T computes under autocast, tensor-core dots of half
    operands with fp32 accumulation, dQ_i = (1 / |q_i|) sum_j dGhat_ij (K_j / |k_j|): the operands
    are dGhat and the normalised K (Q for dK), whose range half precision holds (dG itself, dGhat /
    (|q| |k|), falls below fp16's normal range with large norms and a small upstream gradient:
    test_half_precision_dq_dk_hold_large_norms). Bytes per program: read the C source channels and
    the own BLOCK_C rows, write the rows: (C + 2 BLOCK_C) x BLOCK_N elements (the source channels come
    from HBM once per token block: its row blocks and both products are neighbouring programs)."""
    i_pid = tl.program_id(0)
    i_bh = tl.program_id(1)
    # both products and the row blocks of one token block are consecutive programs: they share its Q
    # and K in L2 (read from HBM once)
    i_s = i_pid % 2  # 0: dQ (contracts K), 1: dK (contracts Q)
    i_n = i_pid // 2 // n_ib
    i_ib = i_pid // 2 % n_ib
    i_b = (i_bh // HEADS).to(tl.int64)
    i_h = i_bh % HEADS
    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_n = o_n < N
    o_i = i_ib * BLOCK_C + tl.arange(0, BLOCK_C)
    m_i = o_i < C
    p_qk = qk_ptr + i_b * stride_qb
    # dG[i, j] for dQ, dG[j, i] for dK
    p_dg = dg_ptr + i_bh.to(tl.int64) * C * C
    s_gi = C - i_s * (C - 1)
    s_gj = 1 + i_s * (C - 1)
    p_norm = norm_ptr + i_bh * 2 * C
    o_src = (1 - i_s) * D + i_h * C  # first source channel: K for dQ, Q for dK

    b_acc = tl.zeros([BLOCK_C, BLOCK_N], dtype=tl.float32)
    for i_j in range(J_ITERS):
        o_j = i_j * BLOCK_J + tl.arange(0, BLOCK_J)
        m_j = o_j < C
        # channel offsets int64 (Q and K span 2 d N elements per image), tokens int32
        b_src = tl.load(p_qk + ((o_src + o_j).to(tl.int64)[:, None] * stride_qc + o_n[None, :]),
                        mask=m_j[:, None] & m_n[None, :], other=0.0)
        b_dg = tl.load(p_dg + (o_i[:, None] * s_gi + o_j[None, :] * s_gj), mask=m_i[:, None] & m_j[None, :],
                       other=0.0)
        if HALF_DOT:
            # the source rows over their norms, rounded to the input dtype: the original's k_n (q_n)
            b_r = tl.div_rn(1.0, tl.load(p_norm + (1 - i_s) * C + o_j, mask=m_j, other=1.0))[:, None]
            b_acc += tl.dot(b_dg.to(b_src.dtype), (b_src.to(tl.float32) * b_r).to(b_src.dtype))
        else:
            b_acc += tl.dot(b_dg, b_src, input_precision="ieee")

    if HALF_DOT:  # the rows' own 1 / |q_i| (1 / |k_i|) of the normalised products
        b_acc *= tl.div_rn(1.0, tl.load(p_norm + i_s * C + o_i, mask=m_i, other=1.0))[:, None]
    m_in = m_i[:, None] & m_n[None, :]
    o_own = (i_s * D + i_h * C + o_i).to(tl.int64)[:, None]
    b_own = tl.load(p_qk + (o_own * stride_qc + o_n[None, :]), mask=m_in, other=0.0).to(tl.float32)
    b_acc += tl.load(ab_ptr + i_bh * 2 * C + i_s * C + o_i, mask=m_i, other=0.0)[:, None] * b_own
    tl.store(dt_ptr + i_b * stride_tb + (o_own * stride_tc + o_n[None, :]), b_acc.to(dt_ptr.dtype.element_ty),
             mask=m_in)


# ----------------------------------------------------------------------------------------------
# launch configurations
# ----------------------------------------------------------------------------------------------


# fp32 dots run as FMA loops where every thread holds its rows' whole K extent: K = 16 throughout
DOT_K = 16
# Triton's default software pipelining depth, passed explicitly at every launch and registered in
# _compile_configs so that the compile check compiles exactly what runs
NUM_STAGES = 3
# tokens per program of the dQ/dK kernel, and the shortest the launcher takes at the small latents
DQK_BLOCK_N = 128
DQK_MIN_BLOCK_N = 32
# register cap of the dOut V^T kernel (see _dout_v_config)
DOUT_V_MAXNREG = 128
# words per token block of _attn_dout_v_words_kernel (64 tokens per step)
DOUT_V_WORDS_BLOCK_N = 32
GRAM_WORDS_BLOCK_N = 32
# channels per side of one Gram tile of the stencil kernels; above it the Gram takes Q and K written
# once (gram_path "dense")
GRAM_TILE = 64
# token blocks per program of the split-N kernels (1 and 4): a constexpr trip count from this set; 1 to
# 8 give the small images a wave of programs (enc2/enc3/latent Gram, enc3/latent dOut V^T: >= 119
# programs; the words Gram's 64-token blocks need ranges of 1 at the latent)
SPLIT_ITERS = (1, 2, 4, 8, 16, 64)
# largest image plane one kernel addresses with int32 offsets (channel offsets are int64)
_PLANE_LIMIT = 2**31 - 2**16


def _gram_config(c: int, words: bool = False, has_bias: bool = False) -> tuple[int, int, int, int]:
    """(BLOCK_C, BLOCK_N, num_warps, maxnreg) of the Gram kernel: the whole C x C Gram in one tile up to
    C = 64, else 64 x 64 tiles, 16 row pairs (the dot's K) per step. 64 x 64 tiles run 16 warps capped
    at 128 registers (sm_90: 16 warps per SM, no spills; at 8 warps they took 208-214 registers, 8 warps
    per SM; 8 tokens per step would fit but Triton 3.6, the GPU machine's, refuses tl.dot with K < 16).
    ``words``: 32 words (two dots of 32 tokens) per step, one word per thread, 4/8/16 warps for
    16/32/64-channel tiles at <= 128 registers; with a depthwise bias 16 words (sm_80 spilled 8 bytes
    at the cap with 32 in bf16)."""
    block_c = min(max(16, next_pow2(c)), 64)
    if words:
        return block_c, GRAM_WORDS_BLOCK_N // (2 if has_bias else 1), {16: 4, 32: 8, 64: 16}[block_c], 128
    return block_c, DOT_K, (16 if block_c == 64 else 4), (128 if block_c == 64 else 255)


def _gram_dense_config(half: bool) -> tuple[int, int, int]:
    """(BLOCK_C, BLOCK_N, num_warps) of the dense Gram (C > 64): fp32 FMA dots in 32 x 32 tiles, 16 tokens
    per step (no padded rows at C = 96: the kernel is FMA-bound in fp32); fp16/bf16 64 x 64 tiles on
    tensor cores, 32 tokens per step (padding is cheap there, and fewer tiles re-read Q and K less;
    64 tokens gave 256 programs at decoder level 1, under one wave)."""
    return (64, 32, 8) if half else (32, DOT_K, 4)


def _dqk_config(c: int, half: bool) -> tuple[int, int, int, int]:
    """(BLOCK_C, BLOCK_J, BLOCK_N, num_warps) of the dQ/dK kernel: 128 tokens (the launcher shortens
    them at the small latents), 16-channel contraction steps, 8 warps; rows: 64 on tensor cores (all C
    rows of a head in one block up to C = 64: Q and K read once; padded rows cost little there), 32
    in fp32, whose FMA dots hold (rows + columns per thread) x 16 operand registers: sm_90 as launched
    at 256x256, 96 registers at 32 x 128 against 255 and a 16-byte spill at 64 x 128 (188 at
    64 x 64). At C = 48 the fp32 dots pad 16 of 64 rows: 12 us of FMA under the kernel's 15 us of
    HBM at level 1."""
    return min(max(16, next_pow2(c)), 64 if half else 32), DOT_K, DQK_BLOCK_N, 8


def _row_config(c: int) -> tuple[int, int, int, int]:
    """(BLOCK_R, BLOCK_C, CHUNK, num_warps) of the row kernels: few rows per program (one row from
    C = 64 up: C programs per (sample, head), not a handful of serial ones), each ranked against
    CHUNK entries at a time (a [BLOCK_R, CHUNK, BLOCK_C] comparison of at most 2K elements: 71
    registers at C = 96 on sm_90, where 4K elements took 159)."""
    block = max(16, next_pow2(c))
    rows = max(1, min(4, 64 // block))
    chunk = max(1, min(block, 2048 // (rows * block)))
    return rows, block, chunk, (4 if block <= 256 else 8)


def _mix_config(d: int) -> tuple[int, int, int, int]:
    """(BLOCK_O, BLOCK_K, BLOCK_N, num_warps) of the channel-mix kernel: 32 tokens from 64 output
    channels up (sm_90, fp32/TF32: 88-112 registers at 8 warps, 16 warps per SM; 64 tokens at 64
    channels took 152 registers, 8 warps per SM)."""
    block_o = min(max(16, next_pow2(d)), 128)
    return block_o, DOT_K, (32 if block_o >= 64 else 64), (8 if block_o >= 64 else 4)


def _dout_v_config(d: int, words: bool = False) -> tuple[int, int, int]:
    """(BLOCK_D, BLOCK_N, num_warps) of the dOut V^T kernel (D x D in 64 x 64 tiles at most), 32 tokens
    (the dot's K) per step: 1 pixel per thread across a warp's 32 lanes, coalesced tap loads (per-warp
    L1 factor 1.85 in fp32, was 4.97 with 16 tokens); ``words``: 32 words (64 tokens) per step, one
    word per thread. 64 x 32 tiles take 16 warps at <= 128 registers (16 warps per SM; at 8 warps
    ptxas's unrolled tap loop takes 252 registers, 16 bytes of spill at 128), 32-channel tiles 8
    (4 spilled 8-88 bytes at the cap, sm_80 and sm_90), 16-channel tiles 4."""
    block_d = min(max(16, next_pow2(d)), 64)
    return block_d, (DOUT_V_WORDS_BLOCK_N if words else 32), {16: 4, 32: 8, 64: 16}[block_d]


def _image_words_ok(t: torch.Tensor) -> bool:
    """Whether ``t`` is fp16/bf16 made of whole aligned 4-byte words (``dwconv._whole_words``) and one of
    its images spans fewer than 2**31 words (the word kernels' int32 offsets within an image)."""
    span = sum((n - 1) * st for n, st in zip(t.shape[1:], t.stride()[1:])) // 2 + 1
    return _whole_words(t) and span < 2**31


def _weight_row_pairs(dw_w: torch.Tensor) -> torch.Tensor:
    """The depthwise weight [3d, 9] fp32 as [3d, 3, 2] int64: per tap row the pairs (w0, w1) and
    (w2, 0), two 8-byte loads for the row's three taps (``_dwconv3x3_words``)."""
    return F.pad(dw_w.reshape(-1, 3, 3), (0, 1)).contiguous().view(torch.int64)


def gram_path(t0: torch.Tensor, c: int) -> str:
    """Which Gram kernel runs for ``c`` channels per head: "dense" (Q and K written once by the
    depthwise conv, then ``_attn_qk_gram_dense_kernel``) above one 64-channel tile, where the stencil
    kernels' 2 x 2 tiles would rebuild every channel twice per side; else "words"
    (``_attn_qk_gram_words_kernel``) when t0 is fp16/bf16 made of whole words (``_image_words_ok``),
    else "pixels" (``_attn_qk_gram_kernel``, row pairs)."""
    if c > GRAM_TILE:
        return "dense"
    return "words" if _image_words_ok(t0) else "pixels"


def dout_v_path(dout: torch.Tensor, t0: torch.Tensor) -> str:
    """Which dOut V^T kernel runs: "words" (``_attn_dout_v_words_kernel``) when dOut and t0 are
    fp16/bf16 made of whole aligned 4-byte words (``dwconv._whole_words``) and one image of t0 spans
    fewer than 2**31 words (its int32 offsets), else "pixels" (``_attn_dout_v_kernel``)."""
    return "words" if _whole_words(dout) and _image_words_ok(t0) else "pixels"


# Triton's CPU interpreter pays per executed operation, not per element, and runs every one of a
# program's ITERS token blocks, masked or not: there the split-N kernels take 64-token blocks and two
# splits sized to the image (still a cross-split reduction at the tests' sizes)
INTERPRETER_SPLIT_BLOCK_N = 64


def _split_tokens(n_tokens: int, block_n: int, programs_per_split: int,
                  device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_N, splits, ITERS) of a split-N kernel (Gram, dOut V^T) over ``n_tokens`` tokens (or
    words: the units of ``block_n``)."""
    if interpreter_tiles():
        block_n = max(block_n, INTERPRETER_SPLIT_BLOCK_N)
        n_blocks = cdiv(n_tokens, block_n)
        iters = cdiv(n_blocks, 2)
        return block_n, cdiv(n_blocks, iters), iters
    return (block_n, *_splits(cdiv(n_tokens, block_n), programs_per_split, device))


def _splits(n_blocks: int, programs_per_split: int, device: torch.device) -> tuple[int, int]:
    """Split the token blocks into contiguous ranges of ``iters`` blocks (from SPLIT_ITERS): the
    longest ranges of 16 or more blocks that give two programs per SM, else the longest ranges that
    still give 90% of a wave (the small images: 8 to 1 blocks), else the shortest; returns (splits,
    iters). Of the lengths that give the same number of splits the shortest is taken: a program runs
    all its ``iters`` blocks, masked or not (4 blocks in one split of 64 ran 60 empty ones: the
    training latent's dOut V^T). Depends only on shapes and the device: deterministic. The partials
    cost at most C*C+2C floats per range of 2 x 64 x 16 tokens (<= 6% of the tokens' bytes at 8K)."""
    sms = multiprocessor_count(device)
    splits = cdiv(n_blocks, SPLIT_ITERS[0])
    for target, choices in ((2 * sms, [it for it in SPLIT_ITERS if it >= 16]), (math.ceil(0.9 * sms), SPLIT_ITERS)):
        fitting = [it for it in choices if cdiv(n_blocks, it) * programs_per_split >= target]
        if fitting:
            splits = cdiv(n_blocks, max(fitting))
            break
    return splits, min(it for it in SPLIT_ITERS if cdiv(n_blocks, it) == splits)


def _qk_dwconv(t0: torch.Tensor, dw_weight: torch.Tensor, dw_bias: torch.Tensor | None) -> torch.Tensor:
    """Q and K, the depthwise conv of t0's first 2d channels (bias included), written once: [B, 2d, H, W]
    in t0's dtype (rounded as the original stores them)."""
    d2 = 2 * (t0.shape[1] // 3)
    return depthwise_conv_fwd(t0[:, :d2], [dw_weight[:d2]], [dw_bias[:d2] if dw_bias is not None else None],
                              relu=False)[0]


def _half_dot(dtype: torch.dtype) -> bool:
    return dtype in (torch.float16, torch.bfloat16)


def _plane_ok(t: torch.Tensor) -> torch.Tensor:
    """``t`` if one channel plane of it spans < 2**31 elements (int32 offsets in the kernels), else a
    contiguous copy (whose planes are H*W elements)."""
    span = (t.shape[2] - 1) * abs(t.stride(2)) + (t.shape[3] - 1) * abs(t.stride(3))
    return t if span < _PLANE_LIMIT else t.contiguous()


# ----------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------


def attention_fwd(x, qkv_weight, qkv_bias, dw_weight, dw_bias, temperature, attn_weights, proj_weight, proj_bias,
                  num_heads: int, residual: torch.Tensor | None = None):
    """Forward of the top-k sparse attention (+ ``residual`` if given).

    x: [B, d, H, W] fp32/fp16/bf16, any strides; weights as in the original module (any float dtype;
    the 1x1 convs run in x's dtype, everything else in fp32). Returns ``(out, t0, ghat, norms, p)``:
    out [B, d, H, W] (dtype of x, or promoted with the residual's), and what the backward needs:
    t0 [B, 3d, H, W], ghat [B*heads, C, C], norms [B*heads, 2, C], p [B*heads, C, C] (fp32).
    """
    check_attention_inputs(x, qkv_weight, qkv_bias, dw_weight, dw_bias, temperature, attn_weights, proj_weight,
                           proj_bias, num_heads, residual)
    B, D, H, W = x.shape
    N = H * W
    if N >= _PLANE_LIMIT:  # at d = 48 in fp32 x alone would be ~400 GB
        raise ValueError(f"x: {H}x{W} = {N} pixels per image; at most {_PLANE_LIMIT} are supported")
    heads = num_heads
    C = D // heads
    dev = x.device
    with device_guard(x):
        # 1x1 projection: cuDNN/cuBLAS exactly as the original module computes it. A dense input keeps t0
        # dense (NCHW), the layout the op's fake implementation promises to torch.compile.
        x_dense = x if x.is_contiguous() else x.contiguous()
        t0 = F.conv2d(x_dense, qkv_weight.to(x.dtype), qkv_bias.to(x.dtype) if qkv_bias is not None else None)
        t0 = _plane_ok(t0)
        dw_w = dw_weight.reshape(3 * D, 9).float()
        dw_b = dw_bias.float() if dw_bias is not None else dw_w
        has_bias = dw_bias is not None

        path = gram_path(t0, C)
        if path == "dense":
            qk = _qk_dwconv(t0, dw_weight, dw_bias)
            block_c, block_n, nw = _gram_dense_config(_half_dot(t0.dtype))
            n_units, maxnreg = N, LAUNCH_OPTIONS["maxnreg"]
        else:
            block_c, block_n, nw, maxnreg = _gram_config(C, path == "words", has_bias)
            # token blocks count words (2 tokens each) or row pairs (kernels/_utils.py): cdiv(H, 2) * W of them
            n_units = H * (W // 2) if path == "words" else cdiv(H, 2) * W
        n_cb = cdiv(C, block_c)
        block_n, splits, iters = _split_tokens(n_units, block_n, B * heads * n_cb * n_cb, dev)
        part = torch.empty((B * heads, splits, C * C + 2 * C), device=dev, dtype=torch.float32)
        grid = (splits, n_cb * n_cb, B * heads)
        launch = dict(BLOCK_C=block_c, BLOCK_N=block_n, ITERS=iters, num_warps=nw, num_stages=NUM_STAGES,
                      **{**LAUNCH_OPTIONS, "maxnreg": maxnreg})
        if path == "dense":
            launch_kernel(_attn_qk_gram_dense_kernel, grid, qk, part, C, D, heads, N, n_cb, qk.stride(0),
                          qk.stride(1), HALF_DOT=_half_dot(t0.dtype), **launch)
            del qk
        elif path == "words":
            launch_kernel(_attn_qk_gram_words_kernel, grid, t0, _weight_row_pairs(dw_w), dw_b, part, C, D, heads, H,
                          W // 2, n_cb, *(st // 2 for st in t0.stride()[:3]), HAS_BIAS=has_bias, **launch)
        else:
            launch_kernel(_attn_qk_gram_kernel, grid, t0, dw_w, dw_b, part, C, D, heads, H, W, n_cb, *t0.stride(),
                          HAS_BIAS=has_bias, HALF_DOT=_half_dot(t0.dtype), **launch)
        # the split partials summed by one parallel, deterministic reduction (no atomics)
        gsum = part.sum(1)

        ghat = torch.empty((B * heads, C, C), device=dev, dtype=torch.float32)
        norms = torch.empty((B * heads, 2, C), device=dev, dtype=torch.float32)
        p = torch.empty((B * heads, C, C), device=dev, dtype=torch.float32)
        rows, row_block, chunk, row_warps = _row_config(C)
        a1, a2, a3, a4 = (a.float() for a in attn_weights)
        launch_kernel(_attn_topk_softmax_kernel, (cdiv(C, rows), B * heads),
            gsum, temperature.reshape(heads).float(), a1, a2, a3, a4, ghat, norms, p, C, heads, *topk_counts(C),
            L2_EPS, BLOCK_R=rows, BLOCK_C=row_block, CHUNK=chunk, num_warps=row_warps, num_stages=NUM_STAGES,
            **LAUNCH_OPTIONS,
        )

        # project_out folded into the per-head mix: M_b = W_o blockdiag(P_b), d x d per sample
        w_o = proj_weight.reshape(D, heads, C).float()
        m = torch.einsum("ohc,bhcj->bohj", w_o, p.view(B, heads, C, C)).reshape(B, D, D)
        out_dtype = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
        out = torch.empty((B, D, H, W), device=dev, dtype=out_dtype)
        _launch_mix(m, t0, out, dw_w, dw_b, proj_bias.float() if proj_bias is not None else dw_w,
                    _plane_ok(residual) if residual is not None else None, conv=True, has_bias=has_bias,
                    half_dot=_half_dot(x.dtype))
    return out, t0, ghat, norms, p


def _launch_mix(m, src, out, dw_w, dw_b, out_bias, residual, *, conv, has_bias, half_dot):
    B, D = out.shape[:2]
    H, W = out.shape[2:]
    block_o, block_k, block_n, nw = _mix_config(D)
    # small latents (e.g. 384@32^2, ~5 MB with the residual): smaller token blocks until one wave fills the GPU
    while block_n > 16 and cdiv(H * W, block_n) * cdiv(D, block_o) * B < multiprocessor_count(out.device):
        block_n //= 2
    res = residual if residual is not None else out
    grid = (cdiv(H * W, block_n), cdiv(D, block_o), B)
    launch_kernel(_attn_mix_kernel, grid,
        m, src, dw_w, dw_b, out_bias, res, out, D, H, W, 2 * D, *m.stride(), *src.stride(), *res.stride(),
        *out.stride(), CONV=conv, HAS_BIAS=has_bias, HAS_RESIDUAL=residual is not None, HALF_DOT=half_dot,
        DOT_PRECISION="ieee" if half_dot else conv_fp32_precision(), BLOCK_O=block_o, BLOCK_K=block_k, BLOCK_N=block_n,
        K_ITERS=cdiv(D, block_k), num_warps=nw, num_stages=NUM_STAGES, **LAUNCH_OPTIONS,
    )


def attention_bwd(dout, x, t0, ghat, norms, p, qkv_weight, dw_weight, dw_bias, temperature, attn_weights,
                  proj_weight, num_heads: int, needs_input_grad: bool = True):
    """Gradients of :func:`attention_fwd` (without the residual, whose gradient is ``dout`` itself).

    dout: [B, d, H, W], any strides. Returns ``(dx, d_qkv_w, d_qkv_b, d_dw_w, d_dw_b, d_temperature,
    [d_attn1..4], d_proj_w, d_proj_b)``: dx contiguous in x's dtype (None unless ``needs_input_grad``),
    parameter gradients contiguous fp32 in the parameters' shapes, bias gradients None without biases.
    """
    B, D, H, W = x.shape
    heads = num_heads
    C = D // heads
    dev = x.device
    has_bias = dw_bias is not None
    if dout.shape != (B, D, H, W):
        raise ValueError(f"grad_output has shape {tuple(dout.shape)}, expected {(B, D, H, W)}")
    if dout.dtype != t0.dtype:
        dout = dout.to(t0.dtype)
    dout = _plane_ok(dout)
    t0 = _plane_ok(t0)
    with device_guard(x):
        dw_w = dw_weight.reshape(3 * D, 9).float()
        dw_b = dw_bias.float() if has_bias else dw_w
        half = _half_dot(t0.dtype)

        # G = dOut V^T: everything project_out and P need from the token axis
        words = dout_v_path(dout, t0) == "words"
        block_d, block_n, nw = _dout_v_config(D, words)
        n_db = cdiv(D, block_d)
        # token blocks of the words kernel count words (2 tokens each)
        block_n, splits, iters = _split_tokens(H * W // 2 if words else H * W, block_n, B * n_db * n_db, dev)
        g_part = torch.empty((B, splits, D, D), device=dev, dtype=torch.float32)
        rs_part = torch.empty((B, splits, D), device=dev, dtype=torch.float32)
        if words:
            launch_kernel(_attn_dout_v_words_kernel, (splits, n_db * n_db, B),
                dout, t0, _weight_row_pairs(dw_w), g_part, rs_part, D, H, W // 2, n_db,
                *(st // 2 for st in dout.stride()[:3]), *(st // 2 for st in t0.stride()[:3]),
                BLOCK_D=block_d, BLOCK_N=block_n, ITERS=iters, num_warps=nw,
                num_stages=NUM_STAGES, **{**LAUNCH_OPTIONS, "maxnreg": DOUT_V_MAXNREG},
            )
        else:
            launch_kernel(_attn_dout_v_kernel, (splits, n_db * n_db, B),
                dout, t0, dw_w, dw_b, g_part, rs_part, D, H, W, n_db, *dout.stride(), *t0.stride(),
                HAS_BIAS=has_bias, HALF_DOT=half, DOT_PRECISION="ieee" if half else conv_fp32_precision(),
                BLOCK_D=block_d, BLOCK_N=block_n, ITERS=iters, num_warps=nw, num_stages=NUM_STAGES,
                **{**LAUNCH_OPTIONS, "maxnreg": DOUT_V_MAXNREG},
            )
        g = g_part.sum(1)
        if words and has_bias:  # V's bias: dOut (V + b 1^T)^T = dOut V^T + (dOut 1) b^T
            g += rs_part.sum(1)[:, :, None] * dw_b[2 * D:][None, None, :]
        g = g.view(B, D, heads, C)
        p4 = p.view(B, heads, C, C)
        w_o = proj_weight.reshape(D, heads, C).float()
        d_proj_w = torch.einsum("bohj,bhcj->ohc", g, p4).reshape(D, D, 1, 1)
        d_proj_b = rs_part.sum((0, 1)) if has_bias else None
        dp = torch.einsum("ohc,bohj->bhcj", w_o, g).reshape(B * heads, C, C).contiguous()

        # softmax / top-k / normalisation backward, a few rows per program
        dgram = torch.empty((B * heads, C, C), device=dev, dtype=torch.float32)
        colterm = torch.empty((B * heads, C, C), device=dev, dtype=torch.float32)
        alpha = torch.empty((B * heads, C), device=dev, dtype=torch.float32)
        dw_part = torch.empty((B * heads, C, 4), device=dev, dtype=torch.float32)
        dtau_part = torch.empty((B * heads, C), device=dev, dtype=torch.float32)
        a1, a2, a3, a4 = (a.float() for a in attn_weights)
        tau = temperature.reshape(heads).float()
        rows, row_block, chunk, row_warps = _row_config(C)
        launch_kernel(_attn_softmax_bwd_kernel, (cdiv(C, rows), B * heads),
            ghat, norms, dp, tau, a1, a2, a3, a4, dgram, colterm, alpha, dw_part, dtau_part,
            C, heads, *topk_counts(C), L2_EPS, DGHAT=half, BLOCK_R=rows, BLOCK_C=row_block, CHUNK=chunk,
            num_warps=row_warps, num_stages=NUM_STAGES, **LAUNCH_OPTIONS,
        )
        d_attn = dw_part.sum((0, 1))  # [4]: attn1..attn4
        d_temp = dtau_part.view(B, heads, C).sum((0, 2)).view(heads, 1, 1)
        nk = norms[:, 1]
        beta = torch.where(nk > L2_EPS, -colterm.sum(1) / (nk * nk), 0.0)

        # dT = [dQ; dK; dV], the gradient of t = dwconv(t0)
        dt = torch.empty((B, 3 * D, H, W), device=dev, dtype=t0.dtype)
        # Q and K written once (the depthwise conv of t0's first 2d channels, bias included), then dQ/dK
        # as a dense batched matmul: rebuilding them inside the dot kernel cost every row block its own
        # 9-tap stencil of all C channels (L1-bound, ~200 registers, 8 warps per SM)
        qk = _qk_dwconv(t0, dw_weight, dw_bias)
        block_c, block_j, block_nq, nwq = _dqk_config(C, half)
        n_ib = cdiv(C, block_c)
        # small latents: shorter token blocks until a wave of programs fills the GPU
        while block_nq > DQK_MIN_BLOCK_N and (cdiv(H * W, block_nq) * n_ib * 2 * B * heads
                                             < math.ceil(0.9 * multiprocessor_count(dev))):
            block_nq //= 2
        launch_kernel(_attn_dqk_kernel, (cdiv(H * W, block_nq) * n_ib * 2, B * heads),
            qk, dgram, norms, torch.stack((alpha, beta), 1), dt, C, D, heads, H * W, n_ib, qk.stride(0), qk.stride(1),
            dt.stride(0), dt.stride(1), HALF_DOT=half, BLOCK_C=block_c, BLOCK_J=block_j, BLOCK_N=block_nq,
            J_ITERS=cdiv(C, block_j), num_warps=nwq, num_stages=NUM_STAGES, **LAUNCH_OPTIONS,
        )
        m = torch.einsum("ohc,bhcj->bohj", w_o, p4).reshape(B, D, D)
        _launch_mix(m.transpose(1, 2), dout, dt[:, 2 * D:], dw_w, dw_w, dw_w, None,
                    conv=False, has_bias=False, half_dot=half)

        dt0, (d_dw_w,), (d_dw_b,) = depthwise_conv_bwd([dt], t0, [dw_weight], need_bias_grad=has_bias)
        # 1x1 projection backward: the same cuDNN/cuBLAS call autograd makes for the original conv
        dx, d_qkv_w, d_qkv_b = torch.ops.aten.convolution_backward(
            dt0, x, qkv_weight.to(x.dtype), [3 * D] if has_bias else None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
            [needs_input_grad, True, has_bias],
        )
    # aten lays dx (and the weight gradient) out like a channels-last x (weight): contiguous, as
    # documented (a no-op for NCHW tensors)
    dx = dx.contiguous() if dx is not None else None
    return (dx, d_qkv_w.float().contiguous(), d_qkv_b.float() if has_bias else None, d_dw_w, d_dw_b, d_temp, d_attn,
            d_proj_w, d_proj_b)


# ----------------------------------------------------------------------------------------------
# every configuration the launchers can choose, for the ahead-of-time compile check
# ----------------------------------------------------------------------------------------------

_DTYPES = ("float32", "float16", "bfloat16")


def _ints(*names):
    return {n: "i32" for n in names}


@register_compile_configs
def _compile_configs():
    """Every configuration the launchers choose for the model's channel counts (d = 48, 96, 192, 384;
    C = 48, 96) and the tests' small ones; loop trip counts (K_ITERS, J_ITERS) follow the channel
    count, so other widths compile their own variants of the same code."""
    strides4 = ("stride_b", "stride_c", "stride_h", "stride_w")
    kw = dict(num_stages=NUM_STAGES)
    precisions = {"float32": ("ieee", "tf32"), "float16": ("ieee",), "bfloat16": ("ieee",)}
    # kernels 1 and 6: one C x C tile up to C = 64, then 64 x 64 tiles
    for c in (16, 32, 48, 96):
        block_c, block_n, nw, maxnreg = _gram_config(c)
        for dtype in _DTYPES:
            for has_bias in (False, True):
                if c <= GRAM_TILE:  # the stencil Gram kernels (one tile), which depend on C only through BLOCK_C
                    for iters in SPLIT_ITERS:
                        yield CompileConfig(
                            _attn_qk_gram_kernel,
                            {"t_ptr": ptr(dtype), "w_ptr": "*fp32", "b_ptr": "*fp32", "part_ptr": "*fp32",
                             **_ints("C", "D", "HEADS", "H", "W", "n_cb", *strides4)},
                            {"HAS_BIAS": has_bias, "HALF_DOT": dtype != "float32", "BLOCK_C": block_c,
                             "BLOCK_N": block_n, "ITERS": iters},
                            num_warps=nw, tag=dtype, extra={"maxnreg": maxnreg}, **kw,
                        )
                        if dtype == "float32":
                            continue
                        wc, wn, wnw, wreg = _gram_config(c, words=True, has_bias=has_bias)
                        yield CompileConfig(
                            _attn_qk_gram_words_kernel,
                            {"t_ptr": ptr(dtype), "w_ptr": "*i64", "b_ptr": "*fp32", "part_ptr": "*fp32",
                             **_ints("C", "D", "HEADS", "H", "WW", "n_cb", *strides4[:3])},
                            {"HAS_BIAS": has_bias, "BLOCK_C": wc, "BLOCK_N": wn, "ITERS": iters},
                            num_warps=wnw, tag=dtype, extra={"maxnreg": wreg}, **kw,
                        )
            if c > GRAM_TILE:  # the dense Gram
                gc, gn, gw = _gram_dense_config(dtype != "float32")
                for iters in SPLIT_ITERS:
                    yield CompileConfig(
                        _attn_qk_gram_dense_kernel,
                        {"qk_ptr": ptr(dtype), "part_ptr": "*fp32",
                         **_ints("C", "D", "HEADS", "N", "n_cb", "stride_qb", "stride_qc")},
                        {"HALF_DOT": dtype != "float32", "BLOCK_C": gc, "BLOCK_N": gn, "ITERS": iters},
                        num_warps=gw, tag=dtype, **kw,
                    )
            # the dQ/dK matmul: every token block the launcher may take (the small latents shorten it)
            dq_c, dq_j, dq_n, dq_w = _dqk_config(c, dtype != "float32")
            while dq_n >= DQK_MIN_BLOCK_N:
                yield CompileConfig(
                    _attn_dqk_kernel,
                    {"qk_ptr": ptr(dtype), "dg_ptr": "*fp32", "norm_ptr": "*fp32", "ab_ptr": "*fp32",
                     "dt_ptr": ptr(dtype),
                     **_ints("C", "D", "HEADS", "N", "n_ib", "stride_qb", "stride_qc", "stride_tb", "stride_tc")},
                    {"HALF_DOT": dtype != "float32", "BLOCK_C": dq_c, "BLOCK_J": dq_j, "BLOCK_N": dq_n,
                     "J_ITERS": cdiv(c, dq_j)},
                    num_warps=dq_w, tag=dtype, **kw,
                )
                dq_n //= 2
    # kernels 2 and 5: the per-row kernels, fp32 only
    for c in (16, 32, 64, 128, 256, 512, 1024):
        rows, block, chunk, nw = _row_config(c)
        yield CompileConfig(
            _attn_topk_softmax_kernel,
            {"g_ptr": "*fp32", "temp_ptr": "*fp32", "a1_ptr": "*fp32", "a2_ptr": "*fp32", "a3_ptr": "*fp32",
             "a4_ptr": "*fp32", "ghat_ptr": "*fp32", "norm_ptr": "*fp32", "p_ptr": "*fp32",
             **_ints("C", "HEADS", "k1", "k2", "k3", "k4"), "eps": "fp32"},
            {"BLOCK_R": rows, "BLOCK_C": block, "CHUNK": chunk}, num_warps=nw, **kw,
        )
        yield from (CompileConfig(
            _attn_softmax_bwd_kernel,
            {"ghat_ptr": "*fp32", "norm_ptr": "*fp32", "dp_ptr": "*fp32", "temp_ptr": "*fp32", "a1_ptr": "*fp32",
             "a2_ptr": "*fp32", "a3_ptr": "*fp32", "a4_ptr": "*fp32", "dgram_ptr": "*fp32", "colterm_ptr": "*fp32",
             "alpha_ptr": "*fp32", "dw_ptr": "*fp32", "dtau_ptr": "*fp32",
             **_ints("C", "HEADS", "k1", "k2", "k3", "k4"), "eps": "fp32"},
            {"DGHAT": dghat, "BLOCK_R": rows, "BLOCK_C": block, "CHUNK": chunk}, num_warps=nw, **kw,
        ) for dghat in (False, True))
    # kernel 3: forward (CONV, optional bias, residual of the same or fp32 dtype) and dV (plain source)
    mix_ints = _ints("D", "H", "W", "v_offset", "stride_mb", "stride_mo", "stride_mk",
                     *(f"stride_{t}{a}" for t in "sro" for a in "bchw"))
    for d, block_n in [(d, n) for d in (16, 48, 96, 192, 384) for n in (64, 32, 16) if n <= _mix_config(d)[2]]:
        block_o, block_k, _, nw = _mix_config(d)
        for dtype in _DTYPES:
            variants = [(True, hb, None) for hb in (False, True)]
            variants += [(True, hb, rd) for hb in (False, True) for rd in sorted({dtype, "float32"})]
            variants += [(False, False, None)]
            for conv, has_bias, res_dtype in variants:
                out_dtype = res_dtype or dtype
                for prec in precisions[dtype]:
                    yield CompileConfig(
                        _attn_mix_kernel,
                        {"m_ptr": "*fp32", "src_ptr": ptr(dtype), "w_ptr": "*fp32", "dwb_ptr": "*fp32",
                         "ob_ptr": "*fp32", "res_ptr": ptr(out_dtype), "out_ptr": ptr(out_dtype), **mix_ints},
                        {"CONV": conv, "HAS_BIAS": has_bias, "HAS_RESIDUAL": res_dtype is not None,
                         "HALF_DOT": dtype != "float32", "DOT_PRECISION": prec, "BLOCK_O": block_o,
                         "BLOCK_K": block_k, "BLOCK_N": block_n, "K_ITERS": cdiv(d, block_k)},
                        num_warps=nw, tag=f"{dtype}->{out_dtype}", **kw,
                    )
    # kernel 4
    for d in (16, 32, 64):
        block_d, block_n, nw = _dout_v_config(d)
        for dtype in _DTYPES:
            for has_bias in (False, True):
                for prec in precisions[dtype]:
                    for iters in SPLIT_ITERS:
                        yield CompileConfig(
                            _attn_dout_v_kernel,
                            {"do_ptr": ptr(dtype), "t_ptr": ptr(dtype), "w_ptr": "*fp32", "b_ptr": "*fp32",
                             "g_ptr": "*fp32", "rs_ptr": "*fp32", **_ints("D", "H", "W", "n_db"),
                             **_ints(*(f"stride_{t}{a}" for t in "dt" for a in "bchw"))},
                            {"HAS_BIAS": has_bias, "HALF_DOT": dtype != "float32", "DOT_PRECISION": prec,
                             "BLOCK_D": block_d, "BLOCK_N": block_n, "ITERS": iters},
                            num_warps=nw, tag=dtype, extra={"maxnreg": DOUT_V_MAXNREG}, **kw,
                        )
            if dtype == "float32":
                continue
            _, block_nw, nw_words = _dout_v_config(d, words=True)
            for iters in SPLIT_ITERS:
                yield CompileConfig(
                    _attn_dout_v_words_kernel,
                    {"do_ptr": ptr(dtype), "t_ptr": ptr(dtype), "w_ptr": "*i64",
                     "g_ptr": "*fp32", "rs_ptr": "*fp32", **_ints("D", "H", "WW", "n_db"),
                     **_ints(*(f"stride_{t}{a}" for t in "dt" for a in "bch"))},
                    {"BLOCK_D": block_d, "BLOCK_N": block_nw, "ITERS": iters},
                    num_warps=nw_words, tag=dtype, extra={"maxnreg": DOUT_V_MAXNREG}, **kw,
                )
