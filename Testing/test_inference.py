"""Tiled inference: exactness of halo-cropped tiles, Gaussian blending, progress, cancel, OOM fallback, devices.

The nets are small random 3D CNNs built here (a few conv3d layers; pixel-shuffle upsampling for
super-resolution, isotropic and along one axis), so these tests check the tiling, not any trained model.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from MedSREnhanceLib.engine import inference  # noqa: E402
from MedSREnhanceLib.core.errors import CancelledError  # noqa: E402
from MedSREnhanceLib.engine.inference import (  # noqa: E402
    auto_tile, autocast_dtype, choose_device, is_oom, run_with_fallback, tile_budget, tiled_apply)

SHAPE = (37, 41, 29)  # odd on every axis, none a multiple of a tile


def shuffle3d(x: torch.Tensor, r: tuple[int, int, int]) -> torch.Tensor:
    """(B, C*r0*r1*r2, D, H, W) -> (B, C, D*r0, H*r1, W*r2): pixel shuffle with a factor per axis."""
    b, c, d, h, w = x.shape
    c_out = c // (r[0] * r[1] * r[2])
    x = x.view(b, c_out, r[0], r[1], r[2], d, h, w)  # (B, C, r0, r1, r2, D, H, W)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)  # (B, C, D, r0, H, r1, W, r2)
    return x.reshape(b, c_out, d * r[0], h * r[1], w * r[2])


class FCN(nn.Module):
    """``layers`` 3x3x3 convs with zero padding (receptive radius = layers), then an optional pixel shuffle
    with factor ``up`` per axis (D, H, W) and one 3x3x3 conv on the fine grid (radius +1 fine voxel)."""

    def __init__(self, layers: int = 3, width: int = 6, up: tuple[int, int, int] = (1, 1, 1), seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.up = up
        mods: list[nn.Module] = []
        c_in = 1
        for i in range(layers):
            c_out = width if i < layers - 1 else width * math.prod(up)
            mods += [nn.Conv3d(c_in, c_out, 3, padding=1), nn.GELU()]
            c_in = c_out
        self.body = nn.Sequential(*mods[:-1])
        self.tail = nn.Conv3d(width, 1, 3, padding=1) if up != (1, 1, 1) else nn.Conv3d(width, 1, 1)
        self.radius = layers + (1 if up != (1, 1, 1) else 0)  # in input voxels (a fine voxel <= an input voxel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        if self.up != (1, 1, 1):
            y = shuffle3d(y, self.up)
        return self.tail(y)


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    rng = np.random.default_rng(42)
    return rng.standard_normal(SHAPE).astype(np.float32)


def untiled(net: nn.Module, arr: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return net(torch.from_numpy(arr)[None, None])[0, 0].numpy()


CASES = {"scale1": (1, 1, 1), "x2": (2, 2, 2), "aniso_D3": (3, 1, 1), "aniso_W2": (1, 1, 2)}


@pytest.mark.parametrize("up", list(CASES.values()), ids=list(CASES))
@pytest.mark.parametrize("tile", [16, (7, 11, 13)], ids=["16", "7x11x13"])
def test_crop_mode_equals_untiled(volume: np.ndarray, up, tile) -> None:
    net = FCN(up=up).eval()
    ref = untiled(net, volume)
    assert ref.shape == tuple(n * s for n, s in zip(SHAPE, up))
    out = tiled_apply(volume, net, scale=up, tile=tile, halo=net.radius, mode="crop")
    assert out.shape == ref.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * float(np.abs(ref).max()))


def test_crop_mode_with_too_small_halo_differs(volume: np.ndarray) -> None:
    """The equality above is not vacuous: a halo below the receptive radius leaves visible seams."""
    net = FCN(layers=4).eval()
    ref = untiled(net, volume)
    out = tiled_apply(volume, net, tile=16, halo=1, mode="crop")
    assert np.abs(out - ref).max() > 1e-3 * np.abs(ref).max()
    exact = tiled_apply(volume, net, tile=16, halo=4, mode="crop")
    np.testing.assert_allclose(exact, ref, atol=1e-5 * float(np.abs(ref).max()))


def test_single_tile_larger_than_volume(volume: np.ndarray) -> None:
    net = FCN(up=(2, 2, 2)).eval()
    calls = []
    out = tiled_apply(volume, net, scale=(2, 2, 2), tile=512, halo=4, progress=calls.append)
    np.testing.assert_allclose(out, untiled(net, volume), atol=1e-5)
    assert [(p.done, p.total) for p in calls] == [(0, 1), (1, 1)]  # one window: its start and its end


class Pointwise(nn.Module):
    """A 1x1x1 net: any window gives exactly the right values, so blending must reproduce them exactly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(2 * x) + 0.5 * x


