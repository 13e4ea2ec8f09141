"""Canonical rows -> TRL's dataset formats, so a converted file is read by alignlab, TRL and others as it is.

TRL standard (plain text, chat=False rows) and conversational (message lists, chat rows) formats:
- preference: {prompt, chosen, rejected} (+ margin when the row has one);
- sft: {prompt, completion}; a multi-turn conversation that trains several assistant turns: {messages};
- unpaired: {prompt, completion, label};
- prompt: {prompt} (+ answer when the row has one).
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
    return messages if chat else "".join(m["content"] for m in messages)


def to_record(row: Row) -> dict[str, Any]:
    """One row as a TRL-format record (see the module docstring)."""
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
        if row.chat and sum(m["role"] == "assistant" for m in rest) > 1:
            return {"messages": row.messages}  # every assistant turn is trained: TRL's messages format
        return {"prompt": _side(prompt, row.chat), "completion": _side(rest, row.chat)}
    if isinstance(row, PromptRow):
        rec = {"prompt": _side(row.prompt, row.chat)}
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
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
