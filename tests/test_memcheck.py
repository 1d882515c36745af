"""The interpreter's memory checker (tests/memcheck.py): deliberately wrong kernels are each reported
with the right message, correct ones report nothing, and a bad store does not reach memory.

Every tensor a wrong kernel overruns is a view into a larger buffer, so that the stray lanes land in
host memory the test owns (and can inspect) rather than in whatever the allocator placed next."""

import memcheck
import pytest
import torch
import triton
import triton.language as tl
from conftest import GPU_MODE

pytestmark = [
    pytest.mark.skipif(GPU_MODE, reason="the memory checker runs in Triton's interpreter only"),
    pytest.mark.skipif(not memcheck.enabled_by_env(), reason=f"{memcheck.ENV_SWITCH}=0: the checker is off"),
]


@triton.jit
def _copy_kernel(x_ptr, y_ptr, N, EXTRA: tl.constexpr, BLOCK: tl.constexpr):
    o_n = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m_n = o_n < N + EXTRA  # EXTRA > 0: the mask lets lanes past the end through
    b_x = tl.load(x_ptr + o_n, mask=m_n, other=0.0)
    tl.store(y_ptr + o_n, b_x, mask=o_n < N)


@triton.jit
def _shifted_load_kernel(x_ptr, y_ptr, N, SHIFT: tl.constexpr, BLOCK: tl.constexpr):
    o_n = tl.arange(0, BLOCK)
    b_x = tl.load(x_ptr + o_n + SHIFT, mask=o_n < N, other=0.0)
    tl.store(y_ptr + o_n, b_x, mask=o_n < N)


@triton.jit
def _unmasked_store_kernel(y_ptr, BLOCK: tl.constexpr):
    o_n = tl.arange(0, BLOCK)
    tl.store(y_ptr + o_n, o_n.to(tl.float32) + 1.0)


