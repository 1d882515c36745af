"""The direct launch path (``kernels/_launch.py``).

In this process kernels run in Triton's interpreter, where every launch goes through the kernel's own
``run``; the tests here check when the direct path may be taken. The launches themselves are compared
in a fresh process without ``TRITON_INTERPRET``, against a no-op CUDA driver
(``perf.hostcost``) with the sm_90 launchers: every launch of the model's inference forward and
training forward+backward, and of single launchers over changed shapes, strides, dtypes, alignments
and TF32 settings, is made through ``JITFunction.run`` and then through the direct path, and what
reaches Triton's launcher (the compiled kernel's launcher object, grid, stream, function handle,
packed metadata, and every argument with tensors as their addresses and dtypes) must be identical.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from drsformer_fast.kernels import _launch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402


def _plain(x, y, N, BLOCK: tl.constexpr = 4):
    pass


@pytest.fixture
def kernel():
    # a JITFunction built directly (triton.jit gives an InterpretedFunction in this process); never compiled
    return JITFunction(_plain)


def test_direct_path_only_where_it_is_jit_run(kernel, monkeypatch):
    from triton import knobs

    assert _launch._direct(kernel, (1,))
    assert not _launch._direct(kernel, lambda meta: (1,))  # a grid function needs the bound arguments
    with _launch.direct_launches(False):
        assert not _launch._direct(kernel, (1,))
    assert _launch._direct(kernel, (1,))
    kernel.pre_run_hooks.append(lambda *a, **k: None)
    assert not _launch._direct(kernel, (1,))
    kernel.pre_run_hooks.clear()
    with monkeypatch.context() as m:  # a kernel's run replaced (tests that intercept its launches)
        m.setattr(kernel, "run", lambda *a, **k: None, raising=False)
        assert not _launch._direct(kernel, (1,))
    with monkeypatch.context() as m:  # JITFunction.run wrapped (launch capture, accounting)
        m.setattr(JITFunction, "run", lambda self, *a, **k: None)
        assert not _launch._direct(kernel, (1,))
    hook = lambda *a, **k: None  # noqa: E731
    for name in ("launch_enter_hook", "launch_exit_hook"):
        chain = getattr(knobs.runtime, name)
        if hasattr(chain, "add"):
            chain.add(hook)
            try:
                assert not _launch._direct(kernel, (1,))
            finally:
                chain.remove(hook)
        with monkeypatch.context() as m:
            m.setattr(knobs.runtime, name, hook)
            assert not _launch._direct(kernel, (1,))
    assert _launch._direct(kernel, (1,))



class _Sub(torch.Tensor):
    pass


def test_what_a_first_launch_keeps(kernel, monkeypatch):
    from triton.compiler import CompiledKernel

    compiled = CompiledKernel.__new__(CompiledKernel)  # what JITFunction.run returns (never launched here)
    compiled.module = None
    monkeypatch.setattr(kernel, "run", lambda *a, grid, warmup, **kw: compiled, raising=False)
    monkeypatch.setattr(_launch, "_CACHE", {})
    t = torch.ones(4)
    # x, y, N positional, BLOCK by keyword, then an option: the parameters are a prefix of the values
    assert _launch._first_launch("k1", kernel, (1,), (t, t, 3), {"BLOCK": 8, "num_warps": 4}) is compiled
    assert _launch._CACHE["k1"][2:] == (4, ())
    # BLOCK left to its default: an explicit order and the default
    _launch._first_launch("k2", kernel, (1,), (t, t, 3), {"num_warps": 4})
    assert _launch._CACHE["k2"][2:] == ((0, 1, 2, 4), (4,))
    # a tensor subclass or a tensor by keyword is never kept: a key would hold the object, not its facts
    _launch._first_launch("k3", kernel, (1,), (t.as_subclass(_Sub), t, 3), {"BLOCK": 8})
    _launch._first_launch("k4", kernel, (1,), (t, 3), {"y": t, "BLOCK": 8})
    assert set(_launch._CACHE) == {"k1", "k2"}


def test_launch_keys_tell_bool_int_and_float_apart(kernel, monkeypatch):
    keys = []
    monkeypatch.setattr(_launch, "_first_launch", lambda key, *a: keys.append(key))
    # no GPU here: a driver whose only answer is the current device
    monkeypatch.setattr(_launch, "driver", SimpleNamespace(active=SimpleNamespace(get_current_device=lambda: 0)))
    t = torch.ones(4)
    for n, block in ((1, 8), (True, 8), (1.0, 8), (1, True), (1, 8.0)):
        _launch.launch_kernel(kernel, (1,), t, t, n, BLOCK=block)
    assert len(set(keys)) == 5
    # the same arguments give the same key; a tensor's dtype and 16-byte alignment enter it
    _launch.launch_kernel(kernel, (1,), t, t, 1, BLOCK=8)
    _launch.launch_kernel(kernel, (1,), t.half(), t, 1, BLOCK=8)
    _launch.launch_kernel(kernel, (1,), torch.ones(5)[1:], t, 1, BLOCK=8)
    assert keys[5] == keys[0] and len(set(keys)) == 7

def test_interpreted_kernels_go_through_their_run(monkeypatch):
    from drsformer_fast.kernels import layernorm

    k = layernorm._ln_fwd_kernel
    assert not _launch._direct(k, (1,))  # an InterpretedFunction here
    seen = []
    monkeypatch.setattr(k, "run", lambda *a, grid, warmup, **kw: seen.append((a, grid, warmup, kw)) or "ran")
    t = torch.ones(2)
    assert _launch.launch_kernel(k, (3, 2), t, 5, BLOCK_C=8, num_warps=4) == "ran"
    assert seen == [((t, 5), (3, 2), False, {"BLOCK_C": 8, "num_warps": 4})]


_SCRIPT = r"""
import json, sys
from drsformer_fast.perf import hostcost
hostcost.activate_noop_driver(hostcost.build_noop_driver())
import torch
from triton.backends.nvidia.driver import CudaLauncher
import drsformer_fast.kernels as K
from drsformer_fast.kernels import _launch
from drsformer_fast.perf.launches import forced_triton_path
from drsformer_fast.perf import accounting

