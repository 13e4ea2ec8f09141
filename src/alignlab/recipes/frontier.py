"""`alignlab experiment frontier`: reward against KL for DPO, PPO, GRPO and best-of-N (DPO paper, Figure 2).

Rafailov et al. 2023 (Sec. 6.1, Fig. 2 left) plot, for the controlled sentiment task, the ground-truth
reward of each policy against its sequence KL to the reference, one point per (method, hyper-parameter,
checkpoint): the "frontier" is the best reward reached at each KL budget. Here at CPU scale:

- the task: openings of movie reviews (recipes/prompts.py) continued by the policy, reward = VADER compound
  sentiment (rollout/rewards.py "sentiment") instead of the paper's IMDB prompts and SiEBERT classifier;
- dpo (and optionally ipo, simpo): a beta sweep, offline on best-vs-worst pairs sampled from the base model;
- ppo and grpo: a KL-coefficient sweep (recipes/online.py);
- best-of-N: N sweep; its KL is the analytic log N - (N - 1) / N (Stiennon et al. 2020, App. G.3).

Every `eval_every` steps a point is measured on held-out prompts by `score_policy`: mean reward of samples
(temperature 1) and KL(policy || base) from the same samples (eval/kl.py k1 and k3). Points are appended to
`points.json` as each run finishes, so a stopped experiment resumes where it was (finished runs skipped).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class PolicyScore:
    """Mean reward and KL to the reference of samples from one policy on held-out prompts."""

    reward: float
    reward_se: float
    kl: Any
    """eval.kl.KLEstimate (k1, k3 with standard errors), or None when the policy is the reference itself."""
    texts: list[str]
    rewards: list[float]
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]


def score_policy(model: Any, tokenizer: Any, rows: Sequence[Any], reward_fn: Callable, *, n: int = 1,
                 max_new_tokens: int = 24, seed: int = 0, reference: Any = None, with_kl: bool = True,
                 batch_size: int = 64, temperature: float = 1.0) -> PolicyScore:
    """Sample n completions per row from `model`, score them, and estimate KL(model || reference) from the
    same samples (reference None: the disabled LoRA adapter). Both log-probs come from the same plain
    forward (eval/credit.py), so a policy equal to its reference gives exactly 0."""
    import math

    import torch

    from alignlab.eval.credit import completion_logps, reference_forward
    from alignlab.eval.kl import sequence_kl
    from alignlab.recipes.online import score_rows
    from alignlab.rollout.generate import SamplingConfig, generate

    sc = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, batch_size=batch_size)
    res = generate(model, tokenizer, list(rows), sc, n=n)
    texts = [s.text for s in res.samples]
    rewards = score_rows(reward_fn, list(rows), texts, n)
    prompts = [s.prompt_ids for s in res.samples]
    comps = [s.completion_ids for s in res.samples]
    kl = None
    if with_kl:
        pad = tokenizer.pad_token_id if isinstance(tokenizer.pad_token_id, int) else 0
        pol = completion_logps(model, prompts, comps, batch_size=batch_size, pad_id=pad)
        with reference_forward(model, reference) as ref_model:
            ref = completion_logps(ref_model, prompts, comps, batch_size=batch_size, pad_id=pad)
        width = max(len(c) for c in comps)

        def padded(xs: list[list[float]]) -> torch.Tensor:
            return torch.tensor([x + [0.0] * (width - len(x)) for x in xs], dtype=torch.float64)

        mask = padded([[1.0] * len(c) for c in comps])
        kl = sequence_kl(padded(pol), padded(ref), mask)
    mean = sum(rewards) / len(rewards)
    var = sum((r - mean) ** 2 for r in rewards) / max(len(rewards) - 1, 1)
    return PolicyScore(mean, math.sqrt(var / len(rewards)), kl, texts, rewards, prompts, comps)
