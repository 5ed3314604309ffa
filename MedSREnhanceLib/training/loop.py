"""The training loop: sources by task, learning-rate schedule, checkpoints and resume, EMA, weights out."""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from ..core.io import content_hash
from ..models.registry import WEIGHTS_DIR, sha256_of
from .adversarial import AdversarialObjective, build_objective
from .cards import model_card, write_card
from .config import REPO_ROOT, Config, TrainConfig, load_config
from .losses import build_model, expected_target, loss_fn
from .data_sources import check_shippable, leave_out, volume_file
from .pairs import PairSource, sources_of
from .sources_ct import CTDenoiseSource
from .sources_motion import MotionSource
from .sources_mr import MRDenoiseSource, SRSource, ThroughPlaneSource

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())


SOURCES: dict[str, type[PairSource]] = {
    "sr": SRSource,
    "throughplane": ThroughPlaneSource,
    "denoise-mr": MRDenoiseSource,
    "denoise-ct": CTDenoiseSource,
    "motion-mr": MotionSource,
}


def _lr_at(step: int, cfg: TrainConfig, minutes: float = 0.0) -> float:
    """Cosine decay over the steps, or over ``max_minutes`` when the machine is too slow to finish them
    (so a run cut by the wall clock still ends annealed; on an unloaded machine the steps decide)."""
    progress = min(1.0, max(step / max(1, cfg.steps), minutes / max(cfg.max_minutes, 1e-6)))
    f = cfg.lr_final_fraction + (1 - cfg.lr_final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))
    if step < cfg.warmup_steps:
        f *= (step + 1) / cfg.warmup_steps
    return cfg.lr * f


@dataclass
class TrainState:
    """Everything a checkpoint holds: the model, its optimiser and average, the step, the RNGs, the history."""

    model: torch.nn.Module
    opt: torch.optim.Optimizer
    averaged: Optional[torch.optim.swa_utils.AveragedModel]
    rng: np.random.Generator
    step: int = 0
    elapsed_before: float = 0.0  # seconds spent by earlier runs of a resumed training
    history: list[dict[str, float]] = field(default_factory=list)
    adversarial: AdversarialObjective | None = None  # a GAN fine-tune's feature net and discriminator


def build_initial_model(cfg: Config) -> torch.nn.Module:
    """The architecture of the config, initialised from ``init_from`` when given (all tensors, or those that fit)."""
    model = build_model(cfg.model)
    if cfg.model.init_from:
        state = torch.load(REPO_ROOT / cfg.model.init_from, map_location="cpu", weights_only=True)
        if cfg.model.init_strict:
            model.load_state_dict(state)
        else:
            own = model.state_dict()
            kept = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
            model.load_state_dict(kept, strict=False)
            logger.info("initialised %d/%d tensors from %s", len(kept), len(own), cfg.model.init_from)
    if cfg.model.init_zero:
        zeroed = [p for name, p in model.named_parameters() if name.startswith(tuple(cfg.model.init_zero))]
        if not zeroed:
            raise ValueError(f"init_zero {cfg.model.init_zero} matches no parameter of {cfg.model.arch}")
        with torch.no_grad():
            for p in zeroed:
                p.zero_()
        logger.info("zeroed %d parameters (%s)", len(zeroed), ", ".join(cfg.model.init_zero))
    return model


def save_checkpoint(path: Path, state: TrainState, elapsed: float) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": state.model.state_dict(), "opt": state.opt.state_dict(), "step": state.step,
                "elapsed": elapsed, "history": state.history,
                # numpy's generator state as JSON text: loadable with weights_only=True whatever it holds
                "rng": json.dumps(state.rng.bit_generator.state), "torch_rng": torch.get_rng_state(),
                **({"averaged": state.averaged.state_dict()} if state.averaged is not None else {}),
                **({"adversarial": state.adversarial.state_dict()} if state.adversarial is not None else {})}, tmp)
    tmp.replace(path)


def resume_from(path: Path, state: TrainState, source: PairSource) -> None:
    """Continue where the checkpoint at ``path`` stopped: weights, optimiser, average, step, RNGs, history.
    Loaded with ``weights_only=True``: a checkpoint is data, never code to run."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state.model.load_state_dict(ckpt["model"])
    state.opt.load_state_dict(ckpt["opt"])
    if state.averaged is not None and "averaged" in ckpt:
        state.averaged.load_state_dict(ckpt["averaged"])
    if state.adversarial is not None and "adversarial" in ckpt:
        state.adversarial.load_state_dict(ckpt["adversarial"])
    state.step, state.elapsed_before, state.history = ckpt["step"], ckpt["elapsed"], ckpt["history"]
    rng = ckpt["rng"]
    state.rng.bit_generator.state = json.loads(rng) if isinstance(rng, str) else rng  # older: a plain dict
    torch.set_rng_state(ckpt["torch_rng"])
    source.rng = state.rng
    source.refresh()


def validation_psnr(net: torch.nn.Module, model: torch.nn.Module, val_batch: Optional[tuple]) -> float:
    """PSNR (data range 1) of the expected target on the fixed validation batch; NaN without validation volumes."""
    if val_batch is None:
        return float("nan")
    model.eval()
    with torch.inference_mode():
        pred = expected_target(net(val_batch[0]), val_batch[0], val_batch[2])
    model.train()
    return _psnr(pred, val_batch[1])


def _psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR with data range 1."""
    return 10 * math.log10(1.0 / max(float(F.mse_loss(pred.float(), target.float())), 1e-12))


