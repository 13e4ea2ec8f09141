"""Column mappings: turn a table in no known format into rows by naming which column is what.

Syntax (CLI `--columns`, or the same string / a dict for `load_rows(columns=...)`):

    prompt=Question,chosen=Best Answer,rejected=Incorrect Answers[0]
    prompt=instruction+input,responses=response1+response2,votes=annotator1+annotator2+annotator3

Fields (left of `=`) and what they take (right of `=`, column names; quote the whole argument in a shell):
- `prompt`, `system`: one column or several joined with `+`; non-empty cells are joined by a blank line.
- `chosen`, `rejected` -> a preference row; `completion` -> sft, or unpaired with `label`;
  only `prompt` (+ `answer`) -> a prompt row. `margin`: a numeric column for preference rows.
- `responses=A+B` with `votes=V1+V2+...` -> a preference row chosen by majority vote: each vote cell
  names the winning response as 1 or 2 (or a/b), 0 / "tie" / empty is a tie vote. The answer with the
  most votes wins; when tie votes win, or two answers share the top count, the record is a tie: it is
  dropped and counted in `LoadResult.dropped["tie"]`.
  A judged pair keeps an empty response (it is what that model produced and the judges saw; PandaLM
  has 52 such pairs): `LoadResult.notes["empty_response_kept"]` counts them. Everywhere else an empty
  chosen/rejected is an `empty_completion` problem.
- `list_sep` (default `;`): separator used to split a text cell into a list when a selector asks for one.
- `chat` (default true): false treats the texts as plain text (no chat template, EOS appended).

Cells are read as text; numbers and booleans in a text column are written as Python spells them
(`True`, `3`). List-valued cells: a cell is a list when it holds a JSON array (json/jsonl/parquet) or, when a selector
is written, a text cell split on `list_sep` (TruthfulQA's "Incorrect Answers" is "a; b; c"). A column
name may end with a selector: `COL[N]` takes element N (0-based), `COL[*]` makes one row per element
(for chosen and rejected both, every combination). A list cell read without a selector is a
`wrong_type` problem that says to add one, so nothing is joined or cut silently.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from itertools import product
from typing import Any

from alignlab.data.formats import Dropped, assistant, join_parts, parse_label, user
from alignlab.data.rows import Message, PreferenceRow, PromptRow, Row, RowProblem, SFTRow, UnpairedRow
from alignlab.errors import AlignlabError

TEXT_FIELDS = ("chosen", "rejected", "completion", "answer")
MULTI_FIELDS = ("prompt", "system", "responses", "votes")
SINGLE_FIELDS = ("label", "margin")
OPTIONS = ("list_sep", "chat")
_SELECTOR = re.compile(r"^(.*?)\[(\d+|\*)\]$")


@dataclass
class ColumnMapping:
    """Parsed mapping: field -> list of (column, selector) with selector None, an int, or '*'."""

    fields: dict[str, list[tuple[str, int | str | None]]] = field(default_factory=dict)
    list_sep: str = ";"
    chat: bool = True

    def columns(self) -> list[str]:
        """Every column the mapping reads."""
        return [col for cols in self.fields.values() for col, _ in cols]

    @property
    def judged(self) -> bool:
        """Pairs chosen by votes between two given responses."""
        return "votes" in self.fields

    @property
    def task(self) -> str:
        f = self.fields
        if "chosen" in f or "responses" in f:
            return "preference"
        if "completion" in f:
            return "unpaired" if "label" in f else "sft"
        return "prompt"


def _column(spec: str) -> tuple[str, int | str | None]:
    spec = spec.strip().strip("\"'")
    m = _SELECTOR.match(spec)
    if not m:
        return spec, None
    return m.group(1).strip(), "*" if m.group(2) == "*" else int(m.group(2))


def parse_columns(spec: str | dict) -> ColumnMapping:
    """`"k=v,k=v"` or `{"k": "v" | [v, ...]}` -> ColumnMapping; bad keys are AlignlabErrors."""
    if isinstance(spec, str):
        pairs = [item.partition("=") for item in spec.split(",") if item.strip()]
        bad = [k for k, eq, _ in pairs if not eq]
        if bad:
            raise AlignlabError(f"columns: expected field=COLUMN items separated by commas, got {bad[0]!r}")
        if twice := [k for k, n in Counter(k.strip() for k, _, _ in pairs).items() if n > 1]:
            raise AlignlabError(f"columns: {twice[0]!r} is given twice (join columns with +: prompt=a+b)")
        spec = {k.strip(): v for k, _, v in pairs}
    out = ColumnMapping()
    known = TEXT_FIELDS + MULTI_FIELDS + SINGLE_FIELDS + OPTIONS
    for key, value in spec.items():
        if key not in known:
            raise AlignlabError(f"columns: unknown field {key!r}; allowed: {', '.join(known)}")
        if key == "list_sep":
            if not str(value):  # `list_sep=,` reads as empty: commas separate the mapping's own items
                raise AlignlabError("columns: list_sep must not be empty (a comma cannot be given inline)")
            out.list_sep = str(value)
            continue
        if key == "chat":
            out.chat = str(value).strip().lower() not in ("false", "0", "no")
            continue
        cols = value if isinstance(value, list) else str(value).split("+")
        out.fields[key] = [_column(c) for c in cols]
        if key not in MULTI_FIELDS and len(cols) != 1:
            raise AlignlabError(f"columns: field {key!r} takes one column, got {value!r}")
    f = out.fields
    if ("chosen" in f) != ("rejected" in f) or ("responses" in f) != ("votes" in f):
        raise AlignlabError("columns: give chosen with rejected, and responses with votes")
    if "responses" in f and len(f["responses"]) != 2:
        raise AlignlabError("columns: responses takes exactly two columns, e.g. responses=response1+response2")
    if "prompt" not in f:
        raise AlignlabError("columns: a mapping needs prompt=COLUMN")
    reads = {"prompt", "system"} | ({"responses", "votes"} if "responses" in f else {"chosen", "rejected", "margin"}
                                    if "chosen" in f else {"completion", "label"} if "completion" in f else {"answer"})
    if unread := [k for k in f if k not in reads]:  # accepted and ignored would mean a column silently unused
        raise AlignlabError(f"columns: {', '.join(unread)} is not read by a mapping with {', '.join(sorted(reads))}")
    return out


def _cell(rec: dict, col: str) -> Any:
    if col not in rec:
        raise RowProblem("missing_field", col, f"column '{col}' is missing (have: {', '.join(map(str, rec))[:200]})")
    return rec[col]


def _as_text(value: Any, col: str) -> str:
    """A cell as text: tables often hold numbers or booleans where text was meant (PandaLM has answers
    `true` that were the text "True"), so scalars are written as Python spells them."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return str(value)
    raise RowProblem("wrong_type", col, f"expected text, got {type(value).__name__}")


