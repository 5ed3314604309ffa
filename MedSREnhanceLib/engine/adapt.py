"""Self-supervised adaptation: fine-tune a copy of a learned model on pairs made from the volume it is about to
enhance, within a time budget (``enhance(..., adapt=SECONDS)``, ``medsr enhance --adapt SECONDS``).

The pairs, per scale mode (all from the normalised input; no other data is read):
- "axis" (through-plane, SMORE): the input's fine in-plane axes stand in for the missing through-plane detail.
  Each in-plane axis in turn is thickened by the requested factor with the model's slice profile and brought back
  by the B-spline the engine runs first; the 2D net learns (thickened plane -> input plane).
- "isotropic" (ZSSR): the input degraded once more by the model's factor (its acquisition, k-space truncation)
  -> the input.
Denoisers do not adapt (see ``refusal``: Noise2Self was measured and lowered the bench).
A tenth of the volume (the last slices along the slowest array axis) is held out: its pairs give a validation
loss before adaptation and at intervals, and the weights with the lowest one are kept. When no step beats the
bundled weights, the bundled weights run (``Adaptation.kept`` False): adaptation can cost time, not quality, as
far as its own loss can tell.
Training is fp32 on the inference device (small nets; no autocast to tune), L1 loss, Adam at the model's
``adapt_lr``, chosen per model on the adapt bench (default 1e-4, a fifth of the bundled trainings' rate: the
weights start where they are good).
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..core.acquisition import apply_axis
from ..core.resample import resample_scale
from ..core.volume import Scale, Volume, resized_geometry
from ..models.registry import ModelSpec
from .consistency import OPERATORS

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

LEARNING_RATE = 1e-4
VAL_FRACTION = 0.1  # of the slowest array axis, held out for the validation loss
VAL_PATCHES = 32
VAL_EVERY = 0.1  # of the budget between validation passes
# of the budget left unused by the loop: the closing weight copy and reload, and the adapted copy's first forward
# pass, come after it (at 1 %, 1 of 8 bench runs at 180 s still ended 0.1 s past the budget plus the plain run's
# time; at 2 % all 8 ended 3-5 s inside it: benchmarks/results/adapt-throughplane/stage3-lr3e-4)
TAIL_FRACTION = 0.02
# Patch edges (output voxels) and batch sizes: one step takes ~0.1-0.3 s on one CPU core
PLANE_PATCH, PLANE_BATCH = 48, 16
CUBE_PATCH, CUBE_BATCH = 32, 4

ReportFn = Callable[[float, str], None]  # (seconds spent, message); raises CancelledError to stop


@dataclass
class Adaptation:
    """What the adaptation did: steps taken, seconds spent, the held-out loss before and after, and whether the
    adapted weights were kept (they beat the bundled ones on the held-out slices)."""

    steps: int
    seconds: float
    val_before: float
    val_after: float
    kept: bool

    def summary(self) -> str:
        change = 100.0 * (self.val_after / self.val_before - 1.0) if self.val_before > 0 else 0.0
        verdict = "kept" if self.kept else "not kept: no step beat the bundled weights on the held-out slices"
        return (f"adapted to this volume: {self.steps} steps in {self.seconds:.0f} s, held-out loss "
                f"{self.val_before:.4g} -> {self.val_after:.4g} ({change:+.1f} %), {verdict}")


def _split(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) parts of ``array`` along its slowest axis (the last tenth held out)."""
    n = array.shape[0]
    cut = n - max(1, int(round(VAL_FRACTION * n))) if n >= 10 else n
    return array[:cut], array[cut:] if cut < n else array[-max(1, n // 2):]


def _random_box(shape: tuple[int, ...], patch: tuple[int, ...], rng: np.random.Generator) -> tuple[slice, ...]:
    return tuple(slice(c, c + p) for c, p in
                 ((int(rng.integers(0, max(1, n - p + 1))), min(p, n)) for n, p in zip(shape, patch)))


def _pad(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if a.shape == shape:
        return a
    return np.pad(a, [(0, s - n) for s, n in zip(shape, a.shape)], mode="reflect" if min(a.shape) > 1 else "edge")


class _Planes:
    """Through-plane (SMORE) pairs: 2D (D, L) patches, D the thickened in-plane axis."""

    def __init__(self, array: np.ndarray, volume: Volume, spec: ModelSpec, scale: Scale) -> None:
        axis = next(i for i, s in enumerate(scale) if abs(s - 1.0) > 1e-9)
        factor = float(scale[axis])
        thick = 2 - axis  # numpy dim of the slice axis
        self.pairs: list[tuple[np.ndarray, np.ndarray]] = []  # (x, y) with the thickened axis first, thick axis last
        for fine in (d for d in range(3) if d != thick):
            other = 3 - thick - fine
            f = [1.0, 1.0, 1.0]
            f[2 - fine] = factor
            lr = apply_axis(array.astype(np.float64), OPERATORS[spec.acquisition or "gaussian"](
                array.shape[fine], factor), 2 - fine)
            _, spacing, origin = resized_geometry(volume, tuple(1.0 / v for v in f))  # type: ignore[arg-type]
            up = resample_scale(Volume(lr.astype(np.float32), spacing, origin, volume.direction), tuple(f),
                                "bspline").array  # type: ignore[arg-type]
            crop = tuple(slice(0, min(a, b)) for a, b in zip(up.shape, array.shape))
            x, y = (np.moveaxis(a[crop], (fine, other, thick), (0, 1, 2)) for a in (up, array))
            self.pairs.append((np.ascontiguousarray(x, np.float32), np.ascontiguousarray(y, np.float32)))

    def split(self) -> tuple["_Planes", "_Planes"]:
        train, val = copy.copy(self), copy.copy(self)
        # hold out the last slices along the thick axis (last here): whole in-plane planes the net never trains on
        parts = [[_split(np.moveaxis(a, 2, 0)) for a in pair] for pair in self.pairs]
        train.pairs = [(np.moveaxis(x[0], 0, 2), np.moveaxis(y[0], 0, 2)) for x, y in parts]
        val.pairs = [(np.moveaxis(x[1], 0, 2), np.moveaxis(y[1], 0, 2)) for x, y in parts]
        return train, val

    def batch(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for _ in range(n):
            x, y = self.pairs[int(rng.integers(len(self.pairs)))]
            p = (min(PLANE_PATCH, x.shape[0]), min(PLANE_PATCH, x.shape[1]))
            box = _random_box(x.shape[:2], p, rng) + (int(rng.integers(x.shape[2])),)
            a, b = x[box], y[box]
            for d in (0, 1):  # flips keep the thickened axis where it is
                if rng.random() < 0.5:
                    a, b = np.flip(a, d), np.flip(b, d)
            xs.append(_pad(a, (PLANE_PATCH, PLANE_PATCH)))
            ys.append(_pad(b, (PLANE_PATCH, PLANE_PATCH)))
        return np.stack(xs)[:, None], np.stack(ys)[:, None]

    @staticmethod
    def module(net: Any) -> Any:
        return net.net2d


class _Cubes:
    """Isotropic SR (ZSSR) pairs: the input degraded by the model's factor -> the input (3D patches)."""

    def __init__(self, array: np.ndarray, volume: Volume, spec: ModelSpec, scale: Scale) -> None:
        s = int(min(f for f in spec.scales if f >= scale[0] - 1e-9))
        self.s = s
        hr = array[tuple(slice(0, n - n % s) for n in array.shape)].astype(np.float64)
        lr = hr
        for axis in range(3):
            lr = apply_axis(lr, OPERATORS[spec.acquisition or "kspace"](lr.shape[2 - axis], s), axis)
        self.lr, self.hr = lr.astype(np.float32), hr.astype(np.float32)

    def split(self) -> tuple["_Cubes", "_Cubes"]:
        train, val = copy.copy(self), copy.copy(self)
        lr_train, lr_val = _split(self.lr)
        cut = lr_train.shape[0] * self.s
        train.lr, train.hr = lr_train, self.hr[:cut]
        val.lr, val.hr = lr_val, self.hr[cut:] if cut < self.hr.shape[0] else self.hr[-lr_val.shape[0] * self.s:]
        return train, val

    def batch(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        s, q = self.s, CUBE_PATCH // self.s
        xs, ys = [], []
        for _ in range(n):
            box = _random_box(self.lr.shape, (q, q, q), rng)
            a = self.lr[box]
            b = self.hr[tuple(slice(sl.start * s, sl.stop * s) for sl in box)]
            for d in range(3):
                if rng.random() < 0.5:
                    a, b = np.flip(a, d), np.flip(b, d)
            order = tuple(int(v) for v in rng.permutation(3))  # isotropic: any axis order
            a, b = np.transpose(a, order), np.transpose(b, order)
            xs.append(_pad(np.ascontiguousarray(a), (q, q, q)))
            ys.append(_pad(np.ascontiguousarray(b), (q * s,) * 3))
        return np.stack(xs)[:, None], np.stack(ys)[:, None]

    @staticmethod
    def module(net: Any) -> Any:
        return net


PAIRS: dict[str, type] = {"axis": _Planes, "isotropic": _Cubes}


def refusal(spec: ModelSpec) -> str | None:
    """Why ``spec`` cannot adapt (one line), or None: only learned super-resolution models (through-plane or
    isotropic) can."""
    if spec.kind != "learned":
        return (f"adaptation is not available for {spec.kind} model {spec.name}: it needs a learned "
                "super-resolution model")
    if spec.task == "denoise":
        # Noise2Self (hidden voxels predicted from their neighbours) was built, measured and removed: on the MR 5 %
        # bench it lowered fg PSNR by 1.15 dB (chris_t1) and 0.17 dB (brats_0005_flair) in 180 s while its own
        # held-out loss fell, so the keeper could not see the harm (benchmarks/results/adapt-denoise; git 2ece339)
        return ("adaptation is not available for denoising: the Noise2Self fine-tune lowered the held-out bench by "
                "0.17-1.15 dB while its own loss improved")
    if spec.task != "sr" or spec.scale_mode not in PAIRS:
        return f"adaptation is not available for model {spec.name}: it needs a learned super-resolution model"
    return None


def available(spec: ModelSpec) -> bool:
    """Whether ``spec`` can adapt (see ``refusal``)."""
    return refusal(spec) is None


def _keep_best(loss: float, best: float, best_state: Any, net: Any) -> tuple[float, Any]:
    """(best loss, its weights): ``net``'s current weights when ``loss`` beats ``best``."""
    if loss < best:
        return loss, {k: t.detach().clone() for k, t in net.state_dict().items()}
    return best, best_state


def adapt(net: Any, spec: ModelSpec, array: np.ndarray, volume: Volume, scale: Scale, seconds: float,
          device: Any, report: ReportFn, seed: int = 0) -> tuple[Any, Adaptation]:
    """A copy of ``net`` fine-tuned on ``array`` (the normalised input, (z, y, x)) for about ``seconds`` (pair
    making included), and what happened. ``net`` itself is never changed (the engine caches it)."""
    import torch

    t0 = time.perf_counter()
    deadline = t0 + float(seconds) * (1.0 - TAIL_FRACTION)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    report(0.0, "making pairs from the input")
    train, val = PAIRS[spec.scale_mode](array, volume, spec, scale).split()
    tuned = copy.deepcopy(net).to(device).train()
    module = train.module(tuned)
    vx, vy = (torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in val.batch(VAL_PATCHES, rng))
    batch = PLANE_BATCH if spec.scale_mode == "axis" else CUBE_BATCH

    def validate() -> float:
        module.eval()
        with torch.no_grad():
            loss = float(torch.nn.functional.l1_loss(module(vx), vy))
        module.train()
        return loss

    t_val = time.perf_counter()
    before = best = validate()
    t_val = time.perf_counter() - t_val  # what the closing validation pass will cost
    best_state = None
    optimiser = torch.optim.Adam(module.parameters(), lr=LEARNING_RATE if spec.adapt_lr is None else spec.adapt_lr)
    steps, t_step, next_val, validated = 0, 0.0, time.perf_counter() + VAL_EVERY * seconds, True
    # step while the next step and a closing validation still fit in the budget
    while time.perf_counter() + t_step + t_val < deadline:
        t = time.perf_counter()
        x, y = (torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in train.batch(batch, rng))
        loss = torch.nn.functional.l1_loss(module(x), y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        steps += 1
        t_step = max(t_step * 0.9, time.perf_counter() - t) if steps > 1 else time.perf_counter() - t
        validated = False
        if time.perf_counter() >= next_val:
            best, best_state = _keep_best(validate(), best, best_state, tuned)
            next_val, validated = time.perf_counter() + VAL_EVERY * seconds, True
        report(time.perf_counter() - t0, f"step {steps}, loss {loss.item():.4f}")
    if not validated:
        best, best_state = _keep_best(validate(), best, best_state, tuned)
    info = Adaptation(steps, time.perf_counter() - t0, before, best, best_state is not None)
    logger.info(info.summary())
    if best_state is None:
        return net, info
    tuned.load_state_dict(best_state)
    return tuned.cpu().eval(), info
