"""``drsformer-fast`` command line.

    drsformer-fast selfcheck      every fused kernel against the reference at small shapes
    drsformer-fast bench          benchmarks with an NVIDIA GPU; without one, the self-check and
                                  device-independent figures (bytes saved, launches, bytes moved)
    drsformer-fast derain         derain images with a checkpoint of the original DRSformer
    drsformer-fast eval           PSNR/SSIM (Y channel) of a checkpoint on a folder with targets
    drsformer-fast score          PSNR/SSIM of existing results against targets, as the paper's
                                  MATLAB scripts (or BasicSR) compute them; no model, no GPU
    drsformer-fast train          train from an options file of the original (drsformer_fast.training)
    drsformer-fast plot           training curves of an experiment (its train_log.jsonl) as a PNG

``python -m drsformer_fast`` is the same command.

``derain`` and ``eval`` run the model with the fused kernels on a GPU and plain PyTorch on the CPU
(the library dispatches; they never choose Triton's interpreter). Their user errors (a missing or
incompatible checkpoint, an unreadable image, bad settings) end with exit code 2 and a one-line
message; ``DRSFORMER_FAST_DEBUG=1`` shows the traceback instead. Every input, target and output path
is checked before the model loads. ``--skip-errors`` skips a failing image instead (a "skipped"
line, a closing "N written, M skipped" line, exit code 1); ``derain --skip-existing`` leaves out the
outputs that exist. Ctrl-C ends with one line saying what was kept and exit code 130. Output
folders are created with the first image written (a run that writes nothing leaves none), PNGs and
eval's ``--json`` (after every image) are replaced atomically. Progress goes to stderr
(``drsformer_fast.progress``: a bar on a terminal, a line per image in a log; ``--quiet``: none);
stdout holds only the results.

Without an NVIDIA GPU the self-check runs the Triton kernels in Triton's CPU interpreter: this is
the only place besides the tests that chooses the interpreter, and it does so before Triton is
imported (re-running itself in a fresh process if Triton was already loaded).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _ensure_interpreter(argv: list[str]) -> int | None:
    """Make the kernels run in Triton's interpreter; returns an exit code if we re-ran ourselves."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return None
    if "triton" not in sys.modules:
        os.environ["TRITON_INTERPRET"] = "1"
        return None
    env = dict(os.environ, TRITON_INTERPRET="1")
    return subprocess.call([sys.executable, "-m", "drsformer_fast.cli", *argv], env=env)


def _selfcheck(args, argv) -> int:
    import torch

    device = torch.device("cuda") if (_has_cuda() and not args.interpreter) else torch.device("cpu")
    if device.type == "cpu":
        code = _ensure_interpreter(argv)
        if code is not None:
            return code
    from ._dispatch import kernel_path
    from .perf import selfcheck

    path = kernel_path(device)
    print(f"drsformer-fast self-check on {device} ({path} path)")
    if device.type == "cpu":
        print("No NVIDIA GPU in use: kernels run in Triton's CPU interpreter. Timings need an NVIDIA GPU.")
    dtypes = [torch.float32, torch.float16] + ([torch.bfloat16] if device.type == "cuda" else [])
    from .progress import Progress

    with Progress(selfcheck.count_cases(dtypes), "self-check", unit="case") as bar:
        rows = selfcheck.run(device, dtypes, progress=bar)
    print(selfcheck.format_rows(rows))
    bad = [r for r in rows if not r.ok]
    print(f"{len(rows) - len(bad)}/{len(rows)} checks within bounds")
    return 1 if bad else 0


