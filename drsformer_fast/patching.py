"""``patch(model)``: swap the fast modules into an existing DRSformer instance.

Works on instances of the ORIGINAL class (this package never imports the original code base) and
on copies of it in other repositories: modules are recognised by their structure and parameter
names, not by their class. Each recognised module is replaced by its fast counterpart built around
the SAME Parameter objects, so an optimizer created before the patch keeps working and the state
dict is unchanged:

* ``LayerNorm`` (a ``body`` holding a 1-D ``weight`` and optionally ``bias``) -> ChannelLayerNorm
* ``Attention`` (``temperature``, ``attn1..4``, ``qkv``, ``qkv_dwconv``, ``project_out``) -> TopKSparseAttention
* ``FeedForward`` (``project_in``, ``dwconv3x3``, ``dwconv5x5``, ``dwconv3x3_1``, ``dwconv5x5_1``,
  ``project_out``) -> MixedScaleFeedForward
* ``TransformerBlock`` (``norm1``, ``attn``, ``norm2``, ``ffn``, all recognised) -> FastTransformerBlock
  (which also fuses the residual adds)
* MEFC ``subnet`` (``layers``: OALayer / GroupOLs pairs with the original's eight operations in
  order; ``modules.why_not_feature_compensator``) -> FeatureCompensator

With ``verify=True`` (the default) each candidate is also checked numerically before it is
swapped: the original and the fast module run on a small random input and must agree (a module
that merely looks like a DRSformer block, e.g. another epsilon, stays as it is and is reported).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .modules import (
    ChannelLayerNorm,
    FastTransformerBlock,
    FeatureCompensator,
    MixedScaleFeedForward,
    TopKSparseAttention,
    why_not_feature_compensator,
)


@dataclass
class PatchReport:
    swapped: list[tuple[str, str]] = field(default_factory=list)  # (qualified name, fast class)
    not_recognised: list[tuple[str, str]] = field(default_factory=list)  # (qualified name, why)
    untouched: int = 0  # modules of other kinds (convolutions, sampling, ...), left as they are

    def __str__(self) -> str:
        kinds: dict[str, int] = {}
        for _, kind in self.swapped:
            kinds[kind] = kinds.get(kind, 0) + 1
        lines = [f"patched {len(self.swapped)} modules: " + (", ".join(f"{n} {k}" for k, n in kinds.items()) or "none")]
        for name, why in self.not_recognised:
            lines.append(f"  left as is: {name or '<root>'}: {why}")
        lines.append(f"  {self.untouched} other modules untouched")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# recognisers: None when the module has the structure, else the reason it does not
# --------------------------------------------------------------------------------------------


def _conv(m, cin, cout, k, groups, padding) -> bool:
    return (isinstance(m, nn.Conv2d) and m.in_channels == cin and m.out_channels == cout
            and m.kernel_size == (k, k) and m.groups == groups and m.stride == (1, 1)
            and m.padding == (padding, padding) and m.dilation == (1, 1) and m.padding_mode == "zeros")


def _own_params(m: nn.Module) -> set[str]:
    return {n for n, _ in m.named_parameters(recurse=False)}


def _why_not_layernorm(m: nn.Module) -> str | None:
    body = getattr(m, "body", None)
    if set(m._modules) != {"body"} or _own_params(m) or not isinstance(body, nn.Module):
        return "no `body` child with its parameters"
    if body._modules or list(body.buffers()):
        return "`body` has children or buffers"
    names = _own_params(body)
    if names not in ({"weight"}, {"weight", "bias"}) or body.weight.dim() != 1:
        return "`body` does not hold a 1-D weight (and bias)"
    if "bias" in names and body.bias.shape != body.weight.shape:
        return "bias and weight shapes differ"
    return None


def _why_not_attention(m: nn.Module) -> str | None:
    if _own_params(m) != {"temperature", "attn1", "attn2", "attn3", "attn4"}:
        return "parameters are not temperature and attn1..attn4"
    children = set(m._modules) - {"attn_drop"}
    if children != {"qkv", "qkv_dwconv", "project_out"}:
        return f"children {sorted(m._modules)} are not qkv, qkv_dwconv, project_out"
    drop = m._modules.get("attn_drop")
    if drop is not None and not (isinstance(drop, nn.Dropout) and drop.p == 0):
        return "attn_drop is not a zero dropout"
    d = m.qkv.in_channels
    heads = m.temperature.shape[0]
    bias = m.qkv.bias is not None
    if not (_conv(m.qkv, d, 3 * d, 1, 1, 0) and _conv(m.qkv_dwconv, 3 * d, 3 * d, 3, 3 * d, 1)
            and _conv(m.project_out, d, d, 1, 1, 0)):
        return "qkv / qkv_dwconv / project_out do not have the original's shapes"
    if m.temperature.shape != (heads, 1, 1) or d % heads:
        return "temperature is not [heads, 1, 1] for a head count dividing the channels"
    if any(getattr(m, f"attn{i}").shape != (1,) for i in range(1, 5)):
        return "attn1..attn4 are not single values"
    if any((c.bias is not None) != bias for c in (m.qkv_dwconv, m.project_out)):
        return "only some of the convolutions have biases"
    return None


_FFN_CHILDREN = {"project_in", "dwconv3x3", "dwconv5x5", "dwconv3x3_1", "dwconv5x5_1", "project_out"}


def _why_not_feedforward(m: nn.Module) -> str | None:
    if _own_params(m):
        return "has parameters of its own"
    extra = set(m._modules) - _FFN_CHILDREN
    if not _FFN_CHILDREN <= set(m._modules) or any(not isinstance(m._modules[n], nn.ReLU) for n in extra):
        return f"children {sorted(m._modules)} are not the original's six convolutions (+ ReLUs)"
    d = m.project_in.in_channels
    h2 = m.project_in.out_channels
    h = h2 // 2
    if h2 % 2 or not (
        _conv(m.project_in, d, h2, 1, 1, 0) and _conv(m.dwconv3x3, h2, h2, 3, h2, 1)
        and _conv(m.dwconv5x5, h2, h2, 5, h2, 2) and _conv(m.dwconv3x3_1, h2, h, 3, h, 1)
        and _conv(m.dwconv5x5_1, h2, h, 5, h, 2) and _conv(m.project_out, h2, d, 1, 1, 0)
    ):
        return "the convolutions do not have the original's shapes"
    convs = [m._modules[n] for n in _FFN_CHILDREN]
    if len({c.bias is not None for c in convs}) != 1:
        return "only some of the convolutions have biases"
    return None


_KINDS = {
    "LayerNorm": (_why_not_layernorm, lambda m: ChannelLayerNorm.from_original(m)),
    "Attention": (_why_not_attention, lambda m: TopKSparseAttention.from_original(m)),
    "FeedForward": (_why_not_feedforward, lambda m: MixedScaleFeedForward.from_original(m)),
    # the original MEFC class is called `subnet` (the name also picks the hint for look-alikes)
    "subnet": (why_not_feature_compensator, lambda m: FeatureCompensator.from_original(m)),
}


# --------------------------------------------------------------------------------------------
# numerical verification
# --------------------------------------------------------------------------------------------


def _probe_input(module: nn.Module, channels: int) -> torch.Tensor:
    p = next(module.parameters())
    gen = torch.Generator().manual_seed(0)
    return torch.randn(1, channels, 5, 6, generator=gen).to(device=p.device, dtype=p.dtype)


def _agree(original: nn.Module, fast: nn.Module, channels: int) -> str | None:
    x = _probe_input(original, channels)
    with torch.no_grad():
        try:
            want, got = original(x), fast(x)
        except Exception as exc:  # the candidate cannot run as an original block: not one
            return f"probe failed: {type(exc).__name__}: {exc}"
    if want.shape != got.shape:
        return f"output shape {tuple(got.shape)} differs from the original's {tuple(want.shape)}"
    err = ((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-30)).item()
    tol = 1e-4 if x.dtype in (torch.float32, torch.float64) else 2e-2
    if not err <= tol:
        return f"outputs differ from the original's (relative error {err:.2e} on a random input)"
    return None


def _channels(kind: str, m: nn.Module) -> int:
    if kind == "LayerNorm":
        return m.body.weight.shape[0]
    if kind == "Attention":
        return m.qkv.in_channels
    if kind == "subnet":
        return m.layers[1].preprocess.op[0].in_channels
    return m.project_in.in_channels


# --------------------------------------------------------------------------------------------
# the walk
# --------------------------------------------------------------------------------------------


def _is_fast(m: nn.Module) -> bool:
    return isinstance(m, (ChannelLayerNorm, TopKSparseAttention, MixedScaleFeedForward, FastTransformerBlock,
                          FeatureCompensator))


def _convert(name: str, m: nn.Module, verify: bool, report: PatchReport) -> nn.Module | None:
    """The fast replacement of ``m`` (None: not a DRSformer block); records what it decided."""
    for kind, (why_not, build) in _KINDS.items():
        if why_not(m) is None:
            fast = build(m)
            problem = _agree(m, fast, _channels(kind, m)) if verify else None
            if problem:
                report.not_recognised.append((name, f"looks like {kind} but {problem}"))
                return None
            report.swapped.append((name, type(fast).__name__))
            return fast
    hint = next((h for h in _KINDS if h in type(m).__name__), None)
    if hint is not None:
        report.not_recognised.append((name, f"{type(m).__name__} is not recognised: {_KINDS[hint][0](m)}"))
    return None


def _fuse_block(name: str, block: nn.Module, verify: bool, report: PatchReport) -> nn.Module | None:
    """A TransformerBlock whose four children are now fast becomes one fused block (residual adds in
    the kernels), if it computes what the original block computes."""
    if set(block._modules) != {"norm1", "attn", "norm2", "ffn"} or _own_params(block):
        return None
    if not all(_is_fast(block._modules[n]) for n in ("norm1", "attn", "norm2", "ffn")):
        return None
    fused = FastTransformerBlock.from_children(block.norm1, block.attn, block.norm2, block.ffn)
    problem = _agree(block, fused, block.norm1.dim) if verify else None
    if problem:
        report.not_recognised.append((name, f"looks like TransformerBlock but {problem}; its children are fast"))
        return None
    report.swapped.append((name, "FastTransformerBlock"))
    return fused


def _walk(parent: nn.Module, prefix: str, verify: bool, report: PatchReport) -> None:
    for child_name, child in list(parent._modules.items()):
        if child is None or _is_fast(child):
            continue
        name = f"{prefix}.{child_name}" if prefix else child_name
        fast = _convert(name, child, verify, report)
        if fast is None:
            _walk(child, name, verify, report)
            fast = _fuse_block(name, child, verify, report)
        if fast is not None:
            setattr(parent, child_name, fast)


def patch(model: nn.Module, *, verify: bool = True, return_report: bool = False):
    """Swap the fast modules into ``model`` in place (sharing its Parameter objects).

    Returns the model, or ``(model, report)`` with ``return_report=True``; ``print(report)`` lists
    what was swapped and which block-like modules were left as they are, and why.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"patch() takes an nn.Module, got {type(model).__name__}")
    report = PatchReport()
    root = _convert("", model, verify, report)
    if root is None:
        _walk(model, "", verify, report)
        root = model
    inside_fast = {id(sub) for m in root.modules() if _is_fast(m) for sub in m.modules()}
    report.untouched = sum(1 for m in root.modules() if not m._modules and id(m) not in inside_fast)
    return (root, report) if return_report else root
