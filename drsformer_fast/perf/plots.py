"""``drsformer-fast bench --plots DIR``: where the time and the bytes go, as PNGs (matplotlib).

From a no-GPU result (:func:`drsformer_fast.perf.bench.run_figures`), :func:`plot_figures` writes one
figure per topic, original vs fast, as horizontal bars on a logarithmic axis with the ratio
original / fast beside each pair: the block kinds at the result's first block shape (level 1 at
256x256 by default), every MEFC shape and every whole-model scenario:

* ``bytes_moved.png``: bytes moved per forward and per forward+backward;
* ``launches.png``: kernel launches per forward and per forward+backward;
* ``saved_for_backward.png``: bytes autograd keeps for backward (training rows only);
* ``host_cost.png``: host milliseconds per call, where the result has a ``host_cost`` entry
  (:mod:`drsformer_fast.perf.hostcost`) with rows.

From a GPU result (:func:`drsformer_fast.perf.bench.run_gpu`), :func:`plot_gpu` writes
``gpu_median_ms.png``: the median milliseconds per call of every implementation, one panel per
precision, grouped by scenario (missing measurements are left out).

matplotlib is an optional dependency (``pip install drsformer-fast[plots]``): :func:`require`
raises :class:`PlotError` with a one-line message where it is missing.
"""

from __future__ import annotations

import os

ORIGINAL_COLOR = "#c44e52"
FAST_COLOR = "#4c72b0"
BLOCK_LABELS = {"layernorm": "LayerNorm", "attention": "attention", "feedforward": "feed-forward",
                "block": "transformer block"}
IMPL_COLORS = {"original": "#c44e52", "original-compiled": "#e39c9e", "original-graphed": "#8c2d30",
               "original-reduce-overhead": "#f0c4c5", "fast": "#4c72b0", "fast-compiled": "#8fa9d6",
               "fast-graphed": "#1f3f73", "fast-reduce-overhead": "#c3d2ec"}


class PlotError(ValueError):
    """A plot cannot be drawn (matplotlib missing, a folder that cannot be created)."""


