"""A plain-text corpus for pretraining: read and split by position, encoded, cut into blocks."""

from __future__ import annotations

from pathlib import Path

from alignlab.errors import AlignlabError


def blocks(ids: list[int], length: int) -> list[dict[str, list[int]]]:
    """Non-overlapping windows of `length` tokens; every token is a label (first is never predicted)."""
    return [{"input_ids": ids[i: i + length], "labels": ids[i: i + length]}
            for i in range(0, len(ids) - length + 1, length)]


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of a whole corpus (the fast backend directly: no max-length warning, no special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return backend.encode(text, add_special_tokens=False).ids
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def read_corpus(path: str, val_fraction: float) -> tuple[str, str]:
    p = Path(path)
    if not p.is_file():
        raise AlignlabError(f"data: corpus file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise AlignlabError(f"{p}: not UTF-8 text (byte {e.start})") from None
    cut = int(len(text) * (1 - val_fraction))
    # Cut at a line break so no word is split across the two parts.
    cut = text.rfind("\n", 0, cut) + 1 or cut
    return text[:cut], text[cut:]
