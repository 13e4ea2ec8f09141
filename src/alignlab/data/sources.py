"""`load_rows`: any supported file -> validated canonical rows for one task.

Everything is checked before training starts (DESIGN §3.8): unreadable bytes, broken JSON lines,
missing or mistyped fields, empty prompts and completions, identical chosen/rejected, HH transcripts
whose dialogues differ. Each problem names file, line (or record index) and field. With
`on_bad_row="error"` (default) any problem raises `DataError` listing them; with `"skip"` exactly the
bad records are dropped and counted by kind in `LoadResult.skipped` (a record counts once, under the
kind of its first problem; `problems` keeps them all). Records left out on purpose and not in error
(tied votes, undesirable completions when asking for SFT) are counted in `LoadResult.dropped`.

Asking for a task converts where it makes sense: preference -> sft trains on prompt + chosen;
preference -> unpaired gives one desirable (chosen) and one undesirable (rejected) row; unpaired -> sft
keeps the desirable rows; anything -> prompt keeps the prompt, and an sft row's last answer becomes the
reference `answer` (the text after the last `####` when there is one, as in GSM8K, else the whole answer).
Asked for prompts, a record is checked only as a prompt (its answers may be empty), and HH / explicit-prompt
preference records are read through `formats.PROMPT_CONVERTERS`, which do not read the answers at all.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

from alignlab.data.formats import CONVERTERS, PROMPT_CONVERTERS, Dropped, detect_format
from alignlab.data.mapping import convert as convert_columns
from alignlab.data.mapping import parse_columns
from alignlab.data.readers import find_bad_text, read_records
from alignlab.data.rows import (
    DataError,
    Origin,
    PreferenceRow,
    Problem,
    PromptRow,
    Row,
    RowProblem,
    SFTRow,
    UnpairedRow,
    text_of,
    validate_row,
)
from alignlab.errors import AlignlabError

TASKS = ("sft", "preference", "unpaired", "prompt")
FORMATS = (*CONVERTERS, "columns")
_TASK_OF = {SFTRow: "sft", PreferenceRow: "preference", UnpairedRow: "unpaired", PromptRow: "prompt"}
_CONVERTIBLE = {
    "preference": ("preference", "sft", "unpaired", "prompt"),
    "sft": ("sft", "prompt"),
    "unpaired": ("unpaired", "sft", "prompt"),
    "prompt": ("prompt",),
}


@dataclass
class LoadResult:
    """Rows of one task from one source, with everything that was left out and why."""

    rows: list[Row]
    format: str
    task: str
    skipped: dict[str, int] = field(default_factory=dict)  # bad records dropped, by problem kind
    problems: list[Problem] = field(default_factory=list)  # every problem found (also in skip mode)
    dropped: dict[str, int] = field(default_factory=dict)  # records left out on purpose, by reason
    notes: dict[str, int] = field(default_factory=dict)  # kept but worth knowing (empty_response_kept)
    source: str = ""
    records: int = 0  # records read from the source, good or bad


def extract_answer(text: str) -> str:
    """GSM8K-style reference: the text after the last '####', else the whole answer, stripped."""
    return text.rsplit("####", 1)[1].strip() if "####" in text else text.strip()


def convert_task(row: Row, task: str, dropped: Counter) -> list[Row]:
    """One natural row -> rows of `task` (see the module docstring); [] when left out on purpose."""
    kind = _TASK_OF[type(row)]
    if kind == task:
        return [row]
    if task not in _CONVERTIBLE[kind]:
        raise RowProblem("wrong_type", None, f"a {kind} record cannot become a {task} row")
    o = row.origin
    if task == "prompt":
        if isinstance(row, SFTRow):
            last = max(i for i, m in enumerate(row.messages) if m["role"] == "assistant")
            answer = extract_answer(row.messages[last]["content"])
            return [PromptRow(row.messages[:last], chat=row.chat, answer=answer, origin=o)]
        return [PromptRow(row.prompt, chat=row.chat, origin=o)]
    if isinstance(row, PreferenceRow) and task == "sft":
        return [SFTRow(row.prompt + row.chosen, len(row.prompt), chat=row.chat, origin=o, field="chosen")]
    if isinstance(row, PreferenceRow):  # -> unpaired
        return [UnpairedRow(row.prompt, row.chosen, True, chat=row.chat, origin=o),
                UnpairedRow(row.prompt, row.rejected, False, chat=row.chat, origin=o)]
    if not row.label:  # unpaired -> sft keeps only what is worth imitating
        dropped["undesirable"] += 1
        return []
    return [SFTRow(row.prompt + row.completion, len(row.prompt), chat=row.chat, origin=o, field="completion")]


def _check_args(task: str | None, format: str | None, on_bad_row: str) -> None:
    if on_bad_row not in ("error", "skip"):
        raise AlignlabError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    if task is not None and task not in TASKS:
        raise AlignlabError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    if format is not None and format not in FORMATS:
        raise AlignlabError(f"format must be one of {', '.join(FORMATS)}; got {format!r}")


def _check_mapped_columns(records: list, wanted: list[str], source: str) -> None:
    """A misspelt column would make every record a problem; say it once, with the columns there are."""
    first = next((r.value for r in records if isinstance(r.value, dict)), None)
    missing = [c for c in wanted if first is not None and c not in first]
    if missing:
        raise AlignlabError(f"{source}: column(s) {missing} from the mapping are not in the file; "
                            f"its columns are: {list(first)}")


def _natural_task(fmt: str, records: list) -> str:
    """The task a format's rows have, read from its first record; used when no record was usable."""
    first = next((r.value for r in records if isinstance(r.value, dict)), {})
    if fmt in ("preference", "hh") or "chosen" in first or "chosen_messages" in first:
        return "preference"
    if fmt == "unpaired" or "label" in first or "kto_tag" in first:
        return "unpaired"
    return "prompt" if fmt == "prompt-only" else "sft"


