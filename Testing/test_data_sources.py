"""The data sources file: the project's file is complete and consistent; training refuses unrecorded or
unshippable volumes; leave-one-source-out runs leave their group out; a trained model's card benches by path."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from MedSREnhanceLib.core.errors import InputError
from MedSREnhanceLib.models import registry
from MedSREnhanceLib.training import config, data_sources, loop

from test_train import DN_MODEL, SR_MODEL, _write_config, data_root  # noqa: F401  (fixture)

CONFIGS = sorted((config.REPO_ROOT / "configs").glob("*.toml"))


def test_project_sources_file_records_every_volume_a_config_trains_on() -> None:
    sources = data_sources.load_sources(data_sources.DEFAULT_SOURCES)
    assert set(sources.roots) >= {"shared", "fetched"}
    for path in [p for p in CONFIGS if p.name != "data_sources.toml"]:
        cfg = config.load_config(path)
        assert cfg.data.sources == data_sources.DEFAULT_SOURCES, path.name
        for vid in cfg.data.train_ids:
            entry = sources.entry(vid)  # raises when a config trains on an unrecorded volume
            assert entry.shippable and entry.licence and entry.source and entry.group, (path.name, vid)
        for vid in cfg.data.val_ids:
            sources.entry(vid)


def test_a_group_table_gives_its_volumes_the_fields_they_share(tmp_path: Path) -> None:
    """[groups.NAME] fills root, licence, weights_ok and modality of that group's volumes; a volume's own keys win;
    a key a group may not set is refused."""
    path = tmp_path / "s.toml"
    path.write_text('[roots]\nshared = "x"\n[groups.site]\nroot = "shared"\nlicence = "CC0"\nweights_ok = "yes"\n'
                    '[volumes.a]\ngroup = "site"\nsource = "s1"\n'
                    '[volumes.b]\ngroup = "site"\nsource = "s2"\nweights_ok = "no (evaluation)"\n')
    sources = data_sources.load_sources(path)
    a, b = sources.entry("a"), sources.entry("b")
    assert (a.root, a.licence, a.weights_ok, a.source) == ("shared", "CC0", "yes", "s1") and a.shippable
    assert (b.licence, b.weights_ok) == ("CC0", "no (evaluation)") and not b.shippable
    path.write_text(path.read_text().replace('[groups.site]\n', '[groups.site]\nsource = "s0"\n'))
    with pytest.raises(ValueError, match="unknown key.*group 'site'"):
        data_sources.load_sources(path)


def test_sources_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "s.toml"
    bad.write_text('[roots]\nshared = "x"\n[volumes.a]\nroot = "elsewhere"\ngroup = "g"\nsource = "s"\n'
                   'licence = "l"\nweights_ok = "yes"\n')
    with pytest.raises(ValueError, match="elsewhere"):
        data_sources.load_sources(bad)
    bad.write_text('[roots]\nshared = "x"\n[volumes.a]\nroot = "shared"\ngroup = "g"\n')
    with pytest.raises(ValueError, match="lacks licence, source, weights_ok"):
        data_sources.load_sources(bad)


def test_training_refuses_unrecorded_and_unshippable_volumes(tmp_path: Path, data_root: Path) -> None:  # noqa: F811
    text = (data_root / "sources.toml").read_text()
    (data_root / "sources.toml").write_text(text.replace('weights_ok = "yes"', 'weights_ok = "no (test)"', 1))
    cfg = _write_config(tmp_path, data_root, "denoise-mr", DN_MODEL, '["mr_a"]', "noise_range = [0.02, 0.1]")
    with pytest.raises(ValueError, match="'mr_a' may not be used to train weights"):
        loop.run_training(str(cfg), quiet=True)  # the sources file says no, though the manifest says yes
    (data_root / "sources.toml").write_text(text.split("[volumes.mr_b]")[0])
    cfg = _write_config(tmp_path, data_root, "denoise-mr", DN_MODEL, '["mr_a"]', "noise_range = [0.02, 0.1]")
    with pytest.raises(ValueError, match="'mr_b' is not recorded in sources.toml"):
        loop.run_training(str(cfg), quiet=True)  # the validation volume too


def test_leave_out_trains_without_the_group_into_the_run_folder(tmp_path: Path, data_root: Path) -> None:  # noqa: F811
    cfg = _write_config(tmp_path, data_root, "denoise-mr", DN_MODEL, '["mr_a", "mr_aniso", "ct_a"]',
                        "noise_range = [0.02, 0.1]", steps=1)
    with pytest.raises(ValueError, match="no training volume"):
        loop.run_training(str(cfg), quiet=True, leave_out_group="mr_b")
    path = loop.run_training(str(cfg), quiet=True, leave_out_group="scanner-a", max_minutes=5.0)
    assert path == tmp_path / "runs" / "tiny-denoise-mr-without-scanner-a" / "tiny-denoise-mr-without-scanner-a.pt"
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["training"]["volumes"] == ["ct_a"] and card["training"]["left_out_group"] == "scanner-a"
    assert card["training"]["sources"][0]["group"] == "ct_a" and card["config"]["train"]["max_minutes"] == 5.0
    assert card["training"]["command"].endswith("--leave-out scanner-a")
    # a run that starts from weights trained on the group would not leave it out
    init = tmp_path / "init.pt"
    init.write_bytes(b"")
    init.with_suffix(".json").write_text(json.dumps({"training": {"volumes": ["mr_a"]}}))
    text = cfg.read_text().replace('[model]\n', f'[model]\ninit_from = "{init}"\n')
    cfg.write_text(text)
    with pytest.raises(ValueError, match="was trained on group 'scanner-a'"):
        loop.run_training(str(cfg), quiet=True, leave_out_group="scanner-a")


def test_a_trained_model_card_is_a_model_by_path(tmp_path: Path, data_root: Path,  # noqa: F811
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _write_config(tmp_path, data_root, "sr", SR_MODEL, '["mr_a"]', "scale = 2", steps=1)
    path = loop.run_training(str(cfg), quiet=True)
    spec = registry.get(str(path.with_suffix(".json")))
    assert (spec.name, spec.scale_mode, spec.scales, spec.acquisition, spec.auto) == \
        ("tiny-sr", "isotropic", (2.0,), "kspace", False)
    assert registry.verified_weights_path(spec) == path and registry.get("tiny-sr") is spec
    with pytest.raises(InputError, match="cannot use model card"):
        registry.get(str(tmp_path / "missing.json"))
    card = json.loads(path.with_suffix(".json").read_text())
    clash = tmp_path / "clash.json"
    clash.write_text(json.dumps({**card, "name": "mr-sr-x2", "weights": str(path)}))
    with pytest.raises(InputError, match="a bundled model"):
        registry.get(str(clash))
    # a card named relative to the working directory (medsr bench --models ../runs/x/x.json): its weights beside it
    renamed = path.parent / "renamed.json"
    renamed.write_text(json.dumps({**card, "name": "tiny-sr-renamed", "weights": path.name}))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    spec = registry.get(f"../{path.parent.name}/renamed.json")
    assert registry.verified_weights_path(spec) == path.resolve()
