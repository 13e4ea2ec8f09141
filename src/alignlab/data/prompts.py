"""Prompt rows for generation and online RL, from a built-in set or any file the data layer reads.

`load_prompt_rows(spec, ...)` is the one reader every prompt-consuming command uses (generate, best-of-n,
and the RL commands' `data`): `builtin:NAME` (data/builtin.py) or a file in any format, through a column
mapping when given. Only the prompt (and a reference `answer` when the record has one) is read and checked,
so a preference file whose answers are empty or whose dialogues differ still gives its prompts.
"""

from __future__ import annotations

from typing import Any

from alignlab.errors import AlignlabError


def load_prompt_rows(spec: str, *, columns: Any = None, data_format: str | None = None, on_bad_row: str = "error",
                     limit: int | None = None, data_offset: int = 0, data_limit: int | None = None,
                     n: int | None = None, seed: int = 0) -> list:
    """PromptRows of `spec`.

    spec: `builtin:NAME` (n prompts, default `limit`, seeded by `seed`) or a data file / hub id.
    columns, data_format: as for training data (a column mapping with `prompt` (+ `answer`), or a format name).
    on_bad_row: a record whose prompt is unusable stops (error) or is counted and skipped (skip).
    data_offset, data_limit: records of the file (as the training keys); limit: at most this many rows, and
    records after them are not read (a bad record past them cannot stop the command).
    """
    from alignlab.data.builtin import BUILTIN_PREFIX, builtin_rows

    if spec.startswith(BUILTIN_PREFIX):
        n = n if n is not None else limit
        if n is None:
            raise AlignlabError(f"data: {spec} needs a number of prompts (n or limit)")
        return builtin_rows(spec, n, seed)[:limit]
    if not spec:
        raise AlignlabError("data: give a prompt file or a built-in set such as builtin:sentiment")
    from alignlab.data.prepare import slice_records
    from alignlab.data.sources import load_rows

    read_limit = None if limit is None or data_offset or data_limit is not None else limit
    result = load_rows(spec, task="prompt", format=data_format, columns=columns, on_bad_row=on_bad_row,
                       limit=read_limit)
    if result.skipped:
        print(f"{spec}: skipped bad records {dict(result.skipped)}", flush=True)
    rows = slice_records(result.rows, data_offset, data_limit)[:limit]
    if not rows:
        raise AlignlabError(f"{spec}: no prompt rows")
    return rows
