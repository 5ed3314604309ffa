"""Domain randomisation (training/randomise.py) and the SR pairs built from randomised volumes."""
from __future__ import annotations

import numpy as np
import pytest

from MedSREnhanceLib import simulate
from MedSREnhanceLib.core.volume import Volume
from MedSREnhanceLib.training import randomise as rz
from MedSREnhanceLib.training import sources_mr

from test_train import data_root  # noqa: F401  (fixture)


def _head(shape: tuple[int, int, int] = (24, 28, 26)) -> np.ndarray:
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(x**2 + y**2 + z**2)
    return np.where(r < 0.8, 0.4 + 0.6 * (r < 0.5) + 0.1 * np.sin(6 * x), 0.0).astype(np.float32)


def test_contrast_curve_keeps_background_and_can_invert() -> None:
    x = np.linspace(0.0, 1.2, 200).astype(np.float32)
    rng = np.random.default_rng(0)
    mono = rz.contrast_curve(x, rng, 4, True, 0.0)
    assert mono[0] == 0.0 and np.all(np.diff(mono) >= -1e-7)
    inverted = [rz.contrast_curve(x, np.random.default_rng(s), 4, False, 0.0) for s in range(20)]
    assert all(c[0] == 0.0 for c in inverted)
    assert any(np.any(np.diff(c) < -1e-3) for c in inverted)  # some curves turn bright tissue dark
    gamma = rz.contrast_curve(x, np.random.default_rng(1), 4, True, np.log(2.0))
    base = rz.contrast_curve(x, np.random.default_rng(1), 4, True, 0.0)
    np.testing.assert_allclose(gamma, base**2, rtol=1e-5, atol=1e-7)


def test_bias_field_is_smooth_and_centred_on_one() -> None:
    field = rz.bias_field((30, 32, 34), np.random.default_rng(0), 0.3, 4)
    assert field.shape == (30, 32, 34) and field.min() > 0
    assert abs(float(np.log(field).mean())) < 0.3
    assert float(np.abs(np.diff(np.log(field), axis=0)).max()) < 0.15  # no voxel-scale structure
    assert np.allclose(rz.bias_field((8, 8, 8), np.random.default_rng(0), 0.0, 4), 1.0)


def test_kspace_lowpass_identity_at_one_and_removes_high_frequencies() -> None:
    x = np.random.default_rng(0).normal(size=(16, 18, 20)).astype(np.float32)
    np.testing.assert_allclose(rz.kspace_lowpass(x, (1.0, 1.0, 1.0)), x, atol=1e-5)
    low = rz.kspace_lowpass(x, (2.0, 1.0, 1.0))
    spec = np.abs(np.fft.fft(low, axis=0))
    assert spec[6:11].max() < 1e-3 * np.abs(np.fft.fft(x, axis=0)).max()  # |f| > 1/4 of axis 0 is gone


def test_randomise_off_is_a_renormalisation_and_on_changes_the_volume() -> None:
    x = _head()
    off, record = rz.randomise(x, np.random.default_rng(0), rz.RandomiseConfig())
    assert record == {}
    np.testing.assert_allclose(off * np.percentile(x[x > 0], 99.5), x, rtol=1e-5)
    on_cfg = rz.RandomiseConfig(contrast_prob=1, bias_prob=1, blur_prob=1, ringing_prob=1, noise_prob=1,
                                noise_range=[0.02, 0.02])
    a, rec_a = rz.randomise(x, np.random.default_rng(3), on_cfg)
    b, _ = rz.randomise(x, np.random.default_rng(3), on_cfg)
    np.testing.assert_array_equal(a, b)  # reproducible from the generator
    assert set(rec_a) == {"contrast", "bias_std", "blur_sigma", "ringing_factor", "noise_sigma"}
    assert a.min() >= 0 and np.percentile(a[a > 0], 99.5) == pytest.approx(1.0, rel=1e-3)
    assert np.abs(a - off).mean() > 0.01


def test_randomise_config_is_checked() -> None:
    with pytest.raises(ValueError, match="noise_prob"):
        rz.RandomiseConfig(noise_prob=1.5).check()
    with pytest.raises(ValueError, match="ringing_factor"):
        rz.RandomiseConfig(ringing_factor=[0.5, 1.0]).check()
    assert not rz.RandomiseConfig().enabled() and rz.RandomiseConfig(bias_prob=0.1).enabled()


def test_isotropic_target_makes_thick_slice_volumes_isotropic() -> None:
    vol = Volume(_head((10, 40, 40)), spacing=(0.5, 0.5, 2.0))
    iso = sources_mr.isotropic_target(vol)
    assert np.allclose(iso.spacing, 2.0, rtol=0.05) and iso.array.shape == (10, 10, 10)
    same = Volume(_head(), spacing=(1.0, 1.05, 1.0))
    assert sources_mr.isotropic_target(same) is same


