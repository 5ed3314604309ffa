"""MedSREnhanceLib: deep-learning super-resolution and denoising of CT and MR volumes.

    from MedSREnhanceLib import enhance, read_volume, write_volume
    result = enhance(read_volume("in.nii.gz"), task="sr", scale=(1, 1, 4), device="auto")
    write_volume(result.enhanced, "out.nii.gz")

torch is imported only when a learned model runs, so ``import MedSREnhanceLib`` stays light (Slicer's module
scan, ``medsr --help``).
"""
from __future__ import annotations

import logging

from .engine.enhance import EnhanceResult, enhance
from .core.errors import CancelledError, InputError
from .core.io import read_volume, write_volume
from .core.volume import Volume

__version__ = "0.1.0"
__all__ = ["enhance", "EnhanceResult", "read_volume", "write_volume", "Volume", "InputError", "CancelledError"]

logging.getLogger(__name__).addHandler(logging.NullHandler())
