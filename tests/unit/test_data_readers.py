"""Readers: every file type gives the same records, and what cannot be read is located, not fatal."""

import gzip
import json

import pytest

from alignlab.data.readers import find_bad_text, read_records
from alignlab.errors import AlignlabError

RECS = [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}]


def _values(out):
    return [r.value for r in out.records]


def test_jsonl_keeps_line_numbers_and_skips_blank_lines(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps(RECS[0]) + "\n\n" + json.dumps(RECS[1]) + "\n")
    out = read_records(p)
    assert _values(out) == RECS and out.problems == []
    assert [(r.index, r.line) for r in out.records] == [(0, 1), (1, 3)]


def test_truncated_jsonl_line_is_one_problem_with_its_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps(RECS[0]) + "\n" + '{"prompt": "x", "compl\n' + json.dumps(RECS[1]) + "\n")
    out = read_records(p)
    assert _values(out) == RECS  # the lines after the broken one are still read
    (prob,) = out.problems
    assert (prob.kind, prob.line, prob.index, prob.file) == ("invalid_json", 2, 1, str(p))


def test_json_array_records_carry_the_line_they_start_on(tmp_path):
    p = tmp_path / "d.json"
    p.write_text('[\n  {"prompt": "a", "completion": "b"},\n\n  {"prompt": "c",\n   "completion": "d"}\n]\n')
    out = read_records(p)
    assert _values(out) == RECS and [r.line for r in out.records] == [2, 4]


def test_truncated_json_array_keeps_the_records_before_the_break(tmp_path):
    p = tmp_path / "d.json"
    p.write_text('[{"prompt": "a", "completion": "b"},\n {"prompt": "c", "comp')
    out = read_records(p)
    assert _values(out) == RECS[:1]
    assert [(x.kind, x.line, x.index) for x in out.problems] == [("invalid_json", 2, 1)]


def test_json_file_holding_json_lines_or_a_wrapped_list(tmp_path):
    p = tmp_path / "d.json"
    p.write_text("\n".join(json.dumps(r) for r in RECS))
    assert _values(read_records(p)) == RECS
    p.write_text(json.dumps({"data": RECS}, indent=2))
    assert _values(read_records(p)) == RECS
    p.write_text(json.dumps(RECS[0], indent=2))
    assert _values(read_records(p)) == RECS[:1]


@pytest.mark.parametrize("name", ["d.jsonl.gz", "d.json.gz"])
def test_gzip(tmp_path, name):
    p = tmp_path / name
    body = "\n".join(json.dumps(r) for r in RECS) if "jsonl" in name else json.dumps(RECS)
    p.write_bytes(gzip.compress(body.encode()))
    assert _values(read_records(p)) == RECS


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(RECS), p)
    assert _values(read_records(p)) == RECS


def test_csv_quoting_multiline_cells_and_line_numbers(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text('prompt,completion\n"a, with comma","two\nlines"\nc,d\n')
    out = read_records(p)
    assert _values(out) == [{"prompt": "a, with comma", "completion": "two\nlines"}, RECS[1]]
    assert [r.line for r in out.records] == [2, 4]


def test_csv_row_with_wrong_cell_count_is_a_problem(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("prompt,completion\na,b,extra\nc,d\n")
    out = read_records(p)
    assert _values(out) == [RECS[1]]
    assert [(x.kind, x.line, x.index) for x in out.problems] == [("wrong_type", 2, 0)]


def test_tsv_is_read_without_quote_processing(tmp_path):
    p = tmp_path / "d.tsv"
    p.write_text('label\tsentence\n1\t"a quote starts here\n0\tb\n')
    assert _values(read_records(p)) == [{"label": "1", "sentence": '"a quote starts here'},
                                        {"label": "0", "sentence": "b"}]


def test_datasets_save_to_disk_folder(tmp_path):
    import datasets

    datasets.Dataset.from_list(RECS).save_to_disk(str(tmp_path / "ds"))
    assert _values(read_records(tmp_path / "ds")) == RECS
    datasets.DatasetDict({"train": datasets.Dataset.from_list(RECS)}).save_to_disk(str(tmp_path / "dd"))
    assert _values(read_records(tmp_path / "dd")) == RECS
    # a split other than train, named as its error says (DIR:SPLIT was "no such file or folder")
    datasets.DatasetDict({"test": datasets.Dataset.from_list(RECS[:1])}).save_to_disk(str(tmp_path / "tt"))
    with pytest.raises(AlignlabError, match="none is 'train'; name one as .*tt:SPLIT"):
        read_records(tmp_path / "tt")
    assert _values(read_records(f"{tmp_path / 'tt'}:test")) == RECS[:1]
    with pytest.raises(AlignlabError, match="none is 'validation'"):
        read_records(f"{tmp_path / 'tt'}:validation")


def test_invalid_utf8_is_kept_as_surrogates_and_located_by_field(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'{"prompt": "ok", "completion": "caf\xe9"}\n')
    (rec,) = read_records(p).records
    assert find_bad_text(rec.value) == "completion"
    assert find_bad_text({"m": [{"content": "x"}, {"content": "\udce9"}]}) == "m[1].content"
    assert find_bad_text(RECS) is None


def test_missing_file_and_unknown_type_are_clean_errors(tmp_path):
    with pytest.raises(AlignlabError, match="no such file"):
        read_records(tmp_path / "nope.jsonl")
    (tmp_path / "d.xml").write_text("<a/>")
    with pytest.raises(AlignlabError, match="unknown file type"):
        read_records(tmp_path / "d.xml")


def test_hub_id_without_network_is_a_clean_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(AlignlabError, match="hub dataset"):
        read_records("no-such-owner-xyz/no-such-dataset")


def test_a_quote_left_open_in_a_csv_is_a_problem_at_its_line(tmp_path):
    """Not one record whose cell holds the rest of the file."""
    p = tmp_path / "d.csv"
    p.write_text('q,a\n1,"abc\n2,3\n4,5\n')
    out = read_records(p)
    assert _values(out) == [] and [(x.kind, x.line) for x in out.problems] == [("bad_value", 2)]


def test_more_json_after_a_json_arrays_end_is_a_problem(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps(RECS[:1]) + "\n" + json.dumps(RECS[1:]) + "\n")
    out = read_records(p)
    assert _values(out) == RECS[:1] and [(x.kind, x.line) for x in out.problems] == [("invalid_json", 2)]


def test_a_json_file_holding_one_messages_record_is_one_record(tmp_path):
    # {"messages": [...]} was taken for a wrapped list: two records {"role": ...} that no format reads
    p = tmp_path / "one.json"
    for rec in ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
                {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}):
        p.write_text(json.dumps(rec))
        assert _values(read_records(p)) == [rec]