def _detect(records: list, source: str) -> str:
    for rec in records:
        fmt = detect_format(rec.value)
        if fmt is not None:
            return fmt
        keys = list(rec.value)[:12] if isinstance(rec.value, dict) else type(rec.value).__name__
        raise AlignlabError(
            f"{source}: cannot tell the format from record {rec.index} (keys: {keys}); name the format "
            f"(data_format= in a command's config, --data-format / --format on the command line; one of "
            f"{', '.join(FORMATS)}) or give a column mapping (columns=... / --columns 'prompt=COL,chosen=COL,...')"
        )
    raise AlignlabError(f"{source}: no readable records")


def load_rows(
    path: str | Path,
    task: str | None = None,
    format: str | None = None,
    columns: dict | str | None = None,
    on_bad_row: Literal["error", "skip"] = "error",
    limit: int | None = None,
) -> LoadResult:
    """Read `path`, convert to rows of `task` (default: the format's own), validate every row.

    `limit`: stop once this many rows are made (the records after them are neither converted nor checked:
    a command that uses the first N rows is not stopped by a bad record it would never use)."""
    _check_args(task, format, on_bad_row)
    mapping = parse_columns(columns) if columns else None
    read = read_records(path)
    src = read.source
    if mapping is not None:
        _check_mapped_columns(read.records, mapping.columns(), src)
        fmt, convert = "columns", partial(convert_columns, m=mapping)
    else:
        if format == "columns":
            raise AlignlabError("format 'columns' needs a column mapping (columns=...)")
        if read.problems and not read.records and on_bad_row == "error":
            raise DataError(read.problems, src)
        fmt = format or _detect(read.records, src)
        convert = PROMPT_CONVERTERS.get(fmt, CONVERTERS[fmt]) if task == "prompt" else CONVERTERS[fmt]
    result = LoadResult([], fmt, task or "", source=src, records=len(read.records) + len(read.problems))
    dropped = Counter()
    judged = mapping is not None and mapping.judged
    stop = None  # the first record not read when `limit` rows were made before it
    for rec in read.records:
        if limit is not None and len(result.rows) >= limit:
            stop = rec.index
            break
        origin = Origin(src, rec.index, rec.line)
        issues = _record_rows(rec.value, convert, origin, result, dropped, judged)
        if issues:
            result.problems += [Problem(k, src, rec.index, rec.line, f, msg) for k, f, msg in issues]
    unread = [p for p in read.problems if stop is None or p.index is None or p.index < stop]
    result.problems = sorted(unread + result.problems, key=lambda p: (p.index is None, p.index or 0))
    result.rows = result.rows[:limit] if limit is not None else result.rows
    skipped = Counter(_first_kinds(result.problems))
    if result.problems and on_bad_row == "error":
        raise DataError(result.problems, src)
    result.task = result.task or (mapping.task if mapping else _natural_task(fmt, read.records))
    result.skipped, result.dropped = dict(skipped), dict(dropped)
    return result


# a reward takes (prompts, completions, **fields): the record's prompt and completion are those two
_NOT_REWARD_FIELDS = ("prompt", "completion", "prompts", "completions")


def _first_kinds(problems: list[Problem]) -> list[str]:
    """The kind of each bad record's first problem (a record counts once in `skipped`)."""
    seen, out = set(), []
    for p in problems:
        key = p.index if p.index is not None else id(p)
        if key not in seen:
            seen.add(key)
            out.append(p.kind)
    return out


def _record_rows(value, convert, origin: Origin, result: LoadResult, dropped: Counter, judged: bool) -> list[tuple]:
    """Convert, validate and append one record's rows; returns its problems as (kind, field, message)."""
    bad = find_bad_text(value)
    if bad:
        return [("invalid_utf8", bad, "text is not valid UTF-8")]
    if not isinstance(value, dict):
        return [("wrong_type", None, f"expected a JSON object, got {type(value).__name__}")]
    try:
        natural = convert(value)
    except RowProblem as e:
        return [(e.kind, e.field, e.message)]
    except Dropped as d:
        dropped[d.reason] += 1
        return []
    natural = natural if isinstance(natural, list) else [natural]
    prompt_only = result.task == "prompt"  # asked for prompts: only the prompt rows made below are checked
    issues = [] if prompt_only else [i for row in natural for i in validate_row(row, allow_empty_response=judged)]
    if issues:
        return issues
    if not prompt_only and judged and any(not text_of(r.chosen).strip() or not text_of(r.rejected).strip() for r in natural):
        result.notes["empty_response_kept"] = result.notes.get("empty_response_kept", 0) + 1
    if not result.task:  # the first good record fixes the task when none was asked for
        kind = _TASK_OF[type(natural[0])]
        result.task = kind
    out: list[Row] = []
    for row in natural:
        row.origin = origin
        try:
            out += convert_task(row, result.task, dropped)
        except RowProblem as e:
            if not result.rows and not out:
                raise AlignlabError(f"{origin}: {e.message}; this format's rows can become: "
                                    f"{', '.join(_CONVERTIBLE[_TASK_OF[type(row)]])}") from None
            return [(e.kind, e.field, e.message)]
    issues = [i for row in out for i in validate_row(row)] if prompt_only else []
    if issues:
        return issues
    for row in out:
        if isinstance(row, PromptRow):
            row.fields = {k: v for k, v in value.items() if k not in _NOT_REWARD_FIELDS}
    result.rows += out
    return []
