"""`medsr`: the command line. Imports are lazy so `medsr --help` answers at once.

Exit codes: 0 success; 2 bad input or usage (one line on stderr, no traceback, no partial output); 1 an
unexpected failure; 130 interrupted by SIGINT (Ctrl-C), 143 by SIGTERM (the same one line, staging removed).
Library log records and Python warnings are held and shown after a success (at once with ``-v``), so a refusal
stays one line.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
import warnings
from typing import Any, Iterator, Optional, Sequence

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def _error(message: str) -> None:
    sys.stderr.write(f"medsr: error: {message}\n")


def _duration(seconds: float) -> str:
    m, s = divmod(max(0, int(round(seconds))), 60)
    return f"{m}:{s:02d}"


def cmd_enhance(args: argparse.Namespace) -> int:
    from .engine.consistency import relative_rms
    from .engine.enhance import enhance
    from .core.io import check_writable, read_volume, write_volumes
    from .core.volume import validate

    maps = {flag: path for flag, path in (("--difference", args.difference), ("--uncertainty", args.uncertainty),
                                          ("--residual", args.residual)) if path}
    seen = {os.path.realpath(args.output): "the output"}
    if args.adapt_save:
        if not args.adapt:
            _error("--adapt-save needs --adapt SECONDS (there are no adapted weights to save)")
            return EXIT_BAD_INPUT
        folder = os.path.dirname(os.path.abspath(args.adapt_save))
        if not args.adapt_save.endswith(".pt") or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            _error(f"cannot write --adapt-save {args.adapt_save}: it needs a .pt name in a writable folder")
            return EXIT_BAD_INPUT
    for out in [args.output] + list(maps.values()):
        check_writable(out)  # the exact file names (and a .nhdr/.mhd data file), before any work
        if os.path.realpath(out) == os.path.realpath(args.input):
            _error(f"output {out} would overwrite the input")
            return EXIT_BAD_INPUT
    for flag, path in maps.items():
        if os.path.realpath(path) in seen:
            _error(f"{flag} {path} is the same file as {seen[os.path.realpath(path)]}")
            return EXIT_BAD_INPUT
        seen[os.path.realpath(path)] = flag
    t_read = time.perf_counter()
    volume = read_volume(args.input, series_uid=args.series_uid)
    validate(volume, f"input {args.input}")
    t_read = time.perf_counter() - t_read
    bar: Any = None

    def progress(p: Any) -> None:
        nonlocal bar
        if args.quiet:
            return
        if bar is None:  # created on the first report (within a second or two: "loading"), so refused requests
            from tqdm import tqdm  # print no empty bar

            bar = tqdm(total=None, unit="step", file=sys.stderr, leave=False, dynamic_ncols=True,
                       desc=p.stage or "enhance", bar_format="{desc} [{elapsed}{postfix}]")
        # The engine's ETA comes from the work done since inference began (tqdm's own rate would count the
        # model loading and the jumps between reports).
        bar.bar_format = ("{desc}: {percentage:3.0f}%|{bar}| {n}/{total} [{elapsed}{postfix}]" if p.total
                          else "{desc} [{elapsed}{postfix}]")
        bar.set_description_str(p.stage or "enhance", refresh=False)
        bar.total = p.total or None
        bar.n = p.done
        notes = ([] if p.eta is None or not p.total else [f"about {_duration(p.eta)} left"]) + \
            ([p.message] if p.message else [])
        bar.set_postfix_str(", ".join(notes), refresh=False)
        bar.refresh()

    try:
        result = enhance(volume, task=args.task, model=args.model, modality=args.modality, scale=args.scale,
                         device=args.device, tile=args.tile, precision=args.precision, progress=progress,
                         dtype=args.dtype, force=args.force, uncertainty=bool(args.uncertainty),
                         consistency=args.consistency, ensemble=args.ensemble, adapt=args.adapt,
                         keep_adapted=bool(args.adapt_save))
    finally:
        if bar is not None:
            bar.close()
    if args.residual and "residual" not in result.extras:
        _error("no residual: the output grid does not nest with the input grid at this scale")
        return EXIT_BAD_INPUT
    named = {"--difference": result.difference, "--uncertainty": result.extras.get("uncertainty"),
             "--residual": result.extras.get("residual")}
    outputs = [(result.enhanced, args.output, result.dtype)] + [(named[flag], path) for flag, path in maps.items()]
    t_write = time.perf_counter()
    write_volumes(outputs)  # all or nothing: no enhanced volume without its requested maps
    if args.adapt_save and result.adapted_weights is not None:
        import torch

        torch.save(result.adapted_weights, args.adapt_save)
        result.messages.append(f"adapted weights of {result.model} saved to {args.adapt_save}")
    elif args.adapt_save:
        result.messages.append("--adapt-save: nothing saved, the adaptation kept the bundled weights")
    t_write = time.perf_counter() - t_write
    if args.timings:  # where the time went (issue 16): the file stages here, the engine's own stages
        stages = {"read": t_read, **result.timings, "write": t_write}
        sys.stderr.write("medsr: seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()) + "\n")
    if not args.quiet:
        for message in result.messages:
            sys.stderr.write(f"medsr: {message}\n")
        if "residual" in result.extras:
            rms = relative_rms(result.extras["residual"], volume)
            what = "the output degraded back" if result.task == "sr" else "the output"
            sys.stderr.write(f"medsr: residual (input minus {what}) RMS {100 * rms:.3f} % of the input's "
                             "intensity range\n")
        size = "x".join(str(n) for n in result.enhanced.size)
        spacing = "x".join(f"{s:.4g}" for s in result.enhanced.spacing)
        sys.stderr.write(f"medsr: {result.model} on {result.ran_on}: {args.output} ({size} voxels, "
                         f"{spacing} mm) in {result.seconds:.1f} s\n")
    return EXIT_OK


def cmd_batch(args: argparse.Namespace) -> int:
    from .batch import SUMMARY_NAME, run_batch
    from .batch.schedulers import dask_available

    scheduler = args.scheduler
    if scheduler is None:  # local when dask is installed, else this process (said once, unless --quiet)
        scheduler = "local" if dask_available() else "none"
        if scheduler == "none" and not args.quiet:
            sys.stderr.write("medsr: dask is not installed (pip install \"MedSREnhance[batch]\"): running the "
                             "cases one after another in this process\n")
    if scheduler != "none" and dask_available() and not args.verbose:
        import distributed  # noqa: F401  (importing it sets its loggers to INFO: quieten them afterwards)

        logging.getLogger("distributed").setLevel(logging.ERROR)  # worker starts and stops; the summary suffices
    bar: Any = None
    counts = {"done": 0, "skipped": 0, "failed": 0}

    def on_case(result: Any, finished: int, total: int) -> None:
        nonlocal bar
        counts[result.status] += 1
        if bar is None and not args.quiet:  # created on the first case, so usage errors print no empty bar
            from tqdm import tqdm

            bar = tqdm(total=total, unit="case", desc="batch", file=sys.stderr)
        if bar is not None:
            bar.total = total
            bar.n = finished
            bar.set_postfix(counts, refresh=False)
            bar.refresh()

    def on_tiles(case: Any, p: Any) -> None:
        if bar is not None and p.total > 1:
            bar.set_postfix_str(f"{os.path.basename(case.input)}: tile {p.done}/{p.total}")

    t0 = time.perf_counter()
    try:
        results = run_batch(args.inputs, args.out, task=args.task, model=args.model, modality=args.modality,
                            scale=args.scale, device=args.device, tile=args.tile, precision=args.precision,
                            difference=args.difference, uncertainty=args.uncertainty, fmt=args.format,
                            recursive=args.recursive, force=args.force, scheduler=scheduler,
                            workers=args.workers, threads=args.threads, on_case=on_case, on_tiles=on_tiles)
    finally:
        if bar is not None:
            bar.close()
    failed = [r for r in results if r.status == "failed"]
    if not args.quiet:
        for r in failed:
            sys.stderr.write(f"medsr: failed: {r.input}: {r.message}\n")
        sys.stderr.write(f"medsr: {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed "
                         f"in {time.perf_counter() - t0:.1f} s; summary in "
                         f"{os.path.join(args.out, SUMMARY_NAME)}\n")
    return EXIT_FAILURE if failed else EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    from .models.registry import REGISTRY, WEIGHTS_DIR, measured

    rows = []
    for spec in REGISTRY.values():
        card = spec.card_data()
        size = (WEIGHTS_DIR / spec.weights).stat().st_size if spec.weights and (WEIGHTS_DIR / spec.weights).exists() else 0
        if spec.scale_mode == "isotropic":
            scales = ",".join(f"x{s:g}" for s in spec.scales)
        elif spec.scale_mode == "axis":
            scales = f"one axis x{spec.scale_min:g}-x{spec.scale_max:g}"
        elif spec.scale_mode == "any":
            scales = "any"
        else:
            scales = "-"
        rows.append({
            "name": spec.name, "task": spec.task, "kind": spec.kind, "modality": ",".join(spec.modalities),
            "scales": scales, "size_bytes": size, "summary": spec.summary,
            "training_data": card.get("training", {}).get("volumes", []), "metrics": card.get("metrics", {}),
            "measured": measured(card),
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    print(f"{'name':22} {'task':8} {'kind':10} {'modality':8} {'scales':18} {'size':>8}  summary")
    for r in rows:
        size = f"{r['size_bytes'] / 1e6:.2f}MB" if r["size_bytes"] else "-"
        print(f"{r['name']:22} {r['task']:8} {r['kind']:10} {r['modality']:8} {r['scales']:18} {size:>8}  "
              f"{r['summary']}")
        if r["measured"] != "-":
            print(f"{'':22} measured (foreground PSNR gain over the best tuned classical baseline, held-out volumes): {r['measured']}")
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    import platform

    import numpy
    import SimpleITK

    from . import __version__

    lines = [f"MedSREnhance {__version__}", f"python {platform.python_version()} ({sys.executable})",
             f"numpy {numpy.__version__}", f"SimpleITK {SimpleITK.Version.VersionString()}"]
    try:
        import torch

        from .engine.inference import choose_device

        lines.append(f"torch {torch.__version__} (CUDA build: {torch.version.cuda or 'none'})")
        lines.append(f"threads: {torch.get_num_threads()} of {os.cpu_count()} CPUs")
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            lines.append(f"cuda:{i} {p.name} ({p.total_memory / 2**30:.1f} GiB)")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            lines.append("mps: available")
        lines.append(f"device auto -> {choose_device('auto')}")
    except ImportError:
        lines.append("torch: not installed (learned models unavailable; classical models work)")
    print("\n".join(lines))
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from .training.loop import run_training

    for config in args.config:  # in order: a staged model's later configs init_from the earlier ones' weights
        path = run_training(config, resume=args.resume, quiet=args.quiet, data_root=args.data_root,
                            leave_out_group=args.leave_out, max_minutes=args.max_minutes, out_dir=args.out_dir)
        if not args.quiet:
            sys.stderr.write(f"medsr: weights and card written to {path}\n")
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    from .evaluation import bench

    return int(bench.run_from_args(args))


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    summary = run_demo(args.out, quiet=args.quiet)
    print(summary)
    return EXIT_OK


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("MedSREnhance")
    except PackageNotFoundError:  # a source checkout that is not installed
        from . import __version__

        return __version__


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (like every other refusal), exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        _error(f"{message} (see `{self.prog} --help`)")
        raise SystemExit(EXIT_BAD_INPUT)


def build_parser(with_bench: bool = True) -> argparse.ArgumentParser:
    """``with_bench=False`` skips importing the harness (numpy, scipy, scikit-image) for other commands."""
    parser = _Parser(prog="medsr", description="Deep-learning super-resolution and denoising "
                                     "of CT and MR volumes.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the engine does")
    parser.add_argument("--version", action="version", version=f"medsr {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("enhance", help="enhance a volume file or DICOM series folder")
    p.add_argument("input", help=".nii/.nii.gz/.nrrd/.nhdr/.mha/.mhd file or a DICOM series folder")
    p.add_argument("output", help="output file; the format follows the extension")
    p.add_argument("--task", choices=["sr", "denoise", "motion"], default="sr",
                   help="sr: super-resolution; denoise; motion: MR motion-artifact reduction (default: %(default)s)")
    p.add_argument("--model", default="auto", help="model name (see `medsr models`) or auto")
    p.add_argument("--modality", choices=["auto", "mr", "ct"], default="auto")
    p.add_argument("--scale", default="1", help="S (isotropic) or SX,SY,SZ in index order (i,j,k); "
                   "e.g. 2 or 1,1,4 (through-plane along k); non-integer factors are fine")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--tile", type=int, default=None, help="tile edge in input voxels (default: from free memory)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    p.add_argument("--ensemble", type=int, default=None, help="flip-ensemble members of a learned model, 1-8 "
                   "(default: the model's own, 8); each member is one more full pass: 2 is about 4x faster than 8")
    p.add_argument("--difference", default=None, help="also write enhanced minus input (on the output grid)")
    p.add_argument("--uncertainty", default=None,
                   help="also write the expected absolute error per voxel (output grid; learned models only)")
    p.add_argument("--residual", default=None, help="also write the input minus the output degraded back to the "
                   "input grid (SR), or the removed component (denoising)")
    p.add_argument("--consistency", action=argparse.BooleanOptionalAction, default=None,
                   help="SR: project the output so that re-degrading it reproduces the input (default: the "
                        "model's, on where it does not lower the bench scores; see `medsr models`)")
    p.add_argument("--adapt", type=float, default=0.0, metavar="SECONDS",
                   help="SR: first fine-tune the learned model on pairs made from this input for SECONDS "
                        "(through-plane: its in-plane slices, SMORE; isotropic: the input degraded again, ZSSR); "
                        "the adapted weights are dropped afterwards unless --adapt-save")
    p.add_argument("--adapt-save", default=None, metavar="PATH", help="keep the adapted weights (.pt state dict)")
    p.add_argument("--series-uid", default=None, help="DICOM SeriesInstanceUID when a folder holds several")
    p.add_argument("--dtype", choices=["float32", "keep"], default="float32",
                   help="voxel type of the enhanced output: float32 (default; enhancement creates values between "
                   "the input's levels) or keep (the input's type: rounded, clipped to its range with a message)")
    p.add_argument("--force", action="store_true", help="enhance an input that looks like a label map")
    p.add_argument("--timings", action="store_true",
                   help="print the seconds of each stage (read, normalise, network, ..., write), even with --quiet")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=cmd_enhance)

    p = sub.add_parser("batch", help="enhance many volumes (files, folders, globs, a CSV) into a folder, "
                       "resumably, on Dask or in this process")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="volume files, folders (volumes and DICOM series "
                   "folders), globs, or a CSV with an 'input' column (optional output, task, scale columns)")
    p.add_argument("--out", required=True, help="output folder (created); holds medsr_batch.csv")
    p.add_argument("--task", choices=["sr", "denoise"], default="sr")
    p.add_argument("--model", default="auto", help="model name (see `medsr models`) or auto")
    p.add_argument("--modality", choices=["auto", "mr", "ct"], default="auto")
    p.add_argument("--scale", default="1", help="S or SX,SY,SZ in index order (i,j,k), as for enhance")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps (on each worker)")
    p.add_argument("--tile", type=int, default=None, help="tile edge in input voxels (default: from free memory)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    p.add_argument("--difference", action="store_true", help="also write <name>_..._difference maps")
    p.add_argument("--uncertainty", action="store_true", help="also write <name>_..._uncertainty maps (expected "
                   "absolute error per voxel; learned models only)")
    p.add_argument("--format", choices=["nii.gz", "nii", "nrrd", "mha"], default="nii.gz", help="output format")
    p.add_argument("--recursive", action="store_true", help="search folder INPUTs at any depth")
    p.add_argument("--force", action="store_true", help="redo cases whose sidecar says they are up to date")
    p.add_argument("--scheduler", default=None, help="local (a LocalCluster; the default when dask is "
                   "installed), none (this process, one case at a time), or a Dask scheduler address "
                   "(tcp://host:8786) or scheduler file")
    p.add_argument("--workers", type=int, default=None, help="LocalCluster worker processes (default: from "
                   "cores and free memory)")
    p.add_argument("--threads", type=int, default=None, help="threads per case (LocalCluster default: 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary line")
    p.set_defaults(func=cmd_batch)

    p = sub.add_parser("models", help="list bundled models")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("info", help="versions, devices and threads")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("train", help="train a model from a TOML config (several: run in the order given)")
    p.add_argument("config", nargs="+")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--data-root", default="", help="folder with MANIFEST.json and the volumes (default: the "
                   "config's data_root, ../shared/data from the repository root)")
    p.add_argument("--leave-out", default="", metavar="GROUP",
                   help="leave-one-source-out: train without the volumes of this source group of "
                   "configs/data_sources.toml; the model is written to its run folder as NAME-without-GROUP")
    p.add_argument("--max-minutes", type=float, default=0.0, help="wall-clock budget (default: the config's)")
    p.add_argument("--out-dir", default="", help="write the weights and card here (default: the config's out_dir, "
                   "else the package's weights folder)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("bench", help="benchmark models against tuned classical baselines")
    if with_bench:
        from .evaluation import bench

        bench.add_arguments(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("demo", help="degrade a sample MR volume, enhance it, write volumes and a comparison PNG")
    p.add_argument("--out", default="medsr_demo", help="output folder (default: ./medsr_demo)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)
    return parser


class _Signalled(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised in the main thread: unwinds like Ctrl-C (staging removed by ``finally``)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_signal(signum: int, frame: Any) -> None:
    raise _Signalled(signum)


@contextlib.contextmanager
def _signals_as_exceptions() -> Iterator[None]:
    """SIGTERM handled like SIGINT for the command's duration (handlers restored: tests call ``main`` in-process)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