def input_psnr(val_batch: Optional[tuple]) -> Optional[float]:
    """PSNR (data range 1) of the validation inputs themselves against their targets, for tasks that keep the grid
    (denoising, motion): what ``validation_psnr`` must beat. None for SR or without validation volumes."""
    if val_batch is None or val_batch[0].shape != val_batch[1].shape:
        return None
    return _psnr(val_batch[0], val_batch[1])


def train_step(net: torch.nn.Module, state: TrainState, batch: tuple, tc: TrainConfig, autocast: Any) -> float:
    """One optimiser step on ``batch`` (x, y, retention), then one discriminator step in a GAN fine-tune; returns
    the generator's loss."""
    x, y, retention = batch
    with autocast:
        pred = net(x)
    loss = loss_fn(expected_target(pred.float(), x, retention), y, tc.ssim_weight)
    if state.adversarial is not None:
        loss = loss + state.adversarial.generator_terms(pred.float(), y)
    state.opt.zero_grad(set_to_none=True)
    loss.backward()
    if tc.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), tc.grad_clip)
    state.opt.step()
    if state.adversarial is not None:
        state.adversarial.discriminator_step(pred.float(), y)
    if state.averaged is not None:
        state.averaged.update_parameters(state.model)
    return float(loss.detach())


def train_loop(cfg: Config, state: TrainState, source: PairSource, val_batch: Optional[tuple], ckpt_path: Path,
               quiet: bool) -> bool:
    """Steps until ``train.steps`` or ``train.max_minutes``; checkpoints on the way. Returns True if cut by time."""
    from tqdm import tqdm

    tc = cfg.train
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=tc.precision == "bf16")
    t_start = time.time()
    last_ckpt = t_start
    state.model.train()
    # the through-plane and slice-wise motion modules train their 2D core on slice patches
    net = state.model.net2d if cfg.data.task == "throughplane" or cfg.data.patch_dims == 2 else state.model
    bar = tqdm(total=tc.steps, initial=state.step, disable=quiet, desc=cfg.model.name, mininterval=5.0)
    ema = None
    patches = 0
    truncated = False
    baseline = input_psnr(val_batch)
    while state.step < tc.steps:
        if state.step > 0 and cfg.degrade.refresh_every > 0 and state.step % cfg.degrade.refresh_every == 0:
            source.refresh()
        for g in state.opt.param_groups:
            g["lr"] = _lr_at(state.step, tc, (state.elapsed_before + time.time() - t_start) / 60)
        value = train_step(net, state, source.batch(tc.batch), tc, autocast)
        state.step += 1
        patches += tc.batch
        ema = value if ema is None else 0.98 * ema + 0.02 * value
        now = time.time()
        bar.update(1)
        bar.set_postfix(loss=f"{ema:.4f}", patches_s=f"{patches / (now - t_start):.1f}")
        if state.step % tc.val_every == 0 or state.step == tc.steps:
            state.history.append({"step": state.step, "loss": ema, "val_psnr": validation_psnr(net, state.model, val_batch),
                                  "minutes": (state.elapsed_before + now - t_start) / 60,
                                  **({"val_psnr_input": baseline} if baseline is not None else {}),
                                  **(state.adversarial.last if state.adversarial is not None else {})})
            logger.info("step %d loss %.4f val_psnr %.2f", state.step, ema, state.history[-1]["val_psnr"])
        if now - last_ckpt > 60 * tc.checkpoint_minutes:
            save_checkpoint(ckpt_path, state, state.elapsed_before + now - t_start)
            last_ckpt = now
        if state.elapsed_before + now - t_start > 60 * tc.max_minutes:
            truncated = True
            logger.warning("stopping %s at step %d: max_minutes reached", cfg.model.name, state.step)
            break
    bar.close()
    state.elapsed_before += time.time() - t_start
    save_checkpoint(ckpt_path, state, state.elapsed_before)
    return truncated


