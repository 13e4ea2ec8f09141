"""Reward-model data: ranked rows (a prompt and two or more completions, best first), their tokens, batches.

- Preference files of any format the data layer reads (TRL, ShareGPT, HH, a column mapping ...) give
  pairs, which are ranked lists of two; a row's `margin` is kept.
- Ranked-list files, one JSON object per record (jsonl/json/parquet):
      {"prompt": "text" | [messages], "completions": ["best", "second", ...]}
  All-text records are plain text (EOS appended); otherwise the chat template is used.
- `as_pairs` turns a list into its K(K-1)/2 (better, worse) pairs (InstructGPT, sec. 3.5).

Every completion is one full sequence, prompt + completion, tokenised jointly by `data.tokenize`. When the
longest completion does not fit `max_length`, the prompt is cut the same way for every completion of the
example, so they are compared on the same context. `RewardCollator` batches all sequences of a micro-batch (right-
padded rows, or one padding-free row with each example's shared prefix once) and maps each example's k-th completion
to its sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Any

from alignlab.data.layout import pad_tail_span, round_up, shared_prefix_spans
from alignlab.data.rows import Message, Origin
from alignlab.errors import AlignlabError


@dataclass
class RankedRow:
    """A prompt and two or more completions, best first (a preference pair is a list of two)."""

    prompt: list[Message]
    completions: list[list[Message]]
    chat: bool = True
    margin: float | None = None
    origin: Origin | None = None


@dataclass
class RewardExample:
    """Token ids of each full sequence (prompt + completion), best first, and the pair's margin."""

    sequences: list[list[int]]
    margin: float | None = None


def ranked_row(rec: dict, origin: Origin) -> RankedRow:
    """One `{"prompt", "completions"}` record -> RankedRow; a bad record raises RowProblem."""
    from alignlab.data.formats import assistant, need, to_messages, user
    from alignlab.data.rows import RowProblem, answer_turns, text_of

    comps, prompt = need(rec, "completions"), need(rec, "prompt")
    if not isinstance(comps, list) or len(comps) < 2:
        raise RowProblem("wrong_type", "completions", "expected a list of at least two completions, best first")
    chat = not (isinstance(prompt, str) and all(isinstance(c, str) for c in comps))
    p = to_messages(prompt, "prompt", "user") if chat else [user(prompt)]
    out = [to_messages(c, f"completions[{i}]", "assistant") if chat else [assistant(c)] for i, c in enumerate(comps)]
    if not text_of(p).strip():
        raise RowProblem("empty_prompt", "prompt", "the prompt is empty")
    for i, c in enumerate(out):
        if not text_of(c).strip():
            raise RowProblem("empty_completion", f"completions[{i}]", "the completion is empty")
        if problem := answer_turns(c, f"completions[{i}]"):
            raise RowProblem(*problem)
        if c in out[:i]:  # a pair of equal answers would be trained to score one above itself
            raise RowProblem("identical_pair", f"completions[{i}]", f"equals completions[{out.index(c)}]")
    return RankedRow(p, out, chat=chat, origin=origin)


def is_ranked_file(path: str, data_format: str | None, columns: Any) -> bool:
    """A ranked-list file: data_format `ranked`, or (nothing forced) a first record with `completions` and no
    `chosen`."""
    if data_format == "ranked":
        return True
    if data_format is not None or columns is not None:
        return False
    from alignlab.data.readers import read_records

    first = next((r.value for r in read_records(path).records if isinstance(r.value, dict)), {})
    return "completions" in first and "chosen" not in first


def load_ranked(path: str, on_bad_row: str) -> list[RankedRow]:
    """Ranked rows of a ranked-list file; a bad record is an error naming it, or skipped and counted."""
    from alignlab.data.readers import find_bad_text, read_records
    from alignlab.data.rows import RowProblem

    read = read_records(path)
    if read.problems and on_bad_row == "error":
        raise AlignlabError(f"{path}: {read.problems[0]}")
    rows, skipped = [], len(read.problems)
    for rec in read.records:
        origin = Origin(read.source, rec.index, rec.line)
        try:
            if bad := find_bad_text(rec.value):  # as every other file's records (else a tokenizer error, later)
                raise RowProblem("invalid_utf8", bad, "text is not valid UTF-8")
            if not isinstance(rec.value, dict):
                raise RowProblem("wrong_type", None, f"expected a JSON object, got {type(rec.value).__name__}")
            rows.append(ranked_row(rec.value, origin))
        except RowProblem as e:
            if on_bad_row == "error":
                raise AlignlabError(f"{origin}: field '{e.field}': {e.kind}: {e.message}") from None
            skipped += 1
    if skipped:
        print(f"{path}: skipped {skipped} bad records", flush=True)
    return rows


def load_ranked_rows(path: str, *, data_format: str | None = None, columns: Any = None,
                     on_bad_row: str = "error") -> list[RankedRow]:
    """Ranked rows from a ranked-list file or any preference file the data layer reads."""
    from alignlab.data.prepare import load_task_rows

    if is_ranked_file(path, data_format, columns):
        return load_ranked(path, on_bad_row)
    fmt = None if data_format == "ranked" else data_format
    rows = load_task_rows(path, "preference", data_format=fmt, columns=columns, on_bad_row=on_bad_row)
    return [RankedRow(r.prompt, [r.chosen, r.rejected], r.chat, r.margin, r.origin) for r in rows]


