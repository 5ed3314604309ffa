"""Every bundled model: weights pass their sha256 check, the card agrees with the registry entry that runs it
(a card/registry mismatch in the normalisation would silently feed the net the wrong intensities), and the net
loads and keeps the shape of a small volume."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from MedSREnhanceLib.core import normalise
from MedSREnhanceLib.models import registry
from MedSREnhanceLib.training.config import ModelConfig
from MedSREnhanceLib.training.losses import build_model


def _plain(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("spec", registry.LEARNED, ids=lambda s: s.name)
def test_bundled_card_matches_its_registry_entry(spec: registry.ModelSpec) -> None:
    path = registry.verified_weights_path(spec)
    card = json.loads((registry.WEIGHTS_DIR / spec.card).read_text())
    assert (card["name"], card["weights"], card["arch"], card["builder"]) == (spec.name, spec.weights, spec.arch,
                                                                              spec.builder)
    assert card["normalisation"] == spec.normalisation
    assert card["task"] == spec.task and card["modality"] in spec.modalities
    assert card["kwargs"] == {k: _plain(v) for k, v in spec.kwargs.items()}
    assert path.stat().st_size < 5 * 2**20  # "a few MB at most"
    normalise.forward(np.ones((4, 4, 4), np.float32), spec.normalisation)  # a kind normalise knows


@pytest.mark.parametrize("spec", registry.LEARNED, ids=lambda s: s.name)
def test_bundled_weights_load_into_their_architecture(spec: registry.ModelSpec) -> None:
    net = build_model(ModelConfig(name=spec.name, arch=spec.arch, builder=spec.builder, kwargs=dict(spec.kwargs)))
    net.load_state_dict(torch.load(registry.verified_weights_path(spec), weights_only=True))
    net.eval()
    with torch.inference_mode():
        out = net(torch.rand(1, 1, 8, 8, 8))
    assert out.shape[:2] == (1, 1) and torch.isfinite(out).all()


def test_card_commands_name_no_developer_paths() -> None:
    """Issue 17: a card's reproduce command is for users; it must not name /work/... or /tmp/... folders."""
    import json
    import re

    from MedSREnhanceLib.models.registry import WEIGHTS_DIR

    for card in sorted(WEIGHTS_DIR.glob("*.json")):
        for case, metrics in (json.loads(card.read_text()).get("metrics") or {}).items():
            command = metrics.get("command", "") if isinstance(metrics, dict) else ""
            assert not re.search(r"(^|\s)/(work|tmp|home|root)/", command), (card.name, case, command)
