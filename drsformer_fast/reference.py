"""Plain-PyTorch DRSformer that reproduces the original implementation exactly.

Written from ``SPEC.md`` (the CVPR 2023 release, a BasicSR code base). Every class keeps the
original's name, constructor keywords, parameter names and shapes, so ``load_state_dict`` of an
original checkpoint works, and the float64 outputs and gradients match the golden files to ~1e-10.

Besides the modules, each block has a functional form (``channel_layer_norm``,
``topk_sparse_attention``, ``mixed_scale_feed_forward``) that takes its parameters as tensors:
the tests compare the fused kernels against these, and users can call them directly.

Top-k ties: like the original, :func:`topk_sparse_attention` selects with ``torch.topk``, whose
choice among equal values is unspecified. The fused path breaks ties by the lower column index
(see ``drsformer_fast.ops_torch``); the two agree whenever a row has no ties at its k-th value.
"""

from __future__ import annotations

import numbers

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "LAYER_NORM_EPS",
    "topk_counts",
    "channel_layer_norm",
    "topk_sparse_attention",
    "mixed_scale_feed_forward",
    "BiasFree_LayerNorm",
    "WithBias_LayerNorm",
    "LayerNorm",
    "Attention",
    "FeedForward",
    "TransformerBlock",
    "OverlapPatchEmbed",
    "Downsample",
    "Upsample",
    "OALayer",
    "ReLUConv",
    "SepConv",
    "DilConv",
    "OperationLayer",
    "GroupOLs",
    "subnet",
    "OPERATIONS",
    "DRSformer",
]

LAYER_NORM_EPS = 1e-5
L2_NORM_EPS = 1e-12


def topk_counts(channels_per_head: int) -> tuple[int, int, int, int]:
    """The four top-k sizes of the original: ``int(C/2), int(C*2/3), int(C*3/4), int(C*4/5)``.

    Python float arithmetic then truncation, exactly as upstream (C=48 -> 24, 32, 36, 38).
    """
    c = channels_per_head
    return int(c / 2), int(c * 2 / 3), int(c * 3 / 4), int(c * 4 / 5)


# --------------------------------------------------------------------------------------------
# Functional forms
# --------------------------------------------------------------------------------------------


def channel_layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """LayerNorm of each pixel over the channel axis of ``x: [B, C, H, W]``.

    ``bias=None`` is the original's BiasFree variant: ``x / sqrt(var + eps) * weight`` (the
    variance is still taken around the mean). Biased variance, eps 1e-5.
    """
    x3 = x.flatten(2).transpose(1, 2)  # [B, HW, C], the original's to_3d
    sigma = x3.var(-1, keepdim=True, unbiased=False)
    if bias is None:
        y = x3 / torch.sqrt(sigma + LAYER_NORM_EPS) * weight
    else:
        mu = x3.mean(-1, keepdim=True)
        y = (x3 - mu) / torch.sqrt(sigma + LAYER_NORM_EPS) * weight + bias
    return y.transpose(1, 2).reshape(x.shape)