def _bench(args, argv) -> int:
    """``bench``: timings with an NVIDIA GPU; otherwise the self-check and the device-independent figures."""
    from .perf import bench

    for path, option in ((args.json, "--json"), (args.markdown, "--markdown")):
        try:
            bench.check_output_path(path, option)
        except bench.BenchError as exc:
            return _error(exc)
    if args.plots:
        from .perf import plots

        try:
            plots.require()
            plots.check_folder(args.plots)
        except plots.PlotError as exc:
            return _error(exc)
    progress = bench.progress_to_stderr
    if _has_cuda() and not args.interpreter:
        scenarios = args.shapes or bench.parse_scenarios(bench.GPU_SCENARIOS)
        args.impl = args.impl or bench.parse_implementations(bench.DEFAULT_IMPLEMENTATIONS)
        if args.no_cuda_graphs:
            args.impl = [i for i in args.impl if not i.endswith("-graphed")]
            if not args.impl:
                return _error("--no-cuda-graphs leaves no implementation to measure")
        print(f"drsformer-fast bench on {_cuda_name()}: {len(scenarios) * len(args.dtype) * len(args.impl)} "
              f"measurements ({', '.join(s.name for s in scenarios)}; {', '.join(args.dtype)}; "
              f"{', '.join(args.impl)})", file=sys.stderr)
        on_result = (lambda result: bench.write_json(result, args.json)) if args.json else None
        result = bench.run_gpu(scenarios, args.dtype, args.impl, variant=args.variant, repeats=args.repeats,
                               warmup=args.warmup, seed=args.seed, progress=progress, on_result=on_result)
        text = bench.format_gpu_markdown(result)
        failed = any(r.get("status") == "error" for r in result["results"])
    else:
        code = _ensure_interpreter(argv)
        if code is not None:
            return code
        from ._dispatch import kernel_path

        scenarios = args.shapes or bench.parse_scenarios(bench.FIGURE_SCENARIOS)
        print(f"drsformer-fast bench without a GPU ({kernel_path('cpu')} path)")
        print(bench.TIMING_NOTE)
        print("Kernels run in Triton's CPU interpreter for the self-check; the figures use fake tensors "
              "(real shapes, no compute).", flush=True)
        result = bench.run_figures(scenarios, variant=args.variant, selfcheck=not args.skip_selfcheck,
                                   progress=progress)
        text = bench.format_figures_markdown(result)
        if args.host_cost_repeats:
            from .perf import hostcost

            progress(f"host cost: both models, eager, {args.host_cost_repeats} timed call(s) per scenario "
                     "(Triton's launch path on a no-op CUDA driver; a fresh process)")
            result["host_cost"] = hostcost.run_in_subprocess(["--repeats", str(args.host_cost_repeats)])
            text += "\n\n" + hostcost.format_markdown(result["host_cost"])
        if "selfcheck" in result:
            check = result["selfcheck"]
            print(check["table"])
            print(f"{check['passed']}/{check['total']} checks within bounds\n")
        failed = "selfcheck" in result and result["selfcheck"]["passed"] < result["selfcheck"]["total"]
        if args.json:
            bench.write_json(result, args.json)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(text + "\n")
    if args.plots:
        written = plots.plot(result, args.plots)
        print(f"plots: {', '.join(written) if written else 'none (no measurement to draw)'}", file=sys.stderr)
    return 1 if failed else 0


def _cuda_name() -> str:
    import torch

    return torch.cuda.get_device_name()


# --------------------------------------------------------------------------------------------
# derain / eval (the logic lives in inference.py, evaluation.py, imageio.py, checkpoint.py)
# --------------------------------------------------------------------------------------------


def _error(message: str, code: int = 2) -> int:
    print(f"drsformer-fast: error: {' '.join(str(message).split())}", file=sys.stderr)
    return code


def _user_errors(run):
    """Run ``run()``; user errors become one line on stderr and exit code 2 (1 for running out of memory)."""
    import torch

    from .checkpoint import CheckpointError
    from .images.imageio import ImageError
    from .images.inference import InferenceError

    if os.environ.get("DRSFORMER_FAST_DEBUG") == "1":
        return run()
    try:
        return run()
    except (CheckpointError, ImageError, InferenceError, OSError, _Refused) as exc:
        return _error(exc)
    except torch.cuda.OutOfMemoryError:
        return _error("out of memory; try --tile 512 (or smaller) or --precision fp16", code=1)


def _load(args, device, *, fast: bool = True):
    from .checkpoint import load_checkpoint

    return load_checkpoint(args.weights, map_location=device, use_ema=args.use_ema, fast=fast)


def _describe(model, device, args) -> str:
    cls = f"{type(model).__module__}.{type(model).__qualname__}"
    tiling = f"tiles of {args.tile} overlapping {args.tile_overlap}" if args.tile else "whole images"
    graphs = ", CUDA graphs" if _use_graphs(device, args) else ""
    return f"{cls} {model.config} on {device}, {args.precision}, {tiling}{graphs}"


