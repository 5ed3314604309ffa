"""Inference cost of every bundled learned model through the engine: seconds, achieved GMAC/s against the
machine's matmul throughput, peak memory, per precision (issue 16).

    python benchmarks/bench_models.py                          # CPU: fp32 (and bf16 with AMX), 2 threads
    python benchmarks/bench_models.py --device cuda            # a GPU machine: fp32, fp16, bf16, unattended
    python benchmarks/bench_models.py --models mr-denoise --layers   # also where one window's time goes

Each model runs ``enhance()`` (tiling, ensemble, normalisation: the engine's one code path) on a synthetic MR/CT
block (a smooth head phantom with Rician noise, or HU with Gaussian noise), once per precision after a warm-up, in
one process, so ratios between rows are measured under the same load. The block is the OUTPUT grid (an SR model
reads it divided by its scale); seconds are scaled by output voxel count to a 256x256x160 output (tiles make the
cost linear in voxels). MACs per output voxel are counted on the network with the flip-ensemble members the run
used (the model's default, or --ensemble). GMAC/s = those MACs x output voxels / seconds of the whole call, set
against a large fp32/bf16 matmul timed in the same run: the fraction of the machine the convolutions reach.
Peak memory: this process's resident memory at its peak during the call (CPU: interpreter, torch and the phantom
included), or torch's peak allocation (CUDA).
The bf16/fp16 rows also give the output's PSNR against the fp32 output (data range = fp32's 0.5-99.5 percentile
span), so a speed-up is never read without its accuracy. A failing model prints its error and the run goes on.
Prints Markdown; writes nothing.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from machine import cpu_name  # noqa: E402  (benchmarks/machine.py, beside this script)

from MedSREnhanceLib import enhance  # noqa: E402
from MedSREnhanceLib.core.volume import Volume  # noqa: E402
from MedSREnhanceLib.engine.enhance import _load_network  # noqa: E402
from MedSREnhanceLib.engine.inference import cpu_has_amx, place  # noqa: E402
from MedSREnhanceLib.models import registry  # noqa: E402
from MedSREnhanceLib.training.cards import macs_per_output_voxel  # noqa: E402

TARGET_VOXELS = 256 * 256 * 160
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


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


def matmul_gmacs(torch: Any, device: Any, dtype: Any, n: int = 2048, seconds: float = 2.0) -> float:
    """Multiply-accumulates per second (in G) of an n x n matmul: what this device's GEMM reaches."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)
    sync(torch, device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b)
        reps += 1
    sync(torch, device)
    return reps * n**3 / (time.perf_counter() - t0) / 1e9


def sync(torch: Any, device: Any) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


def peak_memory(torch: Any, device: Any, fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(fn(), seconds, peak bytes): torch's peak allocation above the start on CUDA; on the CPU the process's
    peak resident memory during the call, sampled (the allocator keeps freed pages, so a rise would read 0)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
        return out, seconds, float(torch.cuda.max_memory_allocated(device) - base)
    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.01)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    try:
        out = fn()
    finally:
        seconds = time.perf_counter() - t0
        done.set()
        thread.join()
    return out, seconds, float(max(peak[0], _rss()))


