"""Turn tokenised examples into model batches: padded, padding-free packed, or left-padded prompts.

Examples are anything with `input_ids` and (optionally) `labels` as attributes or keys, e.g.
`alignlab.data.tokenize.TokenizedSFT`; labels use -100 where nothing is trained.

Padding-free packing (`pack`): all sequences of a micro-batch are laid end to end in ONE row, with
`position_ids` restarting at 0 for each sequence and no attention mask. transformers 5 detects
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
    width = max(len(ids) for ids, _ in pairs)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(pairs), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(pairs):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def pack(examples: Sequence[Any]) -> dict[str, Any]:
    """One padding-free row [1, sum(len)]: input_ids, labels, position_ids restarting per sequence.

    Also returns `seq_lens` (python ints, in order) so callers can split per-sequence results.
    """
    import torch

    ids_all: list[int] = []
    labels_all: list[int] = []
    positions: list[int] = []
    lens = []
    for e in examples:
        ids, lab = _ids_and_labels(e)
        if not ids:
            continue
        ids_all += ids
        labels_all += [IGNORE] + lab[1:]  # never predict a sequence's first token from the previous one
        positions += range(len(ids))
        lens.append(len(ids))
    return {
        "input_ids": torch.tensor([ids_all], dtype=torch.long),
        "labels": torch.tensor([labels_all], dtype=torch.long),
        "position_ids": torch.tensor([positions], dtype=torch.long),
        "attention_mask": None,
        "seq_lens": lens,
        "num_tokens": len(ids_all),
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
    """`collate(examples) -> batch` for the loop: padded or packed, chosen by config."""

    def __init__(self, pad_id: int, *, packing: bool = False, pad_to_multiple_of: int | None = None):
        self.pad_id, self.packing, self.pad_to_multiple_of = pad_id, packing, pad_to_multiple_of

    def __call__(self, examples: Sequence[Any]) -> dict[str, Any]:
        if self.packing:
            return pack(examples)
        return pad(examples, self.pad_id, pad_to_multiple_of=self.pad_to_multiple_of)
