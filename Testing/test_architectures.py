"""Architectures: output shapes, the halo covers the receptive field, residual starts, 3D pixel shuffle."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from MedSREnhanceLib.models.denoiser import Denoiser
from MedSREnhanceLib.models.motionnet import MotionNet, UNet2d
from MedSREnhanceLib.models.swinplane import SwinThroughPlaneNet
from MedSREnhanceLib.models.srnet import SRNet, pixel_shuffle_nd
from MedSREnhanceLib.models.throughplane import ThroughPlaneNet

torch.set_num_threads(1)


def _randomise(net: torch.nn.Module) -> torch.nn.Module:
    """Non-zero weights everywhere (the last layers start at zero, which would hide the receptive field)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.2)
    return net.eval()


def _receptive_radius_ok(net: torch.nn.Module, shape: tuple[int, ...], scale: int) -> None:
    """Perturbing an input voxel farther than ``halo`` from a centre voxel never changes that output."""
    x = torch.rand((1, 1) + shape)
    centre = tuple(n // 2 for n in shape)
    out_centre = tuple(c * scale for c in centre)
    with torch.no_grad():
        base = net(x)[(0, 0) + out_centre]
        for axis in range(len(shape)):
            for dist, should_change in ((net.halo + 1, False), (net.halo - 1, True)):
                if centre[axis] + dist >= shape[axis]:
                    continue
                y = x.clone()
                idx = list(centre)
                idx[axis] += dist
                y[(0, 0) + tuple(idx)] += 5.0
                changed = not torch.allclose(net(y)[(0, 0) + out_centre], base, atol=1e-6)
                assert changed == should_change, (axis, dist, net.halo)


def test_pixel_shuffle_3d_matches_nearest_upsample_of_constant_subpixels() -> None:
    x = torch.arange(8.0).view(1, 8, 1, 1, 1).repeat(1, 1, 2, 3, 2)  # (N, s^3, d, h, w)
    y = pixel_shuffle_nd(x, 2, 3)  # (N, 1, 2d, 2h, 2w)
    assert y.shape == (1, 1, 4, 6, 4)
    # sub-voxel (a, b, c) of every block holds channel 4a + 2b + c (torch PixelShuffle order in 2D)
    assert y[0, 0, 1, 0, 1] == 5 and y[0, 0, 2, 3, 0] == 2


@pytest.mark.parametrize("scale", [2, 3])
def test_srnet_shapes_and_interpolation_start(scale: int) -> None:
    net = SRNet(scale=scale, channels=4, blocks=1, spatial_dims=3).eval()
    x = torch.rand(2, 1, 5, 6, 7)
    y = net(x)
    assert y.shape == (2, 1, 5 * scale, 6 * scale, 7 * scale)
    assert net.scale_factors == (scale,) * 3
    # untrained = trilinear interpolation (align_corners=False: the extent-preserving grid)
    assert torch.allclose(y, F.interpolate(x, scale_factor=scale, mode="trilinear", align_corners=False))
    y2 = SRNet(scale=scale, channels=4, blocks=1, spatial_dims=2)(torch.rand(1, 1, 9, 11))
    assert y2.shape == (1, 1, 9 * scale, 11 * scale)


def test_srnet_halo_2d_and_3d() -> None:
    _receptive_radius_ok(_randomise(SRNet(scale=2, channels=4, blocks=2, spatial_dims=2)), (31, 29), 2)
    _receptive_radius_ok(_randomise(SRNet(scale=2, channels=2, blocks=1, spatial_dims=3)), (13, 13, 13), 2)


def _farthest_influence(net: torch.nn.Module, shape: tuple[int, ...], centre: tuple[int, ...]) -> int:
    """Largest distance along each axis at which perturbing one input voxel changes the output at ``centre``."""
    x = torch.rand((1, 1) + shape)
    far = 0
    with torch.no_grad():
        base = net(x)[(0, 0) + centre]
        for axis in range(len(shape)):
            for sign in (-1, 1):
                for dist in range(1, shape[axis]):
                    idx = list(centre)
                    idx[axis] += sign * dist
                    if not 0 <= idx[axis] < shape[axis]:
                        break
                    y = x.clone()
                    y[(0, 0) + tuple(idx)] += 5.0
                    if not torch.allclose(net(y)[(0, 0) + centre], base, atol=1e-6):
                        far = max(far, dist)
    return far


def test_denoiser_shapes_identity_start_and_halo() -> None:
    net = Denoiser(channels=4, spatial_dims=3).eval()
    x = torch.rand(1, 1, 9, 10, 11)  # not multiples of 4: padded inside, cropped back
    with torch.no_grad():
        assert net(x).shape == x.shape and 0 < float((net(x) - x).abs().max()) < 0.05  # near identity, not at it
    assert net.halo == 24 and net.halo % 4 == 0 and net.scale_factors == (1, 1, 1)
    net2d = _randomise(Denoiser(channels=2, spatial_dims=2))
    # the receptive field depends on the position relative to the 4-voxel grid: the halo covers every phase
    radii = [_farthest_influence(net2d, (56, 56), (c, c)) for c in (28, 29, 30, 31)]
    assert net2d.halo - 4 < max(radii) <= net2d.halo and min(radii) >= net2d.halo - 6
    assert _farthest_influence(_randomise(Denoiser(channels=2, spatial_dims=3)), (44, 44, 44), (22, 22, 22)) <= 24
    assert Denoiser(channels=4, spatial_dims=2, clamp_min=0.0)(-torch.ones(1, 1, 5, 5)).min() == 0
    leaky = Denoiser(channels=4, spatial_dims=3, negative_slope=0.1)
    assert sum(isinstance(m, torch.nn.LeakyReLU) for m in leaky.modules()) == 9
    assert not any(isinstance(m, torch.nn.LeakyReLU) for m in net.modules())  # plain ReLU by default
    assert leaky.state_dict().keys() == net.state_dict().keys()  # same weights layout either way


@pytest.mark.parametrize("ensemble", [1, 8])
def test_denoiser_tiles_agree_with_the_whole_volume(ensemble: int) -> None:
    """A U-Net is shift-equivariant only by multiples of 4: tile cores and halos on that grid keep tiles exact,
    with and without the flip self-ensemble (flips act on the padded block, which stays on the grid)."""
    from MedSREnhanceLib.engine.inference import tiled_apply

    net = _randomise(Denoiser(channels=2, spatial_dims=3, ensemble=ensemble))
    for p in net.parameters():
        p.data.mul_(0.5)  # keep activations moderate so the comparison is meaningful in float32
    vol = torch.rand(46, 53, 40).numpy()
    with torch.no_grad():
        whole = net(torch.from_numpy(vol)[None, None])[0, 0].numpy()
    tiled = tiled_apply(vol, net, tile=16, halo=net.halo, mode="crop")
    assert abs(tiled - whole).max() <= 1e-4 * abs(whole).max()


def test_bundled_denoiser_tiles_with_its_tile_halo_and_channels_last_within_tolerance() -> None:
    """The engine tiles the bundled denoiser with ``tile_halo`` (< its exact halo) in channels-last layout: on a
    smooth noisy block the result stays within 1e-3 of the range of the exact untiled contiguous run."""
    import numpy as np

    from MedSREnhanceLib.engine.enhance import _load_network
    from MedSREnhanceLib.engine.inference import tiled_apply

    net = _load_network("mr-denoise")
    assert net.tile_halo < net.halo and net.tile_halo % net.shift_multiple == 0 and net.channels_last
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in (56, 64, 60)], indexing="ij")
    vol = (0.6 + 0.3 * np.sin(5 * x) * np.cos(4 * y + z) + 0.05 * rng.standard_normal(x.shape)).astype(np.float32)
    ensemble, net.ensemble = net.ensemble, 1
    try:
        whole = tiled_apply(vol, net.to(memory_format=torch.contiguous_format), tile=64, halo=0)
        tiled = tiled_apply(vol, net.to(memory_format=torch.channels_last_3d), tile=(24, 24, 28),
                            halo=net.tile_halo)
    finally:
        net.ensemble = ensemble
        net.to(memory_format=torch.contiguous_format)
    span = float(np.percentile(whole, 99.5) - np.percentile(whole, 0.5))
    error = np.abs(tiled - whole)
    assert error.max() < 1e-2 * span and np.sqrt(np.mean(error**2)) < 1e-3 * span
    assert error.max() > 0  # really a different computation (halo, layout), not the same one twice


