"""torch.library.opcheck on every custom op: schema, fake (meta) implementations that agree with the
real ones in shape, dtype AND strides, autograd registration, and AOT dispatch.

Inputs and 4-d weights arrive channels-last, as torch.compile hands them over when the model is in
that memory format: a real implementation that returns a gradient laid out like its weight while
the fake promises a contiguous one breaks Inductor (it asserts strides), not eager mode.
"""

import pytest
import torch
from helpers import randn

from drsformer_fast import ops  # noqa: F401  (registers the ops)

pytestmark = pytest.mark.usefixtures("one_thread")

# test_aot_dispatch_dynamic re-traces with symbolic shapes; the kernels' launchers are covered by it
# in test_model's torch.compile tests, and it costs several interpreter runs per op here.
UTILS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_static")
BWD_UTILS = ("test_schema", "test_faketensor")  # the backward ops are not differentiable


def _cl(t):
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


def _p(*shape, seed, scale=0.3, device):
    return _cl(randn(*shape, seed=seed, scale=scale, device=device)).requires_grad_()


def test_layer_norm_ops(device):
    x = _p(2, 5, 3, 7, seed=1, scale=1.0, device=device)
    w, b = _p(5, seed=2, device=device), _p(5, seed=3, device=device)
    torch.library.opcheck(torch.ops.drsformer_fast.layer_norm_fwd.default, (x, w, b), test_utils=UTILS)
    torch.library.opcheck(torch.ops.drsformer_fast.layer_norm_fwd.default, (x, w, None), test_utils=UTILS)
    _, mean, rstd = torch.ops.drsformer_fast.layer_norm_fwd(x.detach(), w.detach(), b.detach())
    dy = _cl(randn(2, 5, 3, 7, seed=4, device=device))
    torch.library.opcheck(torch.ops.drsformer_fast.layer_norm_bwd.default,
                          (dy, x.detach(), w.detach(), mean, rstd, True), test_utils=BWD_UTILS)


def test_attention_ops(device):
    D, heads = 6, 2
    x = _p(1, D, 5, 3, seed=4, scale=1.0, device=device)
    args = (x, _p(3 * D, D, 1, 1, seed=5, device=device), _p(3 * D, seed=6, device=device),
            _p(3 * D, 1, 3, 3, seed=7, device=device), _p(3 * D, seed=8, device=device),
            (randn(heads, 1, 1, seed=9, device=device).abs() + 0.5).requires_grad_(),
            *[(randn(1, seed=10 + i, device=device).abs() + 0.1).requires_grad_() for i in range(4)],
            _p(D, D, 1, 1, seed=14, device=device), _p(D, seed=15, device=device),
            _p(1, D, 5, 3, seed=16, device=device), heads)
    torch.library.opcheck(torch.ops.drsformer_fast.topk_attention_fwd.default, args, test_utils=UTILS)
    plain = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    _, t0, ghat, norms, p = torch.ops.drsformer_fast.topk_attention_fwd(*plain)
    (x, qkv_w, _, dw_w, dw_b, temp, a1, a2, a3, a4, proj_w, _, _, _) = plain
    dout = _cl(randn(1, D, 5, 3, seed=17, device=device))
    torch.library.opcheck(torch.ops.drsformer_fast.topk_attention_bwd.default,
                          (dout, x, t0, ghat, norms, p, qkv_w, dw_w, dw_b, temp, a1, a2, a3, a4, proj_w, heads, True),
                          test_utils=BWD_UTILS)


def test_feed_forward_ops(device):
    D, h = 4, 5
    x = _p(1, D, 4, 3, seed=20, scale=1.0, device=device)
    params = (_p(2 * h, D, 1, 1, seed=21, device=device), _p(2 * h, seed=22, device=device),
              _p(2 * h, 1, 3, 3, seed=23, device=device), _p(2 * h, seed=24, device=device),
              _p(2 * h, 1, 5, 5, seed=25, device=device), _p(2 * h, seed=26, device=device),
              _p(h, 2, 3, 3, seed=27, device=device), _p(h, seed=28, device=device),
              _p(h, 2, 5, 5, seed=29, device=device), _p(h, seed=30, device=device),
              _p(D, 2 * h, 1, 1, seed=31, device=device), _p(D, seed=32, device=device))
    torch.library.opcheck(torch.ops.drsformer_fast.ffn_fwd.default, (x, *params, None), test_utils=UTILS)
    dout = _cl(randn(1, D, 4, 3, seed=33, device=device))
    detached = [p.detach() for p in params]
    torch.library.opcheck(torch.ops.drsformer_fast.ffn_bwd.default, (dout, x.detach(), *detached, True),
                          test_utils=BWD_UTILS)
