"""Token bookkeeping for multi-turn episodes: earlier turns keep the exact ids that were sampled (never
re-tokenised), and only tokens the model generated carry loss.

An episode is a list of :class:`Segment`: the opening prompt (template, system, user), then, per
turn, the sampled ids (``generated=True``) and the template/tool text the rollout inserts before the
next turn (``generated=False``). :func:`assemble` concatenates them into input ids and the loss mask.
:func:`continuation_text` gives the text to tokenise for an inserted segment: what the chat
template adds after the sampled turn, so the assembled ids render the same conversation the
template would, without touching the sampled ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from alignlab.errors import AlignlabError

__all__ = ["Segment", "assemble", "continuation_text"]


@dataclass(frozen=True)
class Segment:
    """A run of token ids and whether the policy generated them."""

    ids: tuple[int, ...]
    generated: bool


def assemble(segments: Sequence[Segment]) -> tuple[list[int], list[int]]:
    """(input ids, loss mask): the segments' ids concatenated in order; mask 1 exactly on generated ids."""
    ids: list[int] = []
    mask: list[int] = []
    for seg in segments:
        ids.extend(seg.ids)
        mask.extend([1 if seg.generated else 0] * len(seg.ids))
    return ids, mask


def continuation_text(tokenizer: Any, prompt_messages: list[dict], assistant_text: str, sampled_text: str,
                      new_messages: list[dict]) -> str:
    """The text the chat template puts between a sampled assistant turn and the next generation.

    ``prompt_messages``: the conversation the turn was sampled from (rendered with the generation
    prompt); ``sampled_text``: the sampled ids decoded WITH special tokens (it may end in the stop
    token, or not when the turn was truncated); ``assistant_text``: the turn's content as it goes in
    the assistant message; ``new_messages``: what follows (e.g. the tool's reply). The result is
    what the template renders after ``sampled_text`` (closing the turn, the new messages, the next
    generation prompt); tokenise it with ``add_special_tokens=False`` as a non-generated segment.
    An AlignlabError when the template does not render the sampled text as a prefix (a template that
    rewrites earlier turns, e.g. one that strips reasoning, cannot keep sampled ids exact).
    """
    from alignlab.data.chat import render  # wraps template errors; refuses a template that drops tool replies

    prefix = render(tokenizer, prompt_messages, True, "multi-turn") + sampled_text
    full = render(tokenizer, prompt_messages + [{"role": "assistant", "content": assistant_text}] + list(new_messages),
                  True, "multi-turn")
    if not full.startswith(prefix):
        at = next((i for i, (a, b) in enumerate(zip(prefix, full)) if a != b), min(len(prefix), len(full)))
        raise AlignlabError(
            "multi-turn: the chat template does not keep the sampled turn as a prefix of the next prompt "
            f"(first difference at character {at}: {prefix[at:at + 40]!r} vs {full[at:at + 40]!r})"
        )
    return full[len(prefix):]
