"""``run_batch``: check the request, expand the inputs into cases, skip what is already done, run the rest on the
chosen scheduler, and keep ``DIR/medsr_batch.csv`` up to date as cases finish.

Usage errors (no inputs, unknown model, bad scale on the command line, unreachable scheduler) raise
``InputError`` before any case runs; everything that goes wrong with one volume is that case's failure.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..core.errors import InputError
from ..core.volume import parse_scale
from ..engine.enhance import TASKS, serves
from ..models import registry
from . import schedulers, sidecar
from .case import FAILED, SKIPPED, CaseResult, one_line
from .inputs import FORMATS, Case, expand_inputs, normalise_scale, plan_cases

logger = logging.getLogger(__name__)

SUMMARY_NAME = "medsr_batch.csv"
COLUMNS = ("input", "output", "status", "model", "seconds", "message")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CaseFn = Callable[[CaseResult, int, int], None]  # (result, cases finished, cases in the batch)


def check_request(task: str, scale: str, model: str) -> None:
    """The checks ``enhance`` makes before reading a volume, made once up front for a whole batch."""
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    factors = parse_scale(scale)
    identity = all(abs(f - 1.0) < 1e-9 for f in factors)
    if task == "denoise" and not identity:
        raise InputError("denoising keeps the grid: leave --scale at 1")
    if task == "sr" and (identity or min(factors) < 1):
        raise InputError(f"super-resolution needs a scale >= 1 on every axis and > 1 on one, got {scale}")
    if model != "auto" and not serves(registry.get(model), task, factors):
        raise InputError(f"model {model!r} does not serve {TASKS[task]} at scale {scale}")


def write_summary(path: Path, results: Sequence[Optional[CaseResult]]) -> None:
    """The summary, rows in input order (finished cases only while the batch runs), replaced atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(r.row() for r in results if r is not None)
    sidecar.write_text_atomic(path, buffer.getvalue())


def _case_bytes(case: Case) -> int:
    """Memory one running case needs, from the input header: input, output, difference and their working
    copies in float32. DICOM folders and unreadable headers count as one worker's minimum."""
    import SimpleITK as sitk

    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(case.input)
        reader.ReadImageInformation()
        voxels = math.prod(reader.GetSize())
        up = math.prod(parse_scale(case.scale))
    except (RuntimeError, ValueError, InputError):
        return schedulers.MIN_WORKER_BYTES
    return int(voxels * 4 * (3 + 4 * up)) + (256 << 20)


def _prepare_out_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".medsr.", suffix=".probe", dir=out_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"cannot write to --out {out_dir}: {exc.strerror or exc}") from None


