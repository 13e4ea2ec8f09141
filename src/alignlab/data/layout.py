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


def prefix_plan(row_blocks: Sequence[Sequence[tuple[int, int, int]]], width: int) -> tuple[Span, ...]:
    """Spans of prefix-shared rows of (prompt, chosen, rejected) lengths: [prompt | chosen] causal, then
    rejected over prompt + rejected (never chosen); the pad tail a span of its own."""
    spans = []
    for r, blocks in enumerate(row_blocks):
        start = 0
        for p, c, rej in blocks:
            if p + c > 0:
                spans.append(Span(r, start, start + p + c, ((start, start + p + c),)))
            if rej > 0:
                r0 = start + p + c
                spans.append(Span(r, r0, r0 + rej, ((start, start + p), (r0, r0 + rej))))
            start += p + c + rej
        if width > start:
            spans.append(Span(r, start, width, ((start, width),)))
    return tuple(spans)