def _use_graphs(device, args) -> bool:
    return device.type == "cuda" and not args.no_cuda_graphs


def _runner(model, device, args):
    """What derain and eval call: the model through CUDA graphs on a GPU (``drsformer_fast.graphs``),
    else the model itself."""
    if not _use_graphs(device, args):
        return model
    from .graphs import graphed

    return graphed(model)


class _Batch:
    """What a derain or eval run did to its images: the failures it skipped (up front or while
    running), the outputs that already existed, and the folders it may have to remove."""

    def __init__(self, args, output: str | None):
        self.args = args
        self.failed: list[tuple[str, str]] = []  # (image name, why)
        self.existing: list[str] = []
        self.output = output
        self.created = _missing_folders(output) if output else []

    def problems(self, items, check) -> list:
        """``items`` whose ``check(item)`` passes. A failing one is an error line each (raised as
        :class:`_Refused` once all are checked), or with ``--skip-errors`` a "skipped" line."""
        from .images.imageio import ImageError

        kept, errors = [], []
        for item in items:
            try:
                check(item)
            except (ImageError, OSError) as exc:
                errors.append((item, exc))
            else:
                kept.append(item)
        if errors and not self.args.skip_errors:
            for _, exc in errors[:-1]:
                _error(exc)
            raise _Refused(errors[-1][1])
        for item, exc in errors:
            self.skip(item[0], exc)
        return kept

    def skip(self, src, exc, progress=None) -> None:
        why = _one_line(exc)
        self.failed.append((src.name, why))
        (progress.write if progress is not None else _stderr)(f"skipped {src.name}: {why}")

    def summary(self, done: int, verb: str) -> int:
        """The closing line on stderr when anything was skipped; the exit code (1 when an image failed)."""
        skipped = len(self.failed) + len(self.existing)
        if skipped:
            parts = [f"{len(self.failed)} failed"] if self.failed else []
            parts += [f"{len(self.existing)} already existed"] if self.existing else []
            _stderr(f"{done} {verb}, {skipped} skipped ({', '.join(parts)})")
        return 1 if self.failed else 0

    def cleanup(self) -> None:
        """Remove the output folders this run created and left empty."""
        for folder in reversed(self.created):
            try:
                folder.rmdir()
            except OSError:
                break


class _Refused(Exception):
    """Up-front checks failed (the other problems are already printed); the message is the last."""


def _per_image_errors() -> tuple:
    """The errors ``--skip-errors`` skips an image for: unreadable or unusable images, failed
    writes, running out of GPU memory."""
    import torch

    from .images.imageio import ImageError
    from .images.inference import InferenceError

    return (ImageError, InferenceError, OSError, torch.cuda.OutOfMemoryError)


def _one_line(exc: BaseException) -> str:
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "out of memory; try --tile 512 (or smaller) or --precision fp16"
    return " ".join(str(exc).split())


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _missing_folders(path: str) -> list:
    """The folders of ``path`` (itself and its parents) that do not exist yet, outermost first."""
    from pathlib import Path

    missing = []
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing[::-1]


def _check_output_dir(path: str, option: str = "--output") -> None:
    """Refuse an output folder that is a file, or that cannot be created or written, before any work."""
    from pathlib import Path

    folder = Path(path).absolute()
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{option} {path} is a file; give a folder")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"{option} {path} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == folder else f"cannot be created: {existing} is not writable"
        raise PermissionError(f"{option} {path} {what}")


def _check_destination(dst) -> None:
    if dst.is_dir():
        raise IsADirectoryError(f"{dst} is a folder: the output image cannot be written there")


def _interrupted(done: int, total: int, kept: str) -> int:
    _stderr(f"interrupted after {done} of {total} images; {kept}")
    return 130


