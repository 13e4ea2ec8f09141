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
import io
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignlab.data.rows import Problem
from alignlab.errors import AlignlabError

# Every lone surrogate: \udc80-\udcff from undecodable bytes (surrogateescape), any of them from a JSON
# escape such as "\ud800" (tokenizers refuse both).
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_WS = re.compile(r"\s*")


@dataclass
class Record:
    """One raw record: the parsed value, its 0-based index, its 1-based line if the file has lines."""

    value: Any
    index: int
    line: int | None = None


class _HugeInt:
    """Stands in for an integer literal past Python's int digit limit (sys.get_int_max_str_digits), so the
    rest of the record still parses and the problem names the field."""

    def __init__(self, digits: str):
        self.digits = len(digits.lstrip("-"))


def _parse_int(text: str) -> int | _HugeInt:
    try:
        return int(text)
    except ValueError:
        return _HugeInt(text)


_DECODER = json.JSONDecoder(parse_int=_parse_int)
_TOO_DEEP = "nested deeper than the JSON parser allows"


@dataclass
class ReadOutput:
    records: list[Record]
    problems: list[Problem]  # records that could not be read at all (invalid JSON, ...)
    source: str  # the name problems carry: the path as given, or the hub id


def read_records(path: str | Path) -> ReadOutput:
    """Every record of a file, folder or hub id, plus problems for parts that could not be parsed."""
    if isinstance(path, list):  # in-memory records (alignlab.api): its str() names it in messages
        return ReadOutput([Record(r, i) for i, r in enumerate(path)], [], str(path))
    p = Path(path)
    source = str(path)
    if p.is_dir():
        return ReadOutput(_read_saved_dataset(p), [], source)
    folder, colon, split = source.rpartition(":")
    if colon and folder and Path(folder).is_dir() and "/" not in split:  # a saved DatasetDict's split: DIR:SPLIT
        return ReadOutput(_read_saved_dataset(Path(folder), split), [], source)
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
    """Dotted path of the first string holding undecodable bytes or lone surrogates, or None."""
    found = _find(value, lambda v: isinstance(v, str) and _LONE_SURROGATE.search(v) is not None, path)
    return found and found[0]


def _find(value: Any, bad: Any, path: str = "") -> tuple[str, Any] | None:
    """(dotted path such as `a.b[2]`, value) of the first value, depth first, for which `bad(value)`, or None.
    Iterative, so a record nested as deep as the parser allows cannot overflow the Python stack here."""
    stack = [(path, value)]
    while stack:
        where, v = stack.pop()
        if bad(v):
            return where or "(record)", v
        if isinstance(v, dict):
            items = [(where + "." + str(k) if where else str(k), x) for k, x in v.items()]
        elif isinstance(v, list):
            items = [(f"{where}[{i}]", x) for i, x in enumerate(v)]
        else:
            continue
        stack.extend(reversed(items))
    return None


def _parsed(value: Any, index: int, line: int | None, source: str) -> Record | Problem:
    """The record, or a problem naming the field whose integer was too long to read."""
    found = _find(value, lambda v: isinstance(v, _HugeInt))
    if found is None:
        return Record(value, index, line)
    field, huge = found
    return Problem("bad_value", source, index, line, None if field == "(record)" else field,
                   f"an integer of {huge.digits} digits (Python reads at most {sys.get_int_max_str_digits()})")


def _split(items: list[Record | Problem]) -> tuple[list[Record], list[Problem]]:
    return [r for r in items if isinstance(r, Record)], [p for p in items if isinstance(p, Problem)]


def _json_problem(source: str, index: int, line: int, err: json.JSONDecodeError, what: str) -> Problem:
    return Problem("invalid_json", source, index, line, None, f"{what}: {err.msg} at column {err.colno}")


def _read_json_lines(text: str, source: str) -> tuple[list[Record], list[Problem]]:
    """JSON lines end at \n (a \r before it is JSON whitespace). Not str.splitlines(): U+2028, U+0085 and
    friends may stand unescaped inside a JSON string and must not cut the record."""
    items = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            items.append(_parse_line(line, len(items), lineno, source))
    return _split(items)


