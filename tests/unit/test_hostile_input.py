"""Hostile input (hypothesis): every reader and format ends in rows, a counted skip or an AlignlabError.

Never a traceback, never a hang. Covered here, beside the byte fuzz in test_data_sources.py (random bytes
under .jsonl/.json/.csv/.tsv): random bytes under .gz and .parquet; every format's record with a field
swapped for a random JSON value of the wrong type, dropped, or joined by stray keys; several formats mixed
in one file; Unicode edge cases (BOM, NUL, RTL marks, combining marks, astral characters, lone
surrogates) round-tripped through every file type; deeply nested JSON; enormous lines and numbers.
Rows that load must also tokenise (tiny-random) without anything but an AlignlabError, because the
recipes tokenise every row before training starts.

Accounting checked with on_bad_row=skip: each record either gives rows (rows carry its index), or is one
counted skip (`skipped`), or is dropped on purpose (`dropped`); the three add up to the records read.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import signal
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alignlab.data.rows import PreferenceRow, PromptRow, SFTRow, UnpairedRow
from alignlab.data.sources import load_rows
from alignlab.data.tokenize import tokenize_pair, tokenize_prompt, tokenize_sft, tokenize_unpaired
from alignlab.errors import AlignlabError

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
U = "user"
TEMPLATES = {
    "prompt-completion": {"prompt": "p", "completion": "c"},
    "unpaired": {"prompt": "p", "completion": "c", "label": True},
    "prompt-only": {"prompt": "p"},
    "preference": {"prompt": "p", "chosen": "a", "rejected": "b"},
    "conversational-preference": {"prompt": [{"role": U, "content": "u"}],
                                  "chosen": [{"role": "assistant", "content": "a"}],
                                  "rejected": [{"role": "assistant", "content": "b"}]},
    "messages": {"messages": [{"role": "system", "content": "s"}, {"role": U, "content": "u"},
                              {"role": "assistant", "content": "a"}]},
    "sharegpt": {"conversations": [{"from": "human", "value": "h"}, {"from": "gpt", "value": "g"}],
                 "system": "s"},
    "alpaca": {"instruction": "i", "input": "x", "output": "o", "history": [["q", "a"]]},
    "question-answer": {"question": "q", "answer": "a #### 4"},
    "hh": {"chosen": "\n\nHuman: hi\n\nAssistant: yes", "rejected": "\n\nHuman: hi\n\nAssistant: no"},
}
KEYS = sorted({k for t in TEMPLATES.values() for k in t} | {"role", "content", "from", "value", "text", "type"})
# Characters that break naive text handling: BOM, NUL and other controls, bidi overrides and marks,
# zero-width joiners, a combining accent, astral and private-use code points, line/paragraph separators.
EDGE = ["\ufeff", "\x00", "\x1b", "\r", "\u202e", "\u202d", "\u200f", "\u2066", "\u200d", "\u0301", "\U0001f600",
        "\U00010348", "\ue000", "\x7f", "\ufffd", "\u05d0", "\u0627", "\n\nHuman: ", "\n\nAssistant: ",
        '"', "\\", ",", "\t", "\n"]
# What str.splitlines() breaks on besides \n and \r: they have their own test below (records end at \n only).
SEPARATORS = "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
TEXT = st.lists(st.one_of(st.sampled_from(EDGE), st.characters(codec="utf-8", exclude_characters=SEPARATORS)),
                max_size=12).map("".join)
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), TEXT)
JSON_VALUE = st.recursive(SCALAR, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.one_of(st.sampled_from(KEYS), TEXT), inner, max_size=3)),
    max_leaves=8)


@contextmanager
def no_hang(seconds: int = 20):
    """Fail (instead of hanging the suite) when a read takes more than `seconds`."""
    def fire(*_):
        raise TimeoutError(f"input handling took more than {seconds}s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def tok():
    from alignlab.models.load import load_tokenizer

    return load_tokenizer("tiny-random")


def tokenize_all(rows: list, tok) -> None:
    for row in rows:
        if isinstance(row, SFTRow):
            tokenize_sft(row, tok, 64)
        elif isinstance(row, PreferenceRow):
            tokenize_pair(row, tok, 64)
        elif isinstance(row, UnpairedRow):
            tokenize_unpaired(row, tok, 64)
        elif isinstance(row, PromptRow):
            tokenize_prompt(row, tok)


def load_or_clean_error(path: Path, tok=None, **kwargs):
    """load_rows under both bad-row policies: a result or an AlignlabError. Returns the skip-mode result."""
    result = None
    for policy in ("error", "skip"):
        with no_hang():
            try:
                result = load_rows(path, on_bad_row=policy, **kwargs)
            except AlignlabError as e:
                assert str(e).strip(), "an AlignlabError must say what is wrong"
                continue
            if tok is not None:
                try:
                    tokenize_all(result.rows, tok)
                except AlignlabError:
                    pass
    return result


def assert_accounted(result) -> None:
    """Records with rows + counted skips + deliberate drops == records read."""
    if result is None:
        return
    with_rows = {row.origin.index for row in result.rows}
    total = len(with_rows) + sum(result.skipped.values()) + sum(result.dropped.values())
    assert total == result.records, (len(with_rows), result.skipped, result.dropped, result.records)


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def mutate(draw, record: dict) -> dict:
    """One template record with a field replaced by a random JSON value, removed, or a stray key added."""
    rec = json.loads(json.dumps(record))
    key = draw(st.sampled_from(sorted(rec)))
    action = draw(st.sampled_from(["replace", "replace-nested", "delete", "add"]))
    if action == "replace":
        rec[key] = draw(JSON_VALUE)
    elif action == "replace-nested" and isinstance(rec[key], list) and rec[key]:
        i = draw(st.integers(0, len(rec[key]) - 1))
        item = rec[key][i]
        if isinstance(item, dict) and item:
            item[draw(st.sampled_from(sorted(item)))] = draw(JSON_VALUE)
        else:
            rec[key][i] = draw(JSON_VALUE)
    elif action == "delete":
        del rec[key]
    else:
        rec[draw(st.sampled_from(KEYS))] = draw(JSON_VALUE)
    return rec


@st.composite
def hostile_records(draw) -> list:
    good = TEMPLATES[draw(st.sampled_from(sorted(TEMPLATES)))]
    out = []
    for kind in draw(st.lists(st.sampled_from(["good", "mutated", "mutated", "random"]), min_size=1, max_size=5)):
        out.append(good if kind == "good" else mutate(draw, good) if kind == "mutated" else draw(JSON_VALUE))
    return out


@FAST
@given(records=hostile_records(), as_array=st.booleans())
def test_every_format_with_wrong_types_missing_or_stray_fields(tmp_path, tok, records, as_array):
    path = tmp_path / ("d.json" if as_array else "d.jsonl")
    if as_array:
        path.write_text(json.dumps(records), encoding="utf-8")
    else:
        write_jsonl(path, records)
    assert_accounted(load_or_clean_error(path, tok))


@FAST
@given(picks=st.lists(st.sampled_from(sorted(TEMPLATES)), min_size=2, max_size=6), task=st.sampled_from(
    [None, "sft", "preference", "prompt"]))
def test_mixed_formats_in_one_file(tmp_path, tok, picks, task):
    """Records of several formats in one file: the detected format's rows load, the rest are counted skips."""
    path = write_jsonl(tmp_path / "mixed.jsonl", [TEMPLATES[p] for p in picks])
    result = load_or_clean_error(path, tok, task=task)
    if task is None:
        assert_accounted(result)


