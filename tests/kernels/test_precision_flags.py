"""``conv_fp32_precision`` reads PyTorch's TF32 flags through their C getter: it must give what the
public attributes say, for every setting of the three flags it inherits through and the legacy one."""

from __future__ import annotations

import itertools

import pytest
import torch
from drsformer_fast.kernels._utils import conv_fp32_precision

backends = torch.backends
pytestmark = pytest.mark.skipif(not hasattr(getattr(backends.cudnn, "conv", None), "fp32_precision"),
                                reason="torch without per-operator fp32_precision flags")


def _from_attributes() -> str:
    for flag in (backends.cudnn.conv.fp32_precision, backends.cudnn.fp32_precision, backends.fp32_precision):
        if flag != "none":
            return "tf32" if flag == "tf32" else "ieee"
    return "ieee"


@pytest.fixture
def restore_flags():
    saved = (backends.cudnn.conv.fp32_precision, backends.cudnn.fp32_precision, backends.fp32_precision)
    yield
    backends.fp32_precision, backends.cudnn.fp32_precision, backends.cudnn.conv.fp32_precision = saved[::-1]


def test_same_as_the_public_flags(restore_flags):
    seen = set()
    for conv, cudnn, generic in itertools.product(("tf32", "ieee", "none"), repeat=3):
        backends.fp32_precision = "tf32" if generic == "tf32" else "ieee"
        backends.cudnn.fp32_precision = cudnn
        backends.cudnn.conv.fp32_precision = conv
        assert conv_fp32_precision() == _from_attributes(), (conv, cudnn, generic)
        seen.add(conv_fp32_precision())
    assert seen == {"tf32", "ieee"}
    for allow in (False, True):  # the legacy switch
        backends.cudnn.allow_tf32 = allow
        assert conv_fp32_precision() == _from_attributes() == ("tf32" if allow else "ieee")
