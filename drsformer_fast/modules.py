"""Drop-in ``nn.Module`` s backed by the fused ops, with the original parameter names and shapes.

Each module runs Triton kernels for CUDA tensors (or under Triton's interpreter) and plain PyTorch
math otherwise; :meth:`kernel_path` says which one a given input takes.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from . import ops
from . import reference as _reference
from ._dispatch import kernel_path
from .ops.mefc import DIL_SIZES, NUM_OPS, SEP_SIZES


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the fused blocks compute in: the autocast dtype under autocast, else x's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


_MISSING = object()


def _get(module: nn.Module, name: str):
    """``getattr(module, name)`` for a parameter or child module, without ``nn.Module.__getattr__``.

    Python reaches ``__getattr__`` (~0.6 us a name) for every registered parameter and child, and a
    block's forward names about forty of them on every call. The instance dict is read first, as
    attribute lookup would (tools such as FSDP set tensors there), then the registered parameters
    and children; anything else (a parametrization's property, a buffer, a missing name) goes
    through ``getattr`` itself."""
    d = module.__dict__
    v = d.get(name, _MISSING)
    if v is _MISSING:
        v = d["_parameters"].get(name, _MISSING)
        if v is _MISSING:
            v = d["_modules"].get(name, _MISSING)
            if v is _MISSING:
                return getattr(module, name)
    return v


def _children(module: nn.Module) -> list:
    """The children of an ``nn.Sequential`` / ``nn.ModuleList`` in order, as a list."""
    return list(module.__dict__["_modules"].values())


def _check_channels(module: nn.Module, x, channels: int) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != channels:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{type(module).__name__}({channels} channels) expects [B, {channels}, H, W], got {shape}")


class _PathMixin:
    @staticmethod
    def kernel_path(x: torch.Tensor) -> str:
        """``"triton"``, ``"triton-interpreter"`` or ``"torch"``: the path ``forward(x)`` runs."""
        return kernel_path(x)


class _LayerNormBody(nn.Module):
    """Holds ``weight`` (and ``bias`` for WithBias) under the original's ``body.`` prefix."""

    def __init__(self, dim: int, with_bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        if with_bias:
            self.bias = nn.Parameter(torch.zeros(dim))
        else:
            self.register_parameter("bias", None)


class ChannelLayerNorm(_PathMixin, nn.Module):
    """Fast replacement of the original ``LayerNorm(dim, LayerNorm_type)`` of NCHW tensors.

    State-dict keys: ``body.weight`` (+ ``body.bias`` unless ``LayerNorm_type == 'BiasFree'``).
    """

    def __init__(self, dim: int, LayerNorm_type: str = "WithBias"):  # noqa: N803 (original keyword)
        super().__init__()
        self.dim = dim
        self.body = _LayerNormBody(dim, with_bias=LayerNorm_type != "BiasFree")

    @classmethod
    def from_original(cls, m: nn.Module) -> ChannelLayerNorm:
        """A fast module around the original's ``body`` (same Parameter objects, no copies)."""
        fast = cls.__new__(cls)
        nn.Module.__init__(fast)
        fast.dim = m.body.weight.shape[0]
        fast.body = m.body
        return fast

    @property
    def with_bias(self) -> bool:
        return getattr(self.body, "bias", None) is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_channels(self, x, self.dim)
        body = _get(self, "body")
        return ops.layer_norm(x, _get(body, "weight"), getattr(body, "bias", None))

    def extra_repr(self) -> str:
        return f"{self.dim}, LayerNorm_type={'WithBias' if self.with_bias else 'BiasFree'}"


class TopKSparseAttention(_PathMixin, nn.Module):
    """Fast replacement of the original top-k sparse ``Attention(dim, num_heads, bias)``.

    Same parameters and names (``temperature``, ``qkv``, ``qkv_dwconv``, ``project_out``,
    ``attn1``..``attn4``), so ``load_state_dict`` of an original block works. ``forward(x, residual)``
    returns ``residual + attn(x)`` with the add fused into the last kernel.
    Ties in the top-k selection go to the lower channel index (the original's torch.topk leaves
    them unspecified; without ties the two agree).
    """

    def __init__(self, dim: int, num_heads: int, bias: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} does not split into num_heads={num_heads} heads")
        self.dim = dim
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, kernel_size=1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, kernel_size=3, stride=1, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)
        self.attn1 = nn.Parameter(torch.tensor([0.2]))
        self.attn2 = nn.Parameter(torch.tensor([0.2]))
        self.attn3 = nn.Parameter(torch.tensor([0.2]))
        self.attn4 = nn.Parameter(torch.tensor([0.2]))

    @classmethod
    def from_original(cls, m: nn.Module) -> TopKSparseAttention:
        """A fast module that shares ``m``'s Parameter objects (no copies): optimizers built on the
        original keep working and the state dict is unchanged."""
        fast = cls.__new__(cls)
        nn.Module.__init__(fast)
        fast.dim = m.qkv.in_channels
        fast.num_heads = m.temperature.shape[0]
        for name in ("temperature", "attn1", "attn2", "attn3", "attn4"):
            setattr(fast, name, getattr(m, name))
        for name in ("qkv", "qkv_dwconv", "project_out"):
            setattr(fast, name, getattr(m, name))
        return fast

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        _check_channels(self, x, self.dim)
        dtype = _compute_dtype(x)
        qkv, dw, out = _get(self, "qkv"), _get(self, "qkv_dwconv"), _get(self, "project_out")
        return ops.topk_sparse_attention(
            x.to(dtype), _get(qkv, "weight"), _get(qkv, "bias"), _get(dw, "weight"), _get(dw, "bias"),
            _get(self, "temperature"), (_get(self, "attn1"), _get(self, "attn2"), _get(self, "attn3"),
                                        _get(self, "attn4")),
            _get(out, "weight"), _get(out, "bias"), self.num_heads, residual,
        )

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, bias={self.qkv.bias is not None}"


class FastTransformerBlock(nn.Module):
    """Fast replacement of the original ``TransformerBlock``: ``x + attn(norm1(x))`` then
    ``x + ffn(norm2(x))``, with both residual adds fused into the last kernel of each branch.

    Children keep the original names (``norm1``, ``attn``, ``norm2``, ``ffn``): same state dict.

    Not fused (yet): each LayerNorm into the 1x1 convolution after it. It would spare one write and
    one read of the normalised tensor (2 of the block's ~48 forward planes, ~4% of its bytes at
    level 1, 256x256) and one saved d-plane per branch (25 of 89 MB saved by a level-1 block), but it
    needs a Triton matmul with a LayerNorm prologue in place of cuBLAS for qkv and project_in, forward
    and backward, which is worth building only once a GPU shows where the block's time goes.
    """

    def __init__(self, dim: int, num_heads: int, ffn_expansion_factor: float, bias: bool,
                 LayerNorm_type: str):  # noqa: N803 (original keyword)
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim, LayerNorm_type)
        self.attn = TopKSparseAttention(dim, num_heads, bias)
        self.norm2 = ChannelLayerNorm(dim, LayerNorm_type)
        self.ffn = MixedScaleFeedForward(dim, ffn_expansion_factor, bias)

    @classmethod
    def from_children(cls, norm1: nn.Module, attn: nn.Module, norm2: nn.Module, ffn: nn.Module):
        """A block around existing (fast) children, sharing their parameters."""
        block = cls.__new__(cls)
        nn.Module.__init__(block)
        block.norm1, block.attn, block.norm2, block.ffn = norm1, attn, norm2, ffn
        return block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _get(self, "attn")(_get(self, "norm1")(x), residual=x)
        return _get(self, "ffn")(_get(self, "norm2")(x), residual=x)


