"""One case, as a worker runs it: read, enhance, write the outputs all or nothing, then the sidecar.

``process_case`` never raises for a bad volume: it returns a failed ``CaseResult`` with a one-line reason, so one
corrupt file cannot stop a cohort. It is a plain module-level function so Dask ships it by reference; learned
networks stay loaded in each worker process between cases (the engine caches them per process).
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from ..core.errors import InputError
from ..core.progress import ProgressFn
from . import sidecar
from .inputs import Case

logger = logging.getLogger(__name__)

DONE, SKIPPED, FAILED = "done", "skipped", "failed"


@dataclass
class CaseResult:
    """A row of ``medsr_batch.csv`` (input, output, status, model, seconds, message), plus the files written."""

    input: str
    output: str
    status: str  # done | skipped | failed
    model: str = ""
    seconds: float = 0.0
    message: str = ""
    outputs: list[str] = field(default_factory=list)

    def row(self) -> dict[str, str]:
        return {"input": self.input, "output": self.output, "status": self.status, "model": self.model,
                "seconds": f"{self.seconds:.2f}", "message": self.message}


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if isinstance(exc, InputError) else f"{type(exc).__name__}: {text}".rstrip(": ")


@contextlib.contextmanager
def limited_threads(threads: Optional[int], model: str) -> Iterator[None]:
    """Cap SimpleITK's (and, for models that may be learned, torch's) threads for one case; restore after, so an
    in-process batch leaves the caller's settings as they were."""
    if not threads:
        yield
        return
    import SimpleITK as sitk

    from ..models import registry

    old_sitk = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    torch: Any = None
    spec = registry.REGISTRY.get(model)
    if spec is None or spec.kind == "learned":  # "auto" may pick a learned model
        with contextlib.suppress(ImportError):
            import torch
    old_torch = torch.get_num_threads() if torch is not None else 0
    if torch is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(old_sitk)
        if torch is not None:
            torch.set_num_threads(old_torch)


def process_case(case: Case, options: dict[str, Any], input_sha: str, threads: Optional[int] = None,
                 progress: Optional[ProgressFn] = None) -> CaseResult:
    """Run one case and record it; a failure of this case is returned, not raised (Ctrl-C still propagates)."""
    from .. import __version__
    from ..core.io import read_volume, write_volumes
    from ..core.volume import validate
    from ..engine.enhance import enhance

    t0 = time.perf_counter()
    result = CaseResult(case.input, case.output, FAILED)
    try:
        if case.error:
            raise InputError(case.error)
        sidecar.clear(case)
        volume = read_volume(case.input)
        validate(volume, f"input {case.input}")
        with limited_threads(threads, options["model"]):
            out = enhance(volume, task=case.task, model=options["model"], modality=options["modality"],
                          scale=case.scale, device=options["device"], tile=options["tile"],
                          precision=options["precision"], progress=progress,
                          uncertainty=case.uncertainty is not None)
        result.model = out.model
        for path in sidecar.outputs_of(case):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        maps = ((out.difference, case.difference), (out.extras.get("uncertainty"), case.uncertainty))
        items = [(out.enhanced, case.output)] + [(vol, path) for vol, path in maps if path]
        write_volumes(items)  # all or nothing, each file renamed into place only when whole
        seconds = time.perf_counter() - t0
        sidecar.write(case, options, input_sha, out.model, seconds, out.ran_on, out.messages, __version__)
        result.status, result.seconds = DONE, seconds
        result.message = "; ".join(out.messages)
        result.outputs = sidecar.outputs_of(case)
    except MemoryError:
        result.message = "out of memory: try a smaller --tile or fewer --workers"
    except Exception as exc:  # isolate the case: record why and let the batch go on
        logger.debug("case %s failed", case.input, exc_info=True)
        result.message = one_line(exc)
    result.seconds = result.seconds or time.perf_counter() - t0
    return result
