"""``drsformer-fast train``: the original DRSformer training recipe (BasicSR options files) on the fast model.

``options`` reads and checks the options, ``data`` pairs the image folders and makes the crops,
``schedulers`` has the original's learning-rate schedules, ``trainer`` runs the loop, ``plot``
draws an experiment's training curves (``drsformer-fast plot``).
"""

from __future__ import annotations

import os
import sys

__all__ = ["add_parser", "run", "run_plot"]


def add_parser(sub) -> None:
    """The ``train`` and ``plot`` subcommands on an ``argparse`` subparsers object."""
    p = sub.add_parser(
        "train", help="train DRSformer from an options file of the original (e.g. Options/Deraining.yml)",
        description="Train with the original's options file (BasicSR schema): the fast model by default. "
                    "Outputs go to experiments/<name>/ under the working directory: models/net_g_<iter>.pth, "
                    "training_states/<iter>.state, the log and the options used. Several GPUs: "
                    "torchrun --nproc_per_node=N -m drsformer_fast.cli train OPTIONS.yml")
    p.add_argument("options", metavar="OPTIONS.yml", help="options file (the original's YAML schema)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override an option (VALUE read as YAML), e.g. --set num_gpu=0 --set train.total_iter=1000; "
                        "repeatable")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="fp32 (default), or bf16/fp16 under autocast (fp16 with a GradScaler, CUDA only)")
    p.add_argument("--compile", action="store_true", help="train the model compiled with torch.compile")
    p.add_argument("--original", action="store_true",
                   help="train the reference (original arithmetic) instead of the fast model")
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                   help="train eagerly on a GPU: by default each patch size's training step is captured in a CUDA "
                        "graph and replayed (also off with train.cuda_graphs: false, under torchrun, --compile and "
                        "--precision fp16)")
    p = sub.add_parser(
        "plot", help="draw the training curves of an experiment (loss, learning rate, validation PSNR/SSIM) as a PNG",
        description="Draw the training loss and learning rate, and the validation metrics with their best value "
                    "marked, against iterations, from the train_log.jsonl that train writes (needs matplotlib).")
    p.add_argument("log", metavar="EXPERIMENT_DIR_or_train_log.jsonl",
                   help="an experiment folder (experiments/<name>/) or its train_log.jsonl")
    p.add_argument("--output", "-o", metavar="PNG",
                   help="where to write the PNG (default: training_curves.png next to the log)")


def run_plot(args) -> int:
    """Run ``plot`` for parsed ``args``; a missing, empty or unreadable log ends with exit code 2 and one line."""
    from pathlib import Path

    from .plot import DEFAULT_OUTPUT, PlotError, find_log, plot_training

    try:
        log = find_log(args.log)
        output = Path(args.output) if args.output else log.parent / DEFAULT_OUTPUT
        summary = plot_training(log, output)
    except PlotError as exc:
        if os.environ.get("DRSFORMER_FAST_DEBUG") == "1":
            raise
        return _error(exc)
    best = ", ".join(f"best {m} {v:.4f} at iter {it}" for m, (v, it) in summary["best"].items())
    print(f"wrote {output} ({summary['train']} training and {summary['val']} validation records"
          + (f"; {best}" if best else "") + ")")
    return 0


def run(args) -> int:
    """Run ``train`` (or ``plot``) for parsed ``args``; user errors end with exit code 2 and one line on stderr."""
    if args.command == "plot":
        return run_plot(args)
    from ..checkpoint import CheckpointError
    from ..images.imageio import ImageError
    from .options import OptionsError
    from .trainer import TrainArgs, prepare, train

    targs = TrainArgs(options=args.options, overrides=tuple(args.overrides), precision=args.precision,
                      compile=args.compile, original=args.original, cuda_graphs=args.cuda_graphs)
    debug = os.environ.get("DRSFORMER_FAST_DEBUG") == "1"
    try:
        plan = prepare(targs)
    except (OptionsError, CheckpointError, ImageError, FileNotFoundError) as exc:
        if debug:
            raise
        return _error(exc)
    try:
        return train(plan)
    except (OptionsError, CheckpointError, ImageError) as exc:
        if debug:
            raise
        return _error(exc)


def _error(message) -> int:
    print(f"drsformer-fast: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2
