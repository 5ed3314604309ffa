"""Inference seconds of every bundled learned model, fp32 against bf16 autocast, through the engine (issue 3).

    python benchmarks/bench_models.py                     # 64x128x128 output block, scaled to 256x256x160, 2 threads
    python benchmarks/bench_models.py --models mr-denoise --block 48,96,96 --threads 1

Each model runs ``enhance()`` on the same synthetic MR/CT block (a smooth head phantom with Rician noise, or HU
with Gaussian noise) once per precision, in one process, so the fp32/bf16 ratio is measured under the same load.
The block is the OUTPUT grid (an SR model reads it divided by its scale); seconds are scaled by output voxel count
to a 256x256x160 output (tiles make the cost linear in voxels). It also prints how far the bf16 output is from the
fp32 one (PSNR, data range = the fp32 output's 0.5-99.5 percentile span), so the speed is never read without the
accuracy it costs. MACs per output voxel are counted on the network as bundled (its flip self-ensemble included).
Prints a Markdown table; writes nothing.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from MedSREnhanceLib import enhance  # noqa: E402
from MedSREnhanceLib.engine.enhance import _load_network  # noqa: E402
from MedSREnhanceLib.training.cards import macs_per_output_voxel  # noqa: E402
from MedSREnhanceLib.models import registry  # noqa: E402
from MedSREnhanceLib.core.volume import Volume  # noqa: E402

TARGET_VOXELS = 256 * 256 * 160


def phantom(shape: tuple[int, int, int], modality: str, seed: int = 0) -> Volume:
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = (x**2 + y**2 + z**2) < 0.85
    tissue = 0.6 + 0.25 * np.sin(9 * x) * np.cos(7 * y) + 0.1 * np.cos(13 * z)
    if modality == "ct":
        hu = np.where(inside, 40.0 + 300.0 * (tissue - 0.6), -1000.0) + rng.normal(0, 25.0, shape)
        return Volume(hu.astype(np.float32), (0.8, 0.8, 1.5))
    clean = np.where(inside, 1000.0 * tissue, 0.0)
    noisy = np.hypot(clean + rng.normal(0, 30.0, shape), rng.normal(0, 30.0, shape))
    return Volume(noisy.astype(np.float32), (1.0, 1.0, 1.0))


def scale_for(spec: registry.ModelSpec) -> tuple[float, float, float]:
    if spec.scale_mode == "isotropic":
        return (spec.scales[0],) * 3
    if spec.scale_mode == "axis":
        return (1.0, 1.0, 4.0)
    return (1.0, 1.0, 1.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="all", help="comma-separated learned models (default: all bundled)")
    parser.add_argument("--block", default="64,128,128", help="output block (z,y,x) actually run (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    block = tuple(int(v) for v in args.block.split(","))
    names = [s.name for s in registry.LEARNED] if args.models == "all" else args.models.split(",")
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}; output block {block} scaled to 256x256x160\n")
    print("| model | MACs / output voxel | fp32 s (256x256x160) | bf16 s | fp32 / bf16 | bf16 vs fp32 PSNR (dB) |")
    print("|---|---|---|---|---|---|")
    for name in names:
        spec = registry.get(name)
        scale = scale_for(spec)  # (i, j, k); the block is (z, y, x) = (k, j, i)
        vol = phantom(tuple(max(8, round(b / s)) for b, s in zip(block, scale[::-1])), spec.modalities[0])
        task = "denoise" if spec.task == "denoise" else "sr"
        out, secs = {}, {}
        for precision in ("fp32", "bf16"):
            enhance(vol, task=task, model=name, scale=scale, device="cpu", precision=precision)  # warm-up
            t0 = time.perf_counter()
            res = enhance(vol, task=task, model=name, scale=scale, device="cpu", precision=precision)
            secs[precision] = (time.perf_counter() - t0) * TARGET_VOXELS / res.enhanced.array.size
            out[precision] = res.enhanced.array
        lo, hi = np.percentile(out["fp32"], [0.5, 99.5])
        mse = float(np.mean((out["bf16"] - out["fp32"]) ** 2))
        psnr = 10 * np.log10((hi - lo) ** 2 / max(mse, 1e-20))
        macs = macs_per_output_voxel(_load_network(name), 3)  # as bundled: with its self-ensemble
        print(f"| {name} | {macs:.0f} | {secs['fp32']:.0f} | {secs['bf16']:.0f} | "
              f"{secs['fp32'] / secs['bf16']:.2f} | {psnr:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
