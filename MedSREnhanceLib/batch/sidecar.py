"""Resume and idempotence: the JSON sidecar beside each output, input checksums, and the skip decision.

A case is skipped when its sidecar records the same input checksum, the same result-affecting options, the same
weights sha256 the registry holds today, and every output it lists exists with its recorded size. Device,
scheduler, workers and threads are not part of that comparison (they change where a case runs, not what it
computes); the library version is recorded but a new version alone does not redo a cohort (changed weights do).
The sidecar is written after the outputs, so an interrupted case has none and is redone.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Optional

from ..models import registry
from .inputs import Case, split_suffix

SCHEMA = 1


def sidecar_path(output: str | os.PathLike) -> Path:
    """``x_SRx2.nii.gz`` -> ``x_SRx2.json`` (BIDS-style: the same name with .json)."""
    p = Path(output)
    return p.parent / (split_suffix(p.name)[0] + ".json")


def checksum(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a DICOM folder's file names and contents (its direct files, sorted)."""
    p = Path(path)
    digest = hashlib.sha256()
    files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            digest.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def case_options(case: Case, options: dict[str, Any]) -> dict[str, Any]:
    """The options that change a case's result (compared on resume)."""
    return {"task": case.task, "scale": case.scale, "model": options["model"], "modality": options["modality"],
            "precision": options["precision"], "tile": options["tile"], "difference": case.difference is not None,
            "uncertainty": case.uncertainty is not None}


def outputs_of(case: Case) -> list[str]:
    return [case.output] + [m for m in (case.difference, case.uncertainty) if m]


def read(case: Case) -> Optional[dict[str, Any]]:
    try:
        data = json.loads(sidecar_path(case.output).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_current(case: Case, options: dict[str, Any], input_sha: str) -> tuple[bool, str]:
    """(True, "") when the case's recorded result still stands, else (False, why it is redone)."""
    data = read(case)
    if data is None:
        return False, "no sidecar"
    if data.get("schema") != SCHEMA or data.get("input_sha256") != input_sha:
        return False, "input changed"
    if data.get("options") != case_options(case, options):
        return False, "options changed"
    spec = registry.REGISTRY.get(str(data.get("model")))
    if spec is None or (spec.sha256 or "") != (data.get("weights_sha256") or ""):
        return False, "model weights changed"
    recorded = {o.get("path"): o.get("bytes") for o in data.get("outputs", []) if isinstance(o, dict)}
    for path in outputs_of(case):
        if path not in recorded:
            return False, "outputs changed"
        try:
            if os.path.getsize(path) != recorded[path]:
                return False, f"{Path(path).name} changed"
        except OSError:
            return False, f"{Path(path).name} missing"
    return True, ""


def clear(case: Case) -> None:
    """Before redoing a case: drop its sidecar (it no longer describes the outputs being replaced) and staging
    folders a killed writer left behind (``write_volumes`` stages each file in ``.<name>.*`` beside it)."""
    sidecar_path(case.output).unlink(missing_ok=True)
    for path in outputs_of(case):
        p = Path(path)
        if p.parent.is_dir():
            for stale in p.parent.glob(f".{glob_escape(p.name)}.*"):
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def write(case: Case, options: dict[str, Any], input_sha: str, model: str, seconds: float, device: str,
          messages: list[str], version: str) -> Path:
    """Write the sidecar atomically (a temporary file renamed into place), after the outputs."""
    spec = registry.REGISTRY.get(model)
    data = {
        "schema": SCHEMA, "version": version, "input": case.input, "input_sha256": input_sha,
        "model": model, "weights_sha256": (spec.sha256 if spec else "") or "",
        "options": case_options(case, options), "device": device, "seconds": round(seconds, 3),
        "messages": messages,
        "outputs": [{"path": p, "bytes": os.path.getsize(p)} for p in outputs_of(case)],
    }
    target = sidecar_path(case.output)
    write_text_atomic(target, json.dumps(data, indent=2) + "\n")
    return target


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small text file under a temporary name and rename it into place (readers never see half of it);
    created with mode 0o666 so the user's umask applies, as for the volumes."""
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