def test_throughplane_fuses_two_orientations() -> None:
    net = _randomise(ThroughPlaneNet(channels=4, dilations=(1, 2, 1), spatial_dims=3, slice_batch=5))
    x = torch.rand(1, 1, 9, 7, 6)  # (N, 1, D, H, W), D = slice axis
    y = net(x)
    assert y.shape == x.shape
    with torch.no_grad():
        dh = torch.stack([net.net2d(x[..., w]) for w in range(6)], -1)  # (D, H) slices
        dw = torch.stack([net.net2d(x[..., h, :]) for h in range(7)], -2)  # (D, W) slices
    assert torch.allclose(y, 0.5 * (dh + dw), atol=1e-5)
    _receptive_radius_ok(net, (17, 15, 13), 1)
    net2 = ThroughPlaneNet(channels=4, dilations=(1, 2, 1), spatial_dims=2)
    assert net2(torch.rand(3, 1, 11, 8)).shape == (3, 1, 11, 8)


def test_throughplane_refine_stage_starts_as_the_trained_net_and_doubles_the_reach() -> None:
    """A refine stage added to a trained net (its weights loaded non-strictly) leaves the output unchanged until
    trained; trained, it reaches ``halo`` = 2 x the sum of dilations and no farther."""
    trained = _randomise(ThroughPlaneNet(channels=4, dilations=(1, 2, 1), spatial_dims=2))
    grown = ThroughPlaneNet(channels=4, dilations=(1, 2, 1), spatial_dims=2, refine=1).eval()
    missing = grown.load_state_dict(trained.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("net2d.refine.0.") for k in missing)
    x = torch.rand(2, 1, 23, 19)
    with torch.no_grad():
        assert torch.equal(grown(x), trained(x))
    assert grown.halo == 2 * trained.halo == 8
    _receptive_radius_ok(_randomise(grown), (29, 27), 1)