MAPPINGS = ["prompt=q,completion=a", "prompt=q,chosen=a,rejected=b", "prompt=q+b,chosen=a[0],rejected=b[*]",
            "prompt=q,responses=a+b,votes=v1+v2", "prompt=q,chosen=a,rejected=b,margin=m",
            "prompt=q,completion=a,label=v1", "prompt=q,answer=a", "prompt=q[1],chosen=a,rejected=b,list_sep=|",
            "prompt=,chosen=a", "prompt=q,chosen=a,rejected=b,chat=maybe", "prompt=nope,completion=a",
            "reward=q", "prompt=q,completion=a[x]"]


@FAST
@given(cells=st.lists(st.fixed_dictionaries({k: JSON_VALUE for k in ("q", "a", "b", "v1", "v2", "m")}),
                      min_size=1, max_size=4), spec=st.sampled_from(MAPPINGS))
def test_column_mappings_over_cells_of_any_type(tmp_path, tok, cells, spec):
    """The `columns=` path (any table): every mapping, valid or not, over cells holding any JSON value."""
    path = write_jsonl(tmp_path / "table.jsonl", cells)
    assert_accounted(load_or_clean_error(path, tok, columns=spec))


def test_empty_list_separator_in_a_mapping_is_a_clean_error(tmp_path):
    """`list_sep=` (empty) would make str.split("") raise ValueError; it must be a clean config error."""
    path = write_jsonl(tmp_path / "t.jsonl", [{"q": "a;b", "a": "x", "b": "y"}])
    with pytest.raises(AlignlabError, match="list_sep must not be empty"):
        load_rows(path, columns="prompt=q[1],chosen=a,rejected=b,list_sep=,")


