"""benchmarks/bench_models.py and benchmarks/bench_enhance.py run end to end and print their tables."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "MANIFEST.json"


def test_bench_models_prints_a_row_with_macs_throughput_and_memory() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_models.py"), "--models", "mr-denoise",
                           "--block", "16,24,24", "--precisions", "fp32", "--threads", "1", "--ensemble", "1",
                           "--layers"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "matmul 2048^2 (GMAC/s): fp32 " in proc.stdout
    row = next(ln for ln in proc.stdout.splitlines() if ln.startswith("| mr-denoise | fp32"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "1" and 20000 < float(cells[3]) < 40000  # one member of the U-Net: ~28 k MACs per voxel
    assert float(cells[4]) > 0 and float(cells[5]) > 0 and cells[6].endswith("%")
    assert "enc0.0" in proc.stdout and "(whole window)" in proc.stdout  # the per-layer table


@pytest.mark.slow
@pytest.mark.skipif(not DATA.exists(), reason="../shared/data is not here")
def test_bench_enhance_runs_the_cli_and_checks_the_budget(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_enhance.py"), str(DATA),
                           "--cases", "mr-sr-x2", "--keep", str(tmp_path), "--extra=--ensemble=1"],
                          capture_output=True, text=True, timeout=900)
    row = next(ln for ln in proc.stdout.splitlines() if ln.startswith("| mr-sr-x2"))
    assert "| 128x128x80 | 256x256x160 |" in row
    assert (tmp_path / "mr-sr-x2-out.nii.gz").exists()
    assert proc.returncode == (0 if row.rstrip().endswith("yes |") else 1)


def test_loso_table_pairs_each_volume_with_the_run_that_left_its_group_out(tmp_path: Path) -> None:
    def res(volume: str, gains: dict[str, float]) -> dict:
        return {"case": "mr-sr-x2", "volume": volume,
                "verdicts": {"models": {m: {"gain_db": {"psnr_fg": g}} for m, g in gains.items()}}}

    results = {"results": [res("mr_gd", {"m": 1.5, "m-without-figshare-gd": 1.1, "old": 1.0}),
                           res("stroke_t1", {"m": 2.0, "m-without-figshare-gd": 2.1}),
                           res("chris_t1", {"m": 1.2})]}
    path = tmp_path / "results.json"
    path.write_text(__import__("json").dumps(results))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "loso_table.py"), str(path), "--model", "m",
                           "--before", "old"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = {ln.split("|")[2].strip(): [c.strip() for c in ln.strip("|").split("|")]
            for ln in proc.stdout.splitlines()[2:]}
    assert rows["mr_gd"][2:] == ["figshare-gd", "+1.50", "+1.10", "+1.00", "-0.40"]
    assert rows["stroke_t1"][2] == "cstar-stroke" and rows["stroke_t1"][4] == rows["stroke_t1"][6] == "-"
    assert rows["chris_t1"][2] == "(evaluation only)"
