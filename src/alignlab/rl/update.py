"""The learning half of an RL step, on train/step.py's optimizer-step core (no copy of its mechanics here).

`pg_step`: rollout (rl/rollout.py) -> advantages (the `estimator` registry, losses/advantages.py) ->
`ppo_epochs` passes over the rollout in minibatches of `mini_batch_size` sequences, each one optimizer step
of the PPO clipped surrogate (losses/policy.py) plus GRPO's KL term and an entropy bonus, and (gae) one
critic step on the clipped value loss. Under data parallelism every rank holds the global rollout and the
same minibatch order; rank r takes its slice of each minibatch's micro-batches (as train/batches.Sampler does),
weighted by its share of the minibatch's units, so 2 ranks give 1 rank's gradient.

`dpo_step`: online DPO (Guo et al. 2024; Xiong et al. 2024): best vs worst sample of each prompt by reward,
one DPO-family optimizer step on the pairs.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from alignlab.rl.rollout import (
    Rollout,
    collect,
    old_policy_metrics,
    policy_logprobs,
    sample_and_score,
    sample_metrics,
)
from alignlab.train.step import Weighted, optimizer_step


def micro_slices(idx_mb: torch.Tensor, grad_accum: int, world: Any) -> list[tuple[torch.Tensor, bool]]:
    """This rank's micro-batches of a global minibatch: micro-step m, rank r takes its share (equal when the sizes
    divide; a dynamic-sampling batch may not). A rank left without rows gets the minibatch's first row marked
    not real: it runs at weight 0, so DDP's all-reduce still sees every rank's backward."""
    out = []
    for chunk in torch.tensor_split(idx_mb, grad_accum):
        part = torch.tensor_split(chunk, world.size)[world.rank]
        out.append((part, True) if len(part) else (idx_mb[:1], False))
    return out


def _units(mask: torch.Tensor, loss_agg: str) -> float:
    """Loss units of a slice: tokens for the token-level aggregations, sequences for the per-sequence ones."""
    return float(mask.sum()) if loss_agg in ("token-mean", "token-sum-norm") else float(mask.shape[0])


def _global_mean(out: Any, world: Any) -> dict[str, float]:
    """A step's metrics over every rank: each key's sum over its weight (train/step.py Weighted)."""
    return {k: world.all_reduce_sum(v) / max(world.all_reduce_sum(out.weights[k]), 1e-12)
            for k, v in out.metrics.items()}


def policy_update(state: Any, ro: Rollout, adv: torch.Tensor, idx_mb: torch.Tensor, kl_coef: float) -> dict:
    """One policy optimizer step over a global minibatch (this rank's micro-batches of it)."""
    from alignlab.losses.policy import aggregate_loss, kl_penalty
    from alignlab.losses.rollout_is import rollout_is_weights

    cfg, world, spec = state.cfg, state.world, state.objective
    lo = cfg.epsilon_low if cfg.epsilon_low is not None else spec.epsilon_low
    hi = cfg.epsilon_high if cfg.epsilon_high is not None else spec.epsilon_high

    mode = cfg.loss_agg or spec.loss_agg  # null: the objective's own (gspo's paper averages per sequence)

    def agg(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # a micro-batch's mean over its units; token-sum-norm's constant is then its token count (see _units).
        # Dr. GRPO divides by one constant, the generation budget (Liu et al. 2025, Sec. 3.1; TRL's
        # max_completion_length), not by this rollout's longest answer, which moves the step size with other rows
        # clamp: a micro-batch with no trained token (all its answers masked as truncated) weighs 0 and adds 0
        norm = mask.sum().clamp(min=1) if mode == "token-sum-norm" else cfg.response_budget()
        return aggregate_loss(x, mask, mode, norm=norm)

    def forward(idx: torch.Tensor, real: bool):
        mask = ro.mask[idx]
        lp, ent = policy_logprobs(state.train_policy, ro, idx, cfg.temperature, want_entropy=True,
                                  entropy_grad=cfg.entropy_coef > 0)
        if ro.old_from_update:  # these weights made the rollout: its old log-probs are this forward's (collect)
            ro.old_logprobs[idx] = lp.detach()
            if ro.is_weights is not None:
                ro.is_weights[idx] = rollout_is_weights(lp, ro.sampler_logprobs[idx], mask, cfg.rollout_is,
                                                        cfg.rollout_is_cap)[0]
        out = spec.fn(lp, ro.old_logprobs[idx], adv[idx], mask, epsilon_low=lo, epsilon_high=hi,
                      dual_clip=cfg.dual_clip)
        # rollout_is: each token's term weighted by trainer/sampler probability (capped; Yao et al. 2025)
        pg = agg(out.loss * ro.is_weights[idx] if ro.is_weights is not None else out.loss, mask)
        loss = pg
        if not cfg.kl_in_reward and kl_coef > 0:  # GRPO's KL term (Shao et al. 2024, Eq. 3-4)
            kl_tok = kl_penalty(lp, ro.ref_logprobs[idx], cfg.kl_estimator, max_log_ratio=20.0)
            loss = loss + kl_coef * agg(kl_tok, mask)
        if cfg.entropy_coef > 0:  # entropy bonus (Schulman et al. 2017, Eq. 9)
            loss = loss - cfg.entropy_coef * agg(ent, mask)
        # token means, weighed by their tokens (not the loss's units: sequences under a per-sequence loss_agg, which
        # moved them with grad_accum and the number of ranks); a filler micro-batch (micro_slices) weighs nothing
        tokens = float(mask.sum()) if real else 0.0
        return loss, {"pg_loss": pg, "clip_frac": Weighted(out.clip_frac, tokens),
                      "approx_kl": Weighted(out.approx_kl, tokens),
                      "entropy": Weighted(aggregate_loss(ent, mask, "token-mean"), tokens)}

    micro = micro_slices(idx_mb, cfg.grad_accum, world)
    out = optimizer_step(state.optimizers[0], [lambda i=i, r=r: forward(i, r) for i, r in micro],
                         [_units(ro.mask[i], mode) if real else 0.0 for i, real in micro],
                         total=_units(ro.mask[idx_mb], mode), world_size=world.size,
                         max_grad_norm=cfg.max_grad_norm, sync=state.sync(state.train_policy),
                         compute=lambda: state.compute(cache=False))
    return {**_global_mean(out, world), "grad_norm": out.grad_norm}


def value_update(state: Any, ro: Rollout, idx_mb: torch.Tensor, returns: torch.Tensor) -> dict[str, float]:
    """One critic optimizer step on the clipped value loss (losses/policy.value_loss) over a global minibatch."""
    from alignlab.losses.policy import aggregate_loss, value_loss
    from alignlab.rl.critic import critic_values

    cfg, world = state.cfg, state.world

    def forward(idx: torch.Tensor):
        v = critic_values(state.train_critic, ro, idx)
        per_tok, frac = value_loss(v, ro.values[idx], returns[idx], ro.mask[idx], clip_eps=cfg.value_clip)
        return aggregate_loss(per_tok, ro.mask[idx], "token-mean"), {"value_clip_frac": frac}

    micro = micro_slices(idx_mb, cfg.grad_accum, world)
    out = optimizer_step(state.optimizers[1], [lambda i=i: forward(i) for i, _ in micro],
                         [float(ro.mask[i].sum()) if real else 0.0 for i, real in micro],
                         total=float(ro.mask[idx_mb].sum()),
                         world_size=world.size, max_grad_norm=cfg.max_grad_norm, sync=state.sync(state.train_critic),
                         compute=lambda: state.compute(cache=False))
    m = _global_mean(out, world)
    return {"value_loss": m.pop("loss"), **m, "value_grad_norm": out.grad_norm}


def advantages(state: Any, ro: Rollout) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token advantages [N, T] (and critic returns) from the configured estimator's registry entry."""
    from alignlab.losses.advantages import AdvantageInputs
    from alignlab.losses.policy import kl_penalty

    cfg = state.cfg
    shaped = None
    if cfg.kl_in_reward and ro.ref_logprobs is not None:
        shaped = kl_penalty(ro.old_logprobs, ro.ref_logprobs, cfg.kl_estimator, max_log_ratio=20.0) * ro.mask
    x = AdvantageInputs(ro.rewards, ro.mask, cfg.num_generations, kl=shaped,
                        kl_coef=state.kl_ctl.value if cfg.kl_in_reward else 0.0, values=ro.values, gamma=cfg.gamma,
                        lam=cfg.lam, whiten=cfg.whiten_advantages, scale_rewards=cfg.scale_rewards,
                        lam_critic=cfg.lam_critic, lam_alpha=cfg.lam_alpha)
    return state.estimator.fn(x)


def pg_step(state: Any, step: int, rows: list) -> dict[str, float]:
    """Rollout, advantages, then ppo_epochs x minibatches of policy (and critic) updates."""
    cfg = state.cfg
    ro, _, metrics = collect(state, step, rows)
    if ro is None:
        # dynamic sampling found no group with reward spread: no update (AdamW would still move the weights on
        # its momentum with zero advantages); the run goes on
        return metrics
    t0 = time.perf_counter()
    adv, returns = advantages(state, ro)
    n = ro.mask.shape[0]
    mb = cfg.mini_batch_size or n
    gen = torch.Generator().manual_seed(cfg.seed + step)
    sums: dict[str, float] = {}
    updates = 0
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(n, generator=gen) if mb < n else torch.arange(n)
        for s in range(0, n, mb):
            idx_mb = order[s:s + mb].to(ro.mask.device)
            warming = step < cfg.value_warmup_steps  # VAPO: the critic learns first, the policy waits
            part = {} if warming else policy_update(state, ro, adv, idx_mb, state.kl_ctl.value)
            if returns is not None:
                part.update(value_update(state, ro, idx_mb, returns))
            for key, v in part.items():
                sums[key] = sums.get(key, 0.0) + v
            updates += 1
    metrics.update({key: v / updates for key, v in sums.items()})
    if ro.old_from_update:
        metrics.update(old_policy_metrics(cfg, ro))
    metrics["kl_coef"] = state.kl_ctl.value
    if f"kl_{cfg.kl_estimator}" in metrics:  # no reference (kl_coef 0, fixed): no KL measured, nothing to adapt
        state.kl_ctl = state.kl_ctl.update(metrics[f"kl_{cfg.kl_estimator}"], n)
    metrics["time/training"] = time.perf_counter() - t0
    return metrics


def preference_pairs(samples: list, rewards: list[float], k: int) -> list[dict[str, list[int]]]:
    """Best-vs-worst pair per prompt (samples are prompt-major, k per prompt); ties are skipped."""
    pairs = []
    for g in range(len(samples) // k):
        group = list(range(g * k, (g + 1) * k))
        best = max(group, key=lambda i: rewards[i])
        worst = min(group, key=lambda i: rewards[i])
        if rewards[best] > rewards[worst]:
            s_best, s_worst = samples[best], samples[worst]
            pairs.append({"prompt_ids": s_best.prompt_ids, "chosen_ids": s_best.completion_ids,
                          "rejected_ids": s_worst.completion_ids})
    return pairs


def dpo_step(state: Any, step: int, rows: list) -> dict[str, float]:
    """Sample, rank, one DPO optimizer step on the pairs (no step when every group tied)."""
    from alignlab.data.pairs import PairCollator
    from alignlab.models.attention import uses_spans
    from alignlab.models.layouts import pair_layout
    from alignlab.train.batches import step_totals, to_device

    cfg, world, k = state.cfg, state.world, state.cfg.num_generations
    samples, rewards, timing = sample_and_score(state, step, rows, logprobs=False)
    r = torch.tensor(rewards)
    pairs = preference_pairs(samples, rewards, k)
    metrics = {"reward_mean": float(r.mean()), "reward_std": float(r.std()),
               "zero_spread_frac": 1.0 - len(pairs) / len(rows), "pairs": float(len(pairs)),
               "response_length": sum(len(s.completion_ids) for s in samples) / len(samples),
               "truncated_frac": sum(s.finish_reason == "length" for s in samples) / len(samples),
               **sample_metrics(samples), **timing}
    t1 = time.perf_counter()
    # Every rank holds all pairs; rank r takes its share of each of grad_accum chunks. Pairs need not split
    # evenly: a rank without pairs in a chunk runs the chunk's first pair at weight 0 (DDP needs every rank's
    # backward for its all-reduce; the zero weight keeps it out of the gradient and the metrics).
    chunks = [pairs[m::cfg.grad_accum] for m in range(cfg.grad_accum)]
    mine = [c[world.rank::world.size] for c in chunks]
    if pairs:
        collate = PairCollator(state.tokenizer.pad_token_id,
                               pair_layout("prefix" if cfg.prefix_sharing else "plain", state.policy),
                               pad_to_multiple_of=cfg.pad_to_multiple_of, spans=uses_spans(state.train_policy))
        parts = [p or c[:1] or pairs[:1] for p, c in zip(mine, chunks)]
        batches = [collate(p) for p in parts]
        for b, p in zip(batches, mine):
            if not p:  # a filler runs at weight 0: none of its tokens count in the step's totals, nor its
                b["totals"] = {k: 0 for k in b.get("totals", {})}  # rewards in BCO's running mean
                b["filler"] = True
        step_totals(batches, float(len(pairs)), world)  # the chosen-NLL of sft/orpo mixes: the step's token mean
        out = optimizer_step(state.optimizers[0],
                             [lambda b=b: state.dpo(state.train_policy, to_device(b, state.device))
                              for b in batches],
                             [float(len(p)) for p in mine], total=float(len(pairs)), world_size=world.size,
                             max_grad_norm=cfg.max_grad_norm, sync=state.sync(state.train_policy),
                             compute=lambda: state.compute(cache=False))
        metrics.update(_global_mean(out, world))
        metrics["grad_norm"] = out.grad_norm
    metrics["time/training"] = time.perf_counter() - t1
    return metrics
