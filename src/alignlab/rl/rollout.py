"""Experience making (collect): sample, score, and annotate a rollout with old-policy and reference log-probs
and critic values, the tensors the advantage estimators and the policy losses take.

A rollout is packed as [left-padded prompt | right-padded completion] rows, so every response token t sits at
column P + t in every row and its log-prob comes from the logits at column P + t - 1: the same positions (ids
from the attention mask) the KV-cache sampler used. Slices [N, T] of the response are what the pure losses in
losses/policy.py and losses/advantages.py take.

Data parallelism: each rank samples and scores ITS prompts (a prompt's group never straddles ranks), the
samples are gathered so that every rank holds the same global rollout, and the no-grad forwards (old,
reference, values) are split by rows and gathered too. Advantages and the minibatch order are then computed
on the whole batch on every rank, exactly as one process would (rl/update.py takes each rank's share).
When one optimizer step uses the whole rollout (one process), the trainer's old log-probs come from that
update's forward instead of a pass of their own (`old_from_update`).
The policy runs without dropout (rl/loop.py removes it), as TRL and OpenRLHF do for RL: with dropout the
ratio new/old would be noisy even before the first update.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

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
    """[N, T] float, 1.0 on completion tokens (the trained ones, after mask_truncated and an env's tool tokens)."""
    prompt_len: int
    resp_len: int
    rewards: torch.Tensor | None = None
    """[N] sequence rewards."""
    old_logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    values: torch.Tensor | None = None
    is_weights: torch.Tensor | None = None
    """[N, T] rollout_is weights (trainer/sampler probability, capped), None when off."""
    sampler_logprobs: torch.Tensor | None = None
    """[N, T] the sampler's log-probs of its tokens, when the run asked for them."""
    old_from_update: bool = False
    """The old log-probs (and rollout_is weights) are filled in by the update's own forward: see `collect`."""
    shared_prompts: bool = False
    """Forwards use the prompt-shared layout (rl/shared_prompt.py) when the model takes span plans."""
    pad_to_multiple_of: int | None = None
    """That layout's row width is rounded up to a multiple of this (OnPolicyConfig.pad_to_multiple_of)."""
    sampled_mask: torch.Tensor | None = None
    """[N, T] the mask before mask_truncated zeroed truncated answers (None: `mask`): what the KL and rollout_is
    metrics describe, whichever forward gave the old log-probs (the update's own one runs after the shaping)."""


def pack_rollout(samples: list, pad_id: int, device: str, cfg: Any = None) -> Rollout:
    """Tensors of a rollout from generate()'s samples (prompt-major order kept); `cfg` (an OnPolicyConfig) picks
    the training forwards' layout (prefix_sharing, pad_to_multiple_of)."""
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
    ro = Rollout(ids.to(device), attn.to(device), pos.to(device), resp.to(device), mask.to(device), P, T)
    if cfg is not None:
        ro.shared_prompts, ro.pad_to_multiple_of = cfg.prefix_sharing, cfg.pad_to_multiple_of
    return ro


def response_logits(model: Any, ro: Rollout, idx: torch.Tensor) -> torch.Tensor:
    """Float32 logits [n, T, V] at the positions predicting the rollout's response tokens. Padded rows: only
    the last T + 1 positions reach the LM head (`logits_to_keep`); with `ro.shared_prompts` (and span attention)
    one prompt-shared row instead (rl/shared_prompt.py), same numbers."""
    from alignlab.models.attention import uses_spans

    if ro.shared_prompts and uses_spans(model):
        from alignlab.rl.shared_prompt import shared_prompt_logits

        return shared_prompt_logits(model, ro, idx).float()
    out = model(input_ids=ro.input_ids[idx], attention_mask=ro.attention_mask[idx],
                position_ids=ro.position_ids[idx], use_cache=False, logits_to_keep=ro.resp_len + 1)
    return out.logits[:, :-1].float()


def policy_logprobs(model: Any, ro: Rollout, idx: torch.Tensor, temperature: float,
                    want_entropy: bool = False, entropy_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [n, T] of the rollout's tokens (and per-token entropy, with its graph when `entropy_grad`)
    under softmax(logits / temperature); 0 on padding. The prompt-shared path runs the LM head on the response
    tokens only, the padded one on every cell of the [n, T] grid."""
    from alignlab.models.attention import uses_spans

    labels, cells = ro.response[idx], None
    if ro.shared_prompts and uses_spans(model) and temperature == 1.0 and not entropy_grad:
        # the fused chunked head (ops/logprobs.py): no [N, V] logits, their float copy, softmax or log-softmax
        from alignlab.ops.logprobs import lm_head_logprobs
        from alignlab.rl.shared_prompt import shared_prompt_hidden
        from alignlab.train.preference import _unwrap

        cells = labels != -100
        out = lm_head_logprobs(_unwrap(model), shared_prompt_hidden(model, ro, idx, cells), labels[cells],
                               entropy=want_entropy)
        lp, ent = out if want_entropy else (out, None)
        lp = lp.new_zeros(cells.shape).masked_scatter(cells, lp)
        return lp, ent.new_zeros(cells.shape).masked_scatter(cells, ent) if ent is not None else None
    if ro.shared_prompts and uses_spans(model):
        from alignlab.rl.shared_prompt import shared_prompt_logits

        cells = labels != -100
        logits, labels = shared_prompt_logits(model, ro, idx, cells).float(), labels[cells]
    else:
        logits = response_logits(model, ro, idx)
    if temperature != 1.0:
        logits = logits / temperature
    lp = token_logprobs(logits, labels)
    ent = entropy_from_logits(logits if entropy_grad else logits.detach()) if want_entropy else None
    if cells is not None:  # back onto the [n, T] grid (row-major, as the cells were gathered)
        lp = lp.new_zeros(cells.shape).masked_scatter(cells, lp)
        ent = ent.new_zeros(cells.shape).masked_scatter(cells, ent) if ent is not None else None
    return lp, ent


@torch.no_grad()
def sharded_forward(fn: Callable[[torch.Tensor], torch.Tensor], n: int, size: int, world: Any) -> torch.Tensor:
    """fn over this rank's rows of [0, n) in chunks of `size`, gathered so every rank gets all n rows.
    Rank r takes the contiguous block [r*m, (r+1)*m) of m = ceil(n / ranks) rows, the last blocks short or empty
    when ranks do not divide n (a dynamic-sampling rollout of any number of groups): a short block is filled up
    with row 0 so every rank gathers the same shape, and the filler, all after row n - 1, is cut off."""
    m = -(-n // world.size)
    mine = torch.arange(min(world.rank * m, n), min((world.rank + 1) * m, n))
    mine = torch.cat([mine, mine.new_zeros(m - len(mine))])
    local = torch.cat([fn(mine[s:s + size]) for s in range(0, m, size)])
    return world.all_gather_cat(local)[:n]


def encode_rows(tokenizer: Any, rows: list, max_prompt_length: int) -> list[list[int]]:
    """Prompt ids for generation, cut to `max_prompt_length` (the last tokens are kept) BEFORE sampling,
    so the sampler and the training forward see the same prompt."""
    from alignlab.data.tokenize import tokenize_prompt

    return [tokenize_prompt(r, tokenizer, max_prompt_length) for r in rows]


def sample_and_score(state: Any, step: int, rows: list, *, logprobs: bool, round: int = 0
                     ) -> tuple[list, list[float], dict]:
    """This rank's share of the step's prompts sampled (per-row seeded: the same samples in any sharding) and
    scored, then gathered: (all samples, all rewards, timings), prompt-major, identical on every rank."""
    from alignlab.eval.policy import score_rows
    from alignlab.rollout.generate import SamplingConfig, generate

    cfg, world, k = state.cfg, state.world, state.cfg.num_generations
    per = len(rows) // world.size
    mine = rows[world.rank * per:(world.rank + 1) * per]
    t0 = time.perf_counter()
    sc = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                        seed=(cfg.seed * 1_000_003 + step) * 101 + round, logprobs=logprobs,
                        batch_size=cfg.generation_batch_size, per_row_seed=True, first_prompt=world.rank * per,
                        weights_dtype=cfg.sampling_weights)
    prompt_ids = encode_rows(state.tokenizer, mine, cfg.max_prompt_length)
    if cfg.rollout_engine is not None:  # the engine holds the policy's latest weights (rl/loop.py pushes them)
        from alignlab.rollout.remote import generate_remote

        res = generate_remote(cfg.rollout_engine, state.tokenizer, prompt_ids, sc, n=k,
                              vocab_size=state.policy.get_input_embeddings().num_embeddings)
    else:
        with state.compute(cache=True):
            res = generate(state.policy, state.tokenizer, prompt_ids, sc, n=k)
    t_gen = time.perf_counter() - t0
    rewards = (score_rows(state.reward_fn, mine, [s.text for s in res.samples], k) if state.reward_fn is not None
               else [0.0] * len(res.samples))
    parts = getattr(state.reward_fn, "last_components", {})  # a weighted reward list: each component, unweighted
    gathered = world.all_gather_objects((res.samples, rewards, parts))
    samples = [s for part, _, _ in gathered for s in part]
    all_rewards = [r for _, part, _ in gathered for r in part]
    stats = {"time/generation": t_gen, "time/scoring": time.perf_counter() - t0 - t_gen,
             "tokens_per_second": world.all_reduce_sum(res.num_tokens) / max(t_gen, 1e-9)}
    for name in parts:  # each sample keeps its components: logged over the samples the step trains on
        for s, v in zip(samples, [v for _, _, p in gathered for v in p[name]]):
            s.reward_parts = {**getattr(s, "reward_parts", {}), name: v}
    return samples, all_rewards, stats


def sample_metrics(samples: list) -> dict[str, float]:
    """Over the samples the step trains on (dynamic sampling's kept groups, as reward_mean): each component of a
    weighted reward list (reward/<name>, unweighted) and, for env episodes, turns and tool use."""
    from alignlab.rl.envs.episode import Episode

    out: dict[str, float] = {}
    for name in getattr(samples[0], "reward_parts", {}) if samples else {}:
        out[f"reward/{name}"] = sum(s.reward_parts[name] for s in samples) / len(samples)
    if samples and isinstance(samples[0], Episode):
        from alignlab.rl.multiturn import episode_stats

        out.update(episode_stats(samples))
    return out


def reference_logprobs(state: Any, ro: Rollout, size: int) -> torch.Tensor:
    """Reference log-probs: the frozen copy, or the policy with its LoRA adapter switched off."""
    from alignlab.models.lora import adapter_disabled

    ref, temp, n = state.reference, state.cfg.temperature, ro.input_ids.shape[0]
    model = ref if ref is not None else state.policy
    with adapter_disabled(state.policy) if ref is None else nullcontext(), state.compute(cache=True):
        return sharded_forward(lambda i: policy_logprobs(model, ro, i, temp)[0], n, size, state.world)


def rollout_metrics(ro: Rollout, samples: list, k: int) -> dict[str, float]:
    """Rollout-side metrics that need no log-probs."""
    from alignlab.losses.advantages import zero_spread_fraction

    n = ro.mask.shape[0]
    metrics = {
        "reward_mean": float(ro.rewards.mean()),
        "reward_std": float(ro.rewards.std()) if n > 1 else 0.0,
        "response_length": float(ro.mask.sum(-1).mean()),
        "truncated_frac": sum(s.finish_reason == "length" for s in samples) / n,
    }
    if k > 1:
        metrics["zero_spread_frac"] = zero_spread_fraction(ro.rewards, k)
    return metrics


def old_policy_metrics(cfg: Any, ro: Rollout) -> dict[str, float]:
    """What needs the old log-probs: the rollout_is weights (set on `ro`) and their metrics, and the KL to the
    reference (the named estimator's sequence sum, averaged over sequences)."""
    from alignlab.losses.policy import kl_penalty

    metrics: dict[str, float] = {}
    mask = ro.mask if ro.sampled_mask is None else ro.sampled_mask
    if cfg.rollout_is != "none":
        from alignlab.losses.rollout_is import rollout_is_weights

        ro.is_weights, metrics = rollout_is_weights(ro.old_logprobs, ro.sampler_logprobs, mask, cfg.rollout_is,
                                                    cfg.rollout_is_cap)
    if ro.ref_logprobs is not None:
        kl = kl_penalty(ro.old_logprobs, ro.ref_logprobs, cfg.kl_estimator, max_log_ratio=20.0) * mask
        metrics[f"kl_{cfg.kl_estimator}"] = float(kl.sum(-1).mean())
    return metrics


def old_from_update(state: Any, n: int) -> bool:
    """Whether the update's own forward can give the old log-probs: one policy optimizer step over the whole
    rollout (ppo_epochs 1, one minibatch), so every update forward runs the weights that made the rollout
    (TRL's GRPOTrainer does the same when num_iterations is 1). Not with kl_in_reward (the advantages need them
    first), a critic (its warm-up steps skip the policy update) or several ranks (each runs only its rows)."""
    cfg = state.cfg
    return (cfg.ppo_epochs == 1 and (cfg.mini_batch_size or n) >= n and not cfg.kl_in_reward
            and state.critic is None and state.world.size == 1)


def sample_groups(state: Any, step: int, rows: list, *, logprobs: bool, round: int = 0
                  ) -> tuple[list, list[float], dict]:
    """One round of samples for `rows`: single completions, or episodes through cfg.env (rl/multiturn.py)."""
    if state.cfg.env is None:
        return sample_and_score(state, step, rows, logprobs=logprobs, round=round)
    from alignlab.rl.multiturn import sample_episodes

    return sample_episodes(state, step * 1000 + round, rows, logprobs=logprobs)


def dynamic_groups(state: Any, step: int, rows: list, logprobs: bool) -> tuple[list, list[float], dict]:
    """DAPO dynamic sampling: sample rounds (the step's prompts, then fresh ones from state.more_prompts) until
    len(rows) groups have reward spread, at most max_resample_rounds extra rounds; zero-spread groups never enter
    (none at all when no round had spread)."""
    from alignlab.losses.shaping import GroupAccumulator

    cfg, k = state.cfg, state.cfg.num_generations
    acc = GroupAccumulator(len(rows), k, cfg.max_resample_rounds)
    batch, stats, rnd = rows, {}, 0
    while acc.needs_more():
        samples, rewards, part = sample_groups(state, step, batch, logprobs=logprobs, round=rnd)
        for key, v in part.items():
            stats[key] = stats.get(key, 0.0) + v if key.startswith("time/") else v
        acc.add(rewards, [(samples[g * k:(g + 1) * k], rewards[g * k:(g + 1) * k]) for g in range(len(batch))])
        rnd += 1
        batch = state.more_prompts(step, rnd)
    groups, ds = acc.take()  # none when every round's groups were zero-spread: the step then makes no update
    return [s for g, _ in groups for s in g], [r for _, rs in groups for r in rs], {**stats, **ds}


def collect(state: Any, step: int, rows: list) -> tuple[Rollout | None, list, dict[str, float]]:
    """Sample, score and annotate one global rollout (identical on every rank); returns it, its samples and
    its rollout-side metrics (None and no samples when dynamic sampling found no group with reward spread)."""
    cfg, world = state.cfg, state.world
    correct = cfg.rollout_is != "none"
    want_sampler = cfg.old_logprobs == "sampler" or correct
    if cfg.dynamic_sampling:
        samples, rewards, timing = dynamic_groups(state, step, rows, want_sampler)
        if not samples:  # no group with reward spread in any round: nothing to learn from, no optimizer step
            return None, [], {**timing, "skipped_update": 1.0}
    else:
        samples, rewards, timing = sample_groups(state, step, rows, logprobs=want_sampler)
    ro = pack_rollout(samples, state.tokenizer.pad_token_id, state.device, cfg)
    if cfg.env is not None:  # tool replies and template tokens are context, not the model's: no loss on them
        from alignlab.rl.envs.episode import padded_loss_mask

        ro.mask = ro.mask * padded_loss_mask(samples, ro.resp_len).to(ro.mask)
    ro.rewards = torch.tensor(rewards, dtype=torch.float32, device=state.device)
    n = ro.mask.shape[0]
    size = max(1, (cfg.mini_batch_size or n) // (cfg.grad_accum * world.size))
    if want_sampler:
        ro.sampler_logprobs = torch.zeros_like(ro.mask)
        for r, s in enumerate(samples):
            ro.sampler_logprobs[r, :len(s.logprobs)] = torch.tensor(s.logprobs)
    if (cfg.old_logprobs == "forward" or correct) and old_from_update(state, n):
        # the trainer's old log-probs without a forward of their own: rl/update.py policy_update fills them
        # (and the rollout_is weights) from its forward, then pg_step logs old_policy_metrics
        ro.old_from_update = True
        ro.old_logprobs = torch.zeros_like(ro.mask)
        ro.is_weights = torch.ones_like(ro.mask) if correct else None
    elif cfg.old_logprobs == "forward" or correct:
        with state.compute(cache=True):
            ro.old_logprobs = sharded_forward(lambda i: policy_logprobs(state.policy, ro, i, cfg.temperature)[0],
                                              n, size, world)
    else:
        ro.old_logprobs = ro.sampler_logprobs
    if state.needs_reference:
        ro.ref_logprobs = reference_logprobs(state, ro, size)
    if state.critic is not None:
        from alignlab.rl.critic import critic_values

        with state.compute(cache=True):
            ro.values = sharded_forward(lambda i: critic_values(state.critic, ro, i), n, size, world)
    metrics = {**rollout_metrics(ro, samples, cfg.num_generations), **sample_metrics(samples)}
    if not ro.old_from_update:
        metrics.update(old_policy_metrics(cfg, ro))
    metrics.update(shape_rollout(cfg, ro, samples))
    return ro, samples, {**metrics, **timing}


def shape_rollout(cfg: Any, ro: Rollout, samples: list) -> dict[str, float]:
    """Batch shaping on the scored rollout, in place: DAPO's soft overlong punishment and Kimi k1.5's length
    reward are added to the rewards (reward_mean stays the task's reward), mask_truncated drops truncated
    answers from the loss (DAPO Sec. 3.4)."""
    from alignlab.losses.shaping import kimi_length_penalty, overlong_penalty, truncation_mask

    lengths, out = ro.mask.sum(-1), {}
    if cfg.length_penalty == "kimi":
        ro.rewards = ro.rewards + kimi_length_penalty(ro.rewards > 0, lengths, cfg.num_generations).to(ro.rewards)
    if cfg.overlong is not None:
        o = cfg.overlong
        ro.rewards = ro.rewards + overlong_penalty(lengths, o.max_tokens or cfg.response_budget(), o.buffer,
                                                   o.penalty).to(ro.rewards)
    if cfg.mask_truncated:
        ro.sampled_mask = ro.mask
        ro.mask = ro.mask * truncation_mask([s.finish_reason for s in samples]).to(ro.mask)[:, None]
        out["trained_frac"] = float((ro.mask.sum(-1) > 0).float().mean())
    if cfg.overlong is not None or cfg.length_penalty != "none":
        out["reward_shaped_mean"] = float(ro.rewards.mean())
    return out
