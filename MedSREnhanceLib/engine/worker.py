"""The engine as a child process: ``python -m MedSREnhanceLib.engine.worker FOLDER``.

Slicer runs Python under PythonQt, whose main thread keeps the GIL while Qt idles, so a Python worker thread
there crawls and cannot be stopped mid-tile. Run in its own process the engine gets the CPU to itself, can be
killed at once, and a crash (segfault, out of memory) ends only the child. ``engine.process.EngineProcess`` is
the parent side.

The folder (private to one run) holds the request and receives the results:
- ``request.json`` (options for ``enhance`` and the input's grid) and ``input.npy`` (its voxels), written by the
  parent;
- ``enhanced.npy``, ``difference.npy`` and ``result.json`` (their grids, model, device, messages), written here,
  each atomically (a temporary name, then rename), ``result.json`` last.

Stdout carries one JSON object per line, flushed at once: ``{"type": "progress", done, total, elapsed, eta,
stage, message}``, ``{"type": "log", "level", "message"}`` (the library's INFO records: model, device,
precision, tile, noise estimate, fallbacks), then ``{"type": "done"}`` or ``{"type": "error", "kind",
"message", "traceback"}``. Exit code 0 done, 2 bad input, 1 any other failure.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

_T0 = time.perf_counter()  # before the heavy imports: "starting" is reported from the child's first second

REQUEST, INPUT, RESULT = "request.json", "input.npy", "result.json"
OUTPUTS: tuple[str, ...] = ("enhanced", "difference")
EXTRAS: tuple[str, ...] = ("uncertainty",)  # extras the scene shows, carried back when the request asked for them
EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2


def _emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event, default=str) + "\n")
    sys.stdout.flush()  # stdout is a file or a pipe: unflushed lines would reach the parent only at exit


class _JsonLogHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            _emit({"type": "log", "level": record.levelname.lower(), "message": record.getMessage()})
        except Exception:  # noqa: BLE001 - logging must never end the run
            self.handleError(record)


def geometry(volume: Any) -> dict[str, Any]:
    """A Volume's grid as JSON-ready lists (its voxels travel separately as .npy)."""
    import numpy as np

    return {"spacing": [float(s) for s in volume.spacing], "origin": [float(o) for o in volume.origin],
            "direction": np.asarray(volume.direction, dtype=float).tolist(),
            "metadata": {str(k): v for k, v in dict(volume.metadata).items()
                         if isinstance(v, (str, int, float, bool))}}


def save_array(folder: Path, name: str, array: Any) -> None:
    """``folder/name`` written under a temporary name and renamed, so a reader never sees half a file."""
    import numpy as np

    tmp = folder / (name + ".part")
    with open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array, dtype=np.float32))
    os.replace(tmp, folder / name)


def save_json(folder: Path, name: str, data: dict[str, Any]) -> None:
    tmp = folder / (name + ".part")
    tmp.write_text(json.dumps(data, default=str))
    os.replace(tmp, folder / name)


def load_volume(folder: Path, array_name: str, grid: dict[str, Any]) -> Any:
    import numpy as np

    from ..core.volume import Volume

    return Volume(np.load(folder / array_name), tuple(grid["spacing"]), tuple(grid["origin"]),
                  np.asarray(grid["direction"], dtype=float), dict(grid.get("metadata") or {}))


def write_request(folder: Path, volume: Any, options: dict[str, Any]) -> None:
    """What the parent writes: the input's voxels and grid, and the ``enhance`` options."""
    save_array(folder, INPUT, volume.array)
    save_json(folder, REQUEST, {"options": options, "input": geometry(volume), "parent_pid": os.getpid()})


def read_result(folder: Path) -> Any:
    """The EnhanceResult the child wrote (the parent calls this once the child said "done")."""
    from .enhance import EnhanceResult

    info = json.loads((folder / RESULT).read_text())
    volumes = {name: load_volume(folder, f"{name}.npy", info["grids"][name]) for name in OUTPUTS}
    extras = {name: load_volume(folder, f"{name}.npy", grid) for name, grid in (info.get("extras") or {}).items()}
    return EnhanceResult(volumes["enhanced"], volumes["difference"], info["model"], info["task"],
                         tuple(info["scale"]), info["device"], float(info["seconds"]), list(info["messages"]),
                         extras, precision=info.get("precision", ""))


def _progress_event(p: Any) -> dict[str, Any]:
    return {"type": "progress", "done": p.done, "total": p.total, "elapsed": time.perf_counter() - _T0,
            "eta": p.eta, "stage": getattr(p, "stage", ""), "message": getattr(p, "message", "")}


def run(folder: Path) -> int:
    """Run the request in ``folder``; returns the exit code."""
    _emit({"type": "progress", "done": 0, "total": 0, "elapsed": time.perf_counter() - _T0, "eta": None,
           "stage": "starting", "message": "starting the engine"})
    library = logging.getLogger("MedSREnhanceLib")
    library.addHandler(_JsonLogHandler())
    library.setLevel(logging.INFO)
    from ..core.errors import CancelledError, InputError

    try:
        request = json.loads((folder / REQUEST).read_text())
        volume = load_volume(folder, INPUT, request["input"])
        parent = int(request.get("parent_pid") or 0)
        options = dict(request["options"])
        threads = options.pop("threads", None)
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        from .enhance import enhance

        # An orphan (the parent crashed or was killed) stops at its next progress report instead of running on.
        def orphaned() -> bool:
            return bool(parent) and os.getppid() != parent

        result = enhance(volume, progress=lambda p: _emit(_progress_event(p)), cancel=orphaned, **options)
        for name in OUTPUTS:
            save_array(folder, f"{name}.npy", getattr(result, name).array)
        extras = {name: result.extras[name] for name in EXTRAS if name in result.extras}
        for name, vol in extras.items():
            save_array(folder, f"{name}.npy", vol.array)
        save_json(folder, RESULT, {
            "model": result.model, "task": result.task, "scale": list(result.scale), "device": result.device,
            "precision": result.precision, "seconds": result.seconds, "messages": list(result.messages),
            "grids": {name: geometry(getattr(result, name)) for name in OUTPUTS},
            "extras": {name: geometry(vol) for name, vol in extras.items()}})
    except InputError as exc:
        _emit({"type": "error", "kind": "InputError", "message": str(exc)})
        return EXIT_BAD_INPUT
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which owns the user's attention
        import traceback

        kind = "CancelledError" if isinstance(exc, CancelledError) else type(exc).__name__
        _emit({"type": "error", "kind": kind, "message": str(exc) or kind,
               "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))})
        return EXIT_FAILURE
    _emit({"type": "done"})
    return EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or not Path(args[0]).is_dir():
        sys.stderr.write("usage: python -m MedSREnhanceLib.engine.worker FOLDER (a folder with request.json)\n")
        return EXIT_BAD_INPUT
    return run(Path(args[0]))


if __name__ == "__main__":
    sys.exit(main())