records = []
_call = CudaLauncher.__call__

def _value(v):
    return ("tensor", v.data_ptr(), str(v.dtype)) if isinstance(v, torch.Tensor) else repr(v)

def recording_call(self, grid_x, grid_y, grid_z, stream, function, packed, metadata, enter, exit_, *args):
    # the launch metadata and hooks are left out: with no hook set nothing reads them
    records.append((id(self), grid_x, grid_y, grid_z, stream, function, repr(packed), [_value(a) for a in args]))
    return _call(self, grid_x, grid_y, grid_z, stream, function, packed, metadata, enter, exit_, *args)

CudaLauncher.__call__ = recording_call
direct_launch = _launch.launch_kernel
first_launches = []
_first = _launch._first_launch

def counted_first(*a, **k):
    first_launches.append(1)
    return _first(*a, **k)

_launch._first_launch = counted_first
result = {"compared": 0, "mismatches": [], "kernels": [], "not_direct": []}

def both(kernel, grid, *args, **kwargs):
    # Triton's path, then the direct path (its first launch of a key fills the cache), compared
    del records[:]
    kernel.run(*args, grid=grid, warmup=False, **kwargs)
    via_triton = list(records)
    direct_launch(kernel, grid, *args, **kwargs)
    del records[:], first_launches[:]
    direct_launch(kernel, grid, *args, **kwargs)
    name = kernel.fn.__name__
    if first_launches:
        result["not_direct"].append(name)
    if records != via_triton:
        result["mismatches"].append([name, via_triton, list(records)])
    result["compared"] += 1
    if name not in result["kernels"]:
        result["kernels"].append(name)

for mod in K.KERNEL_MODULES:
    if hasattr(mod, "launch_kernel"):
        mod.launch_kernel = both

torch.set_num_threads(1)
part = sys.argv[1]
with forced_triton_path(90):
    if part == "model":
        from drsformer_fast.perf.bench import build_models, model_config
        _, fast = build_models(model_config("with-mefc"), seed=0)
        g = torch.Generator().manual_seed(0)
        for tf32 in (True, False):
            torch.backends.cudnn.allow_tf32 = tf32
            with torch.no_grad():
                fast.eval()(torch.rand(1, 3, 8, 8, generator=g))
            fast.train()
            fast(torch.rand(2, 3, 8, 8, generator=g, requires_grad=True)).abs().mean().backward()
        # with the direct path in place, accounting's launch capture still sees every launch
        for mod in K.KERNEL_MODULES:
            if hasattr(mod, "launch_kernel"):
                mod.launch_kernel = direct_launch
        fast.eval()
        del records[:]
        with torch.no_grad():
            fast(torch.rand(1, 3, 8, 8, generator=g))
        result["direct_forward_launches"] = len(records)
        prof = accounting.profile(fast, (1, 3, 8, 8), backward=False, fake=True)
        result["captured_forward_launches"] = sum(r.kind == "triton" for r in prof.forward)
    else:
        from drsformer_fast.kernels import dwconv, layernorm
        g = torch.Generator().manual_seed(1)
        w, b = torch.rand(16, generator=g), torch.rand(16, generator=g)
        base = torch.rand(2, 16, 9, 12, generator=g)
        variants = [base, base[:, :, :8], base.transpose(2, 3), torch.rand(1, 16, 40, 40, generator=g),
                    base.half(), base.bfloat16(), torch.rand(2 * 16 * 9 * 12 + 1, generator=g)[1:].view(2, 16, 9, 12),
                    base]
        for x in variants:  # shape, stride, dtype, alignment (4 bytes past a 16-byte boundary), back to the first
            y, mean, rstd = layernorm.layer_norm_fwd(x, w, b)
            layernorm.layer_norm_bwd(torch.rand_like(y), x, w, mean, rstd, True)
            wd = torch.rand(16, 1, 3, 3, generator=g)
            (out,) = dwconv.depthwise_conv_fwd(x, [wd], [None], False)
            dwconv.depthwise_conv_bwd([torch.rand_like(out)], x, [wd])
print(json.dumps(result))
"""


def _run(part: str, timeout: float = 900) -> dict:
    if shutil.which("cc") is None and shutil.which("gcc") is None and not os.environ.get("CC"):
        pytest.skip("no C compiler for the no-op CUDA driver")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, part], capture_output=True, text=True, env=env,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_direct_launches_equal_jit_run_for_every_model_launch():
    r = _run("model")
    assert r["mismatches"] == [], r["mismatches"][:2]
    assert r["not_direct"] == []
    # inference and training, with TF32 on and off: every kernel the model launches
    assert r["compared"] > 1000 and len(r["kernels"]) >= 20, (r["compared"], r["kernels"])
    assert r["direct_forward_launches"] == r["captured_forward_launches"] > 300


def test_launch_keys_follow_shape_stride_dtype_and_alignment():
    r = _run("launchers")
    assert r["mismatches"] == [], r["mismatches"][:2]
    assert r["not_direct"] == []
    assert {"_ln_fwd_kernel", "_ln_bwd_kernel"} <= set(r["kernels"]) and r["compared"] >= 8 * 4