@FAST
@given(body=st.binary(max_size=300), kind=st.sampled_from([".jsonl.gz", ".json.gz", ".parquet", ".gz-of-junk"]))
def test_random_bytes_as_gzip_and_parquet(tmp_path, body, kind):
    if kind == ".gz-of-junk":  # a valid gzip stream holding junk
        path, data = tmp_path / "d.jsonl.gz", gzip.compress(body)
    else:
        path, data = tmp_path / f"d{kind}", body
    path.write_bytes(data)
    load_or_clean_error(path)


def write_table(path: Path, rows: list[dict], bom: bool) -> None:
    """The same prompt/completion rows as .jsonl, .json, .csv, .tsv, .parquet or gzipped jsonl."""
    name = path.name
    if name.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
        return
    if name.endswith((".csv", ".tsv")):
        buf = io.StringIO()
        writer = csv.DictWriter(buf, ["prompt", "completion"], delimiter="\t" if name.endswith(".tsv") else ",")
        writer.writeheader()
        writer.writerows(rows)
        text = buf.getvalue()
    elif name.endswith(".json"):
        text = json.dumps(rows, ensure_ascii=False)
    else:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    data = (("\ufeff" if bom else "") + text).encode("utf-8")
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)


def readable(text: str) -> bool:
    """A completion that survives as a training target: some non-space text (blank ones are refused)."""
    return bool(text.strip())


@settings(FAST, max_examples=25)
@given(texts=st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=4), bom=st.booleans(),
       suffix=st.sampled_from([".jsonl", ".json", ".csv", ".parquet", ".jsonl.gz"]))
def test_unicode_edge_cases_round_trip_through_every_file_type(tmp_path, tok, texts, bom, suffix):
    """Text that is valid Unicode loads back exactly (BOM, NUL, RTL marks and all) or is a counted skip."""
    rows = [{"prompt": "q" + p, "completion": "a" + c} for p, c in texts]
    path = tmp_path / f"d{suffix}"
    write_table(path, rows, bom)
    columns = "prompt=prompt,completion=completion" if suffix == ".csv" else None
    result = load_or_clean_error(path, tok, columns=columns)
    assert result is not None, "valid text in a valid file must load"
    assert_accounted(result)
    by_index = {row.origin.index: row for row in result.rows}
    for i, row in by_index.items():
        assert row.messages[0]["content"] == rows[i]["prompt"]
        assert row.messages[-1]["content"] == rows[i]["completion"]


