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
