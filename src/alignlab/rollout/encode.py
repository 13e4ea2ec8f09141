"""Prompts to token ids for sampling and search, and the EOS ids that end a completion."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from alignlab.errors import AlignlabError


def encode_prompt(tokenizer: Any, prompt: Any) -> list[int]:
    """Token ids of one prompt: a list of ids (kept), a plain string (tokenised as it is, the tokenizer's
    BOS rule applies), a list of chat messages, or a PromptRow (chat template with the generation prompt)."""
    if hasattr(prompt, "prompt") and hasattr(prompt, "chat"):  # a data.rows.PromptRow (or alike)
        return _encode_row(tokenizer, prompt)
    if isinstance(prompt, str):
        return list(tokenizer(prompt).input_ids)
    if isinstance(prompt, Sequence) and prompt and all(isinstance(t, int) for t in prompt):
        return list(prompt)
    if isinstance(prompt, Sequence) and prompt and all(isinstance(m, dict) for m in prompt):
        return _encode_messages(tokenizer, list(prompt))
    raise AlignlabError(
        f"generate: a prompt must be a string, a list of token ids or a list of {{role, content}} messages; "
        f"got {type(prompt).__name__}: {str(prompt)[:80]!r}"
    )


def _encode_row(tokenizer: Any, row: Any) -> list[int]:
    from alignlab.data.tokenize import tokenize_prompt  # the data layer owns the tokenisation rules

    return list(tokenize_prompt(row, tokenizer))


def _encode_messages(tokenizer: Any, messages: list[dict]) -> list[int]:
    for i, m in enumerate(messages):
        if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise AlignlabError(f"generate: message {i} needs string 'role' and 'content', got {m!r}")
    if getattr(tokenizer, "chat_template", None) is None:
        raise AlignlabError("generate: chat messages given but the tokenizer has no chat template")
    from alignlab.data.chat import render

    # Render to text, then tokenise without special tokens: the template already holds BOS if it wants one.
    text = render(tokenizer, messages, True, "generate")
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """EOS ids from the tokenizer and the model's generation config (chat models often add <|im_end|>)."""
    ids: set[int] = set()
    for src in (getattr(tokenizer, "eos_token_id", None),
                getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(src, int):
            ids.add(src)
        elif isinstance(src, (list, tuple)):
            ids.update(int(i) for i in src)
    return sorted(ids)
