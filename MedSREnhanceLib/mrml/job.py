"""Non-blocking enhancement of a volume node (``EnhanceJob``) and the logic core the scripted module wraps."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..core.errors import CancelledError
from . import panel as helpers
from .nodes import CancelFn, ProgressFn, normalised_scale, apply_result, compute_volume, enhance_volume_node, volume_from_node


# ----------------------------------------------------------------------------------------------------------------
# Non-blocking runs and the logic core the scripted module wraps
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class JobOutcome:
    enhanced_node: Any = None
    difference_node: Any = None
    cancelled: bool = False
    error: Optional[BaseException] = None
    model: str = ""
    device: str = ""
    messages: list[str] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and not self.cancelled


class EnhanceJob:
    """One non-blocking enhancement: the engine in a worker thread, the scene touched only in ``poll()``.

    The caller polls from the thread that owns the scene (the Slicer logic uses a qt.QTimer every ~100 ms).
    ``poll()`` forwards new progress to ``progress_callback`` and, once the worker ends, builds the nodes and calls
    ``completed_callback(JobOutcome)`` exactly once. ``cancel()`` returns at once; the worker stops at the next
    tile boundary and a result that still arrives is discarded.
    """

    def __init__(self, input_node: Any, *, task: str, model: str = "auto", scale: Any = 1, device: str = "auto",
                 modality: str = "auto", tile: Optional[int] = None, precision: str = "auto",
                 enhanced_node: Any = None, difference_node: Any = None,
                 progress_callback: Optional[ProgressFn] = None,
                 completed_callback: Optional[Callable[[JobOutcome], None]] = None) -> None:
        self.input_node = input_node
        self.task = task
        self.scale = normalised_scale(task, scale)
        self.enhanced_node = enhanced_node
        self.difference_node = difference_node
        self.progress_callback = progress_callback
        self.completed_callback = completed_callback
        self.outcome: Optional[JobOutcome] = None
        volume = volume_from_node(input_node)  # copied here, in the scene thread
        opts = dict(task=task, model=model, scale=self.scale, device=device, modality=modality, tile=tile,
                    precision=precision)
        self._worker = helpers.Worker(
            lambda progress, cancel: compute_volume(volume, progress=progress, cancel=cancel, **opts))

    def start(self) -> "EnhanceJob":
        self._worker.start()
        return self

    def cancel(self) -> None:
        self._worker.cancel()

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    def poll(self) -> bool:
        """Forward progress; finish up when the worker is done. Returns True once finished."""
        if self.outcome is not None:
            return True
        progress = self._worker.new_progress()
        if progress is not None and self.progress_callback is not None and not self._worker.cancel_requested:
            self.progress_callback(progress)
        if not self._worker.done:
            return False
        result, error = self._worker.outcome()
        outcome = JobOutcome(elapsed=_elapsed(self._worker))
        if self._worker.cancel_requested or isinstance(error, CancelledError):
            outcome.cancelled = True
        elif error is not None:
            outcome.error = error
        else:
            try:
                outcome.enhanced_node, outcome.difference_node = apply_result(
                    self.input_node, result, task=self.task, scale=self.scale,
                    enhanced_node=self.enhanced_node, difference_node=self.difference_node)
                outcome.model = str(getattr(result, "model", ""))
                outcome.device = result.ran_on
                outcome.messages = list(getattr(result, "messages", []) or [])
            except Exception as exc:  # noqa: BLE001 - reported through the outcome like engine errors
                outcome.error = exc
        self.outcome = outcome
        if self.completed_callback is not None:
            self.completed_callback(outcome)
        return True

    def wait(self, timeout: Optional[float] = None, interval: float = 0.05) -> JobOutcome:
        """Poll until finished (for scripts and tests that own the scene thread)."""
        import time

        deadline = None if timeout is None else time.perf_counter() + timeout
        while not self.poll():
            if deadline is not None and time.perf_counter() > deadline:
                raise TimeoutError("enhancement did not finish in time")
            self._worker.wait(interval)
        assert self.outcome is not None
        return self.outcome


def _elapsed(worker: helpers.Worker) -> float:
    import time

    return 0.0 if worker.started_at is None else time.perf_counter() - worker.started_at


class EnhanceLogic:
    """The module logic without ScriptedLoadableModule: what ``MedSREnhanceLogic`` delegates to (and tests use)."""

    def process(self, inputVolumeNode: Any, task: str = "sr", model: str = "auto", scale: Any = 2,  # noqa: N803
                device: str = "auto", *, modality: str = "auto", tile: Optional[int] = None,
                precision: str = "auto", enhancedVolumeNode: Any = None, differenceVolumeNode: Any = None,
                progress: Optional[ProgressFn] = None, cancel: Optional[CancelFn] = None,
                uncertainty: bool = False, showUncertainty: bool = False) -> tuple[Any, ...]:  # noqa: N803
        """Blocking: returns (enhancedNode, differenceNode), or with ``uncertainty=True`` also uncertaintyNode."""
        return enhance_volume_node(inputVolumeNode, task=task, model=model, scale=scale, device=device,
                                   progress=progress, cancel=cancel, enhanced_node=enhancedVolumeNode,
                                   difference_node=differenceVolumeNode, modality=modality, tile=tile,
                                   precision=precision, uncertainty=uncertainty, show_uncertainty=showUncertainty)

    def processAsync(self, inputVolumeNode: Any, task: str = "sr", model: str = "auto", scale: Any = 2,  # noqa: N802,N803
                     device: str = "auto", *, modality: str = "auto", tile: Optional[int] = None,
                     precision: str = "auto", enhancedVolumeNode: Any = None, differenceVolumeNode: Any = None,
                     progressCallback: Optional[ProgressFn] = None,
                     completedCallback: Optional[Callable[[JobOutcome], None]] = None) -> EnhanceJob:
        """Non-blocking: starts and returns an EnhanceJob; the caller drives ``job.poll()``."""
        return EnhanceJob(inputVolumeNode, task=task, model=model, scale=scale, device=device, modality=modality,
                          tile=tile, precision=precision, enhanced_node=enhancedVolumeNode,
                          difference_node=differenceVolumeNode, progress_callback=progressCallback,
                          completed_callback=completedCallback).start()
