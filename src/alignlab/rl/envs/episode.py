"""Drive a batch of multi-turn episodes at the token level (the rollout calls this with its sampler).

    episodes = run_episodes(lambda: get_env("calculator"), rows, tokenizer,
                            sample=lambda contexts, ids: generate(model, tokenizer, contexts, cfg).samples,
                            max_response_tokens=512)

Each turn, the contexts (prompt ids + everything so far, as token ids) of the episodes still running
go to ``sample`` in ONE call, with their episodes' indices in ``rows`` (a sampler keying each row's draws
by its episode, whatever else is still running, needs them), which returns one object per context with ``completion_ids``,
``finish_reason`` and ``logprobs`` (a ``rollout.generate.Sample`` fits). Sampled ids are appended as
they are (never re-tokenised) with loss mask 1; the environment's reply and the chat template around it
are tokenised once and appended with mask 0 (see :mod:`alignlab.rl.envs.tokens`). An episode ends when
the environment says done (its reward is the episode's; ``truncated`` as well when that last turn was cut at the
sampler's token limit, as a single-turn answer cut there is), or when the model's own tokens reach
``max_response_tokens`` before that (``truncated``, reward 0): tool replies and template tokens do not count
against the model's budget (a 300-digit calculator result would have ended a one-call episode), but are held
to as many tokens again, so a response is at most twice the budget. A tool-call turn holding a special token
before its end (`<|endoftext|>` inside the call), or one the chat template does not render as it was sampled (a
template that trims whitespace around a turn's content), cannot be continued exactly: that episode ends, truncated.
``max_prompt_tokens`` keeps an opening prompt's last tokens, as the single-turn path cuts prompts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from alignlab.errors import AlignlabError
from alignlab.rl.envs.base import Environment, Message
from alignlab.rl.envs.tokens import Segment, assemble, continuation_text

__all__ = ["Episode", "padded_loss_mask", "run_episodes"]


@dataclass
class Episode:
    """One finished (or cut) episode: everything the policy update needs."""

    prompt_ids: list[int]
    """The opening prompt (template, system, user) as token ids."""
    segments: list[Segment] = field(default_factory=list)
    """The response: sampled turns (generated) and inserted template/tool text (not generated), in order."""
    logprobs: list[float] = field(default_factory=list)
    """Sampler log-probs aligned with :attr:`response_ids` (0.0 on inserted tokens and when not given)."""
    messages: list[Message] = field(default_factory=list)
    """The conversation as messages (for logs and text rewards)."""
    reward: float = 0.0
    done: bool = False
    truncated: bool = False
    """True when the token budget ran out before the environment ended the episode."""
    info: dict[str, Any] = field(default_factory=dict)
    """The environment's counts at the last step (turns, tool calls, tool errors)."""

    @property
    def response_ids(self) -> list[int]:
        return assemble(self.segments)[0]

    @property
    def loss_mask(self) -> list[int]:
        return assemble(self.segments)[1]

    @property
    def finish_reason(self) -> str:
        """As ``rollout.generate.Sample``'s: "length" when the token budget cut the episode, else "stop"."""
        return "length" if self.truncated else "stop"

    @property
    def completion_ids(self) -> list[int]:
        """The response ids under the name ``rollout.generate.Sample`` uses, so code that packs samples
        (prompt_ids + completion_ids) packs episodes too; then apply :func:`padded_loss_mask`."""
        return self.response_ids


def padded_loss_mask(episodes: Sequence[Episode], length: int | None = None):
    """float32 tensor [n, T] of the episodes' loss masks, right-padded with 0 to ``length`` (default: the
    longest response): multiply it into a packed rollout's response mask so that tool output and
    template tokens carry no loss."""
    import torch

    masks = [ep.loss_mask for ep in episodes]
    T = max((len(m) for m in masks), default=0) if length is None else length
    if any(len(m) > T for m in masks):
        raise AlignlabError(f"multi-turn: a response of {max(len(m) for m in masks)} tokens exceeds length {T}")
    out = torch.zeros((len(masks), T), dtype=torch.float32)
    for r, m in enumerate(masks):
        out[r, :len(m)] = torch.tensor(m, dtype=torch.float32)
    return out