def topk_sparse_attention(
    x: torch.Tensor,
    qkv_weight: torch.Tensor,
    qkv_bias: torch.Tensor | None,
    dw_weight: torch.Tensor,
    dw_bias: torch.Tensor | None,
    temperature: torch.Tensor,
    attn_weights: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    proj_weight: torch.Tensor,
    proj_bias: torch.Tensor | None,
    num_heads: int,
) -> torch.Tensor:
    """The original ``Attention.forward`` with its parameters as arguments.

    x: [B, d, H, W]; qkv_weight: [3d, d, 1, 1]; dw_weight: [3d, 1, 3, 3]; temperature: [heads, 1, 1];
    attn_weights: four tensors of shape [1]; proj_weight: [d, d, 1, 1]. Returns [B, d, H, W].
    """
    b, c, h, w = x.shape
    qkv = F.conv2d(F.conv2d(x, qkv_weight, qkv_bias), dw_weight, dw_bias, padding=1, groups=3 * c)
    q, k, v = qkv.chunk(3, dim=1)
    # 'b (head c) h w -> b head c (h w)'
    q = q.reshape(b, num_heads, c // num_heads, h * w)
    k = k.reshape(b, num_heads, c // num_heads, h * w)
    v = v.reshape(b, num_heads, c // num_heads, h * w)
    q = F.normalize(q, dim=-1)
    k = F.normalize(k, dim=-1)
    ch = q.shape[2]
    attn = (q @ k.transpose(-2, -1)) * temperature
    out = None
    for kk, weight in zip(topk_counts(ch), attn_weights):
        mask = torch.zeros(b, num_heads, ch, ch, device=x.device, dtype=attn.dtype)
        index = torch.topk(attn, k=kk, dim=-1, largest=True)[1]
        mask.scatter_(-1, index, 1.0)
        masked = torch.where(mask > 0, attn, torch.full_like(attn, float("-inf")))
        term = (masked.softmax(dim=-1) @ v) * weight
        out = term if out is None else out + term
    out = out.reshape(b, c, h, w)  # 'b head c (h w) -> b (head c) h w'
    return F.conv2d(out, proj_weight, proj_bias)


def mixed_scale_feed_forward(
    x: torch.Tensor,
    in_weight: torch.Tensor,
    in_bias: torch.Tensor | None,
    dw3_weight: torch.Tensor,
    dw3_bias: torch.Tensor | None,
    dw5_weight: torch.Tensor,
    dw5_bias: torch.Tensor | None,
    g3_weight: torch.Tensor,
    g3_bias: torch.Tensor | None,
    g5_weight: torch.Tensor,
    g5_bias: torch.Tensor | None,
    out_weight: torch.Tensor,
    out_bias: torch.Tensor | None,
) -> torch.Tensor:
    """The original ``FeedForward.forward`` (MSFN) with its parameters as arguments.

    x: [B, d, H, W]; in_weight: [2h, d, 1, 1]; dw3/dw5: [2h, 1, k, k]; g3: [h, 2, 3, 3];
    g5: [h, 2, 5, 5]; out_weight: [d, 2h, 1, 1]. Returns [B, d, H, W].
    """
    hidden2 = in_weight.shape[0]
    hidden = hidden2 // 2
    y = F.conv2d(x, in_weight, in_bias)
    x1_3, x2_3 = F.relu(F.conv2d(y, dw3_weight, dw3_bias, padding=1, groups=hidden2)).chunk(2, dim=1)
    x1_5, x2_5 = F.relu(F.conv2d(y, dw5_weight, dw5_bias, padding=2, groups=hidden2)).chunk(2, dim=1)
    x1 = torch.cat([x1_3, x1_5], dim=1)
    x2 = torch.cat([x2_3, x2_5], dim=1)
    x1 = F.relu(F.conv2d(x1, g3_weight, g3_bias, padding=1, groups=hidden))
    x2 = F.relu(F.conv2d(x2, g5_weight, g5_bias, padding=2, groups=hidden))
    return F.conv2d(torch.cat([x1, x2], dim=1), out_weight, out_bias)


# --------------------------------------------------------------------------------------------
# Transformer block modules (original names)
# --------------------------------------------------------------------------------------------


class BiasFree_LayerNorm(nn.Module):
    def __init__(self, normalized_shape):
        super().__init__()
        if isinstance(normalized_shape, numbers.Integral):
            normalized_shape = (normalized_shape,)
        self.weight = nn.Parameter(torch.ones(torch.Size(normalized_shape)))
        self.normalized_shape = normalized_shape

    def forward(self, x):  # x: [B, HW, C]
        sigma = x.var(-1, keepdim=True, unbiased=False)
        return x / torch.sqrt(sigma + LAYER_NORM_EPS) * self.weight


class WithBias_LayerNorm(nn.Module):
    def __init__(self, normalized_shape):
        super().__init__()
        if isinstance(normalized_shape, numbers.Integral):
            normalized_shape = (normalized_shape,)
        self.weight = nn.Parameter(torch.ones(torch.Size(normalized_shape)))
        self.bias = nn.Parameter(torch.zeros(torch.Size(normalized_shape)))
        self.normalized_shape = normalized_shape

    def forward(self, x):  # x: [B, HW, C]
        mu = x.mean(-1, keepdim=True)
        sigma = x.var(-1, keepdim=True, unbiased=False)
        return (x - mu) / torch.sqrt(sigma + LAYER_NORM_EPS) * self.weight + self.bias


class LayerNorm(nn.Module):
    """Channel LayerNorm of NCHW tensors; ``LayerNorm_type='BiasFree'`` or anything else (WithBias)."""

    def __init__(self, dim, LayerNorm_type):  # noqa: N803 (original keyword)
        super().__init__()
        if LayerNorm_type == "BiasFree":
            self.body = BiasFree_LayerNorm(dim)
        else:
            self.body = WithBias_LayerNorm(dim)

    def forward(self, x):
        h, w = x.shape[-2:]
        y = self.body(x.flatten(2).transpose(1, 2))
        return y.transpose(1, 2).reshape(x.shape[0], -1, h, w)


class Attention(nn.Module):
    """Top-K Sparse Attention (the original ``Attention``)."""

    def __init__(self, dim, num_heads, bias):
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, kernel_size=1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, kernel_size=3, stride=1, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)
        self.attn_drop = nn.Dropout(0.0)
        self.attn1 = nn.Parameter(torch.tensor([0.2]))
        self.attn2 = nn.Parameter(torch.tensor([0.2]))
        self.attn3 = nn.Parameter(torch.tensor([0.2]))
        self.attn4 = nn.Parameter(torch.tensor([0.2]))

    def forward(self, x):
        return topk_sparse_attention(
            x,
            self.qkv.weight,
            self.qkv.bias,
            self.qkv_dwconv.weight,
            self.qkv_dwconv.bias,
            self.temperature,
            (self.attn1, self.attn2, self.attn3, self.attn4),
            self.project_out.weight,
            self.project_out.bias,
            self.num_heads,
        )


class FeedForward(nn.Module):
    """Mixed-Scale Feed-Forward Network (the original ``FeedForward``)."""

    def __init__(self, dim, ffn_expansion_factor, bias):
        super().__init__()
        hidden_features = int(dim * ffn_expansion_factor)
        h2 = hidden_features * 2
        self.project_in = nn.Conv2d(dim, h2, kernel_size=1, bias=bias)
        self.dwconv3x3 = nn.Conv2d(h2, h2, kernel_size=3, stride=1, padding=1, groups=h2, bias=bias)
        self.dwconv5x5 = nn.Conv2d(h2, h2, kernel_size=5, stride=1, padding=2, groups=h2, bias=bias)
        self.relu3 = nn.ReLU()
        self.relu5 = nn.ReLU()
        self.dwconv3x3_1 = nn.Conv2d(h2, hidden_features, kernel_size=3, stride=1, padding=1,
                                     groups=hidden_features, bias=bias)
        self.dwconv5x5_1 = nn.Conv2d(h2, hidden_features, kernel_size=5, stride=1, padding=2,
                                     groups=hidden_features, bias=bias)
        self.relu3_1 = nn.ReLU()
        self.relu5_1 = nn.ReLU()
        self.project_out = nn.Conv2d(h2, dim, kernel_size=1, bias=bias)

    def forward(self, x):
        return mixed_scale_feed_forward(
            x,
            self.project_in.weight, self.project_in.bias,
            self.dwconv3x3.weight, self.dwconv3x3.bias,
            self.dwconv5x5.weight, self.dwconv5x5.bias,
            self.dwconv3x3_1.weight, self.dwconv3x3_1.bias,
            self.dwconv5x5_1.weight, self.dwconv5x5_1.bias,
            self.project_out.weight, self.project_out.bias,
        )


class TransformerBlock(nn.Module):
    def __init__(self, dim, num_heads, ffn_expansion_factor, bias, LayerNorm_type):  # noqa: N803
        super().__init__()
        self.norm1 = LayerNorm(dim, LayerNorm_type)
        self.attn = Attention(dim, num_heads, bias)
        self.norm2 = LayerNorm(dim, LayerNorm_type)
        self.ffn = FeedForward(dim, ffn_expansion_factor, bias)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        x = x + self.ffn(self.norm2(x))
        return x


class OverlapPatchEmbed(nn.Module):
    def __init__(self, in_c=3, embed_dim=48, bias=False):
        super().__init__()
        self.proj = nn.Conv2d(in_c, embed_dim, kernel_size=3, stride=1, padding=1, bias=bias)

    def forward(self, x):
        return self.proj(x)


class Downsample(nn.Module):
    def __init__(self, n_feat):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(n_feat, n_feat // 2, kernel_size=3, stride=1, padding=1, bias=False), nn.PixelUnshuffle(2)
        )

    def forward(self, x):
        return self.body(x)


class Upsample(nn.Module):
    def __init__(self, n_feat):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(n_feat, n_feat * 2, kernel_size=3, stride=1, padding=1, bias=False), nn.PixelShuffle(2)
        )

    def forward(self, x):
        return self.body(x)


# --------------------------------------------------------------------------------------------
# MEFC: mixture-of-experts feature compensator
# --------------------------------------------------------------------------------------------

OPERATIONS = (
    "sep_conv_1x1",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "sep_conv_7x7",
    "dil_conv_3x3",
    "dil_conv_5x5",
    "dil_conv_7x7",
    "avg_pool_3x3",
)


class ReLUConv(nn.Module):
    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):  # noqa: N803
        super().__init__()
        self.op = nn.Sequential(
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.ReLU(inplace=False),
        )

    def forward(self, x):
        return self.op(x)


