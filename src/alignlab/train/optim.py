"""AdamW with decay / no-decay parameter groups and a pure learning-rate schedule.

The schedule is a plain function of the step, so resuming needs no scheduler object: the loop sets
each group's lr to `lr_at(step)` before every optimizer step.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from alignlab.train.config import TrainConfig


def lr_at(
    step: int,
    *,
    base_lr: float,
    total_steps: int,
    warmup_steps: int = 0,
    schedule: str = "cosine",
    min_lr_ratio: float = 0.0,
) -> float:
    """Learning rate for optimizer step `step` (0-based).

    Warmup is linear, (step + 1) / (warmup + 1) of the peak, so step 0 already learns (nanoGPT's
    convention). After warmup, `progress` = (step - warmup) / (total_steps - warmup), 0 at step=warmup and
    reaching 1 only after the last step (as transformers' schedules: ending at 1 on the last step made that step's
    learning rate the floor, 0 by default, so a run of N steps took N - 1 updates); cosine gives
    min + (peak - min) * (1 + cos(pi * progress)) / 2 (Loshchilov & Hutter 2017, eq. 5); linear gives
    peak - (peak - min) * progress; constant gives the peak.
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / (warmup_steps + 1)
    if schedule == "constant":
        return base_lr
    floor = base_lr * min_lr_ratio
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if schedule == "cosine":
        return floor + (base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return base_lr - (base_lr - floor) * progress
    raise ValueError(f"unknown lr schedule {schedule!r}; expected cosine, linear or constant")


def warmup_steps_for(cfg: TrainConfig, total_steps: int) -> int:
    """warmup_steps when set, else warmup_ratio of the total (rounded up so a small ratio still warms up)."""
    if cfg.warmup_steps > 0:
        return cfg.warmup_steps
    return math.ceil(round(cfg.warmup_ratio * total_steps, 9))  # 0.07 x 100 is 7.000000000000001 in floats


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Trainable params split so that only matrices decay.

    Biases, norm gains and other 1-D tensors are not decayed (decaying a norm gain toward 0 only
    fights the normalisation); this is the split nanoGPT and HF Trainer both use. Frozen params
    (LoRA's base weights) are left out so AdamW keeps no state for them.
    """
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable params with the config's betas, eps and weight decay."""
    import torch

    groups = param_groups(model, cfg.weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    devices = {p.device.type for g in groups for p in g["params"]}
    return torch.optim.AdamW(
        groups,
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_eps,
        # The fused kernel updates each tensor in one pass (HF Trainer's default too): 0.06 s against 0.43 s
        # per step for SmolLM2-135M on one CPU core, with no foreach temporaries (a copy of every parameter).
        fused=True if devices <= {"cpu", "cuda"} else None,
    )
