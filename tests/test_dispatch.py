"""Which path runs: the interpreter under the tests, plain PyTorch on CPU without it."""

import os
import subprocess
import sys

import torch

from drsformer_fast._dispatch import kernel_path


def test_tests_run_kernels_through_triton(device):
    expected = "triton" if device.type == "cuda" else "triton-interpreter"
    assert kernel_path(torch.ones(1, device=device)) == expected


def test_cpu_without_interpreter_runs_torch_and_says_so():
    code = (
        "import torch, drsformer_fast\n"
        "from drsformer_fast.modules import ChannelLayerNorm\n"
        "from drsformer_fast import reference as R\n"
        "m = ChannelLayerNorm(5); x = torch.randn(2, 5, 3, 4)\n"
        "print(m.kernel_path(x))\n"
        "print(float((m(x) - R.LayerNorm(5, 'WithBias')(x)).abs().max()))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    path, diff = out.stdout.split()
    assert path == "torch"
    assert float(diff) < 1e-6
