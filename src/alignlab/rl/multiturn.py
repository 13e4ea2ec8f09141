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
    cfg, world = state.cfg, state.world
    per = len(rows) // world.size

    def sampling(turn: int):
        # one seed per (step, turn); per-row keys make each episode's draws independent of who else is running
        return dict(temperature=cfg.temperature, top_p=cfg.top_p, seed=(cfg.seed * 1_000_003 + step) * 101 + turn,
                    logprobs=logprobs, per_row_seed=True)

    t0 = time.perf_counter()
    episodes = play(state, rows[world.rank * per:(world.rank + 1) * per], cfg.num_generations, sampling,
                    first=world.rank * per * cfg.num_generations)
    seconds = time.perf_counter() - t0
    gathered = [e for part in world.all_gather_objects(episodes) for e in part]
    return gathered, [e.reward for e in gathered], {"time/generation": seconds}  # episode_stats: rollout.collect


def greedy_episodes(state: Any, rows: list) -> dict[str, float]:
    """The held-out evaluation of an env run (rank 0): one greedy episode per prompt, through the same
    environment and turn limit as training, with the policy's own weights (as greedy_eval: not the sampler's
    bf16 copy); eval_reward is the mean final reward, with the tool-use rate."""
    episodes = play(state, rows, 1, lambda turn: dict(greedy=True, weights_dtype="model"))
    return {"eval_reward": sum(e.reward for e in episodes) / len(episodes),
            **{f"eval_{k}": v for k, v in episode_stats(episodes).items()}}


def play(state: Any, rows: list, k: int, sampling, first: int = 0) -> list:
    """`k` episodes of every prompt in `rows`, every running episode's turn sampled in one generate() call
    with SamplingConfig(**sampling(turn index)); under per_row_seed each episode's draws are keyed by its global
    index (`first` + its index here: a rank's offset), so they depend on nothing else running or on the rank."""
    from alignlab.rl.envs import get_env
    from alignlab.rl.envs.episode import run_episodes
    from alignlab.rollout.generate import SamplingConfig, generate

    cfg = state.cfg
    turn = [0]
    # the run's reward as the single-turn path scores (weights, options, a Python callable), built once, not per episode
    options = {"max_turns": cfg.max_turns, "reward": state.reward_fn, **cfg.env_options}
    stop = list(get_env(cfg.env, **options).stop)

    def sample(contexts: list[list[int]], ids: list[int]) -> list:
        sc = SamplingConfig(**{"max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.generation_batch_size,
                               "weights_dtype": cfg.sampling_weights, "stop": stop, **sampling(turn[0])})
        turn[0] += 1
        with state.compute(cache=True):
            return generate(state.policy, state.tokenizer, contexts, sc, prompt_keys=[first + i for i in ids]).samples

    expanded = [r for r in env_rows(rows, "question", "answer") for _ in range(k)]
    return run_episodes(lambda: get_env(cfg.env, **options), expanded, state.tokenizer, sample,
                        max_response_tokens=cfg.max_new_tokens * cfg.max_turns, max_prompt_tokens=cfg.max_prompt_length)


def episode_stats(episodes: list) -> dict[str, float]:
    """Turns per episode, the share of episodes that called a tool, and tool errors per episode."""
    n = len(episodes)
    return {"turns": sum(e.info.get("turns", 1) for e in episodes) / n,
            "tool_use_rate": sum(e.info.get("tool_calls", 0) > 0 for e in episodes) / n,
            "tool_errors": sum(e.info.get("tool_errors", 0) for e in episodes) / n}