class DilConv(nn.Module):
    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, affine=True):  # noqa: N803
        super().__init__()
        self.op = nn.Sequential(
            nn.Conv2d(C_in, C_in, kernel_size=kernel_size, stride=stride, padding=padding,
                      dilation=dilation, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, kernel_size=1, padding=0, bias=False),
        )

    def forward(self, x):
        return self.op(x)


class SepConv(nn.Module):
    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):  # noqa: N803
        super().__init__()
        self.op = nn.Sequential(
            nn.Conv2d(C_in, C_in, kernel_size=kernel_size, stride=stride, padding=padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_in, kernel_size=1, padding=0, bias=False),
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size=kernel_size, stride=1, padding=padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, kernel_size=1, padding=0, bias=False),
        )

    def forward(self, x):
        return self.op(x)


def _make_op(name: str, c: int, stride: int) -> nn.Module:
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
    kind, size = name.rsplit("_", 1)
    k = int(size.split("x")[0])
    if kind == "sep_conv":
        return SepConv(c, c, k, stride, k // 2, affine=False)
    if kind == "dil_conv":
        return DilConv(c, c, k, stride, k - 1, 2, affine=False)
    raise ValueError(f"unknown MEFC operation {name!r}")


class OALayer(nn.Module):
    """Operation-attention: per-sample softmax weights over the 8 operations of each step."""

    def __init__(self, channel, k, num_ops):
        super().__init__()
        self.k = k
        self.num_ops = num_ops
        self.output = k * num_ops
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.ca_fc = nn.Sequential(
            nn.Linear(channel, self.output * 2),
            nn.ReLU(),
            nn.Linear(self.output * 2, self.k * self.num_ops),
        )

    def forward(self, x):
        y = self.avg_pool(x).view(x.size(0), -1)
        return self.ca_fc(y).view(-1, self.k, self.num_ops)


class OperationLayer(nn.Module):
    def __init__(self, C, stride):  # noqa: N803
        super().__init__()
        self._ops = nn.ModuleList([_make_op(name, C, stride) for name in OPERATIONS])
        self._out = nn.Sequential(nn.Conv2d(C * len(OPERATIONS), C, 1, padding=0, bias=False), nn.ReLU())

    def forward(self, x, weights):  # weights: [B, num_ops]
        weights = weights.transpose(1, 0)
        states = [op(x) * w.view([-1, 1, 1, 1]) for w, op in zip(weights, self._ops)]
        return self._out(torch.cat(states, dim=1))


class GroupOLs(nn.Module):
    def __init__(self, steps, C):  # noqa: N803
        super().__init__()
        self.preprocess = ReLUConv(C, C, 1, 1, 0, affine=False)
        self._steps = steps
        self._ops = nn.ModuleList([OperationLayer(C, 1) for _ in range(steps)])
        self.relu = nn.ReLU()

    def forward(self, s0, weights):  # weights: [B, steps, num_ops]
        s0 = self.preprocess(s0)
        for i in range(self._steps):
            res = s0
            s0 = self._ops[i](s0, weights[:, i, :])
            s0 = self.relu(s0 + res)
        return s0


class subnet(nn.Module):  # noqa: N801 (original name; checkpoints do not depend on it, patch() does)
    """MEFC: ``layers.0`` OALayer then ``layers.1`` GroupOLs (4 steps of 8 operations)."""

    def __init__(self, dim, layer_num=1, steps=4):
        super().__init__()
        self._C = dim
        self.num_ops = len(OPERATIONS)
        self._layer_num = layer_num
        self._steps = steps
        self.layers = nn.ModuleList()
        for _ in range(layer_num):
            self.layers.append(OALayer(dim, steps, self.num_ops))
            self.layers.append(GroupOLs(steps, dim))

    def forward(self, x):
        weights = None
        for layer in self.layers:
            if isinstance(layer, OALayer):
                weights = F.softmax(layer(x), dim=-1)
            else:
                x = layer(x, weights)
        return x


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class DRSformer(nn.Module):
    """The original DRSformer; ``mefc=False`` is the Rain200L/SPA variant without MEFC."""

    block_cls = TransformerBlock
    mefc_cls = subnet

    def __init__(
        self,
        inp_channels=3,
        out_channels=3,
        dim=48,
        num_blocks=(4, 6, 6, 8),
        heads=(1, 2, 4, 8),
        ffn_expansion_factor=2.66,
        bias=False,
        LayerNorm_type="WithBias",  # noqa: N803 (original keyword)
        mefc: bool = True,
    ):
        super().__init__()
        num_blocks = list(num_blocks)
        heads = list(heads)
        if len(num_blocks) != 4 or len(heads) != 4:
            raise ValueError(f"num_blocks and heads need 4 entries each, got {num_blocks} and {heads}")
        for level, (width, nh) in enumerate(zip((dim, 2 * dim, 4 * dim, 8 * dim), heads)):
            if nh < 1 or width % nh:
                raise ValueError(f"level {level + 1}: {width} channels do not split into {nh} heads")
        if (2 * dim) % heads[0]:
            raise ValueError(f"decoder level 1: {2 * dim} channels do not split into {heads[0]} heads")
        self.mefc = bool(mefc)
        block = type(self).block_cls

        def level(width, n, nh):
            return nn.Sequential(*[block(width, nh, ffn_expansion_factor, bias, LayerNorm_type) for _ in range(n)])

        # upstream builds the patch embedding without a bias whatever `bias` says
        self.patch_embed = OverlapPatchEmbed(inp_channels, dim)
        if self.mefc:
            self.encoder_level0 = type(self).mefc_cls(dim)
        self.encoder_level1 = level(dim, num_blocks[0], heads[0])
        self.down1_2 = Downsample(dim)
        self.encoder_level2 = level(dim * 2, num_blocks[1], heads[1])
        self.down2_3 = Downsample(dim * 2)
        self.encoder_level3 = level(dim * 4, num_blocks[2], heads[2])
        self.down3_4 = Downsample(dim * 4)
        self.latent = level(dim * 8, num_blocks[3], heads[3])
        self.up4_3 = Upsample(dim * 8)
        self.reduce_chan_level3 = nn.Conv2d(dim * 8, dim * 4, kernel_size=1, bias=bias)
        self.decoder_level3 = level(dim * 4, num_blocks[2], heads[2])
        self.up3_2 = Upsample(dim * 4)
        self.reduce_chan_level2 = nn.Conv2d(dim * 4, dim * 2, kernel_size=1, bias=bias)
        self.decoder_level2 = level(dim * 2, num_blocks[1], heads[1])
        self.up2_1 = Upsample(dim * 2)
        self.decoder_level1 = level(dim * 2, num_blocks[0], heads[0])
        if self.mefc:
            self.refinement = type(self).mefc_cls(dim * 2)
        self.output = nn.Conv2d(dim * 2, out_channels, kernel_size=3, stride=1, padding=1, bias=bias)

    def forward(self, inp_img):
        x = self.patch_embed(inp_img)
        if self.mefc:
            x = self.encoder_level0(x)
        out_enc_level1 = self.encoder_level1(x)
        out_enc_level2 = self.encoder_level2(self.down1_2(out_enc_level1))
        out_enc_level3 = self.encoder_level3(self.down2_3(out_enc_level2))
        latent = self.latent(self.down3_4(out_enc_level3))

        x = torch.cat([self.up4_3(latent), out_enc_level3], 1)
        x = self.decoder_level3(self.reduce_chan_level3(x))
        x = torch.cat([self.up3_2(x), out_enc_level2], 1)
        x = self.decoder_level2(self.reduce_chan_level2(x))
        x = torch.cat([self.up2_1(x), out_enc_level1], 1)
        x = self.decoder_level1(x)
        if self.mefc:
            x = self.refinement(x)
        return self.output(x) + inp_img
