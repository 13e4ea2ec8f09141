"""Read raw records (dicts) from files, keeping where each came from and what could not be read.

Text is decoded with `surrogateescape`: a byte that is not UTF-8 becomes a lone surrogate instead of
stopping the read, so one bad line costs one record and the problem names its line and field
(`find_bad_text`). A truncated or otherwise broken JSON line is reported with its line number and
the rest of the file is still read. Supported: .jsonl / .json (an array, `{"key": [records]}`, or JSON lines in a .json file),
either gzipped; .parquet; .csv / .tsv (first line is the header); a `datasets.save_to_disk` folder;
a hub dataset id (`owner/name` or `owner/name:split`) through `datasets` when a network exists.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignlab.data.rows import Problem
from alignlab.errors import AlignlabError

_LONE_SURROGATE = re.compile("[\udc80-\udcff]")
_WS = re.compile(r"\s*")


@dataclass
class Record:
    """One raw record: the parsed value, its 0-based index, its 1-based line if the file has lines."""

    value: Any
    index: int
    line: int | None = None


@dataclass
class ReadOutput:
    records: list[Record]
    problems: list[Problem]  # records that could not be read at all (invalid JSON, ...)
    source: str  # the name problems carry: the path as given, or the hub id


def read_records(path: str | Path) -> ReadOutput:
    """Every record of a file, folder or hub id, plus problems for parts that could not be parsed."""
    p = Path(path)
    source = str(path)
    if p.is_dir():
        return ReadOutput(_read_saved_dataset(p), [], source)
    if not p.exists():
        if _looks_like_hub_id(source):
            return ReadOutput(_read_hub(source), [], source)
        raise AlignlabError(f"{source}: no such file or folder")
    name = p.name.lower()
    if name.endswith(".parquet"):
        return ReadOutput(_read_parquet(p), [], source)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise AlignlabError(f"{source}: cannot read ({e.strerror or e})") from None
    if name.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise AlignlabError(f"{source}: not a readable gzip file ({e})") from None
        name = name[:-3]
    text = raw.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    if name.endswith((".csv", ".tsv")):
        records, problems = _read_csv(text, source, "\t" if name.endswith(".tsv") else ",")
    elif name.endswith(".json") and not text.lstrip().startswith("["):
        records, problems = _read_json_object_or_lines(text, source)
    elif name.endswith(".jsonl"):
        records, problems = _read_json_lines(text, source)
    elif name.endswith(".json"):
        records, problems = _read_json_array(text, source)
    else:
        raise AlignlabError(
            f"{source}: unknown file type; expected .jsonl, .json, .jsonl.gz, .json.gz, .parquet, .csv, .tsv, "
            "a datasets save folder or a hub id"
        )
    return ReadOutput(records, problems, source)


def find_bad_text(value: Any, path: str = "") -> str | None:
    """Dotted path of the first string holding undecodable bytes (lone surrogates), or None."""
    if isinstance(value, str):
        return path or "(record)" if _LONE_SURROGATE.search(value) else None
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = ((f"[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for k, v in items:
        sub = f"{path}{k}" if str(k).startswith("[") else (f"{path}.{k}" if path else str(k))
        found = find_bad_text(v, sub)
        if found:
            return found
    return None


def _json_problem(source: str, index: int, line: int, err: json.JSONDecodeError, what: str) -> Problem:
    return Problem("invalid_json", source, index, line, None, f"{what}: {err.msg} at column {err.colno}")


def _read_json_lines(text: str, source: str) -> tuple[list[Record], list[Problem]]:
    records, problems = [], []
    index = 0
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(Record(json.loads(line), index, lineno))
        except json.JSONDecodeError as e:
            problems.append(_json_problem(source, index, lineno, e, "not a JSON value (truncated line?)"))
        index += 1
    return records, problems


def _read_json_object_or_lines(text: str, source: str) -> tuple[list[Record], list[Problem]]:
    """A .json that is not an array: one object whose only value is the record list ({"data": [...]}),
    one object (one record), or JSON lines under a .json name."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return _read_json_lines(text, source)
    if isinstance(value, dict) and len(value) == 1 and isinstance(next(iter(value.values())), list):
        return [Record(v, i) for i, v in enumerate(next(iter(value.values())))], []
    return [Record(value, 0, 1)], []