def run_episodes(
    make_env: Callable[[], Environment],
    rows: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    sample: Callable[[list[list[int]], list[int]], Sequence[Any]],
    *,
    max_response_tokens: int,
    max_prompt_tokens: int | None = None,
) -> list[Episode]:
    """Run one episode per row to the end; see the module docstring."""
    from alignlab.rollout.encode import encode_prompt

    if max_response_tokens < 1:
        raise AlignlabError(f"multi-turn: max_response_tokens must be >= 1 (got {max_response_tokens})")
    envs = [make_env() for _ in rows]
    episodes = []
    for env, row in zip(envs, rows):
        messages = env.reset(row)
        prompt_ids = encode_prompt(tokenizer, messages)
        episodes.append(Episode(prompt_ids=prompt_ids[-max_prompt_tokens:] if max_prompt_tokens else prompt_ids,
                                messages=messages))
    active = list(range(len(rows)))
    while active:
        contexts = [episodes[i].prompt_ids + episodes[i].response_ids for i in active]
        outs = list(sample(contexts, list(active)))
        if len(outs) != len(active):
            raise AlignlabError(f"multi-turn: the sampler returned {len(outs)} turns for {len(active)} contexts")
        still = []
        for i, out in zip(active, outs):
            if not _advance(episodes[i], envs[i], tokenizer, out, max_response_tokens):
                still.append(i)
        active = still
    return episodes


def _advance(ep: Episode, env: Environment, tokenizer: Any, out: Any, budget: int) -> bool:
    """Add one sampled turn (and the environment's reply); True when the episode is over."""
    ids = [int(t) for t in out.completion_ids]
    logprobs = list(out.logprobs) if getattr(out, "logprobs", None) is not None else [0.0] * len(ids)
    if len(logprobs) != len(ids):
        raise AlignlabError(f"multi-turn: {len(logprobs)} log-probs for {len(ids)} sampled tokens")
    content = tokenizer.decode(ids, skip_special_tokens=True)
    prompt_messages = list(ep.messages)
    ep.segments.append(Segment(tuple(ids), True))
    ep.logprobs.extend(float(x) for x in logprobs)
    ep.messages.append({"role": "assistant", "content": content})
    result = env.step(ep.messages, content)
    ep.info = dict(result.info)
    if result.done:
        ep.reward, ep.done = float(result.reward), True
        ep.truncated = getattr(out, "finish_reason", "stop") == "length"  # scored as cut, as single-turn answers
        return True
    if result.observation is None:
        raise AlignlabError(f"env {env.name}: a step that is not done must return an observation")
    special = set(getattr(tokenizer, "all_special_ids", None) or ()) | {
        i for i, t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items() if getattr(t, "special", False)}
    if any(t in special for t in ids[:-1]):  # the message content drops it, so no render continues these ids
        ep.truncated = True
        return True
    sampled_text = tokenizer.decode(ids, skip_special_tokens=False)
    try:
        delta = continuation_text(tokenizer, prompt_messages, content, sampled_text, [result.observation])
    except AlignlabError:  # this turn's text (e.g. whitespace a template trims) has no exact continuation
        ep.truncated = True
        return True
    delta_ids = list(tokenizer(delta, add_special_tokens=False).input_ids)
    generated = sum(len(seg.ids) for seg in ep.segments if seg.generated)
    if generated >= budget or len(ep.logprobs) - generated + len(delta_ids) > budget:
        ep.truncated = True
        return True
    ep.segments.append(Segment(tuple(delta_ids), False))
    ep.logprobs.extend([0.0] * len(delta_ids))
    ep.messages.append(result.observation)
    return False