def _values(rec: dict, col: str, sel: int | str | None, sep: str) -> list[str]:
    """The text value(s) of one column; several only for a `[*]` selector."""
    value = _cell(rec, col)
    if sel is None:
        if isinstance(value, list):
            raise RowProblem("wrong_type", col, f"column '{col}' holds a list; pick one with {col}[0] or {col}[*]")
        return [_as_text(value, col)]
    if value is None:  # a null cell: not the text "None"
        raise RowProblem("missing_field", col, f"column '{col}' is null")
    items = value if isinstance(value, list) else [s.strip() for s in str(value).split(sep) if s.strip()]
    items = [_as_text(v, col) for v in items]
    if sel == "*":
        if not items:
            raise RowProblem("empty_completion", col, f"column '{col}' holds an empty list")
        return list(items)
    if sel >= len(items):
        raise RowProblem("missing_field", f"{col}[{sel}]", f"the list has {len(items)} item(s)")
    return [items[sel]]


def _joined(rec: dict, m: ColumnMapping, key: str) -> str:
    return join_parts([v for col, sel in m.fields.get(key, []) for v in _values(rec, col, sel, m.list_sep)])


def _vote_winner(rec: dict, m: ColumnMapping) -> int:
    """0 or 1: the response the votes pick; Dropped('tie') when they pick none."""
    votes = []
    for col, _ in m.fields["votes"]:
        v = _cell(rec, col)
        s = "" if v is None else str(v).strip().lower()
        table = {"": None, "0": None, "tie": None, "1": 0, "2": 1, "a": 0, "b": 1}
        if s not in table:
            raise RowProblem("bad_value", col, f"a vote must be 1, 2, a, b, 0 or tie; got {v!r}")
        votes.append(table[s])
    ranked = Counter(votes).most_common()
    if ranked[0][0] is None or (len(ranked) > 1 and ranked[1][1] == ranked[0][1]):
        raise Dropped("tie")
    return ranked[0][0]


def convert(rec: Any, m: ColumnMapping) -> list[Row]:
    """One record -> its row(s) under the mapping."""
    if not isinstance(rec, dict):
        raise RowProblem("wrong_type", None, f"expected a record with columns, got {type(rec).__name__}")
    prompt_text = _joined(rec, m, "prompt")
    system = _joined(rec, m, "system")
    if m.chat:
        prompt: list[Message] = ([{"role": "system", "content": system}] if system else []) + [user(prompt_text)]
    else:  # plain text is one prompt message (rows.SFTRow contract); the system text leads it
        prompt = [user(join_parts([system, prompt_text]))]
    f, sep = m.fields, m.list_sep
    if "responses" in f:
        win = _vote_winner(rec, m)
        answers = [_values(rec, col, sel, sep)[0] for col, sel in f["responses"]]
        return [PreferenceRow(prompt, [assistant(answers[win])], [assistant(answers[1 - win])], chat=m.chat)]
    if "chosen" in f:
        margin = _margin(rec, m)
        (cc, cs), (rc, rs) = f["chosen"][0], f["rejected"][0]
        pairs = product(_values(rec, cc, cs, sep), _values(rec, rc, rs, sep))
        return [PreferenceRow(prompt, [assistant(c)], [assistant(r)], chat=m.chat, margin=margin) for c, r in pairs]
    if "completion" in f:
        col, sel = f["completion"][0]
        outs = _values(rec, col, sel, sep)
        if "label" in f:
            lab = parse_label(_cell(rec, f["label"][0][0]), f["label"][0][0])
            return [UnpairedRow(prompt, [assistant(c)], lab, chat=m.chat) for c in outs]
        return [SFTRow(prompt + [assistant(c)], len(prompt), chat=m.chat, field=col) for c in outs]
    answer = _joined(rec, m, "answer") if "answer" in f else None
    return [PromptRow(prompt, chat=m.chat, answer=answer)]


def _margin(rec: dict, m: ColumnMapping) -> float | None:
    if "margin" not in m.fields:
        return None
    col = m.fields["margin"][0][0]
    try:
        value = float(_cell(rec, col))
    except (TypeError, ValueError):
        raise RowProblem("wrong_type", col, f"margin must be a number, got {rec[col]!r}") from None
    if not math.isfinite(value):  # the loss would be nan at the first step
        raise RowProblem("bad_value", col, f"margin must be finite, got {rec[col]!r}")
    return value