class MixedScaleFeedForward(_PathMixin, nn.Module):
    """Fast replacement of the original ``FeedForward(dim, ffn_expansion_factor, bias)`` (MSFN).

    Same submodules and parameter names as the original (``project_in``, ``dwconv3x3``,
    ``dwconv5x5``, ``dwconv3x3_1``, ``dwconv5x5_1``, ``project_out``; ``.bias`` only when
    ``bias=True``), so an original state dict loads unchanged. ``forward(x, residual=None)``
    returns ``ffn(x) + residual``, the residual added inside the last kernel.
    """

    def __init__(self, dim: int, ffn_expansion_factor: float = 2.66, bias: bool = False, *,
                 hidden_features: int | None = None, device=None, dtype=None):
        super().__init__()
        hidden = int(dim * ffn_expansion_factor) if hidden_features is None else int(hidden_features)
        h2 = 2 * hidden
        kw = {"bias": bias, "device": device, "dtype": dtype}
        self.dim = dim
        self.hidden_features = hidden
        self.project_in = nn.Conv2d(dim, h2, kernel_size=1, **kw)
        self.dwconv3x3 = nn.Conv2d(h2, h2, kernel_size=3, stride=1, padding=1, groups=h2, **kw)
        self.dwconv5x5 = nn.Conv2d(h2, h2, kernel_size=5, stride=1, padding=2, groups=h2, **kw)
        self.dwconv3x3_1 = nn.Conv2d(h2, hidden, kernel_size=3, stride=1, padding=1, groups=hidden, **kw)
        self.dwconv5x5_1 = nn.Conv2d(h2, hidden, kernel_size=5, stride=1, padding=2, groups=hidden, **kw)
        self.project_out = nn.Conv2d(h2, dim, kernel_size=1, **kw)

    _CONVS = ("project_in", "dwconv3x3", "dwconv5x5", "dwconv3x3_1", "dwconv5x5_1", "project_out")

    @classmethod
    def from_original(cls, m: nn.Module) -> MixedScaleFeedForward:
        """A fast module that shares ``m``'s Parameter objects (no copies): training either one trains
        both. ``m`` is an original ``FeedForward`` (or anything with the same six convolutions)."""
        w_in = m.project_in.weight
        fast = cls(w_in.shape[1], bias=m.project_in.bias is not None, hidden_features=w_in.shape[0] // 2,
                   device="meta")
        for name in cls._CONVS:
            src, dst = getattr(m, name), getattr(fast, name)
            if dst.weight.shape != src.weight.shape:
                raise ValueError(f"{name}.weight has shape {tuple(src.weight.shape)}, expected "
                                 f"{tuple(dst.weight.shape)}")
            dst.weight = src.weight
            if (src.bias is None) != (dst.bias is None):
                raise ValueError(f"{name}: bias presence differs from project_in's")
            if src.bias is not None:
                dst.bias = src.bias
        return fast

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        _check_channels(self, x, self.dim)
        params = []
        for name in self._CONVS:
            conv = _get(self, name)
            params += (_get(conv, "weight"), _get(conv, "bias"))
        return ops.mixed_scale_feed_forward(x.to(_compute_dtype(x)), *params, residual=residual)

    def extra_repr(self) -> str:
        return f"{self.dim}, hidden_features={self.hidden_features}, bias={self.project_in.bias is not None}"