@pytest.mark.parametrize("where", ["jsonl-field", "jsonl-line", "json-array-item", "json-wrapped"])
def test_deeply_nested_json_is_a_clean_error_or_skip(tmp_path, where):
    """100 000 levels of nesting: the C JSON parser gives up with RecursionError; that must become a located
    problem (counted skip) or an AlignlabError, not escape as a traceback."""
    deep = "[" * 100_000 + "]" * 100_000
    good = '{"prompt": "p", "completion": "c"}'
    text = {"jsonl-field": '{"prompt": ' + deep + ', "completion": "c"}\n' + good + "\n",
            "jsonl-line": deep + "\n" + good + "\n",
            "json-array-item": "[" + good + ", " + deep + "]",
            "json-wrapped": '{"data": ' + deep + "}"}[where]
    path = tmp_path / ("d.jsonl" if where.startswith("jsonl") else "d.json")
    path.write_text(text)
    assert_accounted(load_or_clean_error(path))


def test_huge_integer_is_a_clean_error_or_skip(tmp_path):
    """Python refuses to parse ints over 4300 digits (CVE-2020-10735 guard) with ValueError; the reader makes
    that a bad_value problem naming the field, and the other record still loads."""
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "p", "completion": "c", "label": ' + "9" * 5000 + '}\n'
                    '{"prompt": "p", "completion": "c"}\n')
    result = load_or_clean_error(path)
    assert_accounted(result)
    assert result.skipped == {"bad_value": 1} and [p.field for p in result.problems] == ["label"]


@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "\\udc80"])
def test_lone_surrogate_escapes_are_refused_or_tokenise(tmp_path, tok, escape):
    r"""JSON can spell lone surrogates (\ud800); they are not valid text, and the tokenizer refuses them
    with a TypeError. The reader must flag them like undecodable bytes (a located invalid_utf8 problem)."""
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a' + escape + 'b", "completion": "c"}\n{"prompt": "p", "completion": "c"}\n')
    result = load_or_clean_error(path, tok)
    assert_accounted(result)
    assert result.skipped == {"invalid_utf8": 1} and [p.field for p in result.problems] == ["prompt"]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
@pytest.mark.parametrize("sep", list(SEPARATORS))
def test_unicode_line_separators_inside_a_text_cell(tmp_path, sep, suffix):
    """U+2028, U+2029 and U+0085 are legal unescaped inside JSON strings (json.dumps(ensure_ascii=False)
    writes them raw), and any of these sit inside a quoted CSV cell; JSON lines and CSV records end at
    \\n (or \\r\\n) only, so the record must load whole and unchanged."""
    path = tmp_path / f"d{suffix}"
    write_table(path, [{"prompt": "q", "completion": f"a{sep}b"}], bom=False)
    columns = "prompt=prompt,completion=completion" if suffix == ".csv" else None
    result = load_rows(path, columns=columns)
    assert len(result.rows) == 1 and result.rows[0].messages[-1]["content"] == f"a{sep}b"


def test_enormous_lines_load_or_skip_quickly(tmp_path, tok):
    """A 8 MB line of junk is one counted skip; a 600 kB prompt loads whole and tokenises within max_length."""
    path = tmp_path / "d.jsonl"
    big = "ab " * 200_000
    path.write_text("x" * 8_000_000 + "\n" + json.dumps({"prompt": big, "completion": "ok"}) + "\n")
    with no_hang(60):
        result = load_rows(path, on_bad_row="skip")
    assert result.skipped == {"invalid_json": 1} and len(result.rows) == 1
    assert len(result.rows[0].messages[0]["content"]) == len(big)
    with no_hang(60):
        ex = tokenize_sft(result.rows[0], tok, 64)
    assert len(ex.input_ids) <= 64 and any(label != -100 for label in ex.labels)