def _derain(args) -> int:
    from .images import inference
    from .images.imageio import find_images, probe_image
    from .images.inference import check_precision, check_tiling, plan_outputs, resolve_device
    from .progress import Progress

    check_tiling(args.tile, args.tile_overlap)
    pairs = plan_outputs(find_images(args.inputs), args.output)
    _check_output_dir(args.output)
    batch = _Batch(args, args.output)
    if args.skip_existing:
        batch.existing = [src.name for src, dst in pairs if dst.is_file()]
        pairs = [(src, dst) for src, dst in pairs if not dst.is_file()]

    def check(pair):
        _check_destination(pair[1])
        probe_image(pair[0])

    todo = batch.problems(pairs, check)
    device = resolve_device(args.device)
    check_precision(device, args.precision)
    written: list = []
    if todo:
        model = _load(args, device)
        if not args.quiet:
            _stderr(f"drsformer-fast derain: {len(todo)} image(s); {_describe(model, device, args)}")
        runner = _runner(model, device, args)
        errors = _per_image_errors()
        progress = Progress(len(todo), "derain", quiet=args.quiet)
        try:
            with progress:
                for src, dst in todo:
                    progress.begin(src.name)
                    start = time.perf_counter()
                    try:
                        inference.derain_image(runner, src, dst, tile=args.tile, tile_overlap=args.tile_overlap,
                                               precision=args.precision, on_tile=progress.tile)
                    except errors as exc:
                        if not args.skip_errors:
                            raise
                        batch.skip(src, exc, progress)
                        progress.step(f"{src}: skipped")
                        continue
                    written.append(dst)
                    progress.step(f"{src} -> {dst}", time.perf_counter() - start)
        except KeyboardInterrupt:
            return _interrupted(progress.done, len(todo), f"{len(written)} written to {args.output}")
        finally:
            batch.cleanup()
    print(f"wrote {len(written)} image(s) to {args.output}")
    return batch.summary(len(written), "written")


def _eval(args) -> int:
    from .checkpoint import _model_class
    from .images import evaluation
    from .images.evaluation import check_pair, format_report, format_row, match_targets, summarize
    from .images.imageio import ImageError, find_images
    from .images.inference import check_precision, check_tiling, plan_outputs, resolve_device
    from .progress import Progress

    _check_json_path(args.json)
    check_tiling(args.tile, args.tile_overlap)
    if not os.path.isdir(args.input):
        raise ImageError(f"{args.input}: input folder not found")
    pairs = match_targets(find_images([args.input]), args.target)
    outputs = {}
    if args.output:
        outputs = dict(plan_outputs([src for src, _ in pairs], args.output))
        _check_output_dir(args.output)
    batch = _Batch(args, args.output)

    def check(pair):
        if pair[0] in outputs:
            _check_destination(outputs[pair[0]])
        check_pair(pair[0], pair[1], args.protocol)

    todo = batch.problems(pairs, check)
    device = resolve_device(args.device)
    check_precision(device, args.precision)
    rows: list = []
    if not todo:
        _write_eval_json(args, None, None, None, rows, batch, partial=False)
        return batch.summary(0, "scored")
    model = _load(args, device)
    reference = _load(args, device, fast=False) if args.compare_reference else None
    if not args.quiet:
        _stderr(f"drsformer-fast eval: {_describe(model, device, args)}, protocol {args.protocol}")
    if reference is not None and _model_class(True) is _model_class(False):
        _stderr("note: the fast model is not available in this build, so the parity report compares the "
                "reference with itself")
    runner = _runner(model, device, args)
    errors = _per_image_errors()
    progress = Progress(len(todo), "eval", quiet=args.quiet)
    try:
        with progress:
            for src, tgt in todo:
                progress.begin(src.name)
                try:
                    row = evaluation.evaluate_pair(
                        runner, src, tgt, tile=args.tile, tile_overlap=args.tile_overlap, precision=args.precision,
                        reference_model=reference, protocol=args.protocol, output=outputs.get(src),
                        note=lambda text: progress.write(f"note: {text}"), on_tile=progress.tile)
                except errors as exc:
                    if not args.skip_errors:
                        raise
                    batch.skip(src, exc, progress)
                    progress.step(f"{src.name}: skipped")
                    continue
                rows.append(row)
                _write_eval_json(args, model, device, reference, rows, batch, partial=(progress.done + 1, len(todo)))
                progress.step(format_row(row), row["seconds"])
    except KeyboardInterrupt:
        kept = [f"{len(rows)} scored"]
        kept += [f"report so far in {args.json}"] if args.json and rows else []
        kept += [f"{len(rows)} written to {args.output}"] if args.output else []
        return _interrupted(progress.done, len(todo), "; ".join(kept))
    finally:
        batch.cleanup()
    report = summarize(rows, args.protocol, parity=reference is not None)
    if rows:
        print(format_report(report))
        if reference is not None:
            print(f"parity: max |fast - reference (fp32)| = {report['parity']['max_abs_diff']:.3e} over "
                  f"{report['count']} image(s) (outputs in [0, 1])")
    _write_eval_json(args, model, device, reference, rows, batch, partial=False)
    return batch.summary(len(rows), "scored")