class _HeldLog(logging.Handler):
    """Keeps log records (and Python warnings) until the command ends: shown after a success, dropped after a
    refusal, whose one line says what matters."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(" ".join(self.format(record).split()))  # ITK and warnings text: one line each


def _show_warning(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    logging.getLogger("py.warnings").warning("%s: %s", category.__name__, message)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(with_bench="bench" in argv).parse_args(argv)
    held = None if args.verbose else _HeldLog()
    root = logging.getLogger()
    if held is not None:
        held.setFormatter(logging.Formatter("medsr: %(message)s"))
        root.addHandler(held)
        root.setLevel(logging.WARNING)
    else:
        logging.basicConfig(level=logging.INFO, format="medsr: %(message)s")
    from .core.errors import CancelledError, InputError

    code = EXIT_FAILURE
    try:
        with _signals_as_exceptions(), warnings.catch_warnings():
            warnings.showwarning = _show_warning
            code = args.func(args)
            sys.stdout.flush()
    except InputError as exc:
        _error(str(exc))
        code = EXIT_BAD_INPUT
    except _Signalled as exc:
        _error(f"interrupted by {signal.Signals(exc.signum).name}; nothing was written")
        code = 128 + exc.signum
    except (CancelledError, KeyboardInterrupt):
        _error("cancelled")
        code = EXIT_INTERRUPTED
    except MemoryError:
        _error("out of memory: try a smaller --tile")
        code = EXIT_FAILURE
    except BrokenPipeError:
        # The reader went away (`medsr models --json | head`): no traceback, and none at exit either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_OK
    finally:
        if held is not None:
            root.removeHandler(held)
            if code == EXIT_OK:
                for line in held.lines:
                    sys.stderr.write(line + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
