"""Iterative rejection sampling (Touvron et al. 2023, "Llama 2", Sec. 3.2.3): the best sample per prompt.

Each round samples K completions per prompt from the current policy and scores them with a reward; the
pool keeps, for every prompt, the highest-reward sample seen in ANY round so far (Llama 2 found that keeping
only the newest round's samples regressed on capabilities, so later rounds "incorporate top-performing
samples from all prior iterations"). The policy is then fine-tuned on the pool: `examples()` gives the
exact sampled token ids (prompt masked with -100, completion and its EOS trained), so no re-tokenisation
can shift the completion boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["BestPerPrompt", "Kept"]


@dataclass
class Kept:
    """The best sample of one prompt so far."""

    prompt_ids: list[int]
    completion_ids: list[int]
    text: str
    reward: float
    round: int
    """Round whose sample this is (1-based)."""


class BestPerPrompt:
    """prompt index -> its best sample across rounds."""

    def __init__(self) -> None:
        self.best: dict[int, Kept] = {}

    def update(self, groups: list[Any], round_: int) -> dict[str, float]:
        """Fold one round's scored groups (rollout.sampling.ScoredGroup, prompt i = groups[i]) into the pool.
        A sample replaces the kept one only with a strictly higher reward (ties keep the older sample, so a
        round that finds nothing better changes nothing). Empty completions never enter."""
        replaced, round_best = 0, []
        for i, g in enumerate(groups):
            # an answer that ends at once is [EOS] with text '': never empty ids, so the text decides
            scored = [(r, k) for k, (r, s) in enumerate(zip(g.rewards, g.samples)) if s.text.strip()]
            if not scored:
                continue
            r, k = max(scored, key=lambda x: (x[0], -x[1]))  # highest reward, first sample among equals
            round_best.append(r)
            s = g.samples[k]
            if i not in self.best or r > self.best[i].reward:
                replaced += i in self.best
                self.best[i] = Kept(list(s.prompt_ids), list(s.completion_ids), s.text, float(r), round_)
        rewards = [g_r for g in groups for g_r in g.rewards]
        return {"round": round_, "sample_reward_mean": sum(rewards) / max(len(rewards), 1),
                "round_best_mean": sum(round_best) / max(len(round_best), 1), "pool_size": len(self.best),
                "pool_reward_mean": self.mean_reward(), "replaced": replaced}

    def mean_reward(self) -> float:
        return sum(k.reward for k in self.best.values()) / max(len(self.best), 1)

    def examples(self, max_length: int | None = None) -> list[dict[str, list[int]]]:
        """SFT examples in prompt order: input_ids = prompt + completion, labels -100 on the prompt; longer than
        `max_length`, cut by the data layer's rule (data/tokenize.py: the prompt's end kept, to max_length // 2,
        then the completion to the room left)."""
        from alignlab.data.tokenize import _truncate

        out = []
        for _, k in sorted(self.best.items()):
            prompt, (completion,), _, _ = _truncate(k.prompt_ids, [k.completion_ids], max_length, None, "end")
            out.append({"input_ids": prompt + completion, "labels": [-100] * len(prompt) + completion})
        return out