def test_srnet_self_ensemble_is_flip_equivariant_and_keeps_the_halo() -> None:
    net = _randomise(SRNet(scale=2, channels=3, blocks=1, spatial_dims=3, ensemble=8))
    x = torch.rand(1, 1, 7, 8, 9)
    with torch.no_grad():
        y = net(x)
        assert y.shape == (1, 1, 14, 16, 18)
        assert torch.allclose(net(x.flip(2)), y.flip(2), atol=1e-5)
    _receptive_radius_ok(net, (13, 13, 13), 2)
    with pytest.raises(ValueError):
        SRNet(scale=2, spatial_dims=2, ensemble=8)


def test_denoiser_self_ensemble_is_flip_equivariant() -> None:
    net = _randomise(Denoiser(channels=2, spatial_dims=3, ensemble=8))
    x = torch.rand(1, 1, 12, 16, 8)  # multiples of 4: flipping keeps the grid phase
    with torch.no_grad():
        y = net(x)
        assert torch.allclose(net(x.flip(3)), y.flip(3), atol=1e-5)
        single = _randomise(Denoiser(channels=2, spatial_dims=3))
        assert not torch.allclose(single(x.flip(3)), single(x).flip(3), atol=1e-5)  # one pass alone is not
    with pytest.raises(ValueError):
        Denoiser(spatial_dims=2, ensemble=8)


