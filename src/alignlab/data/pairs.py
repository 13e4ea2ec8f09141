"""Collate tokenised preference pairs into batches for the three forward paths.

Every path lays the same pairs out differently but describes WHICH hidden state predicts WHICH
completion token the same way, so one function (`alignlab.train.preference.sequence_logps`) turns
any of them into per-sequence log-probs:

    input_ids [R, T], position_ids [R, T] (or None)   what the decoder runs on
    pred_index [N]   flat index r * T + t of the hidden state that predicts completion token n
    target_ids [N]   completion token n
    seq_index  [N]   which sequence token n belongs to: 0..B-1 chosen, B..2B-1 rejected (TRL's order)
    token_counts [2B] completion tokens per sequence (for losses that average log-probs)

Paths (all give the same log-probs; tests/unit/test_preference_paths.py pins it to 1e-5):

- `plain`: prompt+chosen and prompt+rejected as 2B right-padded rows with a 2D attention mask,
  exactly TRL's DataCollatorForPreference layout.
- `packed` (padding-free): the 2B sequences laid end to end in rows of about `row_tokens`, with
  position_ids restarting at 0 per sequence and attention_mask None; transformers 5 builds the
  block-diagonal causal mask from the position ids (masking_utils.find_packed_sequence_indices),
  so no sequence attends to another and no FLOPs go to padding (except a short tail per row).
- `prefix` (prefix-shared): each pair as ONE block [prompt | chosen | rejected]; rejected's
  position ids restart at len(prompt), so it sees the exact positions it would see after the
  prompt alone, and a block mask (built by `prefix_attention_mask`) hides chosen from rejected.
  Models loaded by alignlab use span attention instead of the mask (`attn_spans`,
  models/attention.py): the same result without computing the masked-out score blocks.
  The prompt is run once for both completions; its hidden states feed both, so gradients from
  both completions flow through it. Several pairs share a row (block-diagonal).

Row width. Under span attention (`spans=True`: the model takes the `attn_spans` plan) a micro-batch is ONE
row with no padding but the `pad_to_multiple_of` tail: each pair's attention is its own spans whatever row it is
in, so a row costs its length, and rows of unequal pairs only add padding. `make bench-dpo`'s SmolLM2 job (2 pairs
of 131-661 tokens a step) ran 1,064 positions a step capped at the longest pair against 760 in one row: 0.193
against 0.256 pairs/s (AMD EPYC, one thread), the same losses. Without spans (masked sdpa, which computes a
row's full T x T score matrix; only a plain causal row lets the kernel skip the upper triangle), rows are capped at
max(`row_tokens`, longest unit) tokens, by default the longest unit: one long masked row would turn the linear
saving of packing into a quadratic attention cost. Measured on the tiny model with the demo pairs: rows of 2048
tokens ran 2.9 pairs/s, rows capped at the longest pair 4.9 (plain: 3.8).

Default path: prefix. Policy forward+backward plus reference forward, demo pairs, one thread,
interleaved so CPU contention hits all paths alike: SmolLM2-135M (2 pairs <= 512 tokens) plain
0.05, packed 0.07, prefix 0.09 pairs/s; tiny-random (4 pairs, attention-bound) plain 1.43,
packed 1.79, prefix 1.67 pairs/s.

The first token of a sequence with an empty prompt has no predecessor and is not scored, in every
path alike (TRL never scores position 0 either).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from alignlab.data.layout import packed_plan, prefix_plan, round_up

PATHS = ("plain", "packed", "prefix")
# Branch codes of the prefix layout (per token): which part of its pair a token is.
PROMPT, CHOSEN, REJECTED = 0, 1, 2


def _field(example: Any, name: str) -> Any:
    if isinstance(example, dict):
        return example.get(name)
    return getattr(example, name, None)


@dataclass
class _Pair:
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]


def _pairs(examples: Sequence[Any]) -> list[_Pair]:
    if not examples:
        raise ValueError("cannot collate an empty list of pairs")
    return [_Pair(list(_field(e, "prompt_ids")), list(_field(e, "chosen_ids")), list(_field(e, "rejected_ids")))
            for e in examples]


class _Targets:
    """Accumulates (predicting flat position, target token, sequence) triples while laying rows out."""

    def __init__(self, num_seqs: int):
        self.pred: list[int] = []
        self.target: list[int] = []
        self.seq: list[int] = []
        self.counts = [0] * num_seqs

    def add(self, seq: int, preds: Sequence[int], tokens: Sequence[int]) -> None:
        # preds[j] is the flat position whose hidden state predicts tokens[j]; -1 means no predecessor.
        for p, t in zip(preds, tokens):
            if p >= 0:
                self.pred.append(p)
                self.target.append(t)
                self.seq.append(seq)
                self.counts[seq] += 1


def _rows_first_fit(lengths: Sequence[int], row_tokens: int | None) -> list[list[int]]:
    """Unit indices per row, in order, first fit into rows of max(row_tokens, longest unit) tokens.

    row_tokens None (the default) caps rows at the longest unit: short units share a row, and no
    row is longer than it has to be, which keeps sdpa's T x T cost at its minimum.
    """
    cap = max(max(lengths), row_tokens or 0)
    rows: list[list[int]] = []
    fill: list[int] = []
    for i, n in enumerate(lengths):
        for r, used in enumerate(fill):
            if used + n <= cap:
                rows[r].append(i)
                fill[r] += n
                break
        else:
            rows.append([i])
            fill.append(n)
    return rows


def _finish(ids: list[list[int]], pos: list[list[int]] | None, tg: _Targets, pad_id: int, num_pairs: int,
            pad_to_multiple_of: int | None) -> dict[str, Any]:
    import torch

    width = round_up(max(len(r) for r in ids), pad_to_multiple_of)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    for r, row in enumerate(ids):
        input_ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
    batch: dict[str, Any] = {"input_ids": input_ids}
    if pos is not None:
        # The tail of a short row is its own dummy sequence (positions from 0), so it never
        # joins the row's last real sequence in transformers' packed-sequence detection.
        position_ids = torch.zeros((len(ids), width), dtype=torch.long)
        for r, row in enumerate(pos):
            position_ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
            position_ids[r, len(row):] = torch.arange(width - len(row))
        batch["position_ids"] = position_ids
    batch["pred_index"] = torch.tensor(tg.pred, dtype=torch.long)
    batch["target_ids"] = torch.tensor(tg.target, dtype=torch.long)
    batch["seq_index"] = torch.tensor(tg.seq, dtype=torch.long)
    batch["token_counts"] = torch.tensor(tg.counts, dtype=torch.long)
    batch["num_pairs"] = num_pairs
    batch["num_items"] = num_pairs
    batch["totals"] = {"chosen_tokens": int(sum(tg.counts[:num_pairs]))}  # the chosen-NLL's units (train.loop)
    return batch


def _attach_refs(batch: dict[str, Any], examples: Sequence[Any]) -> dict[str, Any]:
    """Pass precomputed reference log-probs (see train/refcache.py) through as [B] tensors."""
    import torch

    for key in ("ref_chosen_logps", "ref_rejected_logps"):
        vals = [_field(e, key) for e in examples]
        if all(v is not None for v in vals):
            batch[key] = torch.tensor(vals, dtype=torch.float64)
    labels = [_field(e, "label") for e in examples]
    if all(v is not None for v in labels):  # unpaired (KTO) examples, see `unpaired_as_pairs`
        batch["desirable"] = torch.tensor([bool(v) for v in labels], dtype=torch.bool)
    return batch


def unpaired_as_pairs(examples: Sequence[Any], group_size: int,
                      max_length: int | None = None) -> list[dict[str, Any]]:
    """KTO examples in the pair layout: (prompt, completion, mismatched completion, label).

    KTO's reference point z0 is a KL estimate from MISMATCHED pairs (Ethayarajh et al. 2024,
    Sec. 4.1): completion j scored under prompt i != j. As TRL's KTOTrainer does when it builds
    its KL dataset, the mismatch is fixed before training: within each group of `group_size`
    consecutive examples, example i borrows the completion of the nearest earlier example (cyclically)
    whose prompt differs; a group whose examples all share one prompt (a paired file read as unpaired puts
    chosen and rejected of a prompt side by side) borrows from the nearest earlier example in the whole set
    that has another prompt. Only when every example has the same prompt is it its neighbour's completion.
    The borrowed completion takes the "rejected" slot, so the prefix-shared path runs each prompt once for
    both, and cached reference log-probs cover the KL term too. With `max_length` the borrowed completion is cut to
    what fits after this prompt (it was cut against its own prompt: rows ran past max_length, and past a
    learned-position model's table), as TRL cuts its KL inputs.
    """
    if group_size < 2:
        raise ValueError("KTO needs at least 2 examples per micro-batch to form mismatched pairs")
    prompts = [tuple(_field(ex, "prompt_ids")) for ex in examples]

    def donor(i: int, start: int, size: int) -> int:
        for off in range(1, size):  # within the group first
            j = start + (i - start - off) % size
            if prompts[j] != prompts[i]:
                return j
        for off in range(1, len(examples)):  # then anywhere, nearest earlier first
            j = (i - off) % len(examples)
            if prompts[j] != prompts[i]:
                return j
        return start + (i - start - 1) % size  # one prompt throughout: nothing to mismatch with

    out = []
    for start in range(0, len(examples), group_size):
        size = min(group_size, len(examples) - start)
        for i in range(start, start + size):
            ex, other = examples[i], examples[donor(i, start, size)]
            prompt, borrowed = list(_field(ex, "prompt_ids")), list(_field(other, "completion_ids"))
            if max_length is not None:
                borrowed = borrowed[: max(1, max_length - len(prompt))]
            out.append({"prompt_ids": prompt, "chosen_ids": list(_field(ex, "completion_ids")),
                        "rejected_ids": borrowed, "label": bool(_field(ex, "label"))})
    return out


def collate_plain(examples: Sequence[Any], pad_id: int, *, pad_to_multiple_of: int | None = None) -> dict[str, Any]:
    """2B right-padded rows: chosen sequences first, then rejected (TRL's layout)."""
    import torch

    pairs = _pairs(examples)
    seqs = [p.prompt + p.chosen for p in pairs] + [p.prompt + p.rejected for p in pairs]
    starts = [len(p.prompt) for p in pairs] * 2
    width = round_up(max(len(s) for s in seqs), pad_to_multiple_of)
    tg = _Targets(len(seqs))
    for s, (seq, start) in enumerate(zip(seqs, starts)):
        tg.add(s, [s * width + t - 1 if t >= 1 else -1 for t in range(start, len(seq))], seq[start:])
    batch = _finish(seqs, None, tg, pad_id, len(pairs), pad_to_multiple_of)
    mask = torch.zeros_like(batch["input_ids"])
    for s, seq in enumerate(seqs):
        mask[s, : len(seq)] = 1
    batch["attention_mask"] = mask
    batch["num_tokens"] = sum(len(s) for s in seqs)
    return _attach_refs(batch, examples)


def _layout_rows(units: list[list[int]], row_tokens: int | None) -> tuple[list[list[int]], list[int], list[int]]:
    """Rows of unit indices plus each unit's (row, offset)."""
    rows = _rows_first_fit([len(u) for u in units], row_tokens)
    row_of, offset_of = [0] * len(units), [0] * len(units)
    for r, members in enumerate(rows):
        off = 0
        for i in members:
            row_of[i], offset_of[i] = r, off
            off += len(units[i])
    return rows, row_of, offset_of


def collate_packed(examples: Sequence[Any], pad_id: int, *, row_tokens: int | None = None,
                   pad_to_multiple_of: int | None = None) -> dict[str, Any]:
    """Padding-free rows: every sequence with its own position ids, no attention mask."""
    pairs = _pairs(examples)
    seqs = [p.prompt + p.chosen for p in pairs] + [p.prompt + p.rejected for p in pairs]
    starts = [len(p.prompt) for p in pairs] * 2
    rows, row_of, offset_of = _layout_rows(seqs, row_tokens)
    width = round_up(max(sum(len(seqs[i]) for i in members) for members in rows), pad_to_multiple_of)
    tg = _Targets(len(seqs))
    for s, (seq, start) in enumerate(zip(seqs, starts)):
        base = row_of[s] * width + offset_of[s]
        tg.add(s, [base + t - 1 if t >= 1 else -1 for t in range(start, len(seq))], seq[start:])
    ids = [[tok for i in members for tok in seqs[i]] for members in rows]
    pos = [[t for i in members for t in range(len(seqs[i]))] for members in rows]
    batch = _finish(ids, pos, tg, pad_id, len(pairs), pad_to_multiple_of)
    batch["attention_mask"] = None
    batch["num_tokens"] = sum(len(s) for s in seqs)
    batch["attn_spans"] = packed_plan([[len(seqs[i]) for i in members] for members in rows], width)
    return _attach_refs(batch, examples)


def collate_prefix(examples: Sequence[Any], pad_id: int, *, row_tokens: int | None = None,
                   pad_to_multiple_of: int | None = None) -> dict[str, Any]:
    """Prefix-shared rows of [prompt | chosen | rejected] blocks; see `prefix_attention_mask`.

    Besides the common keys it returns `block_ids` [R, T] (which pair a token belongs to; the
    padded tail of a row is a block of its own) and `branch` [R, T] (PROMPT / CHOSEN / REJECTED).
    """
    import torch

    pairs = _pairs(examples)
    b = len(pairs)
    units = [p.prompt + p.chosen + p.rejected for p in pairs]
    rows, row_of, offset_of = _layout_rows(units, row_tokens)
    width = round_up(max(sum(len(units[i]) for i in members) for members in rows), pad_to_multiple_of)
    tg = _Targets(2 * b)
    ids, pos, blocks, branches = [], [], [], []
    for members in rows:
        ids.append([tok for i in members for tok in units[i]])
        pos_row, block_row, branch_row = [], [], []
        for i in members:
            p, c, r = len(pairs[i].prompt), len(pairs[i].chosen), len(pairs[i].rejected)
            pos_row += list(range(p + c)) + list(range(p, p + r))
            block_row += [i] * (p + c + r)
            branch_row += [PROMPT] * p + [CHOSEN] * c + [REJECTED] * r
        pos.append(pos_row)
        blocks.append(block_row)
        branches.append(branch_row)
    for i, pair in enumerate(pairs):
        base = row_of[i] * width + offset_of[i]
        p, c = len(pair.prompt), len(pair.chosen)
        last_prompt = base + p - 1 if p >= 1 else -1
        tg.add(i, [last_prompt] + [base + p + j - 1 for j in range(1, c)], pair.chosen)
        tg.add(b + i, [last_prompt] + [base + p + c + j - 1 for j in range(1, len(pair.rejected))], pair.rejected)
    batch = _finish(ids, pos, tg, pad_id, b, pad_to_multiple_of)
    block_ids = torch.full((len(rows), width), -1, dtype=torch.long)
    branch = torch.zeros((len(rows), width), dtype=torch.long)
    for r in range(len(rows)):
        block_ids[r, : len(blocks[r])] = torch.tensor(blocks[r], dtype=torch.long)
        branch[r, : len(branches[r])] = torch.tensor(branches[r], dtype=torch.long)
    batch["block_ids"] = block_ids
    batch["branch"] = branch
    batch["attention_mask"] = None
    batch["attn_spans"] = prefix_plan([[(len(pairs[i].prompt), len(pairs[i].chosen), len(pairs[i].rejected))
                                        for i in members] for members in rows], width)
    batch["num_tokens"] = sum(2 * len(p.prompt) + len(p.chosen) + len(p.rejected) for p in pairs)
    return _attach_refs(batch, examples)


def prefix_attention_mask(block_ids: Any, branch: Any) -> Any:
    """Boolean [R, 1, T, T] mask (True = attend) for the prefix-shared layout.

    Query q may attend to key k when k is not after q in the row (causal in row order), both are
    in the same pair block, and not (q is a rejected token and k a chosen token): rejected then
    sees exactly prompt + its own earlier tokens, as in the plain forward. Chosen never sees
    rejected because rejected comes after it. Pad tails form their own block (-1), so no row of
    the mask is empty (an all-masked softmax row would give NaN).
    """
    import torch

    t = block_ids.shape[-1]
    idx = torch.arange(t, device=block_ids.device)
    causal = idx[None, :] <= idx[:, None]  # [T(q), T(k)]
    same = block_ids[:, :, None] == block_ids[:, None, :]
    hidden = (branch[:, :, None] == REJECTED) & (branch[:, None, :] == CHOSEN)
    return (causal[None] & same & ~hidden)[:, None]


class PairCollator:
    """`collate(examples) -> batch` for the loop, for one forward path. `spans`: the model runs span attention, so
    packed and prefix rows default to one row per micro-batch (module docstring); a `row_tokens` cap still applies."""

    def __init__(self, pad_id: int, path: str = "prefix", *, row_tokens: int | None = None,
                 pad_to_multiple_of: int | None = None, spans: bool = False):
        if path not in PATHS:
            raise ValueError(f"forward path must be one of {PATHS}, got {path!r}")
        self.pad_id, self.path, self.pad_to_multiple_of = pad_id, path, pad_to_multiple_of
        self.row_tokens = row_tokens or (sys.maxsize if spans else None)

    def __call__(self, examples: Sequence[Any]) -> dict[str, Any]:
        if self.path == "plain":
            return collate_plain(examples, self.pad_id, pad_to_multiple_of=self.pad_to_multiple_of)
        if self.path == "packed":
            return collate_packed(examples, self.pad_id, row_tokens=self.row_tokens,
                                  pad_to_multiple_of=self.pad_to_multiple_of)
        return collate_prefix(examples, self.pad_id, row_tokens=self.row_tokens,
                              pad_to_multiple_of=self.pad_to_multiple_of)
