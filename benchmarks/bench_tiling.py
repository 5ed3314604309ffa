"""Seconds and peak memory of tiled versus untiled inference with a small 3D CNN (issue 2).

    python benchmarks/bench_tiling.py                      # 256x256x160, tiles 64 and 96 vs untiled, 2 threads
    python benchmarks/bench_tiling.py --shape 96,96,64 --tiles 32,48 --threads 1    # a quick look

Each configuration runs in its own fresh Python subprocess, so the peak resident memory it reports
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) belongs to that configuration alone; tracemalloc would miss
torch's native allocations. The baseline RSS of a subprocess that imported torch and built the input, before
inference, is reported too, so the inference's own share is visible. The net: 6 conv3d layers (3x3x3, 32
channels, random weights, GELU), fully convolutional, receptive radius 6 = the halo, so tiled output equals the
untiled one; the script checks that on a central block when untiled ran.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

CHILD = "--child"


def build_net(width: int, layers: int, seed: int = 0):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    mods: list = []
    c_in = 1
    for i in range(layers):
        c_out = 1 if i == layers - 1 else width
        mods.append(nn.Conv3d(c_in, c_out, 3, padding=1))
        if i < layers - 1:
            mods.append(nn.GELU())
        c_in = c_out
    return nn.Sequential(*mods).eval()


def child(cfg: dict) -> None:
    """One configuration, in this fresh process; prints one JSON line."""
    import resource

    import numpy as np
    import torch

    torch.set_num_threads(cfg["threads"])
    from MedSREnhanceLib.engine.inference import tiled_apply

    shape = tuple(cfg["shape"])  # (D, H, W) numpy order
    rng = np.random.default_rng(0)
    arr = rng.standard_normal(shape).astype(np.float32)
    net = build_net(cfg["width"], cfg["layers"])
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    t0 = time.perf_counter()
    with torch.inference_mode():
        if cfg["tile"] is None:
            out = net(torch.from_numpy(arr)[None, None])[0, 0].numpy()
        else:
            out = tiled_apply(arr, net, tile=cfg["tile"], halo=cfg["layers"], mode="crop")
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # A central block of the output, so the parent can check tiled == untiled without shipping volumes.
    c = tuple(slice(n // 2 - 8, n // 2 + 8) for n in shape)
    np.save(cfg["probe"], out[c])
    print(json.dumps({"seconds": seconds, "peak_rss": peak, "base_rss": base_rss}))


def run_config(cfg: dict, timeout: float) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(cfg["threads"]), MKL_NUM_THREADS=str(cfg["threads"]))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), CHILD, json.dumps(cfg)], capture_output=True,
                          text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["killed"])[-1]
        return {"error": f"exit {proc.returncode}: {tail}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="256,256,160", help="volume size in index order i,j,k (x,y,z)")
    ap.add_argument("--tiles", default="64,96", help="tile edges (input voxels) to compare with untiled")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--no-untiled", action="store_true", help="skip the untiled run (when it cannot fit)")
    ap.add_argument("--timeout", type=float, default=3600)
    args = ap.parse_args(argv)
    size_ijk = [int(v) for v in args.shape.split(",")]
    shape = size_ijk[::-1]
    import tempfile

    import numpy as np
    import torch

    tmp = tempfile.mkdtemp(prefix="bench_tiling.")
    configs = ([] if args.no_untiled else [None]) + [int(t) for t in args.tiles.split(",")]
    print(f"# bench_tiling  {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"# volume {'x'.join(map(str, size_ijk))} (i x j x k) = {np.prod(shape) / 1e6:.1f} M voxels, float32; "
          f"net: {args.layers} conv3d 3x3x3, {args.width} channels, random weights, halo {args.layers}")
    print(f"# torch {torch.__version__}, {args.threads} threads, CPU: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; each configuration in a fresh subprocess; peak = ru_maxrss of that process")
    print(f"{'configuration':16} {'seconds':>9} {'peak RSS':>10} {'before inference':>17} {'ratio t':>8} "
          f"{'ratio mem':>9}")
    results = {}
    for tile in configs:
        cfg = {"shape": shape, "tile": tile, "threads": args.threads, "width": args.width, "layers": args.layers,
               "probe": os.path.join(tmp, f"probe_{tile}.npy")}
        results[tile] = run_config(cfg, args.timeout)
    ref = results.get(None)
    for tile in configs:
        r = results[tile]
        name = "untiled" if tile is None else f"tile {tile}"
        if "error" in r:
            print(f"{name:16} failed: {r['error']}")
            continue
        ratio_t = ratio_m = ""
        if ref is not None and "error" not in ref:
            ratio_t = f"{r['seconds'] / ref['seconds']:.2f}x"
            ratio_m = f"{r['peak_rss'] / ref['peak_rss']:.2f}x"
        print(f"{name:16} {r['seconds']:9.1f} {r['peak_rss'] / 2**30:8.2f} GiB {r['base_rss'] / 2**30:13.2f} GiB "
              f"{ratio_t:>8} {ratio_m:>9}")
    if ref is not None and "error" not in ref:
        ref_probe = np.load(os.path.join(tmp, "probe_None.npy"))
        for tile in configs[1:]:
            if "error" not in results[tile]:
                diff = float(np.abs(np.load(os.path.join(tmp, f"probe_{tile}.npy")) - ref_probe).max())
                print(f"# tile {tile}: max |tiled - untiled| on a central 16^3 block = {diff:.2e}")
    print("# ratios are tiled / untiled")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == CHILD:
        child(json.loads(sys.argv[2]))
    else:
        sys.exit(main())