def _write_eval_json(args, model, device, reference, rows, batch, *, partial) -> None:
    """eval's ``--json`` report, replaced atomically: after every image (``partial``: (done, total),
    recorded as ``"partial"``), and complete at the end. ``"skipped"`` lists the skipped images."""
    if not args.json:
        return
    from .images.evaluation import json_ready, summarize
    from .images.metrics import PROTOCOLS

    full = {
        "weights": str(args.weights),
        "model": f"{type(model).__module__}.{type(model).__qualname__}" if model is not None else None,
        "config": model.config if model is not None else None,
        "device": str(device) if device is not None else None,
        "precision": args.precision,
        "tile": args.tile,
        "tile_overlap": args.tile_overlap,
        "protocol": args.protocol,
        "metrics": f"PSNR and SSIM on the Y channel of the 8-bit output: {PROTOCOLS[args.protocol]}",
        **summarize(rows, args.protocol, parity=reference is not None),
    }
    if reference is not None:
        full["parity"]["reference_model"] = f"{type(reference).__module__}.{type(reference).__qualname__}"
        full["parity"]["reference_precision"] = "fp32"
    if batch.failed:
        full["skipped"] = [{"name": name, "error": why} for name, why in batch.failed]
    if partial:
        full["partial"] = {"done": partial[0], "total": partial[1]}
    _write_json_atomic(args.json, json_ready(full))


def _write_json_atomic(path: str, obj) -> None:
    """``obj`` as JSON at ``path`` through a temporary file renamed over it (never half-written)."""
    import json

    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _check_json_path(path: str | None) -> None:
    """Refuse a ``--json`` path that cannot be written as a file, before any work is done."""
    if not path:
        return
    if os.path.isdir(path):
        raise IsADirectoryError(f"--json {path} is a folder; give a file path")
    if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise FileNotFoundError(f"folder of --json {path} does not exist")


def _note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr)


def _score(args) -> int:
    """``score``: existing results against targets; numpy and Pillow only (no torch, no model). On a
    terminal a progress bar appears when scoring takes more than a second (not with ``--quiet``)."""
    from .images.imageio import ImageError
    from .images.scoring import format_score_report, json_ready, score_folders
    from .progress import Progress

    bar: list = []

    def progress(i, n, row):
        if not bar:
            bar.append(Progress(n, "score", quiet=args.quiet, delay=1.0, lines=False))
            bar[0].done = i - 1
        bar[0].step(row["name"])

    def note(text):
        (bar[0].write if bar else _stderr)(f"note: {text}")

    try:
        _check_json_path(args.json)
        try:
            report = score_folders(args.results, args.targets, protocol=args.protocol, pair_by=args.pair_by,
                                   progress=progress, note=note)
        finally:
            if bar:
                bar[0].close()
        print(format_score_report(report))
        if args.json:
            _write_json_atomic(args.json, json_ready(report))
    except (ImageError, OSError) as exc:
        if os.environ.get("DRSFORMER_FAST_DEBUG") == "1":
            raise
        return _error(exc)
    return 0


