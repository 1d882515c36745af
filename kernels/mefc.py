"""MEFC (the mixture-of-experts feature compensator): the forward kernels of one step.

One step of the original ``GroupOLs`` on its input s [B, C, H, W] with per-sample op weights w [B, 8]:

    s_out = relu(relu(W_out cat_o(w_o * op_o(s))) + s)

with the 8 ops sep_conv k = 1, 3, 5, 7 (depthwise k -> 1x1 W1 -> ReLU -> depthwise k -> 1x1 W2),
dil_conv k = 3, 5, 7 (depthwise k, dilation 2, padding k - 1 -> 1x1) and avg_pool 3x3
(count_include_pad=False). Everything after the inner ReLU is linear, so per sample the 8C-channel
concatenation, the eight scalings, the ops' last 1x1s and W_out are one [C, 8C] matrix
``m[b][:, oC:(o+1)C] = W_out[:, oC:(o+1)C] * w[b, o] @ W2_o`` (identity W2 for the pooling), built in
torch by the caller (a few tiny einsums). With

    t_o = relu(W1_o dw1_o(s))        o = 0..3      (:func:`sep_inner_fwd`, ``_mefc_inner_kernel``)
    z_o = dw2_o(t_o)                 o = 0..3
    z_o = dwd_o(s)                   o = 4..6      (dilation 2)
    z_7 = avgpool3x3(s)
    s_out = relu(relu(sum_o m_o z_o) + s)          (``_mefc_step_kernel``)

Layout: a program owns one pixel tile of BLOCK_H rows x BLOCK_W = 32 columns of one image (a warp's
32 lanes along W, one element each: every stencil tap is a 128-byte coalesced row load, not the
4-elements-per-thread layout whose lanes sit 16 bytes apart) and ALL C output channels (CP, the next
power of two, rows in registers), so no stencil is recomputed per output-channel tile. The input
channels run in chunks of BLOCK_K = 16 (the interpreter's: up to 64, ``channel_chunk``): a chunk's
depthwise taps are accumulated in registers, then ``tl.dot`` applies the matching [CP, 16] slice of W1
(inner) or m (step) to the [16, pixels] chunk.
The ops run one after the other, each with a single [16, pixels] tap accumulator (the pooling is a
3x3 depthwise of ones scaled by 1/count): sharing the dilated 7x7 pass among the 3x3/5x5/7x7 would
load 58 instead of 92 s-taps per channel and pixel, but its three live accumulators and four m tiles
spilled under the 128-register cap. Neighbouring rows/columns a tap reads belong to other
tiles and come from L1/L2 (compulsory DRAM traffic counts each tensor once).

Grids are one-dimensional (program -> (sample, tile[, op])), so no grid dimension meets CUDA's 65535
limit at any image size; per-image offsets are int64 scalars (sample, tile origin, channel rows)
plus small int32 offsets inside a tile, so a tensor may span more than 2**31 elements.

Bytes moved per step (DRAM, activations; one channel plane = B*H*W elements of elem_size bytes;
m and the weights, B*8C^2*4 + ~260 C floats, are < 1% and left out), :func:`traffic_bytes`:

  fused (this module)                          reads        writes       planes
    sep_inner_fwd     s (halo from cache)      C            4C (t)       5C
    step kernel       t, s (taps, residual)    4C + C       C            6C
    total                                      6C           5C           11C
  original (eager PyTorch, per step)
    sep_conv x4       dw, 1x1, ReLU, dw, 1x1   4 x 5C       4 x 5C       40C
    dil_conv x3       dw, 1x1                  3 x 2C       3 x 2C       12C
    avg_pool                                   C            C            2C
    x w_o (8 ops)                              8C           8C           16C
    cat                                        8C           8C           16C
    _out (1x1 8C -> C), ReLU                   8C + C       C + C        11C
    + s, ReLU                                  2C + C       C + C        5C
    total                                                                102C

  1x48x256x256 fp32 (plane 0.262 MB): fused 138 MB, original 1284 MB per step (9.3x fewer bytes)
  1x96x256x256 fp32:                  fused 277 MB, original 2567 MB per step

Work per pixel and channel: 84 + 84 + 83 + 9 stencil FMAs (CUDA cores) and 4C + 8C dot FMAs
(tensor cores for fp16/bf16 and for fp32 under TF32; exact FMA when PyTorch disables TF32). Dots
that replace convolutions (W1, m) follow PyTorch's cuDNN TF32 setting, read at launch
(:func:`~drsformer_fast.kernels._utils.conv_fp32_precision`).

As launched on sm_90 (triton.compile with the launch's constexprs, specialisation and maxnreg=128):
  1x48x256x256: CP=64, 2x32-pixel tiles, 8 warps; inner 4096 programs, 105 registers (fp32) / 104
                (bf16); step 1024 programs, 124 / 116 registers; 16 resident warps per SM; no spills
  1x96x256x256: CP=128, 1x32-pixel tiles, 8 warps; inner 8192 programs, 96 / 96 registers; step
                2048 programs, 111 / 105 registers; 16 resident warps per SM; no spills
Tap loads are one fp32/bf16 element per lane along W (TTGIR layout sizePerThread [1, 1],
threadsPerWarp [1, 32]); the dots are HGMMA (TF32 or bf16) or FFMA ("ieee").
Predicted (a model, not a measurement): the kernels are L1-bound, not HBM-bound. Per channel and
pixel they issue 84 (inner) + 84 + 92 (step) = 260 tap loads; 1x48x256x256 fp32 is 25.6 M warp
loads, ~2 L1 wavefronts each (a shifted 128-byte row straddles two lines): ~220 us per step on an
H100 against ~41 us for its 138 MB at 3.35 TB/s (the original's 1284 MB are >= 380 us). Fewer
loads need data reuse across taps (a halo tile in shared memory), which Triton does not expose.

Not built: t never reaching DRAM. Rebuilding t inside the step kernel costs k^2 W1 products per
output (49 for the 7x7), compute-bound by arithmetic; keeping a t halo tile on chip needs indexed
shared memory, which Triton does not expose. It would save 8C of the 11C planes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

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
    multiprocessor_count,
    next_pow2,
)

SEP_SIZES = (1, 3, 5, 7)
DIL_SIZES = (3, 5, 7)
NUM_OPS = 8
MAX_CHANNELS = 128
BLOCK_K = 16
BLOCK_W = 32
NUM_STAGES = 1  # the dots' operands come from register stencils, not straight from loads: nothing to pipeline
# the [CP, pixels] fp32 accumulator is at most 4096 values (16 registers a thread at 8 warps): the
# epilogue holds it beside the residual and their 64-bit addresses within the register cap
ACC_ELEMENTS = 4096
# Register cap: >= 16 resident warps per SM (<= 128 registers at 8 warps, or 4 CTAs of 4 warps). Without
# it ptxas unrolls the tap loops for loads in flight up to 180-240 registers; with it, no spills.
MAXNREG = 128
_OPTIONS = {**LAUNCH_OPTIONS, "maxnreg": MAXNREG}
# pixel tiles the launcher can choose (BLOCK_H rows of BLOCK_W columns)
BLOCK_HS = (1, 2)
# Triton's CPU interpreter pays per executed operation and program, not per element: there the
# launcher takes tiles of up to 32 rows (at most 2**16 accumulator elements), so a test image is one
# or two tiles. The tests run the GPU's tiles (BLOCK_HS) in the interpreter too, under gpu_tiles().
INTERPRETER_BLOCK_H = 32
INTERPRETER_ACC_ELEMENTS = 2**16
# and channel chunks of up to 64 (the next power of two of C; BLOCK_K at least): fewer chunk iterations
INTERPRETER_BLOCK_K = 64
_INT32_LIMIT = 2**31 - 1


@triton.jit
def _mefc_inner_kernel(
    s_ptr,  # s: [B, C, H, W], any strides
    dw_ptr,  # dw1 of the 4 sep convs packed: [84 * C] fp32, op o's [C, k*k] at C * o(2o-1)(2o+1)/3
    w1_ptr,  # W1 of the 4 sep convs: [4, C, C], compute dtype, contiguous
    t_ptr,  # t: [B, 4, C, H, W] contiguous, s's dtype
    C, H, W,
    n_tw,  # tiles along W
    n_tiles,  # tiles per image
    stride_sb, stride_sc, stride_sh, stride_sw,
    CP: tl.constexpr,  # next power of two >= C (>= 16)
    BLOCK_K: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """t[:, o] = relu(W1_o dw1_o(s)) for one (sample, tile, op): program id = (b * n_tiles + tile) * 4 + o,
    so the four ops of a tile run side by side and share s's halo in L1/L2.
    Bytes: reads s once (C planes; the 4 ops' re-reads hit the cache), writes t (4C planes)."""
    BLOCK_N: tl.constexpr = BLOCK_H * BLOCK_W
    pid = tl.program_id(0)
    i_o = pid % 4
    i_bt = pid // 4
    i_b = (i_bt // n_tiles).to(tl.int64)
    i_t = i_bt % n_tiles
    h0 = (i_t // n_tw) * BLOCK_H
    w0 = (i_t % n_tw) * BLOCK_W
    # pixel vectors as [1, BLOCK_N] rows: they broadcast in the taps' own layout (no conversions per tap)
    # 1 pixel per thread along W: coalesced tap loads (kernels/_utils.py, stencil layout)
    o_n = tl.multiple_of(tl.arange(0, BLOCK_N), 1)[None, :]
    o_lh = o_n // BLOCK_W
    o_lw = o_n % BLOCK_W
    o_h = h0 + o_lh
    o_w = w0 + o_lw
    m_n = (o_h < H) & (o_w < W)
    K = 2 * i_o + 1
    R = i_o
    # int64 scalar origin of the tile; int32 offsets inside it
    p_s = s_ptr + i_b * stride_sb + h0.to(tl.int64) * stride_sh + w0.to(tl.int64) * stride_sw
    o_pix = o_lh * stride_sh + o_lw * stride_sw
    p_dw = dw_ptr + C * ((i_o * (2 * i_o - 1) * (2 * i_o + 1)) // 3)
    o_co = tl.arange(0, CP)
    m_co = o_co < C
    p_w1 = w1_ptr + i_o * C * C + o_co[:, None] * C
    b_acc = tl.zeros([CP, BLOCK_N], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_K):
        o_k = c0 + tl.arange(0, BLOCK_K)
        # clamped channels: always in bounds (their W1 columns are masked to zero)
        o_kl = tl.minimum(o_k, C - 1)
        # int64 scalar base of the chunk, int32 offsets inside it
        p_c = p_s + tl.cast(c0, tl.int64) * stride_sc
        o_rel = (o_kl - c0)[:, None] * stride_sc + o_pix
        p_wk = p_dw + o_kl * (K * K)
        b_d = tl.zeros([BLOCK_K, BLOCK_N], dtype=tl.float32)
        for kh in range(0, K):
            dh = kh - R
            m_h = m_n & (o_h + dh >= 0) & (o_h + dh < H)
            for kw in range(0, K):
                dw = kw - R
                m = m_h & (o_w + dw >= 0) & (o_w + dw < W)
                b_x = tl.load(p_c + (dh * stride_sh + dw * stride_sw + o_rel), mask=m, other=0.0).to(tl.float32)
                b_d += tl.load(p_wk + (kh * K + kw))[:, None] * b_x
        b_w1 = tl.load(p_w1 + o_k[None, :], mask=m_co[:, None] & (o_k < C)[None, :], other=0.0)
        b_acc = tl.dot(b_w1, b_d.to(b_w1.dtype), b_acc, input_precision=INPUT_PRECISION)

    b_acc = tl.maximum(b_acc, 0.0)
    N = tl.cast(H, tl.int64) * W
    p_t = t_ptr + (i_b * 4 + i_o) * C * N + h0.to(tl.int64) * W + w0
    p_out = p_t + (o_co.to(tl.int64) * N)[:, None] + (o_lh * W + o_lw)
    tl.store(p_out, b_acc.to(t_ptr.dtype.element_ty), mask=m_co[:, None] & m_n)


@triton.jit
def _mefc_step_kernel(
    s_ptr,  # s: [B, C, H, W], any strides
    t_ptr,  # t: [B, 4, C, H, W] contiguous (sep_inner_fwd's output)
    dw2_ptr,  # dw2 of the 4 sep convs packed: [84 * C] fp32, like dw1
    dwd_ptr,  # the 3 dilated depthwise weights packed: [(9 + 25 + 49) * C] fp32: [C, 9], [C, 25], [C, 49]
    m_ptr,  # m: [B, C, 8C], compute dtype, any strides
    out_ptr,  # s_out: [B, C, H, W] contiguous, s's dtype
    C, H, W,
    n_tw,
    n_tiles,
    stride_sb, stride_sc, stride_sh, stride_sw,
    stride_mb, stride_mr, stride_mc,
    CP: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """s_out = relu(relu(sum_o m_o z_o) + s) for one (sample, tile): z_0..3 are dw2 taps of t, z_4..6
    the dilated taps of s, z_7 the pooling of s, each rebuilt per 16-channel chunk and applied by tl.dot.
    Bytes: reads t (4C planes) and s (C: taps and residual), writes s_out (C)."""
    BLOCK_N: tl.constexpr = BLOCK_H * BLOCK_W
    pid = tl.program_id(0)
    i_b = (pid // n_tiles).to(tl.int64)
    i_t = pid % n_tiles
    h0 = (i_t // n_tw) * BLOCK_H
    w0 = (i_t % n_tw) * BLOCK_W
    # pixel vectors as [1, BLOCK_N] rows: they broadcast in the taps' own layout (no conversions per tap)
    # 1 pixel per thread along W: coalesced tap loads (kernels/_utils.py, stencil layout)
    o_n = tl.multiple_of(tl.arange(0, BLOCK_N), 1)[None, :]
    o_lh = o_n // BLOCK_W
    o_lw = o_n % BLOCK_W
    o_h = h0 + o_lh
    o_w = w0 + o_lw
    m_n = (o_h < H) & (o_w < W)
    o_co = tl.arange(0, CP)
    m_co = o_co < C
    N = tl.cast(H, tl.int64) * W
    p_m = m_ptr + i_b * stride_mb + (o_co * stride_mr)[:, None]
    b_acc = tl.zeros([CP, BLOCK_N], dtype=tl.float32)

    # ops 0-3: the second depthwise of each sep conv, on t (dense: strides C*N, N, W, 1)
    o_tpix = o_lh * W + o_lw
    for o in range(0, 4):
        K = 2 * o + 1
        R = o
        p_t = t_ptr + (i_b * 4 + o) * C * N + h0.to(tl.int64) * W + w0
        p_dw = dw2_ptr + C * ((o * (2 * o - 1) * (2 * o + 1)) // 3)
        for c0 in range(0, C, BLOCK_K):
            o_k = c0 + tl.arange(0, BLOCK_K)
            o_kl = tl.minimum(o_k, C - 1)
            p_c = p_t + tl.cast(c0, tl.int64) * N
            o_rel = (o_kl - c0)[:, None] * (H * W) + o_tpix  # < 16 H W: the launcher checks it fits
            p_wk = p_dw + o_kl * (K * K)
            b_z = tl.zeros([BLOCK_K, BLOCK_N], dtype=tl.float32)
            for kh in range(0, K):
                dh = kh - R
                m_h = m_n & (o_h + dh >= 0) & (o_h + dh < H)
                for kw in range(0, K):
                    dw = kw - R
                    m = m_h & (o_w + dw >= 0) & (o_w + dw < W)
                    b_x = tl.load(p_c + (dh * W + dw + o_rel), mask=m, other=0.0).to(tl.float32)
                    b_z += tl.load(p_wk + (kh * K + kw))[:, None] * b_x
            b_m = tl.load(p_m + ((o * C + o_k) * stride_mc)[None, :], mask=m_co[:, None] & (o_k < C)[None, :],
                          other=0.0)
            b_acc = tl.dot(b_m, b_z.to(b_m.dtype), b_acc, input_precision=INPUT_PRECISION)

    # ops 4-7 on s, one at a time (one accumulator: sharing the dilated taps between three live
    # accumulators spilled at 128 registers): dil_conv 3/5/7 (dilation 2, padding k - 1) and the pooling,
    # a 3x3 "depthwise" of ones scaled by 1 / (taps inside the image)
    p_s = s_ptr + i_b * stride_sb + h0.to(tl.int64) * stride_sh + w0.to(tl.int64) * stride_sw
    o_pix = o_lh * stride_sh + o_lw * stride_sw
    cnt = ((tl.minimum(o_h + 1, H - 1) - tl.maximum(o_h - 1, 0) + 1)
           * (tl.minimum(o_w + 1, W - 1) - tl.maximum(o_w - 1, 0) + 1))
    b_rcnt = 1.0 / tl.maximum(cnt, 1).to(tl.float32)
    for o in range(4, 8):
        K = tl.where(o == 7, 3, 2 * o - 5)  # 3, 5, 7, then 3 for the pool
        D = tl.where(o == 7, 1, 2)  # dilation
        R = K // 2
        # dwd packed: [C, 9] at 0, [C, 25] at 9C, [C, 49] at 34C; the pool's weights are ones (masked loads)
        p_dw = dwd_ptr + C * tl.where(o == 4, 0, tl.where(o == 5, 9, 34))
        b_f = tl.where(o == 7, b_rcnt, 1.0)
        for c0 in range(0, C, BLOCK_K):
            o_k = c0 + tl.arange(0, BLOCK_K)
            o_kl = tl.minimum(o_k, C - 1)
            m_w = (o_kl >= 0) & (o < 7)
            p_c = p_s + tl.cast(c0, tl.int64) * stride_sc
            o_rel = (o_kl - c0)[:, None] * stride_sc + o_pix
            p_wk = p_dw + o_kl * (K * K)
            b_z = tl.zeros([BLOCK_K, BLOCK_N], dtype=tl.float32)
            for kh in range(0, K):
                dh = D * (kh - R)
                m_h = m_n & (o_h + dh >= 0) & (o_h + dh < H)
                for kw in range(0, K):
                    dw = D * (kw - R)
                    m = m_h & (o_w + dw >= 0) & (o_w + dw < W)
                    b_x = tl.load(p_c + (dh * stride_sh + dw * stride_sw + o_rel), mask=m, other=0.0).to(tl.float32)
                    b_z += tl.load(p_wk + (kh * K + kw), mask=m_w, other=1.0)[:, None] * b_x
            b_z = b_z * b_f
            b_m = tl.load(p_m + ((o * C + o_k) * stride_mc)[None, :], mask=m_co[:, None] & (o_k < C)[None, :],
                          other=0.0)
            b_acc = tl.dot(b_m, b_z.to(b_m.dtype), b_acc, input_precision=INPUT_PRECISION)

    # epilogue: the _out ReLU, the residual, the step's ReLU
    m_out = m_co[:, None] & m_n
    b_res = tl.load(p_s + (o_co.to(tl.int64) * stride_sc)[:, None] + o_pix, mask=m_out, other=0.0).to(tl.float32)
    b_out = tl.maximum(tl.maximum(b_acc, 0.0) + b_res, 0.0)
    p_out = out_ptr + i_b * C * N + h0.to(tl.int64) * W + w0
    tl.store(p_out + (o_co.to(tl.int64) * N)[:, None] + o_tpix, b_out.to(out_ptr.dtype.element_ty), mask=m_out)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------


def channels_pow2(C: int) -> int:
    """CP: the register rows holding all C output channels (a power of two, >= 16 for tl.dot)."""
    return max(16, next_pow2(C))


def max_block_h(C: int) -> int:
    """The largest tile height the accumulator budget allows at C channels."""
    return max(1, min(BLOCK_HS[-1], ACC_ELEMENTS // (channels_pow2(C) * BLOCK_W)))


def num_warps_for(cp: int, block_h: int) -> int:
    # 4 values a thread for a [16, pixels] tap tile at 64 pixels; 8 warps also once the accumulator is large
    return 8 if block_h * BLOCK_W >= 64 or cp * block_h * BLOCK_W >= 4096 else 4


def launch_config(batch: int, channels: int, height: int, width: int, sm_count: int) -> tuple[int, int, int]:
    """(CP, BLOCK_H, num_warps) for one step: the largest tile the register budget allows, halved while
    the step kernel would have fewer than two programs per SM (small images keep the GPU busy)."""
    cp = channels_pow2(channels)
    n_tw = cdiv(width, BLOCK_W)
    bh = max_block_h(channels)
    while bh > 1 and batch * cdiv(height, bh) * n_tw < 2 * sm_count:
        bh //= 2
    return cp, bh, num_warps_for(cp, bh)


def interpreter_config(channels: int, height: int) -> tuple[int, int, int]:
    """(CP, BLOCK_H, num_warps) under Triton's interpreter: the fewest programs (module constants)."""
    cp = channels_pow2(channels)
    bh = min(INTERPRETER_BLOCK_H, next_pow2(height), max(1, INTERPRETER_ACC_ELEMENTS // (cp * BLOCK_W)))
    return cp, bh, 4


def channel_chunk(channels: int, height: int, width: int) -> int:
    """BLOCK_K, the channels a chunk's depthwise taps cover: the GPU's 16, or under the interpreter
    the next power of two of C up to INTERPRETER_BLOCK_K while the chunk's int32 offsets fit."""
    if not interpreter_tiles():
        return BLOCK_K
    bk = max(BLOCK_K, min(INTERPRETER_BLOCK_K, next_pow2(channels)))
    return bk if bk * height * width <= _INT32_LIMIT else BLOCK_K


def _config(s: torch.Tensor) -> tuple[int, int, int]:
    B, C, H, W = s.shape
    if interpreter_tiles():
        return interpreter_config(C, H)
    return launch_config(B, C, H, W, multiprocessor_count(s.device))


def _check_weights(name: str, ws, sizes, C: int, device, *, pointwise: bool = False) -> None:
    if not isinstance(ws, (list, tuple)) or len(ws) != len(sizes):
        raise ValueError(f"{name} must be a tuple of {len(sizes)} tensors (one per op), got {ws!r:.80}")
    for i, (w, k) in enumerate(zip(ws, sizes)):
        shape = (C, C, 1, 1) if pointwise else (C, 1, k, k)
        check_tensor(f"{name}[{i}]", w, ndim=4, device=device)
        if tuple(w.shape) != shape:
            what = "a 1x1 convolution" if pointwise else f"a depthwise {k}x{k} convolution"
            raise ValueError(f"{name}[{i}] must have shape {list(shape)} ({what} on {C} channels, the input's), "
                             f"got {tuple(w.shape)}")
        if not w.is_floating_point():
            raise TypeError(f"{name}[{i}] must be floating point, got {w.dtype}")


def _check_s(s: torch.Tensor) -> None:
    check_tensor("s", s, ndim=4, dtypes=SUPPORTED_DTYPES)
    C = s.shape[1]
    if C > MAX_CHANNELS:
        raise ValueError(f"MEFC kernels take at most {MAX_CHANNELS} channels, got {C}")
    if 16 * s.shape[2] * s.shape[3] > _INT32_LIMIT:
        # offsets inside a 16-channel chunk of t are int32 (8K, 33 MP, is a quarter of this)
        raise ValueError(f"MEFC kernels take images of at most 2**27 pixels, got {s.shape[2]}x{s.shape[3]}")


def _tile_offsets_fit(t: torch.Tensor, block_h: int, block_k: int) -> bool:
    """Offsets inside a tile (a chunk of block_k channels x the tile plus a 6-pixel halo) are int32 in
    the kernels."""
    _, sc, sh, sw = (abs(x) for x in t.stride())
    return block_k * sc + (block_h + 12) * sh + (BLOCK_W + 12) * sw <= _INT32_LIMIT


def _prepare_s(s: torch.Tensor, block_h: int, block_k: int) -> torch.Tensor:
    # a copy only for strides so large that a tile's own offsets do not fit in int32
    return s if _tile_offsets_fit(s, block_h, block_k) else s.contiguous()


def _pack_depthwise(ws, C: int) -> torch.Tensor:
    """Depthwise weights [C, 1, k, k] -> one dense fp32 vector, op after op ([C, k*k] each): one
    concatenation (plus one conversion for half-precision weights), not one launch per tensor."""
    return torch.cat([w.detach().reshape(C * w.shape[-1] ** 2) for w in ws]).to(torch.float32)


def _compute_dtype(s: torch.Tensor) -> tuple[torch.dtype, str]:
    """(dtype of the dot operands, input_precision): fp32 dots follow PyTorch's TF32 setting for
    convolutions; fp16/bf16 run on tensor cores with fp32 accumulation."""
    if s.dtype == torch.float32:
        return torch.float32, conv_fp32_precision()
    return s.dtype, "ieee"


def _grid_sizes(H: int, W: int, bh: int) -> tuple[int, int]:
    n_tw = cdiv(W, BLOCK_W)
    return n_tw, cdiv(H, bh) * n_tw


def _launch_inner(s: torch.Tensor, dwp: torch.Tensor, w1, cfg, block_k: int) -> torch.Tensor:
    """dwp: dw1 packed by _pack_depthwise ([84 C] fp32)."""
    B, C, H, W = s.shape
    cp, bh, warps = cfg
    dtype, precision = _compute_dtype(s)
    t = torch.empty((B, 4, C, H, W), device=s.device, dtype=s.dtype)
    if t.numel() == 0:
        return t
    w1p = torch.stack([w.detach().reshape(C, C) for w in w1]).to(dtype).contiguous()
    n_tw, n_tiles = _grid_sizes(H, W, bh)
    with device_guard(s):
        launch_kernel(_mefc_inner_kernel, (4 * B * n_tiles,),
            s, dwp, w1p, t, C, H, W, n_tw, n_tiles, *s.stride(),
            CP=cp, BLOCK_K=block_k, BLOCK_H=bh, BLOCK_W=BLOCK_W, INPUT_PRECISION=precision,
            num_warps=warps, num_stages=NUM_STAGES, **_OPTIONS,
        )
    return t


def sep_inner_fwd(s: torch.Tensor, dw1, w1) -> torch.Tensor:
    """The four sep convs' first half: ``t[:, o] = relu(W1_o dw1_o(s))``, o = 0..3 for k = 1, 3, 5, 7.

    ``s``: [B, C, H, W], any strides, fp32/fp16/bf16; ``dw1``: 4 tensors [C, 1, k, k] (padding k // 2);
    ``w1``: 4 tensors [C, C, 1, 1]. Returns t [B, 4, C, H, W] contiguous in s's dtype (fp32 accumulation).
    """
    _check_s(s)
    C = s.shape[1]
    _check_weights("dw1", dw1, SEP_SIZES, C, s.device)
    _check_weights("w1", w1, SEP_SIZES, C, s.device, pointwise=True)
    cfg, bk = _config(s), channel_chunk(*s.shape[1:])
    return _launch_inner(_prepare_s(s, cfg[1], bk), _pack_depthwise(dw1, C), w1, cfg, bk)


def mefc_step_fwd(s: torch.Tensor, dw1, w1, dw2, dwd, m: torch.Tensor) -> torch.Tensor:
    """One MEFC step: ``relu(relu(sum_o m_o z_o) + s)`` (module docstring), i.e. the original's
    ``relu(OperationLayer(s, w) + s)`` given ``m`` built from its weights and w.

    ``s``: [B, C, H, W], any strides, fp32/fp16/bf16; ``dw1``, ``dw2``: the sep convs' two depthwise
    weights, 4 tensors [C, 1, k, k] for k = 1, 3, 5, 7; ``w1``: their first 1x1, 4 tensors
    [C, C, 1, 1]; ``dwd``: the dilated convs' depthwise weights, 3 tensors [C, 1, k, k] for k = 3, 5, 7;
    ``m``: [B, C, 8C] fp32, columns oC:(o+1)C for op o. Returns s_out [B, C, H, W] contiguous in s's
    dtype. Two launches: :func:`sep_inner_fwd` then the step kernel.
    """
    _check_s(s)
    B, C, H, W = s.shape
    _check_weights("dw1", dw1, SEP_SIZES, C, s.device)
    _check_weights("w1", w1, SEP_SIZES, C, s.device, pointwise=True)
    _check_weights("dw2", dw2, SEP_SIZES, C, s.device)
    _check_weights("dwd", dwd, DIL_SIZES, C, s.device)
    check_tensor("m", m, device=s.device, shape=(B, C, NUM_OPS * C))
    if not m.is_floating_point():
        raise TypeError(f"m must be floating point, got {m.dtype}")
    cfg, bk = _config(s), channel_chunk(C, H, W)
    s = _prepare_s(s, cfg[1], bk)
    out = torch.empty((B, C, H, W), device=s.device, dtype=s.dtype)
    if out.numel() == 0:
        return out
    # every depthwise weight in one vector (one launch): dw1 [84 C], dw2 [84 C], dwd [83 C]
    dwp = _pack_depthwise((*dw1, *dw2, *dwd), C)
    t = _launch_inner(s, dwp[: 84 * C], w1, cfg, bk)
    cp, bh, warps = cfg
    dtype, precision = _compute_dtype(s)
    mc = m.detach().to(dtype)
    n_tw, n_tiles = _grid_sizes(H, W, bh)
    with device_guard(s):
        launch_kernel(_mefc_step_kernel, (B * n_tiles,),
            s, t, dwp[84 * C: 168 * C], dwp[168 * C:], mc, out, C, H, W, n_tw, n_tiles,
            *s.stride(), *mc.stride(),
            CP=cp, BLOCK_K=bk, BLOCK_H=bh, BLOCK_W=BLOCK_W, INPUT_PRECISION=precision,
            num_warps=warps, num_stages=NUM_STAGES, **_OPTIONS,
        )
    return out


def traffic_bytes(batch: int, channels: int, height: int, width: int, elem_size: int = 4) -> int:
    """Compulsory DRAM bytes of one :func:`mefc_step_fwd` (module docstring's table): 11 channel planes
    (read s twice, write t, read t, write s_out). Activations only (m and the weights are < 1%)."""
    return 11 * channels * batch * height * width * elem_size


def original_traffic_bytes(batch: int, channels: int, height: int, width: int, elem_size: int = 4) -> int:
    """The same step in the original (eager PyTorch, module docstring's table): 102 channel planes."""
    return 102 * channels * batch * height * width * elem_size


# ----------------------------------------------------------------------------------------------
# Every configuration the launchers can choose
# ----------------------------------------------------------------------------------------------


@register_compile_configs
def _compile_configs():
    ints = ("C", "H", "W", "n_tw", "n_tiles", "stride_sb", "stride_sc", "stride_sh", "stride_sw")
    for dtype in ("float32", "float16", "bfloat16"):
        precisions = ("tf32", "ieee") if dtype == "float32" else ("ieee",)
        for cp in (16, 32, 64, 128):
            for bh in BLOCK_HS:
                if bh > max_block_h(cp):
                    continue
                for precision in precisions:
                    consts = {"CP": cp, "BLOCK_K": BLOCK_K, "BLOCK_H": bh, "BLOCK_W": BLOCK_W,
                              "INPUT_PRECISION": precision}
                    warps = num_warps_for(cp, bh)
                    yield CompileConfig(
                        _mefc_inner_kernel,
                        {"s_ptr": ptr(dtype), "dw_ptr": "*fp32", "w1_ptr": ptr(dtype), "t_ptr": ptr(dtype),
                         **{k: "i32" for k in ints}},
                        consts, num_warps=warps, num_stages=NUM_STAGES, tag=dtype, extra={"maxnreg": MAXNREG},
                    )
                    yield CompileConfig(
                        _mefc_step_kernel,
                        {"s_ptr": ptr(dtype), "t_ptr": ptr(dtype), "dw2_ptr": "*fp32", "dwd_ptr": "*fp32",
                         "m_ptr": ptr(dtype), "out_ptr": ptr(dtype), **{k: "i32" for k in ints},
                         "stride_mb": "i32", "stride_mr": "i32", "stride_mc": "i32"},
                        consts, num_warps=warps, num_stages=NUM_STAGES, tag=dtype, extra={"maxnreg": MAXNREG},
                    )
