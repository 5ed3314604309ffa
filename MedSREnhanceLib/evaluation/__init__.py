"""Evaluation: reference metrics and `medsr bench` (cases, tuned classical baselines, scoring, runner, report)."""
