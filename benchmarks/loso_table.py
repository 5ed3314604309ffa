"""The leave-one-source-out table (issue 14) from `medsr bench` results that ran a model and its left-out runs.

    python benchmarks/loso_table.py RESULTS_JSON [RESULTS_JSON ...] --model mr-sr-x2 [--before NAME] [--runs NAME]

The left-out runs are `medsr train CONFIG --leave-out GROUP` models, benched by their card paths; their names are
``<runs>-without-<group>`` (``--runs``: the config's model name, by default ``--model``; it differs when the full
model was benched as a candidate under another name). For every such run and every benched volume of its group (configs/data_sources.toml),
the table gives the foreground-PSNR gain over the best tuned classical baseline of: the model trained with the
group (seen), the run without it (unseen: what a user from that source gets if it had not been collected), and
optionally ``--before``, a model that never saw the group either (the stage the left-out runs started from).
A volume outside every left-out group is listed with the model's gain only; one outside the sources file is an
evaluation-only volume (no model trains on it).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from MedSREnhanceLib.training.data_sources import DEFAULT_SOURCES, load_sources  # noqa: E402


GAIN_KEYS = (("psnr_fg",), ("psnr_fg_full", "psnr_fg_soft"))  # MR; CT per window (full / soft tissue)


def gains(results: list[dict[str, Any]]) -> dict[tuple[str, str, str], tuple[float, ...]]:
    """(case, volume, model) -> fg PSNR gain(s) over the best tuned baseline (dB), from the bench verdicts: one
    for MR, full / soft-tissue window for CT."""
    out = {}
    for results_json in results:
        for res in results_json["results"]:
            for model, verdict in (res.get("verdicts", {}).get("models") or {}).items():
                gain = verdict.get("gain_db") or {}
                keys = next((k for k in GAIN_KEYS if all(key in gain for key in k)), None)
                if keys is not None:
                    out[(res["case"], res["volume"], model)] = tuple(float(gain[k]) for k in keys)
    return out


def _fmt(values: tuple[float, ...]) -> str:
    return " / ".join(f"{v:+.2f}" for v in values)


def table(results: list[dict[str, Any]], model: str, before: str, sources_path: str, runs: str = "") -> list[str]:
    sources = load_sources(sources_path)
    g = gains(results)
    prefix = f"{runs or model}-without-"
    left_out = sorted({m[len(prefix):] for _, _, m in g if m.startswith(prefix)})
    lines = [f"| case | volume | source group | {model} (group seen) | {model} without the group | "
             + (f"{before} (never saw it) | " if before else "") + "unseen - seen (dB) |",
             "|---|---|---|---|---|" + ("---|" if before else "") + "---|"]
    for case, volume, m in sorted(g):
        if m != model:
            continue
        group = sources.volumes[volume].group if volume in sources.volumes else ""
        seen = g[(case, volume, model)]
        unseen = g.get((case, volume, prefix + group)) if group in left_out else None
        prior = g.get((case, volume, before)) if before else None
        cells = [case, volume, group or "(evaluation only)", _fmt(seen), _fmt(unseen) if unseen is not None else "-"]
        if before:
            cells.append(_fmt(prior) if prior is not None else "-")
        cells.append(_fmt(tuple(u - s for u, s in zip(unseen, seen))) if unseen is not None else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--model", required=True, help="the model trained on every group")
    parser.add_argument("--before", default="", help="a model that never saw the left-out groups (optional)")
    parser.add_argument("--runs", default="", help="model name of the left-out runs' config (default: --model)")
    parser.add_argument("--sources", default=DEFAULT_SOURCES)
    args = parser.parse_args()
    lines = table([json.loads(p.read_text()) for p in args.results], args.model, args.before, args.sources,
                  args.runs)
    if len(lines) == 2:
        print(f"no bench row of {args.model} in {', '.join(map(str, args.results))}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
