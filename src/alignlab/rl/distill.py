"""On-policy distillation (GKD, Agarwal et al. 2024): the student samples completions of the prompts, and each
step minimises the generalised JSD (losses/distill.py) between the student's and the teacher's next-token
distributions at every position of those samples. The teacher is a frozen model sharing the student's vocabulary.
The held-out measure is the same per-token divergence on samples of held-out prompts (`eval_kl`): it falls as the
student approaches the teacher on its own distribution.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from alignlab.rl.rollout import Rollout, pack_rollout, sample_and_score
from alignlab.train.step import optimizer_step


def _logp(model: Any, ro: Rollout, idx: torch.Tensor, temperature: float) -> torch.Tensor:
    """[n, T, V] log-softmax of the rollout's response positions under softmax(logits / temperature)."""
    out = model(input_ids=ro.input_ids[idx], attention_mask=ro.attention_mask[idx],
                position_ids=ro.position_ids[idx], use_cache=False, logits_to_keep=ro.resp_len + 1)
    return torch.log_softmax(out.logits[:, :-1].float() / temperature, -1)


def per_token_divergence(state: Any, ro: Rollout, idx: torch.Tensor, *, grad: bool) -> torch.Tensor:
    """[n, T] generalised JSD between the student (with its graph when `grad`) and the frozen teacher."""
    from alignlab.losses.distill import generalized_jsd

    cfg = state.cfg
    with torch.no_grad(), state.compute(cache=True):
        teacher = _logp(state.teacher, ro, idx, cfg.temperature)
    with torch.enable_grad() if grad else torch.no_grad():
        student = _logp(state.train_policy if grad else state.policy, ro, idx, cfg.temperature)
        return generalized_jsd(student, teacher, cfg.beta) * ro.mask[idx]


def distill_step(state: Any, step: int, rows: list) -> dict[str, float]:
    """Sample with the student, one optimizer step on the token-mean divergence to the teacher."""
    from alignlab.rl.update import micro_slices

    cfg, world = state.cfg, state.world
    samples, _, stats = sample_and_score(state, step, rows, logprobs=False)
    ro = pack_rollout(samples, state.tokenizer.pad_token_id, state.device)
    t0 = time.perf_counter()

    def forward(idx: torch.Tensor):
        div = per_token_divergence(state, ro, idx, grad=True)
        return div.sum() / ro.mask[idx].sum().clamp(min=1.0), {}

    micro = micro_slices(torch.arange(ro.mask.shape[0]), cfg.grad_accum, world)
    out = optimizer_step(state.optimizers[0], [lambda i=i: forward(i) for i, _ in micro],
                         [float(ro.mask[i].sum()) if real else 0.0 for i, real in micro],
                         total=float(ro.mask.sum()), world_size=world.size, max_grad_norm=cfg.max_grad_norm,
                         sync=state.sync(state.train_policy), compute=lambda: state.compute(cache=False))
    return {"loss": world.all_reduce_sum(out.metrics["loss"]), "grad_norm": out.grad_norm,
            "response_length": float(ro.mask.sum(-1).mean()), **stats, "time/training": time.perf_counter() - t0}


def held_out_divergence(state: Any, rows: list) -> dict[str, float]:
    """eval_kl: the token-mean divergence to the teacher on the student's samples of the held-out prompts
    (one fixed seed, so evaluations compare like with like; main rank only, so no collective here)."""
    from alignlab.rl.rollout import encode_rows
    from alignlab.rollout.generate import SamplingConfig, generate

    cfg = state.cfg
    sc = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                        seed=cfg.seed + 7, batch_size=cfg.generation_batch_size)
    with state.compute(cache=True):
        res = generate(state.policy, state.tokenizer, encode_rows(state.tokenizer, rows, cfg.max_prompt_length), sc)
    ro = pack_rollout(res.samples, state.tokenizer.pad_token_id, state.device)
    div = per_token_divergence(state, ro, torch.arange(ro.mask.shape[0]), grad=False)
    return {"eval_kl": float(div.sum() / ro.mask.sum().clamp(min=1.0))}
