"""Run every fused op against the reference at small shapes and report the errors as a table.

Used by ``drsformer-fast selfcheck`` (and by ``bench`` when there is no GPU): on a machine without
an NVIDIA GPU the command line runs it under Triton's interpreter, so the real kernels are checked.
The criterion is the test suite's: relative error against a float64 reference at most a small
multiple of PyTorch's own error at the same precision, plus a floor.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from .. import reference as R
from ..progress import Progress
from .tolerance import bound, relative_errors


@dataclass
class Row:
    op: str
    case: str
    tensor: str
    error: float
    torch_error: float
    bound: float
    seconds: float

    @property
    def ok(self) -> bool:
        return self.error <= self.bound


def _rel(a: torch.Tensor, r: torch.Tensor) -> float:
    return relative_errors(a, r)[0]


def _grads(fn: Callable, inputs: list[torch.Tensor], g: torch.Tensor, dtype, device):
    leaves = [t.detach().to(device=device, dtype=dtype if t.is_floating_point() else t.dtype).requires_grad_()
              for t in inputs]
    out = fn(*leaves)
    return [out] + list(torch.autograd.grad(out, leaves, g.to(device=device, dtype=out.dtype)))


def compare(op: str, case: str, names: list[str], fast: Callable, ref: Callable, inputs: list[torch.Tensor],
            g: torch.Tensor, dtype: torch.dtype, device: torch.device) -> Iterator[Row]:
    """Output and every input gradient of ``fast`` vs ``ref`` (float64), with ``ref`` at ``dtype``
    on the CPU as PyTorch's own error."""
    t0 = time.perf_counter()
    got = _grads(fast, inputs, g, dtype, device)
    seconds = time.perf_counter() - t0
    hi = _grads(ref, inputs, g, torch.float64, torch.device("cpu"))
    lo = _grads(ref, inputs, g, dtype, torch.device("cpu"))
    for name, a, h, l in zip(["output"] + names, got, hi, lo):
        terr = _rel(l, h)
        yield Row(op, case, name, _rel(a, h), terr, bound(terr, dtype, a.numel()), seconds)


LAYER_NORM_CASES = (((2, 48, 13, 17), "WithBias"), ((1, 127, 7, 5), "BiasFree"))
# (B, d, heads, H, W, bias): C = 48 as in level 1, and C = 8 with biases (k = 4, 5, 6, 6)
ATTENTION_CASES = ((1, 48, 1, 9, 11, False), (2, 24, 3, 7, 5, True))
# hidden 21 (odd: the middle group straddles a/b) with biases and a residual; hidden 26 without
FEED_FORWARD_CASES = (((2, 8, 7, 13), True, True), ((1, 10, 9, 5), False, False))


def _attention_case_runs(dtype: torch.dtype, d: int, heads: int) -> bool:
    # half precision: small C keeps the top-k masks those of float64 (see tests)
    return dtype == torch.float32 or d // heads <= 8


def count_cases(dtypes) -> int:
    """How many cases :func:`run` checks (one progress step each)."""
    attention = sum(_attention_case_runs(dt, c[1], c[2]) for dt in dtypes for c in ATTENTION_CASES)
    return len(dtypes) * (len(LAYER_NORM_CASES) + len(FEED_FORWARD_CASES) + 1) + attention


def _layer_norm_rows(device, dtypes) -> Iterator[Row]:
    from ..ops import layer_norm

    for dtype in dtypes:
        for (B, C, H, W), ln_type in LAYER_NORM_CASES:
            gen = torch.Generator().manual_seed(C)
            x = torch.randn(B, C, H, W, generator=gen) * 2 + 0.5
            w, b = torch.randn(C, generator=gen), torch.randn(C, generator=gen)
            g = torch.randn(B, C, H, W, generator=gen)
            inputs = [x, w] + ([b] if ln_type == "WithBias" else [])
            case = f"{ln_type} {B}x{C}x{H}x{W} {str(dtype)[6:]}"
            yield from compare(
                "layer_norm", case, ["dx", "dweight", "dbias"][: len(inputs)],
                lambda x, w, b=None: layer_norm(x, w, b),
                lambda x, w, b=None: R.channel_layer_norm(x, w, b),
                inputs, g, dtype, device,
            )


