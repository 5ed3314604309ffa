"""Copy a model's measured `medsr bench` results into its model card (weights/<model>.json, key "metrics").

    python benchmarks/card_metrics.py RESULTS_JSON MODEL

One entry per bench case the model ran in: the bench command, git revision and date, and per volume the model's
metrics, the best tuned baseline per objective, the gains, the SSIM deltas, whether the volume was held out, the
weights' sha256 and the verdict. "passes_bar_on_every_held_out_volume" counts only volumes the card does not list
for training or validation. Refuses results produced by other weights than the ones in the card's package.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from MedSREnhanceLib.models import registry  # noqa: E402


def card_entries(results: dict[str, Any], model: str, sha256: str) -> dict[str, Any]:
    entries: dict[str, Any] = {}
    for res in results["results"]:
        rows = [r for r in res["rows"] if r["model"] == model and r["kind"] == "learned"]
        if not rows:
            continue
        row = rows[0]
        if row.get("weights_sha256") != sha256:
            raise SystemExit(f"{res['case']}/{res['volume']}: results are from weights {row.get('weights_sha256')}, "
                             f"the package has {sha256}")
        verdict = res["verdicts"]["models"][model]
        entry = entries.setdefault(res["case"], {
            "command": results["command"], "git": results["git"], "run": results["started"],
            "bar": ">= 0.5 dB foreground PSNR over the best tuned classical baseline on every volume, SSIM no worse",
            "weights_sha256": sha256, "per_volume": []})
        entry["per_volume"].append({
            "volume": res["volume"], "held_out": row.get("held_out", True), "seen_in": row.get("seen_in"),
            "crop_zyx": res["crop"]["size_zyx"], "ours": row["metrics"], "ours_seconds": row["seconds"],
            "best_baseline": res["verdicts"]["best_baseline"], "verdict": verdict})
    out: dict[str, Any] = {}
    for case, entry in entries.items():
        held = [v for v in entry["per_volume"] if v["held_out"]]
        gains = [g for v in held for g in v["verdict"]["gain_db"].values()]
        # the headline numbers first: the Slicer panel and `medsr models` show a card's first metrics
        out[case] = {"held_out_gain_db_min": round(min(gains), 2) if gains else None,
                     "held_out_gain_db_max": round(max(gains), 2) if gains else None,
                     "passes_bar_on_every_held_out_volume": bool(held) and all(v["verdict"]["passes_bar"]
                                                                                 for v in held),
                     **entry}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("model")
    args = parser.parse_args()
    spec = registry.get(args.model)
    card_path = registry.WEIGHTS_DIR / spec.card
    card = json.loads(card_path.read_text())
    entries = card_entries(json.loads(args.results.read_text()), args.model, spec.sha256)
    if not entries:
        raise SystemExit(f"{args.model} did not run in {args.results}")
    card.setdefault("metrics", {}).update(entries)
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    for case, entry in entries.items():
        gains = ", ".join(f"{v['volume']} {'/'.join(f'{g:+.2f}' for g in v['verdict']['gain_db'].values())}"
                          for v in entry["per_volume"])
        print(f"{case}: {gains}; passes on every held-out volume: {entry['passes_bar_on_every_held_out_volume']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
