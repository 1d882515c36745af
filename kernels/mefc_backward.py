"""Backward of one MEFC step (issue 10): the gradients of

    s_out = relu(relu(pre) + s),   pre = sum_o m[b, :, oC:(o+1)C] @ z_o          (per sample b)

with the eight ops' pre-projection outputs z_o (C channels each):
    o = 0..3  sep_conv k = 1, 3, 5, 7:   z_o = dw2_o(t_o),  t_o = relu(W1_o dw1_o(s))   (pad k // 2)
    o = 4..6  dil_conv k = 3, 5, 7:      z_o = dwd_o(s)                  (dilation 2, pad k - 1)
    o = 7     avg_pool 3x3:              z_7 = avgpool(s)        (stride 1, pad 1, count_include_pad=False)
and m: [B, C, 8C] fp32, block o = W_out[:, oC:(o+1)C] * w[b, o] @ W2_o (the integrator builds it in
torch; its autograd takes dm back to W_out, the second 1x1s and the softmax weights).

Only s and s_out are saved; everything else is recomputed. The chain (all per sample):

  t      = sep_inner_fwd(s)                   the forward's kernel (kernels/mefc.py)
  1. dz  ``_mefc_bwd_dz_kernel``      per pixel tile, all C channels: rebuild every z_o from taps of
                                      t and s, pre = sum_o m_o z_o (tl.dot), dpre = g [s_out > 0][pre > 0];
                                      writes dpre [B, C, N] and dz = m^T dpre [B, 8C, N]
  2. dm  ``_mefc_bwd_outer_kernel``   dm_o = sum_p dpre z_o^T: z_o rebuilt again per BLOCK_K channels,
                                      tl.dot over the pixels of a chunk; one partial per chunk
  3. sep ``_mefc_bwd_sep_kernel``     per sep op, BLOCK_K channels at a time: dt_o = dw2_o^T(dz_o)
                                      [t_o > 0] (transposed taps), du_o += W1_o^T dt_o (tl.dot);
                                      writes dt, du [B, 4C, N]
  4. dW1 ``_mefc_bwd_outer_kernel``   dW1_o = sum_p dt_o a_o^T with a_o = dw1_o(s) rebuilt from taps
  5. ds  ``_mefc_bwd_ds_kernel``      ds = g [s_out > 0] + sum_o dw1_o^T(du_o) + sum_o dwd_o^T(dz_o)
                                      + avgpool^T(dz_7)  (counts of the pixel each tap came from)
  6. d dw1, d dw2, d dwd              ``_mefc_bwd_dwgrad_kernel`` (3 launches): per tap and channel,
                                      sum_p G(p - d) X(p) over the pixels of a chunk (G = du_o / dz_o,
                                      X = s / t_o), in registers; one partial row per chunk
All weight gradients (dm, dW1, the depthwise ones) are per-program partial sums written to their
own slots and summed over programs afterwards in a fixed order: deterministic, no atomics. The
number of chunks is a function of the shape only (never of the GPU), so results are reproducible
across devices of the same kind.

Dots that replace convolutions (the m products and the W1 products) use ``conv_fp32_precision()``
(PyTorch's cuDNN TF32 setting) in fp32; fp16/bf16 operands go to tensor cores with fp32 accumulation.

Bytes (DRAM, compulsory, in channel planes of B*H*W elements of size e; weights and the partial
sums, < 2% at 256x256, left out). :func:`traffic_bytes` computes them for any shape.

  fused (this module)                              reads         writes       planes
    t = sep_inner_fwd(s)  (mefc.py)                C             4C           5C
    1. dz                                          t 4C, s, g, s_out  dpre C, dz 8C   16C
    2. dm                                          dpre, t 4C, s                       6C
    3. sep                                         dz 4C, t 4C   dt 4C, du 4C         16C
    4. dW1                                         dt 4C, s                            5C
    5. ds                                          du 4C, dz 4C, g, s_out   ds C      11C
    6. depthwise weight grads                      dz 4C + t 4C, du 4C + s, dz 3C + s 17C
    total                                                                          76C
  original (autograd's kernels, estimated the same way)
    ReLUs and residual: 9C; W_out 1x1 (dX, dW): 18C; eight w_o scalings (grad and dw): 32C;
    per sep op: two 1x1s (8C), two depthwise (8C), ReLU (3C) -> 4 x 19C; per dil op (8C) -> 24C;
    pool 2C; autograd's sums of the nine gradients of s: 24C                       185C

  C = 48, 1x48x256x256, fp32 (one plane 0.262 MB): fused 0.96 GB, original 2.33 GB per step;
  C = 96, 1x96x256x256: fused 1.91 GB, original 4.65 GB per step.

Launch shapes (GPU): the full-channel kernels (dz, outer, sep) hold all C channels of a pixel tile
(BLOCK_C = next power of two >= 32) and work on it BLOCK_K = 16 channels at a time (the taps of a
[16, BLOCK_N] chunk, then a tl.dot). BLOCK_N = 32 pixels at BLOCK_C = 64 and 128, so a warp's 32 lanes
read one row per tap load (16-pixel rows put a warp on 2 rows: half-used wavefronts); 64 at BLOCK_C = 32.
dz takes 8 warps, 16 at BLOCK_C = 128 (8 accumulator elements per thread); outer 8 (maxnreg 128,
for sm_80); sep 16 (maxnreg 128: its exact-fp32 dot at BLOCK_C = 128 would take 142 uncapped). ds
takes 1 channel x 2048 pixels at 16 warps (4 pixels per thread: one broadcast weight load per tap
serves 4 tap loads; its runtime tap loops are unrolled by LLVM), dwgrad 16 channels x 128 pixels at 8
warps. Programs at 1x48x256x256 / 1x96x256x256: dz 2048 / 2048, sep 8192 / 8192, ds 1536 / 3072, each
chunked reduction (outer x3, dwgrad x3) 261-270 (TARGET_PROGRAMS). Workspace per call, in s's dtype:
t (4C), dpre (C), dz (8C), dt (4C), du (4C) channel planes, plus partial sums (< 1 MB at these shapes).

Compiled as launched for sm_90 (num_stages=2, LAUNCH_OPTIONS; every dtype, both TF32 settings), no
spills anywhere (sm_80 too):
  kernel    warps    registers (C=48 | C=96 tiles)   resident warps/SM   loads
  dz        8 | 16   86-92 | 80-94                   16                  taps 1 element/thread along W;
  outer       8      88-117 | 116-128                16                  dots on tensor cores (HMMA, wgmma
  sep        16      84-92 | 94-102                  16                  in outer) in tf32/fp16/bf16
  ds         16      83-84                           16
  dwgrad      8      80-103                          16
Per-warp L1 factor (static_report, fp32, 1.0 = every wavefront full; C=48 | C=96): dz 1.72 | 1.65,
outer 1.63 | 1.48, sep 1.87 | 1.89, ds 1.07, dwgrad 1.00. What remains in dz, outer and sep is the
broadcast weight load per channel row a thread holds and tap (one per tap load: Triton spreads warps
over the pixels before giving a thread a second pixel of a row, and the dots need 16-channel chunks).

Sizes: full-channel tiles hold C <= 128 (BLOCK_C = next power of two, at least 32); larger C is
refused with an error. Batch offsets and channel rows are int64 pointers; offsets inside one
channel plane are int32 (an input whose plane spans >= 2**31 elements, e.g. channels-last beyond
~22 MP at C = 96, is copied to a contiguous layout first). Every grid keeps y, z <= 65535 (the pixel
tiles run along x).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from ._launch import launch_kernel
from ._registry import CompileConfig, ptr, register_compile_configs
from ._utils import (
    LAUNCH_OPTIONS,
    SUPPORTED_DTYPES,
    cdiv,
    check_tensor,
    conv_fp32_precision,
    device_guard,
    interpreter_tiles,
    next_pow2,
)
from .mefc import DIL_SIZES, MAX_CHANNELS, NUM_OPS, SEP_SIZES, channel_chunk, sep_inner_fwd  # noqa: F401 (re-exported)

TILE = 2048  # elements of a full-channel [BLOCK_C, BLOCK_N] tile (8 fp32 per thread at 8 warps)
BLOCK_K = 16  # channel chunk of the dots' operands
NUM_WARPS = 8
# ds: LLVM unrolls the runtime tap loops for loads in flight (~14 registers per tile element held by
# a thread), so it spreads a tile over 16 warps: <= 128 registers, one 16-warp CTA per SM
TAP_NUM_WARPS = 16
# sep at 16 warps: its exact-fp32 ("ieee") du dot at BLOCK_C = 128 wants 142 registers (more than one
# 16-warp CTA may hold); capped at 128, ptxas fits it in 96 without spills (compile_check)
SEP_MAXNREG = 128
# outer on sm_80 wants up to 144 (BLOCK_C = 128, fp32): capped, two 8-warp CTAs per SM there too
OUTER_MAXNREG = 128
NUM_STAGES = 2
DW_BLOCK_C = 16  # depthwise (per-channel) kernels: 16 channels x 128 pixels
DW_BLOCK_N = 128
# ds: one channel x 2048 pixels (4 per thread at 16 warps): each broadcast weight load per tap serves
# 4 coalesced tap loads (16 x 128 tiles hold 4 rows x 1 pixel per thread: one weight load per tap load)
DS_BLOCK_C = 1
DS_BLOCK_N = 2048
TARGET_PROGRAMS = 264  # 2 waves of an H100's 132 SMs for the chunked reductions
# Triton's CPU interpreter pays per executed operation and program, not per element: it runs the same
# kernels on tiles of up to 1024 pixels, one or two per test image, and channel chunks of up to 64
# (mefc.channel_chunk). The GPU's tiles (several per test image: the cross-program reductions) run in
# the interpreter too, in tests under gpu_tiles().
INTERPRETER_TILE = 32768
INTERPRETER_DW_BLOCK_C = 32
INTERPRETER_DW_BLOCK_N = 1024
_INT32_LIMIT = 2**31 - 1


# ----------------------------------------------------------------------------------------------
# Helpers (inlined)
# ----------------------------------------------------------------------------------------------


@triton.jit
def _tap_offset(j, K0: tl.constexpr):
    """Where op j's taps start in a group packed with sizes K0, K0 + 2, ... (sum of the squares
    before it); the pool of the dilated group (j = 3, K0 = 3) lands at 83, after 9 + 25 + 49."""
    h0: tl.constexpr = (K0 - 1) // 2
    i = j + h0
    return i * (4 * i * i - 1) // 3 - h0 * (4 * h0 * h0 - 1) // 3


@triton.jit
def _dw_chunk(p_rows, stride_h, stride_w, p_w, j, o_kl, o_h, o_w, m_n, H, W, C,
              K0: tl.constexpr, DIL0: tl.constexpr, HAS_POOL: tl.constexpr,
              BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    """Op j of a group of depthwise convolutions (size K0 + 2j, dilation DIL0, 'same' padding), or
    with HAS_POOL and j == 3 the 3x3 average pool (count_include_pad=False), for channels o_kl on a
    pixel tile: [BLOCK_R, BLOCK_N] fp32. p_rows: [BLOCK_R] pointers to each channel's plane; the
    group's weights are packed (op j at C * _tap_offset(j), element c * K * K + tap)."""
    if HAS_POOL:
        is_pool = j == 3
        K = tl.where(is_pool, 3, K0 + 2 * j)
        dil = tl.where(is_pool, 1, DIL0)
    else:
        K = K0 + 2 * j
        dil = DIL0
    R = K // 2
    p_wr = p_w + C * _tap_offset(j, K0) + o_kl * (K * K)
    o_pix = o_h * stride_h + o_w * stride_w
    b_acc = tl.zeros([BLOCK_R, BLOCK_N], dtype=tl.float32)
    for kh in range(0, K):
        dh = (kh - R) * dil
        m_h = m_n & (o_h + dh >= 0) & (o_h + dh < H)
        for kw in range(0, K):
            dw = (kw - R) * dil
            m = (m_h & (o_w + dw >= 0) & (o_w + dw < W))[None, :]
            b_x = tl.load(p_rows[:, None] + (o_pix + (dh * stride_h + dw * stride_w))[None, :], mask=m,
                          other=0.0).to(tl.float32)
            b_acc += tl.load(p_wr + (kh * K + kw))[:, None] * b_x
    if HAS_POOL:
        # valid taps of the 3x3 window (>= 1 also on pixels outside the image, which are masked later)
        cnt = ((tl.minimum(o_h + 1, H - 1) - tl.maximum(o_h - 1, 0) + 1)
               * (tl.minimum(o_w + 1, W - 1) - tl.maximum(o_w - 1, 0) + 1))
        cnt = tl.maximum(cnt, 1).to(tl.float32)
        b_acc = tl.where(is_pool, b_acc / cnt[None, :], b_acc)
    return b_acc


