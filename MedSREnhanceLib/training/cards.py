"""Model cards: the task fields, the resolved config, MACs per output voxel, training provenance."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import REPO_ROOT, Config, normalisation_of


def macs_per_output_voxel(model: torch.nn.Module, spatial_dims: int, size: int = 24) -> float:
    """Multiply-accumulates of every convolution per output voxel, counted with forward hooks."""
    total = [0]

    def hook(mod: torch.nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        k = int(np.prod(mod.kernel_size))
        if isinstance(mod, (torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)):
            total[0] += inp[0].numel() * (mod.out_channels // mod.groups) * k  # each input scatters a kernel
        else:
            total[0] += out.numel() * (mod.in_channels // mod.groups) * k

    kinds = (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    x = torch.zeros((1, 1) + (size,) * spatial_dims)
    with torch.inference_mode():
        y = model(x)
    for h in handles:
        h.remove()
    return total[0] / y[0, 0].numel()


def portable_config(cfg: Config) -> dict[str, Any]:
    """The resolved config as a dict, its folders (resolved to absolute paths when loaded) written back relative
    to the repository root where they lie beside it ("../shared/data", as the configs write them): a card must
    not name one machine's folders. A folder elsewhere (a temporary one) stays absolute."""
    config = dataclasses.asdict(cfg)
    for section, key in (("data", "data_root"), ("data", "cache_dir"), ("train", "run_dir"), ("train", "out_dir")):
        path = config[section][key]
        if path and Path(path).is_absolute() and Path(path).is_relative_to(REPO_ROOT.parent):
            config[section][key] = os.path.relpath(path, REPO_ROOT)
    return config


# data.task -> what the card says the model serves (task, modality, scale mode)
_SAME_GRID: dict[str, dict[str, Any]] = {
    "denoise-mr": {"task": "denoise", "modality": "mr", "scale_mode": "none"},
    "denoise-ct": {"task": "denoise", "modality": "ct", "scale_mode": "none"},
    "motion-mr": {"task": "motion", "modality": "mr", "scale_mode": "none"},
}


def task_fields(cfg: Config) -> dict[str, Any]:
    task = cfg.data.task
    if task == "sr":
        return {"task": "sr", "modality": "mr", "scale_mode": "isotropic", "scales": [cfg.degrade.scale]}
    if task == "throughplane":
        modality = "ct" if normalisation_of(cfg) == "ct" else "mr"
        return {"task": "sr", "modality": modality, "scale_mode": "axis", "scale_min": cfg.degrade.factor_range[0],
                "scale_max": cfg.degrade.factor_range[1]}
    return dict(_SAME_GRID[task])


def model_card(cfg: Config, model: torch.nn.Module, weights_path: Path, config_path: str, *, steps: int,
               truncated: bool, seconds: float, history: list[dict[str, float]]) -> dict[str, Any]:
    """The card written next to the weights: what the model is, how it was trained, the resolved config."""
    tc = cfg.train
    return {
        "name": cfg.model.name,
        **task_fields(cfg),
        "arch": cfg.model.arch,
        "builder": cfg.model.builder,
        "kwargs": cfg.model.kwargs,
        "normalisation": normalisation_of(cfg),
        "weights": weights_path.name,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "halo": int(getattr(model, "halo")),
        "macs_per_output_voxel": round(macs_per_output_voxel(model, int(cfg.model.kwargs.get("spatial_dims", 3)))),
        "training": {
            "volumes": cfg.data.train_ids,
            "validation_volumes": cfg.data.val_ids,
            "steps": steps,
            "truncated": truncated,
            "cpu_minutes": round(seconds / 60, 1),
            "threads": tc.threads,
            "precision": tc.precision,
            "torch": torch.__version__,
            "history": history,
            "command": f"medsr train {config_path}",
        },
        "config": portable_config(cfg),
    }


# Measured after training (by `medsr bench` and benchmarks/): kept when the same model is retrained.
MEASURED_KEYS = ("metrics", "notes", "data_provenance", "inference_seconds_256x256x160")


def write_card(card_path: Path, card: dict[str, Any]) -> None:
    """Write ``card``, keeping the measured metrics and notes of an earlier card of the same name."""
    if card_path.exists():
        old = json.loads(card_path.read_text())
        for key in MEASURED_KEYS:
            if key in old:
                card.setdefault(key, old[key])
    card_path.write_text(json.dumps(card, indent=2) + "\n")