def require() -> None:
    """Raise :class:`PlotError` unless matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotError("--plots needs matplotlib: pip install 'drsformer-fast[plots]' (or pip install "
                        "matplotlib)") from None


def check_folder(path: str) -> None:
    """Raise :class:`PlotError` unless ``path`` is a folder or can be created as one (nothing is created)."""
    path = os.path.abspath(path)
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        what = "is a file" if probe == path else f"lies under {probe}, which is not a folder"
        raise PlotError(f"--plots {path} {what}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PlotError(f"--plots {path}: {probe} is not writable")


def _pyplot():
    require()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fmt_bytes(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def _fmt_count(n: float) -> str:
    return f"{n:.0f}"


def _fmt_ms(n: float) -> str:
    return f"{n:,.0f} ms" if n >= 100 else f"{n:.3g} ms"


def _label_rows(result: dict) -> list[tuple[str, str, dict, dict | None]]:
    """``(group, label, original, fast)`` per plotted row: the block kinds at the first block shape,
    every MEFC shape, every whole-model scenario."""
    rows = []
    blocks = result.get("blocks") or []
    if blocks:
        first = blocks[0]["shape"]
        for r in blocks:
            if r["shape"] == first:
                shape = "x".join(map(str, r["input"]))
                rows.append((f"blocks, {r['level']} ({shape})", BLOCK_LABELS.get(r["block"], r["block"]),
                             r["original"], r["fast"]))
    for r in result.get("mefc") or []:
        rows.append(("MEFC", f"{r['level']} {'x'.join(map(str, r['input']))}", r["original"], r["fast"]))
    for r in result.get("whole_model") or []:
        kind = "inference" if r["kind"] == "inference" else "training"
        rows.append(("whole model", f"{kind} {'x'.join(map(str, r['input']))}", r["original"], r["fast"]))
    return rows


def _pair_panel(ax, rows, key: str, fmt, title: str, xlabel: str) -> bool:
    """Horizontal original/fast bar pairs for ``key`` (rows without it left out); False when empty."""
    items = [(group, label, o.get(key), (f or {}).get(key)) for group, label, o, f in rows]
    items = [it for it in items if it[2] is not None]
    if not items:
        ax.set_visible(False)
        return False
    height = 0.38
    ticks, labels, y = [], [], 0.0
    group_ys = []
    last_group = None
    values = []
    for group, label, orig, fast in items:
        if group != last_group:
            if last_group is not None:
                y += 0.6
            group_ys.append((y, group))
            last_group = group
        ax.barh(y - height / 2, orig, height, color=ORIGINAL_COLOR, label="original" if y == 0 else None)
        if fast is not None:
            ax.barh(y + height / 2, fast, height, color=FAST_COLOR, label="fast" if y == 0 else None)
            ratio = f"  {fmt(orig)} → {fmt(fast)} ({orig / fast:.1f}x)" if fast else ""
        else:
            ratio = f"  {fmt(orig)} → n/a"
        ax.text(max(orig, fast or 0), y, ratio, va="center", fontsize=8)
        values += [v for v in (orig, fast) if v]
        ticks.append(y)
        labels.append(label)
        y += 1.0
    ax.set_yticks(ticks, labels, fontsize=9)
    ax.invert_yaxis()
    lo, hi = min(values), max(values)
    if hi / lo > 20:
        ax.set_xscale("log")
        ax.set_xlim(lo / 2, hi * 30)  # room for the annotation right of the longest bar
    else:
        ax.set_xlim(0, hi * 1.9)
    for gy, group in group_ys:
        ax.annotate(group, xy=(0, gy - 0.55), xycoords=("axes fraction", "data"), fontsize=9,
                    fontweight="bold", va="bottom")
    ax.set_ylim(y - 0.3, -1.0)
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", which="major", alpha=0.3)
    from matplotlib.ticker import FuncFormatter

    tick = {_fmt_count: lambda v: f"{v:,.0f}" if v >= 1 else f"{v:g}"}.get(fmt, fmt)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: tick(v)))
    ax.legend(loc="upper right", fontsize=9)
    return True


def _save(fig, folder: str, name: str) -> str:
    path = os.path.join(folder, name)
    fig.savefig(path, dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _two_panel(plt, rows, keys, fmt, suptitle: str, xlabel: str, folder: str, name: str) -> str | None:
    n = len(rows)
    fig, axes = plt.subplots(1, 2, figsize=(15, 1.2 + 0.42 * n + 0.6), layout="constrained")
    drawn = [_pair_panel(ax, rows, key, fmt, title, xlabel) for ax, (key, title) in zip(axes, keys)]
    if not any(drawn):
        plt.close(fig)
        return None
    fig.suptitle(suptitle, fontsize=12)
    return _save(fig, folder, name)


def plot_figures(result: dict, folder: str) -> list[str]:
    """The no-GPU figures of ``result`` as PNGs in ``folder`` (created if needed); the written paths."""
    plt = _pyplot()
    os.makedirs(folder, exist_ok=True)
    rows = _label_rows(result)
    written = []
    subtitle = " (fp32; original vs fast, ratio original / fast; log scale)"
    path = _two_panel(plt, rows, (("bytes_forward", "forward"), ("bytes_forward_backward", "forward + backward")),
                      _fmt_bytes, "Bytes moved per pass" + subtitle, "bytes", folder, "bytes_moved.png")
    written += [path] if path else []
    path = _two_panel(plt, rows, (("launches_forward", "forward"),
                                  ("launches_forward_backward", "forward + backward")),
                      _fmt_count, "Kernel launches per pass" + subtitle, "launches", folder, "launches.png")
    written += [path] if path else []

    saved = [r for r in rows if r[2].get("saved_bytes") is not None]
    if saved:
        fig, ax = plt.subplots(figsize=(10, 1.2 + 0.42 * len(saved) + 0.6), layout="constrained")
        _pair_panel(ax, saved, "saved_bytes", _fmt_bytes, "Bytes saved for backward (one training forward)"
                    + subtitle, "bytes")
        written.append(_save(fig, folder, "saved_for_backward.png"))

    host = result.get("host_cost") or {}
    if host.get("rows"):
        hrows = [("host cost (eager, small CPU tensors)",
                  f"{r['scenario']} {'x'.join(map(str, r['shape']))} {r['pass']}",
                  {"ms": r["original_host_ms"]}, {"ms": r["fast_host_ms"]}) for r in host["rows"]]
        fig, ax = plt.subplots(figsize=(10, 1.2 + 0.42 * len(hrows) + 0.6), layout="constrained")
        _pair_panel(ax, hrows, "ms", _fmt_ms, "Host milliseconds per call (original vs fast)", "host ms per call")
        written.append(_save(fig, folder, "host_cost.png"))
    return written


def plot_gpu(result: dict, folder: str) -> list[str]:
    """The GPU timings of ``result`` (median ms per implementation and scenario, one panel per
    precision) as ``gpu_median_ms.png`` in ``folder``; the written paths (none without a measurement)."""
    plt = _pyplot()
    ok = [r for r in result.get("results", []) if r.get("status") == "ok" and r.get("median_ms")]
    if not ok:
        return []
    os.makedirs(folder, exist_ok=True)
    dtypes = list(dict.fromkeys(r["dtype"] for r in ok))
    scenarios = list(dict.fromkeys(r["scenario"] for r in result["results"]))
    impls = list(dict.fromkeys(r["implementation"] for r in result["results"]))
    fig, axes = plt.subplots(1, len(dtypes), figsize=(7.5 * len(dtypes), 1.5 + 0.3 * len(scenarios) * len(impls)),
                             layout="constrained", squeeze=False)
    values = [r["median_ms"] for r in ok]
    log = max(values) / min(values) > 20
    for ax, dtype in zip(axes[0], dtypes):
        by = {(r["scenario"], r["implementation"]): r for r in ok if r["dtype"] == dtype}
        height = 0.8 / len(impls)
        for s_i, scenario in enumerate(scenarios):
            for i_i, impl in enumerate(impls):
                r = by.get((scenario, impl))
                y = s_i + (i_i - (len(impls) - 1) / 2) * height
                if r is None:
                    continue
                ax.barh(y, r["median_ms"], height * 0.92, color=IMPL_COLORS.get(impl, "#777777"), label=impl)
                speed = (f" ({r['speedup_vs_original']:.2f}x)"
                         if r.get("speedup_vs_original") and impl != "original" else "")
                ax.text(r["median_ms"], y, f"  {_fmt_ms(r['median_ms'])}{speed}", va="center", fontsize=7)
        ax.set_yticks(range(len(scenarios)), scenarios)
        ax.invert_yaxis()
        if log:
            ax.set_xscale("log")
            ax.set_xlim(min(values) / 2, max(values) * 8)
        else:
            ax.set_xlim(0, max(values) * 1.35)
        from matplotlib.ticker import FuncFormatter

        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: _fmt_ms(v)))
        ax.set_xlabel("median ms per call (lower is better)")
        ax.set_title(f"{dtype}", fontsize=11)
        ax.grid(axis="x", alpha=0.3)
    legend = {}
    for ax in axes[0]:
        handles, labels = ax.get_legend_handles_labels()
        legend.update((label, handle) for label, handle in zip(labels, handles) if label not in legend)
    order = [i for i in impls if i in legend]
    fig.legend([legend[i] for i in order], order, loc="outside lower center", ncols=len(order), fontsize=9)
    env = result.get("environment", {})
    fig.suptitle(f"drsformer-fast bench on {env.get('device', 'a GPU')}: median ms per call "
                 "(speed-up over the original in eager mode)", fontsize=12)
    return [_save(fig, folder, "gpu_median_ms.png")]


def plot(result: dict, folder: str) -> list[str]:
    """:func:`plot_gpu` or :func:`plot_figures`, by ``result["mode"]``."""
    return plot_gpu(result, folder) if result.get("mode") == "gpu" else plot_figures(result, folder)