def without_group(cfg: Config, group: str) -> Config:
    """``cfg`` for a leave-one-source-out run: the volumes of source group ``group`` dropped from its training and
    validation lists, the model renamed ``<name>-without-<group>`` and written to its run folder (a left-out model
    is never bundled). Refused when it would not leave the group out: no training volume of it, or weights to start
    from that were trained on it."""
    sources = sources_of(cfg)
    if sources is None:
        raise ValueError("--leave-out needs a data sources file ([data] sources) to know the groups")
    if group not in sources.groups(cfg.data.train_ids):
        raise ValueError(f"no training volume of {cfg.model.name} is in group {group!r} (its groups: "
                         f"{', '.join(sources.groups(cfg.data.train_ids))})")
    if cfg.model.init_from:
        init_card = (REPO_ROOT / cfg.model.init_from).with_suffix(".json")
        seen = json.loads(init_card.read_text()).get("training", {}).get("volumes", []) if init_card.exists() else None
        if seen is None or any(v in sources.volumes and sources.entry(v).group == group for v in seen):
            raise ValueError(f"{cfg.model.init_from} was trained on group {group!r} (or has no card to say it was "
                             f"not): a run starting from it does not leave the group out")
    name = f"{cfg.model.name}-without-{group}"
    run_dir = Path(cfg.train.run_dir)
    return dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, name=name),
        data=dataclasses.replace(cfg.data, train_ids=leave_out(sources, cfg.data.train_ids, group),
                                 val_ids=leave_out(sources, cfg.data.val_ids, group)),
        train=dataclasses.replace(cfg.train, out_dir=str(run_dir / name)))


def run_training(config_path: str, resume: bool = False, quiet: bool = False, data_root: str = "",
                 leave_out_group: str = "", max_minutes: float = 0.0, out_dir: str = "") -> Path:
    """Train the model a TOML config describes; returns the path of the written weights file.
    ``leave_out_group``: train without that source group (``without_group``); ``max_minutes`` > 0 overrides the
    config's wall-clock budget; ``out_dir`` the folder of the weights and card (a candidate beside the bundled one)."""
    cfg = load_config(config_path, data_root)
    if leave_out_group:
        cfg = without_group(cfg, leave_out_group)
    if max_minutes > 0:
        cfg.train.max_minutes = max_minutes
    if out_dir:
        cfg.train.out_dir = str(Path(out_dir).resolve())
    tc = cfg.train
    torch.set_num_threads(tc.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(tc.threads)
    torch.manual_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)
    sources = sources_of(cfg)
    check_shippable(sources, cfg.data.data_root, cfg.data.train_ids)
    if set(cfg.data.train_ids) & set(cfg.data.val_ids):
        raise ValueError("training and validation volumes overlap")

    source = SOURCES[cfg.data.task](cfg, cfg.data.train_ids, rng)
    val_batch = None
    if cfg.data.val_ids:
        val_source = SOURCES[cfg.data.task](cfg, cfg.data.val_ids, np.random.default_rng(tc.seed + 1))
        val_batch = val_source.batch(max(4, tc.batch))

    # hashed before training: a staged chain overwrites the file it starts from when it writes its weights
    init_sha256 = sha256_of(REPO_ROOT / cfg.model.init_from) if cfg.model.init_from else ""
    model = build_initial_model(cfg)
    averaged = (torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(
        tc.ema_decay), use_buffers=True) if tc.ema_decay > 0 else None)
    state = TrainState(model, torch.optim.Adam(model.parameters(), lr=tc.lr), averaged, rng)
    run_dir = Path(tc.run_dir) / cfg.model.name
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "checkpoint.pt"
    feature_history: list[float] = []
    if cfg.adversarial is not None:
        state.adversarial, feature_history = build_objective(
            cfg.adversarial, source, run_dir, tc.batch, tc.seed, resume=resume and ckpt_path.exists(),
            spatial_dims=int(cfg.model.kwargs.get("spatial_dims", 3)))
    if resume and ckpt_path.exists():
        resume_from(ckpt_path, state, source)
        logger.info("resumed %s at step %d", cfg.model.name, state.step)
    truncated = train_loop(cfg, state, source, val_batch, ckpt_path, quiet)

    out_dir = Path(tc.out_dir) if tc.out_dir else WEIGHTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = out_dir / f"{cfg.model.name}.pt"
    shipped = averaged.module if averaged is not None else model
    shipped.eval()
    torch.save({k: v.detach().clone().float() for k, v in shipped.state_dict().items()}, weights_path)
    card = model_card(cfg, model, weights_path, config_path, steps=state.step, truncated=truncated,
                      seconds=state.elapsed_before, history=state.history)
    if init_sha256:  # which weights an experiment that names the bundled file actually started from
        card["training"]["init_sha256"] = init_sha256
    if sources is not None:
        card["training"]["sources"] = sources.citation(cfg.data.train_ids)
    # so the bench knows these volumes under any file name (evaluation.runner.provenance)
    card["training"]["volume_hashes"] = {
        v: content_hash(str(volume_file(sources, cfg.data.data_root, v)[0]))
        for v in dict.fromkeys(cfg.data.train_ids + cfg.data.val_ids)}
    if leave_out_group:
        card["training"]["left_out_group"] = leave_out_group
        card["training"]["command"] += f" --leave-out {leave_out_group}"
    if cfg.adversarial is not None:
        card["training"]["feature_net_pretext_loss"] = feature_history
    card_path = out_dir / f"{cfg.model.name}.json"
    write_card(card_path, card)
    logger.info("wrote %s and %s", weights_path, card_path)
    return weights_path