def layer_table(torch: Any, net: Any, shape: tuple[int, int, int], device: Any, rows: int = 12) -> list[str]:
    """Seconds per leaf module for one window of ``shape`` (one ensemble member), slowest first."""
    times: dict[Any, float] = collections.defaultdict(float)
    starts: dict[Any, float] = {}
    names = {m: n for n, m in net.named_modules() if not list(m.children())}

    def pre(m: Any, _: Any) -> None:
        sync(torch, device)
        starts[m] = time.perf_counter()

    def post(m: Any, _: Any, __: Any) -> None:
        sync(torch, device)
        times[m] += time.perf_counter() - starts[m]

    handles = [h for m in names for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    ensemble, net.ensemble = getattr(net, "ensemble", None), 1
    x = torch.rand((1, 1) + shape, device=device)
    try:
        with torch.inference_mode():
            place(net, device)(x)
            times.clear()
            t0 = time.perf_counter()
            net(x)
            sync(torch, device)
            total = time.perf_counter() - t0
    finally:
        for h in handles:
            h.remove()
        if ensemble is not None:
            net.ensemble = ensemble
    lines = [f"{'layer':18} {'module':58} {'s':>7}", f"{'(whole window)':18} {'':58} {total:7.3f}"]
    for m, s in sorted(times.items(), key=lambda kv: -kv[1])[:rows]:
        lines.append(f"{names[m]:18} {str(m)[:58]:58} {s:7.3f}")
    return lines



def bench_model(torch: Any, name: str, block: tuple[int, ...], device: Any, precisions: list[str],
                ensemble: Optional[int], gemm: dict[str, float]) -> list[str]:
    spec = registry.get(name)
    scale = scale_for(spec)  # (i, j, k); the block is (z, y, x) = (k, j, i)
    # at least 32 input voxels per axis: oneDNN's fp32 conv3d ran 4-5x slower per voxel on 16-voxel-deep inputs
    # here (SRNet: 0.84 s for 16x32x32 against 0.19 s for 32x32x32), which would misstate the x3/x4 models
    vol = phantom(tuple(max(32, round(b / s)) for b, s in zip(block, scale[::-1])), spec.modalities[0])
    task = "denoise" if spec.task == "denoise" else spec.task
    net = _load_network(name)
    full = getattr(net, "ensemble", None)
    used = ensemble or spec.default_ensemble or full
    if used is not None and full is not None:
        net.ensemble = used
    try:
        macs = macs_per_output_voxel(net, 3)
    finally:
        if full is not None:
            net.ensemble = full
    rows, ref = [], None
    for precision in precisions:
        def run() -> Any:
            return enhance(vol, task=task, model=name, scale=scale, device=str(device), precision=precision,
                           ensemble=used)

        try:
            run()  # warm-up (weights, oneDNN / cuDNN kernels)
            res, seconds, peak = peak_memory(torch, device, run)
        except Exception as exc:  # noqa: BLE001 - unattended: report the model and go on
            rows.append(f"| {name} | {precision} | failed: {str(exc).splitlines()[0][:80]} | | | | | | |")
            continue
        out = res.enhanced.array
        voxels = out.size
        scaled = seconds * TARGET_VOXELS / voxels
        gmacs = macs * voxels / seconds / 1e9
        if ref is None:
            ref, psnr = out, "-"
        else:
            lo, hi = np.percentile(ref, [0.5, 99.5])
            mse = float(np.mean((out - ref) ** 2))
            psnr = f"{10 * np.log10((hi - lo) ** 2 / max(mse, 1e-20)):.1f}"
        base = gemm.get(precision)
        share = f"{100 * gmacs / base:.0f} %" if base else "-"
        rows.append(f"| {name} | {precision} | {used or 1} | {macs:.0f} | {scaled:.1f} | {gmacs:.1f} | {share} | "
                    f"{peak / 2**20:.0f} | {psnr} |")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="all", help="comma-separated learned models (default: all bundled)")
    parser.add_argument("--block", default="64,128,128",
                        help="output block (z,y,x) actually run (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default: %(default)s)")
    parser.add_argument("--precisions",
                        help="comma-separated (default: fp32,fp16,bf16 on CUDA; fp32 on a CPU, bf16 too with AMX)")
    parser.add_argument("--ensemble", type=int, help="flip-ensemble members (default: each model's own default)")
    parser.add_argument("--layers", action="store_true", help="also time each layer on one 64^3 window, fp32")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.stderr.write("bench_models: CUDA is not available here\n")
        return 2
    default = "fp32,fp16,bf16" if device.type == "cuda" else "fp32,bf16" if cpu_has_amx() else "fp32"
    precisions = (args.precisions or default).split(",")
    if "bf16" not in precisions and device.type == "cpu":
        print("bf16 skipped: no AMX on this CPU, where it is emulated (hundreds of times slower); "
              "--precisions fp32,bf16 runs it anyway")
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    gemm = {p: matmul_gmacs(torch, device, dtypes[p]) for p in precisions if p != "fp16" or device.type == "cuda"}
    block = tuple(int(v) for v in args.block.split(","))
    names = [s.name for s in registry.LEARNED] if args.models == "all" else args.models.split(",")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{cpu_name()}, {args.threads} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}"
    print(f"{where}; torch {torch.__version__}; output block {block} scaled to 256x256x160")
    print("matmul 2048^2 (GMAC/s): " + ", ".join(f"{p} {g:.1f}" for p, g in gemm.items()) + "\n")
    print("| model | precision | ensemble | MACs / output voxel | s (256x256x160) | GMAC/s | of matmul | "
          "peak memory (MiB) | PSNR vs fp32 (dB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in names:
        for row in bench_model(torch, name, block, device, precisions, args.ensemble, gemm):
            print(row, flush=True)
    if args.layers:
        for name in names:
            print(f"\n{name}: one 64^3 window, fp32, one ensemble member\n```")
            print("\n".join(layer_table(torch, _load_network(name), (64, 64, 64), device)))
            print("```")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