def _add_batch_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--skip-errors", action="store_true",
                   help="skip an image that cannot be read, run or written (a 'skipped' line says why) and go on; "
                        "exit code 1 if any was skipped. Default: stop at the first (exit code 2), keeping what "
                        "was written")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr (errors still print)")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", required=True, metavar="CKPT", help="checkpoint of the original DRSformer (.pth)")
    p.add_argument("--tile", type=int, default=None, metavar="N",
                   help="process in N x N tiles (a multiple of 8) to bound memory; default: whole images")
    p.add_argument("--tile-overlap", type=int, default=32, metavar="N", help="overlap of the tiles (default 32)")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32",
                   help="fp16/bf16 run under autocast (fp16 needs CUDA); default fp32")
    p.add_argument("--device", default="auto", metavar="{cpu,cuda,auto}", help="default: cuda if available")
    p.add_argument("--use-ema", action="store_true", help="load the checkpoint's 'params_ema' (EMA) weights")
    p.add_argument("--no-cuda-graphs", action="store_true",
                   help="on a GPU, run the model eagerly instead of replaying CUDA graphs (one per image or "
                        "tile size: the first image of a size runs eagerly, later ones replay)")


def _bench_type(parser_name: str):
    def parse(text: str):
        from .perf import bench

        try:
            return getattr(bench, parser_name)(text)
        except bench.BenchError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = parser_name.replace("parse_", "")
    return parse


def _int_at_least(minimum: int):
    """An argparse type: an integer >= ``minimum``, with a one-line error otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def _version() -> str:
    """The installed distribution's version; without one (a source checkout on ``sys.path``), the
    package's ``__version__``, a copy of the version in pyproject.toml."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("drsformer-fast")
    except PackageNotFoundError:
        from . import __version__

        return __version__


