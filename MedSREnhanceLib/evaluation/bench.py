"""`medsr bench`: the evaluation harness of GUIDE section 3.

For every (case, volume): crop the ground truth, degrade it with a physical model (``simulate``; seeded, parameters
recorded), run the learned models and EVERY classical baseline of the task through ``enhance`` (denoisers tuned on
the ground truth by a grid search: the strongest honest version of each), resample each output onto the ground-
truth grid by physical coordinates, and score it (``metrics``). Writes results.md, results.json and one PNG per
(case, volume). Per-volume numbers only: a mean hides the volume a model breaks on.

Cases are named, and the number in the name is the parameter, so extra scales and levels need no code:
  mr-sr-x{S}             MR isotropic SR: k-space truncation by S on every axis, enhanced at scale S
  mr-throughplane-x{S}   MR through-plane SR: Gaussian slice profile FWHM = S slices along k, every S-th slice
  mr-denoise-{P}         MR denoising: Rician noise, sigma = P % of the foreground's 99th percentile
  mr-motion-{M}          MR motion: two rigid movements of up to M degrees and M mm at random times of a k-space-
                         simulated scan, phase encoding along a random axis (simulate.motion); the reference is
                         the still volume, baselines are the tuned filters and the corrupted input itself
  mr-motion-torchio-{M}  MR motion from an independent simulator, TorchIO's RandomMotion(M degrees, M mm, two
                         movements; evaluation.torchio_motion; needs the `bench` extra): what our models never train on
  ct-lowdose[-{N}]       CT denoising: projection-domain low dose, N photons per ray (default --photons);
                         the reference is the noise-free reconstruction of the same pipeline
  ct-sr-x{S}             CT in-plane SR: Gaussian PSF (FWHM = LR spacing) then sampling by S on i and j
  ct-throughplane-x{S}[-{A}]  CT thick slices: Gaussian slice profile FWHM = S voxels along axis A (i, j or k;
                         default j, a thin axis of the 3 mm-slice CTs here), every S-th slice, enhanced along A

Usage: ``python -m MedSREnhanceLib.bench ../shared/data/MANIFEST.json --ids mr_gd,lung_ct_pat_1 --out DIR``
(``medsr bench`` takes the same arguments).
"""
from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..models import registry
from .cases import (
    DEFAULT_CASES,
    DEFAULT_ELECTRONIC_NOISE,
    DEFAULT_PHOTONS,
    BenchSettings,
    find_volumes,
    parse_case,
)
from .report import markdown
from .runner import run_bench


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `medsr bench` (also `python -m MedSREnhanceLib.bench`)."""
    parser.add_argument("inputs", nargs="+", help="volume files, folders of volumes, or a MANIFEST.json")
    parser.add_argument("--ids", default=None, help="comma-separated ids (manifest ids or file stems) to keep")
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES),
                        help="comma-separated cases: mr-sr-x<S>, mr-throughplane-x<S>, mr-denoise-<percent>, mr-motion-<M>, "
                             "ct-lowdose[-<photons>], ct-throughplane-x<S>[-i|-j|-k], ct-sr-x<S> (default: %(default)s)")
    parser.add_argument("--models", default="auto",
                        help="learned models: auto (the one `medsr enhance --model auto` picks for each case), all "
                             "(every learned model that serves it), none, or comma-separated names")
    parser.add_argument("--modality", default="auto", choices=("auto", "mr", "ct"),
                        help="modality of plain files (a manifest states it)")
    parser.add_argument("--out", default="benchmarks/results", help="output folder (default: %(default)s)")
    parser.add_argument("--crop", type=int, default=128,
                        help="edge of the central block cropped from each ground truth; 0 = whole volume")
    parser.add_argument("--tune-block", type=int, default=64,
                        help="edge of the central block NLM and diffusion are tuned on (default: %(default)s)")
    parser.add_argument("--photons", type=float, default=DEFAULT_PHOTONS, help="ct-lowdose photons per ray")
    parser.add_argument("--electronic-noise", type=float, default=DEFAULT_ELECTRONIC_NOISE,
                        help="ct-lowdose electronic noise std in counts (default: %(default)s)")
    parser.add_argument("--n-angles", type=int, default=None, help="ct-lowdose projection angles (default: Nyquist)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="device for learned models (default: %(default)s)")
    parser.add_argument("--ensemble", type=int, default=None,
                        help="flip-ensemble members of the learned models (default: each model's own)")
    parser.add_argument("--adapt", type=float, default=0.0, metavar="SECONDS",
                        help="also run each learned model adapted to each input for SECONDS (enhance --adapt), "
                             "judged as its own row")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch and SimpleITK")
    parser.add_argument("--no-png", action="store_true", help="skip the PNG figures")
    parser.add_argument("--cache", default=None,
                        help="folder to keep degraded inputs and classical results in; a later run with identical "
                             "inputs, grids and baseline code reuses them (hash-checked) and says so")
    parser.add_argument("--quiet", action="store_true")


def _command_line() -> str:
    argv = list(sys.argv)
    prog = ["medsr"] if Path(argv[0]).name.startswith("medsr") else ["python", "-m", "MedSREnhanceLib.bench"]
    return shlex.join(prog + argv[1:])


def run_from_args(args: argparse.Namespace) -> int:
    """Run the bench from parsed arguments; prints the summary table. Returns an exit code."""
    import SimpleITK as sitk

    from ..core.errors import InputError

    if not args.quiet:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("bench: %(message)s"))
        package_logger = logging.getLogger(__package__)  # the runner's, cases' and baselines' loggers
        package_logger.addHandler(handler)
        package_logger.setLevel(logging.INFO)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, args.threads))
    ids = [i for i in args.ids.split(",") if i] if args.ids else None
    models: Sequence[str] | str = args.models if args.models in ("auto", "all", "none") else \
        [m for m in args.models.split(",") if m]
    try:
        cases = tuple(c for c in args.cases.split(",") if c)
        for c in cases:
            if parse_case(c).degradation == "torchio_motion":
                from .torchio_motion import require_torchio

                require_torchio(c)
        volumes = find_volumes(args.inputs, ids, args.modality)
        if not isinstance(models, str):
            for m in models:
                registry.get(m)
    except (ValueError, FileNotFoundError, InputError) as exc:
        sys.stderr.write(f"medsr bench: error: {exc}\n")
        return 2
    if models != "none" and any(registry.LEARNED):
        try:
            import torch

            torch.set_num_threads(max(1, args.threads))
        except ImportError:
            pass
    settings = BenchSettings(cases=cases, models=models, crop=args.crop or None, tune_block=args.tune_block,
                             seed=args.seed, photons=args.photons, electronic_noise=args.electronic_noise,
                             n_angles=args.n_angles, device=args.device, png=not args.no_png, cache=args.cache,
                             command=_command_line(), extra={"threads": args.threads, "ensemble": args.ensemble,
                                                         "adapt": args.adapt})
    report = run_bench(volumes, args.out, settings)
    if not args.quiet:
        text = markdown(report)
        start = text.find("## Summary")
        end = text.find("\n## ", start + 1)
        print(text[start:end if end > 0 else None].rstrip())
        print(f"wrote {Path(args.out) / 'results.md'} and results.json")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m MedSREnhanceLib.bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