class Smooth(nn.Module):
    """A smooth local net (5x5x5 box filter, zero padded): window edges are slightly wrong, blending hides it."""

    def __init__(self, up: int = 1):
        super().__init__()
        self.up = up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.avg_pool3d(x, 5, stride=1, padding=2, count_include_pad=True)
        if self.up > 1:
            y = nn.functional.interpolate(y, scale_factor=self.up, mode="nearest")
        return y


def smooth_volume() -> np.ndarray:
    z, y, x = np.meshgrid(*[np.linspace(0, 3, n) for n in SHAPE], indexing="ij")
    return (np.sin(x) * np.cos(1.3 * y) + 0.5 * z + 2).astype(np.float32)


def test_blend_mode_exact_for_pointwise(volume: np.ndarray) -> None:
    out = tiled_apply(volume, Pointwise(), tile=(12, 17, 10), mode="blend", overlap=0.5)
    np.testing.assert_allclose(out, untiled(Pointwise(), volume), atol=1e-5)


@pytest.mark.parametrize("up", [1, 2])
def test_blend_mode_close_for_smooth_net(up: int) -> None:
    arr = smooth_volume()
    net = Smooth(up)
    ref = untiled(net, arr)
    out = tiled_apply(arr, net, scale=(up,) * 3, tile=16, mode="blend", overlap=0.5)
    assert out.shape == ref.shape
    # The outer 2 voxels are zero-padded in the untiled run too; compare the interior, where only window seams
    # could differ. Blending must keep them small next to an unblended stitch of the same windows.
    core = tuple(slice(2 * up, -2 * up) for _ in range(3))
    err = np.abs(out - ref)[core]
    naive = tiled_apply(arr, net, scale=(up,) * 3, tile=16, halo=0, mode="crop")
    naive_err = np.abs(naive - ref)[core]
    peak = float(np.abs(ref).max())
    assert err.mean() < 0.002 * peak  # was 0.008 with the old 1e-3 weight floor
    assert err.max() < 0.05 * peak
    assert err.mean() < 0.1 * naive_err.mean() and err.max() < 0.5 * naive_err.max()


def test_modes_and_shapes_validated(volume: np.ndarray) -> None:
    with pytest.raises(ValueError, match="mode"):
        tiled_apply(volume, Pointwise(), mode="mosaic")
    with pytest.raises(ValueError, match="3D"):
        tiled_apply(volume[0], Pointwise())


# ------------------------------------------------------------------------------------------- progress/cancel


