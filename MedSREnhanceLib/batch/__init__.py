"""Cohorts: ``run_batch`` enhances many volumes (files, folders, globs, a CSV), resumably, in this process or on
Dask distributed (a LocalCluster or a running scheduler), recording every case in ``DIR/medsr_batch.csv``.

    from MedSREnhanceLib.batch import run_batch
    results = run_batch(["cohort/"], "out/", task="sr", scale=2, recursive=True, scheduler="local")

dask and distributed are optional (``pip install "MedSREnhance[batch]"``); ``scheduler="none"`` needs neither.
"""
from __future__ import annotations

from .case import CaseResult
from .inputs import Case
from .runner import SUMMARY_NAME, run_batch

__all__ = ["run_batch", "CaseResult", "Case", "SUMMARY_NAME"]