# the keys of drsformer_fast.images.metrics.PROTOCOLS (kept here so that building the parser imports no numpy)
PROTOCOL_CHOICES = ("matlab-rain200", "matlab-did", "basicsr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="drsformer-fast", description="Fused Triton kernels for DRSformer.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("selfcheck", help="check every fused kernel against the reference at small shapes")
    p.add_argument("--interpreter", action="store_true", help="use Triton's CPU interpreter even with a GPU")
    p = sub.add_parser(
        "bench", help="benchmark the original vs the fast model (NVIDIA GPU); without one, the self-check "
                      "and device-independent figures",
        description="With an NVIDIA GPU: whole-model inference and training-step timings, peak memory and "
                    "output differences, original (eager, torch.compile) vs fast (eager, torch.compile). "
                    "Without one: the kernel self-check in Triton's interpreter, then bytes saved for "
                    "backward, kernel launches and bytes moved per block shape and for the whole model.")
    p.add_argument("--interpreter", action="store_true",
                   help="take the no-GPU path (self-check + device-independent figures) even with a GPU")
    p.add_argument("--shapes", type=_bench_type("parse_scenarios"), default=None, metavar="LIST",
                   help="scenarios, comma-separated: infer<SIZE>, infer<B>x<SIZE>, train<B>x<SIZE> "
                        "(default: infer256,infer512,train4x128 on a GPU; infer256,train2x128,train4x128 without)")
    p.add_argument("--dtype", type=_bench_type("parse_dtypes"), default="fp32,bf16", metavar="LIST",
                   help="GPU timings: fp32,bf16 (bf16 under torch.autocast); default both. The figures are fp32")
    p.add_argument("--impl", type=_bench_type("parse_implementations"), default=None, metavar="LIST",
                   help="GPU timings: which of original, original-compiled, original-graphed, "
                        "original-reduce-overhead, fast, fast-compiled, fast-graphed, fast-reduce-overhead "
                        "(-graphed: CUDA graphs, inference only; -reduce-overhead: torch.compile's mode of that "
                        "name). Default: original, original-compiled, fast, fast-compiled, fast-graphed")
    p.add_argument("--no-cuda-graphs", action="store_true", help="GPU timings: leave out the -graphed implementations")
    p.add_argument("--variant", choices=["with-mefc", "without-mefc"], default="with-mefc",
                   help="default DRSformer with MEFC (Rain200H/DID/DDN) or without (Rain200L/SPA)")
    p.add_argument("--repeats", type=_int_at_least(1), default=20, metavar="N", help="timed calls (median; default 20)")
    p.add_argument("--warmup", type=_int_at_least(0), default=5, metavar="N",
                   help="untimed calls first (compilation, autotuning; default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs (default 0)")
    p.add_argument("--skip-selfcheck", action="store_true", help="no-GPU path: figures only")
    p.add_argument("--host-cost-repeats", type=_int_at_least(0), default=10, metavar="N",
                   help="no-GPU path: timed calls per model and scenario of the host-cost measurement "
                        "(drsformer_fast.perf.hostcost; default 10, 0 leaves it out)")
    p.add_argument("--json", metavar="PATH", help="write the full result as JSON (on a GPU: after every measurement)")
    p.add_argument("--plots", metavar="DIR",
                   help="draw PNGs into DIR (created if needed; needs matplotlib: the 'plots' extra): without a "
                        "GPU bytes moved, launches, bytes saved for backward and host ms, original vs fast; "
                        "with one the median ms per implementation and scenario")
    p.add_argument("--markdown", metavar="PATH", help="write the result table(s) as markdown")
    p = sub.add_parser("derain", help="derain images (files or folders) with a checkpoint; writes PNGs")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders (png, jpg, jpeg, bmp)")
    p.add_argument("--output", "-o", required=True, metavar="DIR",
                   help="folder for the results (<stem>.png), created when the first image is written")
    p.add_argument("--skip-existing", action="store_true",
                   help="leave out the images whose output file already exists")
    _add_batch_options(p)
    _add_run_options(p)
    p = sub.add_parser("eval", help="PSNR/SSIM (Y channel) of a checkpoint on rainy images against clean targets")
    p.add_argument("--input", required=True, metavar="DIR", help="folder of rainy images")
    p.add_argument("--target", required=True, metavar="DIR", help="folder of clean images with the same names")
    p.add_argument("--compare-reference", action="store_true",
                   help="also run the reference model and report the largest difference from it")
    p.add_argument("--json", metavar="PATH",
                   help="write the full report as JSON (replaced after every image; \"partial\" until the end)")
    p.add_argument("--output", "-o", metavar="DIR", default=None,
                   help="also keep the derained images in DIR (<stem>.png, as derain writes them)")
    _add_batch_options(p)
    p.add_argument("--protocol", choices=list(PROTOCOL_CHOICES), default="matlab-rain200",
                   help="how PSNR/SSIM are computed, as for score: the paper's MATLAB scripts, matlab-rain200 "
                        "(default; Rain200L/H, SPA-Data) or matlab-did (DID-Data, DDN-Data), or BasicSR's Python "
                        "metrics (basicsr)")
    _add_run_options(p)
    p = sub.add_parser(
        "score", help="PSNR/SSIM of existing result images against targets, as the paper's MATLAB scripts "
                      "compute them (no model, no GPU)",
        description="Scores the images of RESULTS against those of TARGETS under a protocol: the paper's "
                    "evaluate_PSNR_SSIM.m (matlab-rain200: Rain200L, Rain200H, SPA-Data), its statistic.m "
                    "(matlab-did: DID-Data, DDN-Data), or BasicSR's Python metrics (basicsr). Prints a table "
                    "per image and the mean. RESULTS and TARGETS may be one folder holding <n>_DR and <n>_GT "
                    "images, as the DID script reads them.")
    p.add_argument("results", metavar="RESULTS", help="folder of derained results (png, jpg, jpeg, bmp)")
    p.add_argument("targets", metavar="TARGETS", help="folder of clean targets")
    p.add_argument("--protocol", choices=list(PROTOCOL_CHOICES), default="matlab-rain200",
                   help="default matlab-rain200: the script behind three of the paper's five columns")
    p.add_argument("--pair-by", choices=["name", "order"], default="name",
                   help="name: same stem, a suffix like _DR/_GT dropped (default); order: sorted as MATLAB's dir "
                        "lists them (.jpg then .png, by character code), as evaluate_PSNR_SSIM.m pairs")
    p.add_argument("--json", metavar="PATH", help="write {protocol, images: [{name, psnr, ssim}], mean} as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar (errors still print)")
    from .training import add_parser as add_train_parser

    add_train_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.command == "selfcheck":
        return _selfcheck(args, argv)
    if args.command == "bench":
        return _bench(args, argv)
    try:
        if args.command == "derain":
            return _user_errors(lambda: _derain(args))
        if args.command == "eval":
            return _user_errors(lambda: _eval(args))
        if args.command == "score":
            return _score(args)
    except KeyboardInterrupt:
        _stderr(f"drsformer-fast {args.command}: interrupted")
        return 130
    if args.command in ("train", "plot"):
        from .training import run as run_train

        return run_train(args)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
