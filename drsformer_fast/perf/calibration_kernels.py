"""Triton kernels that stand in for published H100 measurements, so the static model can be calibrated.

Each kernel here is written for this project (none is copied): it moves the same bytes, with the same
grid, block size, ``num_warps`` and per-program work, as the Liger-Kernel Triton kernel whose H100
timing is recorded in ``benchmarks/data/liger_h100.csv`` (the row's ``source_commit`` names the
Liger-Kernel version read for the launch configuration). :func:`launches_for` turns a row of that file
into the launches its timed call makes, Triton ones (these kernels, with fake or meta tensors as
arguments) and the small ATen kernels around them (column sums, gradient accumulation, the
``contiguous()`` of an expanded gradient), which ``calibrate`` predicts.

Launch configuration (Liger's ``calculate_settings``): ``BLOCK = next_power_of_2(cols)``, ``num_warps``
4, 8 from a 2048 block, 16 from 8192, 32 from 32768. Row kernels run one program per row; the
LayerNorm and RMSNorm backward kernels run one program per SM (132), each looping over
``ceil(rows / 132)`` rows and writing a row of partial weight gradients that ATen sums.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import triton
import triton.language as tl

H100_SMS = 132


def block_settings(cols: int) -> tuple[int, int]:
    """(BLOCK, num_warps) for a row of ``cols`` elements, as the measured kernels choose them."""
    if cols < 1:
        raise ValueError(f"cols must be >= 1, got {cols}")
    block = triton.next_power_of_2(cols)
    warps = 32 if block >= 32768 else 16 if block >= 8192 else 8 if block >= 2048 else 4
    return block, warps


# --------------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def relu_squared_fwd_kernel(p_y, p_x, stride, N_COLS: tl.constexpr, BLOCK: tl.constexpr):
    i_row = tl.program_id(0).to(tl.int64)
    o_col = tl.arange(0, BLOCK)
    m_col = o_col < N_COLS
    b_x = tl.load(p_x + i_row * stride + o_col, mask=m_col, other=0.0)
    b_r = tl.maximum(b_x, 0.0)
    tl.store(p_y + i_row * stride + o_col, b_r * b_r, mask=m_col)


@triton.jit
def relu_squared_bwd_kernel(p_dx, p_dy, p_x, stride, N_COLS: tl.constexpr, BLOCK: tl.constexpr):
    i_row = tl.program_id(0).to(tl.int64)
    o_col = tl.arange(0, BLOCK)
    m_col = o_col < N_COLS
    b_dy = tl.load(p_dy + i_row * stride + o_col, mask=m_col, other=0.0)
    b_x = tl.load(p_x + i_row * stride + o_col, mask=m_col, other=0.0)
    b_dx = b_dy * 2 * tl.maximum(b_x, 0.0)
    tl.store(p_dx + i_row * stride + o_col, b_dx, mask=m_col)


@triton.jit
def layer_norm_fwd_kernel(p_y, p_x, p_w, p_b, p_mean, p_rstd, stride, n_cols, eps, BLOCK: tl.constexpr):
    i_row = tl.program_id(0)
    o_col = tl.arange(0, BLOCK)
    m_col = o_col < n_cols
    b_x = tl.load(p_x + i_row * stride + o_col, mask=m_col, other=0.0)
    b_w = tl.load(p_w + o_col, mask=m_col, other=0.0)
    b_b = tl.load(p_b + o_col, mask=m_col, other=0.0)
    mean = tl.sum(b_x, axis=0) / n_cols
    b_c = tl.where(m_col, b_x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(b_c * b_c, axis=0) / n_cols + eps)
    tl.store(p_mean + i_row, mean)
    tl.store(p_rstd + i_row, rstd)
    tl.store(p_y + i_row * stride + o_col, b_c * rstd * b_w + b_b, mask=m_col)


@triton.jit
def layer_norm_bwd_kernel(p_dx, p_dw_part, p_db_part, p_dy, p_x, p_w, p_mean, p_rstd, stride, n_rows, n_cols,
                          ROWS_PER_PROGRAM: tl.constexpr, BLOCK: tl.constexpr):
    i_prog = tl.program_id(0)
    o_col = tl.arange(0, BLOCK)
    m_col = o_col < n_cols
    b_dw = tl.zeros((BLOCK,), dtype=tl.float32)
    b_db = tl.zeros((BLOCK,), dtype=tl.float32)
    row_start = i_prog * ROWS_PER_PROGRAM
    row_end = tl.minimum(row_start + ROWS_PER_PROGRAM, n_rows)
    for i_row in range(row_start, row_end):
        b_x = tl.load(p_x + i_row * stride + o_col, mask=m_col, other=0.0)
        b_w = tl.load(p_w + o_col, mask=m_col, other=0.0)
        b_dy = tl.load(p_dy + i_row * stride + o_col, mask=m_col, other=0.0)
        mean = tl.load(p_mean + i_row)
        rstd = tl.load(p_rstd + i_row)
        b_xhat = (b_x - mean) * rstd
        b_wdy = b_w * b_dy
        c1 = tl.sum(b_xhat * b_wdy, axis=0) / n_cols
        c2 = tl.sum(b_wdy, axis=0) / n_cols
        tl.store(p_dx + i_row * stride + o_col, (b_wdy - (b_xhat * c1 + c2)) * rstd, mask=m_col)
        b_dw += b_dy * b_xhat
        b_db += b_dy
    tl.store(p_dw_part + i_prog * n_cols + o_col, b_dw, mask=m_col)
    tl.store(p_db_part + i_prog * n_cols + o_col, b_db, mask=m_col)


@triton.jit
def rms_norm_fwd_kernel(p_y, p_rstd, p_x, p_w, stride, n_cols, eps, BLOCK: tl.constexpr):
    i_row = tl.program_id(0).to(tl.int64)
    o_col = tl.arange(0, BLOCK)
    m_col = o_col < n_cols
    b_x = tl.load(p_x + i_row * stride + o_col, mask=m_col, other=0.0).to(tl.float32)
    b_w = tl.load(p_w + o_col, mask=m_col, other=0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(b_x * b_x, axis=0) / n_cols + eps)
    tl.store(p_rstd + i_row, rstd)
    b_y = (b_x * rstd).to(b_w.dtype) * b_w
    tl.store(p_y + i_row * stride + o_col, b_y, mask=m_col)


@triton.jit
def rms_norm_bwd_kernel(p_dx, p_dw_part, p_dy, p_x, p_w, p_rstd, stride, n_rows, n_cols,
                        ROWS_PER_PROGRAM: tl.constexpr, BLOCK: tl.constexpr):
    i_prog = tl.program_id(0)
    o_col = tl.arange(0, BLOCK)
    m_col = o_col < n_cols
    b_w = tl.load(p_w + o_col, mask=m_col, other=0.0).to(tl.float32)
    b_dw = tl.zeros((BLOCK,), dtype=tl.float32)
    row_start = i_prog * ROWS_PER_PROGRAM
    row_end = tl.minimum(row_start + ROWS_PER_PROGRAM, n_rows)
    for i_row in range(row_start, row_end):
        b_dy = tl.load(p_dy + i_row * stride + o_col, mask=m_col, other=0.0).to(tl.float32)
        b_x = tl.load(p_x + i_row * stride + o_col, mask=m_col, other=0.0).to(tl.float32)
        rstd = tl.load(p_rstd + i_row)
        b_xhat = b_x * rstd
        b_g = b_dy * b_w
        c = tl.sum(b_g * b_xhat, axis=0) / n_cols
        b_dx = rstd * (b_g - b_xhat * c)
        tl.store(p_dx + i_row * stride + o_col, b_dx.to(p_dx.dtype.element_ty), mask=m_col)
        b_dw += b_dy * b_xhat
    tl.store(p_dw_part + i_prog * n_cols + o_col, b_dw, mask=m_col)


@triton.jit
def swiglu_gate_up_fwd_kernel(p_c, p_y, in_stride, out_stride, FFN: tl.constexpr, BLOCK: tl.constexpr):
    i_row = tl.program_id(0).to(tl.int64)
    o_col = tl.arange(0, BLOCK)
    m_col = o_col < FFN
    b_gate = tl.load(p_y + i_row * in_stride + o_col, mask=m_col, other=0.0).to(tl.float32)
    b_up = tl.load(p_y + i_row * in_stride + FFN + o_col, mask=m_col, other=0.0)
    b_act = (b_gate * tl.sigmoid(b_gate)).to(b_up.dtype)
    tl.store(p_c + i_row * out_stride + o_col, b_act * b_up, mask=m_col)


@triton.jit
def swiglu_gate_up_bwd_kernel(p_dy, p_dc, p_y, in_stride, out_stride, FFN: tl.constexpr, BLOCK: tl.constexpr):
    i_row = tl.program_id(0).to(tl.int64)
    o_col = tl.arange(0, BLOCK)
    m_col = o_col < FFN
    b_dc = tl.load(p_dc + i_row * out_stride + o_col, mask=m_col, other=0.0)
    b_gate = tl.load(p_y + i_row * in_stride + o_col, mask=m_col, other=0.0).to(tl.float32)
    b_up = tl.load(p_y + i_row * in_stride + FFN + o_col, mask=m_col, other=0.0)
    b_sig = tl.sigmoid(b_gate)
    b_silu = b_gate * b_sig
    b_dgate = b_dc * (b_silu * (1 - b_sig) + b_sig) * b_up
    b_dup = b_dc * b_silu
    tl.store(p_dy + i_row * in_stride + o_col, b_dgate, mask=m_col)
    tl.store(p_dy + i_row * in_stride + FFN + o_col, b_dup, mask=m_col)


# --------------------------------------------------------------------------------------------
# a measured row -> its launches
# --------------------------------------------------------------------------------------------


@dataclass
class TritonLaunch:
    """A Triton launch of one of the kernels above, on meta tensors."""

    kernel: object
    grid: tuple
    args: tuple
    kwargs: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__


@dataclass
class AtenLaunch:
    """A small ATen kernel: what it is and the bytes it reads and writes (each once)."""

    name: str
    bytes: int


def _meta(*shape, dtype):
    import torch

    return torch.empty(*shape, dtype=dtype, device="meta")


def _dtype(name: str):
    import torch

    table = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if name not in table:
        raise ValueError(f"unknown dtype {name!r}: choose from {', '.join(table)}")
    return table[name]


KERNELS = ("layer_norm", "relu_squared", "megatron_rms_norm", "megatron_swiglu")


def launches_for(kernel: str, pass_: str, dtype: str, rows: int, cols: int) -> list:
    """The launches of one timed call of a measured row (``benchmarks/data/liger_h100.csv``), in order:
    :class:`TritonLaunch` and :class:`AtenLaunch` items."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}: choose from {', '.join(KERNELS)}")
    if pass_ not in ("fwd", "bwd"):
        raise ValueError(f"unknown pass {pass_!r}: choose from fwd, bwd")
    if rows < 1 or cols < 1:
        raise ValueError(f"rows and cols must be >= 1, got {rows} x {cols}")
    t = _dtype(dtype)
    es = 4 if dtype == "fp32" else 2
    block, warps = block_settings(cols)
    if kernel == "relu_squared":
        x, y = _meta(rows, cols, dtype=t), _meta(rows, cols, dtype=t)
        if pass_ == "fwd":
            return [TritonLaunch(relu_squared_fwd_kernel, (rows,), (y, x, cols),
                                 dict(N_COLS=cols, BLOCK=block, num_warps=warps))]
        dy = _meta(rows, cols, dtype=t)
        return [TritonLaunch(relu_squared_bwd_kernel, (rows,), (y, dy, x, cols),
                             dict(N_COLS=cols, BLOCK=block, num_warps=warps))]
    if kernel == "layer_norm":
        x, y, w, b = _meta(rows, cols, dtype=t), _meta(rows, cols, dtype=t), _meta(cols, dtype=t), _meta(cols, dtype=t)
        mean, rstd = _meta(rows, dtype=t), _meta(rows, dtype=t)
        if pass_ == "fwd":
            return [TritonLaunch(layer_norm_fwd_kernel, (rows,), (y, x, w, b, mean, rstd, cols, cols, 1e-6),
                                 dict(BLOCK=block, num_warps=warps))]
        dy, dx = _meta(rows, cols, dtype=t), _meta(rows, cols, dtype=t)
        dw_part, db_part = _meta(H100_SMS, cols, dtype=t), _meta(H100_SMS, cols, dtype=t)
        per = math.ceil(rows / H100_SMS)
        part = H100_SMS * cols * es
        return [TritonLaunch(layer_norm_bwd_kernel, (H100_SMS,),
                             (dx, dw_part, db_part, dy, x, w, mean, rstd, cols, rows, cols),
                             dict(ROWS_PER_PROGRAM=per, BLOCK=block, num_warps=warps)),
                AtenLaunch("sum(dW partials)", part + cols * es), AtenLaunch("sum(dB partials)", part + cols * es),
                AtenLaunch("W.grad += dW", 3 * cols * es), AtenLaunch("B.grad += dB", 3 * cols * es)]
    if kernel == "megatron_rms_norm":
        x, y, w = _meta(rows, cols, dtype=t), _meta(rows, cols, dtype=t), _meta(cols, dtype=t)
        rstd = _meta(rows, dtype=_dtype("fp32"))
        fwd = TritonLaunch(rms_norm_fwd_kernel, (rows,), (y, rstd, x, w, cols, cols, 1e-6),
                           dict(BLOCK=block, num_warps=warps))
        if pass_ == "fwd":
            return [fwd]
        # the benchmark times forward + out.sum() + backward
        dy, dx = _meta(rows, cols, dtype=t), _meta(rows, cols, dtype=t)
        dw_part = _meta(H100_SMS, cols, dtype=_dtype("fp32"))
        per = math.ceil(rows / H100_SMS)
        return [fwd, AtenLaunch("out.sum()", rows * cols * es), AtenLaunch("ones (grad of the sum)", es),
                AtenLaunch("expanded grad .contiguous()", rows * cols * es),
                TritonLaunch(rms_norm_bwd_kernel, (H100_SMS,), (dx, dw_part, dy, x, w, rstd, cols, rows, cols),
                             dict(ROWS_PER_PROGRAM=per, BLOCK=block, num_warps=warps)),
                AtenLaunch("sum(dW partials)", H100_SMS * cols * 4 + cols * 4),
                AtenLaunch("dW.to(bf16)", cols * 4 + cols * es), AtenLaunch("W.grad += dW", 3 * cols * es)]
    # megatron_swiglu: gate and up concatenated, rows x 2 cols in, rows x cols out
    y, c = _meta(rows, 2 * cols, dtype=t), _meta(rows, cols, dtype=t)
    fwd = TritonLaunch(swiglu_gate_up_fwd_kernel, (rows,), (c, y, 2 * cols, cols),
                       dict(FFN=cols, BLOCK=block, num_warps=warps))
    if pass_ == "fwd":
        return [fwd]
    dc, dy = _meta(rows, cols, dtype=t), _meta(rows, 2 * cols, dtype=t)
    return [fwd, AtenLaunch("out.sum()", rows * cols * es), AtenLaunch("ones (grad of the sum)", es),
            AtenLaunch("expanded grad .contiguous()", rows * cols * es),
            TritonLaunch(swiglu_gate_up_bwd_kernel, (rows,), (dy, dc, y, 2 * cols, cols),
                         dict(FFN=cols, BLOCK=block, num_warps=warps))]
