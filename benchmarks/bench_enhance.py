"""Whole-command time and peak memory of `medsr enhance --model auto` on the issue-16 sizes (issue 16).

    python benchmarks/bench_enhance.py ../shared/data/MANIFEST.json           # the three default cases
    python benchmarks/bench_enhance.py MANIFEST --cases mr-denoise --repeat 3 --extra=--ensemble=8

Cases (each input made from a real volume of the manifest, written to a temporary folder, never kept):
- mr-sr-x2: an MR volume resampled to 128x128x80 (2 mm), enhanced to 256x256x160;
- mr-throughplane-x3 (not one of the issue's three): an MR volume resampled to 256x256x54 (thick slices), to x3;
- mr-denoise: an MR volume zero-padded/cropped to 256x256x160 with 5 % Rician noise;
- ct-denoise: a CT volume resampled in-plane and along z to 256x256x160 HU with 25 HU Gaussian noise.
Each run is a child process (`python -m MedSREnhanceLib.cli enhance ...`: start-up, reading, inference,
writing; ``--maps`` also writes the difference and residual maps, as the Slicer module shows them); the wall time
and the child's peak resident memory (``wait4``'s ru_maxrss) are printed with the budget of the issue: 60 s and
1 GiB + 4x the output's float32 bytes.
Times are this machine's: the table's first line names the CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from machine import cpu_name  # noqa: E402  (benchmarks/machine.py, beside this script)

from MedSREnhanceLib.core.io import read_volume, write_volume  # noqa: E402
from MedSREnhanceLib.core.resample import resample_to  # noqa: E402
from MedSREnhanceLib.core.volume import Volume  # noqa: E402

SECONDS_BUDGET = 60.0
GIB = 1024**3


def _grid(vol: Volume, shape_xyz: tuple[int, int, int]) -> Volume:
    """An empty volume of ``shape_xyz`` (i, j, k) covering ``vol``'s extent (same centre and direction)."""
    size = np.asarray(vol.array.shape[::-1], float) * np.asarray(vol.spacing)
    spacing = tuple(float(s) for s in size / np.asarray(shape_xyz))
    centre = vol.index_to_physical((np.asarray(vol.array.shape[::-1], float) - 1) / 2)
    half = vol.direction @ ((np.asarray(shape_xyz, float) - 1) / 2 * np.asarray(spacing))
    return Volume(np.zeros(shape_xyz[::-1], np.float32), spacing, tuple(centre - half), vol.direction.copy())


