"""Mixed-Scale Feed-Forward Network (MSFN) of DRSformer: the stage-2 kernels and the launchers of the
whole block, forward and backward.

With d = dim, h = hidden, y = project_in(x) (2h channels), a = relu(dwconv3x3(y)),
b = relu(dwconv5x5(y)), x1 = cat(a[:h], b[:h]), x2 = cat(a[h:], b[h:]), u = relu(g3(x1)),
v = relu(g5(x2)) (grouped 2h -> h: output j reads input channels 2j, 2j+1), out = project_out(cat(u, v)):

  forward   1. y = W_in x                       cuBLAS matmul (the bias b_in is folded into step 2)
            2. a, b = stage 1                   ``dwconv.depthwise_conv_fwd``: both convolutions from
                                                one read of y, written into one buffer ab [B, 4h, H, W]
            3. out = stage 2 (+ residual)       ``_ffn_fwd_kernel``: per token tile, for each chunk of
                                                u (then v) channels the grouped conv + ReLU in registers,
                                                accumulated into out with tl.dot(W_out[:, chunk], chunk);
                                                cat(u, v) never reaches memory
  backward  (nothing but x and the parameters is saved: y, a, b are recomputed)
            1-2. y, ab as in the forward
            3. du, dv (pre-ReLU), and u, v      ``_ffn_bwd_uv_kernel``: W_out^T dout by tl.dot, u/v
                                                recomputed for the ReLU mask; writes u, v for step 6
            4. d(pre-ReLU a, b)                 ``_ffn_bwd_x_kernel``: transposed grouped conv of du/dv,
                                                g3/g5 weight partials, the stage-1 ReLU mask (a > 0),
                                                written into one buffer dab
            5. dy, stage-1 weight/bias grads    ``dwconv.depthwise_conv_bwd``
            6. dW_out = dout cat(u, v)^T,       cuBLAS (a per-program dW_out partial inside step 3
               dx = W_in^T dy, dW_in = dy x^T   needs a tl.dot reducing over the 128 pixels of a tile,
                                                which spills as an fp32 FMA dot)
Precision. The dots that stand for a convolution (project_out folded into ``_ffn_fwd_kernel``; its
input gradient W_out^T dout in ``_ffn_bwd_uv_kernel``) follow PyTorch's setting for convolutions, as
``nn.Conv2d`` does for the original: in fp32 their ``input_precision`` is ``conv_fp32_precision()``
(``kernels/_utils.py``), read at every launch and passed as a constexpr: "tf32" (tensor cores) under
PyTorch's default ``torch.backends.cudnn.conv.fp32_precision == "tf32"`` (legacy
``cudnn.allow_tf32 = True``), "ieee" (exact fp32 FMA) when the user switches TF32 off. fp16/bf16 dots
are unchanged: tensor cores with fp32 accumulation. The grouped convolutions are FMAs in fp32 (no
dot), and the 1x1 ``project_in`` (forward, input and weight gradients) and project_out's weight
gradient run as cuDNN convolutions (``F.conv2d``, ``aten.convolution_backward``), so they follow the
same setting by construction. Triton's interpreter runs every dot in exact fp32, so the tests see "ieee" numerics.

Small grids. Below 90% of the SMs' worth of (pixel tile x channel tile) programs (the 1x384x32x32
latent: 8 row-quad tiles x 3 = 24 programs for ~20 MB), ``_ffn_fwd_kernel`` splits the hidden chunks
over up to MAX_SPLIT programs, each writing an fp32 partial of project_out; ``_ffn_fwd_reduce_kernel``
sums them in split order (deterministic) and adds the bias and the residual. Latent: 5 splits, 120
programs, + 2 * 5 fp32 planes of d channels (16 MB) of partial traffic, against 24 programs on 132 SMs.

Sizes. Element offsets are int64 wherever a tensor can span 2**31 elements (ab, duv, dab, out, the
residual and dout with any strides); pixel indices are int32 (H*W <= dwconv.MAX_PIXELS); the
(token tile x hidden tile) programs of ``_ffn_bwd_uv_kernel`` are flattened into grid axis 0 (axis 1
allows 65535). No refusal below what memory allows (8K, 1x48x4320x7680, launches within CUDA's limits).

Launch picture on sm_90 (compiled as launched, num_stages 3; batch 1, 256x256 input, fp32 unless
said; before = the kernels before issue 9; t_HBM = compulsory bytes / 3.35 TB/s; FMA = CUDA-core
FFMA at ~33.5 T/s; TF32 tensor-core dots counted at ~120 T FMA/s, half the dense peak):
  kernel              shape         programs    regs     res.warps  bytes   t_HBM   FMA bound        predicted
                                    bef/aft     bef/aft  bef/aft                   bef / aft         bef / aft
  _ffn_fwd            48@256^2      1024        108/109  16/16     158 MB  47 us   41 / 17+6 us     47 / 47 us
  _ffn_fwd            96@256^2      1024        128/127  16/16     318 MB  95 us   130 / 34+26 us   130 / 95 us
  _ffn_fwd (+reduce)  384@32^2      48/144+384  128/127  16/16     20/29MB  6/9 us  48 of 132 SMs    >16 / 9 us
  _ffn_bwd_uv (x2)    48@256^2      4096        86/79    16/24     146 MB  44 us   12 / 3 us        44 / 44 us
  _ffn_bwd_uv (x2)    96@256^2      8192        86/77    16/24     293 MB  87 us   48 / 13 us       87 / 87 us
  _ffn_bwd_x  (x2)    48@256^2      4096        124,96/128,109 16  166 MB  50 us   9 us             50 / 50 us
  bf16 _ffn_fwd       48@256^2      1024        110/112  16/16     79 MB   24 us   17 us (MMA dot)  24 / 24 us
  _ffn_fwd_reduce_kernel: 20-40 registers at 4 warps (64 resident warps). "FMA bound" adds the CUDA-core
  grouped conv and the project_out dot (FFMA before; TF32 tensor cores after, a separate pipe).
Since then (issue 9's stencil layout, kernels/_utils.py): every grouped-conv tap load is coalesced (1
pixel per thread along W), at per-warp L1 factors (static_report) of 2.1 (_ffn_fwd: per tap two
broadcast weight loads per row beside the two taps), 1.3 (_ffn_bwd_uv, 127 registers, 16 resident
warps) and 1.6 (_ffn_bwd_x, now 8 groups per tile: 110 registers, 16 resident warps), fp32 level 1;
absent biases are None pointers (specialised away: no zero-filled buffers, no fill launches).
Images whose ab spans >= 2**31 elements per image (AB64) take 64-bit channel pointers in
_grouped_conv_chunk (at the 128 cap, no spills).
Row quads (kernels/_utils.py, row pairs): ``_ffn_fwd_kernel`` computes four vertically adjacent
pixels per thread (``_grouped_conv_rows``: K + 3 row loads per column shift for the four, one 8-byte
load per tap for the (even, odd) weight pair of ``_weight_pairs``, used by all four), 32 quads x 16
hidden channels per conv tile, 16 warps (4 up to 32 output channels), capped at 128 registers: 16
resident warps per SM (``_fwd_config``: per architecture, sm_80 takes 16 quads; so does the exact-fp32
dot, uncapped at 8 warps up to 64 channels). Static picture,
fp32 at 256x256: level 1 152 -> 49 us predicted (47 us HBM roofline: HBM-bound), decoder level 1
-> 98 us (95), the latent (5 splits, 120 programs) 149 -> 24 us.

Words (fp16/bf16). A 2-byte tap load of one pixel per lane fills half an L1 wavefront, so in bf16
the stage-2 kernels were L1-bound (static model, sm_90, level 1: forward 45 us against 24, du/dv 80
us against 32).
Forward: when ab (the launcher's buffer) and the residual are whole words (``fwd_path``: W even),
``_ffn_fwd_words_kernel`` takes 2 x 2 pixel quads per thread (``_grouped_conv_word_pairs``: per tap
row the 3 words around the pair of both input channels, each input row feeding both output rows, one
8-byte weight-pair load per tap for the four pixels), residual and output as words, the split partial
sums by columns. Both forward kernels read W_out transposed ([2h, D], ``_wo_tile``): a chunk of 16
hidden columns of W_out's own rows is 32-64 bytes per output channel (scalar loads at four rows of
lanes per warp instruction), the transposed rows are D channels wide. Static model (sm_90, as
launched, 96-104 registers at 16 warps): bf16 level 1 45.4 -> 24.4 us (HBM 23.6), decoder
level 1 98.6 -> 49.0 us (HBM 47.5); fp32 (pixels) L1 factor 1.4 -> 1.2, still HBM-bound.
Backward: when dout and
ab are whole aligned 4-byte words (``bwd_uv_path``; ab is the launcher's own buffer, so an even W and
a dense dout), ``_ffn_bwd_uv_words_kernel`` takes pixel pairs per thread instead: per tap row the
3 words around a pair (``_grouped_conv_words``; K <= 5) hold every column shift of both columns,
dout, u/v and du/dv move as words, and the W_out^T dout dot runs once per column. Static model
(sm_90, bf16): level 1 80 -> 33 us, decoder level 1 156 -> 66 us, HBM-bound, 113-117 registers at
the 128 cap (16 resident warps per SM). Its results are bit-identical to the pixel kernel's (same
sums in the same order).

The chunk/cat shuffles are index arithmetic: x1 channel i is ab channel i + h*(i >= h), x2 channel i is
ab channel h + i + h*(i >= h) (when h is odd the middle group straddles the a/b boundary).

Bytes moved (DRAM, activations; weights and per-program partial sums are < 1% and left out), in
channel planes of B*H*W elements; :func:`traffic_bytes` computes them for any shape. The figures in
GB are level 1 of the default model at 256x256: B=1, d=48, h=127, fp32, one plane = 0.262 MB.

  forward                                      reads        writes       planes            GB
  original (eager, 13 kernels)
    project_in                                 d            2h
    dwconv3x3, relu, dwconv5x5, relu           8h           8h
    cat x1, cat x2                             4h           4h
    dwconv3x3_1, relu, dwconv5x5_1, relu       6h           4h
    cat(u, v)                                  2h           2h
    project_out                                2h           d
    total                                      d + 22h      d + 20h      2d + 42h = 5430   1.42
  fused, two stages (this module)
    project_in (cuBLAS)                        d            2h
    stage 1 (dwconv, both branches)            2h           4h
    stage 2 + project_out                      4h (+ d)     d
    total                                      d + 6h       d + 6h       2d + 12h = 1620   0.42
                                                                         (+ residual: 1668  0.44)
  fused, stage 1 inside stage 2 (not built)    d + 2h       2h + d       2d + 4h  =  604   0.16
    (y's 5x5 halo is re-read per tile; the 4h-channel ab never reaches memory)

Why stage 1 is not fused into stage 2. Triton has no shared-memory tile one can index with shifts,
so inside one kernel a stage-2 output can only get its stage-1 inputs by recomputing them per tap:
a u/v value reads 2 channels x K*K stage-1 values, each K*K taps of y, i.e. 2*(9*9 + 25*25) = 1412
FMAs per output pair against 2*(9 + 25) = 68 now. Level 1 at 256x256 (h = 127) that is
65536 * 127 * 1412 = 11.8 G FMA = 23.5 GFLOP on CUDA cores (no tensor-core form), >= 0.35 ms at
H100's ~67 TFLOP/s fp32, against 0.42 GB = 0.13 ms at ~3.3 TB/s for the two-stage version: the
recomputing kernel would be compute-bound and slower, by arithmetic. A halo-tile version (stage 1
for a tile plus its 2-pixel border kept on chip) needs CUDA/CUTLASS-level shared-memory control;
left for a GPU session that can measure it.

  backward                                     reads        writes       planes            GB
  fused (this module)
    recompute y, stage 1                       d + 2h       2h + 4h      d + 8h   = 1064
    stage-2 uv kernel                          4h + d       4h           d + 8h   = 1064
    stage-2 x kernel                           6h           4h           10h      = 1270
    stage-1 backward (dwconv)                  6h           2h           8h       = 1016
    dW_out, dx, dW_in (cuBLAS)                 d + 6h + d   d            3d + 6h  =  906
    total                                      3d + 24h     2d + 16h     5d + 40h = 5320   1.39
  original (autograd's kernels, estimated the same way)
                                               3d + 46h     d + 22h      4d + 68h = 8828   2.31
  Saving y instead of recomputing it would save d + 2h planes of backward traffic (0.08 GB) but keep
  2h more planes alive from forward to backward (5.3x what is saved now: x alone, d planes; the
  original saves d + 14h planes: x, y, both ReLU outputs, x1, x2, u, v and cat(u, v)).
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .._validation import FFN_PARAM_NAMES as PARAM_NAMES  # noqa: F401 (re-exported)
from .._validation import check_feed_forward_inputs
from ._launch import launch_kernel
from ._registry import COMPILE_ARCHS, CompileConfig, ptr, register_compile_configs
from ._utils import (
    LAUNCH_OPTIONS,
    SUPPORTED_DTYPES,
    cdiv,
    check_tensor,
    compute_capability,
    conv_fp32_precision,
    device_guard,
    interpreter_tiles,
    multiprocessor_count,
    next_pow2,
    register_cap,
)
from .dwconv import (
    _check_pixels,
    _f32,
    _join_words,
    _split_words,
    _unpack_pair,
    _whole_words,
    depthwise_conv_bwd,
    depthwise_conv_fwd,
)

# stage 2 forward: BLOCK_Q (_fwd_config) row quads (kernels/_utils.py) x output-channel tile, hidden
# channels in chunks of BLOCK_J
FWD_BLOCK_J = 16
# uncapped, ptxas hoists every tap load of a column shift (168-246 registers, 8 resident warps per SM);
# capped at 128 it fits without spills at the tiles of _fwd_config (16 resident warps)
FWD_MAXNREG = 128
# small grids split the hidden loop over up to MAX_SPLIT programs, reduced by _ffn_fwd_reduce_kernel
# (8: with row quads the latents' 24 tiles need 5 splits to fill 90% of an H100's SMs)
MAX_SPLIT = 8
REDUCE_BLOCK_N = 512
# ab images from this many elements on take the 64-bit channel pointers of _grouped_conv_chunk
AB64_ELEMENTS = 2**31
# backward
BWD_BLOCK_N = 128
BWD_BLOCK_J = 16
# the x kernel's tiles hold 1 pixel per thread per row (coalesced taps, 64-bit addresses each): 8 groups
# keep it at <= 128 registers
BWD_X_BLOCK_J = 8
BWD_BLOCK_D = 16
BWD_NUM_WARPS = 8
# pixel pairs (words) per program of _ffn_bwd_uv_words_kernel: 128 pixels as _ffn_bwd_uv_kernel's tiles
BWD_WORDS_BLOCK_Q = 64
# its register cap: 16 resident warps per SM (sm_90: 113-134 registers uncapped, no spills at 128)
BWD_WORDS_MAXNREG = 128
# Passed at every launch and registered with the compile configs (the check compiles what runs): 3
# stages let the W_out / dout tiles feeding the dots load ahead (cp.async) in the hidden / D loops.
NUM_STAGES = 3
# under Triton's interpreter (_utils.interpreter_tiles: it pays per program, not per element): tiles of
# 1024 pixels, 32 hidden channels per backward program
INTERPRETER_FWD_BLOCK_Q = 256  # row quads or 2 x 2 quads
INTERPRETER_BWD_BLOCK_N = 1024
INTERPRETER_BWD_BLOCK_J = 32
INTERPRETER_BWD_WORDS_BLOCK_Q = 512  # pixel pairs


class BwdTiles(NamedTuple):
    """Tiles of the backward launches: pixels per tile of the du/dv and x kernels (``block_n``), pixel
    pairs per tile of the du/dv word kernel (``words_block_q``), hidden channels per program of the du/dv
    kernels (``block_j``) and of the x kernel (``x_block_j``)."""

    block_n: int
    words_block_q: int
    block_j: int
    x_block_j: int


def bwd_tiles() -> BwdTiles:
    """The backward's tiles: the GPU's, or the interpreter's larger ones on CPU."""
    if interpreter_tiles():
        return BwdTiles(INTERPRETER_BWD_BLOCK_N, INTERPRETER_BWD_WORDS_BLOCK_Q, INTERPRETER_BWD_BLOCK_J,
                        INTERPRETER_BWD_BLOCK_J)
    return BwdTiles(BWD_BLOCK_N, BWD_WORDS_BLOCK_Q, BWD_BLOCK_J, BWD_X_BLOCK_J)