def test_motionnet_fuses_three_orientations_and_tiles_exactly_with_its_halo() -> None:
    """The 2D U-Net on the slices across D, H and W, averaged; its receptive field (31-38 voxels in-plane by phase
    on the 8-voxel grid) within the halo; tiles on that grid with the halo give the whole volume's output."""
    from MedSREnhanceLib.engine.inference import tiled_apply

    torch.manual_seed(0)
    net = MotionNet(channels=4, spatial_dims=3, slice_batch=5).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.3)
    x = torch.rand(1, 1, 9, 12, 10)
    with torch.no_grad():
        y = net(x)
        across_d = torch.stack([net.net2d(x[:, :, d]) for d in range(9)], 2)
        across_h = torch.stack([net.net2d(x[:, :, :, h]) for h in range(12)], 3)
        across_w = torch.stack([net.net2d(x[..., w]) for w in range(10)], 4)
    torch.testing.assert_close(y, (across_d + across_h + across_w) / 3, rtol=1e-4, atol=1e-3)
    net.combine = "median"  # the per-voxel middle of the three orientations
    with torch.no_grad():
        torch.testing.assert_close(net(x), torch.stack([across_d, across_h, across_w]).median(dim=0).values,
                                   rtol=1e-4, atol=1e-3)
    net.combine = "mean"
    with pytest.raises(ValueError, match="combine"):
        MotionNet(combine="max")
    radii = [_farthest_influence(net.net2d, (96, 96), (c, c)) for c in (48, 55)]  # the nearest and farthest phases
    assert max(radii) <= net.halo and net.halo - 8 < max(radii) and net.halo % net.shift_multiple == 0
    vol = torch.rand(24, 104, 96).numpy()
    with torch.no_grad():
        whole = net(torch.from_numpy(vol)[None, None])[0, 0].numpy()
    tiled = tiled_apply(vol, net, tile=(24, 16, 16), halo=net.halo, mode="crop")
    assert abs(tiled - whole).max() <= 1e-4 * abs(whole).max()


def test_motionnet_strip_context_starts_as_the_plain_net_and_reaches_whole_rows() -> None:
    """StripContext is zero-initialised (the plain U-Net at first); once trained, a voxel's output depends on its
    whole row far beyond the plain net's field, so the net asks for windows that read the whole volume."""
    torch.manual_seed(0)
    plain, ctx = UNet2d(4), UNet2d(4, context=True)
    ctx.load_state_dict(plain.state_dict(), strict=False)
    x = torch.rand(1, 1, 16, 200)
    with torch.no_grad():
        torch.testing.assert_close(ctx(x), plain(x))
        for p in ctx.parameters():
            p.normal_(0.0, 0.3)
        plain.load_state_dict({k: v for k, v in ctx.state_dict().items() if not k.startswith("context.")})
        far = x.clone()
        far[..., 190:] += 1.0  # more than the plain net's 31-38 voxels from column 0
        assert not torch.allclose(ctx(far)[..., 0], ctx(x)[..., 0])
        torch.testing.assert_close(plain(far)[..., 0], plain(x)[..., 0])
    assert MotionNet(channels=4, context=True).halo >= 1 << 16 > MotionNet(channels=4).halo


def test_swin_throughplane_starts_as_its_input_and_its_field_stays_within_the_halo() -> None:
    """The transformer variant: zero-initialised output convolution (the B-spline input at first), the two slice
    orientations averaged as in ThroughPlaneNet, and windowed attention whose reach stays within ``halo``."""
    net = SwinThroughPlaneNet(channels=8, blocks=2, heads=2, window=4).eval()
    x = torch.rand(1, 1, 9, 10, 11)
    with torch.no_grad():
        assert torch.equal(net(x), x)
    net = _randomise(net)
    with torch.no_grad():
        y = net(x)
        dh = torch.stack([net.net2d(x[..., w]) for w in range(11)], -1)
        dw = torch.stack([net.net2d(x[..., h, :]) for h in range(10)], -2)
    torch.testing.assert_close(y, 0.5 * (dh + dw), rtol=1e-4, atol=1e-4)
    far = max(_farthest_influence(net.net2d, (40, 40), (c, c)) for c in (19, 20, 21))
    assert 4 <= far <= net.halo == 2 * 4 + 2  # beyond one window: the offset block carries it across