def _parse_line(line: str, index: int, lineno: int, source: str) -> Record | Problem:
    try:
        return _parsed(_DECODER.decode(line), index, lineno, source)
    except json.JSONDecodeError as e:
        return _json_problem(source, index, lineno, e, "not a JSON value (truncated line?)")
    except RecursionError:  # e.g. 100k nested brackets: valid JSON, beyond the C parser's depth
        return Problem("invalid_json", source, index, lineno, None, _TOO_DEEP)


def _read_json_object_or_lines(text: str, source: str) -> tuple[list[Record], list[Problem]]:
    """A .json that is not an array: one object whose only value is the record list ({"data": [...]}),
    one object (one record, {"messages": [...]} included), or JSON lines under a .json name."""
    try:
        value = _DECODER.decode(text)
    except (json.JSONDecodeError, RecursionError):  # line by line, each problem then names its line
        return _read_json_lines(text, source)
    from alignlab.data.formats import detect_format

    # {"messages": [...]} or {"conversations": [...]} is one record of a known format, not a wrapped list
    if isinstance(value, dict) and len(value) == 1 and isinstance(next(iter(value.values())), list) \
            and detect_format(value) is None:
        return _split([_parsed(v, i, None, source) for i, v in enumerate(next(iter(value.values())))])
    return _split([_parsed(value, 0, 1, source)])


def _read_json_array(text: str, source: str) -> tuple[list[Record], list[Problem]]:
    """Parse `[v0, v1, ...]` element by element so every record keeps the line it starts on.

    A syntax error (or nesting too deep to parse) cannot be stepped over inside an array (where the next
    element starts is unknown), so it ends the read with one problem at its line; the elements before it
    are kept.
    """
    items: list[Record | Problem] = []
    pos = _WS.match(text, 0).end() + 1  # past '['
    line, counted = 1, 0
    while True:
        pos = _WS.match(text, pos).end()
        if pos >= len(text):
            return _split([*items, _eof_problem(source, len(items), text)])
        if text[pos] == "]" and not items:
            return [], []
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            value, pos = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            return _split([*items, _json_problem(source, len(items), e.lineno, e, "invalid JSON in array")])
        except RecursionError:
            return _split([*items, Problem("invalid_json", source, len(items), line, None, _TOO_DEEP)])
        items.append(_parsed(value, len(items), line, source))
        pos = _WS.match(text, pos).end()
        if pos < len(text) and text[pos] == "]":
            end = _WS.match(text, pos + 1).end()
            if end < len(text):  # a second array or JSON lines after the first: not one JSON document
                return _split([*items, Problem("invalid_json", source, len(items), text.count("\n", 0, end) + 1,
                                               None, "more JSON after the array's closing ']'")])
            return _split(items)
        if pos >= len(text) or text[pos] != ",":
            return _split([*items, _eof_problem(source, len(items), text, pos)])
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
    # newline="": records end at \r, \n or \r\n outside quotes only (not at \x0b, \x85, U+2028, ... as
    # str.splitlines() would), and reader.line_num still counts physical lines for the problem reports.
    # strict: a quote left open ends in an error at its line, not in one cell holding the rest of the file
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting, strict=True)
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


def _dataset_records(ds: Any, source: str, split: str | None = None) -> list[Record]:
    if isinstance(ds, dict):  # a DatasetDict: the split named, else train
        splits = list(ds.keys())
        if (split or "train") not in splits:
            raise AlignlabError(f"{source}: holds splits {splits} and none is {split or 'train'!r}; name one as "
                                f"{source.rsplit(':', 1)[0] if split else source}:SPLIT")
        ds = ds[split or "train"]
    elif split is not None:
        raise AlignlabError(f"{source}: the saved dataset has no splits; name the folder alone")
    return [Record(r, i) for i, r in enumerate(ds)]


def _read_saved_dataset(path: Path, split: str | None = None) -> list[Record]:
    import datasets

    source = f"{path}:{split}" if split else str(path)
    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise AlignlabError(f"{source}: a folder, but not one written by datasets' save_to_disk ({e})") from None
    return _dataset_records(ds, source, split)


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
