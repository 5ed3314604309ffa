"""The library's rooms and the one-way flow between them (README, Architecture): checked on the source, no imports.

A module may import from its own subpackage and from the rooms listed for it below, at module level or inside a
function alike; every module says what it is for in a docstring and stays under 500 lines.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "MedSREnhanceLib"

# room -> the rooms it may import from (data flows core -> models/simulate -> engine -> evaluation/training/mrml)
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "simulate": {"core"},
    "models": {"core"},
    "engine": {"core", "models"},
    "evaluation": {"core", "simulate", "models", "engine"},
    "training": {"core", "simulate", "models"},
    "mrml": {"core", "models", "engine"},
    "batch": {"core", "models", "engine"},
}
ROOMS = set(ALLOWED)


def _modules() -> list[Path]:
    return sorted(p for p in LIB.rglob("*.py") if "__pycache__" not in p.parts)


def _room(path: Path) -> str:
    rel = path.relative_to(LIB).parts
    return rel[0] if len(rel) > 1 else "top"


def _imported_rooms(path: Path) -> set[str]:
    """Rooms of MedSREnhanceLib a module imports from (relative or absolute imports)."""
    package = path.relative_to(LIB).parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                parts = list(base) + (node.module.split(".") if node.module else [])
                targets = [parts + [a.name] for a in node.names] if not node.module else [parts]
            elif node.module and node.module.startswith("MedSREnhanceLib"):
                targets = [node.module.split(".")[1:]]
            else:
                continue
            found.update(t[0] for t in targets if t)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names
                         if a.name.startswith("MedSREnhanceLib.") and a.name.count(".") >= 1)
    return found


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(LIB)))
def test_imports_flow_one_way(path: Path) -> None:
    room = _room(path)
    if room == "top":  # the CLI, the demo and the package's public re-exports sit above every room
        return
    bad = {r for r in _imported_rooms(path) if r in ROOMS and r != room and r not in ALLOWED[room]}
    assert not bad, f"{path.relative_to(LIB)} ({room}) imports from {sorted(bad)}; allowed: {sorted(ALLOWED[room])}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(LIB)))
def test_module_says_what_it_is_for_and_stays_small(path: Path) -> None:
    text = path.read_text()
    assert ast.get_docstring(ast.parse(text)), f"{path.relative_to(LIB)} has no module docstring"
    assert len(text.splitlines()) <= 500, f"{path.relative_to(LIB)} has {len(text.splitlines())} lines"


def test_rooms_are_the_documented_ones() -> None:
    found = {p.name for p in LIB.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert found == ROOMS, found ^ ROOMS


def test_the_checker_sees_a_backward_import(tmp_path: Path) -> None:
    """The checker itself: a core module importing the engine (relative or absolute) is seen."""
    core = tmp_path / "MedSREnhanceLib" / "core"
    core.mkdir(parents=True)
    bad = core / "bad.py"
    bad.write_text("from ..engine.enhance import enhance\nfrom MedSREnhanceLib.evaluation import metrics\n")
    global LIB
    saved, LIB = LIB, tmp_path / "MedSREnhanceLib"
    try:
        assert _imported_rooms(bad) == {"engine", "evaluation"}
    finally:
        LIB = saved