class Clock:
    """A fake perf_counter advanced by the net itself: one second per tile."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_counts_and_eta(monkeypatch, volume: np.ndarray) -> None:
    clock = Clock()
    monkeypatch.setattr(inference.time, "perf_counter", clock)

    def net(x: torch.Tensor) -> torch.Tensor:
        clock.now += 1.0
        return x

    reports = []
    tile = 16
    tiled_apply(volume, net, tile=tile, halo=2, progress=reports.append)
    total = math.prod(math.ceil(n / tile) for n in SHAPE)
    assert reports[0].done == 0 and reports[0].eta is None  # a first report before the first window
    reports = reports[1:]
    assert [p.done for p in reports] == list(range(1, total + 1))
    assert {p.total for p in reports} == {total}
    assert [p.elapsed for p in reports] == pytest.approx([float(i) for i in range(1, total + 1)])
    etas = [p.eta for p in reports]
    assert etas == pytest.approx([float(total - i) for i in range(1, total + 1)])  # 1 s per remaining tile
    assert all(a > b for a, b in zip(etas, etas[1:])) and etas[-1] == 0


def test_progress_in_blend_mode_counts_windows(volume: np.ndarray) -> None:
    reports = []
    tiled_apply(volume, Pointwise(), tile=20, mode="blend", overlap=0.25, progress=reports.append)
    assert reports[-1].done == reports[-1].total == len(reports) - 1 and reports[-1].eta == 0


def test_progress_inside_a_window_counts_ensemble_members(monkeypatch, volume: np.ndarray) -> None:
    """An 8-member flip ensemble reports each member, so one long window is 8 reports with a falling ETA."""
    from MedSREnhanceLib.models.ensemble import flip_ensemble

    clock = Clock()
    monkeypatch.setattr(inference.time, "perf_counter", clock)

    class Ensemble(torch.nn.Module):
        ensemble = 8

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            def member(t: torch.Tensor) -> torch.Tensor:
                clock.now += 1.0
                return t
            return flip_ensemble(member, x, self.ensemble, 3)

    reports = []
    out = tiled_apply(volume, Ensemble(), tile=64, halo=2, progress=reports.append)  # one window
    np.testing.assert_allclose(out, volume, atol=1e-6)
    assert [p.done for p in reports] == list(range(0, 9)) and {p.total for p in reports} == {8}
    assert [p.eta for p in reports[1:]] == pytest.approx([float(8 - i) for i in range(1, 9)])
    assert {p.stage for p in reports} == {"inference"}


def test_cancel_inside_a_window(volume: np.ndarray) -> None:
    from MedSREnhanceLib.models.ensemble import flip_ensemble

    members = []

    def net(x: torch.Tensor) -> torch.Tensor:
        return flip_ensemble(lambda t: members.append(1) or t, x, 8, 3)

    with pytest.raises(CancelledError):
        tiled_apply(volume, net, tile=64, halo=2, cancel=lambda: len(members) >= 3)
    assert len(members) == 3  # stopped after the member that saw the cancel, not at the end of the window


@pytest.mark.parametrize("stop_after", [0, 1, 5])
def test_cancel_between_tiles(volume: np.ndarray, stop_after: int) -> None:
    calls = {"net": 0, "cancel": 0}

    def net(x: torch.Tensor) -> torch.Tensor:
        calls["net"] += 1
        return x

    def cancel() -> bool:
        calls["cancel"] += 1
        return calls["net"] >= stop_after

    with pytest.raises(CancelledError):
        tiled_apply(volume, net, tile=8, halo=1, cancel=cancel)
    assert calls["net"] == stop_after  # stopped within one tile of the request
    assert calls["cancel"] == stop_after + 1


def test_cancel_never_true_runs_everything(volume: np.ndarray) -> None:
    out = tiled_apply(volume, Pointwise(), tile=20, halo=0, cancel=lambda: False)
    np.testing.assert_allclose(out, untiled(Pointwise(), volume), atol=1e-6)


# --------------------------------------------------------------------------------------------- OOM fallback


def test_is_oom() -> None:
    assert is_oom(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_oom(RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"))
    assert is_oom(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert not is_oom(RuntimeError("Expected all tensors to be on the same device"))
    assert not is_oom(ValueError("out of memory"))  # only runtime errors from torch count


class FakeGPU:
    """Pretend ``torch.device("cuda")`` works: the real ``tiled_apply`` runs (on the CPU), while the net built
    for the fake GPU raises an out-of-memory error on any input block larger than ``limit`` voxels."""

    def __init__(self, monkeypatch, limit: int, error: Exception):
        self.calls: list[tuple[str, int]] = []
        self.built: list[str] = []
        self.limit, self.error = limit, error
        real = inference.tiled_apply

        def fake_tiled_apply(array, net, *, device="cpu", tile=64, dtype=None, **kw):
            self.calls.append((torch.device(device).type, tile))
            return real(array, net, device="cpu", tile=tile, dtype=None, **kw)

        monkeypatch.setattr(inference, "tiled_apply", fake_tiled_apply)
        monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
        self.net = FCN(up=(2, 2, 2), seed=3).eval()

    def make_net(self, device: torch.device):
        self.built.append(device.type)

        def net(x: torch.Tensor) -> torch.Tensor:
            if device.type == "cuda" and x.numel() > self.limit:
                raise self.error
            return self.net(x)

        return net


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8 GiB"),
                                   RuntimeError("CUDA out of memory. Tried to allocate 8.00 GiB")],
                         ids=["OutOfMemoryError", "RuntimeError"])
def test_oom_halves_the_tile_then_succeeds(monkeypatch, volume: np.ndarray, error: Exception) -> None:
    gpu = FakeGPU(monkeypatch, limit=(16 + 2 * 4) ** 3, error=error)  # fits tile 16 with halo 4, not 32
    messages: list[str] = []
    out, used = run_with_fallback(volume, gpu.make_net, scale=(2, 2, 2), halo=4,
                                  floats_per_voxel=8, device=torch.device("cuda"),
                                  precision="fp32", tile=64, messages=messages)
    assert gpu.calls == [("cuda", 64), ("cuda", 32), ("cuda", 16)]
    assert messages == ["cuda out of memory: retrying with tile 32", "cuda out of memory: retrying with tile 16"]
    assert used == torch.device("cuda")
    np.testing.assert_allclose(out, untiled(gpu.net, volume), atol=1e-5)


def test_oom_at_the_smallest_tile_falls_back_to_cpu(monkeypatch, volume: np.ndarray) -> None:
    gpu = FakeGPU(monkeypatch, limit=10, error=torch.cuda.OutOfMemoryError("CUDA out of memory"))
    messages: list[str] = []
    progress = []
    out, used = run_with_fallback(volume, gpu.make_net, scale=(2, 2, 2), halo=4,
                                  floats_per_voxel=8, device=torch.device("cuda"),
                                  precision="fp32", tile=32, messages=messages, min_tile=16, progress=progress.append)
    assert gpu.calls == [("cuda", 32), ("cuda", 16), ("cpu", 32)]
    assert gpu.built == ["cuda", "cuda", "cpu"]
    assert messages[-1] == "cuda out of memory even with tile 16: running on the CPU"
    assert used == torch.device("cpu")  # the result says where it was really computed
    assert len(messages) == 2
    np.testing.assert_allclose(out, untiled(gpu.net, volume), atol=1e-5)
    assert progress[-1].done == progress[-1].total  # the CPU run reported to the end


def test_non_oom_errors_are_not_retried(monkeypatch, volume: np.ndarray) -> None:
    gpu = FakeGPU(monkeypatch, limit=0, error=RuntimeError("Expected all tensors to be on the same device"))
    with pytest.raises(RuntimeError, match="same device"):
        run_with_fallback(volume, gpu.make_net, scale=(2, 2, 2), halo=4,
                          floats_per_voxel=8, device=torch.device("cuda"),
                          precision="fp32", tile=32)
    assert gpu.calls == [("cuda", 32)]


def test_oom_on_cpu_is_raised_not_looped(volume: np.ndarray) -> None:
    calls = []

    def make_net(device):
        def net(x):
            calls.append(x.shape)
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 TB: "
                               "out of memory")
        return net

    with pytest.raises(RuntimeError, match="out of memory"):
        run_with_fallback(volume, make_net, scale=(1, 1, 1), halo=2,
                          floats_per_voxel=8, device=torch.device("cpu"), tile=16)
    assert len(calls) == 1


def test_run_with_fallback_on_cpu_matches_untiled(volume: np.ndarray) -> None:
    net = FCN(up=(1, 1, 2)).eval()
    out, used = run_with_fallback(volume, lambda d: net.to(d), scale=(1, 1, 2), halo=net.radius, floats_per_voxel=6,
                                  device=torch.device("cpu"), tile=None, precision="fp32")  # tiling, not bf16
    np.testing.assert_allclose(out, untiled(net, volume), atol=1e-5)


# ---------------------------------------------------------------------------------------- device/precision


def test_choose_device() -> None:
    expected = "cuda" if torch.cuda.is_available() else (
        "mps" if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else "cpu")
    assert choose_device("auto").type == expected
    assert choose_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            choose_device("cuda")
        with pytest.raises(ValueError, match="CUDA"):
            choose_device("cuda:1")
    if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        with pytest.raises(ValueError, match="MPS"):
            choose_device("mps")
    with pytest.raises((ValueError, RuntimeError)):
        choose_device("gpu")


def test_choose_device_auto_prefers_cuda_then_mps(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert choose_device("auto").type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if getattr(torch.backends, "mps", None) is not None:
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
        assert choose_device("auto").type == "mps"
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert choose_device("auto").type == "cpu"


def test_autocast_dtype(monkeypatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(inference, "cpu_has_amx", lambda: False)
    assert autocast_dtype(cpu) is None  # fp32 on CPUs without AMX (bf16 would be emulated, far slower)
    monkeypatch.setattr(inference, "cpu_has_amx", lambda: True)
    assert autocast_dtype(cpu) is torch.bfloat16
    assert autocast_dtype(cpu, "fp32") is None and autocast_dtype(cuda, "fp32") is None
    assert autocast_dtype(cpu, "bf16") is torch.bfloat16
    assert autocast_dtype(cuda, "fp16") is torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype(cuda) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype(cuda) is torch.float16
    with pytest.raises(ValueError):
        autocast_dtype(cpu, "fp8")


def test_bf16_autocast_on_cpu_runs_and_is_close(volume: np.ndarray) -> None:
    net = FCN().eval()
    ref = untiled(net, volume)
    out = tiled_apply(volume, net, tile=20, halo=net.radius, dtype=torch.bfloat16)
    assert out.dtype == np.float32
    assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max() + 0.05
    assert not np.array_equal(out, ref)  # autocast really ran in bf16


def test_auto_tile_stays_within_the_budget_and_reads_fewest_voxels(monkeypatch) -> None:
    monkeypatch.setattr(inference, "_available_ram", lambda: 64e9)
    cpu = torch.device("cpu")
    shape, halo = (160, 256, 256), 24
    tile = auto_tile(shape, 52, cpu, halo, align=4)
    assert tile_budget(cpu) == inference.CPU_TILE_BUDGET  # capped, however much RAM there is
    reads = [n if t >= n else min(n, t + 2 * halo) for n, t in zip(shape, tile)]
    assert math.prod(reads) * 4 * 52 <= inference.CPU_TILE_BUDGET
    assert all(t % 4 == 0 for t in tile)

    def voxels_read(t: tuple[int, ...]) -> int:
        return math.prod(n + 2 * halo * (-(-n // c) - 1) for n, c in zip(shape, t))

    cube = max(c for c in range(4, 257, 4)  # the largest cubic core within the same budget
               if math.prod(min(n, c + 2 * halo) for n in shape) * 4 * 52 <= inference.CPU_TILE_BUDGET)
    assert voxels_read(tile) < 0.8 * voxels_read((cube,) * 3)  # non-cubic windows repeat fewer halos
    assert auto_tile((20, 30, 25), 52, cpu, 8) == (20, 30, 25)  # small volumes: one window, never beyond
    huge = auto_tile((512, 2048, 2048), 192, cpu, 9)  # long axes get more windows: still within the budget
    assert math.prod(t + 18 for t in huge) * 4 * 192 <= inference.CPU_TILE_BUDGET
    monkeypatch.setattr(inference, "_available_ram", lambda: 1e9)  # little RAM: a quarter of it
    small = auto_tile(shape, 52, cpu, halo, align=4)
    assert math.prod(n if t >= n else t + 2 * halo for n, t in zip(shape, small)) * 4 * 52 <= 0.25e9
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (2e9, 8e9))
    gpu = auto_tile((400, 400, 400), 230, torch.device("cuda"), 8)
    assert math.prod(min(400, t + 16) for t in gpu) * 4 * 230 <= 0.5 * 2e9


def test_auto_tile_oom_on_gpu_replans_smaller(monkeypatch, volume: np.ndarray) -> None:
    """Without a user tile, each GPU out-of-memory re-plans the windows with half their side, then the CPU."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (4e9, 8e9))
    gpu = FakeGPU(monkeypatch, limit=(20 + 8) ** 3, error=torch.cuda.OutOfMemoryError("CUDA out of memory"))
    messages: list[str] = []
    out, used = run_with_fallback(volume, gpu.make_net, scale=(2, 2, 2), halo=4, floats_per_voxel=8,
                                  device=torch.device("cuda"), precision="fp32", messages=messages, min_tile=8)
    assert used == torch.device("cuda") and len(messages) >= 1
    assert all(m.startswith("cuda out of memory: retrying with tile ") for m in messages)
    np.testing.assert_allclose(out, untiled(gpu.net, volume), atol=1e-5)


