"""One PPO/GRPO step: rollout -> log-probs (old, reference, values) -> advantages -> minibatch updates.

A rollout is packed once as [left-padded prompt | right-padded completion] rows, so every response token t
sits at column P + t in every row and its log-prob comes from the logits at column P + t - 1: the same
positions (ids from the attention mask) the KV-cache sampler used. Slices [N, T] of the response are what
the pure losses in losses/policy.py and losses/advantages.py take.

The policy stays in eval mode (dropout off) for every forward, as TRL and OpenRLHF do for RL: with dropout
the ratio new/old would be noisy even before the first update.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from alignlab.losses import advantages as A
from alignlab.losses.policy import aggregate_loss, kl_penalty, ppo_clip_loss
from alignlab.ops.logprobs import entropy_from_logits, token_logprobs


@dataclass
class Rollout:
    input_ids: torch.Tensor
    """[N, P + T] prompt (left-padded) then completion (right-padded)."""
    attention_mask: torch.Tensor
    """[N, P + T] 1 on real tokens."""
    position_ids: torch.Tensor
    """[N, P + T] positions counted over real tokens (what the sampler used)."""
    response: torch.Tensor
    """[N, T] completion ids, -100 on padding (labels for token_logprobs)."""
    mask: torch.Tensor
    """[N, T] float, 1.0 on completion tokens."""
    prompt_len: int
    resp_len: int
    rewards: torch.Tensor | None = None
    """[N] sequence rewards."""
    old_logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    values: torch.Tensor | None = None


def pack_rollout(samples: list, pad_id: int, device: str) -> Rollout:
    """Tensors of a rollout from generate()'s samples (prompt-major order kept)."""
    P = max(len(s.prompt_ids) for s in samples)
    T = max(1, max(len(s.completion_ids) for s in samples))
    n = len(samples)
    ids = torch.full((n, P + T), pad_id, dtype=torch.long)
    attn = torch.zeros((n, P + T), dtype=torch.long)
    resp = torch.full((n, T), -100, dtype=torch.long)
    for r, s in enumerate(samples):
        p, c = s.prompt_ids, s.completion_ids
        ids[r, P - len(p):P] = torch.tensor(p)
        attn[r, P - len(p):P] = 1
        if c:
            ids[r, P:P + len(c)] = torch.tensor(c)
            attn[r, P:P + len(c)] = 1
            resp[r, :len(c)] = torch.tensor(c)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    mask = (resp != -100).float()
    return Rollout(ids.to(device), attn.to(device), pos.to(device), resp.to(device), mask.to(device), P, T)