@triton.jit
def _tdw_chunk(b_acc, p_rows, p_wr, K, dil, o_n, o_h, o_w, m_n, H, W):
    """Adds the transposed depthwise convolution sum_t w[c, t] g(c, p - d_t) of a dense source
    (p_rows: [R] pointers to planes of H*W elements) to b_acc; d_t = dil * (tap - K // 2)."""
    R = K // 2
    for kh in range(0, K):
        dh = (kh - R) * dil
        m_h = m_n & (o_h - dh >= 0) & (o_h - dh < H)
        for kw in range(0, K):
            dw = (kw - R) * dil
            m = (m_h & (o_w - dw >= 0) & (o_w - dw < W))[None, :]
            b_g = tl.load(p_rows[:, None] + (o_n - (dh * W + dw))[None, :], mask=m, other=0.0).to(tl.float32)
            b_acc += tl.load(p_wr + (kh * K + kw))[:, None] * b_g
    return b_acc


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def _mefc_bwd_dz_kernel(
    g_ptr,  # g = dL/ds_out: [B, C, H, W], any strides
    s_ptr,  # s: [B, C, H, W], any strides
    so_ptr,  # s_out: [B, C, H, W], any strides
    t_ptr,  # t: [B, 4, C, H, W], any strides
    m_ptr,  # m: [B, C, 8C] fp32, any strides
    wsep_ptr,  # dw2_0..3 packed: [84 * C] fp32
    wdil_ptr,  # dwd_0..2 and the pool's ones packed: [92 * C] fp32
    dpre_ptr,  # out: dpre [B, C, N] in s's dtype
    dz_ptr,  # out: dz [B, 8C, N] in s's dtype
    C, N, H, W,
    stride_gb, stride_gc, stride_gh, stride_gw,
    stride_sb, stride_sc, stride_sh, stride_sw,
    stride_ob, stride_oc, stride_oh, stride_ow,
    stride_tb, stride_to, stride_tc, stride_th, stride_tw,
    stride_mb, stride_mc, stride_mk,
    PREC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # bytes: reads t (4C), s, g, s_out; writes dpre (C) and dz (8C); taps re-read from L1/L2
    i_n = tl.program_id(0)
    i_b = tl.program_id(1).to(tl.int64)
    # 1 pixel per thread along W: coalesced tap loads (kernels/_utils.py, stencil layout)
    o_n = tl.multiple_of(i_n * BLOCK_N + tl.arange(0, BLOCK_N), 1)
    m_n = o_n < N
    o_h = o_n // W
    o_w = o_n % W
    o_c = tl.arange(0, BLOCK_C)
    m_c = o_c < C
    o_c64 = tl.minimum(o_c, C - 1).to(tl.int64)
    DT = s_ptr.dtype.element_ty
    p_s = s_ptr + i_b * stride_sb
    p_t = t_ptr + i_b * stride_tb
    p_m = m_ptr + i_b * stride_mb
    b_pre = tl.zeros([BLOCK_C, BLOCK_N], dtype=tl.float32)
    # pre = sum_o m_o z_o, z_o rebuilt per BLOCK_K channels (never stored)
    for j in range(0, 4):
        for k0 in range(0, C, BLOCK_K):
            o_k = k0 + tl.arange(0, BLOCK_K)
            o_kl = tl.minimum(o_k, C - 1)
            p_rows = p_t + tl.cast(j, tl.int64) * stride_to + o_kl.to(tl.int64) * stride_tc
            b_z = _dw_chunk(p_rows, stride_th, stride_tw, wsep_ptr, j, o_kl, o_h, o_w, m_n, H, W, C,
                            1, 1, False, BLOCK_K, BLOCK_N)
            b_m = tl.load(p_m + o_c64[:, None] * stride_mc + (j * C + o_k)[None, :] * stride_mk,
                          mask=m_c[:, None] & (o_k < C)[None, :], other=0.0)
            b_pre = tl.dot(b_m.to(DT), b_z.to(DT), b_pre, input_precision=PREC)
    for j in range(0, 4):
        for k0 in range(0, C, BLOCK_K):
            o_k = k0 + tl.arange(0, BLOCK_K)
            o_kl = tl.minimum(o_k, C - 1)
            p_rows = p_s + o_kl.to(tl.int64) * stride_sc
            b_z = _dw_chunk(p_rows, stride_sh, stride_sw, wdil_ptr, j, o_kl, o_h, o_w, m_n, H, W, C,
                            3, 2, True, BLOCK_K, BLOCK_N)
            b_m = tl.load(p_m + o_c64[:, None] * stride_mc + ((4 + j) * C + o_k)[None, :] * stride_mk,
                          mask=m_c[:, None] & (o_k < C)[None, :], other=0.0)
            b_pre = tl.dot(b_m.to(DT), b_z.to(DT), b_pre, input_precision=PREC)

    m_cn = m_c[:, None] & m_n[None, :]
    b_g = tl.load(g_ptr + i_b * stride_gb + o_c64[:, None] * stride_gc + (o_h * stride_gh + o_w * stride_gw)[None, :],
                  mask=m_cn, other=0.0)
    b_so = tl.load(so_ptr + i_b * stride_ob + o_c64[:, None] * stride_oc + (o_h * stride_oh + o_w * stride_ow)[None, :],
                   mask=m_cn, other=0.0)
    # both ReLUs: s_out > 0 passes g to relu(pre) (and to the residual), pre > 0 passes it on to pre
    b_dpre = tl.where((b_so > 0) & (b_pre > 0), b_g.to(tl.float32), 0.0)
    tl.store(dpre_ptr + (i_b * C + o_c64)[:, None] * N + o_n[None, :], b_dpre.to(dpre_ptr.dtype.element_ty),
             mask=m_cn)
    # dz_o = m_o^T dpre, BLOCK_K rows at a time
    b_dpre = b_dpre.to(DT)
    for k0 in range(0, 8 * C, BLOCK_K):
        o_k = k0 + tl.arange(0, BLOCK_K)  # rows of dz: op (o_k // C), channel (o_k % C)
        m_k = o_k < 8 * C
        b_mt = tl.load(p_m + o_c64[None, :] * stride_mc + o_k[:, None] * stride_mk, mask=m_k[:, None] & m_c[None, :],
                       other=0.0)
        b_dz = tl.dot(b_mt.to(DT), b_dpre, input_precision=PREC)
        tl.store(dz_ptr + (i_b * 8 * C + o_k.to(tl.int64))[:, None] * N + o_n[None, :],
                 b_dz.to(dz_ptr.dtype.element_ty), mask=m_k[:, None] & m_n[None, :])


@triton.jit
def _mefc_bwd_outer_kernel(
    gr_ptr,  # G: [B, G_CH, N] dense (dpre: G_CH = C; dt: G_CH = 4C, op j at rows jC)
    s_ptr,  # s: [B, C, H, W], any strides
    t_ptr,  # t: [B, 4, C, H, W], any strides (used when FROM_T)
    w_ptr,  # the group's depthwise weights, packed fp32
    part_ptr,  # out: [B, n_chunks, C, n_ops * C] fp32 partials
    C, N, H, W, G_CH, tiles_per_chunk,
    stride_sb, stride_sc, stride_sh, stride_sw,
    stride_tb, stride_to, stride_tc, stride_th, stride_tw,
    G_PER_OP: tl.constexpr,  # G has one C-row block per op (dt) rather than one shared block (dpre)
    FROM_T: tl.constexpr,  # X is rebuilt from t_o (dw2 of the sep ops) rather than from s
    K0: tl.constexpr,
    DIL0: tl.constexpr,
    HAS_POOL: tl.constexpr,
    PREC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """part[b, chunk, :, jC + k] = sum over the chunk's pixels of G_j(p) X_j(p, k): X_j is op j of the
    group rebuilt from taps (z_o for dm, a_o = dw1_o(s) for dW1), BLOCK_K channels per program."""
    # bytes: reads G (C or 4C) and the taps' source (t 4C or s C) once over all programs
    i_ch = tl.program_id(0)
    i_jk = tl.program_id(1)
    i_b = tl.program_id(2).to(tl.int64)
    n_kc = tl.cdiv(C, BLOCK_K)
    j = i_jk // n_kc
    k0 = (i_jk % n_kc) * BLOCK_K
    o_k = k0 + tl.arange(0, BLOCK_K)
    o_kl = tl.minimum(o_k, C - 1)
    o_c = tl.arange(0, BLOCK_C)
    m_c = o_c < C
    o_c64 = tl.minimum(o_c, C - 1).to(tl.int64)
    DT = s_ptr.dtype.element_ty
    if FROM_T:
        p_rows = t_ptr + i_b * stride_tb + tl.cast(j, tl.int64) * stride_to + o_kl.to(tl.int64) * stride_tc
        stride_h = stride_th
        stride_w = stride_tw
    else:
        p_rows = s_ptr + i_b * stride_sb + o_kl.to(tl.int64) * stride_sc
        stride_h = stride_sh
        stride_w = stride_sw
    if G_PER_OP:
        p_g = gr_ptr + (i_b * G_CH + j * C + o_c64) * N
    else:
        p_g = gr_ptr + (i_b * G_CH + o_c64) * N
    b_acc = tl.zeros([BLOCK_C, BLOCK_K], dtype=tl.float32)
    for it in range(0, tiles_per_chunk):
        # 1 pixel per thread along W: coalesced tap loads (kernels/_utils.py, stencil layout)
        o_n = tl.multiple_of((i_ch * tiles_per_chunk + it) * BLOCK_N + tl.arange(0, BLOCK_N), 1)
        m_n = o_n < N
        o_h = o_n // W
        o_w = o_n % W
        b_g = tl.load(p_g[:, None] + o_n[None, :], mask=m_c[:, None] & m_n[None, :], other=0.0)
        b_x = _dw_chunk(p_rows, stride_h, stride_w, w_ptr, j, o_kl, o_h, o_w, m_n, H, W, C,
                        K0, DIL0, HAS_POOL, BLOCK_K, BLOCK_N)
        b_acc = tl.dot(b_g.to(DT), tl.trans(b_x.to(DT)), b_acc, input_precision=PREC)
    n_cols = tl.num_programs(1) // n_kc * C
    p_out = part_ptr + ((i_b * tl.num_programs(0) + i_ch) * C + o_c64)[:, None] * n_cols + (j * C + o_k)[None, :]
    tl.store(p_out, b_acc, mask=m_c[:, None] & (o_k < C)[None, :])


@triton.jit
def _mefc_bwd_sep_kernel(
    dz_ptr,  # dz: [B, 8C, N] dense (rows 0..4C: the sep ops)
    t_ptr,  # t: [B, 4, C, H, W], any strides
    w2_ptr,  # dw2_0..3 packed: [84 * C] fp32
    w1_ptr,  # W1_0..3: [4, C, C] fp32 dense (out, in)
    dt_ptr,  # out: dt [B, 4C, N] in s's dtype (gradient of t_o before its ReLU)
    du_ptr,  # out: du [B, 4C, N] in s's dtype (gradient of dw1_o(s))
    C, N, H, W,
    stride_tb, stride_to, stride_tc, stride_th, stride_tw,
    PREC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # bytes: reads dz_o (C) and t_o (C), writes dt_o and du_o (C each), per op
    i_n = tl.program_id(0)
    j = tl.program_id(1).to(tl.int64)
    i_b = tl.program_id(2).to(tl.int64)
    # 1 pixel per thread along W: coalesced tap loads (kernels/_utils.py, stencil layout)
    o_n = tl.multiple_of(i_n * BLOCK_N + tl.arange(0, BLOCK_N), 1)
    m_n = o_n < N
    o_h = o_n // W
    o_w = o_n % W
    o_c = tl.arange(0, BLOCK_C)
    m_c = o_c < C
    o_c64 = tl.minimum(o_c, C - 1).to(tl.int64)
    DT = dt_ptr.dtype.element_ty
    K = 2 * j + 1
    o_rows = i_b * 4 * C + j * C
    p_w1 = w1_ptr + j * C * C
    # dt_o per BLOCK_K channels (taps only for the C real channels, not BLOCK_C), each chunk's share of
    # du_o = W1_o^T dt_o accumulated by tl.dot
    b_du = tl.zeros([BLOCK_C, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, C, BLOCK_K):
        o_k = k0 + tl.arange(0, BLOCK_K)
        m_k = o_k < C
        o_kl = tl.minimum(o_k, C - 1)
        o_k64 = o_kl.to(tl.int64)
        m_kn = m_k[:, None] & m_n[None, :]
        b_dt = tl.zeros([BLOCK_K, BLOCK_N], dtype=tl.float32)
        b_dt = _tdw_chunk(b_dt, dz_ptr + (i_b * 8 * C + j * C + o_k64) * N, w2_ptr + C * _tap_offset(j, 1)
                          + o_kl * (K * K), K, 1, o_n, o_h, o_w, m_n, H, W)
        # t_o only for its ReLU mask, loaded after the taps (fewer live registers)
        b_t = tl.load(t_ptr + i_b * stride_tb + j * stride_to + o_k64[:, None] * stride_tc
                      + (o_h * stride_th + o_w * stride_tw)[None, :], mask=m_kn, other=0.0)
        # rows past C are zero: they add nothing to du
        b_dt = tl.where((b_t > 0) & m_k[:, None], b_dt, 0.0).to(DT)
        tl.store(dt_ptr + (o_rows + o_k64)[:, None] * N + o_n[None, :], b_dt, mask=m_kn)
        b_w1t = tl.load(p_w1 + o_kl[None, :] * C + o_c64[:, None], mask=m_c[:, None] & m_k[None, :], other=0.0)
        b_du = tl.dot(b_w1t.to(DT), b_dt, b_du, input_precision=PREC)
    tl.store(du_ptr + (o_rows + o_c64)[:, None] * N + o_n[None, :], b_du.to(DT), mask=m_c[:, None] & m_n[None, :])


@triton.jit
def _mefc_bwd_ds_kernel(
    g_ptr,  # g: [B, C, H, W], any strides
    so_ptr,  # s_out: [B, C, H, W], any strides
    du_ptr,  # du: [B, 4C, N] dense
    dz_ptr,  # dz: [B, 8C, N] dense (rows 4C..8C: dil ops and pool)
    w1_ptr,  # dw1_0..3 packed: [84 * C] fp32
    wd_ptr,  # dwd_0..2 packed: [83 * C] fp32 (and the pool's ones after them, unused here)
    ds_ptr,  # out: ds [B, C, H, W] dense, s's dtype
    C, N, H, W,
    stride_gb, stride_gc, stride_gh, stride_gw,
    stride_ob, stride_oc, stride_oh, stride_ow,
    BLOCK_C: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # bytes: reads du (4C), dz_4..7 (4C), g, s_out; writes ds (C)
    i_n = tl.program_id(0)
    i_c = tl.program_id(1)
    i_b = tl.program_id(2).to(tl.int64)
    # 1 pixel per thread along W: coalesced tap loads (kernels/_utils.py, stencil layout)
    o_n = tl.multiple_of(i_n * BLOCK_N + tl.arange(0, BLOCK_N), 1)
    m_n = o_n < N
    o_h = o_n // W
    o_w = o_n % W
    o_c = i_c * BLOCK_C + tl.arange(0, BLOCK_C)
    m_c = o_c < C
    o_cl = tl.minimum(o_c, C - 1)
    o_c64 = o_cl.to(tl.int64)
    m_cn = m_c[:, None] & m_n[None, :]
    b_g = tl.load(g_ptr + i_b * stride_gb + o_c64[:, None] * stride_gc + (o_h * stride_gh + o_w * stride_gw)[None, :],
                  mask=m_cn, other=0.0).to(tl.float32)
    b_so = tl.load(so_ptr + i_b * stride_ob + o_c64[:, None] * stride_oc + (o_h * stride_oh + o_w * stride_ow)[None, :],
                   mask=m_cn, other=0.0)
    b_ds = tl.where(b_so > 0, b_g, 0.0)  # the residual
    for j in range(0, 4):
        K = 2 * j + 1
        b_ds = _tdw_chunk(b_ds, du_ptr + (i_b * 4 * C + j * C + o_c64) * N, w1_ptr + C * _tap_offset(j, 1)
                          + o_cl * (K * K), K, 1, o_n, o_h, o_w, m_n, H, W)
    for j in range(0, 3):
        K = 2 * j + 3
        b_ds = _tdw_chunk(b_ds, dz_ptr + (i_b * 8 * C + (4 + j) * C + o_c64) * N, wd_ptr + C * _tap_offset(j, 3)
                          + o_cl * (K * K), K, 2, o_n, o_h, o_w, m_n, H, W)
    # avgpool^T: each tap's source pixel q = p - d divides by q's own count
    p_rows = dz_ptr + (i_b * 8 * C + 7 * C + o_c64) * N
    for kh in range(0, 3):
        dh = kh - 1
        q_h = o_h - dh
        m_h = m_n & (q_h >= 0) & (q_h < H)
        c_h = tl.minimum(q_h + 1, H - 1) - tl.maximum(q_h - 1, 0) + 1
        for kw in range(0, 3):
            dw = kw - 1
            q_w = o_w - dw
            m = m_h & (q_w >= 0) & (q_w < W)
            cnt = tl.maximum(c_h * (tl.minimum(q_w + 1, W - 1) - tl.maximum(q_w - 1, 0) + 1), 1).to(tl.float32)
            b_x = tl.load(p_rows[:, None] + (o_n - (dh * W + dw))[None, :], mask=m[None, :], other=0.0)
            b_ds += b_x.to(tl.float32) / cnt[None, :]
    tl.store(ds_ptr + (i_b * C + o_c64)[:, None] * N + o_n[None, :], b_ds.to(ds_ptr.dtype.element_ty), mask=m_cn)


@triton.jit
def _mefc_bwd_dwgrad_kernel(
    gr_ptr,  # G: [B, G_CH, N] dense; op j's rows start at g_row0 + jC
    x_ptr,  # X: s [B, C, H, W] (stride_xo = 0) or t [B, 4, C, H, W], any strides
    part_ptr,  # out: [B * n_chunks, TAPS, C] fp32 partials (row: the group's packed tap index)
    C, N, H, W, G_CH, g_row0, tiles_per_chunk, TAPS,
    stride_xb, stride_xo, stride_xc, stride_xh, stride_xw,
    K0: tl.constexpr,
    DIL: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_T: tl.constexpr,  # >= the largest op's taps
):
    """Depthwise weight gradient of op j (size K0 + 2j, dilation DIL) of a group:
    d w[c, t] = sum_p G(c, p - d_t) X(c, p) over the pixels of this program's chunk."""
    # bytes: reads G and X once over all programs (the taps' shifted re-reads hit L1/L2)
    i_ch = tl.program_id(0)
    i_jc = tl.program_id(1)
    i_b = tl.program_id(2).to(tl.int64)
    n_cb = tl.cdiv(C, BLOCK_C)
    j = i_jc // n_cb
    o_c = (i_jc % n_cb) * BLOCK_C + tl.arange(0, BLOCK_C)
    m_c = o_c < C
    o_cl = tl.minimum(o_c, C - 1)
    o_c64 = o_cl.to(tl.int64)
    K = K0 + 2 * j
    R = K // 2
    p_g = gr_ptr + (i_b * G_CH + g_row0 + j * C + o_c64) * N
    p_x = x_ptr + i_b * stride_xb + tl.cast(j, tl.int64) * stride_xo + o_c64 * stride_xc
    p_part = part_ptr + ((i_b * tl.num_programs(0) + i_ch) * TAPS + _tap_offset(j, K0)) * C + o_c
    # the chunk's tap sums stay in registers ([BLOCK_C, BLOCK_T], one column per tap) until the end:
    # no load and store of the partial row per tap and tile
    o_t = tl.arange(0, BLOCK_T)
    b_tap = tl.zeros([BLOCK_C, BLOCK_T], dtype=tl.float32)
    for it in range(0, tiles_per_chunk):
        # 1 pixel per thread along W: coalesced tap loads (kernels/_utils.py, stencil layout)
        o_n = tl.multiple_of((i_ch * tiles_per_chunk + it) * BLOCK_N + tl.arange(0, BLOCK_N), 1)
        m_n = o_n < N
        o_h = o_n // W
        o_w = o_n % W
        # X once per tile (unshifted); G shifted per tap
        b_x = tl.load(p_x[:, None] + (o_h * stride_xh + o_w * stride_xw)[None, :], mask=m_n[None, :],
                      other=0.0).to(tl.float32)
        for kh in range(0, K):
            dh = (kh - R) * DIL
            m_h = m_n & (o_h - dh >= 0) & (o_h - dh < H)
            for kw in range(0, K):
                dw = (kw - R) * DIL
                m = (m_h & (o_w - dw >= 0) & (o_w - dw < W))[None, :]
                b_gs = tl.load(p_g[:, None] + (o_n - (dh * W + dw))[None, :], mask=m, other=0.0).to(tl.float32)
                b_tap += tl.where(o_t[None, :] == kh * K + kw, tl.sum(b_gs * b_x, axis=1)[:, None], 0.0)
    tl.store(p_part[:, None] + (o_t * C)[None, :], b_tap, mask=m_c[:, None] & (o_t < K * K)[None, :])


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------


def traffic_bytes(batch: int, channels: int, height: int, width: int, elem_size: int = 4) -> int:
    """Compulsory DRAM bytes of one :func:`mefc_step_bwd` (the module docstring's table: 76 channel
    planes, activations only; t's recomputation by the forward's kernel included)."""
    return 76 * channels * batch * height * width * elem_size


def original_traffic_bytes(batch: int, channels: int, height: int, width: int, elem_size: int = 4) -> int:
    """The original step's backward (autograd's kernels, estimated as in the module docstring: 185 planes)."""
    return 185 * channels * batch * height * width * elem_size


def _fit_plane_offsets(name: str, t: torch.Tensor) -> torch.Tensor:
    """Offsets inside one channel plane are int32 in the kernels: copy the rare input whose plane
    spans more (e.g. channels-last at tens of megapixels)."""
    span = (t.shape[-2] - 1) * abs(t.stride(-2)) + (t.shape[-1] - 1) * abs(t.stride(-1))
    if span > _INT32_LIMIT:
        t = t.contiguous()
        if (t.shape[-2] * t.shape[-1]) > _INT32_LIMIT:
            raise ValueError(f"{name}: one channel plane of {t.shape[-2]}x{t.shape[-1]} pixels exceeds 2**31 elements")
    return t


def _check_weights(name: str, ws, sizes, C: int, dev, depthwise: bool) -> None:
    if not isinstance(ws, (list, tuple)) or len(ws) != len(sizes):
        raise ValueError(f"{name} must be a tuple of {len(sizes)} tensors, got {ws!r:.80}")
    for i, (w, k) in enumerate(zip(ws, sizes)):
        shape = (C, 1, k, k) if depthwise else (C, C, 1, 1)
        check_tensor(f"{name}[{i}]", w, device=dev, shape=shape)
        if not w.is_floating_point():
            raise TypeError(f"{name}[{i}] must be floating point, got {w.dtype}")


def check_inputs(g, s, s_out, dw1, w1, dw2, dwd, m) -> None:
    check_tensor("s", s, ndim=4, dtypes=SUPPORTED_DTYPES)
    B, C, H, W = s.shape
    dev = s.device
    check_tensor("g", g, device=dev, shape=(B, C, H, W), dtypes=SUPPORTED_DTYPES)
    check_tensor("s_out", s_out, device=dev, shape=(B, C, H, W), dtypes=SUPPORTED_DTYPES)
    _check_weights("dw1", dw1, SEP_SIZES, C, dev, True)
    _check_weights("w1", w1, SEP_SIZES, C, dev, False)
    _check_weights("dw2", dw2, SEP_SIZES, C, dev, True)
    _check_weights("dwd", dwd, DIL_SIZES, C, dev, True)
    check_tensor("m", m, device=dev, shape=(B, C, NUM_OPS * C), dtypes=(torch.float32,))
    if C > MAX_CHANNELS:
        raise ValueError(f"the fused MEFC backward supports at most {MAX_CHANNELS} channels, got {C}")


# torch.ones(9 * C) per (C, device): the dilated taps' packed weights end with the unit weights of the
# identity (a read-only operand of torch.cat, never written). Built anew, not kept, under a dispatch
# mode (fake tensors, op recorders), in inference mode and during a CUDA graph capture (whose
# allocations belong to the graph's memory pool).
_UNIT_TAPS: dict = {}


def _unit_taps(C: int, device: torch.device) -> torch.Tensor:
    if is_in_torch_dispatch_mode() or torch.is_inference_mode_enabled() or (
            device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
        return torch.ones(9 * C, device=device)
    key = (C, device)
    ones = _UNIT_TAPS.get(key)
    if ones is None:
        ones = _UNIT_TAPS[key] = torch.ones(9 * C, device=device)
    return ones


def _pack(ws, extra: torch.Tensor | None = None) -> torch.Tensor:
    """Depthwise weights [C, 1, k, k] packed into one fp32 vector (op after op, c * k * k + tap)."""
    parts = [w.detach().to(torch.float32).reshape(-1) for w in ws]
    if extra is not None:
        parts.append(extra)
    return torch.cat(parts)


def _unpack_taps(total: torch.Tensor, sizes, C: int) -> tuple[torch.Tensor, ...]:
    """[TAPS, C] summed partials -> one contiguous [C, 1, k, k] gradient per op."""
    out, row = [], 0
    for k in sizes:
        out.append(total[row: row + k * k].t().contiguous().view(C, 1, k, k))
        row += k * k
    return tuple(out)


def _full_tile(C: int, interpreter: bool = False) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_N) of the full-channel kernels: all channels, TILE elements."""
    block_c = max(32, next_pow2(C))  # (16 would only add compile configurations: C <= 16 is no MEFC width)
    if interpreter:
        return block_c, INTERPRETER_TILE // block_c
    # at most 64 pixels: the C <= 32 tiles stay within 128 registers at 8 warps
    return block_c, min(64, TILE // block_c)


def _wide_tile(C: int, interpreter: bool = False) -> tuple[int, int, int]:
    """(BLOCK_C, BLOCK_N, warps) of the dz and outer-product kernels: at least 32 pixels, so a warp's
    lanes sit on one row (a 16-pixel row puts a warp on 2: every tap load 2 half-used wavefronts);
    dz's [BLOCK_C, BLOCK_N] accumulators then take 16 warps at C > 64 (8 elements per thread)."""
    block_c, block_n = _full_tile(C, interpreter)
    if interpreter or block_n >= 32:
        return block_c, block_n, NUM_WARPS
    return block_c, 32, NUM_WARPS * block_c * 32 // TILE


def _chunks(n_tiles: int, programs_per_chunk: int) -> tuple[int, int]:
    """(n_chunks, tiles_per_chunk) of a chunked reduction: about TARGET_PROGRAMS programs at batch 1,
    a function of the shape only (so the summation order never depends on the GPU)."""
    want = max(1, min(n_tiles, cdiv(TARGET_PROGRAMS, programs_per_chunk)))
    per = cdiv(n_tiles, want)
    return cdiv(n_tiles, per), per


def mefc_step_bwd(g, s, s_out, dw1, w1, dw2, dwd, m, needs_input_grad: bool = True):
    """Gradients of one MEFC step ``s_out = relu(relu(sum_o m_o z_o(s)) + s)`` (module docstring).

    ``g``: dL/ds_out, ``s``: the step input, ``s_out``: its output, all [B, C, H, W], any strides,
    fp32/fp16/bf16; the weights as the original parameter tensors (``dw1``, ``dw2``: 4 x [C, 1, k, k]
    for k = 1, 3, 5, 7; ``w1``: 4 x [C, C, 1, 1]; ``dwd``: 3 x [C, 1, k, k] for k = 3, 5, 7); ``m``:
    [B, C, 8C] fp32. Returns ``(ds, d_dw1, d_w1, d_dw2, d_dwd, dm)``: ds in s's dtype (None unless
    ``needs_input_grad``), the others fp32 shaped like the weights, dm [B, C, 8C]; all contiguous.
    """
    check_inputs(g, s, s_out, dw1, w1, dw2, dwd, m)
    B, C, H, W = s.shape
    N = H * W
    dev, dt_ = s.device, s.dtype
    if s.numel() == 0:
        zeros = lambda ws: tuple(torch.zeros(w.shape, device=dev) for w in ws)  # noqa: E731
        return (torch.zeros((B, C, H, W), device=dev, dtype=dt_) if needs_input_grad else None, zeros(dw1),
                zeros(w1), zeros(dw2), zeros(dwd), torch.zeros((B, C, NUM_OPS * C), device=dev))
    g = _fit_plane_offsets("g", g if g.dtype == dt_ else g.to(dt_))
    s = _fit_plane_offsets("s", s)
    s_out = _fit_plane_offsets("s_out", s_out)
    prec = conv_fp32_precision()
    interp = interpreter_tiles()
    block_c, wide_n, dz_warps = _wide_tile(C, interp)
    n_wide = cdiv(N, wide_n)
    dw_block_c, dw_block_n = (INTERPRETER_DW_BLOCK_C, INTERPRETER_DW_BLOCK_N) if interp else (DW_BLOCK_C, DW_BLOCK_N)
    bk = channel_chunk(C, H, W)  # BLOCK_K (larger under the interpreter)
    n_kc = cdiv(C, bk)
    with device_guard(s):
        t = _fit_plane_offsets("t", sep_inner_fwd(s, dw1, w1))
        wsep2 = _pack(dw2)
        wdil = _pack(dwd, _unit_taps(C, dev))
        wsep1 = _pack(dw1)
        w1d = torch.stack([w.detach().to(torch.float32).reshape(C, C) for w in w1])
        dpre = torch.empty((B, C, N), device=dev, dtype=dt_)
        dz = torch.empty((B, NUM_OPS * C, N), device=dev, dtype=dt_)
        opts = dict(num_warps=NUM_WARPS, num_stages=NUM_STAGES, **LAUNCH_OPTIONS)
        tap_opts = dict(num_warps=TAP_NUM_WARPS, num_stages=NUM_STAGES, **LAUNCH_OPTIONS)
        # 1. dpre, dz
        launch_kernel(_mefc_bwd_dz_kernel, (n_wide, B),
            g, s, s_out, t, m, wsep2, wdil, dpre, dz, C, N, H, W, *g.stride(), *s.stride(), *s_out.stride(),
            *t.stride(), *m.stride(), PREC=prec, BLOCK_C=block_c, BLOCK_K=bk, BLOCK_N=wide_n,
            **{**opts, "num_warps": dz_warps},
        )
        # 2. dm: ops 0..3 (z from t) and 4..7 (z from s) into one partial buffer each
        n_ch, per = _chunks(n_wide, 4 * n_kc * B)
        dm_parts = []
        for from_t in (True, False):
            part = torch.empty((B, n_ch, C, 4 * C), device=dev, dtype=torch.float32)
            launch_kernel(_mefc_bwd_outer_kernel, (n_ch, 4 * n_kc, B),
                dpre, s, t, wsep2 if from_t else wdil, part, C, N, H, W, C, per, *s.stride(), *t.stride(),
                G_PER_OP=False, FROM_T=from_t, K0=1 if from_t else 3, DIL0=1 if from_t else 2,
                HAS_POOL=not from_t, PREC=prec, BLOCK_C=block_c, BLOCK_K=bk, BLOCK_N=wide_n,
                **{**opts, "maxnreg": OUTER_MAXNREG},
            )
            dm_parts.append(part.sum(1))  # fixed-order sum over chunks: deterministic
        dm = torch.cat(dm_parts, dim=2)
        # 3. dt, du of the sep ops
        dt = torch.empty((B, 4 * C, N), device=dev, dtype=dt_)
        du = torch.empty((B, 4 * C, N), device=dev, dtype=dt_)
        launch_kernel(_mefc_bwd_sep_kernel, (n_wide, 4, B),
            dz, t, wsep2, w1d, dt, du, C, N, H, W, *t.stride(), PREC=prec, BLOCK_C=block_c, BLOCK_K=bk,
            BLOCK_N=wide_n, **{**tap_opts, "maxnreg": SEP_MAXNREG},
        )
        # 4. dW1_o = sum_p dt_o (dw1_o s)^T
        part = torch.empty((B, n_ch, C, 4 * C), device=dev, dtype=torch.float32)
        launch_kernel(_mefc_bwd_outer_kernel, (n_ch, 4 * n_kc, B),
            dt, s, t, wsep1, part, C, N, H, W, 4 * C, per, *s.stride(), *t.stride(),
            G_PER_OP=True, FROM_T=False, K0=1, DIL0=1, HAS_POOL=False, PREC=prec, BLOCK_C=block_c,
            BLOCK_K=bk, BLOCK_N=wide_n, **{**opts, "maxnreg": OUTER_MAXNREG},
        )
        dw1_full = part.sum((0, 1))  # [C_out, 4 * C_in]
        d_w1 = tuple(dw1_full[:, o * C:(o + 1) * C].contiguous().view(C, C, 1, 1) for o in range(4))
        # 5. ds
        dw_opts = dict(num_warps=NUM_WARPS, num_stages=NUM_STAGES, **LAUNCH_OPTIONS)
        n_dw_tiles = cdiv(N, dw_block_n)
        n_cb = cdiv(C, dw_block_c)
        ds_block_c, ds_block_n = (dw_block_c, dw_block_n) if interp else (DS_BLOCK_C, DS_BLOCK_N)
        ds = None
        if needs_input_grad:
            ds = torch.empty((B, C, H, W), device=dev, dtype=dt_)
            launch_kernel(_mefc_bwd_ds_kernel, (cdiv(N, ds_block_n), cdiv(C, ds_block_c), B),
                g, s_out, du, dz, wsep1, wdil, ds, C, N, H, W, *g.stride(), *s_out.stride(),
                BLOCK_C=ds_block_c, BLOCK_N=ds_block_n, **tap_opts,
            )
        # 6. depthwise weight gradients: (G, its first row, X, X's op stride, sizes, dilation)
        sx = s.stride()
        groups = (
            (dz, NUM_OPS * C, 0, t, t.stride(), SEP_SIZES, 1, 1),
            (du, 4 * C, 0, s, (sx[0], 0, *sx[1:]), SEP_SIZES, 1, 1),
            (dz, NUM_OPS * C, 4 * C, s, (sx[0], 0, *sx[1:]), DIL_SIZES, 3, 2),
        )
        grads = []
        for gbuf, g_ch, row0, x, xs, sizes, k0, dil in groups:
            taps = sum(k * k for k in sizes)
            n_ch2, per2 = _chunks(n_dw_tiles, len(sizes) * n_cb * B)
            part = torch.empty((B * n_ch2, taps, C), device=dev, dtype=torch.float32)
            launch_kernel(_mefc_bwd_dwgrad_kernel, (n_ch2, len(sizes) * n_cb, B),
                gbuf, x, part, C, N, H, W, g_ch, row0, per2, taps, *xs, K0=k0, DIL=dil,
                BLOCK_C=dw_block_c, BLOCK_N=dw_block_n, BLOCK_T=next_pow2(sizes[-1] ** 2), **dw_opts,
            )
            grads.append(_unpack_taps(part.sum(0), sizes, C))
        d_dw2, d_dw1, d_dwd = grads
    return ds, d_dw1, d_w1, d_dw2, d_dwd, dm


# ----------------------------------------------------------------------------------------------
# Every configuration the launcher can choose
# ----------------------------------------------------------------------------------------------


def _full_tiles():
    """Every (BLOCK_C, BLOCK_N) the full-channel kernels take on a GPU (C = 1 .. MAX_CHANNELS)."""
    return sorted({_full_tile(c) for c in range(1, MAX_CHANNELS + 1)})


def _wide_tiles():
    """_wide_tile for each of :func:`_full_tiles` (the same BLOCK_C, in the same order)."""
    return [_wide_tile(block_c) for block_c, _ in _full_tiles()]


@register_compile_configs
def _compile_configs():
    i32 = lambda *names: {n: "i32" for n in names}  # noqa: E731
    s4 = lambda p: i32(*(f"stride_{p}{a}" for a in "bchw"))  # noqa: E731
    t5 = i32(*(f"stride_t{a}" for a in ("b", "o", "c", "h", "w")))
    for dtype in ("float32", "float16", "bfloat16"):
        precs = ("tf32", "ieee") if dtype == "float32" else ("ieee",)
        for prec in precs:
            for (block_c, block_n), (_, wide_n, dz_warps) in zip(_full_tiles(), _wide_tiles()):
                full = {"PREC": prec, "BLOCK_C": block_c, "BLOCK_K": BLOCK_K, "BLOCK_N": block_n}
                wide = {**full, "BLOCK_N": wide_n}
                yield CompileConfig(
                    _mefc_bwd_dz_kernel,
                    {"g_ptr": ptr(dtype), "s_ptr": ptr(dtype), "so_ptr": ptr(dtype), "t_ptr": ptr(dtype),
                     "m_ptr": "*fp32", "wsep_ptr": "*fp32", "wdil_ptr": "*fp32", "dpre_ptr": ptr(dtype),
                     "dz_ptr": ptr(dtype), **i32("C", "N", "H", "W"), **s4("g"), **s4("s"), **s4("o"), **t5,
                     **i32("stride_mb", "stride_mc", "stride_mk")},
                    wide, num_warps=dz_warps, num_stages=NUM_STAGES, tag=dtype,
                )
                for g_per_op, from_t, k0, dil, pool in ((False, True, 1, 1, False), (False, False, 3, 2, True),
                                                       (True, False, 1, 1, False)):
                    yield CompileConfig(
                        _mefc_bwd_outer_kernel,
                        {"gr_ptr": ptr(dtype), "s_ptr": ptr(dtype), "t_ptr": ptr(dtype), "w_ptr": "*fp32",
                         "part_ptr": "*fp32", **i32("C", "N", "H", "W", "G_CH", "tiles_per_chunk"), **s4("s"), **t5},
                        {"G_PER_OP": g_per_op, "FROM_T": from_t, "K0": k0, "DIL0": dil, "HAS_POOL": pool, **wide},
                        num_warps=NUM_WARPS, num_stages=NUM_STAGES, tag=dtype, extra={"maxnreg": OUTER_MAXNREG},
                    )
                yield CompileConfig(
                    _mefc_bwd_sep_kernel,
                    {"dz_ptr": ptr(dtype), "t_ptr": ptr(dtype), "w2_ptr": "*fp32", "w1_ptr": "*fp32",
                     "dt_ptr": ptr(dtype), "du_ptr": ptr(dtype), **i32("C", "N", "H", "W"), **t5},
                    wide, num_warps=TAP_NUM_WARPS, num_stages=NUM_STAGES, tag=dtype,
                    extra={"maxnreg": SEP_MAXNREG},
                )
        yield CompileConfig(
            _mefc_bwd_ds_kernel,
            {"g_ptr": ptr(dtype), "so_ptr": ptr(dtype), "du_ptr": ptr(dtype), "dz_ptr": ptr(dtype),
             "w1_ptr": "*fp32", "wd_ptr": "*fp32", "ds_ptr": ptr(dtype), **i32("C", "N", "H", "W"), **s4("g"),
             **s4("o")},
            {"BLOCK_C": DS_BLOCK_C, "BLOCK_N": DS_BLOCK_N}, num_warps=TAP_NUM_WARPS, num_stages=NUM_STAGES, tag=dtype,
        )
        for k0, dil in ((1, 1), (3, 2)):
            yield CompileConfig(
                _mefc_bwd_dwgrad_kernel,
                {"gr_ptr": ptr(dtype), "x_ptr": ptr(dtype), "part_ptr": "*fp32",
                 **i32("C", "N", "H", "W", "G_CH", "g_row0", "tiles_per_chunk", "TAPS"),
                 **i32(*(f"stride_x{a}" for a in ("b", "o", "c", "h", "w")))},
                {"K0": k0, "DIL": dil, "BLOCK_C": DW_BLOCK_C, "BLOCK_N": DW_BLOCK_N, "BLOCK_T": 64},
                num_warps=NUM_WARPS, num_stages=NUM_STAGES, tag=dtype,
            )