@triton.jit
def _group_input_channels(o_jl, HID: tl.constexpr, x_off):
    """ab channels of the two inputs (even, odd) of grouped-conv output channels o_jl: x-channel i of
    xs (x1: x_off = 0, x2: x_off = HID) lives in ab channel x_off + i + HID * (i >= HID) (when HID is
    odd the middle group straddles the a/b boundary)."""
    o_ie = 2 * o_jl
    return (x_off + o_ie + tl.where(o_ie >= HID, HID, 0),
            x_off + o_ie + 1 + tl.where(o_ie + 1 >= HID, HID, 0))


@triton.jit
def _grouped_conv_chunk(
    ab_ptr, i_b, o_jl, o_h, o_w, o_down, o_right, m_n,
    gw_ptr,  # weight [h, 2, K, K] fp32
    HID: tl.constexpr, x_off,
    stride_abb, stride_abc, stride_abh, stride_abw,
    K: tl.constexpr,
    AB64: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Pre-activation of the grouped conv for output channels o_jl (clamped to < HID) on a token tile:
    sum over c in {0, 1} and taps t of w[j, c, t] * xs(2j + c, p + t), where xs is x1 (x_off = 0) or
    x2 (x_off = HID) and x-channel i lives in ab channel x_off + i + HID * (i >= HID)."""
    R: tl.constexpr = K // 2
    KK: tl.constexpr = K * K
    o_ce, o_co = _group_input_channels(o_jl, HID, x_off)
    # ab spans 4h planes (>= 2**31 elements from ~4 MP at h = 127). AB64 (the launcher's choice, from
    # ab's size): 64-bit channel base pointers + int32 offsets within a plane (ab is the launchers'
    # contiguous buffer: a plane spans H*W < 2**31 elements); it costs ~60 registers (16 -> 8 resident
    # warps on sm_90), so images whose ab fits int32 offsets keep them.
    p_ab = ab_ptr + i_b * stride_abb
    o_pix = o_h * stride_abh + o_w * stride_abw
    if AB64:
        p_e = (p_ab + o_ce.to(tl.int64) * stride_abc)[:, None]
        p_o = (p_ab + o_co.to(tl.int64) * stride_abc)[:, None]
    else:
        o_e = o_ce[:, None] * stride_abc + o_pix[None, :]
        o_o = o_co[:, None] * stride_abc + o_pix[None, :]
    p_we = gw_ptr + o_jl * (2 * KK)
    b_acc = tl.zeros([BLOCK_J, BLOCK_N], dtype=tl.float32)
    for kh in range(0, K):
        dh = kh - R
        m_h = m_n & (o_h + dh >= 0) & (o_down - dh >= 0)
        for kw in range(0, K):
            dw = kw - R
            m = (m_h & (o_w + dw >= 0) & (o_right - dw >= 0))[None, :]
            if AB64:
                o_t = (o_pix + (dh * stride_abh + dw * stride_abw))[None, :]
                b_xe = tl.load(p_e + o_t, mask=m, other=0.0).to(tl.float32)
                b_xo = tl.load(p_o + o_t, mask=m, other=0.0).to(tl.float32)
            else:
                o_t = dh * stride_abh + dw * stride_abw
                b_xe = tl.load(p_ab + (o_e + o_t), mask=m, other=0.0).to(tl.float32)
                b_xo = tl.load(p_ab + (o_o + o_t), mask=m, other=0.0).to(tl.float32)
            b_acc += tl.load(p_we + (kh * K + kw))[:, None] * b_xe + tl.load(p_we + (KK + kh * K + kw))[:, None] * b_xo
    return b_acc


@triton.jit
def _grouped_conv_rows(
    ab_ptr, i_b, o_jl, o_h, o_w, m_q, H, W,
    gp_ptr,  # weight pairs: [h, K*K] int64, word t of channel j = (w[j, 0, t], w[j, 1, t]) as two fp32
    HID: tl.constexpr, x_off,
    stride_abb, stride_abc, stride_abh, stride_abw,
    K: tl.constexpr,
    AB64: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_Q: tl.constexpr,
):
    """Pre-activations of the grouped conv for output channels o_jl (clamped to < HID) at the row quads
    (o_h + s, o_w), s = 0..3 (kernels/_utils.py, row groups; m_q: quads inside the image): sum over
    c in {0, 1} and taps t of w[j, c, t] * xs(2j + c, p + t), where xs is x1 (x_off = 0) or x2
    (x_off = HID) and x-channel i lives in ab channel x_off + i + HID * (i >= HID).
    Why four rows: the L1 wavefronts of the tap and weight loads, not DRAM, bound this conv. For each
    column shift the K + 3 input rows are loaded once and feed the four output rows (K + 3 row loads
    instead of 4K), and each tap's (even, odd) weight pair is one 8-byte load used for all four."""
    R: tl.constexpr = K // 2
    o_ce, o_co = _group_input_channels(o_jl, HID, x_off)
    # AB64: 64-bit channel base pointers, as in _grouped_conv_chunk
    p_ab = ab_ptr + i_b * stride_abb
    if AB64:
        p_e = (p_ab + o_ce.to(tl.int64) * stride_abc)[:, None]
        p_o = (p_ab + o_co.to(tl.int64) * stride_abc)[:, None]
    else:
        p_e = p_ab + (o_ce * stride_abc)[:, None]
        p_o = p_ab + (o_co * stride_abc)[:, None]
    p_w = gp_ptr + o_jl * (K * K)
    b_acc0 = tl.zeros([BLOCK_J, BLOCK_Q], dtype=tl.float32)
    b_acc1 = tl.zeros([BLOCK_J, BLOCK_Q], dtype=tl.float32)
    b_acc2 = tl.zeros([BLOCK_J, BLOCK_Q], dtype=tl.float32)
    b_acc3 = tl.zeros([BLOCK_J, BLOCK_Q], dtype=tl.float32)
    # a runtime loop over the column shifts (unrolled, the compiler hoists every tap load: 255 registers)
    for kw in range(K):
        o_c = o_w + (kw - R)
        m_c = m_q & (o_c >= 0) & (o_c < W)
        o_col = (o_c * stride_abw)[None, :]
        # the weight window: b_w<s> is set (below) before any use; zeros only name it beforehand
        b_z = tl.zeros([BLOCK_J], dtype=tl.float32)
        b_we1, b_wo1, b_we2, b_wo2, b_we3, b_wo3 = b_z, b_z, b_z, b_z, b_z, b_z
        for r in tl.static_range(K + 3):
            # input row o_h - R + r is tap row r - s of output row s (s = 0..3, where 0 <= r - s < K);
            # b_w<s> holds the weight pair of tap (r - s, kw), loaded s rows ago
            o_r = o_h + (r - R)
            m = (m_c & (o_r >= 0) & (o_r < H))[None, :]
            o_t = (o_r * stride_abh)[None, :] + o_col
            b_xe = tl.load(p_e + o_t, mask=m, other=0.0).to(tl.float32)
            b_xo = tl.load(p_o + o_t, mask=m, other=0.0).to(tl.float32)
            if r < K:
                b_we0, b_wo0 = _unpack_pair(tl.load(p_w + (r * K + kw)))
                b_acc0 += b_we0[:, None] * b_xe + b_wo0[:, None] * b_xo
            if (r >= 1) & (r - 1 < K):
                b_acc1 += b_we1[:, None] * b_xe + b_wo1[:, None] * b_xo
            if (r >= 2) & (r - 2 < K):
                b_acc2 += b_we2[:, None] * b_xe + b_wo2[:, None] * b_xo
            if (r >= 3) & (r - 3 < K):
                b_acc3 += b_we3[:, None] * b_xe + b_wo3[:, None] * b_xo
            # age the window (oldest first)
            if r >= 2:
                b_we3, b_wo3 = b_we2, b_wo2
            if r >= 1:
                b_we2, b_wo2 = b_we1, b_wo1
            b_we1, b_wo1 = b_we0, b_wo0
    return b_acc0, b_acc1, b_acc2, b_acc3


@triton.jit
def _wo_tile(wot_ptr, o_d, m_d, o_col, m_j, D: tl.constexpr):
    """W_out[o_d, o_col] as a [BLOCK_D, BLOCK_J] dot operand, from the transposed weight [2h, D]: its
    rows hold D channels (full-width vector loads), where W_out's own rows give a chunk of 16 hidden
    columns only 32-64 bytes per output channel (scalar loads, 4 rows of lanes per warp instruction)."""
    return tl.trans(tl.load(wot_ptr + o_col[:, None] * D + o_d[None, :], mask=m_j[:, None] & m_d[None, :], other=0.0))


@triton.jit
def _project_out_chunk(b_p0, b_p1, b_p2, b_p3, gb_ptr, o_jl, wot_ptr, o_d, m_d, o_col, m_j, D: tl.constexpr,
                       b_o0, b_o1, b_o2, b_o3, PREC: tl.constexpr):
    """One hidden chunk into project_out at four pixel sets (the forward kernels' row quads, or 2 x 2
    quads): the grouped conv's bias (gb_ptr may be None), ReLU, and W_out[:, o_col] @ relu(.)
    accumulated into the four [BLOCK_D, BLOCK_Q] output tiles."""
    if gb_ptr is not None:
        b_gb = tl.load(gb_ptr + o_jl)[:, None]
        b_p0 += b_gb
        b_p1 += b_gb
        b_p2 += b_gb
        b_p3 += b_gb
    b_wo = _wo_tile(wot_ptr, o_d, m_d, o_col, m_j, D)
    b_o0 = tl.dot(b_wo, tl.maximum(b_p0, 0.0).to(b_wo.dtype), b_o0, input_precision=PREC)
    b_o1 = tl.dot(b_wo, tl.maximum(b_p1, 0.0).to(b_wo.dtype), b_o1, input_precision=PREC)
    b_o2 = tl.dot(b_wo, tl.maximum(b_p2, 0.0).to(b_wo.dtype), b_o2, input_precision=PREC)
    b_o3 = tl.dot(b_wo, tl.maximum(b_p3, 0.0).to(b_wo.dtype), b_o3, input_precision=PREC)
    return b_o0, b_o1, b_o2, b_o3


@triton.jit
def _ffn_fwd_store(
    b_out, out_ptr, res_ptr, bo_ptr, i_b, i_s, o_row, o_w, m_p, o_d, m_d, D, N, W,
    stride_rb, stride_rc, stride_rh, stride_rw,
    HAS_RES: tl.constexpr,
    SPLIT: tl.constexpr,
):
    """Epilogue of one row of the row quads (pixels (o_row, o_w), m_p: inside the image): bias, residual
    and the store (SPLIT == 1), or this split's fp32 partial sum (SPLIT > 1; _ffn_fwd_reduce_kernel
    adds the splits in a fixed order)."""
    m = m_d[:, None] & m_p[None, :]
    o_n = (o_row * W + o_w)[None, :]
    if SPLIT == 1:
        if bo_ptr is not None:
            b_out += tl.load(bo_ptr + o_d, mask=m_d, other=0.0)[:, None]
        if HAS_RES:
            b_out += tl.load(res_ptr + i_b * stride_rb + o_d.to(tl.int64)[:, None] * stride_rc
                             + (o_row.to(tl.int64) * stride_rh + o_w.to(tl.int64) * stride_rw)[None, :],
                             mask=m, other=0.0).to(tl.float32)
        tl.store(out_ptr + i_b * D * N + o_d.to(tl.int64)[:, None] * N + o_n, b_out.to(out_ptr.dtype.element_ty),
                 mask=m)
    else:
        o_slot = (i_s * tl.num_programs(2) + i_b) * D * N
        tl.store(out_ptr + o_slot + o_d.to(tl.int64)[:, None] * N + o_n, b_out, mask=m)


@triton.jit
def _ffn_fwd_kernel(
    ab_ptr,  # ab: [B, 4h, H, W] = (a, b) of stage 1, any strides
    g3p_ptr,  # dwconv3x3_1 weight pairs: [h, 9] int64 (see _grouped_conv_rows)
    g3b_ptr,  # dwconv3x3_1 bias: [h] fp32, or None (specialised away)
    g5p_ptr,  # dwconv5x5_1 weight pairs: [h, 25] int64
    g5b_ptr,  # [h] fp32, or None
    wot_ptr,  # project_out weight transposed: [2h, D], x's dtype, contiguous
    bo_ptr,  # project_out bias: [D] fp32, or None
    res_ptr,  # residual: [B, D, H, W], any strides (unused without HAS_RES)
    out_ptr,  # SPLIT == 1: out [B, D, H, W] contiguous; else fp32 partial sums [SPLIT, B, D, H*W]
    HID: tl.constexpr, D: tl.constexpr, N, H, W,
    stride_abb, stride_abc, stride_abh, stride_abw,
    stride_rb, stride_rc, stride_rh, stride_rw,
    HAS_RES: tl.constexpr,
    PREC: tl.constexpr,  # input_precision of the project_out dot (module docstring: precision)
    SPLIT: tl.constexpr,  # programs per (pixel tile, channel tile), each over 1/SPLIT of the hidden chunks
    AB64: tl.constexpr,  # ab spans >= 2**31 elements per image: 64-bit channel pointers
    BLOCK_D: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_Q: tl.constexpr,
):
    """A program: BLOCK_Q row quads (4 * BLOCK_Q pixels, kernels/_utils.py) x BLOCK_D output channels
    (x one split of the hidden chunks). Grid: (cdiv(cdiv(H, 4) * W, BLOCK_Q), cdiv(D, BLOCK_D) * SPLIT, B)."""
    N_CHUNK: tl.constexpr = (HID + BLOCK_J - 1) // BLOCK_J
    J_PER: tl.constexpr = (N_CHUNK + SPLIT - 1) // SPLIT  # hidden chunks of one split
    i_t = tl.program_id(0)
    i_s = tl.program_id(1) % SPLIT
    i_d = tl.program_id(1) // SPLIT
    i_b = tl.program_id(2).to(tl.int64)
    # 1 pixel per thread along W: coalesced tap loads (kernels/_utils.py, stencil layout)
    o_q = tl.multiple_of(i_t * BLOCK_Q + tl.arange(0, BLOCK_Q), 1)
    m_q = o_q < tl.cdiv(H, 4) * W
    o_h = (o_q // W) * 4
    o_w = o_q % W
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
    m_d = o_d < D
    b_out0 = tl.zeros([BLOCK_D, BLOCK_Q], dtype=tl.float32)
    b_out1 = tl.zeros([BLOCK_D, BLOCK_Q], dtype=tl.float32)
    b_out2 = tl.zeros([BLOCK_D, BLOCK_Q], dtype=tl.float32)
    b_out3 = tl.zeros([BLOCK_D, BLOCK_Q], dtype=tl.float32)
    # u = relu(g3(x1)) feeds W_out[:, :h], v = relu(g5(x2)) feeds W_out[:, h:]
    # chunks past HID (the last split's tail) are masked out of the dot: W_out loads as zeros
    # num_stages=1: the software pipeliner would stage the unrolled tap loads through shared memory
    # (cp.async: > 200 KB, 255 registers)
    for jc in tl.range(J_PER, num_stages=1):
        o_j = (i_s * J_PER + jc) * BLOCK_J + tl.arange(0, BLOCK_J)
        m_j = o_j < HID
        o_jl = tl.minimum(o_j, HID - 1)
        b_u0, b_u1, b_u2, b_u3 = _grouped_conv_rows(ab_ptr, i_b, o_jl, o_h, o_w, m_q, H, W, g3p_ptr, HID, 0,
                                        stride_abb, stride_abc, stride_abh, stride_abw, 3, AB64, BLOCK_J, BLOCK_Q)
        b_out0, b_out1, b_out2, b_out3 = _project_out_chunk(b_u0, b_u1, b_u2, b_u3, g3b_ptr, o_jl, wot_ptr, o_d, m_d,
                                                            o_j, m_j, D, b_out0, b_out1, b_out2, b_out3, PREC)
    for jc in tl.range(J_PER, num_stages=1):
        o_j = (i_s * J_PER + jc) * BLOCK_J + tl.arange(0, BLOCK_J)
        m_j = o_j < HID
        o_jl = tl.minimum(o_j, HID - 1)
        b_v0, b_v1, b_v2, b_v3 = _grouped_conv_rows(ab_ptr, i_b, o_jl, o_h, o_w, m_q, H, W, g5p_ptr, HID, HID,
                                        stride_abb, stride_abc, stride_abh, stride_abw, 5, AB64, BLOCK_J, BLOCK_Q)
        b_out0, b_out1, b_out2, b_out3 = _project_out_chunk(b_v0, b_v1, b_v2, b_v3, g5b_ptr, o_jl, wot_ptr, o_d, m_d,
                                                            HID + o_j, m_j, D, b_out0, b_out1, b_out2, b_out3, PREC)

    _ffn_fwd_store(b_out0, out_ptr, res_ptr, bo_ptr, i_b, i_s, o_h, o_w, m_q, o_d, m_d, D, N, W,
                   stride_rb, stride_rc, stride_rh, stride_rw, HAS_RES, SPLIT)
    _ffn_fwd_store(b_out1, out_ptr, res_ptr, bo_ptr, i_b, i_s, o_h + 1, o_w, m_q & (o_h + 1 < H), o_d, m_d, D, N, W,
                   stride_rb, stride_rc, stride_rh, stride_rw, HAS_RES, SPLIT)
    _ffn_fwd_store(b_out2, out_ptr, res_ptr, bo_ptr, i_b, i_s, o_h + 2, o_w, m_q & (o_h + 2 < H), o_d, m_d, D, N, W,
                   stride_rb, stride_rc, stride_rh, stride_rw, HAS_RES, SPLIT)
    _ffn_fwd_store(b_out3, out_ptr, res_ptr, bo_ptr, i_b, i_s, o_h + 3, o_w, m_q & (o_h + 3 < H), o_d, m_d, D, N, W,
                   stride_rb, stride_rc, stride_rh, stride_rw, HAS_RES, SPLIT)


@triton.jit
def _ab_row_words(p_e, p_o, o_r, o_t, m_q, H, WW, s_h):
    """Words o_t - 1, o_t, o_t + 1 of input row o_r of the two input channels (p_e, p_o: int32 word
    pointers, s_h: the row stride in words): with W even a word is inside or outside the image as a
    whole, so word masks give the zero padding."""
    m_r = m_q & (o_r >= 0) & (o_r < H)
    o_w = o_r * s_h + o_t
    m_l = (m_r & (o_t >= 1))[None, :]
    m_c = m_r[None, :]
    m_n = (m_r & (o_t + 1 < WW))[None, :]
    return (tl.load(p_e + (o_w - 1)[None, :], mask=m_l, other=0), tl.load(p_e + o_w[None, :], mask=m_c, other=0),
            tl.load(p_e + (o_w + 1)[None, :], mask=m_n, other=0), tl.load(p_o + (o_w - 1)[None, :], mask=m_l, other=0),
            tl.load(p_o + o_w[None, :], mask=m_c, other=0), tl.load(p_o + (o_w + 1)[None, :], mask=m_n, other=0))


@triton.jit
def _word_columns(b_l, b_c, b_n, DTYPE: tl.constexpr):
    """The 6 pixels (columns 2 o_t - 2 .. 2 o_t + 3) of the words (o_t - 1, o_t, o_t + 1), as fp32."""
    b_l0, b_l1 = _split_words(b_l, DTYPE)
    b_c0, b_c1 = _split_words(b_c, DTYPE)
    b_n0, b_n1 = _split_words(b_n, DTYPE)
    return b_l0, b_l1, b_c0, b_c1, b_n0, b_n1


@triton.jit
def _grouped_conv_word_pairs(
    ab_ptr, i_b, o_jl, o_h, o_t, m_q, H, WW,
    gp_ptr,  # weight pairs: [h, K*K] int64 (_weight_pairs)
    HID: tl.constexpr, x_off,
    stride_abb, stride_abc, stride_abh,  # element strides of ab (even; unit W stride)
    K: tl.constexpr,
    AB64: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_Q: tl.constexpr,
):
    """_grouped_conv_rows for 2-byte ab on aligned 4-byte words: pre-activations of output channels
    o_jl at the 2 x 2 pixel quads (rows o_h, o_h + 1; columns 2 o_t, 2 o_t + 1), returned as
    (row 0 even, row 0 odd, row 1 even, row 1 odd).
    Why 2 x 2: per input row the 3 words around the pair hold every column shift (K <= 5) of both
    columns, as full 128-byte wavefronts, and each input row feeds both output rows (K + 1 rows for
    two), while each tap's weight pair is one 8-byte load used for all four pixels. Per K = 5 chunk
    and warp: 6 x 3 x 2 word loads + 25 weight loads, against 5 x 8 x 2 half-filled 2-byte loads + 25
    by pixel row quads (_grouped_conv_rows), both for 4 pixels per thread."""
    R: tl.constexpr = K // 2
    tl.static_assert(R <= 2, "3 words per row hold column shifts up to 2")
    DTYPE: tl.constexpr = ab_ptr.dtype.element_ty
    o_ce, o_co = _group_input_channels(o_jl, HID, x_off)
    p_ab = (ab_ptr + i_b * stride_abb).to(tl.pointer_type(tl.int32))
    s_c = stride_abc // 2
    s_h = stride_abh // 2
    if AB64:  # 64-bit channel base pointers, as in _grouped_conv_chunk
        p_e = (p_ab + o_ce.to(tl.int64) * s_c)[:, None]
        p_o = (p_ab + o_co.to(tl.int64) * s_c)[:, None]
    else:
        p_e = p_ab + (o_ce * s_c)[:, None]
        p_o = p_ab + (o_co * s_c)[:, None]
    p_w = gp_ptr + o_jl * (K * K)
    b_acc_e0 = tl.zeros([BLOCK_J, BLOCK_Q], dtype=tl.float32)
    b_acc_o0 = tl.zeros([BLOCK_J, BLOCK_Q], dtype=tl.float32)
    b_acc_e1 = tl.zeros([BLOCK_J, BLOCK_Q], dtype=tl.float32)
    b_acc_o1 = tl.zeros([BLOCK_J, BLOCK_Q], dtype=tl.float32)
    # input row o_h - R + kh is tap row kh of output row 0 and tap row kh - 1 of output row 1: each
    # step loads the row below (b_*1) and takes the one above (b_*0) from the step before, as words
    b_el0, b_ec0, b_en0, b_ol0, b_oc0, b_on0 = _ab_row_words(p_e, p_o, o_h - R, o_t, m_q, H, WW, s_h)
    # a runtime loop over the tap rows (unrolled, the compiler hoists every tap load)
    for kh in range(K):
        b_el1, b_ec1, b_en1, b_ol1, b_oc1, b_on1 = _ab_row_words(p_e, p_o, o_h + (kh + 1 - R), o_t, m_q, H, WW, s_h)
        b_xe0 = _word_columns(b_el0, b_ec0, b_en0, DTYPE)
        b_xo0 = _word_columns(b_ol0, b_oc0, b_on0, DTYPE)
        b_xe1 = _word_columns(b_el1, b_ec1, b_en1, DTYPE)
        b_xo1 = _word_columns(b_ol1, b_oc1, b_on1, DTYPE)
        for kw in tl.static_range(K):
            # column shift kw - R: the even column reads column 2 + kw - R of the 6, the odd one the next
            b_we, b_wo = _unpack_pair(tl.load(p_w + (kh * K + kw)))
            b_we = b_we[:, None]
            b_wo = b_wo[:, None]
            b_acc_e0 += b_we * b_xe0[2 + kw - R] + b_wo * b_xo0[2 + kw - R]
            b_acc_o0 += b_we * b_xe0[3 + kw - R] + b_wo * b_xo0[3 + kw - R]
            b_acc_e1 += b_we * b_xe1[2 + kw - R] + b_wo * b_xo1[2 + kw - R]
            b_acc_o1 += b_we * b_xe1[3 + kw - R] + b_wo * b_xo1[3 + kw - R]
        b_el0, b_ec0, b_en0, b_ol0, b_oc0, b_on0 = b_el1, b_ec1, b_en1, b_ol1, b_oc1, b_on1
    return b_acc_e0, b_acc_o0, b_acc_e1, b_acc_o1


@triton.jit
def _ffn_fwd_words_store(
    b_e, b_o, out_ptr, res_ptr, bo_ptr, i_b, i_s, o_row, o_t, m_p, o_d, m_d, D, N, W,
    stride_rb, stride_rc, stride_rh,
    HAS_RES: tl.constexpr,
    SPLIT: tl.constexpr,
):
    """_ffn_fwd_store for one row of pixel pairs (o_row, 2 o_t + {0, 1}): the residual and the output as
    words (out is the launcher's contiguous buffer, W even); a split's fp32 partial sums by columns."""
    if SPLIT == 1:
        m = m_d[:, None] & m_p[None, :]
        if bo_ptr is not None:
            b_bias = tl.load(bo_ptr + o_d, mask=m_d, other=0.0)[:, None]
            b_e += b_bias
            b_o += b_bias
        if HAS_RES:  # whole words too (fwd_path)
            p_r = (res_ptr.to(tl.pointer_type(tl.int32)) + i_b * (stride_rb // 2)
                   + o_d.to(tl.int64)[:, None] * (stride_rc // 2) + (o_row.to(tl.int64) * (stride_rh // 2) + o_t)[None, :])
            b_re, b_ro = _split_words(tl.load(p_r, mask=m, other=0), res_ptr.dtype.element_ty)
            b_e += b_re
            b_o += b_ro
        # word offsets into the contiguous [B, D, H, W] output (planes of N / 2 words)
        o_w = (i_b * D + o_d.to(tl.int64))[:, None] * (N // 2) + (o_row * (W // 2) + o_t)[None, :]
        tl.store(out_ptr.to(tl.pointer_type(tl.int32)) + o_w, _join_words(b_e, b_o, out_ptr.dtype.element_ty), mask=m)
    else:
        _ffn_fwd_store(b_e, out_ptr, res_ptr, bo_ptr, i_b, i_s, o_row, 2 * o_t, m_p, o_d, m_d, D, N, W,
                       stride_rb, stride_rc, stride_rh, 1, False, SPLIT)
        _ffn_fwd_store(b_o, out_ptr, res_ptr, bo_ptr, i_b, i_s, o_row, 2 * o_t + 1, m_p, o_d, m_d, D, N, W,
                       stride_rb, stride_rc, stride_rh, 1, False, SPLIT)


@triton.jit
def _ffn_fwd_words_kernel(
    ab_ptr,  # ab: [B, 4h, H, W] fp16/bf16, whole words (dwconv._whole_words)
    g3p_ptr,  # dwconv3x3_1 weight pairs: [h, 9] int64 (_weight_pairs)
    g3b_ptr,  # dwconv3x3_1 bias: [h] fp32, or None
    g5p_ptr,  # dwconv5x5_1 weight pairs: [h, 25] int64
    g5b_ptr,  # [h] fp32, or None
    wot_ptr,  # project_out weight transposed: [2h, D], x's dtype, contiguous
    bo_ptr,  # project_out bias: [D] fp32, or None
    res_ptr,  # residual: [B, D, H, W], whole words (unused without HAS_RES)
    out_ptr,  # SPLIT == 1: out [B, D, H, W] contiguous; else fp32 partial sums [SPLIT, B, D, H*W]
    HID: tl.constexpr, D: tl.constexpr, N, H, W,
    stride_abb, stride_abc, stride_abh,  # element strides of ab (even; unit W stride)
    stride_rb, stride_rc, stride_rh,  # element strides of the residual (even; unit W stride)
    HAS_RES: tl.constexpr,
    SPLIT: tl.constexpr,
    AB64: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_Q: tl.constexpr,  # 2 x 2 pixel quads (a word of two rows) per program
):
    """_ffn_fwd_kernel for 2-byte ab on aligned 4-byte words: a program takes BLOCK_Q 2 x 2 pixel quads
    (_grouped_conv_word_pairs) x BLOCK_D output channels (x one split of the hidden chunks); the
    project_out dot runs once per pixel of the quads. Grid: (cdiv(cdiv(H, 2) * W / 2, BLOCK_Q),
    cdiv(D, BLOCK_D) * SPLIT, B). Bytes as _ffn_fwd_kernel's (module docstring)."""
    N_CHUNK: tl.constexpr = (HID + BLOCK_J - 1) // BLOCK_J
    J_PER: tl.constexpr = (N_CHUNK + SPLIT - 1) // SPLIT
    i_t = tl.program_id(0)
    i_s = tl.program_id(1) % SPLIT
    i_d = tl.program_id(1) // SPLIT
    i_b = tl.program_id(2).to(tl.int64)
    WW = W // 2
    # 1 word per thread along W: coalesced loads (kernels/_utils.py, stencil layout)
    o_q = tl.multiple_of(i_t * BLOCK_Q + tl.arange(0, BLOCK_Q), 1)
    m_q = o_q < tl.cdiv(H, 2) * WW
    o_h = (o_q // WW) * 2
    o_t = o_q % WW
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
    m_d = o_d < D
    b_oe0 = tl.zeros([BLOCK_D, BLOCK_Q], dtype=tl.float32)
    b_oo0 = tl.zeros([BLOCK_D, BLOCK_Q], dtype=tl.float32)
    b_oe1 = tl.zeros([BLOCK_D, BLOCK_Q], dtype=tl.float32)
    b_oo1 = tl.zeros([BLOCK_D, BLOCK_Q], dtype=tl.float32)
    # u = relu(g3(x1)) feeds W_out[:, :h], v = relu(g5(x2)) W_out[:, h:] (as _ffn_fwd_kernel)
    for jc in tl.range(J_PER, num_stages=1):
        o_j = (i_s * J_PER + jc) * BLOCK_J + tl.arange(0, BLOCK_J)
        m_j = o_j < HID
        o_jl = tl.minimum(o_j, HID - 1)
        b_ue0, b_uo0, b_ue1, b_uo1 = _grouped_conv_word_pairs(ab_ptr, i_b, o_jl, o_h, o_t, m_q, H, WW, g3p_ptr, HID, 0,
                                                              stride_abb, stride_abc, stride_abh, 3, AB64, BLOCK_J,
                                                              BLOCK_Q)
        b_oe0, b_oo0, b_oe1, b_oo1 = _project_out_chunk(b_ue0, b_uo0, b_ue1, b_uo1, g3b_ptr, o_jl, wot_ptr, o_d, m_d,
                                                        o_j, m_j, D, b_oe0, b_oo0, b_oe1, b_oo1, "ieee")
    for jc in tl.range(J_PER, num_stages=1):
        o_j = (i_s * J_PER + jc) * BLOCK_J + tl.arange(0, BLOCK_J)
        m_j = o_j < HID
        o_jl = tl.minimum(o_j, HID - 1)
        b_ve0, b_vo0, b_ve1, b_vo1 = _grouped_conv_word_pairs(ab_ptr, i_b, o_jl, o_h, o_t, m_q, H, WW, g5p_ptr, HID,
                                                              HID, stride_abb, stride_abc, stride_abh, 5, AB64,
                                                              BLOCK_J, BLOCK_Q)
        b_oe0, b_oo0, b_oe1, b_oo1 = _project_out_chunk(b_ve0, b_vo0, b_ve1, b_vo1, g5b_ptr, o_jl, wot_ptr, o_d, m_d,
                                                        HID + o_j, m_j, D, b_oe0, b_oo0, b_oe1, b_oo1, "ieee")

    _ffn_fwd_words_store(b_oe0, b_oo0, out_ptr, res_ptr, bo_ptr, i_b, i_s, o_h, o_t, m_q, o_d, m_d, D, N, W,
                         stride_rb, stride_rc, stride_rh, HAS_RES, SPLIT)
    _ffn_fwd_words_store(b_oe1, b_oo1, out_ptr, res_ptr, bo_ptr, i_b, i_s, o_h + 1, o_t, m_q & (o_h + 1 < H), o_d,
                         m_d, D, N, W, stride_rb, stride_rc, stride_rh, HAS_RES, SPLIT)


@triton.jit
def _ffn_fwd_reduce_kernel(
    part_ptr,  # partial sums of project_out over hidden splits: [SPLIT, B, D, H*W] fp32
    bo_ptr,  # project_out bias: [D] fp32, or None
    res_ptr,  # residual: [B, D, H, W], any strides (unused without HAS_RES)
    out_ptr,  # out: [B, D, H, W] contiguous
    N, W,
    stride_rb, stride_rc, stride_rh, stride_rw,
    D: tl.constexpr,
    SPLIT: tl.constexpr,
    HAS_RES: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """out = sum of the splits (in split order: deterministic) + bias (+ residual). Bytes: reads
    SPLIT fp32 planes and the residual, writes one plane, per channel."""
    i_n = tl.program_id(0)
    i_d = tl.program_id(1)
    i_b = tl.program_id(2).to(tl.int64)
    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_n = o_n < N
    o_plane = (i_b * D + i_d) * N
    b_out = tl.zeros([BLOCK_N], dtype=tl.float32)
    for s in tl.static_range(SPLIT):
        b_out += tl.load(part_ptr + (s * tl.num_programs(2) * D * N + o_plane) + o_n, mask=m_n, other=0.0)
    if bo_ptr is not None:
        b_out += tl.load(bo_ptr + i_d)
    if HAS_RES:
        o_res = i_b * stride_rb + i_d * stride_rc + (o_n // W).to(tl.int64) * stride_rh + (o_n % W).to(tl.int64) * stride_rw
        b_out += tl.load(res_ptr + o_res, mask=m_n, other=0.0).to(tl.float32)
    tl.store(out_ptr + o_plane + o_n, b_out.to(out_ptr.dtype.element_ty), mask=m_n)


@triton.jit
def _ffn_bwd_uv_kernel(
    dout_ptr,  # dout: [B, D, H, W], any strides
    ab_ptr,  # ab: [B, 4h, H, W], any strides
    gw_ptr,  # weight of this side's grouped conv: [h, 2, K, K] fp32
    gb_ptr,  # its bias: [h] fp32, or None
    wo_ptr,  # project_out weight: [D, 2h], x's dtype, contiguous
    duv_ptr,  # out: gradient of the pre-ReLU (u, v): [B, 2h, H, W] contiguous, x's dtype
    uv_ptr,  # out: the activations cat(u, v): [B, 2h, H, W] contiguous, x's dtype (for dW_out)
    pb_ptr,  # partials of this conv's bias grad: [B * n_tiles, 2h] fp32 (columns of this side)
    HID: tl.constexpr, D: tl.constexpr, N, H, W,
    x_off,  # 0 for u (reads x1), HID for v (reads x2); also the column offset in W_out / duv
    stride_db, stride_dc, stride_dh, stride_dw,
    stride_abb, stride_abc, stride_abh, stride_abw,
    K: tl.constexpr,
    PREC: tl.constexpr,  # input_precision of the W_out^T dout dot (module docstring: precision)
    AB64: tl.constexpr,  # ab spans >= 2**31 elements per image: 64-bit channel pointers
    BLOCK_D: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # token tiles x hidden tiles flattened into grid axis 0 (axis 1 is limited to 65535 programs);
    # the hidden tile varies fastest: the programs of one token tile share dout in L2
    N_J: tl.constexpr = (HID + BLOCK_J - 1) // BLOCK_J
    i_j = tl.program_id(0) % N_J
    i_n = tl.program_id(0) // N_J
    i_b = tl.program_id(1).to(tl.int64)
    o_j = i_j * BLOCK_J + tl.arange(0, BLOCK_J)
    # 1 pixel per thread along W: coalesced tap loads (kernels/_utils.py, stencil layout)
    o_n = tl.multiple_of(i_n * BLOCK_N + tl.arange(0, BLOCK_N), 1)
    m_j = o_j < HID
    m_n = o_n < N
    o_jl = tl.minimum(o_j, HID - 1)
    o_h = o_n // W
    o_w = o_n % W
    o_down = H - 1 - o_h
    o_right = W - 1 - o_w
    b_pre = _grouped_conv_chunk(ab_ptr, i_b, o_jl, o_h, o_w, o_down, o_right, m_n, gw_ptr, HID, x_off,
                                stride_abb, stride_abc, stride_abh, stride_abw, K, AB64, BLOCK_J, BLOCK_N)
    if gb_ptr is not None:
        b_pre += tl.load(gb_ptr + o_jl)[:, None]
    m_out = m_j[:, None] & m_n[None, :]
    o_out = i_b * (2 * HID) * N + (x_off + o_j).to(tl.int64)[:, None] * N + o_n[None, :]
    tl.store(uv_ptr + o_out, tl.maximum(b_pre, 0.0).to(uv_ptr.dtype.element_ty), mask=m_out)

    # W_out^T dout in chunks of BLOCK_D output channels (a short reduction keeps fp32 FMA dots in registers)
    o_col = x_off + o_j
    p_dout = dout_ptr + i_b * stride_db
    o_dpix = (o_h.to(tl.int64) * stride_dh + o_w.to(tl.int64) * stride_dw)[None, :]
    b_g = tl.zeros([BLOCK_J, BLOCK_N], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        o_d = d0 + tl.arange(0, BLOCK_D)
        m_d = o_d < D
        b_dout = tl.load(p_dout + (o_d.to(tl.int64)[:, None] * stride_dc + o_dpix), mask=m_d[:, None] & m_n[None, :],
                         other=0.0)
        b_wt = tl.load(wo_ptr + o_d[None, :] * (2 * HID) + o_col[:, None], mask=m_j[:, None] & m_d[None, :], other=0.0)
        b_g = tl.dot(b_wt, b_dout.to(wo_ptr.dtype.element_ty), b_g, input_precision=PREC)
    b_g = tl.where(b_pre > 0.0, b_g, 0.0)
    tl.store(duv_ptr + o_out, b_g.to(duv_ptr.dtype.element_ty), mask=m_out)
    tl.store(pb_ptr + (i_b * tl.cdiv(N, BLOCK_N) + i_n) * (2 * HID) + o_col, tl.sum(b_g, axis=1), mask=m_j)


@triton.jit
def _grouped_conv_words(
    ab_ptr, i_b, o_jl, o_h, o_t, m_q, H, WW,
    gp_ptr,  # weight pairs: [h, K*K] int64 (_weight_pairs)
    HID: tl.constexpr, x_off,
    stride_abb, stride_abc, stride_abh,  # element strides of ab (even; unit W stride)
    K: tl.constexpr,
    AB64: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_Q: tl.constexpr,
):
    """_grouped_conv_chunk for 2-byte ab on aligned 4-byte words: pre-activations (even column, odd
    column) of output channels o_jl at the pixel pairs (o_h, 2 o_t + {0, 1}). Per tap row, the 2 WR + 1
    words around o_t (3 for K <= 5) of both input channels hold every column shift of both columns:
    full 128-byte wavefronts, against K half-filled 2-byte loads per column (dwconv.py, words)."""
    R: tl.constexpr = K // 2
    WR: tl.constexpr = (R + 1) // 2
    DTYPE: tl.constexpr = ab_ptr.dtype.element_ty
    o_ce, o_co = _group_input_channels(o_jl, HID, x_off)
    p_ab = (ab_ptr + i_b * stride_abb).to(tl.pointer_type(tl.int32))
    s_c = stride_abc // 2
    s_h = stride_abh // 2
    if AB64:  # 64-bit channel base pointers, as in _grouped_conv_chunk
        p_e = (p_ab + o_ce.to(tl.int64) * s_c)[:, None]
        p_o = (p_ab + o_co.to(tl.int64) * s_c)[:, None]
    else:
        p_e = p_ab + (o_ce * s_c)[:, None]
        p_o = p_ab + (o_co * s_c)[:, None]
    p_w = gp_ptr + o_jl * (K * K)
    b_acc_e = tl.zeros([BLOCK_J, BLOCK_Q], dtype=tl.float32)
    b_acc_o = tl.zeros([BLOCK_J, BLOCK_Q], dtype=tl.float32)
    # a runtime loop over the tap rows (unrolled, the compiler hoists every tap load)
    for kh in range(K):
        o_r = o_h + (kh - R)
        m_r = m_q & (o_r >= 0) & (o_r < H)
        cols_e = ()
        cols_o = ()
        for j in tl.static_range(2 * WR + 1):
            o_u = o_t + (j - WR)
            m = (m_r & (o_u >= 0) & (o_u < WW))[None, :]
            o_pix = (o_r * s_h + o_u)[None, :]
            b_lo, b_hi = _split_words(tl.load(p_e + o_pix, mask=m, other=0), DTYPE)
            cols_e = cols_e + (b_lo, b_hi)
            b_lo, b_hi = _split_words(tl.load(p_o + o_pix, mask=m, other=0), DTYPE)
            cols_o = cols_o + (b_lo, b_hi)
        for kw in tl.static_range(K):
            # column shift kw - R: the even column reads cols[2 WR + kw - R], the odd one the next
            b_we, b_wo = _unpack_pair(tl.load(p_w + (kh * K + kw)))
            b_acc_e += b_we[:, None] * cols_e[2 * WR + kw - R] + b_wo[:, None] * cols_o[2 * WR + kw - R]
            b_acc_o += b_we[:, None] * cols_e[2 * WR + kw - R + 1] + b_wo[:, None] * cols_o[2 * WR + kw - R + 1]
    return b_acc_e, b_acc_o


@triton.jit
def _ffn_bwd_uv_words_kernel(
    dout_ptr,  # dout: [B, D, H, W] fp16/bf16, whole words (dwconv._whole_words)
    ab_ptr,  # ab: [B, 4h, H, W], whole words
    gp_ptr,  # weight pairs of this side's grouped conv: [h, K*K] int64 (_weight_pairs)
    gb_ptr,  # its bias: [h] fp32, or None
    wo_ptr,  # project_out weight: [D, 2h], x's dtype, contiguous
    duv_ptr,  # out: gradient of the pre-ReLU (u, v): [B, 2h, H, W] contiguous
    uv_ptr,  # out: cat(u, v): [B, 2h, H, W] contiguous
    pb_ptr,  # partials of this conv's bias grad: [B * n_tiles, 2h] fp32 (columns of this side)
    HID: tl.constexpr, D: tl.constexpr, H, W,
    x_off,  # 0 for u (reads x1), HID for v (reads x2); also the column offset in W_out / duv
    stride_db, stride_dc, stride_dh,  # element strides (even; unit W stride)
    stride_abb, stride_abc, stride_abh,
    K: tl.constexpr,
    AB64: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_Q: tl.constexpr,  # pixel pairs (words) per program
):
    """_ffn_bwd_uv_kernel for 2-byte dtypes on aligned 4-byte words: each thread on horizontally
    adjacent pixel pairs; ab's taps, dout, u/v and du/dv move as words of two pixels; the W_out^T dout
    dot runs once per column (even, odd) of the pairs."""
    N_J: tl.constexpr = (HID + BLOCK_J - 1) // BLOCK_J
    i_j = tl.program_id(0) % N_J
    i_n = tl.program_id(0) // N_J
    i_b = tl.program_id(1).to(tl.int64)
    WW = W // 2
    o_j = i_j * BLOCK_J + tl.arange(0, BLOCK_J)
    # 1 word per thread along W: coalesced loads (kernels/_utils.py, stencil layout)
    o_q = tl.multiple_of(i_n * BLOCK_Q + tl.arange(0, BLOCK_Q), 1)
    m_j = o_j < HID
    m_q = o_q < H * WW
    o_jl = tl.minimum(o_j, HID - 1)
    o_h = o_q // WW
    o_t = o_q % WW
    b_pre_e, b_pre_o = _grouped_conv_words(ab_ptr, i_b, o_jl, o_h, o_t, m_q, H, WW, gp_ptr, HID, x_off,
                                           stride_abb, stride_abc, stride_abh, K, AB64, BLOCK_J, BLOCK_Q)
    if gb_ptr is not None:
        b_gb = tl.load(gb_ptr + o_jl)[:, None]
        b_pre_e += b_gb
        b_pre_o += b_gb
    m_out = m_j[:, None] & m_q[None, :]
    # word offsets into the contiguous [B, 2h, H, W] outputs (planes of H * WW words)
    o_out = (i_b * (2 * HID) + (x_off + o_j).to(tl.int64))[:, None] * (H * WW) + o_q[None, :]
    DTYPE: tl.constexpr = uv_ptr.dtype.element_ty
    tl.store(uv_ptr.to(tl.pointer_type(tl.int32)) + o_out,
             _join_words(tl.maximum(b_pre_e, 0.0), tl.maximum(b_pre_o, 0.0), DTYPE), mask=m_out)

    # W_out^T dout in chunks of BLOCK_D output channels, once per column of the pairs
    o_col = x_off + o_j
    p_dout = (dout_ptr + i_b * stride_db).to(tl.pointer_type(tl.int32))
    o_dpix = (o_h.to(tl.int64) * (stride_dh // 2) + o_t)[None, :]
    b_g_e = tl.zeros([BLOCK_J, BLOCK_Q], dtype=tl.float32)
    b_g_o = tl.zeros([BLOCK_J, BLOCK_Q], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        o_d = d0 + tl.arange(0, BLOCK_D)
        m_d = o_d < D
        b_words = tl.load(p_dout + (o_d.to(tl.int64)[:, None] * (stride_dc // 2) + o_dpix),
                          mask=m_d[:, None] & m_q[None, :], other=0)
        b_do_e, b_do_o = _split_words(b_words, dout_ptr.dtype.element_ty)
        b_wt = tl.load(wo_ptr + o_d[None, :] * (2 * HID) + o_col[:, None], mask=m_j[:, None] & m_d[None, :], other=0.0)
        b_g_e = tl.dot(b_wt, b_do_e.to(wo_ptr.dtype.element_ty), b_g_e)
        b_g_o = tl.dot(b_wt, b_do_o.to(wo_ptr.dtype.element_ty), b_g_o)
    b_g_e = tl.where(b_pre_e > 0.0, b_g_e, 0.0)
    b_g_o = tl.where(b_pre_o > 0.0, b_g_o, 0.0)
    tl.store(duv_ptr.to(tl.pointer_type(tl.int32)) + o_out, _join_words(b_g_e, b_g_o, DTYPE), mask=m_out)
    tl.store(pb_ptr + (i_b * (tl.num_programs(0) // N_J) + i_n) * (2 * HID) + o_col,
             tl.sum(b_g_e + b_g_o, axis=1), mask=m_j)


@triton.jit
def _ffn_bwd_x_kernel(
    duv_ptr,  # gradient of the pre-ReLU (u, v): [B, 2h, H, W] contiguous
    ab_ptr,  # ab: [B, 4h, H, W], any strides
    gw_ptr,  # this side's grouped-conv weight: [h, 2, K, K] fp32
    dab_ptr,  # out: gradient of the pre-ReLU (a, b): [B, 4h, H, W] contiguous, x's dtype
    pw_ptr,  # partials of this conv's weight grad: [B * n_tiles, 2*K*K, h] fp32 (row c*K*K + t)
    HID: tl.constexpr, N, H, W,
    x_off,  # 0: u side (x1), HID: v side (x2)
    stride_abb, stride_abc, stride_abh, stride_abw,
    K: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    R: tl.constexpr = K // 2
    KK: tl.constexpr = K * K
    i_n = tl.program_id(0)
    i_j = tl.program_id(1)
    i_b = tl.program_id(2).to(tl.int64)
    o_j = i_j * BLOCK_J + tl.arange(0, BLOCK_J)
    # 1 pixel per thread along W: coalesced tap loads (kernels/_utils.py, stencil layout)
    o_n = tl.multiple_of(i_n * BLOCK_N + tl.arange(0, BLOCK_N), 1)
    m_j = o_j < HID
    m_n = o_n < N
    o_jl = tl.minimum(o_j, HID - 1)
    o_h = o_n // W
    o_w = o_n % W
    o_down = H - 1 - o_h
    o_right = W - 1 - o_w
    # the two x-channels of group j and where they live in ab (and dab)
    o_ce, o_co = _group_input_channels(o_jl, HID, x_off)
    # int64 element offsets (ab, dab span 4h planes: >= 2**31 elements from ~4 MP at h = 127)
    p_ab = ab_ptr + i_b * stride_abb
    o_pix = (o_h.to(tl.int64) * stride_abh + o_w.to(tl.int64) * stride_abw)[None, :]
    m_0 = m_n[None, :]
    b_xe = tl.load(p_ab + (o_ce.to(tl.int64)[:, None] * stride_abc + o_pix), mask=m_0, other=0.0).to(tl.float32)
    b_xo = tl.load(p_ab + (o_co.to(tl.int64)[:, None] * stride_abc + o_pix), mask=m_0, other=0.0).to(tl.float32)
    p_g = duv_ptr + i_b * (2 * HID) * N
    o_g = (x_off + o_jl).to(tl.int64)[:, None] * N + o_n[None, :]
    p_we = gw_ptr + o_jl * (2 * KK)
    i_part = i_b * tl.num_programs(0) + i_n
    p_pw = pw_ptr + i_part * (2 * KK) * HID + o_j
    b_dxe = tl.zeros([BLOCK_J, BLOCK_N], dtype=tl.float32)
    b_dxo = tl.zeros([BLOCK_J, BLOCK_N], dtype=tl.float32)
    for kh in range(0, K):
        dh = kh - R
        # du/dv are read at p - t
        m_h = m_n & (o_h - dh >= 0) & (o_down + dh >= 0)
        for kw in range(0, K):
            dw = kw - R
            t = kh * K + kw
            m = (m_h & (o_w - dw >= 0) & (o_right + dw >= 0))[None, :]
            b_g = tl.load(p_g + (o_g - (dh * tl.cast(W, tl.int64) + dw)), mask=m, other=0.0).to(tl.float32)
            b_dxe += tl.load(p_we + t)[:, None] * b_g
            b_dxo += tl.load(p_we + (KK + t))[:, None] * b_g
            tl.store(p_pw + t * HID, tl.sum(b_g * b_xe, axis=1), mask=m_j)
            tl.store(p_pw + (KK + t) * HID, tl.sum(b_g * b_xo, axis=1), mask=m_j)
    # the stage-1 ReLU: a = relu(pre) > 0 exactly where pre > 0
    m = m_j[:, None] & m_n[None, :]
    p_dab = dab_ptr + i_b * (4 * HID) * N
    tl.store(p_dab + (o_ce.to(tl.int64)[:, None] * N + o_n[None, :]),
             tl.where(b_xe > 0.0, b_dxe, 0.0).to(dab_ptr.dtype.element_ty), mask=m)
    tl.store(p_dab + (o_co.to(tl.int64)[:, None] * N + o_n[None, :]),
             tl.where(b_xo > 0.0, b_dxo, 0.0).to(dab_ptr.dtype.element_ty), mask=m)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------

def traffic_bytes(batch: int, dim: int, height: int, width: int, hidden: int, elem_size: int = 4,
                  residual: bool = False) -> dict[str, int]:
    """The DRAM bytes of the module docstring's table for one shape: ``original_fwd``, ``original_bwd``
    (autograd's kernels, estimated), ``fused_fwd``, ``fused_bwd`` (this module) and
    ``stage_fused_fwd`` (stage 1 inside stage 2, not built). Activations only."""
    d, h = dim, hidden
    plane = batch * height * width * elem_size
    res = d if residual else 0
    planes = {
        "original_fwd": 2 * d + 42 * h + 3 * res,  # + the block's separate `x + ffn(...)`: read 2, write 1
        "original_bwd": 4 * d + 68 * h,
        "fused_fwd": 2 * d + 12 * h + res,
        "fused_bwd": 5 * d + 40 * h,
        "stage_fused_fwd": 2 * d + 4 * h + res,
    }
    return {k: v * plane for k, v in planes.items()}


def check_inputs(x: torch.Tensor, params: dict[str, torch.Tensor | None], residual: torch.Tensor | None) -> int:
    """Validate x, the 12 parameters (biases may be None) and the residual; returns hidden."""
    hidden = check_feed_forward_inputs(x, params, residual)
    _check_pixels(x)  # element offsets are int64; pixel indices int32
    return hidden


class FwdConfig(NamedTuple):
    block_d: int
    block_q: int
    num_warps: int
    maxnreg: int


def _fwd_config(dim: int, exact_fp32_dot: bool, arch: int) -> FwdConfig:
    """Tiles, warps and register cap of the stage-2 forward (both kernels) on sm_<arch>: all output
    channels in one tile up to 128 (BLOCK_D), BLOCK_Q row quads (pixels) or 2 x 2 quads (words), 4
    warps up to 32 channels, else 16, capped at 128 registers (at 16 warps the register file's limit,
    ``register_cap``): one CTA and 16 resident warps per SM.

    - sm_90 (and newer): 32 quads (a warp's lanes along W). 92-128 registers, no spills with Triton
      3.9 or 3.6 (at 8 warps for <= 64 channels Triton 3.6 spilled the fp32 pixel kernel at 128).
    - sm_80 (A100, and sm_86/89): 16 quads. With 32, the mma.sync operands of the 128-cap layout
      spilled 16-120 B (the words kernel uncapped needs 168-200 registers at 8 warps).
    - The exact-fp32 dot (TF32 switched off: project_out on CUDA cores, its operands in registers)
      spills at 32 quads even uncapped (and uncapped at 16 warps took 141-152 registers, more than a
      512-thread CTA can hold): 16 quads on every architecture; up to 64 channels 8 warps, uncapped
      (105-128 registers; 248-254 with one hidden chunk per split, SPLIT = 8 at 48 channels, which
      spilled at 16 warps)."""
    block_d = min(128, max(16, next_pow2(dim)))
    block_q = 16 if exact_fp32_dot or arch < 90 else 32
    if block_d <= 32:
        return FwdConfig(block_d, block_q, 4, register_cap(4, FWD_MAXNREG))
    if exact_fp32_dot and block_d <= 64:
        return FwdConfig(block_d, block_q, 8, register_cap(8))
    return FwdConfig(block_d, block_q, 16, register_cap(16, FWD_MAXNREG))


def _weight_pairs(weight: torch.Tensor) -> torch.Tensor:
    """A grouped conv's weight [h, 2, K, K] as [h, K*K] int64 words, each the (input 0, input 1) fp32
    pair of one tap: one 8-byte load gives both (``_grouped_conv_rows``)."""
    h, _, k, _ = weight.shape
    return _f32(weight).reshape(h, 2, k * k).transpose(1, 2).contiguous().view(torch.int64)


def fwd_path(ab: torch.Tensor, residual: torch.Tensor | None) -> str:
    """Which stage-2 forward kernel runs: "words" (``_ffn_fwd_words_kernel``: fp16/bf16 whose ab, the
    launcher's contiguous buffer, and residual are made of whole aligned 4-byte words,
    ``dwconv._whole_words``: W even) or "pixels" (``_ffn_fwd_kernel``: fp32, odd W, other residuals)."""
    return "words" if _whole_words(ab) and (residual is None or _whole_words(residual)) else "pixels"


def bwd_uv_path(dout: torch.Tensor, ab: torch.Tensor) -> str:
    """Which du/dv kernel runs: "words" (``_ffn_bwd_uv_words_kernel``: fp16/bf16 with dout and ab made
    of whole aligned 4-byte words, ``dwconv._whole_words``) or "pixels" (``_ffn_bwd_uv_kernel``)."""
    return "words" if _whole_words(dout) and _whole_words(ab) else "pixels"


def dot_precision(dtype: torch.dtype) -> str:
    """``input_precision`` of the dots that stand for project_out (forward) and its input gradient
    (backward): PyTorch's cuDNN TF32 setting for fp32, read at launch time; fp16/bf16 dots always run on
    tensor cores with fp32 accumulation ("ieee" is the only value Triton takes for them)."""
    return conv_fp32_precision() if dtype == torch.float32 else "ieee"


def _ab64(hidden: int, n: int) -> bool:
    """Whether one image of ab ([4h, H, W], contiguous) needs 64-bit channel offsets."""
    return 4 * hidden * n >= AB64_ELEMENTS


def _fwd_split(programs: int, hidden: int, sms: int) -> int:
    """Hidden splits of the stage-2 forward: 1 while the (token tile x channel tile) grid fills 90% of
    the GPU's SMs; else enough splits to fill them (at most MAX_SPLIT, at most one per hidden chunk).
    The latent of the default model (1x384x32x32) has 24 tiles: 5 splits, 120 programs."""
    if programs >= 0.9 * sms:
        return 1
    return max(1, min(MAX_SPLIT, cdiv(hidden, FWD_BLOCK_J), cdiv(math.ceil(0.9 * sms), programs)))


def _project_in(x: torch.Tensor, w_in: torch.Tensor) -> torch.Tensor:
    """y = W_in x without bias (the bias is added inside stage 1): [B, 2h, H, W] contiguous. A 1x1
    convolution through cuDNN, so that in fp32 it follows PyTorch's TF32 setting for convolutions
    exactly as the original's ``project_in`` does."""
    return F.conv2d(x, w_in.detach().to(x.dtype)).contiguous()


def _conv1x1_weight_grad(grad: torch.Tensor, inp: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """fp32 gradient of a 1x1 convolution's weight (cuDNN: the original's TF32 setting)."""
    _, dw, _ = torch.ops.aten.convolution_backward(
        grad, inp, weight.detach().to(inp.dtype), None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
        [False, True, False])
    return dw.float().contiguous()


def _stage1(x: torch.Tensor, y: torch.Tensor, p: dict, hidden: int) -> torch.Tensor:
    B, _, H, W = x.shape
    ab = torch.empty((B, 4 * hidden, H, W), device=x.device, dtype=x.dtype)
    depthwise_conv_fwd(y, [p["dw3_weight"], p["dw5_weight"]], [p["dw3_bias"], p["dw5_bias"]], True,
                       input_bias=p["in_bias"], out=[ab[:, : 2 * hidden], ab[:, 2 * hidden:]])
    return ab


def ffn_fwd(x: torch.Tensor, params: dict[str, torch.Tensor | None], residual: torch.Tensor | None = None):
    """MSFN forward of ``x: [B, d, H, W]`` (any strides): ``project_out(...) (+ residual)``, [B, d, H, W]
    contiguous in x's dtype. ``params`` maps :data:`PARAM_NAMES` to tensors (biases may be None)."""
    hidden = check_inputs(x, params, residual)
    B, D, H, W = x.shape
    N = H * W
    out = torch.empty((B, D, H, W), device=x.device, dtype=x.dtype)
    if out.numel() == 0:
        return out
    with device_guard(x):
        ab = _stage1(x, _project_in(x, params["in_weight"]), params, hidden)
        ab64, prec = _ab64(hidden, N), dot_precision(x.dtype)
        exact = x.dtype == torch.float32 and prec == "ieee"
        cfg = _fwd_config(D, exact, compute_capability(x.device))
        block_d, block_q = cfg.block_d, (INTERPRETER_FWD_BLOCK_Q if interpreter_tiles() else cfg.block_q)
        # transposed (_wo_tile): a copy of D x 2h elements
        wot = params["out_weight"].detach().reshape(D, 2 * hidden).t().to(x.dtype).contiguous()
        res = residual if residual is not None else out
        words = fwd_path(ab, residual) == "words"
        # a tile: block_q row quads (pixels) or 2 x 2 quads (words), 4 * block_q pixels either way
        quads = cdiv(H, 2) * (W // 2) if words else cdiv(H, 4) * W
        n_tiles, n_d = cdiv(quads, block_q), cdiv(D, block_d)
        split = _fwd_split(B * n_tiles * n_d, hidden, multiprocessor_count(x.device))
        bo = _f32(params["out_bias"])
        dest = out if split == 1 else torch.empty((split, B, D, N), device=x.device, dtype=torch.float32)
        weights = (_weight_pairs(params["g3_weight"]), _f32(params["g3_bias"]),
                   _weight_pairs(params["g5_weight"]), _f32(params["g5_bias"]), wot, bo)
        launch = dict(HAS_RES=residual is not None and split == 1, SPLIT=split, AB64=ab64, BLOCK_D=block_d,
                      BLOCK_J=FWD_BLOCK_J, BLOCK_Q=block_q, num_warps=cfg.num_warps, num_stages=NUM_STAGES,
                      **{**LAUNCH_OPTIONS, "maxnreg": cfg.maxnreg})
        if words:
            launch_kernel(_ffn_fwd_words_kernel, (n_tiles, n_d * split, B),
                ab, *weights, res, dest, hidden, D, N, H, W, *ab.stride()[:3], *res.stride()[:3], **launch)
        else:
            launch_kernel(_ffn_fwd_kernel, (n_tiles, n_d * split, B),
                ab, *weights, res, dest, hidden, D, N, H, W, *ab.stride(), *res.stride(), PREC=prec, **launch)
        if split > 1:
            launch_kernel(_ffn_fwd_reduce_kernel, (cdiv(N, REDUCE_BLOCK_N), D, B),
                dest, bo, res, out, N, W, *res.stride(), D=D, SPLIT=split, HAS_RES=residual is not None,
                BLOCK_N=REDUCE_BLOCK_N, num_warps=4, num_stages=NUM_STAGES, **LAUNCH_OPTIONS,
            )
    return out


def ffn_bwd(dout: torch.Tensor, x: torch.Tensor, params: dict[str, torch.Tensor | None],
            need_input_grad: bool = True) -> tuple[torch.Tensor | None, dict[str, torch.Tensor | None]]:
    """Gradients of :func:`ffn_fwd` for upstream gradient ``dout`` (any strides): ``dx`` (x's dtype,
    None unless ``need_input_grad``) and a dict of parameter gradients in fp32 (None for absent biases).
    y and the stage-1 outputs are recomputed from x. The residual's gradient is ``dout`` itself."""
    hidden = check_inputs(x, params, None)
    check_tensor("grad_output", dout, shape=tuple(x.shape), device=x.device, dtypes=SUPPORTED_DTYPES)
    if dout.dtype != x.dtype:
        dout = dout.to(x.dtype)
    B, D, H, W = x.shape
    N, h2 = H * W, 2 * hidden
    dev = x.device
    if x.numel() == 0:
        grads = {n: (torch.zeros(p.shape, device=dev) if p is not None else None) for n, p in params.items()}
        return (torch.zeros_like(x) if need_input_grad else None), grads
    grads: dict[str, torch.Tensor | None] = {}
    with device_guard(x):
        y = _project_in(x, params["in_weight"])
        ab = _stage1(x, y, params, hidden)
        wo = params["out_weight"].detach().reshape(D, h2).to(x.dtype).contiguous()
        tiles = bwd_tiles()
        n_tiles = cdiv(N, tiles.block_n)
        duv = torch.empty((B, h2, H, W), device=dev, dtype=x.dtype)
        uv = torch.empty((B, h2, H, W), device=dev, dtype=x.dtype)
        words = bwd_uv_path(dout, ab) == "words"
        n_uv_tiles = cdiv(H * (W // 2), tiles.words_block_q) if words else n_tiles
        pb_uv = torch.empty((B * n_uv_tiles, h2), device=dev, dtype=torch.float32)
        dab = torch.empty((B, 4 * hidden, H, W), device=dev, dtype=x.dtype)
        n_j = cdiv(hidden, tiles.block_j)
        sides = (("g3", 3, 0), ("g5", 5, hidden))
        prec = dot_precision(x.dtype)
        for name, k, x_off in sides:
            if words:
                launch_kernel(_ffn_bwd_uv_words_kernel, (n_j * n_uv_tiles, B),
                    dout, ab, _weight_pairs(params[f"{name}_weight"]), _f32(params[f"{name}_bias"]),
                    wo, duv, uv, pb_uv, hidden, D, H, W, x_off, *dout.stride()[:3], *ab.stride()[:3],
                    K=k, AB64=_ab64(hidden, N), BLOCK_D=BWD_BLOCK_D, BLOCK_J=tiles.block_j,
                    BLOCK_Q=tiles.words_block_q, num_warps=BWD_NUM_WARPS, num_stages=NUM_STAGES,
                    **{**LAUNCH_OPTIONS, "maxnreg": BWD_WORDS_MAXNREG},
                )
                continue
            launch_kernel(_ffn_bwd_uv_kernel, (n_j * n_tiles, B),
                dout, ab, _f32(params[f"{name}_weight"]), _f32(params[f"{name}_bias"]),
                wo, duv, uv, pb_uv, hidden, D, N, H, W, x_off, *dout.stride(), *ab.stride(),
                K=k, PREC=prec, AB64=_ab64(hidden, N), BLOCK_D=BWD_BLOCK_D, BLOCK_J=tiles.block_j, BLOCK_N=tiles.block_n,
                num_warps=BWD_NUM_WARPS, num_stages=NUM_STAGES, **LAUNCH_OPTIONS,
            )
        for name, k, x_off in sides:
            pw = torch.empty((B * n_tiles, 2 * k * k, hidden), device=dev, dtype=torch.float32)
            launch_kernel(_ffn_bwd_x_kernel, (n_tiles, cdiv(hidden, tiles.x_block_j), B),
                duv, ab, _f32(params[f"{name}_weight"]), dab, pw, hidden, N, H, W, x_off, *ab.stride(),
                K=k, BLOCK_J=tiles.x_block_j, BLOCK_N=tiles.block_n, num_warps=BWD_NUM_WARPS, num_stages=NUM_STAGES, **LAUNCH_OPTIONS,
            )
            # fixed-order sums over programs: deterministic
            # partials are [2, K*K, h] (coalesced writes); the gradient is contiguous like the weight
            grads[f"{name}_weight"] = (pw.sum(0).view(2, k * k, hidden).permute(2, 0, 1).contiguous()
                                       .view(hidden, 2, k, k))
        grads["g3_bias"] = pb_uv[:, :hidden].sum(0) if params["g3_bias"] is not None else None
        grads["g5_bias"] = pb_uv[:, hidden:].sum(0) if params["g5_bias"] is not None else None
        # dW_out = dout . cat(u, v)^T over batch and pixels (cuBLAS)
        grads["out_weight"] = _conv1x1_weight_grad(dout, uv, params["out_weight"])
        grads["out_bias"] = dout.sum((0, 2, 3), dtype=torch.float32) if params["out_bias"] is not None else None

        dy, (dw3, dw5), (db3, db5) = depthwise_conv_bwd(
            [dab[:, :h2], dab[:, h2:]], y, [params["dw3_weight"], params["dw5_weight"]],
            need_input_grad=True, need_weight_grad=True, need_bias_grad=True, input_bias=params["in_bias"],
        )
        grads["dw3_weight"], grads["dw5_weight"] = dw3, dw5
        grads["dw3_bias"] = db3 if params["dw3_bias"] is not None else None
        grads["dw5_bias"] = db5 if params["dw5_bias"] is not None else None
        grads["in_bias"] = dy.sum((0, 2, 3), dtype=torch.float32) if params["in_bias"] is not None else None
        # the 1x1 project_in's backward through cuDNN, as the original's (its TF32 setting)
        dx, d_in_w, _ = torch.ops.aten.convolution_backward(
            dy, x, params["in_weight"].detach().to(x.dtype), None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
            [need_input_grad, True, False])
        grads["in_weight"] = d_in_w.float().contiguous()
        if dx is not None:
            # the convolution backends pick dx's memory format from x's and the weight's (channels-last
            # in, channels-last out on CPU and cuDNN); the op promises a contiguous dx (its fake says so).
            # No copy in the model, whose activations are contiguous.
            dx = dx.contiguous()
    return dx, grads


# ----------------------------------------------------------------------------------------------
# Every configuration the launchers can choose
# ----------------------------------------------------------------------------------------------


# (dim, hidden) of the default model's levels (hidden = int(dim * 2.66)): the channel counts are
# constexpr (loop bounds and the x1/x2 channel mapping), so each level is its own specialisation
MODEL_LEVELS = ((48, 127), (96, 255), (192, 510), (384, 1021))


@register_compile_configs
def _compile_configs():
    ab_strides = {k: "i32" for k in ("stride_abb", "stride_abc", "stride_abh", "stride_abw")}
    for dtype in ("float32", "float16", "bfloat16"):
        for dim, hidden in MODEL_LEVELS:
            precs = ("tf32", "ieee") if dtype == "float32" else ("ieee",)
            # the residual is added by the kernel only without a split (else by the reduce kernel)
            # (residual, precision, split, ab64): large images (ab64) never split
            variants = [(r, p, 1, a) for r in (False, True) for p in precs for a in (False, True)]
            variants += [(False, p, s, False) for p in precs for s in range(2, MAX_SPLIT + 1)]
            for (has_res, prec, split, ab64), arch in itertools.product(variants, COMPILE_ARCHS):
                exact = dtype == "float32" and prec == "ieee"
                cfg = _fwd_config(dim, exact, arch)
                yield CompileConfig(
                    _ffn_fwd_kernel,
                    {"ab_ptr": ptr(dtype), "g3p_ptr": "*i64", "g3b_ptr": "*fp32", "g5p_ptr": "*i64",
                     "g5b_ptr": "*fp32", "wot_ptr": ptr(dtype), "bo_ptr": "*fp32", "res_ptr": ptr(dtype),
                     "out_ptr": ptr(dtype), **{k: "i32" for k in ("N", "H", "W")}, **ab_strides,
                     **({"stride_abb": "i64"} if ab64 else {}),
                     **{k: "i32" for k in ("stride_rb", "stride_rc", "stride_rh", "stride_rw")}},
                    {"HID": hidden, "D": dim, "HAS_RES": has_res, "PREC": prec, "SPLIT": split, "AB64": ab64,
                     "BLOCK_D": cfg.block_d, "BLOCK_J": FWD_BLOCK_J, "BLOCK_Q": cfg.block_q},
                    num_warps=cfg.num_warps, num_stages=NUM_STAGES, tag=dtype, extra={"maxnreg": cfg.maxnreg},
                    archs=(arch,),
                )
                if dtype != "float32":
                    yield CompileConfig(
                        _ffn_fwd_words_kernel,
                        {"ab_ptr": ptr(dtype), "g3p_ptr": "*i64", "g3b_ptr": "*fp32", "g5p_ptr": "*i64",
                         "g5b_ptr": "*fp32", "wot_ptr": ptr(dtype), "bo_ptr": "*fp32", "res_ptr": ptr(dtype),
                         "out_ptr": ptr(dtype), **{k: "i32" for k in ("N", "H", "W", "stride_abb", "stride_abc",
                                                                       "stride_abh", "stride_rb", "stride_rc", "stride_rh")},
                         **({"stride_abb": "i64"} if ab64 else {})},
                        {"HID": hidden, "D": dim, "HAS_RES": has_res, "SPLIT": split, "AB64": ab64,
                         "BLOCK_D": cfg.block_d, "BLOCK_J": FWD_BLOCK_J, "BLOCK_Q": cfg.block_q},
                        num_warps=cfg.num_warps, num_stages=NUM_STAGES, tag=dtype, extra={"maxnreg": cfg.maxnreg},
                        archs=(arch,),
                    )
            for split in range(2, MAX_SPLIT + 1):
                for has_res in (False, True):
                    yield CompileConfig(
                        _ffn_fwd_reduce_kernel,
                        {"part_ptr": "*fp32", "bo_ptr": "*fp32", "res_ptr": ptr(dtype), "out_ptr": ptr(dtype),
                         **{k: "i32" for k in ("N", "W", "stride_rb", "stride_rc", "stride_rh", "stride_rw")}},
                        {"D": dim, "SPLIT": split, "HAS_RES": has_res, "BLOCK_N": REDUCE_BLOCK_N},
                        num_warps=4, num_stages=NUM_STAGES, tag=dtype,
                    )
            for k in (3, 5):
                for prec, ab64 in ((p, a) for p in precs for a in (False, True)):
                    yield CompileConfig(
                        _ffn_bwd_uv_kernel,
                        {"dout_ptr": ptr(dtype), "ab_ptr": ptr(dtype), "gw_ptr": "*fp32", "gb_ptr": "*fp32",
                         "wo_ptr": ptr(dtype), "duv_ptr": ptr(dtype), "uv_ptr": ptr(dtype), "pb_ptr": "*fp32",
                         **{k_: "i32" for k_ in ("N", "H", "W", "x_off")},
                         **{k_: "i32" for k_ in ("stride_db", "stride_dc", "stride_dh", "stride_dw")}, **ab_strides,
                         **({"stride_abb": "i64"} if ab64 else {})},
                        {"HID": hidden, "D": dim, "K": k, "PREC": prec, "AB64": ab64, "BLOCK_D": BWD_BLOCK_D,
                         "BLOCK_J": BWD_BLOCK_J, "BLOCK_N": BWD_BLOCK_N},
                        num_warps=BWD_NUM_WARPS, num_stages=NUM_STAGES, tag=dtype,
                    )
                    if dtype != "float32" and prec == precs[0]:
                        yield CompileConfig(
                            _ffn_bwd_uv_words_kernel,
                            {"dout_ptr": ptr(dtype), "ab_ptr": ptr(dtype), "gp_ptr": "*i64", "gb_ptr": "*fp32",
                             "wo_ptr": ptr(dtype), "duv_ptr": ptr(dtype), "uv_ptr": ptr(dtype), "pb_ptr": "*fp32",
                             **{k_: "i32" for k_ in ("H", "W", "x_off", "stride_db", "stride_dc", "stride_dh",
                                                     "stride_abb", "stride_abc", "stride_abh")},
                             **({"stride_abb": "i64"} if ab64 else {})},
                            {"HID": hidden, "D": dim, "K": k, "AB64": ab64, "BLOCK_D": BWD_BLOCK_D,
                             "BLOCK_J": BWD_BLOCK_J, "BLOCK_Q": BWD_WORDS_BLOCK_Q},
                            num_warps=BWD_NUM_WARPS, num_stages=NUM_STAGES, tag=dtype,
                            extra={"maxnreg": BWD_WORDS_MAXNREG},
                        )
                yield CompileConfig(
                    _ffn_bwd_x_kernel,
                    {"duv_ptr": ptr(dtype), "ab_ptr": ptr(dtype), "gw_ptr": "*fp32", "dab_ptr": ptr(dtype),
                     "pw_ptr": "*fp32", **{k_: "i32" for k_ in ("N", "H", "W", "x_off")}, **ab_strides},
                    {"HID": hidden, "K": k, "BLOCK_J": BWD_X_BLOCK_J, "BLOCK_N": BWD_BLOCK_N},
                    num_warps=BWD_NUM_WARPS, num_stages=NUM_STAGES, tag=dtype,
                )
