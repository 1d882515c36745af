"""Loading the golden files (outputs and gradients of the original DRSformer; see golden/README.md)."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import torch

GOLDEN_DIR = Path(__file__).parent / "golden"
MODEL_FILES = ("model_mefc_tiny", "model_nomefc_tiny_bias_biasfree")
ATTENTION_FILES = ("attention_dim48_heads1", "attention_dim96_heads1", "attention_dim192_heads4")
FEEDFORWARD_FILES = ("feedforward_dim48_bias0", "feedforward_dim96_bias1")


@functools.cache
def _load(name: str) -> dict:
    return torch.load(GOLDEN_DIR / f"{name}.pt", weights_only=True)


def load(name: str) -> dict:
    """A fresh copy of a golden file's contents: tests call ``requires_grad_()`` on its tensors
    (``.to()`` of a tensor already in that dtype is the tensor itself), and a cached, shared tensor
    would carry one test's autograd state and ``.grad`` into the next."""
    return copy.deepcopy(_load(name))


@functools.cache
def default_keys() -> dict:
    return json.loads((GOLDEN_DIR / "state_dict_keys_default.json").read_text())
