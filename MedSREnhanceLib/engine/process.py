"""The parent side of the engine's child process (``engine.worker``): start it, read its events, stop it.

Everything here is driven by polling from one thread and never blocks: the child's stdout goes to a file in the
run's private folder and ``read_events`` reads the lines added since the last call (a regular file read, no
pipe, no reader thread: in Slicer a Python thread would only run when the main thread's timer runs Python).
The child runs in its own process group (session), so ``terminate`` reaches it and anything it started, and
``kill`` follows after a short grace period. The folder is removed by ``cleanup`` in every outcome and, for
runs still alive when the interpreter exits, by an ``atexit`` hook.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from . import worker

logger = logging.getLogger(__name__)

FOLDER_PREFIX = "medsr-job-"
EVENTS, STDERR = "events.jsonl", "stderr.txt"
GRACE_SECONDS = 0.5  # between terminate (SIGTERM) and kill (SIGKILL): torch ignores neither, so this is plenty
LIBRARY_PARENT = str(Path(__file__).resolve().parents[2])  # the folder holding MedSREnhanceLib

_LIVE: set["EngineProcess"] = set()


class EngineProcessError(RuntimeError):
    """The engine failed in its child process; ``details`` holds its traceback or the end of its stderr."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


def child_python() -> str:
    """The interpreter for the child: Slicer's Python in Slicer, else this interpreter.

    In Slicer ``sys.executable`` is the application, not a Python; ``python-real`` is its interpreter (found on
    PATH in Slicer's environment, which the child inherits) and ``PythonSlicer`` the launcher that sets that
    environment up. The interpreter itself is preferred so the process we signal is the one doing the work.
    """
    slicer = sys.modules.get("slicer")
    if slicer is not None and getattr(slicer, "app", None) is not None:
        suffix = ".exe" if os.name == "nt" else ""
        for name in ("python-real", "PythonSlicer"):
            found = shutil.which(name) or shutil.which(name, path=os.path.dirname(sys.executable))
            if found:
                return found
        raise RuntimeError(f"Slicer's Python (python-real{suffix} or PythonSlicer{suffix}) was not found on PATH")
    return sys.executable


def signal_name(returncode: int) -> str:
    """"SIGKILL" for -9 (how subprocess reports a child ended by a signal)."""
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


# What a signal usually means for a run nobody asked to stop.
SIGNAL_CAUSES: dict[str, str] = {
    "SIGKILL": "killed (by the system when memory runs out, or from outside)",
    "SIGSEGV": "crashed (segmentation fault)",
    "SIGBUS": "crashed (bus error)",
    "SIGABRT": "aborted",
    "SIGTERM": "terminated from outside",
}


class EngineProcess:
    """One run of ``enhance`` in a child process. ``start()``, then poll ``read_events()`` and ``returncode``;
    ``load_result()`` once it exited with 0; ``cleanup()`` in every case (idempotent)."""

    def __init__(self, volume: Any, options: dict[str, Any], *, python: Optional[str] = None,
                 grace: float = GRACE_SECONDS) -> None:
        self.volume = volume
        self.options = dict(options)
        self.python = python
        self.grace = grace
        self.folder: Optional[Path] = None
        self.started_at: Optional[float] = None
        self.terminate_requested_at: Optional[float] = None
        self._proc: Optional[subprocess.Popen[bytes]] = None
        self._files: list[Any] = []
        self._offset = 0
        self._partial = b""

    # -- lifecycle ------------------------------------------------------------------------------------------------

    def start(self) -> "EngineProcess":
        self.started_at = time.perf_counter()
        self.folder = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX))
        _LIVE.add(self)
        try:
            worker.write_request(self.folder, self.volume, self.options)
            self.volume = None  # the child has its copy; do not hold a second one for the whole run
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (LIBRARY_PARENT, env.get("PYTHONPATH", "")) if p)
            stdout = open(self.folder / EVENTS, "wb")
            stderr = open(self.folder / STDERR, "wb")
            self._files = [stdout, stderr]
            kwargs: dict[str, Any] = {}
            if os.name == "nt":
                kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
            else:
                kwargs["start_new_session"] = True  # own process group: signals reach the child's own children
            self._proc = subprocess.Popen(
                [self.python or child_python(), "-m", "MedSREnhanceLib.engine.worker", str(self.folder)],
                stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, cwd=str(self.folder), env=env, **kwargs)
        except BaseException:
            self.cleanup()
            raise
        return self

    @property
    def pid(self) -> Optional[int]:
        return None if self._proc is None else self._proc.pid

    @property
    def returncode(self) -> Optional[int]:
        """None while the child runs; its exit code once it ended (negative: the signal that ended it)."""
        return None if self._proc is None else self._proc.poll()

    def terminate(self) -> None:
        """Ask the child's process group to stop (returns at once); ``step()`` kills it after the grace period."""
        if self.terminate_requested_at is None:
            self.terminate_requested_at = time.perf_counter()
        self._signal(kill=False)

    def step(self) -> None:
        """Escalate a terminate that was not obeyed within the grace period to a kill."""
        if (self.terminate_requested_at is not None and self.returncode is None
                and time.perf_counter() - self.terminate_requested_at >= self.grace):
            self._signal(kill=True)

    def _signal(self, kill: bool) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        try:
            if os.name == "nt":
                if kill:  # the whole tree: a launcher's child would otherwise survive
                    subprocess.run(["taskkill", "/T", "/F", "/PID", str(proc.pid)], capture_output=True,
                                   check=False)
                else:
                    proc.terminate()
            else:
                os.killpg(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        except (ProcessLookupError, PermissionError, OSError) as exc:
            logger.debug("signal to the engine process failed: %s", exc)

    def cleanup(self) -> None:
        """Kill the child if it still runs, reap it and remove the folder. Safe to call more than once."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._signal(kill=True)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:  # pragma: no cover - a process SIGKILL cannot end
                logger.warning("engine process %d did not end after SIGKILL", proc.pid)
        for fh in self._files:
            fh.close()
        self._files = []
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        _LIVE.discard(self)

    # -- reading --------------------------------------------------------------------------------------------------

    def read_events(self) -> list[dict[str, Any]]:
        """The events the child wrote since the last call (complete lines only; never blocks)."""
        if self.folder is None:
            return []
        try:
            with open(self.folder / EVENTS, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except OSError:
            return []
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()  # an unfinished last line waits for the next call
        events = []
        for raw in lines:
            text = raw.decode("utf-8", "replace").strip()
            if not text:
                continue
            try:
                event = json.loads(text)
            except ValueError:  # something a library printed: keep it as a message
                event = None
            events.append(event if isinstance(event, dict) else {"type": "log", "level": "info", "message": text})
        return events

    def stderr_tail(self, lines: int = 8, max_bytes: int = 4096) -> str:
        if self.folder is None:
            return ""
        try:
            with open(self.folder / STDERR, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - max_bytes))
                text = fh.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def describe_exit(self) -> str:
        """What ended a child that gave no result, for the user: the signal's usual meaning or the exit code."""
        code = self.returncode
        if code is None:
            return "the engine process is still running"
        if code < 0:
            name = signal_name(code)
            return f"the engine process was {SIGNAL_CAUSES.get(name, 'ended by a signal')} ({name})"
        return f"the engine process exited with code {code} without a result"

    def load_result(self) -> Any:
        assert self.folder is not None
        return worker.read_result(self.folder)


@atexit.register
def _cleanup_all() -> None:
    """Slicer (or the script) is exiting: no child may outlive it, no folder stay behind."""
    for process in list(_LIVE):
        process.cleanup()
