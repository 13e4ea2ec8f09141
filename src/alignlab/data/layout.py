"""Span plans: the geometry of packed and prefix-shared rows, for span attention (models/attention.py).

A row is cut into spans: a contiguous range of queries and the key ranges those queries see, the queries
being the last keys (so inside a span the mask is causal, aligned bottom-right). The collators of
`data.collate` (packed SFT rows) and `data.pairs` (packed and prefix-shared pairs) build a plan for each
batch; the attention kernel in `models.attention` executes it. Pure geometry: no torch, no models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    """Queries [q0, q1) of row `row` attend to the concatenated key ranges `keys`; q1 is the last key's end."""

    row: int
    q0: int
    q1: int
    keys: tuple[tuple[int, int], ...]


def round_up(width: int, multiple: int | None) -> int:
    """`width` rounded up to a multiple of `multiple` (None or 0: unchanged): a batch's padded row width."""
    return -(-width // multiple) * multiple if multiple else width


def packed_plan(row_lengths: Sequence[Sequence[int]], width: int) -> tuple[Span, ...]:
    """Spans of padding-free rows: each sequence causal over itself, the pad tail a span of its own."""
    spans = []
    for r, lengths in enumerate(row_lengths):
        start = 0
        for n in [*lengths, width - sum(lengths)]:
            if n > 0:
                spans.append(Span(r, start, start + n, ((start, start + n),)))
                start += n
    return tuple(spans)


def shared_prefix_spans(row: int, start: int, prefix: int, lengths: Sequence[int]) -> list[Span]:
    """Spans of one group laid out from `start` as [prefix | seq 1 | seq 2 | ...]: the prefix and the first
    sequence causal, every other sequence over the prefix and itself, never over a sibling. A DPO pair is the group
    (prompt; chosen, rejected), a GRPO group a prompt and its answers, a reward model's example the completions'
    common prefix and their tails."""
    spans, c0 = [], start + prefix
    for m, n in enumerate(lengths):
        if m == 0 and prefix + n > 0:
            spans.append(Span(row, start, c0 + n, ((start, c0 + n),)))
        elif m > 0 and n > 0:
            spans.append(Span(row, c0, c0 + n, ((start, start + prefix), (c0, c0 + n))))
        c0 += n
    return spans


def pad_tail_span(row: int, start: int, width: int) -> list[Span]:
    """The span of a row's pad tail [start, width): causal over itself, so no real token sees it."""
    return [Span(row, start, width, ((start, width),))] if width > start else []


def prefix_plan(row_blocks: Sequence[Sequence[tuple[int, int, int]]], width: int) -> tuple[Span, ...]:
    """Spans of prefix-shared rows of (prompt, chosen, rejected) lengths: [prompt | chosen] causal, then
    rejected over prompt + rejected (never chosen); the pad tail a span of its own."""
    spans = []
    for r, blocks in enumerate(row_blocks):
        start = 0
        for p, c, rej in blocks:
            spans += shared_prefix_spans(r, start, p, (c, rej))
            start += p + c + rej
        spans += pad_tail_span(r, start, width)
    return tuple(spans)
