"""The README's examples are tested commands: its Python block runs, and .ci/run finds its test command."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _block_after(marker: str) -> str:
    match = re.search(re.escape(marker) + r"\s*```\w*\n(.*?)```", README, re.S)
    assert match, f"no code block after {marker}"
    return match.group(1)


def test_python_example_runs(tmp_path, monkeypatch):
    image = sitk.GetImageFromArray(np.random.default_rng(0).random((9, 20, 21)).astype(np.float32) * 100)
    image.SetSpacing((1.0, 1.0, 4.0))
    sitk.WriteImage(image, str(tmp_path / "in.nii.gz"))
    monkeypatch.chdir(tmp_path)
    exec(compile(_block_after("<!-- readme-test:python -->"), "README.md", "exec"), {})
    out = sitk.ReadImage(str(tmp_path / "out.nii.gz"))
    assert out.GetSize() == (21, 20, 36)
    assert np.allclose(out.GetSpacing(), (1.0, 1.0, 1.0))
    assert (tmp_path / "difference.nii.gz").exists()


def test_ci_runs_the_readme_test_command():
    command = _block_after("<!-- quickstart:test -->").strip()
    found = subprocess.run(
        ["awk", "/<!-- quickstart:test -->/{getline; getline; print; exit}", str(ROOT / "README.md")],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert found == command
    assert "torch==2.13.0" in command and "pytest" in command
    assert "quickstart:test" in (ROOT / ".ci" / "run").read_text()