def as_pairs(rows: list[RankedRow]) -> list[RankedRow]:
    """Lists -> every (better, worse) pair (InstructGPT sec. 3.5); pairs stay as they are."""
    out = []
    for r in rows:
        if len(r.completions) == 2:
            out.append(r)
            continue
        for i, j in combinations(range(len(r.completions)), 2):
            out.append(RankedRow(r.prompt, [r.completions[i], r.completions[j]], r.chat, None, r.origin))
    return out


def tokenize_example(row: RankedRow, tok: Any, max_length: int, max_prompt_length: int | None) -> RewardExample:
    """Each completion's full sequence; when the longest does not fit, one shared prompt is cut to the same budget
    for every completion (tokenised together, as a DPO pair's, so a BPE merge across one completion's boundary does
    not shift the others' window)."""
    from alignlab.data.tokenize import _joint, _truncate

    prompt, comps = _joint(tok, row.prompt, row.completions, row.chat, row.origin)
    prompt, comps, _, _ = _truncate(prompt, comps, max_length, max_prompt_length, "end")
    return RewardExample([prompt + c for c in comps], row.margin)


def ranked_examples(rows: list[RankedRow], tok: Any, max_length: int, max_prompt_length: int | None,
                    source: str) -> list[RewardExample]:
    """RewardExamples of the rows (data.prepare.tokenize_rows: none left is an error naming `source`)."""
    from alignlab.data.prepare import tokenize_rows

    return tokenize_rows(rows, lambda r: tokenize_example(r, tok, max_length, max_prompt_length),
                         lambda ex: all(ex.sequences), source, max_length)


class RewardCollator:
    """Examples -> the sequences of all completions of all examples, and `index` [B, K] mapping each example's k-th
    completion to its sequence number (-1 where a shorter list has none).

    Padded (default): right-padded rows [N, T], as TRL's RewardTrainer. `spans=True` (models under span attention,
    models/attention.py): the micro-batch in ONE padding-free row, each example as [common prefix | tail 1 | tail 2
    | ...]: the token prefix its completions share (the prompt, and the chat template's assistant header) runs once,
    every tail attends to the prefix and itself, never to a sibling (data/layout.py), positions restart after the
    prefix as in the sequence alone; `last` [N] holds each sequence's last token's position in the row, where it is
    scored. Same scores as the padded rows (test); the prefix is kept one token short of the shortest sequence, so
    every sequence ends in a token of its own. `pad_to_multiple_of` rounds the row width (or T) up."""

    def __init__(self, pad_id: int, *, spans: bool = False, pad_to_multiple_of: int | None = None):
        self.pad_id, self.spans, self.multiple = pad_id, spans, pad_to_multiple_of

    def __call__(self, examples: list[RewardExample]) -> dict[str, Any]:
        import torch

        seqs = [s for ex in examples for s in ex.sequences]
        k = max(len(ex.sequences) for ex in examples)
        index = torch.full((len(examples), k), -1, dtype=torch.long)
        row = 0
        for b, ex in enumerate(examples):
            n = len(ex.sequences)
            index[b, :n] = torch.arange(row, row + n)
            row += n
        margin = torch.tensor([ex.margin or 0.0 for ex in examples], dtype=torch.float32)
        batch = self._shared(examples) if self.spans else self._padded(seqs)
        return {**batch, "index": index, "margin": margin, "num_items": len(examples),
                "num_tokens": sum(len(s) for s in seqs)}

    def _padded(self, seqs: list[list[int]]) -> dict[str, Any]:
        import torch

        width = round_up(max(len(s) for s in seqs), self.multiple)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def _shared(self, examples: list[RewardExample]) -> dict[str, Any]:
        import torch

        flat: list[int] = []
        pos: list[int] = []
        spans: list = []
        last: list[int] = []
        for ex in examples:
            p = _common_prefix(ex.sequences)
            start = len(flat)
            flat += ex.sequences[0][:p]
            pos += range(p)
            spans += shared_prefix_spans(0, start, p, [len(s) - p for s in ex.sequences])
            for s in ex.sequences:
                flat += s[p:]
                pos += range(p, len(s))
                last.append(len(flat) - 1)
        width = round_up(len(flat), self.multiple)
        spans += pad_tail_span(0, len(flat), width)
        pos += range(width - len(flat))  # the pad tail: positions from 0, a span of its own, never scored
        flat += [self.pad_id] * (width - len(flat))
        return {"input_ids": torch.tensor([flat]), "position_ids": torch.tensor([pos]), "attention_mask": None,
                "attn_spans": tuple(spans), "last": torch.tensor(last)}


def _common_prefix(seqs: list[list[int]]) -> int:
    """Length of the token prefix all `seqs` share, at most one short of the shortest (each keeps its last token)."""
    n = min(len(s) for s in seqs) - 1
    first = seqs[0]
    for i in range(n):
        if any(s[i] != first[i] for s in seqs[1:]):
            return i
    return max(n, 0)