def run_batch(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    task: str = "sr",
    model: str = "auto",
    modality: str = "auto",
    scale: float | str | tuple[float, ...] = 1,
    device: str = "auto",
    tile: Optional[int] = None,
    precision: str = "auto",
    difference: bool = False,
    uncertainty: bool = False,
    fmt: str = "nii.gz",
    recursive: bool = False,
    force: bool = False,
    scheduler: str = "local",
    workers: Optional[int] = None,
    threads: Optional[int] = None,
    on_case: Optional[CaseFn] = None,
    on_tiles: Optional[schedulers.TilesFn] = None,
    case_fn: schedulers.CaseFn = schedulers.process_case,
) -> list[CaseResult]:
    """Enhance every volume ``inputs`` name into ``out_dir``; returns one ``CaseResult`` per case, in input order.

    ``scheduler``: "local" (a LocalCluster of ``workers`` processes, default sized to cores and memory), "none"
    (this process, one case after another) or a Dask scheduler address or scheduler file. ``threads`` caps
    SimpleITK/torch threads per case (LocalCluster default: 1). ``force`` redoes cases whose sidecar matches.
    ``on_case`` is called as each case finishes; ``on_tiles`` with tile progress (scheduler "none" only).
    ``case_fn`` replaces the per-case function (tests inject faults through it).
    """
    if modality not in ("auto", "mr", "ct"):
        raise InputError(f"unknown modality {modality!r}; use mr, ct or auto")
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if tile is not None and tile < 8:
        raise InputError(f"tile must be at least 8 voxels, got {tile}")
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if workers is not None and workers < 1 or threads is not None and threads < 1:
        raise InputError("--workers and --threads must be at least 1")
    if model != "auto":
        spec = registry.get(model)  # unknown names are usage errors
        if uncertainty and spec.kind == "classical":
            raise InputError(f"uncertainty is not available for classical model {spec.name}")
    scale_text = normalise_scale(scale)
    out = Path(out_dir).expanduser().resolve()
    cases = plan_cases(expand_inputs(inputs, recursive, exclude=out), out, task, scale_text, fmt, difference,
                       uncertainty)
    if any(c.task == task and c.scale == scale_text for c in cases):
        check_request(task, scale_text, model)
    cases = [c if c.error or (c.task, c.scale) == (task, scale_text) else _checked(c, model) for c in cases]
    if scheduler not in ("none", "local") and not schedulers.dask_available():
        raise InputError(f"--scheduler {scheduler} needs dask and distributed: pip install \"MedSREnhance[batch]\"")
    if scheduler == "local" and not schedulers.dask_available():
        raise InputError("--scheduler local needs dask and distributed: pip install \"MedSREnhance[batch]\" "
                         "(or use --scheduler none)")
    _prepare_out_dir(out)

    options = {"model": model, "modality": modality, "device": device, "tile": tile, "precision": precision}
    summary = out / SUMMARY_NAME
    results: list[Optional[CaseResult]] = [None] * len(cases)
    finished = 0

    def record(index: int, result: CaseResult) -> None:
        nonlocal finished
        results[index] = result
        finished += 1
        write_summary(summary, results)
        if on_case is not None:
            on_case(result, finished, len(cases))

    jobs: list[schedulers.Job] = []
    for index, case in enumerate(cases):
        t0 = time.perf_counter()
        if case.error:
            record(index, CaseResult(case.input, case.output, FAILED, message=case.error))
            continue
        try:
            sha = sidecar.checksum(case.input)
        except OSError as exc:
            record(index, CaseResult(case.input, case.output, FAILED, message=f"cannot read {case.input}: "
                                     f"{exc.strerror or one_line(exc)}"))
            continue
        current, why = (False, "--force") if force else sidecar.is_current(case, options, sha)
        if current:
            data = sidecar.read(case) or {}
            record(index, CaseResult(case.input, case.output, SKIPPED, str(data.get("model", "")),
                                     time.perf_counter() - t0, "up to date", sidecar.outputs_of(case)))
        else:
            logger.info("%s: %s", case.input, why)
            jobs.append((index, case, sha))

    if jobs and scheduler == "none":
        schedulers.run_in_process(jobs, options, threads, record, on_tiles, case_fn)
    elif jobs:
        n = plan_workers_for(jobs, workers) if scheduler == "local" else 0
        with schedulers.open_client(scheduler, n) as client:
            # One thread per LocalCluster worker unless asked otherwise; a remote cluster keeps its own setting.
            per_case = threads or (1 if scheduler == "local" else None)
            schedulers.run_on_dask(client, jobs, options, per_case, record, case_fn)
    write_summary(summary, results)
    return [r for r in results if r is not None]


def _checked(case: Case, model: str) -> Case:
    """A CSV row's own task/scale checked like the command line's; a bad row fails alone."""
    try:
        check_request(case.task, case.scale, model)
    except (InputError, ValueError) as exc:
        return dataclasses.replace(case, error=one_line(exc))
    return case


def plan_workers_for(jobs: Sequence[schedulers.Job], requested: Optional[int]) -> int:
    if requested:
        return requested
    biggest = max(_case_bytes(case) for _, case, _ in jobs[:64])  # headers only; a sample is enough
    return schedulers.plan_workers(len(jobs), biggest)
