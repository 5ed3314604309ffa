"""Non-blocking enhancement of a volume node (``EnhanceJob``) and the logic core the scripted module wraps.

The engine runs in a child Python process (``engine.process``): in Slicer a Python thread advances only while
the main thread runs Python (PythonQt keeps the GIL while Qt idles), which made a threaded run up to 5x slower
than the blocking call and its cancel wait for a whole tile. A process runs at full speed, stops when told,
and a crash ends only the child. The scene is read in the constructor and written in ``poll()``, both on the
thread that owns it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..core.errors import InputError
from ..core.progress import Progress
from ..engine.process import EngineProcess, EngineProcessError
from . import panel as helpers
from .nodes import (CancelFn, ProgressFn, apply_result, enhance_volume_node, normalised_scale,
                    show_uncertainty_overlay, volume_from_node)

LogFn = Callable[[str], None]


@dataclass
class JobOutcome:
    enhanced_node: Any = None
    difference_node: Any = None
    uncertainty_node: Any = None  # with uncertainty=True: the expected absolute error (Inferno)
    cancelled: bool = False
    error: Optional[BaseException] = None
    model: str = ""
    device: str = ""
    messages: list[str] = field(default_factory=list)  # the engine's notes on the result (fallbacks, resampling)
    elapsed: float = 0.0
    log: list[str] = field(default_factory=list)  # everything the run reported, one timestamped line each

    @property
    def ok(self) -> bool:
        return self.error is None and not self.cancelled


class EnhanceJob:
    """One non-blocking enhancement: the engine in a child process, the scene touched only in ``poll()``.

    The caller polls from the thread that owns the scene (the Slicer logic uses a qt.QTimer every ~100 ms).
    ``poll()`` never blocks: it forwards the newest progress of each stage to ``progress_callback``, each new log
    line to ``log_callback`` and, once the child has ended, builds the nodes and calls
    ``completed_callback(JobOutcome)`` exactly once. ``cancel()`` returns at once: the child is terminated (killed
    if it has not ended within half a second) and the scene stays as it was. ``python`` overrides the child's
    interpreter (default: Slicer's Python in Slicer, else this one). ``uncertainty=True`` (learned models) adds the
    uncertainty node to the outcome, overlaid on the enhanced volume if ``show_uncertainty``; ``adapt`` is the
    seconds of self-supervised adaptation the child runs first.
    """

    def __init__(self, input_node: Any, *, task: str, model: str = "auto", scale: Any = 1, device: str = "auto",
                 modality: str = "auto", tile: Optional[int] = None, precision: str = "auto",
                 adapt: float = 0.0, uncertainty: bool = False, show_uncertainty: bool = False,
                 enhanced_node: Any = None, difference_node: Any = None, uncertainty_node: Any = None,
                 progress_callback: Optional[ProgressFn] = None,
                 completed_callback: Optional[Callable[[JobOutcome], None]] = None,
                 log_callback: Optional[LogFn] = None, python: Optional[str] = None) -> None:
        if task not in helpers.TASKS:
            raise InputError(f"unknown task {task!r}; expected one of {', '.join(helpers.TASKS)}")
        self.input_node = input_node
        self.task = task
        self.scale = normalised_scale(task, scale)
        self.enhanced_node = enhanced_node
        self.difference_node = difference_node
        self.uncertainty_node = uncertainty_node
        self.show_uncertainty = show_uncertainty
        self.progress_callback = progress_callback
        self.completed_callback = completed_callback
        self.log_callback = log_callback
        self.outcome: Optional[JobOutcome] = None
        self.log: list[str] = []
        volume = volume_from_node(input_node)  # copied here, in the scene thread
        if modality == "auto" and volume.metadata.get("modality"):
            modality = volume.metadata["modality"]  # DICOM Modality from the node, as the blocking call does
        options = dict(task=task, model=model, scale=list(self.scale), device=device, modality=modality,
                       tile=tile or None, precision=precision)
        if adapt:  # seconds of self-supervised adaptation in the child before it enhances (engine.adapt)
            options["adapt"] = float(adapt)
        if uncertainty:  # learned models only: the child refuses a classical one with an InputError
            options["uncertainty"] = True
        self._process = EngineProcess(volume, options, python=python)
        self._cancel_requested = False
        self._child_error: Optional[dict[str, Any]] = None
        self._child_done = False
        self._stage = ""

    # -- control --------------------------------------------------------------------------------------------------

    def start(self) -> "EnhanceJob":
        self._process.start()
        self._add_log(f"engine process {self._process.pid} started")
        return self

    def cancel(self) -> None:
        """Stop the run (returns at once); the next ``poll()`` calls completed_callback with cancelled=True."""
        if self.outcome is None and not self._cancel_requested:
            self._cancel_requested = True
            self._process.terminate()

    def abort(self) -> None:
        """Stop now and clean up without callbacks (module cleanup, scene close): nothing left behind."""
        self._cancel_requested = True
        self.completed_callback = None
        self._process.cleanup()
        if self.outcome is None:
            self.outcome = JobOutcome(cancelled=True, elapsed=self.elapsed, log=list(self.log))

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    @property
    def pid(self) -> Optional[int]:
        """The child's process id (None before start)."""
        return self._process.pid

    @property
    def folder(self) -> Any:
        """The run's private temporary folder (removed when the job ends)."""
        return self._process.folder

    @property
    def elapsed(self) -> float:
        started = self._process.started_at
        return 0.0 if started is None else time.perf_counter() - started

    # -- polling --------------------------------------------------------------------------------------------------

    def poll(self) -> bool:
        """Read what the child reported; finish up once it has ended. Returns True once finished."""
        if self.outcome is not None:
            return True
        returncode = self._process.returncode  # read before the events, so no event written before exit is missed
        reports = self._read_events()
        if self._cancel_requested:
            if returncode is None:
                self._process.step()
                return False
            self._finish(JobOutcome(cancelled=True))
            return True
        if self.progress_callback is not None:
            for report in reports:
                self.progress_callback(report)
        if returncode is None:
            return False
        self._finish(self._ended_outcome())
        return True

    def wait(self, timeout: Optional[float] = None, interval: float = 0.05) -> JobOutcome:
        """Poll until finished (for scripts and tests that own the scene thread)."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        while not self.poll():
            if deadline is not None and time.perf_counter() > deadline:
                raise TimeoutError("enhancement did not finish in time")
            time.sleep(interval)
        assert self.outcome is not None
        return self.outcome

    def _read_events(self) -> list[Progress]:
        """Handle the child's new events; return the newest progress of each stage they passed through, in order
        (a poll that spans the end of inference still shows its last unit before the next stage)."""
        reports: list[Progress] = []
        for event in self._process.read_events():
            kind = event.get("type")
            if kind == "progress":
                report = Progress(int(event.get("done") or 0), int(event.get("total") or 0), self.elapsed,
                                  event.get("eta"), str(event.get("message") or ""), str(event.get("stage") or ""))
                if reports and reports[-1].stage == report.stage:
                    reports[-1] = report
                else:
                    reports.append(report)
                if report.stage != self._stage:  # stage changes go to the log; every unit would flood it
                    self._stage = report.stage
                    self._add_log(report.message or report.stage)
            elif kind == "log":
                self._add_log(str(event.get("message", "")))
            elif kind == "error":
                self._child_error = event
            elif kind == "done":
                self._child_done = True
        return reports

    def _add_log(self, text: str) -> None:
        line = helpers.format_log_line(self.elapsed, text)
        self.log.append(line)
        if self.log_callback is not None:
            self.log_callback(line)

    def _ended_outcome(self) -> JobOutcome:
        outcome = JobOutcome()
        error = self._child_error
        if error is not None:
            if error.get("kind") == "InputError":
                outcome.error = InputError(str(error.get("message", "")))
            elif error.get("kind") == "CancelledError":
                outcome.cancelled = True
            else:
                outcome.error = EngineProcessError(f"{error.get('kind')}: {error.get('message')}",
                                                   str(error.get("traceback") or self._process.stderr_tail()))
            return outcome
        if not self._child_done or self._process.returncode != 0:
            tail = self._process.stderr_tail()
            message = self._process.describe_exit()
            outcome.error = EngineProcessError(message + (f"; last lines of its stderr:\n{tail}" if tail else ""),
                                               tail)
            return outcome
        try:
            result = self._process.load_result()
            nodes = apply_result(self.input_node, result, task=self.task, scale=self.scale,
                                 enhanced_node=self.enhanced_node, difference_node=self.difference_node,
                                 uncertainty_node=self.uncertainty_node)
            outcome.enhanced_node, outcome.difference_node = nodes[:2]
            if len(nodes) > 2:
                outcome.uncertainty_node = nodes[2]
                if self.show_uncertainty:
                    show_uncertainty_overlay(nodes[0], nodes[2])
            outcome.model = str(result.model)
            outcome.device = result.ran_on
            outcome.messages = list(result.messages)
        except Exception as exc:  # noqa: BLE001 - reported through the outcome like engine errors
            outcome.error = exc
        return outcome

    def _finish(self, outcome: JobOutcome) -> None:
        self._process.cleanup()  # the child is reaped and the folder removed before anyone hears of the end
        outcome.elapsed = self.elapsed
        if outcome.cancelled:
            self._add_log("cancelled")
        elif outcome.error is not None:
            self._add_log(f"failed: {str(outcome.error).splitlines()[0] if str(outcome.error) else outcome.error!r}")
        else:
            self._add_log(f"done: {outcome.model} on {outcome.device}")
        outcome.log = list(self.log)
        self.outcome = outcome
        if self.completed_callback is not None:
            self.completed_callback(outcome)


class EnhanceLogic:
    """The module logic without ScriptedLoadableModule: what ``MedSREnhanceLogic`` delegates to (and tests use)."""

    def process(self, inputVolumeNode: Any, task: str = "sr", model: str = "auto", scale: Any = 2,  # noqa: N803
                device: str = "auto", *, modality: str = "auto", tile: Optional[int] = None,
                precision: str = "auto", enhancedVolumeNode: Any = None, differenceVolumeNode: Any = None,
                progress: Optional[ProgressFn] = None, cancel: Optional[CancelFn] = None,
                uncertainty: bool = False, showUncertainty: bool = False,  # noqa: N803
                adapt: float = 0.0) -> tuple[Any, ...]:
        """Blocking: returns (enhancedNode, differenceNode), or with ``uncertainty=True`` also uncertaintyNode.
        ``adapt``: seconds of self-supervised adaptation to the input first (0 = off)."""
        return enhance_volume_node(inputVolumeNode, task=task, model=model, scale=scale, device=device,
                                   progress=progress, cancel=cancel, enhanced_node=enhancedVolumeNode,
                                   difference_node=differenceVolumeNode, modality=modality, tile=tile,
                                   precision=precision, uncertainty=uncertainty, show_uncertainty=showUncertainty,
                                   adapt=adapt)

    def processAsync(self, inputVolumeNode: Any, task: str = "sr", model: str = "auto", scale: Any = 2,  # noqa: N802,N803
                     device: str = "auto", *, modality: str = "auto", tile: Optional[int] = None,
                     precision: str = "auto", enhancedVolumeNode: Any = None, differenceVolumeNode: Any = None,
                     progressCallback: Optional[ProgressFn] = None,
                     completedCallback: Optional[Callable[[JobOutcome], None]] = None,
                     logCallback: Optional[LogFn] = None, adapt: float = 0.0,
                     uncertainty: bool = False, showUncertainty: bool = False) -> EnhanceJob:  # noqa: N803
        """Non-blocking: starts the engine process and returns its EnhanceJob; the caller drives ``job.poll()``."""
        return EnhanceJob(inputVolumeNode, task=task, model=model, scale=scale, device=device, modality=modality,
                          tile=tile, precision=precision, adapt=adapt, uncertainty=uncertainty,
                          show_uncertainty=showUncertainty, enhanced_node=enhancedVolumeNode,
                          difference_node=differenceVolumeNode, progress_callback=progressCallback,
                          completed_callback=completedCallback, log_callback=logCallback).start()
