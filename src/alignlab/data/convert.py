"""Canonical rows -> TRL's dataset formats, so a converted file is read by alignlab, TRL and others as it is.

TRL standard (plain text, chat=False rows) and conversational (message lists, chat rows) formats:
- preference: {prompt, chosen, rejected} (+ margin when the row has one);
- sft: {prompt, completion}; a multi-turn conversation that trains several assistant turns: {messages};
- unpaired: {prompt, completion, label};
- prompt: {prompt} (+ answer when the row has one).
An assistant turn that is context, not trained, carries `loss_weight: 0` (LLaMA-Factory's mark, which the reader
takes).
Reading the written file back gives the same rows (test).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from alignlab.data.rows import Message, PreferenceRow, PromptRow, Row, SFTRow, UnpairedRow


def _side(messages: list[Message], chat: bool) -> Any:
    return _written(messages) if chat else "".join(m["content"] for m in messages)


def _written(messages: list[Message]) -> list[Message]:
    """A context turn (rows' "train": False) as LLaMA-Factory writes it, `loss_weight: 0`, which the reader takes back
    (a "train" key read back was ignored, and the turn trained)."""
    return [{**{k: v for k, v in m.items() if k != "train"}, **({"loss_weight": 0} if m.get("train") is False else {})}
            for m in messages]


def to_records(rows: list[Row]) -> list[dict[str, Any]]:
    """The rows as TRL-format records of ONE shape per kind, as a reader detects a file's format from its first
    record: when some conversation trains several assistant turns ({messages}), every chat SFT row is written as
    {messages}; a row that trains only its last turn after earlier assistant turns cannot be, and is an error."""
    from alignlab.errors import AlignlabError

    sft = [r for r in rows if isinstance(r, SFTRow) and r.chat]
    if not any(_needs_messages(r) for r in sft):
        return [to_record(r) for r in rows]
    out = []
    for i, row in enumerate(rows):
        if isinstance(row, SFTRow) and row.chat:
            if any(m["role"] == "assistant" for m in row.messages[: row.num_prompt]):
                raise AlignlabError(f"row {i}: trains only its last assistant turn after earlier ones, but other "
                                    "rows train every turn (TRL's messages format); a file holds one shape: "
                                    "convert them separately")
            out.append({"messages": _written(row.messages)})
        else:
            out.append(to_record(row))
    return out


def _needs_messages(row: SFTRow) -> bool:
    return sum(m["role"] == "assistant" for m in row.messages[row.num_prompt:]) > 1


_FORMAT_KEYS = frozenset({"prompt", "answer", "question", "messages", "conversations", "chosen", "rejected",
                          "chosen_messages", "rejected_messages", "completion", "label", "instruction", "input",
                          "output", "system", "text"})


def to_record(row: Row) -> dict[str, Any]:
    """One row as a TRL-format record (see the module docstring; a file of rows: `to_records`)."""
    if isinstance(row, PreferenceRow):
        rec = {"prompt": _side(row.prompt, row.chat), "chosen": _side(row.chosen, row.chat),
               "rejected": _side(row.rejected, row.chat)}
        if row.margin is not None:
            rec["margin"] = row.margin
        return rec
    if isinstance(row, UnpairedRow):
        return {"prompt": _side(row.prompt, row.chat), "completion": _side(row.completion, row.chat),
                "label": row.label}
    if isinstance(row, SFTRow):
        prompt, rest = row.messages[: row.num_prompt], row.messages[row.num_prompt:]
        if row.chat and _needs_messages(row):
            return {"messages": _written(row.messages)}  # every assistant turn is trained: TRL's messages format
        return {"prompt": _side(prompt, row.chat), "completion": _side(rest, row.chat)}
    if isinstance(row, PromptRow):
        # the record's other columns (a code reward's tests, a difficulty) come along, but not those that would
        # make a reader take the record for another format
        rec = {"prompt": _side(row.prompt, row.chat)}
        rec.update((k, v) for k, v in row.fields.items() if k not in _FORMAT_KEYS)
        if row.answer is not None:
            rec["answer"] = row.answer
        return rec
    raise TypeError(f"not a row: {type(row).__name__}")


def write_records(path: str | Path, records: list[dict]) -> Path:
    """JSON lines, written atomically (a temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # a plain new file's mode (mkstemp makes it 0600, which the rename would keep)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
