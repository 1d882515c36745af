"""Input checks shared by the ops (before dispatch) and the kernel launchers (before launch)."""

from __future__ import annotations

import functools

import torch

# Half-precision inputs are computed with fp32 accumulation; these are the dtypes the fused ops take.
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_CHANNELS_PER_HEAD = 1024


def _dtype_name(d: torch.dtype) -> str:
    return str(d).replace("torch.", "")


def check_tensor(name: str, t, *, ndim: int | None = None, dtypes=None, device=None, shape=None) -> None:
    """Raise a clear error naming what is wrong: type, rank, dtype, device or shape."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(_dtype_name(d) for d in dtypes)
        raise TypeError(f"{name} has dtype {_dtype_name(t.dtype)}; supported: {names}")
    # (these run for every parameter of every op call: a torch.device or a tuple is compared as it is)
    if device is not None and t.device != (device if type(device) is torch.device else torch.device(device)):
        raise ValueError(f"{name} is on {t.device} but the input is on {device}")
    if shape is not None and t.shape != (shape if type(shape) is tuple else tuple(shape)):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def check_floating(name: str, t: torch.Tensor) -> None:
    """A parameter tensor has a floating dtype."""
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {_dtype_name(t.dtype)}")


_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


def param_ok(p, device: torch.device, shape: tuple) -> bool:
    """The common case of :func:`check_tensor` + :func:`check_floating` for a parameter in one
    expression (a block's call checks ~25 of them); on False the full checks name what is wrong."""
    return type(p) in _TENSOR_TYPES and p.device == device and p.shape == shape and p.is_floating_point()


def check_params(x: torch.Tensor, **params) -> None:
    """Every given parameter (None allowed) is a tensor on x's device of a floating dtype."""
    for name, p in params.items():
        if p is None:
            continue
        check_tensor(name, p, device=x.device)
        check_floating(name, p)


def check_attention_inputs(x, qkv_weight, qkv_bias, dw_weight, dw_bias, temperature, attn_weights, proj_weight,
                           proj_bias, num_heads, residual=None) -> None:
    """The top-k attention's inputs: clear errors before dispatch and before any launch."""
    check_tensor("x", x, ndim=4, dtypes=SUPPORTED_DTYPES)
    d = x.shape[1]
    if not isinstance(num_heads, int) or num_heads < 1 or d % num_heads:
        raise ValueError(f"{d} channels do not split into num_heads={num_heads} heads")
    c = d // num_heads
    if c < 2:
        raise ValueError(f"top-k attention needs at least 2 channels per head (int(C/2) >= 1), got {c}")
    if c > MAX_CHANNELS_PER_HEAD:
        raise ValueError(f"at most {MAX_CHANNELS_PER_HEAD} channels per head are supported, got {c}")
    dev = x.device
    check_tensor("qkv.weight", qkv_weight, device=dev, shape=(3 * d, d, 1, 1))
    check_tensor("qkv_dwconv.weight", dw_weight, device=dev, shape=(3 * d, 1, 3, 3))
    check_tensor("project_out.weight", proj_weight, device=dev, shape=(d, d, 1, 1))
    check_tensor("temperature", temperature, device=dev, shape=(num_heads, 1, 1))
    biases = (qkv_bias, dw_bias, proj_bias)
    if any(b is None for b in biases) and not all(b is None for b in biases):
        raise ValueError("qkv, qkv_dwconv and project_out must all have a bias or none (the original's `bias`)")
    if qkv_bias is not None:
        check_tensor("qkv.bias", qkv_bias, device=dev, shape=(3 * d,))
        check_tensor("qkv_dwconv.bias", dw_bias, device=dev, shape=(3 * d,))
        check_tensor("project_out.bias", proj_bias, device=dev, shape=(d,))
    if len(attn_weights) != 4:
        raise ValueError(f"attn_weights must be the four tensors attn1..attn4, got {len(attn_weights)}")
    for i, a in enumerate(attn_weights):
        check_tensor(f"attn{i + 1}", a, device=dev, shape=(1,))
    if residual is not None:
        check_tensor("residual", residual, device=dev, dtypes=SUPPORTED_DTYPES, shape=tuple(x.shape))


# The parameters of DRSformer's mixed-scale feed-forward, in the order the functional form takes them.
FFN_PARAM_NAMES = ("in_weight", "in_bias", "dw3_weight", "dw3_bias", "dw5_weight", "dw5_bias",
                   "g3_weight", "g3_bias", "g5_weight", "g5_bias", "out_weight", "out_bias")


def ffn_param_shapes(dim: int, hidden: int) -> dict[str, tuple[int, ...]]:
    """Shape of every parameter of the original ``FeedForward`` with ``dim`` channels and ``hidden`` features."""
    h2 = 2 * hidden
    return {
        "in_weight": (h2, dim, 1, 1), "in_bias": (h2,),
        "dw3_weight": (h2, 1, 3, 3), "dw3_bias": (h2,),
        "dw5_weight": (h2, 1, 5, 5), "dw5_bias": (h2,),
        "g3_weight": (hidden, 2, 3, 3), "g3_bias": (hidden,),
        "g5_weight": (hidden, 2, 5, 5), "g5_bias": (hidden,),
        "out_weight": (dim, h2, 1, 1), "out_bias": (dim,),
    }


@functools.lru_cache(maxsize=64)
def _ffn_param_shape_items(dim: int, hidden: int) -> tuple[tuple[str, tuple[int, ...]], ...]:
    return tuple(ffn_param_shapes(dim, hidden).items())


def check_feed_forward_inputs(x: torch.Tensor, params: dict, residual: torch.Tensor | None) -> int:
    """Validate x, the 12 feed-forward parameters (biases may be None) and the residual; returns hidden."""
    check_tensor("x", x, ndim=4, dtypes=SUPPORTED_DTYPES)
    w_in = params["in_weight"]
    check_tensor("in_weight", w_in, ndim=4, device=x.device)
    h2, dim = w_in.shape[0], x.shape[1]
    if w_in.shape[1] != dim or h2 % 2 or h2 == 0 or tuple(w_in.shape[2:]) != (1, 1):
        raise ValueError(f"in_weight must have shape [2 * hidden, {dim}, 1, 1] for an input with {dim} channels, "
                         f"got {tuple(w_in.shape)}")
    hidden = h2 // 2
    dev = x.device
    for name, shape in _ffn_param_shape_items(dim, hidden):
        p = params[name]
        if (p is None and name.endswith("bias")) or param_ok(p, dev, shape):
            continue
        check_tensor(name, p, device=dev, shape=shape)
        check_floating(name, p)
    if residual is not None:
        check_tensor("residual", residual, device=x.device, shape=tuple(x.shape), dtypes=(x.dtype,))
    return hidden
