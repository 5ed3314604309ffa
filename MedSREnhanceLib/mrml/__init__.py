"""The Slicer side: the MRML adapter (``nodes``), non-blocking jobs (``job``) and the Qt-free panel helpers (``panel``).

``MedSREnhanceLib.mrml.enhance_volume_node`` and ``MedSREnhanceLib.mrml.EnhanceJob`` are the documented console API.
They are resolved on first use (PEP 562) because ``nodes`` needs Slicer's MRML (Slicer or slicer-core) while
``panel`` must import without it (the widget's ``setup()`` and the tests of pure helpers use it alone).
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    # nodes: geometry, conversion, result nodes, the blocking call
    "LPS_TO_RAS": "nodes", "ATTR_ROLE": "nodes", "ATTR_INPUT": "nodes", "ATTR_MODEL": "nodes",
    "ijk_to_ras": "nodes", "geometry_from_ijk_to_ras": "nodes", "node_ijk_to_ras": "nodes",
    "volume_from_node": "nodes", "set_node_from_volume": "nodes", "diverging_color_node_id": "nodes",
    "inferno_color_node_id": "nodes", "show_uncertainty_overlay": "nodes",
    "apply_result": "nodes", "compute": "nodes", "compute_volume": "nodes", "enhance_volume_node": "nodes",
    # job: the non-blocking run and the logic core
    "JobOutcome": "job", "EnhanceJob": "job", "EnhanceLogic": "job",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
