"""The multi-turn environment interface, the chat-template tool-call format, and the env registry.

An episode: ``messages = env.reset(row)``; then, until ``done``, the policy writes ``completion`` (one
assistant turn), the rollout appends it as an assistant message and calls
``result = env.step(messages, completion)``; a non-None ``result.observation`` (a ``tool`` message) is
appended and the policy writes the next turn. ``result.reward`` of the final step is the episode's
reward (earlier steps return 0 unless an environment says otherwise).

One instance holds one episode's state (the row, the turn count): create one per concurrent episode
with :func:`get_env` (cheap). Environments are pure Python: no model, no tokenizer.

Tool calls use the Hermes/Qwen chat-template convention the common chat templates render and the
instruct models are trained on: a JSON object ``{"name": ..., "arguments": {...}}`` inside
``<tool_call>...</tool_call>`` in the assistant's text; the tool's reply goes back as a message with
role ``tool``.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from alignlab.errors import AlignlabError

__all__ = [
    "ENVS", "Environment", "StepResult", "ToolCall", "ToolEnvironment", "get_env", "parse_tool_calls", "register_env",
]

Message = dict[str, str]

_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


@dataclass(frozen=True)
class StepResult:
    """What the environment answers to one assistant turn."""

    observation: Message | None
    """A message to append before the next turn (role ``tool``), or None when the episode is over."""
    done: bool
    """True: the episode ended with this turn (final answer given, or the turn limit reached)."""
    reward: float
    """The reward of this step; the final step's reward is the episode's."""
    info: dict[str, Any] = field(default_factory=dict)
    """Counts for logging (tool calls, tool errors, ...)."""


@dataclass(frozen=True)
class ToolCall:
    """One parsed tool call; ``error`` says why it could not be parsed (then name/arguments are empty)."""

    name: str
    arguments: dict[str, Any]
    error: str | None = None


def parse_tool_calls(text: str) -> list[ToolCall]:
    """Every ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` in ``text``, in order.

    A block that is not valid JSON, or lacks a string ``name`` or an object ``arguments``, comes back
    as a ToolCall with ``error`` set (the environment tells the model, rather than ignoring it)."""
    calls = []
    for body in _TOOL_CALL.findall(text):
        try:
            obj = json.loads(body)
        except json.JSONDecodeError as e:
            calls.append(ToolCall("", {}, f"tool call is not valid JSON: {e.msg}"))
            continue
        except ValueError as e:  # an integer past Python's 4,300-digit limit
            calls.append(ToolCall("", {}, f"tool call is not valid JSON: {e}"))
            continue
        except RecursionError:  # thousands of nested brackets: the model's error, not the rollout's
            calls.append(ToolCall("", {}, "tool call is nested too deeply"))
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            calls.append(ToolCall("", {}, 'tool call needs {"name": ..., "arguments": {...}}'))
            continue
        args = obj.get("arguments", {})
        if isinstance(args, str):  # some templates serialise arguments as a JSON string
            try:
                args = json.loads(args)
            except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
                args = None
        if not isinstance(args, dict):
            calls.append(ToolCall(obj["name"], {}, "tool call arguments must be a JSON object"))
            continue
        calls.append(ToolCall(obj["name"], args))
    return calls


class Environment(ABC):
    """One episode of a multi-turn task. Subclasses implement :meth:`reset` and :meth:`step`."""

    name = "env"
    stop: tuple[str, ...] = ()
    """Strings that end an assistant turn: the sampler stops right after one (kept in the turn's tokens)."""

    def __init__(self, max_turns: int = 4):
        if max_turns < 1:
            raise AlignlabError(f"env {self.name}: max_turns must be >= 1 (got {max_turns})")
        self.max_turns = max_turns
        self.turns = 0

    @abstractmethod
    def reset(self, row: Mapping[str, Any]) -> list[Message]:
        """Start an episode for dataset ``row``; returns the opening messages (system + user)."""

    @abstractmethod
    def step(self, messages: list[Message], completion: str) -> StepResult:
        """React to the assistant turn ``completion`` (``messages`` is the conversation so far, ending
        with that turn)."""


class ToolEnvironment(Environment):
    """A question answered with the help of tools; the final answer is scored by a reward function.

    Each assistant turn either calls tools (every ``<tool_call>`` is run and the results come back in
    one ``tool`` message, reward 0) or answers (no tool call: the episode ends and the reward is
    ``reward_fn`` on that turn, e.g. ``math`` against the row's ``answer``). On the last allowed turn
    the episode ends whatever the turn contains, scored the same way. Subclasses fill ``tools``
    (name -> fn(arguments) -> str, raising ValueError for a bad call) and ``system_prompt``.
    """

    tools: dict[str, Callable[[dict[str, Any]], str]] = {}
    system_prompt = ""
    # A turn ends at its first tool call, as the system prompts ask ("... and stop") and as tool-calling
    # servers sample (vLLM/SGLang stop on the call's closing tag); without it a small model goes on to write
    # further calls, or a made-up result, in the same turn.
    stop = ("</tool_call>",)

    def __init__(self, max_turns: int = 4, reward: str | Callable[..., list[float]] = "math",
                 question_field: str = "question", answer_field: str = "answer", max_tool_output: int = 2000):
        super().__init__(max_turns)
        from alignlab.rollout.rewards import get_reward

        # a registry name, or the run's own reward (its weights and options, or a Python callable: rl/multiturn.py)
        self.reward_fn = get_reward(reward) if isinstance(reward, str) else reward
        self.question_field, self.answer_field, self.max_tool_output = question_field, answer_field, max_tool_output
        self.row: Mapping[str, Any] = {}
        self.tool_calls = self.tool_errors = 0

    def reset(self, row: Mapping[str, Any]) -> list[Message]:
        if self.question_field not in row:
            raise AlignlabError(f"env {self.name}: the row has no '{self.question_field}' field (keys: {sorted(row)})")
        self.row, self.turns, self.tool_calls, self.tool_errors = row, 0, 0, 0
        return [{"role": "system", "content": self.system_prompt},
                {"role": "user", "content": str(row[self.question_field])}]

    def step(self, messages: list[Message], completion: str) -> StepResult:
        self.turns += 1
        calls = parse_tool_calls(completion)
        if calls and self.turns < self.max_turns:
            replies = [self._run(call) for call in calls]
            return StepResult({"role": "tool", "content": "\n".join(replies)}, False, 0.0, self._info())
        fields = {k: [v] for k, v in self.row.items() if k != self.question_field}
        from alignlab.rollout.rewards import score

        reward = score(self.reward_fn, [messages[:2]], [completion], **fields)[0]
        return StepResult(None, True, reward, self._info())

    def _run(self, call: ToolCall) -> str:
        self.tool_calls += 1
        if call.error is None and call.name not in self.tools:
            call = ToolCall(call.name, {}, f"unknown tool {call.name!r}; available: {', '.join(sorted(self.tools))}")
        if call.error is not None:
            self.tool_errors += 1
            return f"error: {call.error}"
        try:
            out = self.tools[call.name](call.arguments)
        except ValueError as e:
            self.tool_errors += 1
            out = f"error: {e}"
        return out if len(out) <= self.max_tool_output else out[: self.max_tool_output] + "\n[output truncated]"

    def _info(self) -> dict[str, Any]:
        return {"turns": self.turns, "tool_calls": self.tool_calls, "tool_errors": self.tool_errors}


ENVS: dict[str, Callable[..., Environment]] = {}


def register_env(name: str):
    """Register an Environment class (or factory taking keyword options) under ``name``."""

    def deco(factory):
        ENVS[name] = factory
        return factory

    return deco


def get_env(name: str, **options: Any) -> Environment:
    """A NEW environment instance (one per episode) of the registered ``name``."""
    import alignlab.rl.envs.calculator  # noqa: F401  (registers the built-ins)
    import alignlab.rl.envs.python_tool  # noqa: F401

    if name not in ENVS:
        raise AlignlabError(f"env: unknown environment {name!r}; built in: {', '.join(sorted(ENVS))}")
    try:
        return ENVS[name](**options)
    except TypeError as e:
        raise AlignlabError(f"env {name}: bad options {sorted(options)}: {e}") from e
