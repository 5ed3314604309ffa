"""The GAN variant's bar (issue 15) from a `medsr bench` results.json that ran both models on the same volumes.

    python benchmarks/gan_compare.py benchmarks/results/sr-x2-gan/results.json [--gan mr-sr-x2-gan] [--base mr-sr-x2]

Per volume: foreground PSNR of each and the difference, the HF ratio (high-frequency power over the ground truth's,
above half the input's Nyquist) of each and which is closer to 1, the HF ratio above the input's Nyquist. The bar:
the GAN's HF ratio closer to 1 than the base model's on every volume, and at most 1.0 dB foreground PSNR lost on
each. Prints a Markdown table and the verdict; exit 0 if the bar is met, 1 if not.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

MAX_PSNR_LOSS_DB = 1.0


def compare(results: dict[str, Any], gan: str, base: str) -> tuple[list[str], bool]:
    header = (f"| volume | fg PSNR {base} | fg PSNR {gan} | delta (dB) | HF ratio {base} | HF ratio {gan} | "
              f"closer to 1 | HF > Nyq {base} | HF > Nyq {gan} |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    passed = True
    for res in results["results"]:
        rows = {r["model"]: r["metrics"] for r in res["rows"] if r["kind"] == "learned"}
        if gan not in rows or base not in rows:
            continue
        g, b = rows[gan], rows[base]
        delta = g["psnr_fg"] - b["psnr_fg"]
        closer = abs(g["hf_ratio"] - 1.0) < abs(b["hf_ratio"] - 1.0)
        ok = closer and delta >= -MAX_PSNR_LOSS_DB
        passed = passed and ok
        lines.append(f"| {res['volume']} | {b['psnr_fg']:.2f} | {g['psnr_fg']:.2f} | {delta:+.2f} | "
                     f"{b['hf_ratio']:.3f} | {g['hf_ratio']:.3f} | {'yes' if closer else '**no**'} | "
                     f"{b.get('hf_ratio_above_nyquist', float('nan')):.3f} | "
                     f"{g.get('hf_ratio_above_nyquist', float('nan')):.3f} |")
    return lines, passed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--gan", default="mr-sr-x2-gan")
    parser.add_argument("--base", default="mr-sr-x2")
    args = parser.parse_args()
    lines, passed = compare(json.loads(args.results.read_text()), args.gan, args.base)
    if len(lines) == 2:
        print(f"no volume where both {args.gan} and {args.base} ran", file=sys.stderr)
        return 2
    print("\n".join(lines))
    print(f"\nbar (HF ratio closer to 1 on every volume, <= {MAX_PSNR_LOSS_DB} dB fg PSNR lost): "
          f"{'MET' if passed else 'NOT MET'}")
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