def _read_json_array(text: str, source: str) -> tuple[list[Record], list[Problem]]:
    """Parse `[v0, v1, ...]` element by element so every record keeps the line it starts on.

    A syntax error cannot be stepped over inside an array (where the next element starts is unknown),
    so it ends the read with one problem at its line; the elements before it are kept.
    """
    decoder = json.JSONDecoder()
    records: list[Record] = []
    pos = _WS.match(text, 0).end() + 1  # past '['
    line, counted = 1, 0
    while True:
        pos = _WS.match(text, pos).end()
        if pos >= len(text):
            return records, [_eof_problem(source, len(records), text)]
        if text[pos] == "]" and not records:
            return records, []
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            return records, [_json_problem(source, len(records), e.lineno, e, "invalid JSON in array")]
        records.append(Record(value, len(records), line))
        pos = _WS.match(text, pos).end()
        if pos < len(text) and text[pos] == "]":
            return records, []
        if pos >= len(text) or text[pos] != ",":
            return records, [_eof_problem(source, len(records), text, pos)]
        pos += 1


def _eof_problem(source: str, index: int, text: str, pos: int | None = None) -> Problem:
    pos = len(text) if pos is None else pos
    line = text.count("\n", 0, pos) + 1
    what = "file ends inside the JSON array (truncated?)" if pos >= len(text) else "expected ',' or ']'"
    return Problem("invalid_json", source, index, line, None, what)


def _read_csv(text: str, source: str, delimiter: str) -> tuple[list[Record], list[Problem]]:
    """CSV follows RFC 4180 quoting; TSV is read without quote processing, as GLUE-style TSVs are written."""
    csv.field_size_limit(sys.maxsize)
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(text.splitlines(keepends=True), delimiter=delimiter, quoting=quoting)
    records, problems = [], []
    try:
        header = next(reader)
    except StopIteration:
        return [], []
    except csv.Error as e:
        return [], [Problem("invalid_json", source, None, 1, None, f"unreadable CSV header: {e}")]
    start, index = reader.line_num + 1, 0
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            problems.append(Problem("bad_value", source, index, start, None, f"unreadable CSV row: {e}"))
            cells = None
        if cells and len(cells) != len(header):
            problems.append(Problem("wrong_type", source, index, start, None,
                                    f"{len(cells)} cells where the header has {len(header)}"))
        elif cells:
            records.append(Record(dict(zip(header, cells)), index, start))
        index += cells != []
        start = reader.line_num + 1
    return records, problems


def _read_parquet(path: Path) -> list[Record]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several unrelated types for a damaged file
        raise AlignlabError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from None
    return [Record(r, i) for i, r in enumerate(rows)]


def _dataset_records(ds: Any, source: str) -> list[Record]:
    if isinstance(ds, dict):  # a DatasetDict: take the train split
        splits = list(ds.keys())
        if "train" not in splits:
            raise AlignlabError(f"{source}: holds splits {splits} and none is 'train'; name one as {source}:SPLIT")
        ds = ds["train"]
    return [Record(r, i) for i, r in enumerate(ds)]


def _read_saved_dataset(path: Path) -> list[Record]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise AlignlabError(f"{path}: a folder, but not one written by datasets' save_to_disk ({e})") from None
    return _dataset_records(ds, str(path))


def _looks_like_hub_id(name: str) -> bool:
    return re.fullmatch(r"[\w.-]+/[\w.-]+(:[\w.-]+)?", name) is not None


def _read_hub(name: str) -> list[Record]:
    import datasets

    repo, _, split = name.partition(":")
    try:
        ds = datasets.load_dataset(repo, split=split or "train")
    except Exception as e:  # offline, unknown id, gated: datasets raises many types; the message says which
        raise AlignlabError(
            f"{name}: not a local file, and loading it as a hub dataset failed ({type(e).__name__}: {e}). "
            "Hub ids need a network (HF_HUB_OFFLINE unset) or a local cache."
        ) from None
    return _dataset_records(ds, name)
