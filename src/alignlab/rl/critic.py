"""The PPO critic: a SEPARATE scalar-head model (models/heads.py), not a value head on the policy.

Why separate: (1) the policy never receives the value-regression gradient, whose scale has nothing to do
with the policy loss's (a shared trunk needs a tuned `vf_coef` and lets a bad critic disturb the policy);
(2) the critic can start from a trained reward model (`value_model: runs/rm`), as InstructGPT does
(Ouyang et al. 2022, Sec. 3.5), or from any model with the same tokenizer; (3) LoRA on the policy keeps its
"adapter off = reference" property without a value head living outside the adapter. The cost is one more
forward/backward per minibatch; critic-free estimators (grpo, rloo, reinforce_pp) skip the critic entirely.
Its weights (HF format, under checkpoint-N/critic) and its AdamW state are part of every RL checkpoint.

V(s_t) for response token t is the head's output at the position that predicts token t (the token before
it), the same positions whose logits give the token's log-prob.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from alignlab.models.checkpointing import enable_checkpointing
from alignlab.models.compiled import compile_blocks
from alignlab.models.kept_casts import share_input_casts
from alignlab.models.lean_blocks import lean_blocks


def without_dropout(model: Any, gradient_checkpointing: bool | str, compiled: bool = False) -> Any:
    """Every dropout off (p = 0) and the model left in train mode, so that gradient checkpointing (which
    transformers applies only in train mode) works while every forward stays deterministic: RL ratios and
    values must not carry dropout noise (TRL's GRPO and OpenRLHF also disable dropout). `compiled`: the
    config's `compile` (models/compiled.py). Without checkpointing, norm and SwiGLU blocks take the lean forward
    (models/lean_blocks.py) and Linears reading one float32 input share its bf16 copy (models/kept_casts.py)."""
    for m in model.modules():  # module attributes, not the config: the saved config.json stays the user's
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if isinstance(getattr(m, "attention_dropout", None), float):  # HF attention reads its own copy
            m.attention_dropout = 0.0
    enable_checkpointing(model, gradient_checkpointing)
    compile_blocks(model, compiled)
    lean_blocks(model, not gradient_checkpointing)
    share_input_casts(model, not compiled and not gradient_checkpointing)  # acts under bf16 autocast only
    return model.train()


def build_critic(cfg: Any, device: str) -> tuple[Any, torch.optim.Optimizer]:
    """Critic model (LoRA when the policy uses LoRA) and its own AdamW at `value_learning_rate`."""
    from alignlab.models.heads import load_scorer
    from alignlab.train.optim import build_optimizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # the new scalar head's init is reproducible
        critic = load_scorer(cfg.value_model or cfg.model, device=device)
    from alignlab.models.prepare import is_peft

    if is_peft(critic):  # a reward model saved as an adapter (loaded frozen): base + adapter merged, then trained
        from alignlab.models.lora import merge_lora

        critic = merge_lora(critic).requires_grad_(True)
        critic.name_or_path = cfg.value_model  # a LoRA on it records this adapter as its base, not the bare model
    if cfg.lora is not None:
        from alignlab.models.lora import apply_lora

        critic = apply_lora(critic, cfg.lora)
    without_dropout(critic, cfg.gradient_checkpointing, cfg.compile)  # values at rollout and update: the same function
    opt = build_optimizer(critic, dataclasses.replace(cfg, learning_rate=cfg.value_learning_rate))
    return critic, opt


def critic_values(critic: Any, ro: Any, idx: torch.Tensor) -> torch.Tensor:
    """[n, T] values of the response tokens of rollout rows `idx` (see rl.rollout.Rollout); meaningless on padding
    (the caller masks it). With `ro.shared_prompts` and span attention, the prompt-shared row of the policy's
    forwards (rl/shared_prompt.py): each prompt once, the same values as the padded rows (test)."""
    from alignlab.models.attention import uses_spans
    from alignlab.models.heads import head_outputs, values

    if ro.shared_prompts and uses_spans(critic):
        from alignlab.rl.shared_prompt import shared_prompt_batch
        from alignlab.train.steps import model_inputs

        batch, gather = shared_prompt_batch(ro, idx)
        return head_outputs(critic, **model_inputs(critic, batch))[0][gather]
    per_pos = values(critic, ro.input_ids[idx], ro.attention_mask[idx])
    return per_pos[:, ro.prompt_len - 1: ro.prompt_len - 1 + ro.resp_len]