def test_randomised_sr_pairs_stay_exact(tmp_path, monkeypatch) -> None:
    """Randomising before the truncation keeps each pair an exact acquisition: truncating the target reproduces
    the input (the SR pairs would teach a wrong acquisition otherwise); a refresh draws a new appearance."""
    from types import SimpleNamespace

    from MedSREnhanceLib.training import pairs

    vol = Volume(_head((24, 28, 26)) * 300.0)
    monkeypatch.setattr(pairs.PairSource, "__init__", lambda self, cfg, ids, rng: setattr(self, "vols", [vol])
                        or setattr(self, "cfg", cfg) or setattr(self, "rng", rng))
    cfg = SimpleNamespace(
        degrade=SimpleNamespace(scale=2, noise_prob=0.0, downsample_range=[1.0, 1.0]),
        data=SimpleNamespace(isotropise=False, zscore_variants=False, patch=12),
        randomise=rz.RandomiseConfig(contrast_prob=1, bias_prob=1, blur_prob=1, ringing_prob=1, noise_prob=1,
                                     noise_range=[0.01, 0.03]))
    source = sources_mr.SRSource(cfg, ["x"], np.random.default_rng(0))  # type: ignore[arg-type]
    lr, hr, _, _ = source.items[0]
    again = simulate.kspace_truncation(Volume(hr), (2, 2, 2)).array
    np.testing.assert_allclose(again, lr, atol=1e-4 * float(np.abs(lr).max()))
    source.refresh()
    assert not np.allclose(source.items[0][1], hr)


def test_randomise_in_configs(tmp_path, data_root) -> None:  # noqa: F811
    """[randomise] trains through-plane and MR denoising pairs too; CT (HU, no magnitude curve) refuses it."""
    from MedSREnhanceLib.training import config, loop
    from test_train import DN_MODEL, TP_MODEL, _write_config

    table = "\n[randomise]\ncontrast_prob = 1.0\nbias_prob = 1.0\nnoise_prob = 1.0\n"
    cfg = _write_config(tmp_path, data_root, "throughplane", TP_MODEL, '["mr_a", "mr_aniso"]',
                        "factor_range = [2.0, 4.0]", steps=1)
    cfg.write_text(cfg.read_text() + table)
    assert loop.run_training(str(cfg), quiet=True).exists()
    ct = cfg.read_text().replace('[data]\n', '[data]\nnormalisation = "ct"\n')
    cfg.write_text(ct)
    with pytest.raises(ValueError, match="magnitude"):
        config.load_config(cfg)
    dn = _write_config(tmp_path, data_root, "denoise-mr", DN_MODEL, '["mr_a"]', "noise_range = [0.02, 0.1]",
                       steps=1)
    dn.write_text(dn.read_text() + table)
    assert loop.run_training(str(dn), quiet=True).exists()  # MR denoising pairs randomise too
    dn.write_text(dn.read_text().split("[randomise]")[0].replace('[data]\n', '[data]\nisotropise = true\n'))
    with pytest.raises(ValueError, match="isotropise"):
        config.load_config(dn)


def test_randomised_denoise_pairs_redraw_the_appearance_and_reread_the_own_noise(monkeypatch) -> None:
    """With [randomise] each refresh gives the denoiser new targets, and the target's own noise (what
    own_noise_correction keeps out of the loss) is read on the randomised volume: noise the randomiser adds raises
    the retained share, without it the clean phantom retains ~nothing."""
    from types import SimpleNamespace

    from MedSREnhanceLib.training import pairs

    vol = Volume(_head((32, 32, 32)) * 300.0)
    monkeypatch.setattr(pairs.PairSource, "__init__", lambda self, cfg, ids, rng: setattr(self, "vols", [vol])
                        or setattr(self, "cfg", cfg) or setattr(self, "rng", rng))

    def source(randomise: rz.RandomiseConfig) -> sources_mr.MRDenoiseSource:
        cfg = SimpleNamespace(
            degrade=SimpleNamespace(target_noise_max=0.0, own_noise_correction=True, downsample_range=[1.0, 1.0],
                                    noise_range=[0.03, 0.03]),
            data=SimpleNamespace(zscore_variants=False, patch=12, normalisation="mr-noise", task="denoise-mr"),
            randomise=randomise)
        return sources_mr.MRDenoiseSource(cfg, ["x"], np.random.default_rng(0))  # type: ignore[arg-type]

    plain = source(rz.RandomiseConfig())
    noisy = source(rz.RandomiseConfig(contrast_prob=1, noise_prob=1, noise_range=[0.03, 0.03]))
    assert plain.items[0][3] < 0.05 < noisy.items[0][3] < 0.9  # retention = own / (own + added) noise power
    target = noisy.items[0][1].copy()
    noisy.refresh()
    assert not np.allclose(noisy.items[0][1], target)
