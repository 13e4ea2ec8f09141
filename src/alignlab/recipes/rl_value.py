"""The PPO critic: a SEPARATE scalar-head model (models/heads.py), not a value head on the policy.

Why separate: (1) the policy never receives the value-regression gradient, whose scale has nothing to do
with the policy loss's (a shared trunk needs a tuned `vf_coef` and lets a bad critic disturb the policy);
(2) the critic can start from a trained reward model (`value_model: runs/rm`), as InstructGPT does
(Ouyang et al. 2022, Sec. 3.5), or from any model with the same tokenizer; (3) LoRA on the policy keeps its
"adapter off = reference" property without a value head living outside the adapter. The cost is one more
forward/backward per minibatch; critic-free estimators (grpo, rloo, reinforce_pp) skip the critic entirely.

V(s_t) for response token t is the head's output at the position that predicts token t (the token before
it), the same positions whose logits give the token's log-prob.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch


def build_critic(cfg: Any, device: str) -> tuple[Any, torch.optim.Optimizer]:
    """Critic model (LoRA when the policy uses LoRA) and its own AdamW at `value_learning_rate`."""
    from alignlab.models.heads import load_scorer
    from alignlab.train.optim import build_optimizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # the new scalar head's init is reproducible
        critic = load_scorer(cfg.value_model or cfg.model, device=device)
    if cfg.lora is not None:
        from alignlab.models.lora import apply_lora

        critic = apply_lora(critic, cfg.lora)
    critic.eval()  # no dropout: values at rollout and update time come from the same function
    opt = build_optimizer(critic, dataclasses.replace(cfg, learning_rate=cfg.value_learning_rate))
    return critic, opt


def critic_values(critic: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int,
                  resp_len: int) -> torch.Tensor:
    """[n, T] values of the response tokens of a packed rollout slice (see rl_step.Rollout)."""
    from alignlab.models.heads import values

    per_pos = values(critic, input_ids, attention_mask)
    return per_pos[:, prompt_len - 1: prompt_len - 1 + resp_len]


def value_update(state: Any, ro: Any, idx_mb: torch.Tensor, returns: torch.Tensor) -> dict[str, float]:
    """One critic optimizer step on the clipped value loss (losses/policy.value_loss) over a minibatch."""
    from alignlab.losses.policy import aggregate_loss, value_loss

    cfg, critic = state.cfg, state.extra["critic"]
    opt = state.optimizers[1]
    micro = len(idx_mb) // cfg.grad_accum
    total = ro.mask[idx_mb].sum().clamp(min=1.0)
    loss_sum, frac_sum = 0.0, 0.0
    for m in range(cfg.grad_accum):
        idx = idx_mb[m * micro:(m + 1) * micro]
        v = critic_values(critic, ro.input_ids[idx], ro.attention_mask[idx], ro.prompt_len, ro.resp_len)
        per_tok, frac = value_loss(v, ro.values[idx], returns[idx], ro.mask[idx], clip_eps=cfg.value_clip)
        w = ro.mask[idx].sum() / total
        loss = aggregate_loss(per_tok, ro.mask[idx], "token-mean")
        (loss * w).backward()
        loss_sum += float(loss.detach()) * float(w)
        frac_sum += float(frac) * float(w)
    params = [p for g in opt.param_groups for p in g["params"]]
    max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return {"value_loss": loss_sum, "value_clip_frac": frac_sum}
