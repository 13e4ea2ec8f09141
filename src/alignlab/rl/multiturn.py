"""Multi-turn, tool-using rollouts (`alignlab grpo env=calculator`): each prompt's `num_generations` episodes run
turn by turn through an environment (rl/envs/: reset(row) -> messages, step(messages, completion) -> tool reply
or done + reward). Every turn of every running episode is sampled in one generate() call; the sampled token ids
are kept exactly as sampled and are the only tokens with loss (tool replies and chat-template tokens are in the
context, masked), so the packed rollout trains on the model's own tokens (rl/envs/episode.py).
"""

from __future__ import annotations

import time
from typing import Any


def env_rows(rows: list, question_field: str, answer_field: str) -> list[dict]:
    """PromptRows (a file such as GSM8K or a built-in set) as the mappings environments read."""
    from alignlab.eval.policy import prompt_text

    return [{question_field: prompt_text(r) if not r.chat else r.prompt[-1]["content"], answer_field: r.answer}
            for r in rows]


def sample_episodes(state: Any, step: int, rows: list, *, logprobs: bool) -> tuple[list, list[float], dict]:
    """This rank's share of the step's prompts played as episodes (k per prompt), gathered in prompt order:
    (episodes, rewards, metrics: tool-call rate, turns, tool errors, timings)."""
    from alignlab.rl.envs import get_env
    from alignlab.rl.envs.episode import run_episodes
    from alignlab.rollout.generate import SamplingConfig, generate

    cfg, world, k = state.cfg, state.world, state.cfg.num_generations
    per = len(rows) // world.size
    mine = env_rows(rows[world.rank * per:(world.rank + 1) * per], "question", "answer")
    turn = [0]

    def sample(contexts: list[list[int]]) -> list:
        # one seed per (step, turn); per-row keys make each episode's draws independent of who else is running
        sc = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                            seed=(cfg.seed * 1_000_003 + step) * 101 + turn[0], logprobs=logprobs,
                            batch_size=cfg.generation_batch_size, per_row_seed=True,
                            weights_dtype=cfg.sampling_weights)
        turn[0] += 1
        with state.compute(cache=True):
            return generate(state.policy, state.tokenizer, contexts, sc).samples

    t0 = time.perf_counter()
    expanded = [r for r in mine for _ in range(k)]
    options = {"max_turns": cfg.max_turns, "reward": cfg.reward, **cfg.env_options}
    episodes = run_episodes(lambda: get_env(cfg.env, **options), expanded,
                            state.tokenizer, sample, max_response_tokens=cfg.max_new_tokens * cfg.max_turns)
    seconds = time.perf_counter() - t0
    gathered = [e for part in world.all_gather_objects(episodes) for e in part]
    n = len(gathered)
    stats = {"time/generation": seconds, "turns": sum(e.info.get("turns", 1) for e in gathered) / n,
             "tool_use_rate": sum(e.info.get("tool_calls", 0) > 0 for e in gathered) / n,
             "tool_errors": sum(e.info.get("tool_errors", 0) for e in gathered) / n}
    return gathered, [e.reward for e in gathered], stats
