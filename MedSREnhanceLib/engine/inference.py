"""Tiled inference of a volume-to-volume network: device and precision choice, progress, cancel, OOM fallback.

``tiled_apply`` is the one pure function doing the work; everything else chooses its arguments. Two stitching
modes, after MONAI's sliding-window inferer but with separate window and output devices and per-axis output
scale (super-resolution windows write more voxels than they read):
- "crop": for fully convolutional nets. Each tile is read with a halo >= the receptive-field radius and the halo
  is cropped before stitching, so the result equals an untiled run up to float rounding.
- "blend": for nets with pooling or global context. Overlapping windows averaged with Gaussian weights.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from ..core.errors import CancelledError
from ..core.headers import available_ram as _available_ram  # module-level name: tests patch it
from ..core.progress import CancelFn, Progress, ProgressFn
from ..models.steps import step_reporter

logger = logging.getLogger(__name__)

Net = Callable[[torch.Tensor], torch.Tensor]


def choose_device(device: str = "auto") -> torch.device:
    """"auto" = cuda, then mps, then cpu; anything else is passed to torch (e.g. "cuda:1")."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"device {device!r} requested but MPS is not available")
    return dev


def place(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``net`` on ``device``, its weights channels-last (NHWC / NDHWC) where the net says that runs faster
    (``net.channels_last``: oneDNN then keeps every feature map in that layout)."""
    if not getattr(net, "channels_last", False):
        return net.to(device)
    rank = max(p.dim() for p in net.parameters())
    return net.to(device, memory_format=torch.channels_last_3d if rank == 5 else torch.channels_last)


def cpu_has_amx(torch_module: Any = torch) -> bool:
    """Whether this CPU has AMX tiles (Intel Sapphire Rapids and later), where bf16 convolutions run on them.
    ``torch_module``: the panel passes the torch it loaded (tests pass stand-ins)."""
    probe = getattr(getattr(torch_module, "cpu", None), "_is_amx_tile_supported", None)  # private, torch >= 2.2
    try:
        return bool(probe()) if probe is not None else False
    except Exception:  # noqa: BLE001 - an unknown CPU is treated as one without AMX
        return False


def autocast_dtype(device: torch.device, precision: str = "auto") -> Optional[torch.dtype]:
    """Mixed precision where it helps: fp16/bf16 on GPUs, bf16 on CPUs with AMX (benchmarks/README_models.md:
    1.9-9.7x faster, outputs 60-69 dB PSNR from fp32); fp32 on other CPUs, where bf16 was ~20x slower."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"unknown precision {precision!r}; use auto, fp32, bf16 or fp16")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_amx():
        return torch.bfloat16
    return None


def precision_name(dtype: Optional[torch.dtype]) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")  # None (no autocast): fp32


def _starts(n: int, tile: int, step: int) -> list[int]:
    """Window starts covering [0, n) with windows of ``tile`` (the last one flush with the end)."""
    if n <= tile:
        return [0]
    starts = list(range(0, n - tile, step)) + [n - tile]
    return sorted(set(starts))


def _gaussian_window(shape: Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
    axes = []
    for n in shape:
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
        sigma = max(n * sigma_scale, 1e-3)
        axes.append(np.exp(-0.5 * (x / sigma) ** 2))
    w = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    # Never 0, so every voxel gets some weight; the floor must stay far below the Gaussian's own corner value
    # (exp(-24) for sigma = n/8 in 3D): a floor of 1e-3 let the wrong, zero-padded rims of neighbouring windows
    # weigh as much as the good centres of others and made blending several times worse.
    return np.maximum(w / w.max(), 1e-12).astype(np.float32)


Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]  # (start, stop) per array axis


def plan_windows(shape: Sequence[int], tiles: Sequence[int], *, mode: str, halo: int, overlap: float,
                 ) -> list[tuple[Box, Box]]:
    """(read box, core box) of every window, in input voxels.

    "crop": cores tile the volume without overlap and each reads ``halo`` more voxels around (clipped at the
    edges); "blend": windows of the tile size overlap by ``overlap`` and read exactly their core.
    """
    if mode == "crop":
        steps = [min(t, n) for t, n in zip(tiles, shape)]
        grid = [list(range(0, n, st)) for n, st in zip(shape, steps)]
    elif mode == "blend":
        steps = [min(t, n) for t, n in zip(tiles, shape)]
        grid = [_starts(n, w, max(1, int(round(w * (1 - overlap))))) for n, w in zip(shape, steps)]
    else:
        raise ValueError(f"unknown mode {mode!r}")
    windows = []
    for start in ((a, b, c) for a in grid[0] for b in grid[1] for c in grid[2]):
        if mode == "crop":
            core = tuple((s0, min(s0 + st, n)) for s0, st, n in zip(start, steps, shape))
            read = tuple((max(0, a - halo), min(n, b + halo)) for (a, b), n in zip(core, shape))
        else:
            core = read = tuple((s0, s0 + w) for s0, w in zip(start, steps))
        windows.append((read, core))
    return windows  # type: ignore[return-value]


def tiled_apply(
    array: np.ndarray,
    net: Net,
    *,
    scale: tuple[int, int, int] = (1, 1, 1),
    tile: int | tuple[int, int, int] = 64,
    halo: int = 8,
    mode: str = "crop",
    overlap: float = 0.25,
    device: torch.device | str = "cpu",
    dtype: Optional[torch.dtype] = None,
    progress: Optional[ProgressFn] = None,
    cancel: Optional[CancelFn] = None,
) -> np.ndarray:
    """Apply ``net`` to a (D, H, W) array tile by tile; returns (D*s0, H*s1, W*s2) float32 on the CPU.

    ``tile`` is the core size in input voxels (per axis or one for all); ``halo`` the margin read around each core
    ("crop" mode). ``net`` takes (1, 1, d, h, w) tensors on ``device`` and returns (1, C, ...) ones; with C > 1
    (e.g. an output and its uncertainty) the result is (C, D*s0, H*s1, W*s2). Output windows are moved to the CPU
    at once so device memory holds one window at a time.
    """
    if array.ndim != 3:
        raise ValueError(f"tiled_apply needs a 3D array, got shape {array.shape}")
    device = torch.device(device)
    tiles = (tile,) * 3 if isinstance(tile, int) else tuple(tile)
    windows = plan_windows(array.shape, tiles, mode=mode, halo=halo, overlap=overlap)
    out_shape = tuple(n * s for n, s in zip(array.shape, scale))
    out: Optional[np.ndarray] = None  # (C, *out_shape), allocated once the first window says what C is
    weights = window_w = None
    if mode == "blend":
        weights = np.zeros(out_shape, np.float32)
        window_w = _gaussian_window([(b - a) * s for (a, b), s in zip(windows[0][1], scale)])
    total = len(windows)
    # Work units: windows x passes per window (ensemble members, slice batches), so a long window still reports.
    # The net's own step reports correct the first guess of its passes.
    passes = [max(1, int(getattr(net, "ensemble", 1) or 1))]
    last = [-1]
    t0 = time.perf_counter()

    def emit(done: int) -> None:
        if progress is None or done == last[0]:
            return
        last[0] = done
        elapsed = time.perf_counter() - t0
        units = total * passes[0]
        eta = elapsed / done * (units - done) if done else None
        window = min(total, max(0, done - 1) // passes[0] + 1)
        progress(Progress(done, units, elapsed, eta, message=f"window {window} of {total}", stage="inference"))

    def on_step(index: int, step: int, steps: int) -> None:
        if cancel is not None and cancel():
            raise CancelledError("cancelled by the user")
        passes[0] = max(1, steps)
        emit(index * passes[0] + step)

    autocast = (
        torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else _nullcontext()
    )
    emit(0)  # the model is loaded and the windows planned: news before the first (possibly long) window
    with torch.inference_mode(), autocast:
        for index, (read, core) in enumerate(windows):
            if cancel is not None and cancel():
                raise CancelledError("cancelled by the user")
            block = array[read[0][0]:read[0][1], read[1][0]:read[1][1], read[2][0]:read[2][1]]
            x = torch.from_numpy(np.ascontiguousarray(block))[None, None].to(device)
            with step_reporter(lambda step, steps, i=index: on_step(i, step, steps)):
                y = net(x).float()[0].cpu().numpy()  # (C, ...)
            if out is None:
                out = np.zeros((y.shape[0],) + out_shape, np.float32)
            # Crop the halo in output voxels: offset of the core inside the read block, times the scale.
            sl = (slice(None),) + tuple(
                slice((c0 - r0) * s, (c1 - r0) * s) for (c0, c1), (r0, _), s in zip(core, read, scale)
            )
            dst = (slice(None),) + tuple(slice(c0 * s, c1 * s) for (c0, c1), s in zip(core, scale))
            if weights is None:
                out[dst] = y[sl]
            else:
                out[dst] += y[sl] * window_w
                weights[dst[1:]] += window_w
            emit((index + 1) * passes[0])
    assert out is not None  # plan_windows returns at least one window
    if weights is not None:
        out /= weights
    return out[0] if out.shape[0] == 1 else out


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


# Working set of one window on the CPU (bytes): the whole `medsr enhance` process must stay within 1 GiB plus 4x
# the output's float32 bytes (issue 16); the interpreter, torch and the full-size volumes take ~0.5 GiB of that.
# Larger windows hardly run faster per voxel (benchmarks/README_models.md), they only repeat fewer halos.
CPU_TILE_BUDGET = 384 * 2**20


def tile_budget(device: torch.device) -> float:
    """Bytes one window may use: half the free GPU memory; on the CPU a quarter of the available RAM, at most
    ``CPU_TILE_BUDGET``."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free * 0.5
    return min(_available_ram() * 0.25, CPU_TILE_BUDGET)


def _axis_options(n: int, halo: int, align: int) -> list[tuple[int, int, int]]:
    """(core, read, voxels read along the axis) for 1 to 16 windows along an axis of ``n`` voxels, more on long
    axes (cores down to 32 voxels), so a window fits the budget however large the volume."""
    options = {}
    for count in range(1, max(16, -(-n // 32)) + 1):
        core = -(-(-(-n // count)) // align) * align
        windows = -(-n // core)
        if core in options or (windows > 1 and core < 2 * align):
            continue
        read = n if windows == 1 else min(n, core + 2 * halo)
        options[core] = (core, read, n + 2 * halo * (windows - 1))  # every inner boundary reads both halos
    return list(options.values())


def auto_tile(shape: Sequence[int], floats_per_voxel: float, device: torch.device, halo: int, align: int = 1,
              budget: Optional[float] = None) -> tuple[int, int, int]:
    """Per-axis core sizes that read the fewest voxels (cores plus the halos each window repeats) while every
    window's working set, ``4 * floats_per_voxel`` bytes per voxel it reads, stays within ``budget`` (default:
    ``tile_budget(device)``). Tiles need not be cubes: an axis kept whole repeats no halo at all.
    ``floats_per_voxel``: the net's ``working_floats`` (its peak feature maps per input voxel, output included)."""
    budget = tile_budget(device) if budget is None else budget
    limit = budget / (4.0 * floats_per_voxel)
    axes = [_axis_options(int(n), halo, align) for n in shape]
    best: Optional[tuple[float, int, tuple[int, int, int]]] = None
    for a in axes[0]:
        for b in axes[1]:
            for c in axes[2]:
                if a[1] * b[1] * c[1] > limit:
                    continue
                windows = math.prod(-(-int(n) // o[0]) for n, o in zip(shape, (a, b, c)))
                key = (a[2] * b[2] * c[2], windows, (a[0], b[0], c[0]))
                best = key if best is None or key[:2] < best[:2] else best
    if best is None:  # not even the smallest windows fit: the smallest there are
        return tuple(min(o[0] for o in opts) for opts in axes)  # type: ignore[return-value]
    return best[2]


def is_oom(exc: BaseException) -> bool:
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def tile_text(tile: int | Sequence[int]) -> str:
    return str(tile) if isinstance(tile, int) else "x".join(str(t) for t in tile)


def run_with_fallback(
    array: np.ndarray,
    make_net: Callable[[torch.device], Net],
    *,
    scale: tuple[int, int, int],
    halo: int,
    floats_per_voxel: float,
    device: torch.device,
    precision: str = "auto",
    tile: Optional[int] = None,
    mode: str = "crop",
    progress: Optional[ProgressFn] = None,
    cancel: Optional[CancelFn] = None,
    messages: Optional[list[str]] = None,
    min_tile: int = 16,
    align: int = 1,
) -> tuple[np.ndarray, torch.device]:
    """``tiled_apply`` that survives GPU out-of-memory: smaller tiles until ``min_tile``, then the CPU. Returns
    the output and the device it was computed on.

    ``tile``: a cubic core from the user, halved on each out-of-memory; None: ``auto_tile`` plans the windows
    and each out-of-memory halves the side of its windows. Every fallback is appended to ``messages`` so the CLI and the
    Slicer panel can say what happened. ``align``: tile cores and the halo are rounded up to multiples of it (a
    net with 2**k downsampling is shift-equivariant only by multiples of 2**k, so tiles must start on that grid
    to match the whole-volume result).
    """
    notes = messages if messages is not None else []
    halo = -(-halo // align) * align

    def plan(dev: torch.device, budget: Optional[float] = None) -> tuple[int, int, int]:
        return auto_tile(array.shape, floats_per_voxel, dev, halo, align, budget)

    current: int | tuple[int, int, int] = -(-tile // align) * align if tile else plan(device)
    while True:
        try:
            net = make_net(device)
            logger.info("tiled inference on %s, tile %s, halo %d", device, tile_text(current), halo)
            out = tiled_apply(
                array, net, scale=scale, tile=current, halo=halo, mode=mode, device=device,
                dtype=autocast_dtype(device, precision), progress=progress, cancel=cancel,
            )
            return out, device
        except Exception as exc:  # noqa: BLE001 - only OOM is handled, the rest re-raised
            if not is_oom(exc) or device.type == "cpu":
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if isinstance(current, int):
                smaller: int | tuple[int, int, int] = -(-(current // 2) // align) * align
            else:
                used = math.prod(min(n, c + 2 * halo) for n, c in zip(array.shape, current)) * 4.0 * floats_per_voxel
                smaller = plan(device, used / 8)  # windows of about half the side
            small = smaller if isinstance(smaller, int) else max(smaller)
            if small >= min_tile and smaller != current:
                current = smaller
                notes.append(f"{device} out of memory: retrying with tile {tile_text(current)}")
            else:
                notes.append(f"{device} out of memory even with tile {tile_text(current)}: running on the CPU")
                device = torch.device("cpu")
                current = -(-tile // align) * align if tile else plan(device)
            logger.warning(notes[-1])
