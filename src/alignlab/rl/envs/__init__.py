"""Multi-turn, tool-using environments for online RL (the rollout drives them; see base.py).

Built in: `calculator` (arithmetic word problems with a safe calculator tool) and `python` (the code
sandbox as a tool). Get a fresh instance per episode with `get_env(name, **options)`; `run_episodes`
drives a batch of them at the token level with any sampler.
"""

from alignlab.rl.envs.base import (
    ENVS,
    Environment,
    StepResult,
    ToolCall,
    ToolEnvironment,
    get_env,
    parse_tool_calls,
    register_env,
)
from alignlab.rl.envs.episode import Episode, run_episodes
from alignlab.rl.envs.tokens import Segment, assemble, continuation_text

__all__ = [
    "ENVS",
    "Environment",
    "Episode",
    "Segment",
    "StepResult",
    "ToolCall",
    "ToolEnvironment",
    "assemble",
    "continuation_text",
    "get_env",
    "parse_tool_calls",
    "register_env",
    "run_episodes",
]
