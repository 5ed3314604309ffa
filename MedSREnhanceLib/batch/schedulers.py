"""Where cases run: in this process one after another ("none"), on a LocalCluster sized to this machine ("local"),
or on a running Dask scheduler (an address such as tcp://host:8786, or a scheduler file as dask-jobqueue and
``dask scheduler --scheduler-file`` write). Nothing here is a scheduler of its own: Dask distributed places,
retries (a task whose worker dies is resubmitted, up to ``distributed.scheduler.allowed-failures``) and balances.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from ..core.errors import CancelledError, InputError
from ..core.progress import Progress
from .case import FAILED, CaseResult, process_case
from .inputs import Case

logger = logging.getLogger(__name__)

Job = tuple[int, Case, str]  # (index in the batch, case, input sha256)
ResultFn = Callable[[int, CaseResult], None]
TilesFn = Callable[[Case, Progress], None]
CaseFn = Callable[..., CaseResult]

CONNECT_TIMEOUT = "20s"  # to reach a running scheduler (a busy login node can be slow to answer)
MIN_WORKER_BYTES = 1 << 30  # torch, SimpleITK and a model alone take a few hundred MB per worker process


def dask_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("dask", "distributed"))


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def plan_workers(n_cases: int, case_bytes: int, cores: Optional[int] = None, available: Optional[int] = None,
                 requested: Optional[int] = None) -> int:
    """Worker processes for a LocalCluster: one per core, no more than the free memory holds at ``case_bytes``
    per running case, no more than there are cases; ``requested`` (--workers) wins."""
    if requested:
        return max(1, requested)
    cores = cores or usable_cores()
    if available is None:
        import psutil  # a dependency of distributed

        available = int(psutil.virtual_memory().available)
    by_memory = available // max(case_bytes, MIN_WORKER_BYTES)
    return int(max(1, min(cores, by_memory, n_cases)))


def run_in_process(jobs: Sequence[Job], options: dict[str, Any], threads: Optional[int], on_result: ResultFn,
                   on_tiles: Optional[TilesFn] = None, case_fn: CaseFn = process_case) -> None:
    for index, case, sha in jobs:
        tiles = (lambda p, c=case: on_tiles(c, p)) if on_tiles else None
        on_result(index, case_fn(case, options, sha, threads, tiles))


@contextlib.contextmanager
def open_client(scheduler: str, n_workers: int) -> Iterator[Any]:
    """A distributed Client: on a new LocalCluster ("local", closed on exit) or connected to ``scheduler``."""
    if not dask_available():
        raise InputError("--scheduler needs dask and distributed: pip install \"MedSREnhance[batch]\" "
                         "(or use --scheduler none)")
    from distributed import Client, LocalCluster

    if scheduler == "local":
        # One thread per worker process: cases are independent, and each worker's torch/ITK already gets
        # OMP_NUM_THREADS=1 from distributed's nanny, so workers x threads never oversubscribe the cores.
        # worker-saturation 1.0: a worker holds only the case it runs, so when a case takes its worker down,
        # Dask counts that death against that case alone, not against cases merely queued there.
        import dask

        with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):
            cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                   dashboard_address=None, silence_logs=logging.ERROR)
        try:
            with Client(cluster) as client:
                yield client
        finally:
            cluster.close()
        return
    try:
        if Path(scheduler).is_file():  # a scheduler file (dask-jobqueue, `dask scheduler --scheduler-file`)
            client = Client(scheduler_file=scheduler, timeout=CONNECT_TIMEOUT)
        else:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError) as exc:
        raise InputError(f"cannot reach the Dask scheduler at {scheduler}: {' '.join(str(exc).split())}") from None
    with client:
        yield client


def run_on_dask(client: Any, jobs: Sequence[Job], options: dict[str, Any], threads: Optional[int],
                on_result: ResultFn, case_fn: CaseFn = process_case) -> None:
    """Submit every case, report each as it finishes; a case whose workers kept dying is recorded as failed."""
    from distributed import as_completed

    futures = {client.submit(case_fn, case, options, sha, threads, pure=False,
                             key=f"medsr-case-{index}-{os.urandom(4).hex()}"): (index, case)
               for index, case, sha in jobs}
    try:
        for future in as_completed(futures):
            index, case = futures[future]
            try:
                result = future.result()
            except (KeyboardInterrupt, CancelledError):
                raise
            except Exception as exc:  # KilledWorker (the case took its workers down) or a lost connection
                name = type(exc).__name__
                reason = ("its worker died while running it (killed or out of memory), also on retry"
                          if name == "KilledWorker" else f"{name}: {' '.join(str(exc).split())}")
                result = CaseResult(case.input, case.output, FAILED, message=reason)
            on_result(index, result)
    finally:
        client.cancel(list(futures))