def _pad_crop(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Centre ``array`` in a zero array of ``shape`` (cropping centrally where it is larger)."""
    out = np.zeros(shape, np.float32)
    src, dst = [], []
    for n, m in zip(array.shape, shape):
        a = max(0, (n - m) // 2)
        b = max(0, (m - n) // 2)
        k = min(n, m)
        src.append(slice(a, a + k))
        dst.append(slice(b, b + k))
    out[tuple(dst)] = array[tuple(src)]
    return out


def make_mr_sr(vol: Volume, rng: np.random.Generator) -> Volume:
    return resample_to(vol, _grid(vol, (128, 128, 80)), "linear")


def make_mr_thick(vol: Volume, rng: np.random.Generator) -> Volume:
    return resample_to(vol, _grid(vol, (256, 256, 54)), "linear")


def make_mr_denoise(vol: Volume, rng: np.random.Generator) -> Volume:
    clean = _pad_crop(vol.array, (160, 256, 256))
    sigma = 0.05 * float(np.percentile(clean, 99.5))
    noisy = np.hypot(clean + rng.normal(0, sigma, clean.shape), rng.normal(0, sigma, clean.shape))
    return Volume(noisy.astype(np.float32), vol.spacing, vol.origin, vol.direction.copy())


def make_ct_denoise(vol: Volume, rng: np.random.Generator) -> Volume:
    grid = resample_to(vol, _grid(vol, (256, 256, 160)), "linear")
    return grid.with_array((grid.array + rng.normal(0, 25.0, grid.array.shape)).astype(np.float32))


# name: (manifest id, maker, CLI arguments)
CASES: dict[str, tuple[str, Callable[[Volume, np.random.Generator], Volume], list[str]]] = {
    "mr-sr-x2": ("mr_gd", make_mr_sr, ["--task", "sr", "--scale", "2"]),
    "mr-denoise": ("brats_0006_t1c", make_mr_denoise, ["--task", "denoise"]),
    "mr-throughplane-x3": ("brats_0006_flair", make_mr_thick, ["--task", "sr", "--scale", "1,1,3"]),
    "ct-denoise": ("hn_ct_cerr", make_ct_denoise, ["--task", "denoise"]),
}


def run_cli(args: list[str]) -> tuple[float, int, int, str]:
    """Wall seconds, peak RSS in bytes, exit code and the stage seconds (``--timings``) of ``medsr enhance args``
    in a child process."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: a full pipe would block the child
        proc = subprocess.Popen([sys.executable, "-m", "MedSREnhanceLib.cli", "enhance", *args, "--quiet",
                                 "--timings"], stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        err.seek(0)
        text = err.read().decode(errors="replace")
    code = os.waitstatus_to_exitcode(status)
    stages = next((ln.split(": ", 2)[-1] for ln in text.splitlines() if ln.startswith("medsr: seconds: ")), "")
    if code:
        sys.stderr.write(text)
    return seconds, usage.ru_maxrss * 1024, code, stages  # ru_maxrss is in KiB on Linux



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path, help="MANIFEST.json of the data folder")
    parser.add_argument("--cases", default="mr-sr-x2,mr-denoise,ct-denoise",
                        help=f"comma-separated from {', '.join(CASES)} (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per case; the table shows each")
    parser.add_argument("--extra", default="", help="more `medsr enhance` arguments, e.g. --extra=--ensemble=8")
    parser.add_argument("--maps", action="store_true", help="also write --difference and --residual")
    parser.add_argument("--keep", type=Path, help="write inputs and outputs here instead of a temporary folder")
    args = parser.parse_args()
    entries = {e["id"]: e for e in json.loads(args.manifest.read_text())}
    extra = [a for a in args.extra.replace("=", " ").split() if a]
    what = " ".join(extra + (["--difference D --residual R"] if args.maps else []))
    print(f"{cpu_name()}, {os.cpu_count()} cores; `medsr enhance --model auto {what}`\n")
    print("| case | input | output | seconds | peak RSS (MiB) | RSS budget (MiB) | within 60 s and budget |")
    print("|---|---|---|---|---|---|---|")
    failed, notes = 0, []
    with tempfile.TemporaryDirectory(prefix="medsr-bench-enhance-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for name in args.cases.split(","):
            vol_id, make, cli = CASES[name]
            source = read_volume(args.manifest.parent / entries[vol_id]["file"])
            volume = make(source, np.random.default_rng(0))
            src, out = folder / f"{name}-in.nii.gz", folder / f"{name}-out.nii.gz"
            write_volume(volume, src)
            up = (1, 1, 1) if "denoise" in name else (3, 1, 1) if "throughplane" in name else (2, 2, 2)
            out_shape = tuple(u * n for u, n in zip(up, volume.array.shape))
            budget = GIB + 4 * 4 * int(np.prod(out_shape))
            for _ in range(args.repeat):
                maps = ["--difference", str(folder / f"{name}-diff.nii.gz"),
                        "--residual", str(folder / f"{name}-residual.nii.gz")] if args.maps else []
                seconds, rss, code, stages = run_cli([str(src), str(out), *maps, *cli, *extra])
                notes.append(f"- {name}: {stages} (the rest of the {seconds:.1f} s: interpreter start-up, imports)")
                ok = code == 0 and seconds <= SECONDS_BUDGET and rss <= budget
                failed += not ok
                print(f"| {name} ({vol_id}) | {'x'.join(map(str, volume.array.shape[::-1]))} | "
                      f"{'x'.join(map(str, out_shape[::-1]))} | {seconds:.1f} | {rss / 2**20:.0f} | "
                      f"{budget / 2**20:.0f} | {'yes' if ok else 'NO' if code == 0 else f'exit {code}'} |", flush=True)
    print("\nSeconds per stage (`medsr enhance --timings`):\n" + "\n".join(notes))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
