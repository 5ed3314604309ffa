"""The Slicer module's files agree with each other: widget names, parameter bindings, the CMake file lists,
the extension description files, icons and licence. Pure file checks: no Slicer, no Qt.

test_every_needed_file_is_listed_in_module_cmake fails whenever someone adds a .py, weights or resource file
without listing it in MedSREnhance/CMakeLists.txt: that file would be missing from the packaged extension.
"""
from __future__ import annotations

import ast
import json
import re
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "MedSREnhance"
LIB_DIR = ROOT / "MedSREnhanceLib"
MODULE_PY = MODULE_DIR / "MedSREnhance.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "MedSREnhance.ui"
MODULE_CMAKE = MODULE_DIR / "CMakeLists.txt"
TOP_CMAKE = ROOT / "CMakeLists.txt"

# Extension content: what the module needs at run time.
MODULE_PATTERNS = ("*.py", "Resources/**/*.ui", "Resources/**/*.png", "Resources/**/*.svg", "Resources/**/*.json",
                   "Resources/**/*.txt")
LIB_PATTERNS = ("**/*.py", "models/weights/*.pt", "models/weights/*.json")


def _cmake_tokens(path: Path) -> set[str]:
    text = "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())
    text = text.replace("${MODULE_NAME}", "MedSREnhance")
    return set(re.findall(r"[A-Za-z0-9_./${}-]+", text))


def _ui_widgets() -> dict[str, str]:
    root = ET.parse(UI_FILE).getroot()
    return {w.get("name"): w.get("class") for w in root.iter("widget")}


def _ui_bindings() -> dict[str, str]:
    """SlicerParameterName -> widget class."""
    out = {}
    for w in ET.parse(UI_FILE).getroot().iter("widget"):
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                out[prop.findtext("string")] = w.get("class")
    return out


def _module_tree() -> ast.Module:
    return ast.parse(MODULE_PY.read_text())


def _parameter_annotations() -> dict[str, str]:
    for node in ast.walk(_module_tree()):
        if isinstance(node, ast.ClassDef) and node.name == "MedSREnhanceParameterNode":
            return {st.target.id: ast.unparse(st.annotation) for st in node.body
                    if isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name)}
    raise AssertionError("MedSREnhanceParameterNode not found")


def _intermediate(path: Path) -> bool:
    """Weights of a training stage that a later stage starts from: git-ignored and never packaged."""
    return path.parent.name == "weights" and re.search(r"-(base|stage\d)\.", path.name) is not None


def _files(base: Path, patterns: tuple[str, ...]) -> list[str]:
    found = set()
    for pattern in patterns:
        for p in base.glob(pattern):
            if p.is_file() and "__pycache__" not in p.parts and ".egg-info" not in str(p) and not _intermediate(p):
                found.add(p)
    return sorted(str(p.relative_to(base)).replace("\\", "/") for p in found)


# ----------------------------------------------------------------------------------------------------------------
# Widget code <-> .ui
# ----------------------------------------------------------------------------------------------------------------

def test_ui_root_is_qmrmlwidget():
    root = ET.parse(UI_FILE).getroot()
    top = root.find("widget")
    assert top is not None and top.get("class") == "qMRMLWidget" and top.get("name") == "MedSREnhance"


def test_every_widget_the_code_uses_exists_in_ui():
    used = set(re.findall(r"self\.ui\.([A-Za-z_][A-Za-z0-9_]*)", MODULE_PY.read_text()))
    assert used, "the widget code uses no self.ui.<name>?"
    missing = sorted(used - set(_ui_widgets()))
    assert not missing, f"widgets used in MedSREnhance.py but absent from the .ui: {missing}"


def test_widget_names_are_unique():
    names = [w.get("name") for w in ET.parse(UI_FILE).getroot().iter("widget")]
    assert len(names) == len(set(names))


