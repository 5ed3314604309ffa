"""Progress reports and the cancel hook (kept free of torch so GUIs can import them cheaply)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    elapsed: float  # seconds since the start
    eta: Optional[float]  # seconds left; None until a first step is done
    message: str = ""


ProgressFn = Callable[[Progress], None]
CancelFn = Callable[[], bool]
