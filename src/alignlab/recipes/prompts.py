"""Moved: the prompt sets are the `builtin:` data source (data/builtin.py), the exact-answer reward is
`exact_match` in rollout/rewards.py. These names stay importable from here only because recipes/online.py and
configs naming `alignlab.recipes.prompts:exact_match_reward` use them until the RL-engine work moves them to
rl/; delete this file then."""

from alignlab.data.builtin import (
           BUILTIN_PREFIX,
           TASKS,
           builtin_rows,
           digit_problems,
           sentiment_prompts,
           write_digit_sft,
)
from alignlab.rollout.rewards import exact_match_reward

__all__ = ["BUILTIN_PREFIX", "TASKS", "builtin_rows", "digit_problems", "exact_match_reward", "sentiment_prompts",
           "write_digit_sft"]
