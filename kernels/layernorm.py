"""Channel LayerNorm of NCHW tensors (DRSformer's ``norm1``/``norm2``): forward and backward.

Each pixel is normalised over its C channels (biased variance, eps 1e-5):
  WithBias: ``y = (x - mean) * rstd * w + b``;  BiasFree: ``y = x * rstd * w``.

Layout: a program owns a tile of ``BLOCK_C`` (all channels, padded) x ``BLOCK_N`` pixels of one
image; pixels are the contiguous axis of NCHW, so loads are coalesced along N. Any strides are
accepted: a pixel index n is split into (n // W, n % W) once per tile.

Bytes (fp32, per element of x = B*C*H*W):
  forward  : read x, write y (+ 8 bytes/pixel of mean/rstd)        -> 8 B/elem
  backward : read x, dy, write dx (+ mean/rstd, partial dw/db)      -> 12 B/elem
The original (``to_3d`` rearrange, mean, var, sub, div, mul, add, ``to_4d``) makes ~9 passes in the
forward (~36 B/elem) and saves x, (x - mu), the normalised tensor and more for backward.

Element offsets are int64 (C*H*W may reach 2**31); pixel indices are int32 (H*W <= MAX_PIXELS).

Launch picture on sm_90 (compiled as launched, num_stages 3; batch 1, 256x256 input, fp32):
  kernel     shape          programs  warps  regs before/after  resident warps/SM  HBM bytes  t_HBM
  _ln_fwd    48 x 256^2       1024      8        64 / 60             32              25.7 MB    7.7 us
  _ln_bwd    48 x 256^2       2048      4        87 / 88             20              38.5 MB   11.5 us
  _ln_fwd    96 x 256^2       2048      8        62 / 60             32              51 MB     15 us
  _ln_bwd    96 x 256^2       4096      4        83 / 86             20              77 MB     23 us
Every launch at the default model's shapes holds >= 16 resident warps per SM; at the 384x32^2 latent
the grids are 128 programs for < 4 MB (a few microseconds either way).

Weight and bias gradients are reduced deterministically: each program writes its per-channel
partial sums to its own row of a [programs, C] fp32 buffer, summed afterwards in a fixed order.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import launch_kernel
from ._registry import CompileConfig, ptr, register_compile_configs
from ._utils import LAUNCH_OPTIONS, SUPPORTED_DTYPES, cdiv, check_tensor, device_guard, next_pow2

EPS = 1e-5
MAX_CHANNELS = 1024
# Passed at every launch and registered with the compile configs (no loops: it changes nothing)
NUM_STAGES = 3
# pixel indices within an image are int32 (a tile's last index must not wrap); element offsets are int64
MAX_PIXELS = 2**31 - 2**16


@triton.jit
def _ln_fwd_kernel(
    x_ptr,  # x: [B, C, H, W], any strides
    w_ptr,  # weight: [C] fp32
    b_ptr,  # bias: [C] fp32 (unused when not HAS_BIAS)
    y_ptr,  # y: [B, C, H, W] contiguous
    mean_ptr,  # mean: [B, H*W] fp32
    rstd_ptr,  # rstd: [B, H*W] fp32
    C, N, W,
    stride_xb, stride_xc, stride_xh, stride_xw,
    eps,
    HAS_BIAS: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    i_n = tl.program_id(0)
    i_b = tl.program_id(1).to(tl.int64)
    o_c = tl.arange(0, BLOCK_C)
    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_c = o_c < C
    m_n = o_n < N
    m = m_c[:, None] & m_n[None, :]
    # int64 offsets: one image may span >= 2**31 elements (pixel indices stay int32, see _check_inputs)
    o_c64 = o_c.to(tl.int64)
    o_pix = (o_n // W).to(tl.int64) * stride_xh + (o_n % W).to(tl.int64) * stride_xw

    b_x = tl.load(x_ptr + i_b * stride_xb + o_c64[:, None] * stride_xc + o_pix[None, :], mask=m, other=0.0)
    b_x = b_x.to(tl.float32)
    b_mean = tl.sum(b_x, axis=0) / C
    # centred values in registers: a second reduction costs no memory traffic and avoids the
    # cancellation of E[x^2] - E[x]^2
    b_xc = tl.where(m, b_x - b_mean[None, :], 0.0)
    b_var = tl.sum(b_xc * b_xc, axis=0) / C
    b_rstd = 1.0 / tl.sqrt(b_var + eps)

    b_w = tl.load(w_ptr + o_c, mask=m_c, other=0.0)
    if HAS_BIAS:
        b_b = tl.load(b_ptr + o_c, mask=m_c, other=0.0)
        b_y = b_xc * b_rstd[None, :] * b_w[:, None] + b_b[:, None]
    else:
        b_y = b_x * b_rstd[None, :] * b_w[:, None]
    tl.store(y_ptr + i_b * C * N + o_c64[:, None] * N + o_n[None, :], b_y.to(y_ptr.dtype.element_ty), mask=m)
    tl.store(mean_ptr + i_b * N + o_n, b_mean, mask=m_n)
    tl.store(rstd_ptr + i_b * N + o_n, b_rstd, mask=m_n)


@triton.jit
def _ln_bwd_kernel(
    x_ptr,  # x: [B, C, H, W], any strides
    dy_ptr,  # dy: [B, C, H, W], any strides
    w_ptr,  # weight: [C] fp32
    mean_ptr,  # [B, H*W] fp32
    rstd_ptr,  # [B, H*W] fp32
    dx_ptr,  # dx: [B, C, H, W] contiguous
    dw_part_ptr,  # [B * n_blocks, C] fp32: this program's partial sum of dy * xhat
    db_part_ptr,  # [B * n_blocks, C] fp32: partial sum of dy (unused when not HAS_BIAS)
    C, N, W,
    stride_xb, stride_xc, stride_xh, stride_xw,
    stride_db, stride_dc, stride_dh, stride_dw,
    HAS_BIAS: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    i_n = tl.program_id(0)
    i_b = tl.program_id(1).to(tl.int64)
    o_c = tl.arange(0, BLOCK_C)
    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_c = o_c < C
    m_n = o_n < N
    m = m_c[:, None] & m_n[None, :]
    # int64 offsets: one image may span >= 2**31 elements (pixel indices stay int32)
    o_c64 = o_c.to(tl.int64)
    o_h = (o_n // W).to(tl.int64)
    o_w = (o_n % W).to(tl.int64)

    b_x = tl.load(x_ptr + i_b * stride_xb + o_c64[:, None] * stride_xc + (o_h * stride_xh + o_w * stride_xw)[None, :],
                  mask=m, other=0.0).to(tl.float32)
    b_dy = tl.load(dy_ptr + i_b * stride_db + o_c64[:, None] * stride_dc + (o_h * stride_dh + o_w * stride_dw)[None, :],
                   mask=m, other=0.0).to(tl.float32)
    b_mean = tl.load(mean_ptr + i_b * N + o_n, mask=m_n, other=0.0)
    b_rstd = tl.load(rstd_ptr + i_b * N + o_n, mask=m_n, other=0.0)
    b_w = tl.load(w_ptr + o_c, mask=m_c, other=0.0)

    b_xhat = tl.where(m, (b_x - b_mean[None, :]) * b_rstd[None, :], 0.0)
    b_g = b_dy * b_w[:, None]
    if HAS_BIAS:
        # y = xhat * w + b:  dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
        b_c1 = tl.sum(b_g * b_xhat, axis=0) / C
        b_c2 = tl.sum(b_g, axis=0) / C
        b_dx = (b_g - b_c2[None, :] - b_xhat * b_c1[None, :]) * b_rstd[None, :]
        b_dw = tl.sum(b_dy * b_xhat, axis=1)
    else:
        # y = x * rstd * w, rstd from the variance around the mean:
        #   dx = rstd * (g - xhat * rstd * mean(g * x))
        b_c1 = tl.sum(b_g * b_x, axis=0) / C
        b_dx = (b_g - b_xhat * (b_rstd * b_c1)[None, :]) * b_rstd[None, :]
        b_dw = tl.sum(b_dy * b_x * b_rstd[None, :], axis=1)
    tl.store(dx_ptr + i_b * C * N + o_c64[:, None] * N + o_n[None, :], b_dx.to(dx_ptr.dtype.element_ty), mask=m)

    i_part = i_b * tl.num_programs(0) + i_n
    tl.store(dw_part_ptr + i_part * C + o_c, b_dw, mask=m_c)
    if HAS_BIAS:
        tl.store(db_part_ptr + i_part * C + o_c, tl.sum(b_dy, axis=1), mask=m_c)


def _config(channels: int, backward: bool = False) -> tuple[int, int, int]:
    """(BLOCK_C, BLOCK_N, num_warps): all channels in one tile of ~4K values (~2K in the backward,
    which keeps three tiles live), at least 8 pixels (32 B of fp32) per channel row."""
    block_c = max(16, next_pow2(channels))
    block_n = max(8, min(128, (2048 if backward else 4096) // block_c))
    num_warps = 4 if block_c * block_n <= 2048 else 8
    return block_c, block_n, num_warps


def _check_inputs(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    check_tensor("x", x, ndim=4, dtypes=SUPPORTED_DTYPES)
    c = x.shape[1]
    if c > MAX_CHANNELS:
        raise ValueError(f"layer_norm kernels support at most {MAX_CHANNELS} channels, got {c}")
    if x.shape[2] * x.shape[3] > MAX_PIXELS:
        raise ValueError(f"layer_norm kernels support at most {MAX_PIXELS} pixels per image (H * W), "
                         f"got {x.shape[2]} x {x.shape[3]}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            check_tensor(name, t, device=x.device, shape=(c,))


def layer_norm_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """x: [B, C, H, W] (fp32/fp16/bf16, any strides); weight, bias: [C] (bias None = BiasFree).

    Returns ``y`` [B, C, H, W] (contiguous, x's dtype) and fp32 ``mean``, ``rstd`` [B, H*W].
    """
    _check_inputs(x, weight, bias)
    B, C, H, W = x.shape
    N = H * W
    y = torch.empty((B, C, H, W), device=x.device, dtype=x.dtype)
    mean = torch.empty((B, N), device=x.device, dtype=torch.float32)
    rstd = torch.empty((B, N), device=x.device, dtype=torch.float32)
    if y.numel() == 0:
        return y, mean, rstd
    w32 = weight.float()
    b32 = bias.float() if bias is not None else w32
    block_c, block_n, num_warps = _config(C)
    grid = (cdiv(N, block_n), B)
    with device_guard(x):
        launch_kernel(_ln_fwd_kernel, grid,
            x, w32, b32, y, mean, rstd, C, N, W, *x.stride(), EPS,
            HAS_BIAS=bias is not None, BLOCK_C=block_c, BLOCK_N=block_n, num_warps=num_warps, num_stages=NUM_STAGES, **LAUNCH_OPTIONS,
        )
    return y, mean, rstd


def layer_norm_bwd(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    has_bias: bool,
):
    """Gradients of :func:`layer_norm_fwd`: ``dx`` [B, C, H, W] (x's dtype), ``dweight`` [C] and
    ``dbias`` [C] (None when ``has_bias`` is False), both in fp32.
    """
    B, C, H, W = x.shape
    N = H * W
    if dy.shape != x.shape:
        raise ValueError(f"grad_output has shape {tuple(dy.shape)}, expected {tuple(x.shape)}")
    if dy.dtype != x.dtype:
        dy = dy.to(x.dtype)
    dx = torch.empty((B, C, H, W), device=x.device, dtype=x.dtype)
    block_c, block_n, num_warps = _config(C, backward=True)
    n_blocks = cdiv(N, block_n)
    dw_part = torch.empty((B * n_blocks, C), device=x.device, dtype=torch.float32)
    db_part = torch.empty((B * n_blocks, C), device=x.device, dtype=torch.float32) if has_bias else dw_part
    if dx.numel() == 0:
        dw = torch.zeros(C, device=x.device, dtype=torch.float32)
        return dx, dw, (torch.zeros_like(dw) if has_bias else None)
    with device_guard(x):
        launch_kernel(_ln_bwd_kernel, (n_blocks, B),
            x, dy, weight.float(), mean, rstd, dx, dw_part, db_part, C, N, W, *x.stride(), *dy.stride(),
            HAS_BIAS=has_bias, BLOCK_C=block_c, BLOCK_N=block_n, num_warps=num_warps, num_stages=NUM_STAGES, **LAUNCH_OPTIONS,
        )
    # fixed-order reduction over programs: deterministic, unlike float atomics
    dw = dw_part.sum(0)
    db = db_part.sum(0) if has_bias else None
    return dx, dw, db


@register_compile_configs
def _compile_configs():
    for block_c in (16, 32, 64, 128, 256, 512, 1024):
        bc, bn, nw = _config(block_c)
        bc_b, bn_b, nw_b = _config(block_c, backward=True)
        for dtype in ("float32", "float16", "bfloat16"):
            for has_bias in (True, False):
                consts = {"HAS_BIAS": has_bias, "BLOCK_C": bc, "BLOCK_N": bn}
                consts_b = {"HAS_BIAS": has_bias, "BLOCK_C": bc_b, "BLOCK_N": bn_b}
                ints = {k: "i32" for k in ("C", "N", "W", "stride_xb", "stride_xc", "stride_xh", "stride_xw")}
                yield CompileConfig(
                    _ln_fwd_kernel,
                    {"x_ptr": ptr(dtype), "w_ptr": "*fp32", "b_ptr": "*fp32", "y_ptr": ptr(dtype),
                     "mean_ptr": "*fp32", "rstd_ptr": "*fp32", **ints, "eps": "fp32"},
                    consts, num_warps=nw, num_stages=NUM_STAGES, tag=dtype,
                )
                ints_b = dict(ints, **{k: "i32" for k in ("stride_db", "stride_dc", "stride_dh", "stride_dw")})
                yield CompileConfig(
                    _ln_bwd_kernel,
                    {"x_ptr": ptr(dtype), "dy_ptr": ptr(dtype), "w_ptr": "*fp32", "mean_ptr": "*fp32",
                     "rstd_ptr": "*fp32", "dx_ptr": ptr(dtype), "dw_part_ptr": "*fp32", "db_part_ptr": "*fp32",
                     **ints_b},
                    consts_b, num_warps=nw_b, num_stages=NUM_STAGES, tag=dtype,
                )
