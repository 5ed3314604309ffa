"""Training pipeline: a 2-step run per task on synthetic volumes from a tiny TOML config, resume, config errors."""
from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MedSREnhanceLib import simulate as degrade
from MedSREnhanceLib.core import normalise
from MedSREnhanceLib.core.io import content_hash
from MedSREnhanceLib.training import config, loop, losses, pairs, sources_ct, sources_mr
from MedSREnhanceLib.core.volume import Volume
from MedSREnhanceLib.models.registry import sha256_of

torch.set_num_threads(1)


def _phantom(shape: tuple[int, int, int], seed: int, ct: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    head = (x**2 + y**2 + z**2) < 0.8
    arr = np.where(head, 100.0 + 40.0 * np.sin(7 * x) * np.cos(5 * y) + rng.normal(0, 2, shape), 0.0)
    if ct:
        arr = np.where(head, arr - 60.0, -1000.0)
    return arr.astype(np.float32)


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    (root / "mr").mkdir(parents=True)
    entries = []
    for i, (vid, shape, spacing, ct) in enumerate([
        ("mr_a", (21, 26, 25), (1.0, 1.0, 1.0), False),
        ("mr_b", (19, 24, 23), (1.0, 1.0, 1.0), False),
        ("mr_aniso", (9, 30, 29), (0.5, 0.5, 2.0), False),
        ("ct_a", (5, 27, 25), (1.0, 1.0, 3.0), True),
        ("forbidden", (11, 12, 13), (1.0, 1.0, 1.0), False),
    ]):
        image = sitk.GetImageFromArray(_phantom(shape, i, ct))
        image.SetSpacing(spacing)
        sitk.WriteImage(image, str(root / "mr" / f"{vid}.nii.gz"))
        entries.append({"id": vid, "file": f"mr/{vid}.nii.gz", "weights_ok": "no" if vid == "forbidden" else "yes"})
    (root / "MANIFEST.json").write_text(json.dumps(entries))
    # the data sources file the configs read: one group per volume, except the two "scanner A" volumes
    lines = [f'[roots]\nshared = "{root}"\n']
    for e in entries:
        group = "scanner-a" if e["id"] in ("mr_a", "mr_aniso") else e["id"]
        lines.append(f'[volumes.{e["id"]}]\nroot = "shared"\ngroup = "{group}"\nsource = "synthetic"\n'
                     f'licence = "test"\nweights_ok = "{e["weights_ok"]}"\n')
    (root / "sources.toml").write_text("\n".join(lines))
    return root


def _write_config(tmp_path: Path, data_root: Path, task: str, model: str, extra_data: str = "",
                  extra_degrade: str = "", steps: int = 2) -> Path:
    cfg = tmp_path / f"{task}.toml"
    cfg.write_text(f"""
[model]
name = "tiny-{task}"
{model}

[data]
task = "{task}"
data_root = "{data_root}"
sources = "{data_root / 'sources.toml'}"
train_ids = {extra_data or '["mr_a", "mr_aniso"]'}
val_ids = ["mr_b"]
patch = 12
cache_dir = "{tmp_path / 'cache'}"

[degrade]
refresh_every = 1
{extra_degrade}

[train]
steps = {steps}
batch = 2
val_every = 1
checkpoint_minutes = 0.0
run_dir = "{tmp_path / 'runs'}"
out_dir = "{tmp_path / 'weights'}"
""")
    return cfg


SR_MODEL = 'arch = "srnet"\nbuilder = "SRNet"\nkwargs = { scale = 2, channels = 4, blocks = 1, spatial_dims = 3 }'
TP_MODEL = ('arch = "throughplane"\nbuilder = "ThroughPlaneNet"\n'
            'kwargs = { channels = 4, dilations = [1, 2, 1], spatial_dims = 3 }')
DN_MODEL = 'arch = "denoiser"\nbuilder = "Denoiser"\nkwargs = { channels = 4, spatial_dims = 3 }'
MOTION_MODEL = 'arch = "motionnet"\nbuilder = "MotionNet"\nkwargs = { channels = 2, spatial_dims = 3 }'


@pytest.mark.parametrize("task,model,ids,degrade", [
    pytest.param("sr", SR_MODEL, '["mr_a"]', "scale = 2\nnoise_prob = 0.5\nnoise_range = [0.0, 0.02]",
                 marks=pytest.mark.slow),  # ~50 s on a loaded 2-core machine
    ("throughplane", TP_MODEL, '["mr_a", "mr_aniso"]', "factor_range = [2.0, 4.0]"),
    ("denoise-mr", DN_MODEL, '["mr_a"]', "noise_range = [0.02, 0.1]"),
    ("motion-mr", DN_MODEL, '["mr_a", "mr_aniso"]', "motion_rotation_deg = [1.0, 3.0]\nmotion_translation_mm = [1.0, 3.0]"),
])
def test_two_step_training_writes_weights_and_card(tmp_path: Path, data_root: Path, task: str, model: str,
                                                   ids: str, degrade: str) -> None:
    cfg = _write_config(tmp_path, data_root, task, model, ids, degrade)
    weights = loop.run_training(str(cfg), quiet=True)
    card = json.loads(weights.with_suffix(".json").read_text())
    assert card["training"]["steps"] == 2 and card["training"]["volumes"] == json.loads(ids)
    assert card["config"]["data"]["task"] == task  # the resolved config travels with the weights
    # every training volume's content hash, so the bench knows it under any file name
    manifest = {e["id"]: e["file"] for e in json.loads((data_root / "MANIFEST.json").read_text())}
    assert card["training"]["volume_hashes"] == {
        v: content_hash(str(data_root / manifest[v])) for v in json.loads(ids) + ["mr_b"]}
    assert card["macs_per_output_voxel"] > 0 and card["halo"] > 0
    state = torch.load(weights, weights_only=True)
    net = losses.build_model(config.load_config(cfg).model)
    net.load_state_dict(state)
    assert len(sha256_of(weights)) == 64


@pytest.mark.slow  # projection-domain simulation of the pairs
def test_ct_denoise_two_steps(tmp_path: Path, data_root: Path) -> None:
    cfg = _write_config(tmp_path, data_root, "denoise-ct", DN_MODEL, '["ct_a"]',
                        "photons_sim = [1e4]\nn_angles = 24")
    text = cfg.read_text().replace('val_ids = ["mr_b"]', "val_ids = []")
    cfg.write_text(text)
    weights = loop.run_training(str(cfg), quiet=True)
    assert json.loads(weights.with_suffix(".json").read_text())["normalisation"] == "ct"
    assert list((tmp_path / "cache" / "ct_pairs").glob("ct_a_*.npz"))  # pairs cached outside the repo


def test_same_seed_same_weights_and_resume(tmp_path: Path, data_root: Path) -> None:
    cfg = _write_config(tmp_path, data_root, "denoise-mr", DN_MODEL, '["mr_a"]', "noise_range = [0.02, 0.1]")
    a = torch.load(loop.run_training(str(cfg), quiet=True), weights_only=True)
    b = torch.load(loop.run_training(str(cfg), quiet=True), weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    longer = _write_config(tmp_path, data_root, "denoise-mr", DN_MODEL, '["mr_a"]', "noise_range = [0.02, 0.1]",
                           steps=3)
    loop.run_training(str(longer), resume=True, quiet=True)  # continues from the step-2 checkpoint
    card = json.loads((tmp_path / "weights" / "tiny-denoise-mr.json").read_text())
    assert card["training"]["steps"] == 3


def test_bf16_training_with_noise_normalisation(tmp_path: Path, data_root: Path) -> None:
    """The MR denoiser's recipe: noise-level normalisation and bf16 autocast, recorded in the card."""
    cfg = _write_config(tmp_path, data_root, "denoise-mr", DN_MODEL, '["mr_a"]', "noise_range = [0.02, 0.1]")
    text = cfg.read_text().replace("patch = 12", 'patch = 12\nnormalisation = "mr-noise"')
    cfg.write_text(text.replace("steps = 2", 'steps = 2\nprecision = "bf16"\ngrad_clip = 1.0'))
    weights = loop.run_training(str(cfg), quiet=True)
    card = json.loads(weights.with_suffix(".json").read_text())
    assert card["normalisation"] == "mr-noise" and card["training"]["precision"] == "bf16"
    state = torch.load(weights, weights_only=True)
    assert all(v.dtype == torch.float32 for v in state.values())  # fp32 master weights are what ships
    cfg.write_text(text.replace("steps = 2", 'steps = 2\nprecision = "fp16"'))
    with pytest.raises(ValueError, match="precision"):
        loop.run_training(str(cfg), quiet=True)


def test_config_errors(tmp_path: Path, data_root: Path) -> None:
    cfg = _write_config(tmp_path, data_root, "sr", SR_MODEL, '["mr_a"]', "scael = 2")
    with pytest.raises(ValueError, match="scael"):
        config.load_config(cfg)
    cfg = _write_config(tmp_path, data_root, "sr", SR_MODEL, '["forbidden"]')
    with pytest.raises(ValueError, match="may not be used"):
        loop.run_training(str(cfg), quiet=True)


def test_ssim_and_structure_sampling() -> None:
    a = torch.rand(1, 1, 16, 16, 16)
    assert abs(float(losses.ssim(a, a)) - 1.0) < 1e-5
    assert float(losses.ssim(a, torch.rand_like(a))) < 0.5
    arr = np.zeros((20, 20, 20), np.float32)
    arr[:, :, 15:] = 1.0  # an edge at x = 15
    w = pairs.structure_weights(arr, 2)
    rng = np.random.default_rng(0)
    corners = [pairs.sample_corner(w, 2, arr.shape, (6, 6, 6), rng)[2] for _ in range(200)]
    assert np.mean([9 <= c <= 14 for c in corners]) > 0.5  # patches gather around the edge


def test_relative_directories_resolve_against_the_repository_root(tmp_path: Path, data_root: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A config means the same from any working directory; --data-root overrides the config's data_root."""
    cfg = tmp_path / "rel.toml"
    cfg.write_text('[model]\nname = "x"\n' + DN_MODEL + '\n[data]\ntask = "denoise-mr"\ntrain_ids = ["mr_a"]\n')
    monkeypatch.chdir(tmp_path)
    loaded = config.load_config(cfg)
    assert Path(loaded.data.data_root) == (config.REPO_ROOT / "../shared/data").resolve()
    assert Path(loaded.train.run_dir) == (config.REPO_ROOT / "../runs").resolve()
    assert loaded.train.out_dir == ""  # the package's weights folder
    assert config.load_config(cfg, str(data_root)).data.data_root == str(data_root.resolve())


def test_a_config_extends_a_base_key_by_key(tmp_path: Path, data_root: Path) -> None:
    """``extends``: the base's tables first, the config's keys replace the base's one by one (a list whole), the
    base's other keys are kept; a chain of bases resolves; a base that is missing, a cycle or a stray top-level
    key is refused with the file named."""
    base = _write_config(tmp_path, data_root, "sr", SR_MODEL, extra_degrade="noise_range = [0.0, 0.02]")
    (tmp_path / "exp.toml").write_text(f'extends = "{base.name}"\n[model]\nname = "exp"\n'
                                       '[data]\ntrain_ids = ["mr_b"]\n[train]\nseed = 7\n')
    merged, own = config.load_config(tmp_path / "exp.toml"), config.load_config(base)
    assert (merged.model.name, merged.data.train_ids, merged.train.seed) == ("exp", ["mr_b"], 7)
    assert (own.model.name, own.data.train_ids, own.train.seed) == ("tiny-sr", ["mr_a", "mr_aniso"], 0)
    assert merged.model.kwargs == own.model.kwargs and merged.degrade == own.degrade  # kept from the base
    assert merged.data.val_ids == own.data.val_ids and merged.train.steps == own.train.steps
    (tmp_path / "exp2.toml").write_text('extends = "exp.toml"\n[train]\nsteps = 5\n')
    chained = config.load_config(tmp_path / "exp2.toml")
    assert (chained.model.name, chained.train.seed, chained.train.steps) == ("exp", 7, 5)
    for text, match in (('extends = "nowhere.toml"\n', "nowhere.toml, which is not a file"),
                        ('extends = "loop.toml"\n', "extends itself"),
                        (f'extends = "{base.name}"\nseed = 3\n', "top-level key 'seed'"),
                        ('extends = 3\n', "must be a file name")):
        (tmp_path / "loop.toml").write_text(text)
        with pytest.raises(ValueError, match=match):
            config.load_config(tmp_path / "loop.toml")


def test_experiment_configs_resolve_to_their_base_with_their_changes() -> None:
    """The project's experiment configs that extend a bundled stage differ from it only where they say."""
    configs = config.REPO_ROOT / "configs"
    extending = [p for p in sorted(configs.glob("*.toml")) if "extends" in tomllib.loads(p.read_text())]
    assert len(extending) >= 10
    for path in extending:
        raw = tomllib.loads(path.read_text())
        cfg, base = config.load_config(path), config.load_config(configs / raw["extends"])
        for table in ("model", "data", "degrade", "train", "randomise"):
            got, was = dataclasses.asdict(getattr(cfg, table)), dataclasses.asdict(getattr(base, table))
            changed = {k for k in got if got[k] != was[k]}
            assert changed == {k for k in raw.get(table, {}) if raw[table][k] != was[k]}, (path.name, table)


def test_learning_rate_warms_up_then_decays_by_cosine() -> None:
    tc = config.TrainConfig(steps=1000, lr=1e-3, warmup_steps=100, lr_final_fraction=0.05, max_minutes=1e9)
    lrs = [loop._lr_at(s, tc) for s in (0, 49, 99, 100, 500, 1000)]
    assert lrs[0] == pytest.approx(1e-5, rel=0.02) and lrs[1] == pytest.approx(0.5e-3, rel=0.02)
    assert lrs[2] == pytest.approx(loop._lr_at(100, tc), rel=0.01)  # continuous at the end of warm-up
    assert lrs[3] > lrs[4] > lrs[5] == pytest.approx(0.05e-3)
    assert loop._lr_at(0, config.TrainConfig(lr=1e-3)) == pytest.approx(1e-3)  # no warm-up by default


def test_config_refuses_options_its_task_does_not_read(tmp_path: Path, data_root: Path) -> None:
    cases = [("sr", SR_MODEL, 'normalisation = "mr-noise"', "", "normalisation"),
             ("denoise-ct", DN_MODEL, 'normalisation = "mr-noise"', "", "normalisation"),
             ("denoise-ct", DN_MODEL, "", "downsample_range = [1.0, 1.5]", "downsample_range"),
             ("throughplane", TP_MODEL, "", "target_noise_max = 0.01", "target_noise_max"),
             ("denoise-mr", DN_MODEL, "", "downsample_range = [0.5, 1.5]", "downsample_range"),
             ("denoise-mr", DN_MODEL, "", "downsample_range = [1.5]", "downsample_range"),
             ("denoise-mr", DN_MODEL, "", "target_noise_max = -0.01", "target_noise_max"),
             ("sr", SR_MODEL, "", "target_noise_max = 0.01", "target_noise_max"),
             ("denoise-mr", DN_MODEL, "", "shared_noise_hu = [0.0, 5.0]", "shared_noise_hu"),
             ("denoise-ct", DN_MODEL, "", "own_noise_correction = true", "own_noise_correction"),
             ("denoise-ct", DN_MODEL, "", "shared_noise_hu = [5.0, 1.0]", "shared_noise_hu")]
    for task, model, data_line, degrade_line, match in cases:
        cfg = _write_config(tmp_path, data_root, task, model, '["mr_a"]', degrade_line)
        cfg.write_text(cfg.read_text().replace("patch = 12", f"patch = 12\n{data_line}"))
        with pytest.raises(ValueError, match=match):
            config.load_config(cfg)


def test_target_factors_bring_the_targets_own_noise_to_the_bound() -> None:
    # three thick axes: 2.7 % -> 1 % needs 2.7^(2/3); thin axes (few slices) stay; clean volumes stay
    assert sources_mr.target_factors((140, 160, 124), 0.027, 0.01, 1.0) == pytest.approx((2.7 ** (2 / 3),) * 3)
    assert sources_mr.target_factors((19, 384, 384), 0.02, 0.01, 1.0) == pytest.approx((2.0, 2.0, 1.0))
    assert sources_mr.target_factors((140, 160, 124), 0.005, 0.01, 1.0) == (1.0, 1.0, 1.0)
    assert sources_mr.target_factors((140, 160, 124), 0.005, 0.0, 1.2) == pytest.approx((1.2, 1.2, 1.2))  # jitter only
    assert sources_mr.target_factors((19, 30, 384), 0.02, 0.01, 1.1) == pytest.approx((4.4, 1.0, 1.0))  # i is x


def test_mr_denoise_source_trains_on_cleaned_targets(tmp_path: Path, data_root: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources_mr, "DOWNSAMPLE_MIN_AXIS", 8)  # the fixture volumes are small
    cfg = config.load_config(_write_config(tmp_path, data_root, "denoise-mr", DN_MODEL, '["mr_a"]',
                                          "noise_range = [0.02, 0.1]\ntarget_noise_max = 0.004"))
    src = sources_mr.MRDenoiseSource(cfg, ["mr_a"], np.random.default_rng(0))
    level = src.levels[0]
    assert level == pytest.approx(0.02 * 100 / 140, rel=0.25)  # the phantom's own noise: std 2 at a peak ~140
    (x, y, w, _), (xz, yz, _, _) = src.items  # the volume and its z-scored copy, downsampled alike
    f = (level / 0.004) ** (2 / 3)
    assert x.shape == y.shape == xz.shape == tuple(int(round(n / f)) for n in (21, 26, 25))
    assert w.shape == tuple((n + 1) // 2 for n in x.shape)  # sampling weights of the downsampled grid
    # a magnitude volume stays >= 0 through the truncation's ringing, so its background gets the Rayleigh floor
    background = y == 0
    assert y.min() == 0.0 and background.mean() > 0.2 and x[background].mean() > 0.5 * 0.05
    assert yz.min() < 0  # the z-scored copy stays signed
    # the law target_factors relies on: k-space truncation by f on n axes lowers white noise by f^(n/2)
    flat = Volume(100.0 + np.random.default_rng(0).normal(0.0, 2.7, (70, 80, 90)).astype(np.float32))
    cleaned = degrade.kspace_truncation(flat, sources_mr.target_factors(flat.array.shape, 0.027, 0.01, 1.0))
    assert normalise.noise_sigma(cleaned.array) / normalise.noise_sigma(flat.array) == pytest.approx(0.01 / 0.027, rel=0.1)


def test_own_noise_correction_makes_the_loss_minimiser_the_clean_signal() -> None:
    # Gaussian toy: target y = c + n0 (own noise), input x = y + na. Fitting p = a x + b to y directly learns to
    # keep the fraction r = s0^2 / (s0^2 + sa^2) of the input's noise; fitting expected_target(p) learns p = c.
    rng = np.random.default_rng(0)
    c, s0, sa = 1.0, 0.03, 0.05
    y = c + rng.normal(0.0, s0, 200_000)
    x = y + rng.normal(0.0, sa, y.shape)
    r = s0**2 / (s0**2 + sa**2)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for retention, slope in ((None, r), (torch.full_like(xt, r), 0.0)):
        a = torch.zeros((), dtype=torch.float64, requires_grad=True)
        b = torch.zeros((), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([a, b], max_iter=200, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = ((losses.expected_target(a * xt + b, xt, retention) - yt) ** 2).mean()
            loss.backward()
            return loss

        opt.step(closure)
        assert float(a.detach()) == pytest.approx(slope, abs=0.02)
        assert float((a * c + b).detach()) == pytest.approx(c, abs=0.005)


def test_mr_source_retention_follows_the_targets_own_noise(tmp_path: Path, data_root: Path) -> None:
    cfg = config.load_config(_write_config(tmp_path, data_root, "denoise-mr", DN_MODEL, '["mr_a"]',
                                          "noise_range = [0.05, 0.05]\nown_noise_correction = true"))
    src = sources_mr.MRDenoiseSource(cfg, ["mr_a"], np.random.default_rng(0))
    vol, zcopy = src.bases
    s0, s0z = src.own_sigma
    assert s0 == pytest.approx(2.0, rel=0.25)  # the phantom's own noise std
    inside = zcopy.array != 0
    assert s0z == pytest.approx(s0 / float(vol.array[inside].std()), rel=1e-4)  # z-scoring divides it by the std
    for base, own, item in zip(src.bases, src.own_sigma, src.items):
        added = degrade.rician_sigma(base.array, 0.05)[0]
        assert item[3] == pytest.approx(own**2 / (own**2 + added**2), rel=1e-6)
    x, y, r = src.batch(4)
    assert r is not None and r.shape == y.shape
    assert torch.all(r[y == 0] == 0)  # no own noise where the target is masked to 0
    assert torch.all(r[y != 0] > 0.05)
    cfg.degrade.own_noise_correction = False
    assert sources_mr.MRDenoiseSource(cfg, ["mr_a"], np.random.default_rng(0)).batch(2)[2] is None


def test_retention_of_downsampled_targets_uses_their_lowered_noise(tmp_path: Path, data_root: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources_mr, "DOWNSAMPLE_MIN_AXIS", 8)  # the fixture volumes are small
    cfg = config.load_config(_write_config(tmp_path, data_root, "denoise-mr", DN_MODEL, '["mr_a"]',
                                          "noise_range = [0.05, 0.05]\ntarget_noise_max = 0.004\n"
                                          "own_noise_correction = true"))
    src = sources_mr.MRDenoiseSource(cfg, ["mr_a"], np.random.default_rng(0))
    factors = sources_mr.target_factors(src.vols[0].array.shape, src.levels[0], 0.004, 1.0)
    assert max(factors) > 1.5  # really downsampled; the sqrt(prod f) law is tested on flat noise above
    for base, own, item in zip(src.bases, src.own_sigma, src.items):
        small = degrade.kspace_truncation(base, factors)
        if float(base.array.min()) >= 0.0:
            small = small.with_array(np.maximum(small.array, 0.0))  # as the source clamps magnitude volumes
        lowered, added = own / np.sqrt(np.prod(factors)), degrade.rician_sigma(small.array, 0.05)[0]
        assert item[3] == pytest.approx(lowered**2 / (lowered**2 + added**2), rel=1e-5)


def test_ct_noise_source_scales_every_dose_to_the_reference_noise(tmp_path: Path, data_root: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """With "ct-noise" each pair carries the gain inference would apply: the same noise std at every dose."""
    from MedSREnhanceLib.core import normalise

    rng = np.random.default_rng(0)
    ref = np.where(np.arange(40)[None, None, :] < 4, -1000.0, 40.0) * np.ones((16, 40, 40))
    field_1e4 = rng.normal(0.0, 60.0, ref.shape)  # the cached noisy-minus-reference field at 1e4 photons
    monkeypatch.setattr(sources_ct, "ct_pairs_cached", lambda cfg, vol, vid: (ref, [(1e4, field_1e4)]))
    cfg = config.load_config(_write_config(tmp_path, data_root, "denoise-ct", DN_MODEL, '["ct_a"]',
                                          "photons_range = [5e3, 5e5]"))
    cfg.data.normalisation = "ct-noise"
    src = sources_ct.CTDenoiseSource(cfg, ["ct_a"], np.random.default_rng(1))
    stds = []
    for _ in range(6):
        x, y = src.sample()
        inside = y > 0.5 * float(y.max())  # soft tissue, not the air strip
        stds.append(float((x - y)[inside].std()))
    assert np.allclose(stds, normalise.CT_NOISE_REF_HU / normalise.CT_SCALE, rtol=0.15)
    cfg.data.normalisation = "ct"  # dose-blind: the noise std follows the dose (60 HU at 1e4 photons)
    src = sources_ct.CTDenoiseSource(cfg, ["ct_a"], np.random.default_rng(1))
    stds = [float(np.std(np.subtract(*src.sample()))) for _ in range(6)]
    assert max(stds) / min(stds) > 2.0


def test_ct_source_shared_noise_texture_is_in_input_and_target(tmp_path: Path, data_root: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    ref = np.full((16, 40, 40), 40.0)
    field_1e4 = rng.normal(0.0, 60.0, ref.shape)
    monkeypatch.setattr(sources_ct, "ct_pairs_cached", lambda cfg, vol, vid: (ref, [(1e4, field_1e4)]))
    cfg = config.load_config(_write_config(tmp_path, data_root, "denoise-ct", DN_MODEL, '["ct_a"]',
                                          "photons_range = [1e4, 1e4]\nshared_noise_hu = [6.0, 6.0]"))
    src = sources_ct.CTDenoiseSource(cfg, ["ct_a"], np.random.default_rng(1))
    x, y = src.sample()
    assert float(y.std()) == pytest.approx(6.0 / 1000.0, rel=0.1)  # the flat reference now carries 6 HU texture
    assert float((x - y).std()) == pytest.approx(60.0 / 1000.0, rel=0.1)  # plus the dose's own noise
    assert float(np.corrcoef((x - y).ravel(), (y - y.mean()).ravel())[0, 1]) == pytest.approx(0.0, abs=0.05)


def test_ema_weights_are_shipped(tmp_path: Path, data_root: Path) -> None:
    cfg = _write_config(tmp_path, data_root, "denoise-mr", DN_MODEL, '["mr_a"]', "noise_range = [0.02, 0.1]",
                        steps=3)
    cfg.write_text(cfg.read_text().replace("steps = 3", "steps = 3\nema_decay = 0.5\nlr = 0.01"))
    shipped = torch.load(loop.run_training(str(cfg), quiet=True), weights_only=True)
    ckpt = torch.load(tmp_path / "runs" / "tiny-denoise-mr" / "checkpoint.pt", weights_only=False)
    last, averaged = ckpt["model"], ckpt["averaged"]
    name = "head.weight"
    assert torch.equal(shipped[name], averaged[f"module.{name}"])  # the average ships, not the last step
    assert not torch.allclose(shipped[name], last[name])
    cfg.write_text(cfg.read_text().replace("ema_decay = 0.5", "ema_decay = 1.0"))
    with pytest.raises(ValueError, match="ema_decay"):
        config.load_config(cfg)


def test_motion_source_pairs_a_moved_input_with_the_still_target(tmp_path: Path, data_root: Path) -> None:
    from MedSREnhanceLib.training.sources_motion import MotionSource

    cfg = config.load_config(_write_config(tmp_path, data_root, "motion-mr", DN_MODEL, '["mr_a"]',
                                           "motion_rotation_deg = [3.0, 4.0]\nmotion_translation_mm = [3.0, 4.0]"))
    src = MotionSource(cfg, ["mr_a"], np.random.default_rng(0))
    (x, y, _, _), record = src.items[0], src.records[0]
    assert record["name"] == "rigid_motion" and 1 <= len(record["params"]["events"]) <= 3
    assert x.shape == y.shape and float(np.abs(x - y).mean()) > 1e-3  # moved, on the target's intensity scale
    assert abs(float(np.percentile(y[y > 0], 99.5)) - 1.0) < 0.1
    a, b = src.sample()
    assert a.shape == b.shape == (12, 12, 12)


def test_motion_slices_train_the_2d_net(tmp_path: Path, data_root: Path) -> None:
    """patch_dims = 2: square slices, and the loop trains MotionNet's 2D core on them."""
    from MedSREnhanceLib.training.sources_motion import MotionSource

    cfg_path = _write_config(tmp_path, data_root, "motion-mr", MOTION_MODEL, '["mr_a", "mr_aniso"]',
                             "motion_rotation_deg = [2.0, 3.0]\nmotion_translation_mm = [2.0, 3.0]")
    cfg_path.write_text(cfg_path.read_text().replace("patch = 12", "patch = 16\npatch_dims = 2"))
    cfg = config.load_config(cfg_path)
    a, b = MotionSource(cfg, ["mr_a"], np.random.default_rng(0)).sample()
    assert a.shape == b.shape == (16, 16)
    weights = loop.run_training(str(cfg_path), quiet=True)
    card = json.loads(weights.with_suffix(".json").read_text())
    assert card["task"] == "motion" and card["arch"] == "motionnet" and card["training"]["steps"] == 2
    last = card["training"]["history"][-1]  # same grid: the inputs' own PSNR is logged beside the net's
    assert np.isfinite(last["val_psnr_input"]) and np.isfinite(last["val_psnr"])
    other = _write_config(tmp_path, data_root, "denoise-mr", DN_MODEL, '["mr_a"]', "noise_range = [0.02, 0.1]")
    other.write_text(other.read_text().replace("patch = 12", "patch = 12\npatch_dims = 2"))
    with pytest.raises(ValueError, match="patch_dims"):  # only the slice-trained motion net reads it
        config.load_config(other)


def test_motion_slices_contain_the_phase_encode_axis(tmp_path: Path, data_root: Path) -> None:
    """A slice across the phase-encode axis cannot show the ghosts: motion pairs give only slices containing it
    (here a target that varies along that axis alone is never constant); clean pairs give any orientation."""
    from MedSREnhanceLib.training.sources_motion import MotionSource

    cfg_path = _write_config(tmp_path, data_root, "motion-mr", MOTION_MODEL, '["mr_a"]',
                             "motion_rotation_deg = [2.0, 3.0]\nmotion_translation_mm = [2.0, 3.0]\n"
                             "motion_pe_axes = [0]")
    cfg_path.write_text(cfg_path.read_text().replace("patch = 12", "patch = 16\npatch_dims = 2"))
    src = MotionSource(config.load_config(cfg_path), ["mr_a"], np.random.default_rng(0))
    x, _, w, pe = src.items[0]
    assert pe == 2  # index axis i is the array's last (z, y, x)
    ramp = np.broadcast_to(np.arange(x.shape[2], dtype=np.float32), x.shape).copy()
    src.items = [(x, ramp, w, pe)]
    assert all(float(src.sample()[1].std()) > 0 for _ in range(40))
    src.items = [(x, ramp, w, None)]
    assert any(float(src.sample()[1].std()) == 0 for _ in range(40))


def test_ct_throughplane_source_thickens_in_plane_axes_in_hu(tmp_path: Path, data_root: Path) -> None:
    """normalisation = "ct": HU clipped to -1024..3071 and scaled as at inference; a 3 mm-slice CT is only
    thickened along its fine in-plane axes; the card says CT."""
    path = _write_config(tmp_path, data_root, "throughplane", TP_MODEL, '["ct_a"]', "factor_range = [2.0, 3.0]")
    path.write_text(path.read_text().replace('val_ids = ["mr_b"]', "val_ids = []").replace(
        "patch = 12", 'patch = 12\nnormalisation = "ct"\nzscore_variants = false'))
    cfg = config.load_config(path)
    src = sources_mr.ThroughPlaneSource(cfg, ["ct_a"], np.random.default_rng(0))
    up, hr, axis, others, _ = src.items[0]
    assert axis in (0, 1) and others == [1 - axis]  # i or j: k (3 mm) is never the one thickened
    hu = normalise.forward(np.array([-1000.0, 0.0]), "ct")[0]
    assert np.isclose(hr.min(), hu[0]) and abs(float(np.median(hr[hr > 0.5])) - 0.94) < 0.1  # air, tissue ~-60 HU
    weights = loop.run_training(str(path), quiet=True)
    card = json.loads(weights.with_suffix(".json").read_text())
    assert (card["modality"], card["normalisation"], card["task"]) == ("ct", "ct", "sr")


def test_throughplane_source_trains_on_coarser_grids_of_its_volumes(tmp_path: Path, data_root: Path) -> None:
    """[degrade] downsample_range: every refresh k-space-truncates each base along its fine axes (the volume and
    its z-scored copy alike, before the randomised appearance); the pairs and sampling weights are on that grid, and
    an axis that would fall under MIN_AXIS voxels keeps its own."""
    path = _write_config(tmp_path, data_root, "throughplane", TP_MODEL, '["mr_a"]',
                         "factor_range = [2.0, 3.0]\ndownsample_range = [1.25, 1.25]")
    cfg = config.load_config(path)
    src = sources_mr.ThroughPlaneSource(cfg, ["mr_a"], np.random.default_rng(0))
    vol = src.vols[0]
    expected = degrade.kspace_truncation(vol, (1.25, 1.25, 1.25)).array.shape
    assert expected != vol.array.shape
    for up, hr, axis, others, w in src.items:  # the volume, then its z-scored copy
        # (the pair is cropped to the B-spline's grid, which may be a voxel shorter along the thickened axis)
        assert up.shape == hr.shape and all(0 <= e - n <= 1 for n, e in zip(hr.shape, expected))
        assert w.shape == tuple(-(-n // 4) for n in expected)
    assert src.items[1][1].min() < 0 <= src.items[0][1].min()  # the copy stays signed, the magnitude >= 0
    src.refresh()
    assert all(0 <= e - n <= 1 for n, e in zip(src.items[0][1].shape, expected))
    assert src._coarser(Volume(np.ones((18, 30, 40), np.float32))).array.shape == (18, 24, 32)  # k keeps 18
    x, y = src.batch(2)[:2]
    assert tuple(x.shape) == tuple(y.shape)


def test_sr_source_trains_on_coarser_grids_of_its_volumes(tmp_path: Path, data_root: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """[degrade] downsample_range for task sr: every refresh k-space-truncates each volume by a factor drawn from it
    (the HR target on that grid, the LR input its truncation by the scale); an axis that would keep fewer than
    MIN_LR_AXIS LR voxels keeps its grid; [1, 1] draws nothing (earlier configs' pairs unchanged)."""
    monkeypatch.setattr(sources_mr.SRSource, "MIN_LR_AXIS", 8)
    path = _write_config(tmp_path, data_root, "sr", SR_MODEL, '["mr_a"]', "downsample_range = [1.5, 1.5]")
    src = sources_mr.SRSource(config.load_config(path), ["mr_a"], np.random.default_rng(0))
    vol = src.bases[0]  # 21 x 26 x 25 (z, y, x): k (z) would keep 7 LR voxels, so only i and j are truncated
    expected = degrade.kspace_truncation(vol, (1.5, 1.5, 1.0)).array.shape
    lr, hr = src.items[0][:2]
    assert hr.shape == tuple(n - n % 2 for n in expected) and lr.shape == tuple(n // 2 for n in hr.shape)
    src.refresh()
    assert src.items[0][1].shape == hr.shape
    plain = sources_mr.SRSource(config.load_config(_write_config(tmp_path, data_root, "sr", SR_MODEL, '["mr_a"]')),
                                ["mr_a"], np.random.default_rng(0))
    assert plain.items[0][1].shape == tuple(n - n % 2 for n in vol.array.shape)
    assert plain.rng.random() == np.random.default_rng(0).random()  # no draw without the jitter or randomise


def test_throughplane_source_takes_a_volume_with_one_fine_axis(tmp_path: Path, data_root: Path) -> None:
    """A 1.15x1.15x1.0 mm MPRAGE has one axis finer than the others by >10%: that axis is thickened and the patch
    plane takes another axis (it used to find no second axis and fail on the first batch)."""
    image = sitk.GetImageFromArray(_phantom((24, 22, 23), 7, False))
    image.SetSpacing((1.15, 1.15, 1.0))
    sitk.WriteImage(image, str(data_root / "mr" / "mr_one_fine.nii.gz"))
    manifest = json.loads((data_root / "MANIFEST.json").read_text())
    manifest.append({"id": "mr_one_fine", "file": "mr/mr_one_fine.nii.gz", "weights_ok": "yes"})
    (data_root / "MANIFEST.json").write_text(json.dumps(manifest))
    with (data_root / "sources.toml").open("a") as f:
        f.write('\n[volumes.mr_one_fine]\nroot = "shared"\ngroup = "one-fine"\nsource = "synthetic"\n'
                'licence = "test"\nweights_ok = "yes"\n')
    path = _write_config(tmp_path, data_root, "throughplane", TP_MODEL, '["mr_one_fine"]',
                         "factor_range = [2.0, 3.0]")
    cfg = config.load_config(path)
    src = sources_mr.ThroughPlaneSource(cfg, ["mr_one_fine"], np.random.default_rng(0))
    for up, hr, axis, others, _ in src.items:
        assert axis == 2 and others and 2 not in others  # k (1.0 mm) thickened; the plane's other axis is i or j
    x, y = src.batch(4)[:2]
    assert tuple(x.shape) == tuple(y.shape) and tuple(x.shape[-2:]) == (12, 12)
    assert bool(np.isfinite(np.asarray(x)).all())


def test_motion_options_belong_to_the_motion_task(tmp_path: Path, data_root: Path) -> None:
    with pytest.raises(ValueError, match="motion-mr"):
        config.load_config(_write_config(tmp_path, data_root, "denoise-mr", DN_MODEL, '["mr_a"]',
                                         "noise_range = [0.02, 0.1]\nmotion_rotation_deg = [1.0, 2.0]"))
    with pytest.raises(ValueError, match="motion-mr"):
        config.load_config(_write_config(tmp_path, data_root, "motion-mr", DN_MODEL, '["mr_a"]'))


class _RunsCode:
    """A pickle that would run code when loaded with weights_only=False."""

    def __reduce__(self):  # noqa: D105
        return (print, ("this ran while loading a checkpoint",))


def test_resume_loads_checkpoints_as_data_only(tmp_path: Path) -> None:
    """Issue 17: a resume checkpoint is loaded with weights_only=True, so a crafted pickle is refused."""
    import pickle

    import torch

    path = tmp_path / "evil.pt"
    torch.save({"model": _RunsCode()}, path)
    with pytest.raises(pickle.UnpicklingError):
        loop.resume_from(path, None, None)  # type: ignore[arg-type]


@pytest.mark.slow  # SR pairs (k-space truncation of the volumes) plus a feature-net pretext: ~1 min when loaded
def test_adversarial_fine_tune_trains_checkpoints_and_resumes(tmp_path: Path, data_root: Path) -> None:
    degrade = "scale = 2\n\n[adversarial]\ndiscriminator_channels = 4\nfeature_channels = 4\nfeature_steps = 2\n" \
              "adversarial_weight = 0.01\ndiscriminator_warmup = 1"
    cfg = _write_config(tmp_path, data_root, "sr", SR_MODEL, '["mr_a"]', degrade)
    weights = loop.run_training(str(cfg), quiet=True)
    card = json.loads(weights.with_suffix(".json").read_text())
    assert card["config"]["adversarial"]["feature_steps"] == 2
    assert "adversarial_d" in card["training"]["history"][-1] and "adversarial_g" in card["training"]["history"][-1]
    ckpt = torch.load(tmp_path / "runs" / "tiny-sr" / "checkpoint.pt", weights_only=True)
    assert ckpt["adversarial"]["steps"] == 2  # one discriminator step per generator step, checkpointed
    assert (tmp_path / "runs" / "tiny-sr" / "feature_net.pt").exists()
    longer = _write_config(tmp_path, data_root, "sr", SR_MODEL, '["mr_a"]', degrade, steps=3)
    loop.run_training(str(longer), resume=True, quiet=True)
    ckpt = torch.load(tmp_path / "runs" / "tiny-sr" / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 3 and ckpt["adversarial"]["steps"] == 3  # the discriminator resumed, not restarted
    assert json.loads(weights.with_suffix(".json").read_text())["training"]["feature_net_pretext_loss"] == []


def test_grown_net_starts_as_the_trained_one(tmp_path: Path, data_root: Path) -> None:
    from MedSREnhanceLib.models.srnet import SRNet

    torch.manual_seed(0)
    small = SRNet(scale=2, channels=4, blocks=1).eval()
    for p in small.parameters():  # a trained-looking net: the zero-initialised tail would hide a broken transfer
        torch.nn.init.normal_(p, std=0.1)
    torch.save(small.state_dict(), tmp_path / "small.pt")
    cfg = _write_config(tmp_path, data_root, "sr", SR_MODEL.replace("blocks = 1", "blocks = 3"), '["mr_a"]', "scale = 2")
    grow = (f'init_from = "{tmp_path / "small.pt"}"\ninit_strict = false\n'
            'init_zero = ["body.1.conv2", "body.2.conv2"]\n')
    cfg.write_text(cfg.read_text().replace("[data]", grow + "\n[data]"))
    grown = loop.build_initial_model(config.load_config(cfg)).eval()
    x = torch.rand(1, 1, 6, 7, 5)
    with torch.no_grad():
        assert torch.allclose(grown(x), small(x), atol=1e-6)
        assert grown.body[1].conv1.weight.abs().sum() > 0  # new blocks: only their last conv starts at zero
    cfg.write_text(cfg.read_text().replace('"body.1.conv2", "body.2.conv2"', '"body.7.conv2"'))
    with pytest.raises(ValueError, match="init_zero"):
        loop.build_initial_model(config.load_config(cfg))


def test_card_records_the_weights_a_fine_tune_started_from(tmp_path: Path, data_root: Path) -> None:
    """init_sha256 is the file init_from named when training began, even when the run writes over that file (a
    staged chain whose stages share one weights file)."""
    from MedSREnhanceLib.models.srnet import SRNet

    torch.manual_seed(0)
    torch.save(SRNet(scale=2, channels=4, blocks=1).state_dict(), tmp_path / "tiny-sr.pt")
    before = sha256_of(tmp_path / "tiny-sr.pt")
    cfg = _write_config(tmp_path, data_root, "sr", SR_MODEL, '["mr_a"]', "scale = 2")
    cfg.write_text(cfg.read_text().replace("[data]", f'init_from = "{tmp_path / "tiny-sr.pt"}"\n\n[data]'))
    weights = loop.run_training(str(cfg), quiet=True, out_dir=str(tmp_path))
    assert weights == tmp_path / "tiny-sr.pt" and sha256_of(weights) != before  # it wrote over its start
    assert json.loads(weights.with_suffix(".json").read_text())["training"]["init_sha256"] == before


def test_card_config_names_folders_beside_the_repository_relative_to_it(tmp_path: Path) -> None:
    """The resolved config in a card: folders next to the repository relative to its root, as configs write them
    (no machine's absolute path); a folder elsewhere stays absolute."""
    from MedSREnhanceLib.training.cards import portable_config
    from MedSREnhanceLib.training.config import REPO_ROOT, load_config

    cfg = load_config(REPO_ROOT / "configs" / "mr-throughplane.toml")
    assert Path(cfg.data.data_root).is_absolute()  # resolved when loaded
    cfg.train.out_dir = str(tmp_path)
    config = portable_config(cfg)
    assert config["data"]["data_root"] == "../shared/data" and config["train"]["run_dir"] == "../runs"
    assert config["train"]["out_dir"] == (str(tmp_path) if not tmp_path.is_relative_to(REPO_ROOT.parent)
                                          else os.path.relpath(tmp_path, REPO_ROOT))
