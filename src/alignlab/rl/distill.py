"""On-policy distillation (GKD, Agarwal et al. 2024): the student samples completions of the prompts, and each
step minimises a per-token divergence (losses/distill.py) between the student and the teacher at every position
of those samples: with `kl_estimator: full` the generalised JSD between the two next-token distributions, with
`sampled` the reverse KL estimated on the sampled token from its two log-probs, which is all an OpenAI-compatible
teacher endpoint returns (rl/teacher.py). The teacher shares the student's vocabulary. The held-out measure is the
same per-token divergence on samples of held-out prompts (`eval_kl`): it falls as the student approaches the
teacher on its own distribution.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from alignlab.rl.rollout import Rollout, pack_rollout, response_logits, sample_and_score
from alignlab.train.step import optimizer_step


def _logp(model: Any, ro: Rollout, idx: torch.Tensor, temperature: float) -> torch.Tensor:
    """[n, T, V] log-softmax of the rollout's response positions under softmax(logits / temperature)."""
    return torch.log_softmax(response_logits(model, ro, idx) / temperature, -1)


def per_token_divergence(state: Any, ro: Rollout, idx: torch.Tensor, *, grad: bool,
                         teacher_lp: torch.Tensor | None = None) -> torch.Tensor:
    """[n, T] divergence between the student (with its graph when `grad`) and the frozen teacher: the generalised
    JSD of the full distributions, or (kl_estimator sampled) the sampled-token reverse KL from `teacher_lp`, the
    teacher's [N, T] log-probs of the whole rollout's tokens (rl/teacher.teacher_token_logprobs)."""
    from alignlab.losses.distill import generalized_jsd, sampled_reverse_kl
    from alignlab.rl.rollout import policy_logprobs

    cfg = state.cfg
    student_model = state.train_policy if grad else state.policy

    def student_forward(fn):
        if grad:  # optimizer_step runs a training forward under state.compute() already
            with torch.enable_grad():
                return fn()
        with torch.no_grad(), state.compute(cache=True):  # held out: the teacher's precision, so a student equal
            return fn()                                   # to its teacher scores 0 under bf16 too

    if cfg.kl_estimator == "sampled":
        student = student_forward(lambda: policy_logprobs(student_model, ro, idx, cfg.temperature)[0])
        return sampled_reverse_kl(student, teacher_lp[idx]) * ro.mask[idx]
    with torch.no_grad(), state.compute(cache=True):
        teacher = _logp(state.teacher, ro, idx, cfg.temperature)
    student = student_forward(lambda: _logp(student_model, ro, idx, cfg.temperature))
    return generalized_jsd(student, teacher, cfg.beta) * ro.mask[idx]


def _teacher_lp(state: Any, ro: Rollout) -> torch.Tensor | None:
    from alignlab.rl.teacher import teacher_token_logprobs

    return teacher_token_logprobs(state, ro) if state.cfg.kl_estimator == "sampled" else None


def distill_step(state: Any, step: int, rows: list) -> dict[str, float]:
    """Sample with the student, one optimizer step on the token-mean divergence to the teacher."""
    from alignlab.rl.update import micro_slices

    cfg, world = state.cfg, state.world
    samples, _, stats = sample_and_score(state, step, rows, logprobs=False)
    ro = pack_rollout(samples, state.tokenizer.pad_token_id, state.device, state.cfg)
    t0 = time.perf_counter()
    teacher_lp = _teacher_lp(state, ro)  # once per rollout (one request for a remote teacher)

    def forward(idx: torch.Tensor):
        div = per_token_divergence(state, ro, idx, grad=True, teacher_lp=teacher_lp)
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
    ro = pack_rollout(res.samples, state.tokenizer.pad_token_id, state.device, state.cfg)
    idx = torch.arange(ro.mask.shape[0], device=ro.mask.device)
    div = per_token_divergence(state, ro, idx, grad=False, teacher_lp=_teacher_lp(state, ro))
    return {"eval_kl": float(div.sum() / ro.mask.sum().clamp(min=1.0))}
