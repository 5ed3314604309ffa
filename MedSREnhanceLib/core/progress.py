"""Progress reports and the cancel hook (kept free of torch so GUIs can import them cheaply)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

# Stages a run goes through, in order; ``Progress.stage`` names one of them ("" for callers that never set it).
STAGES: tuple[str, ...] = ("starting", "loading", "inference", "finishing")


@dataclass(frozen=True)
class Progress:
    done: int  # work units done: windows x passes per window (ensemble members, slice batches), or steps
    total: int
    elapsed: float  # seconds since the start
    eta: Optional[float]  # seconds left, from the rate of the work done so far; None until it can be estimated
    message: str = ""
    stage: str = ""  # one of STAGES: what the run is doing (loading a model can take seconds before any unit)


ProgressFn = Callable[[Progress], None]
CancelFn = Callable[[], bool]
