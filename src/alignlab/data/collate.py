"""Turn tokenised examples into model batches: padded, padding-free packed, or left-padded prompts.

Examples are anything with `input_ids` and (optionally) `labels` as attributes or keys, e.g.
`alignlab.data.tokenize.TokenizedSFT`; labels use -100 where nothing is trained.

Padding-free packing (`pack`): the sequences of a micro-batch are laid end to end in one row (or in
as few rows of at most `max_row_tokens` as fit), with `position_ids` restarting at 0 for each
sequence and no attention mask. transformers 5 detects
packed rows from the position ids (masking_utils.find_packed_sequence_indices: a new sequence
starts wherever position_ids[t] - position_ids[t-1] != 1) and builds a block-diagonal causal mask
for sdpa/eager (flash-attention reads the same position ids), so no token attends to another
sequence and no FLOPs are spent on padding. Two conditions: the forward must get
`attention_mask=None` and no KV cache, so step functions call the model with `use_cache=False`.
The first label of every packed sequence is set to -100: the logit before it belongs to the
previous sequence and must not be trained to predict it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from alignlab.data.layout import packed_plan, round_up

IGNORE = -100


def _field(example: Any, name: str) -> Any:
    if isinstance(example, dict):
        return example.get(name)
    return getattr(example, name, None)


def _ids_and_labels(example: Any) -> tuple[list[int], list[int]]:
    ids = list(_field(example, "input_ids"))
    labels = _field(example, "labels")
    return ids, list(labels) if labels is not None else list(ids)


def pad(examples: Sequence[Any], pad_id: int, *, pad_to_multiple_of: int | None = None) -> dict[str, Any]:
    """Right-padded batch: input_ids, attention_mask, labels [B, T] (T = longest, rounded up)."""
    import torch

    pairs = [_ids_and_labels(e) for e in examples]
    width = round_up(max(len(ids) for ids, _ in pairs), pad_to_multiple_of)
    input_ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(pairs), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(pairs):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def _bins(lengths: list[int], capacity: int | None) -> list[list[int]]:
    """First-fit-decreasing bin packing of example indices into rows of at most `capacity` tokens."""
    if capacity is None:
        return [list(range(len(lengths)))]
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        slot = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if slot is None:  # a sequence longer than capacity gets a row of its own
            rows.append([i])
            room.append(capacity - lengths[i])
        else:
            rows[slot].append(i)
            room[slot] -= lengths[i]
    return rows


# Cost of a row of width W in units of one token's linear FLOPs: W * (1 + W / ATTN_RATIO). For a Llama
# block, linear FLOPs per token are ~2(4d^2 + 3d*ffn) and attention FLOPs per token pair ~4d, so the
# ratio is ~2d + 1.5 ffn: ~3.5k for SmolLM2-135M (d=576, ffn=1536). 4096 is a round middle value.
ATTN_RATIO = 4096


def _layout_cost(rows: int, width: int, attn_ratio: float) -> float:
    return rows * width * (1 + width / attn_ratio)


def _choose_rows(lengths: list[int], capacity: int | None, attn_ratio: float) -> list[list[int]]:
    """Capped bins, unless one unpadded row is cheaper (capped bins of unequal width pay padding)."""
    one = [list(range(len(lengths)))]
    if capacity is None:
        return one
    binned = _bins(lengths, capacity)
    total = sum(lengths)
    widest = max(sum(lengths[i] for i in row) for row in binned)
    if _layout_cost(1, total, attn_ratio) <= _layout_cost(len(binned), widest, attn_ratio):
        return one
    return binned


def pack(examples: Sequence[Any], *, pad_id: int = 0, max_row_tokens: int | None = None,
         attn_ratio: float = ATTN_RATIO, pad_to_multiple_of: int | None = None) -> dict[str, Any]:
    """Padding-free rows: input_ids, labels, position_ids [R, L] with positions restarting per sequence.

    max_row_tokens=None puts every sequence in ONE row. A cap (e.g. max_length) bins sequences into
    rows of at most that many tokens (first-fit decreasing): attention costs O(row length^2) even
    with the block-diagonal mask, so one very long row can spend more on attention than padding
    would. Capped rows of unequal width pay padding instead, so the cheaper layout under the cost
    model above is used. Rows shorter than the longest are filled with pad tokens that form their own
    "sequence" (positions 0, 1, ...; labels -100): real tokens never see them (they come later).
    `pad_to_multiple_of` rounds the row width up with the same pad tail (why: recipes/sft.py, SFTConfig.pad_to_multiple_of).
    `segments` lists (row, start, length, example index) for every sequence; `seq_lens` gives the
    lengths in layout order (row by row); `attn_spans` is the same layout for span attention
    (data/layout.py, run by models/attention.py), which skips the blocks the block-diagonal mask would hide.
    """
    import torch

    pairs = [_ids_and_labels(e) for e in examples]
    keep = [i for i, (ids, _) in enumerate(pairs) if ids]
    rows = [[keep[j] for j in b] for b in _choose_rows([len(pairs[i][0]) for i in keep], max_row_tokens, attn_ratio)]
    width = round_up(max(sum(len(pairs[i][0]) for i in row) for row in rows), pad_to_multiple_of)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    segments = []
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            ids, lab = pairs[i]
            n = len(ids)
            input_ids[r, start: start + n] = torch.tensor(ids)
            labels[r, start + 1: start + n] = torch.tensor(lab[1:n])  # never predict a sequence's first token
            positions[r, start: start + n] = torch.arange(n)
            segments.append((r, start, n, i))
            start += n
        positions[r, start:] = torch.arange(width - start)
    return {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": positions,
        "attention_mask": None,
        "segments": segments,
        "seq_lens": [n for _, _, n, _ in segments],
        "num_tokens": sum(n for _, _, n, _ in segments),
        "attn_spans": packed_plan([[n for r2, _, n, _ in segments if r2 == r] for r in range(len(rows))], width),
    }


def sequence_ids(seq_lens: Sequence[int]) -> Any:
    """[sum(len)] tensor giving each packed token's sequence number (0, 0, 1, 1, 1, 2 ...)."""
    import torch

    return torch.repeat_interleave(torch.arange(len(seq_lens)), torch.tensor(list(seq_lens)))


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> dict[str, Any]:
    """Left-padded prompts for batched generation: input_ids and attention_mask [B, T]."""
    import torch

    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        if s:
            input_ids[i, width - len(s):] = torch.tensor(list(s))
            mask[i, width - len(s):] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


class Collator:
    """`collate(examples) -> batch` for the loop: padded or packed, chosen by config. `spans`: the model runs span
    attention, where a packed row's attention is each sequence's own whatever the row's width, so one row is never
    dearer than capped ones (no padding) and is always taken."""

    def __init__(self, pad_id: int, *, packing: bool = False, pad_to_multiple_of: int | None = None,
                 max_row_tokens: int | None = None, spans: bool = False):
        self.pad_id, self.packing, self.pad_to_multiple_of = pad_id, packing, pad_to_multiple_of
        self.max_row_tokens = None if spans else max_row_tokens

    def __call__(self, examples: Sequence[Any]) -> dict[str, Any]:
        if self.packing:
            return pack(examples, pad_id=self.pad_id, max_row_tokens=self.max_row_tokens,
                        pad_to_multiple_of=self.pad_to_multiple_of)
        return pad(examples, self.pad_id, pad_to_multiple_of=self.pad_to_multiple_of)
