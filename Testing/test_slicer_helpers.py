"""The panel's pure helpers (MedSREnhanceLib.mrml.panel): no Slicer, no Qt, no torch."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from types import SimpleNamespace

import numpy as np
import pytest

from MedSREnhanceLib.mrml import panel as h
from MedSREnhanceLib.models.registry import REGISTRY
from MedSREnhanceLib.core.progress import Progress


def test_model_choices_follow_the_registry():
    for task in h.TASKS:
        choices = h.model_choices(task)
        assert choices[0].name == "auto"
        names = [c.name for c in choices[1:]]
        assert sorted(names) == sorted(n for n, s in REGISTRY.items() if s.task == task)
        assert all(c.summary for c in choices)
        kinds = [REGISTRY[n].kind for n in names]
        assert kinds == sorted(kinds, key=lambda k: k != "learned")  # learned models first
    assert "gaussian" in [c.name for c in h.model_choices("denoise")]
    assert "gaussian" not in [c.name for c in h.model_choices("sr")]


def test_dependencies_per_model():
    assert h.required_packages("sr", "linear") == []
    assert h.required_packages("denoise", "gaussian") == []
    assert "scikit-image" in h.required_packages("denoise", "nlmeans")
    # auto denoising runs a learned net for MR and for CT: torch, never non-local means' scikit-image
    assert h.required_packages("denoise", "auto") == [] and h.needs_torch("denoise", "auto")
    assert h.required_packages("sr", "auto") == []  # SR of CT falls back to B-spline: SimpleITK only
    # a task whose learned models leave a modality uncovered does need the classical fallback's packages
    only_mr = {n: s for n, s in REGISTRY.items() if s.name != "ct-denoise"}
    assert "scikit-image" in h.required_packages("denoise", "auto", registry=only_mr)
    assert not h.needs_torch("sr", "linear")
    learned = [n for n, s in REGISTRY.items() if s.kind == "learned"]
    for name in learned:
        assert h.needs_torch(REGISTRY[name].task, name)
    assert h.missing_packages(["numpy", "no-such-package-xyz"]) == ["no-such-package-xyz"]


def test_device_choices():
    assert [v for v, _ in h.device_choices()] == ["auto", "cpu"]
    values = [v for v, _ in h.device_choices(["RTX A", "RTX B"], mps=True)]
    assert values == ["auto", "cpu", "cuda:0", "cuda:1", "mps"]


def test_torch_summary_without_gpu():
    fake_torch = SimpleNamespace(__version__="2.9.0", version=SimpleNamespace(cuda=None),
                                 cuda=SimpleNamespace(is_available=lambda: False))
    assert h.torch_summary(fake_torch) == "torch 2.9.0, CUDA build none (CPU only); CPU inference in fp32"
    fake_torch.cpu = SimpleNamespace(_is_amx_tile_supported=lambda: True)
    assert h.torch_summary(fake_torch).endswith("; CPU inference in bf16 (AMX)")
    fake_cuda = SimpleNamespace(__version__="2.9.0", version=SimpleNamespace(cuda="12.8"),
                                cuda=SimpleNamespace(is_available=lambda: True, device_count=lambda: 1,
                                                     get_device_name=lambda i: "RTX 5090"))
    assert "CUDA build 12.8" in h.torch_summary(fake_cuda) and "RTX 5090" in h.torch_summary(fake_cuda)
    assert "CPU inference" not in h.torch_summary(fake_cuda)


@pytest.mark.parametrize("spacing,expected", [
    ((0.5, 0.5, 3.0), (2, 6.0)),      # prostate-like thick slices along k
    ((0.625, 0.625, 2.5), (2, 4.0)),
    ((2.4, 0.9, 0.9), (0, 2.5)),      # slices along i
    ((1.0, 1.0, 1.1), (2, 1.0)),      # nearly isotropic: nothing to gain
    ((0.2, 0.2, 5.0), (2, 8.0)),      # capped
])
def test_suggest_through_plane(spacing, expected):
    assert h.suggest_through_plane(spacing) == expected


def test_scale_from_choice():
    assert h.scale_from_choice("isotropic", isotropic_factor=3) == (3.0, 3.0, 3.0)
    assert h.scale_from_choice("per-axis", per_axis=(1, 2, 2.5)) == (1.0, 2.0, 2.5)
    assert h.scale_from_choice("through-plane", axis="j", through_plane_factor=4) == (1.0, 4.0, 1.0)
    assert h.scale_from_choice("through-plane", axis="auto", through_plane_factor=3,
                               spacing=(0.5, 0.5, 3)) == (1.0, 1.0, 3.0)
    with pytest.raises(ValueError):
        h.scale_from_choice("through-plane", axis="auto")
    with pytest.raises(ValueError):
        h.scale_from_choice("sideways")


def test_names():
    assert h.enhanced_name("MRHead", "sr", 2) == "MRHead_SRx2"
    assert h.enhanced_name("MRHead", "sr", (2, 2, 2)) == "MRHead_SRx2"
    assert h.enhanced_name("MRHead", "sr", (1, 1, 3)) == "MRHead_SRx1x1x3"
    assert h.enhanced_name("MRHead", "sr", (1, 1, 2.5)) == "MRHead_SRx1x1x2.5"
    assert h.enhanced_name("MRHead", "denoise", 1) == "MRHead_denoised"
    assert h.difference_name("MRHead") == "MRHead_difference"


def test_symmetric_window():
    d = np.concatenate([np.linspace(-2, 2, 1001), [50.0]]).astype(np.float32)  # one outlier
    window, level = h.symmetric_window(d)
    assert level == 0.0
    assert window == pytest.approx(2 * np.percentile(np.abs(d), 99.5))
    assert h.symmetric_window(np.zeros((3, 3, 3))) == (2.0, 0.0)  # never a zero window


def test_layout_xml_is_three_slice_views():
    root = ET.fromstring(h.layout_xml("Coronal"))
    assert root.tag == "layout" and root.get("type") == "horizontal"
    views = root.findall("./item/view")
    assert [v.get("singletontag") for v in views] == list(h.VIEW_NAMES)
    assert all(v.get("class") == "vtkMRMLSliceNode" for v in views)
    assert {p.text for v in views for p in v.findall("property") if p.get("name") == "orientation"} == {"Coronal"}


def test_progress_text():
    assert h.format_duration(None) == "--"
    assert h.format_duration(75) == "1:15"
    assert h.format_duration(3725) == "1:02:05"
    text = h.format_progress(Progress(3, 12, 7.2, 21.4))
    assert text == "Step 3/12, 0:07 elapsed, about 0:21 left"
    assert h.format_progress(Progress(0, 12, 0.1, None)) == "Step 0/12, 0:00 elapsed"
    assert h.format_progress(Progress(0, 0, 1.6, None, "loading mr-sr-x2", "loading")) == \
        "Loading the model, 0:02 elapsed"
    assert h.format_progress(Progress(5, 16, 9.0, 20.0, "window 1 of 2", "inference")) == \
        "Enhancing 5/16, 0:09 elapsed, about 0:20 left - window 1 of 2"
    assert h.format_log_line(67.4, "tiled inference on cpu") == "[1:07] tiled inference on cpu"


@pytest.mark.parametrize("version,ok", [("2.13.0+cpu", True), ("2.1", True), ("2.1.0a0", True),
                                        ("2.0.1", False), ("1.13.1+cu117", False), ("", False), (None, False)])
def test_torch_version_against_the_minimum(version, ok):
    assert h.torch_version_ok(version, "2.1") is ok


def test_dependency_plan_prompts_only_for_what_the_model_needs():
    assert h.dependency_plan("sr", "linear", torch_version="").ready  # classical: neither torch nor packages
    assert h.dependency_plan("denoise", "auto", torch_version="2.13.0").ready
    missing = h.dependency_plan("denoise", "auto", torch_version="")
    assert (missing.torch, missing.packages) == ("missing", ())  # torch only, no scikit-image prompt
    old = h.dependency_plan("sr", "mr-sr-x2", torch_version="1.13.1")
    assert old.torch == "too old" and not old.ready
    assert h.dependency_plan("sr", "mr-sr-x2", torch_version="1.13.1", check_torch=False).ready
    assert h.installed_torch_version() is not None  # this environment has torch (read without importing it)


def test_card_summary():
    card = {"parameters": 123456, "training": {"volumes": ["a", "b", "c"]},
            "metrics": {"psnr": {"whole": 35.123, "mask": 31.0}, "ssim": 0.91, "note": "x"}}
    text = h.card_summary("SR net", card)
    assert text == "SR net | 0.12 M parameters | trained on 3 volumes | measured: psnr.whole 35.1, psnr.mask 31, ssim 0.91"
    assert h.card_summary("Trilinear", {}) == "Trilinear"
    gan = h.card_summary("GAN", {"hallucination_risk": "HIGH, by design. Invented detail can look like anatomy."})
    assert gan == "GAN | hallucination risk: HIGH, by design."


def test_the_bundled_gan_warns_in_the_model_list():
    text = {c.name: c.summary for c in h.model_choices("sr")}["mr-sr-x2-gan"]
    assert "hallucination risk: HIGH" in text and "never picked by auto" in text