@triton.jit
def _rows_kernel(x_ptr, y_ptr, R, C, stride_xr, stride_xc, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    o_r = tl.arange(0, BLOCK_R)
    o_c = tl.arange(0, BLOCK_C)
    m = (o_r[:, None] < R) & (o_c[None, :] < C)
    b_x = tl.load(x_ptr + o_r[:, None] * stride_xr + o_c[None, :] * stride_xc, mask=m, other=0.0)
    tl.store(y_ptr + o_r[:, None] * C + o_c[None, :], b_x, mask=m)


@triton.jit
def _words_kernel(x_ptr, y_ptr, N_WORDS, BLOCK: tl.constexpr):
    """fp16 pairs read as int32 words (what the project's word kernels do)."""
    o_t = tl.arange(0, BLOCK)
    p_x = x_ptr.to(tl.pointer_type(tl.int32))
    b_w = tl.load(p_x + o_t, mask=o_t < N_WORDS, other=0)
    tl.store(y_ptr + o_t, b_w, mask=o_t < N_WORDS)


@triton.jit
def _hint_kernel(x_ptr, y_ptr, N, START: tl.constexpr, BLOCK: tl.constexpr):
    o_n = tl.multiple_of(START + tl.arange(0, BLOCK), BLOCK)  # true only when START is a multiple
    m_n = o_n < N
    b_x = tl.load(x_ptr + o_n, mask=m_n, other=0.0)
    tl.store(y_ptr + o_n, b_x, mask=m_n)


@triton.jit
def _false_contiguity_kernel(x_ptr, y_ptr, N, BLOCK: tl.constexpr):
    o_n = tl.max_contiguous(tl.arange(0, BLOCK) * 2, 4)  # steps of 2: not contiguous
    b_x = tl.load(x_ptr + o_n, mask=o_n < N, other=0.0)
    tl.store(y_ptr + o_n, b_x, mask=o_n < N)


@triton.jit
def _constancy_kernel(x_ptr, y_ptr, N, GROUP: tl.constexpr, HINTED: tl.constexpr, BLOCK: tl.constexpr):
    o_n = tl.arange(0, BLOCK)
    o_g = tl.max_constancy(o_n // GROUP, HINTED)  # true when HINTED divides GROUP
    b_x = tl.load(x_ptr + o_g, mask=o_g < N, other=0.0)
    tl.store(y_ptr + o_n, b_x)


def _padded(n, dtype=torch.float32, pad=32, value=-7.0):
    """A tensor of n values (seeded, non-zero) at the start of a buffer with ``pad`` sentinels after."""
    buf = torch.full((n + pad,), value, dtype=dtype)
    buf[:n] = torch.randn(n, generator=torch.Generator().manual_seed(n), dtype=torch.float32).to(dtype) + 2
    return buf, buf[:n]


def _one(found, kind, op):
    assert len(found) == 1, "\n".join(map(str, found)) or "no finding"
    f = found[0]
    assert (f.kind, f.op) == (kind, op), str(f)
    return f


def test_checker_is_installed_and_sees_the_accesses():
    assert memcheck.installed(), "tests/conftest.py should install the memory checker in interpreter mode"
    buf, x = _padded(10)
    y = torch.empty(10)
    before = memcheck.access_count()
    _copy_kernel[(1,)](x, y, 10, EXTRA=0, BLOCK=16)
    assert memcheck.access_count() == before + 2  # one load, one store
    torch.testing.assert_close(y, x)


def test_correct_kernels_report_nothing():
    buf, x = _padded(37)
    y = torch.empty(37)
    with memcheck.collecting() as found:
        _copy_kernel[(3,)](x, y, 37, EXTRA=0, BLOCK=16)
        base = torch.randn(6, 11, generator=torch.Generator().manual_seed(3)) + 2
        xs = base[1:, 1::2]  # a strided view (gaps between its elements) with a storage offset
        ys = torch.empty(5, 5)
        _rows_kernel[(1,)](xs, ys, 5, 5, xs.stride(0), xs.stride(1), BLOCK_R=8, BLOCK_C=8)
        h = (torch.randn(32, generator=torch.Generator().manual_seed(4)) + 2).half()
        w = torch.empty(16, dtype=torch.int32)
        _words_kernel[(1,)](h, w, 16, BLOCK=16)
        z = torch.empty(37)
        _hint_kernel[(1,)](x, z, 37, START=0, BLOCK=64)
        c = torch.empty(16)
        _constancy_kernel[(1,)](x, c, 37, GROUP=4, HINTED=2, BLOCK=16)
    assert found == [], "\n".join(map(str, found))
    torch.testing.assert_close(y, x)
    torch.testing.assert_close(ys, xs)
    torch.testing.assert_close(w, h.view(torch.int32))
    torch.testing.assert_close(z, x)
    torch.testing.assert_close(c, x[torch.arange(16) // 4])


def test_out_of_bounds_load_is_reported_with_kernel_line_shapes_and_address():
    buf, x = _padded(10)
    y = torch.empty(10)
    with memcheck.collecting() as found:
        _copy_kernel[(1,)](x, y, 10, EXTRA=1, BLOCK=16)  # mask one past the end
    f = _one(found, "out of bounds", "load")
    text = str(f)
    assert f.kernel == "_copy_kernel"
    assert "test_memcheck.py:" in f.site and "tl.load(x_ptr + o_n" in f.site
    assert "x_ptr[9] + 4 bytes (past the end of x_ptr)" in text
    assert "1 of 11 active lanes bad" in text
    assert "x_ptr: float32[10] strides [1] offset 0" in text and "y_ptr: float32[10]" in text
    assert "N=10" in text
    torch.testing.assert_close(y, x)  # the bad lane read `other`, not the sentinel after x


def test_address_is_named_by_the_nearest_element_of_a_2d_tensor():
    buf = torch.full((64,), -7.0)
    x = buf[:20].view(5, 4)
    y = torch.empty(5, 6)
    with memcheck.collecting() as found:  # rows read 6 wide from a 4-wide tensor: the last row overruns
        _rows_kernel[(1,)](x, y, 5, 6, 4, 1, BLOCK_R=8, BLOCK_C=8)
    f = _one(found, "out of bounds", "load")
    assert "x_ptr[4, 3] + 4 bytes (past the end of x_ptr)" in str(f)
    assert "x_ptr: float32[5, 4] strides [4, 1]" in str(f)


def test_load_before_the_start_is_reported():
    buf = torch.full((40,), -7.0)
    x = buf[8:24]
    y = torch.empty(16)
    with memcheck.collecting() as found:
        _shifted_load_kernel[(1,)](x, y, 16, SHIFT=-2, BLOCK=16)
    f = _one(found, "out of bounds", "load")
    assert "x_ptr[0] - 8 bytes (before the start of x_ptr)" in str(f)
    assert "2 of 16 active lanes bad" in str(f)


def test_out_of_bounds_store_is_reported_and_does_not_reach_memory():
    buf = torch.full((24,), -7.0)
    y = buf[:8]
    with memcheck.collecting() as found:
        _unmasked_store_kernel[(1,)](y, BLOCK=16)
    f = _one(found, "out of bounds", "store")
    assert "tl.store(y_ptr + o_n" in f.site
    assert "y_ptr[7] + 4 bytes (past the end of y_ptr)" in str(f)
    assert "8 of 16 active lanes bad" in str(f)
    torch.testing.assert_close(buf[:8], torch.arange(1.0, 9.0))
    assert (buf[8:] == -7.0).all(), "the masked-off lanes must not have been stored"


def test_read_from_a_strided_views_gap_is_reported():
    base = torch.randn(4, 8, generator=torch.Generator().manual_seed(5)) + 2
    x = base[:, ::2]  # 4 x 4, strides (8, 2): the odd columns are gaps
    y = torch.empty(4, 4)
    with memcheck.collecting() as found:  # reads as if the columns were adjacent (stride 1)
        _rows_kernel[(1,)](x, y, 4, 4, x.stride(0), 1, BLOCK_R=4, BLOCK_C=4)
    f = _one(found, "gap", "load")
    text = str(f)
    assert "read" not in f.op and "load in a strided view's gap" in text
    assert "x_ptr[0, 0] + 4 bytes: inside the span of x_ptr but not on its elements (strides [8, 2]" in text
    assert "8 of 16 active lanes bad" in text


def test_misaligned_word_load_is_reported():
    buf = (torch.randn(40, generator=torch.Generator().manual_seed(6)) + 2).half()
    x = buf[1:33]  # one fp16 element into its storage: every word read straddles a 4-byte boundary
    y = torch.zeros(16, dtype=torch.int32)
    with memcheck.collecting() as found:
        _words_kernel[(1,)](x, y, 16, BLOCK=16)
    f = _one(found, "misaligned", "load")
    text = str(f)
    assert "misaligned load" in text and "tl.load(p_x + o_t" in f.site
    assert "x_ptr[0]: a 4-byte access at an address not a multiple of 4" in text
    assert "x_ptr: float16[32] strides [1] offset 1" in text
    assert "16 of 16 active lanes bad" in text
    assert (y == 0).all()  # masked off: nothing was read


def test_word_load_past_the_end_of_an_odd_row_is_reported():
    buf = (torch.randn(40, generator=torch.Generator().manual_seed(7)) + 2).half()
    x = buf[:31]  # 31 halves: word 15 would read element 31, which is not x's
    y = torch.zeros(16, dtype=torch.int32)
    with memcheck.collecting() as found:
        _words_kernel[(1,)](x, y, 16, BLOCK=16)
    f = _one(found, "out of bounds", "load")
    assert "x_ptr[30], running 2 bytes past the end of x_ptr" in str(f)


def test_false_multiple_of_hint_is_reported():
    buf, x = _padded(64)
    y = torch.empty(64)
    with memcheck.collecting() as found:
        _hint_kernel[(1,)](x, y, 64, START=1, BLOCK=16)  # run starts at 1, hinted a multiple of 16
    f = _one(found, "hint", "multiple_of")
    assert "false tl.multiple_of hint in kernel _hint_kernel" in str(f)
    assert "tl.multiple_of(START + tl.arange(0, BLOCK), BLOCK)" in f.site
    assert "element [0] is 1, which starts a run and is not a multiple of 16" in str(f)


def test_false_max_contiguous_hint_is_reported():
    buf, x = _padded(64)
    y = torch.empty(64)
    with memcheck.collecting() as found:
        _false_contiguity_kernel[(1,)](x, y, 64, BLOCK=16)
    f = _one(found, "hint", "max_contiguous")
    assert "elements [0] and [1] are 0 and 2; within each group of 4 they must increase by 1" in str(f)


def test_false_max_constancy_hint_is_reported():
    buf, x = _padded(16)
    y = torch.empty(16)
    with memcheck.collecting() as found:
        _constancy_kernel[(1,)](x, y, 16, GROUP=2, HINTED=4, BLOCK=16)  # pairs equal, not quads
    f = _one(found, "hint", "max_constancy")
    assert "elements [1] and [2] are 0 and 1; within each group of 4 they must be equal" in str(f)


def test_outside_collecting_a_finding_fails_the_launch_and_is_kept_for_the_fixture():
    buf, x = _padded(10)
    y = torch.empty(10)
    with pytest.raises(memcheck.MemcheckError, match=r"out-of-bounds load in kernel _copy_kernel"):
        _copy_kernel[(1,)](x, y, 10, EXTRA=3, BLOCK=16)
    kept = memcheck.take_findings()  # what the conftest fixture checks after every test
    assert len(kept) == 1 and kept[0].count == 3