def test_bound_widgets_match_parameter_types():
    """Every SlicerParameterName names a parameter, with a widget class the parameterNodeWrapper can connect."""
    params = _parameter_annotations()
    bindings = _ui_bindings()
    assert bindings, "no SlicerParameterName bindings in the .ui"
    for name, widget_class in bindings.items():
        assert name in params, f"{name!r} is bound in the .ui but not a parameter"
        annotation = params[name]
        if widget_class == "QComboBox":
            assert "Choice(" in annotation, f"{name}: a QComboBox binding needs a Choice annotation"
        elif widget_class == "QDoubleSpinBox":
            assert re.search(r"\bfloat\b", annotation), f"{name}: QDoubleSpinBox binds float"
        elif widget_class == "QSpinBox":
            assert re.search(r"\bint\b", annotation), f"{name}: QSpinBox binds int"
        elif widget_class == "QCheckBox":
            assert annotation == "bool", f"{name}: QCheckBox binds bool"
        elif widget_class == "qMRMLNodeComboBox":
            assert "vtkMRML" in annotation, f"{name}: node combo binds a node type"
        else:
            pytest.fail(f"{name}: no connector for widget class {widget_class}")


def test_module_classes_follow_the_template():
    classes = {n.name: [ast.unparse(b) for b in n.bases] for n in _module_tree().body if isinstance(n, ast.ClassDef)}
    assert "ScriptedLoadableModule" in classes["MedSREnhance"]
    assert "ScriptedLoadableModuleWidget" in classes["MedSREnhanceWidget"]
    assert "ScriptedLoadableModuleLogic" in classes["MedSREnhanceLogic"]
    assert "ScriptedLoadableModuleTest" in classes["MedSREnhanceTest"]
    assert "MedSREnhanceParameterNode" in classes


def test_nothing_heavy_at_import_or_in_setup():
    """Slicer's generic tests import the module and run setup() without torch: keep torch out of both."""
    tree = _module_tree()
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n and n.split(".")[0] in ("torch", "MedSREnhanceLib", "SimpleITK") for n in names), \
                ast.unparse(node)
    setup = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "setup")
    for node in ast.walk(setup):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            assert "torch" not in ast.unparse(node), ast.unparse(node)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            assert node.func.attr not in ("ensureDependencies", "_ensureTorch", "process", "processAsync",
                                          "installTorch"), ast.unparse(node)
            if node.func.attr == "deviceChoices":
                assert "loadTorch=False" in ast.unparse(node), ast.unparse(node)
            if node.func.attr == "torchInfo":  # only where torch is already loaded
                assert "'torch' in sys.modules" in ast.unparse(setup).replace('"', "'")


def test_help_text_has_the_console_example():
    text = MODULE_PY.read_text()
    assert 'slicer.util.getModuleLogic("MedSREnhance")' in text
    assert "logic.process(volume, task=" in text


# ----------------------------------------------------------------------------------------------------------------
# Packaging: CMake lists, extension description, icons, licence
# ----------------------------------------------------------------------------------------------------------------

def test_module_cmake_uses_no_glob():
    code = "\n".join(line.split("#", 1)[0] for line in MODULE_CMAKE.read_text().splitlines())
    assert not re.search(r"file\s*\(\s*GLOB", code, re.IGNORECASE)


def test_every_needed_file_is_listed_in_module_cmake():
    tokens = _cmake_tokens(MODULE_CMAKE)
    missing = [f"MedSREnhance/{f}" for f in _files(MODULE_DIR, MODULE_PATTERNS) if f not in tokens]
    missing += [f"MedSREnhanceLib/{f}" for f in _files(LIB_DIR, LIB_PATTERNS) if f"MedSREnhanceLib/{f}" not in tokens]
    assert not missing, ("files the extension needs but MedSREnhance/CMakeLists.txt does not list (they would be "
                         f"missing from the packaged extension): {missing}")


def test_every_listed_file_exists():
    """A listed file that does not exist stops the CMake configure (slicerMacroBuildScriptedModule checks)."""
    tokens = _cmake_tokens(MODULE_CMAKE)
    for token in tokens:
        if token.startswith("MedSREnhanceLib/"):
            assert (ROOT / token).is_file(), token
        elif re.search(r"\.(py|ui|png|svg|json|txt)$", token) and "$" not in token and token != "CMakeLists.txt":
            assert (MODULE_DIR / token).is_file(), token