@pytest.mark.slow
def test_bench_tiling_script_smoke() -> None:
    """benchmarks/bench_tiling.py runs end to end on a tiny volume and finds tiled == untiled."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_tiling.py"
    proc = subprocess.run([sys.executable, str(script), "--shape", "23,21,19", "--tiles", "8", "--threads", "1",
                           "--width", "4", "--layers", "3"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(ln.startswith("untiled") for ln in lines) and any(ln.startswith("tile 8") for ln in lines)
    diff = [ln for ln in lines if "max |tiled - untiled|" in ln]
    assert diff and float(diff[0].rsplit("=", 1)[1]) < 1e-5


def test_run_with_fallback_aligns_tiles_for_downsampling_nets() -> None:
    """A user tile of 13 and halo 10 become 16 and 12 for a U-Net (shift-equivariant by 4): tiles stay exact."""
    from MedSREnhanceLib.models.denoiser import Denoiser

    torch.manual_seed(0)
    net = Denoiser(channels=2, spatial_dims=3).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.1)
    vol = np.random.default_rng(0).random((70, 61, 58), dtype=np.float32)
    with torch.no_grad():
        whole = net(torch.from_numpy(vol)[None, None])[0, 0].numpy()
    seen: list[tuple[int, ...]] = []

    def make_net(d: torch.device) -> nn.Module:
        net.register_forward_pre_hook(lambda m, inp: seen.append(tuple(inp[0].shape[2:])))
        return net.to(d)

    out, _ = run_with_fallback(vol, make_net, scale=(1, 1, 1), halo=net.halo - 2, floats_per_voxel=2,
                               device=torch.device("cpu"), tile=13, align=net.shift_multiple, precision="fp32")
    assert min(seen) < (70, 61, 58)  # really tiled
    np.testing.assert_allclose(out, whole, atol=1e-4 * float(np.abs(whole).max()))
    misaligned, _ = run_with_fallback(vol, make_net, scale=(1, 1, 1), halo=net.halo, floats_per_voxel=2,
                                   device=torch.device("cpu"), tile=13, precision="fp32")
    assert np.abs(misaligned - whole).max() > 1e-3 * float(np.abs(whole).max())  # the failure align prevents
