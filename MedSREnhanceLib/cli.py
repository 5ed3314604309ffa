"""`medsr`: the command line. Imports are lazy so `medsr --help` answers at once.

Exit codes: 0 success; 2 bad input or usage (one line on stderr, no traceback, no partial output); 1 an
unexpected failure; 130 cancelled (Ctrl-C).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Optional, Sequence

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def _error(message: str) -> None:
    sys.stderr.write(f"medsr: error: {message}\n")


def cmd_enhance(args: argparse.Namespace) -> int:
    from .engine.consistency import relative_rms
    from .engine.enhance import enhance
    from .core.io import check_writable, read_volume, write_volumes
    from .core.volume import validate

    maps = {flag: path for flag, path in (("--difference", args.difference), ("--uncertainty", args.uncertainty),
                                          ("--residual", args.residual)) if path}
    seen = {os.path.realpath(args.output): "the output"}
    for out in [args.output] + list(maps.values()):
        check_writable(out)
        if os.path.realpath(out) == os.path.realpath(args.input):
            _error(f"output {out} would overwrite the input")
            return EXIT_BAD_INPUT
    for flag, path in maps.items():
        if os.path.realpath(path) in seen:
            _error(f"{flag} {path} is the same file as {seen[os.path.realpath(path)]}")
            return EXIT_BAD_INPUT
        seen[os.path.realpath(path)] = flag
    volume = read_volume(args.input, series_uid=args.series_uid)
    validate(volume, f"input {args.input}")
    bar: Any = None

    def progress(p: Any) -> None:
        nonlocal bar
        if args.quiet:
            return
        if bar is None:  # created on the first report, so refused requests print no empty bar
            from tqdm import tqdm

            bar = tqdm(total=p.total, unit="tile", desc="enhance", file=sys.stderr, leave=False)
        bar.total = p.total
        bar.n = p.done
        bar.refresh()

    try:
        result = enhance(volume, task=args.task, model=args.model, modality=args.modality, scale=args.scale,
                         device=args.device, tile=args.tile, precision=args.precision, progress=progress,
                         uncertainty=bool(args.uncertainty), consistency=args.consistency)
    finally:
        if bar is not None:
            bar.close()
    if args.residual and "residual" not in result.extras:
        _error("no residual: the output grid does not nest with the input grid at this scale")
        return EXIT_BAD_INPUT
    named = {"--difference": result.difference, "--uncertainty": result.extras.get("uncertainty"),
             "--residual": result.extras.get("residual")}
    outputs = [(result.enhanced, args.output)] + [(named[flag], path) for flag, path in maps.items()]
    write_volumes(outputs)  # all or nothing: no enhanced volume without its requested maps
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


def cmd_models(args: argparse.Namespace) -> int:
    from .models.registry import REGISTRY, WEIGHTS_DIR

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
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    print(f"{'name':22} {'task':8} {'kind':10} {'modality':8} {'scales':18} {'size':>8}  summary")
    for r in rows:
        size = f"{r['size_bytes'] / 1e6:.2f}MB" if r["size_bytes"] else "-"
        print(f"{r['name']:22} {r['task']:8} {r['kind']:10} {r['modality']:8} {r['scales']:18} {size:>8}  "
              f"{r['summary']}")
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
        path = run_training(config, resume=args.resume, quiet=args.quiet, data_root=args.data_root)
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
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("enhance", help="enhance a volume file or DICOM series folder")
    p.add_argument("input", help=".nii/.nii.gz/.nrrd/.nhdr/.mha/.mhd file or a DICOM series folder")
    p.add_argument("output", help="output file; the format follows the extension")
    p.add_argument("--task", choices=["sr", "denoise"], default="sr")
    p.add_argument("--model", default="auto", help="model name (see `medsr models`) or auto")
    p.add_argument("--modality", choices=["auto", "mr", "ct"], default="auto")
    p.add_argument("--scale", default="1", help="S (isotropic) or SX,SY,SZ in index order (i,j,k); "
                   "e.g. 2 or 1,1,4 (through-plane along k); non-integer factors are fine")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--tile", type=int, default=None, help="tile edge in input voxels (default: from free memory)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    p.add_argument("--difference", default=None, help="also write enhanced minus input (on the output grid)")
    p.add_argument("--uncertainty", default=None,
                   help="also write the expected absolute error per voxel (output grid; learned models only)")
    p.add_argument("--residual", default=None, help="also write the input minus the output degraded back to the "
                   "input grid (SR), or the removed component (denoising)")
    p.add_argument("--consistency", action=argparse.BooleanOptionalAction, default=None,
                   help="SR: project the output so that re-degrading it reproduces the input (default: the "
                        "model's, on where it does not lower the bench scores; see `medsr models`)")
    p.add_argument("--series-uid", default=None, help="DICOM SeriesInstanceUID when a folder holds several")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=cmd_enhance)

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


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(with_bench="bench" in argv).parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="medsr: %(message)s")
    from .core.errors import CancelledError, InputError

    try:
        return args.func(args)
    except InputError as exc:
        _error(str(exc))
        return EXIT_BAD_INPUT
    except (CancelledError, KeyboardInterrupt):
        _error("cancelled")
        return EXIT_INTERRUPTED
    except MemoryError:
        _error("out of memory: try a smaller --tile")
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