def test_top_level_cmake():
    text = TOP_CMAKE.read_text()
    assert re.search(r"project\(\s*MedSREnhance\s*\)", text)
    assert re.search(r'set\(EXTENSION_DEPENDS\s+"PyTorch"\)', text)
    assert re.search(r"add_subdirectory\(\s*MedSREnhance\s*\)", text)
    for var in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert re.search(rf'set\({var}\s+"[^"]+"\)', text), var
    # icon and screenshot URLs point at files of this repository
    for var in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        url = re.search(rf'set\({var}\s+"([^"]+)"\)', text).group(1)
        for u in url.split():
            rel = u.split("/main/", 1)[1]
            assert (ROOT / rel).is_file(), u


def test_catalog_entry_and_s4ext_agree_with_cmake():
    cmake = TOP_CMAKE.read_text()
    category = re.search(r'set\(EXTENSION_CATEGORY\s+"([^"]+)"\)', cmake).group(1)
    entry = json.loads((ROOT / "MedSREnhance.json").read_text())  # file name = project() name
    allowed = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
               "dicom_support_rule", "build_subdirectory", "enabled", "tier"}
    assert set(entry) <= allowed and {"$schema", "category", "scm_url"} <= set(entry)
    assert entry["category"] == category and entry["build_dependencies"] == ["PyTorch"]
    s4ext = dict(line.split(" ", 1) for line in (ROOT / "extension.s4ext").read_text().splitlines()
                 if line.strip() and not line.startswith("#"))
    assert s4ext["depends"].strip() == "PyTorch" and s4ext["category"].strip() == category


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_icons_and_screenshot():
    assert _png_size(ROOT / "Resources" / "MedSREnhance.png") == (128, 128)
    assert _png_size(MODULE_DIR / "Resources" / "Icons" / "MedSREnhance.png") == (128, 128)
    w, h = _png_size(ROOT / "Resources" / "Screenshot01.png")
    assert w >= 600 and h >= 200


def test_license_is_apache_2():
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the full text, not a stub


def test_parameter_choices_match_the_helpers():
    """The parameter node repeats some choice lists (the module may not import the library at import time)."""
    from MedSREnhanceLib.mrml import panel as helpers

    params = _parameter_annotations()

    def choices(name: str) -> list:
        return ast.literal_eval(re.search(r"Choice\((\[.*?\])\)", params[name]).group(1))

    assert choices("task") == list(helpers.TASKS)
    assert choices("scaleMode") == list(helpers.SCALE_MODES)
    assert choices("isotropicFactor") == list(helpers.ISOTROPIC_FACTORS)
    assert choices("throughPlaneAxis") == ["auto", *helpers.AXES]
    assert choices("precision") == list(helpers.PRECISIONS)


def test_catalog_entry_is_formatted_as_the_extensions_index_requires():
    """ExtensionsIndex runs prettier with prettier-plugin-multiline-arrays (multilineArraysWrapThreshold 0): two
    spaces, one array element per line, a final newline. json.dumps(indent=2) writes exactly that."""
    text = (ROOT / "MedSREnhance.json").read_text()
    assert text == json.dumps(json.loads(text), indent=2) + "\n"
    assert not re.search(r"\[[^\n\]]", text), "an array opens on the same line as an element"


def test_readme_states_the_licence():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Licence\n", 1)
    assert len(section) == 2, "README has no Licence section"
    assert "Apache License 2.0" in section[1] and "Apache-2.0" in section[1] and "(LICENSE)" in section[1]


@pytest.mark.parametrize("doc", ["README.md", "docs/slicer.md"])
def test_every_picture_says_whether_slicer_rendered_it(doc):
    """A picture drawn outside Slicer must not pass for a Slicer screenshot: its caption (the paragraph after it)
    says which it is."""
    text = (ROOT / doc).read_text()
    images = list(re.finditer(r"!\[[^\]]*\]\(([^)]+)\)", text))
    assert images, f"{doc} has no pictures?"
    for image in images:
        caption = text[image.end():].strip().split("\n\n", 1)[0]
        assert "3D Slicer screenshot" in caption, \
            f"{doc}: the caption of {image.group(1)} does not say whether Slicer rendered it"
