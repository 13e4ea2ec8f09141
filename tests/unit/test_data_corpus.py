"""data/corpus.py: what `alignlab pretrain` and `alignlab data inspect` read as a corpus."""

import json
import re

import pytest

from alignlab.data.corpus import corpus_texts, read_corpus
from alignlab.errors import AlignlabError


def test_text_records_are_documents_and_txt_must_be_utf8(tmp_path):
    """A JSONL of records holding only `text` (c4-style) is its documents, not the JSON syntax; a .txt file in
    another encoding is an error naming the byte, for inspect as for pretrain; other records are not a corpus."""
    docs = tmp_path / "c4.jsonl"
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in ("first doc.", "second doc.")))
    assert corpus_texts(docs) == ["first doc.", "second doc."]
    train, val = read_corpus(str(docs), 0.4)
    assert train + val == "first doc.\n\nsecond doc." and "{" not in train
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(AlignlabError, match="not UTF-8 text"):
        corpus_texts(latin)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n")
    assert corpus_texts(pairs) is None
    with pytest.raises(AlignlabError, match="not a text corpus"):
        read_corpus(str(pairs), 0.1)


def test_a_broken_line_of_a_text_corpus_is_an_error_not_a_lost_document(tmp_path):
    # the reader's problems were dropped: `data inspect` counted 2 documents and exited 0, pretrain lost line 2
    p = tmp_path / "c.jsonl"
    p.write_text('{"text": "hello world"}\n{"text": "second doc"\n{"text": "third"}\n')
    with pytest.raises(AlignlabError, match=r"(?s)1 record\(s\) of this text corpus cannot be read.*c.jsonl:2"):
        read_corpus(str(p), 0.0)


def test_a_corpus_record_that_is_not_text_is_located_and_the_held_out_share_is_the_one_asked(tmp_path):
    """A null text, an extra key or a misspelt one among 300 text records gave "not a text corpus" with no line;
    the cut at the last line break before the asked point held out 15.6% of a corpus of long lines for 5%."""
    for bad, why in (({"text": None}, "field 'text': expected a string, got NoneType"),
                     ({"text": "x", "url": "u"}, "field(s) 'url': a corpus record holds only 'text'"),
                     ({"txet": "x"}, "field 'text' is missing")):
        p = tmp_path / "c.jsonl"
        recs = [{"text": f"doc {i}"} for i in range(300)]
        recs[150] = bad
        p.write_text("".join(json.dumps(r) + "\n" for r in recs))
        with pytest.raises(AlignlabError, match=rf"1 of its 300 records .*\n  .*c.jsonl:151 \(record 150\): {re.escape(why)}"):
            read_corpus(str(p), 0.1)
    long_lines = tmp_path / "long.txt"
    long_lines.write_text("\n".join(" ".join(f"w{i}x{j}" for j in range(400)) for i in range(10)))
    for fraction in (0.05, 0.1, 0.23):
        train, val = read_corpus(str(long_lines), fraction)
        assert abs(len(val) / (len(train) + len(val)) - fraction) < 0.01
        assert train.endswith((" ", "\n")) and not val.startswith(" ")  # no word split