# --------------------------------------------------------------------------------------------
# MEFC
# --------------------------------------------------------------------------------------------


def _conv_like(m, cin: int, cout: int, k: int, groups: int, padding: int, dilation: int = 1) -> bool:
    return (isinstance(m, nn.Conv2d) and m.in_channels == cin and m.out_channels == cout
            and m.kernel_size == (k, k) and m.groups == groups and m.stride == (1, 1)
            and m.padding == (padding, padding) and m.dilation == (dilation, dilation)
            and m.padding_mode == "zeros" and m.bias is None)


def _seq(m, n: int) -> bool:
    return isinstance(m, nn.Sequential) and len(m) == n


def _why_not_routing(m: nn.Module, c: int) -> tuple[str | None, int]:
    """(None, steps) when ``m`` is an original OALayer on ``c`` channels, else (reason, 0)."""
    fc = getattr(m, "ca_fc", None)
    pool = getattr(m, "avg_pool", None)
    if set(m._modules) - {"avg_pool"} != {"ca_fc"} or list(m.parameters(recurse=False)):
        return "is not an OALayer (children avg_pool, ca_fc)", 0
    if pool is not None and not (isinstance(pool, nn.AdaptiveAvgPool2d) and pool.output_size in (1, (1, 1))):
        return "avg_pool is not a global average pool", 0
    if not (_seq(fc, 3) and isinstance(fc[0], nn.Linear) and isinstance(fc[1], nn.ReLU)
            and isinstance(fc[2], nn.Linear) and fc[0].bias is not None and fc[2].bias is not None):
        return "ca_fc is not Linear, ReLU, Linear (with biases)", 0
    out = fc[2].out_features
    if fc[0].in_features != c or out % NUM_OPS or fc[0].out_features != 2 * out or fc[2].in_features != 2 * out:
        return f"ca_fc does not map {c} channels to 16 * steps to 8 * steps", 0
    return None, out // NUM_OPS


