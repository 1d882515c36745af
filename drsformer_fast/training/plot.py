"""``drsformer-fast plot``: the training curves of an experiment (its ``train_log.jsonl``) as one PNG.

Top row: the training loss (``l_pix``, on a logarithmic axis when it spans a decade, with a moving
average when there are many points) and the learning rate against iterations. Below, one panel per
validation metric (PSNR, then SSIM, then any other), its best value marked and labelled with its
iteration. Where a resumed run trained some iterations again, the last record of each iteration
counts (the log is appended to). Drawn with matplotlib's object API (no pyplot, no global backend
change).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

__all__ = ["PlotError", "LOG_NAME", "DEFAULT_OUTPUT", "find_log", "read_log", "plot_training"]

LOG_NAME = "train_log.jsonl"
DEFAULT_OUTPUT = "training_curves.png"
LOSS_COLOR = "#4c72b0"
LR_COLOR = "#55a868"
VAL_COLOR = "#c44e52"
BEST_COLOR = "#dd8452"


class PlotError(ValueError):
    """The curves cannot be drawn (a missing, empty or unreadable log, matplotlib missing); one line."""


def find_log(path: str | os.PathLike) -> Path:
    """``path`` itself (a JSON-lines log) or ``path/train_log.jsonl`` (an experiment folder)."""
    p = Path(path)
    if p.is_dir():
        p = p / LOG_NAME
        if not p.is_file():
            raise PlotError(f"{path}: no {LOG_NAME} in this folder (expected an experiment folder, "
                            "experiments/<name>/)")
        return p
    if not p.exists():
        raise PlotError(f"{path}: not found")
    if not p.is_file():
        raise PlotError(f"{path}: not a file or folder")
    return p


def read_log(path: Path) -> dict[str, list[dict]]:
    """``{"train": [...], "val": [...]}``: the records of each kind by iteration, the last of each
    iteration kept. Lines that are not records (a line cut off by a crash) are skipped; a log
    without any record is a :class:`PlotError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise PlotError(f"{path}: cannot read: {reason}") from None
    by_kind: dict[str, dict[int, dict]] = {"train": {}, "val": {}}
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("kind") in by_kind and isinstance(rec.get("iter"), int):
            by_kind[rec["kind"]][rec["iter"]] = rec
    if not any(by_kind.values()):
        what = "empty" if not text.strip() else "no training records in it"
        raise PlotError(f"{path}: {what} (expected the train_log.jsonl that drsformer-fast train writes)")
    return {k: [v[i] for i in sorted(v)] for k, v in by_kind.items()}


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(r["iter"])
            ys.append(float(v))
    return xs, ys


def _metric_names(val: list[dict]) -> list[str]:
    names: list[str] = []
    for r in val:
        for k, v in r.items():
            if k not in ("kind", "iter") and isinstance(v, (int, float)) and k not in names:
                names.append(k)

    def order(name: str) -> int:
        low = name.lower()
        return 0 if "psnr" in low else 1 if "ssim" in low else 2

    return sorted(names, key=order)  # stable: the log's order within each group


def _moving_average(ys: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, y in enumerate(ys):
        total += y
        if i >= window:
            total -= ys[i - window]
        out.append(total / min(i + 1, window))
    return out


def _style(ax, title: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.ticklabel_format(axis="x", style="plain", useOffset=False)


def plot_training(log_path: Path, output: Path, title: str | None = None) -> dict:
    """Draw the curves of ``log_path`` into the PNG ``output``; returns a summary
    ``{"train": n, "val": n, "best": {metric: (value, iter)}}``."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter, MaxNLocator
    except ImportError:
        raise PlotError("drsformer-fast plot needs matplotlib: pip install 'drsformer-fast[plots]' (or pip install "
                        "matplotlib)") from None
    logs = read_log(log_path)
    train, val = logs["train"], logs["val"]
    metrics = _metric_names(val)
    rows = 1 + math.ceil(len(metrics) / 2)
    fig = Figure(figsize=(12, 4.2 * rows), layout="constrained")
    axes = fig.subplots(rows, 2, squeeze=False)
    if title is None:  # the experiment's name (its folder), or the log's own name
        title = log_path.resolve().parent.name if log_path.name == LOG_NAME else log_path.name
    fig.suptitle(f"{title}: training curves" + ("" if val else " (no validation records)"), fontsize=13)

    ax = axes[0][0]
    xs, ys = _series(train, "l_pix")
    if xs:
        many = len(xs) >= 20
        ax.plot(xs, ys, color=LOSS_COLOR, lw=1.0 if not many else 0.7, alpha=1.0 if not many else 0.35,
                marker="o" if len(xs) <= 30 else None, ms=3, label="l_pix")
        if many:
            window = max(5, len(xs) // 25)
            ax.plot(xs, _moving_average(ys, window), color=LOSS_COLOR, lw=2,
                    label=f"moving average ({window} points)")
        if min(ys) > 0 and max(ys) >= 10 * min(ys):  # a logarithmic axis where the loss spans a decade
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))  # 0.05, not 5 x 10^-2
            ax.yaxis.set_minor_formatter(FuncFormatter(
                lambda v, _: f"{v:.3g}" if f"{v:.3g}"[-1] in "25" and len(f"{v:.3g}".strip("0.")) == 1 else ""))
        ax.legend(loc="best", fontsize=9, framealpha=0.9)
    else:
        ax.text(0.5, 0.5, "no training records", ha="center", va="center", transform=ax.transAxes)
    _style(ax, "training loss (L1)", "l_pix")

    ax = axes[0][1]
    xs, ys = _series(train, "lr")
    if xs:
        ax.plot(xs, ys, color=LR_COLOR, lw=1.5, marker="o" if len(xs) <= 30 else None, ms=3)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax.set_ylim(bottom=0)
    else:
        ax.text(0.5, 0.5, "no training records", ha="center", va="center", transform=ax.transAxes)
    _style(ax, "learning rate", "lr")

    best = {}
    for n, name in enumerate(metrics):
        ax = axes[1 + n // 2][n % 2]
        xs, ys = _series(val, name)
        is_psnr = "psnr" in name.lower()
        label = name.upper() if name.lower() in ("psnr", "ssim") else name
        unit = " dB" if is_psnr else ""
        ax.plot(xs, ys, color=VAL_COLOR, lw=1.5, marker="o", ms=4, label=label)
        if xs:
            i = max(range(len(ys)), key=lambda k: (ys[k], -k))  # the first of the highest
            best[name] = (ys[i], xs[i])
            fmt = f"{ys[i]:.2f}" if is_psnr else f"{ys[i]:.4f}"
            ax.plot([xs[i]], [ys[i]], linestyle="none", marker="*", ms=16, color=BEST_COLOR, mec="black",
                    mew=0.6, zorder=5, label=f"best {fmt}{unit} at iter {xs[i]}")
            lo, hi = min(ys), max(ys)
            pad = (hi - lo) * 0.15 or (abs(hi) * 0.02 or 0.1)
            ax.set_ylim(lo - pad, hi + pad)
            ax.legend(loc="best", fontsize=9, framealpha=0.9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _style(ax, f"validation {label}", f"{label}{' (dB)' if is_psnr else ''}")
    if metrics and len(metrics) % 2:
        axes[-1][1].set_visible(False)
    for row in axes:
        for ax in row:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(output, dpi=100)
    except OSError as exc:
        raise PlotError(f"{output}: cannot write: {exc.strerror or type(exc).__name__}") from None
    return {"train": len(train), "val": len(val), "best": best}