def _attention_rows(device, dtypes) -> Iterator[Row]:
    from ..ops import topk_sparse_attention

    for dtype in dtypes:
        for B, d, heads, H, W, bias in ATTENTION_CASES:
            if not _attention_case_runs(dtype, d, heads):
                continue
            gen = torch.Generator().manual_seed(d)
            x = torch.randn(B, d, H, W, generator=gen)
            params = [torch.randn(3 * d, d, 1, 1, generator=gen) * 0.2,
                      torch.randn(3 * d, 1, 3, 3, generator=gen) * 0.3,
                      torch.rand(heads, 1, 1, generator=gen) * 1.5 + 0.5,
                      *(torch.rand(1, generator=gen) * 0.4 + 0.05 for _ in range(4)),
                      torch.randn(d, d, 1, 1, generator=gen) * 0.2]
            biases = [torch.randn(3 * d, generator=gen) * 0.1, torch.randn(3 * d, generator=gen) * 0.1,
                      torch.randn(d, generator=gen) * 0.1] if bias else []
            g = torch.randn(B, d, H, W, generator=gen)

            def split(x, qkv_w, dw_w, temp, a1, a2, a3, a4, proj_w, qkv_b=None, dw_b=None, proj_b=None, heads=heads):
                return x, qkv_w, qkv_b, dw_w, dw_b, temp, (a1, a2, a3, a4), proj_w, proj_b, heads

            names = ["dx", "dqkv.weight", "dqkv_dwconv.weight", "dtemperature", "dattn1", "dattn2", "dattn3",
                     "dattn4", "dproject_out.weight"] + (["dqkv.bias", "dqkv_dwconv.bias", "dproject_out.bias"]
                                                        if bias else [])
            yield from compare(
                "topk_attention", f"{B}x{d}x{H}x{W} heads={heads} {str(dtype)[6:]}", names,
                lambda *a: topk_sparse_attention(*split(*a)),
                lambda *a: R.topk_sparse_attention(*split(*a)),
                [x] + params + biases, g, dtype, device,
            )



def _feed_forward_rows(device, dtypes) -> Iterator[Row]:
    from .._validation import FFN_PARAM_NAMES, ffn_param_shapes
    from ..ops import mixed_scale_feed_forward

    for dtype in dtypes:
        for (B, d, H, W), bias, res in FEED_FORWARD_CASES:
            gen = torch.Generator().manual_seed(d)
            names = [n for n in FFN_PARAM_NAMES if bias or n.endswith("weight")]
            shapes = ffn_param_shapes(d, int(d * 2.66))
            params = [torch.randn(shapes[n], generator=gen) * (0.3 if n.endswith("bias") else
                                                               shapes[n][1] ** -0.5 / shapes[n][-1])
                      for n in names]
            x = torch.randn(B, d, H, W, generator=gen)
            r = [torch.randn(B, d, H, W, generator=gen)] if res else []
            g = torch.randn(B, d, H, W, generator=gen)

            def split(args, names=names, res=res):
                x, *rest = args
                p = dict(zip(names, rest[: len(names)]))
                return x, [p.get(n) for n in FFN_PARAM_NAMES], (rest[-1] if res else None)

            def fast(*args, split=split):
                x, p, r = split(args)
                return mixed_scale_feed_forward(x, *p, residual=r)

            def ref(*args, split=split):
                x, p, r = split(args)
                out = R.mixed_scale_feed_forward(x, *p)
                return out + r if r is not None else out

            case = f"bias={bias:d} res={res:d} {B}x{d}x{H}x{W} {str(dtype)[6:]}"
            yield from compare("feed_forward", case, ["dx", *["d" + n for n in names], *(["dresidual"] if res else [])],
                               fast, ref, [x, *params, *r], g, dtype, device)