def _why_not_op(op: nn.Module, name: str, c: int) -> str | None:
    kind, size = name.rsplit("_", 1)
    k = int(size.split("x")[0])
    if kind == "avg_pool":
        ok = (isinstance(op, nn.AvgPool2d) and op.kernel_size in (3, (3, 3)) and op.stride in (1, (1, 1))
              and op.padding in (1, (1, 1)) and op.count_include_pad is False and not op.ceil_mode
              and op.divisor_override is None)
        return None if ok else f"{name} is not AvgPool2d(3, 1, 1, count_include_pad=False)"
    body = getattr(op, "op", None)
    if set(op._modules) != {"op"} or list(op.parameters(recurse=False)):
        return f"{name} has no `op` Sequential"
    if kind == "sep_conv":
        ok = (_seq(body, 5) and _conv_like(body[0], c, c, k, c, k // 2) and _conv_like(body[1], c, c, 1, 1, 0)
              and isinstance(body[2], nn.ReLU) and _conv_like(body[3], c, c, k, c, k // 2)
              and _conv_like(body[4], c, c, 1, 1, 0))
    else:
        ok = (_seq(body, 2) and _conv_like(body[0], c, c, k, c, k - 1, dilation=2)
              and _conv_like(body[1], c, c, 1, 1, 0))
    return None if ok else f"{name} does not have the original's convolutions"


def _why_not_group(m: nn.Module, c: int, steps: int) -> str | None:
    if set(m._modules) - {"relu"} != {"preprocess", "_ops"} or list(m.parameters(recurse=False)):
        return "is not a GroupOLs (children preprocess, _ops, relu)"
    pre = getattr(m.preprocess, "op", None)
    if not (_seq(pre, 2) and _conv_like(pre[0], c, c, 1, 1, 0) and isinstance(pre[1], nn.ReLU)):
        return "preprocess is not a 1x1 convolution without bias and a ReLU"
    if not isinstance(m._ops, nn.ModuleList) or len(m._ops) != steps:
        return f"_ops is not a list of {steps} OperationLayers (the OALayer's steps)"
    for i, layer in enumerate(m._ops):
        ops_, out = getattr(layer, "_ops", None), getattr(layer, "_out", None)
        if set(layer._modules) != {"_ops", "_out"} or not isinstance(ops_, nn.ModuleList) or len(ops_) != NUM_OPS:
            return f"_ops.{i} is not an OperationLayer of {NUM_OPS} operations"
        if not (_seq(out, 2) and _conv_like(out[0], NUM_OPS * c, c, 1, 1, 0) and isinstance(out[1], nn.ReLU)):
            return f"_ops.{i}._out is not a 1x1 convolution {NUM_OPS * c} -> {c} without bias and a ReLU"
        for name, op in zip(_reference.OPERATIONS, ops_):
            why = _why_not_op(op, name, c)
            if why:
                return f"_ops.{i}._ops: {why}"
    return None


def why_not_feature_compensator(m: nn.Module) -> str | None:
    """None when ``m`` has the structure of the original MEFC ``subnet`` (``layers``: OALayer and
    GroupOLs pairs, the original's eight operations in order), else the reason it does not."""
    layers = getattr(m, "layers", None)
    if set(m._modules) != {"layers"} or not isinstance(layers, nn.ModuleList) or list(m.parameters(recurse=False)):
        return "has no `layers` ModuleList (and nothing else)"
    if len(layers) == 0 or len(layers) % 2:
        return f"`layers` has {len(layers)} entries, not OALayer/GroupOLs pairs"
    pre = getattr(getattr(layers[1], "preprocess", None), "op", None)
    conv = pre[0] if isinstance(pre, nn.Sequential) and len(pre) else None
    if not isinstance(conv, nn.Conv2d):
        return "layers.1 has no preprocess convolution"
    c = conv.in_channels
    for j in range(0, len(layers), 2):
        why, steps = _why_not_routing(layers[j], c)
        if why:
            return f"layers.{j} {why}"
        why = _why_not_group(layers[j + 1], c, steps)
        if why:
            return f"layers.{j + 1} {why}"
    return None


class FeatureCompensator(_PathMixin, nn.Module):
    """Fast replacement of the original MEFC ``subnet(dim, layer_num=1, steps=4)`` (mixture-of-experts
    feature compensator): ``layers`` alternates an OALayer (routing MLP) and a GroupOLs
    (``steps`` steps of eight operations), with the original's modules, parameter names and
    state-dict keys (``layers.0.ca_fc.0.weight``, ``layers.1.preprocess.op.0.weight``,
    ``layers.1._ops.{s}._ops.{o}.op.{i}.weight``, ``layers.1._ops.{s}._out.0.weight``): they hold the
    parameters; ``forward`` runs the fused algebra (``drsformer_fast.ops.mefc``): the routing and the
    per-sample mixing matrices in PyTorch (fp32), the preprocess 1x1 + ReLU, then one fused
    ``mefc_step`` custom op per step (Triton on CUDA or under the interpreter).
    """

    def __init__(self, dim: int, layer_num: int = 1, steps: int = 4):
        super().__init__()
        if dim < 1 or layer_num < 1 or steps < 1:
            raise ValueError(f"dim, layer_num and steps must be positive, got {dim}, {layer_num}, {steps}")
        self.dim, self.layer_num, self.steps = dim, layer_num, steps
        self.layers = nn.ModuleList()
        for _ in range(layer_num):
            self.layers.append(_reference.OALayer(dim, steps, NUM_OPS))
            self.layers.append(_reference.GroupOLs(steps, dim))

    def kernel_path(self, x: torch.Tensor) -> str:
        """``"triton"``, ``"triton-interpreter"`` or ``"torch"``: the path ``forward(x)``'s steps run
        (``"torch"`` also for widths above the kernels' 128 channels)."""
        from .ops.mefc import use_kernels

        path = kernel_path(x)
        if path != "torch" and not use_kernels(x.new_empty((1, self.dim, 1, 1))):
            return "torch"
        return path

    @classmethod
    def from_original(cls, m: nn.Module) -> FeatureCompensator:
        """A fast module around the original ``subnet``'s ``layers`` (the same modules and Parameter
        objects, no copies): optimizers built on the original keep working, the state dict is
        unchanged. Raises ValueError naming what differs if ``m`` is not structured like one."""
        why = why_not_feature_compensator(m)
        if why:
            raise ValueError(f"{type(m).__name__} is not an original MEFC subnet: {why}")
        fast = cls.__new__(cls)
        nn.Module.__init__(fast)
        fast.dim = m.layers[1].preprocess.op[0].in_channels
        fast.layer_num = len(m.layers) // 2
        fast.steps = len(m.layers[1]._ops)
        fast.layers = m.layers
        return fast

    def _step_params(self, group: nn.Module) -> list[dict]:
        # (children as the lists of their _modules: indexing an nn.Sequential walks it, ~1 us a lookup)
        steps = []
        for layer in _children(_get(group, "_ops")):
            ops_ = _children(_get(layer, "_ops"))
            sep = [_children(_get(ops_[i], "op")) for i in range(len(SEP_SIZES))]
            dil = [_children(_get(ops_[len(SEP_SIZES) + i], "op")) for i in range(len(DIL_SIZES))]
            steps.append({"dw1": [_get(b[0], "weight") for b in sep], "w1": [_get(b[1], "weight") for b in sep],
                          "dw2": [_get(b[3], "weight") for b in sep], "dwd": [_get(b[0], "weight") for b in dil],
                          "last": [_get(b[4], "weight") for b in sep] + [_get(b[1], "weight") for b in dil],
                          "out": _get(_children(_get(layer, "_out"))[0], "weight")})
        return steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_channels(self, x, self.dim)
        dtype = _compute_dtype(x)
        w = None
        layers = _children(_get(self, "layers"))
        for j in range(0, len(layers), 2):
            fc = _children(_get(layers[j], "ca_fc"))
            w = ops.routing_weights(x, _get(fc[0], "weight"), _get(fc[0], "bias"), _get(fc[2], "weight"),
                                    _get(fc[2], "bias"), self.steps)
            group = layers[j + 1]
            pre = _children(_get(_get(group, "preprocess"), "op"))[0]
            x = ops.feature_compensation(x.to(dtype), w, _get(pre, "weight"), self._step_params(group))
        return x

    def extra_repr(self) -> str:
        return f"{self.dim}, layer_num={self.layer_num}, steps={self.steps}"