def policy_logprobs(model: Any, ro: Rollout, idx: torch.Tensor, temperature: float,
                    want_entropy: bool = False, entropy_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [n, T] of the rollout's tokens (and per-token entropy, with its graph when `entropy_grad`)
    under softmax(logits / temperature). Only the last T + 1 positions reach the LM head (`logits_to_keep`)."""
    out = model(input_ids=ro.input_ids[idx], attention_mask=ro.attention_mask[idx],
                position_ids=ro.position_ids[idx], use_cache=False, logits_to_keep=ro.resp_len + 1)
    logits = out.logits[:, :-1].float()
    if temperature != 1.0:
        logits = logits / temperature
    lp = token_logprobs(logits, ro.response[idx])
    ent = entropy_from_logits(logits if entropy_grad else logits.detach()) if want_entropy else None
    return lp, ent


@torch.no_grad()
def _chunked(fn, n: int, size: int) -> torch.Tensor:
    return torch.cat([fn(torch.arange(s, min(s + size, n))) for s in range(0, n, size)])


def reference_logprobs(state: Any, ro: Rollout, size: int) -> torch.Tensor:
    """Reference log-probs: the frozen copy, or the policy with its LoRA adapter switched off."""
    ref, temp = state.extra.get("reference"), state.cfg.temperature
    if ref is not None:
        return _chunked(lambda i: policy_logprobs(ref, ro, i, temp)[0], ro.input_ids.shape[0], size)
    from alignlab.models.lora import adapter_disabled

    with adapter_disabled(state.policy):
        return _chunked(lambda i: policy_logprobs(state.policy, ro, i, temp)[0], ro.input_ids.shape[0], size)


def collect(state: Any, step: int, rows: list) -> tuple[Rollout, dict[str, float]]:
    """Sample, score and annotate one rollout; returns it with its rollout-side metrics."""
    from alignlab.recipes.online import encode_rows, score_rows
    from alignlab.rollout.generate import SamplingConfig, generate

    cfg, k = state.cfg, state.cfg.num_generations
    t0 = time.perf_counter()
    sc = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                        seed=cfg.seed * 1_000_003 + step, logprobs=True, batch_size=cfg.generation_batch_size)
    res = generate(state.policy, state.tokenizer, encode_rows(state, rows), sc, n=k)
    t_gen = time.perf_counter() - t0
    ro = pack_rollout(res.samples, state.tokenizer.pad_token_id, state.device)
    ro.rewards = torch.tensor(score_rows(state.reward_fn, rows, [s.text for s in res.samples], k),
                              dtype=torch.float32, device=state.device)
    size = max(1, (cfg.mini_batch_size or ro.mask.shape[0]) // cfg.grad_accum)
    n = ro.mask.shape[0]
    if cfg.old_logprobs == "sampler":
        old = torch.zeros_like(ro.mask)
        for r, s in enumerate(res.samples):
            old[r, :len(s.logprobs)] = torch.tensor(s.logprobs)
        ro.old_logprobs = old
    else:
        ro.old_logprobs = _chunked(lambda i: policy_logprobs(state.policy, ro, i, cfg.temperature)[0], n, size)
    ro.ref_logprobs = reference_logprobs(state, ro, size)
    if "critic" in state.extra:
        from alignlab.recipes.rl_value import critic_values

        ro.values = _chunked(lambda i: critic_values(state.extra["critic"], ro.input_ids[i], ro.attention_mask[i],
                                                     ro.prompt_len, ro.resp_len), n, size)
    k1 = (ro.old_logprobs - ro.ref_logprobs) * ro.mask
    lengths = ro.mask.sum(-1)
    metrics = {
        "reward_mean": float(ro.rewards.mean()),
        "reward_std": float(ro.rewards.std()) if n > 1 else 0.0,
        "kl": float(k1.sum(-1).mean()),
        "response_length": float(lengths.mean()),
        "truncated_frac": sum(s.finish_reason == "length" for s in res.samples) / n,
        "time/generation": t_gen,
        "time/scoring": time.perf_counter() - t0 - t_gen,
    }
    if k > 1:
        metrics["zero_spread_frac"] = A.zero_spread_fraction(ro.rewards, k)
    return ro, metrics


def compute_advantages(cfg: Any, ro: Rollout, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token advantages [N, T] (and GAE returns for the critic) from the configured estimator."""
    kl = kl_penalty(ro.old_logprobs, ro.ref_logprobs, cfg.kl_estimator, max_log_ratio=20.0) * ro.mask
    shaped_kl = kl if cfg.kl_in_reward else None
    coef = kl_coef if cfg.kl_in_reward else 0.0
    est = cfg.estimator
    if est == "gae":
        token_rewards = A.shape_rewards(ro.rewards, ro.mask, shaped_kl, coef)
        adv, returns = A.gae(token_rewards, ro.values, ro.mask, gamma=cfg.gamma, lam=cfg.lam)
        if cfg.whiten_advantages and ro.mask.sum() > 1:
            adv = A.whiten(adv, ro.mask)
        return adv, returns
    if est in ("reinforce_pp", "reinforce_pp_baseline"):
        extra = {"kl": shaped_kl, "kl_coef": coef, "gamma": cfg.gamma}
        if est == "reinforce_pp":
            return A.reinforce_pp_advantages(ro.rewards, ro.mask, **extra)[0], None
        return A.reinforce_pp_baseline_advantages(ro.rewards, ro.mask, cfg.num_generations, **extra)[0], None
    seq = ro.rewards - coef * (shaped_kl.sum(-1) if shaped_kl is not None else 0.0)
    fn = {"grpo": A.grpo_advantages, "dr_grpo": A.dr_grpo_advantages, "rloo": A.rloo_advantages}[est]
    return fn(seq, cfg.num_generations)[:, None] * ro.mask, None


def policy_update(state: Any, ro: Rollout, adv: torch.Tensor, idx_mb: torch.Tensor, kl_coef: float) -> dict:
    """One optimizer step over a minibatch (split into grad_accum micro-batches weighted to the
    minibatch's aggregate, so the gradient does not depend on grad_accum)."""
    cfg, policy, opt = state.cfg, state.policy, state.optimizers[0]
    micro = len(idx_mb) // cfg.grad_accum
    tokens = ro.mask[idx_mb].sum().clamp(min=1.0)
    sums: dict[str, float] = {}
    for m in range(cfg.grad_accum):
        idx = idx_mb[m * micro:(m + 1) * micro]
        mask = ro.mask[idx]
        lp, ent = policy_logprobs(policy, ro, idx, cfg.temperature, want_entropy=True,
                                  entropy_grad=cfg.entropy_coef > 0)
        out = ppo_clip_loss(lp, ro.old_logprobs[idx], adv[idx], mask, clip_eps=cfg.clip_eps,
                            clip_eps_high=cfg.clip_eps_high, dual_clip=cfg.dual_clip)
        pg = aggregate_loss(out.loss, mask, cfg.loss_agg, norm=ro.resp_len)
        loss = pg
        if not cfg.kl_in_reward and kl_coef > 0:  # GRPO's KL term (Shao et al. 2024, Eq. 3-4)
            kl_tok = kl_penalty(lp, ro.ref_logprobs[idx], cfg.kl_estimator, max_log_ratio=20.0)
            loss = loss + kl_coef * aggregate_loss(kl_tok, mask, cfg.loss_agg, norm=ro.resp_len)
        if cfg.entropy_coef > 0:  # entropy bonus (Schulman et al. 2017, Eq. 9)
            loss = loss - cfg.entropy_coef * aggregate_loss(ent, mask, cfg.loss_agg, norm=ro.resp_len)
        w = mask.sum() / tokens if cfg.loss_agg == "token-mean" else torch.tensor(len(idx) / len(idx_mb))
        (loss * w).backward()
        for key, v in (("loss", loss), ("pg_loss", pg), ("clip_frac", out.clip_frac),
                       ("approx_kl", out.approx_kl), ("entropy", aggregate_loss(ent, mask, "token-mean"))):
            sums[key] = sums.get(key, 0.0) + float(v.detach()) * float(w)
    params = [p for g in opt.param_groups for p in g["params"]]
    max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
    sums["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    opt.step()
    opt.zero_grad(set_to_none=True)
    return sums


def rl_step(state: Any, step: int, rows: list) -> dict[str, float]:
    """Rollout, advantages, then ppo_epochs x minibatches of policy (and critic) updates."""
    cfg = state.cfg
    ro, metrics = collect(state, step, rows)
    kl_ctl = state.extra["kl_ctl"]
    t0 = time.perf_counter()
    adv, returns = compute_advantages(cfg, ro, kl_ctl.value)
    n = ro.mask.shape[0]
    mb = cfg.mini_batch_size or n
    gen = torch.Generator().manual_seed(cfg.seed + step)
    sums: dict[str, float] = {}
    updates = 0
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(n, generator=gen) if mb < n else torch.arange(n)
        for s in range(0, n, mb):
            idx_mb = order[s:s + mb].to(ro.mask.device)
            part = policy_update(state, ro, adv, idx_mb, kl_ctl.value)
            if returns is not None:
                from alignlab.recipes.rl_value import value_update

                part.update(value_update(state, ro, idx_mb, returns))
            for key, v in part.items():
                sums[key] = sums.get(key, 0.0) + v
            updates += 1
    metrics.update({key: v / updates for key, v in sums.items()})
    metrics["kl_coef"] = kl_ctl.value
    state.extra["kl_ctl"] = kl_ctl.update(metrics["kl"], n)
    metrics["time/training"] = time.perf_counter() - t0
    return metrics