def _mefc_group(name: str) -> str:
    """The parameter group a gradient of the MEFC ``subnet`` is reported in."""
    if ".ca_fc." in name:
        return "droute (ca_fc)"
    if ".preprocess." in name:
        return "dpreprocess"
    if "._out." in name:
        return "d_out (8C->C)"
    o, i = int(name.split("._ops.")[2].split(".")[0]), int(name.split(".op.")[1].split(".")[0])
    if o < 4:
        return {0: "dsep dw1", 1: "dsep 1x1 inner", 3: "dsep dw2", 4: "dsep 1x1 last"}[i]
    return {0: "ddil dw", 1: "ddil 1x1"}[i]


def _mefc_rows(device, dtypes) -> Iterator[Row]:
    """MEFC (FeatureCompensator vs the original subnet), batch 2 (per-sample routing), odd sizes; the
    ~100 parameter gradients reported per group (relative error of the group's concatenation)."""
    import math

    from ..modules import FeatureCompensator

    B, C, H, W = 2, 12, 7, 9
    gen = torch.Generator().manual_seed(C)
    ref = R.subnet(C)
    with torch.no_grad():
        for p in ref.parameters():  # every parameter matters: PyTorch's init scale, random biases
            bound_ = 1 / math.sqrt(p[0].numel()) if p.dim() > 1 else 0.02
            p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1) * bound_)
    names = [n for n, _ in ref.named_parameters()]
    x = torch.randn(B, C, H, W, generator=gen)
    g = torch.randn(B, C, H, W, generator=gen)
    fast = FeatureCompensator(C)
    fast.load_state_dict(ref.state_dict())
    fast = fast.to(device)

    def call(module):
        return lambda x, *params: torch.func.functional_call(module, dict(zip(names, params)), (x,))

    inputs = [x] + [p.detach() for p in ref.parameters()]
    for dtype in dtypes:
        t0 = time.perf_counter()
        got = _grads(call(fast), inputs, g, dtype, device)
        seconds = time.perf_counter() - t0
        hi = _grads(call(ref), inputs, g, torch.float64, torch.device("cpu"))
        lo = _grads(call(ref), inputs, g, dtype, torch.device("cpu"))
        groups: dict[str, list[int]] = {"output": [0], "dx": [1]}
        for i, n in enumerate(names):
            groups.setdefault(_mefc_group(n), []).append(i + 2)
        case = f"{B}x{C}x{H}x{W} {str(dtype)[6:]}"
        for group, idx in groups.items():
            a, h, l_ = (torch.cat([t[i].detach().flatten().double().cpu() for i in idx]) for t in (got, hi, lo))
            terr = _rel(l_, h)
            yield Row("mefc", case, group, _rel(a, h), terr, bound(terr, dtype, a.numel()), seconds)


CHECKS: dict[str, Callable] = {
    "layer_norm": _layer_norm_rows,
    "topk_attention": _attention_rows,
    "feed_forward": _feed_forward_rows,
    "mefc": _mefc_rows,
}


def run(device: torch.device, dtypes=(torch.float32, torch.float16), progress: Progress | None = None) -> list[Row]:
    """Every check's rows; ``progress`` (over :func:`count_cases` steps) steps after each case (op,
    shape, precision) with its time."""
    rows: list[Row] = []
    for check in CHECKS.values():
        for row in check(device, dtypes):
            if progress is not None and (not rows or (rows[-1].op, rows[-1].case) != (row.op, row.case)):
                progress.step(f"self-check {row.op} {row.case}", row.seconds)
            rows.append(row)
    return rows


def format_rows(rows: list[Row]) -> str:
    head = f"{'op':<22} {'case':<34} {'tensor':<22} {'rel.err':>9} {'torch err':>9} {'bound':>9}  result"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.op:<22} {r.case:<34} {r.tensor:<22} {r.error:9.2e} {r.torch_error:9.2e} {r.bound:9.2e}  "
                     f"{'ok' if r.ok else 'FAIL'}")
    return "\n".join(lines)
