"""`alignlab data inspect`: report keys and values, exit codes, and no traceback on bad input."""

import json

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from alignlab.cli import main


def run_json(capsys, *argv):
    code = main(["data", "inspect", *argv, "--json"])
    out = capsys.readouterr()
    return code, json.loads(out.out), out.err


@pytest.fixture
def pairs(tmp_path):
    p = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "hello", "chosen": " world", "rejected": " there"},
            {"prompt": "hello", "chosen": "same", "rejected": "same"},
            {"prompt": "good bad", "chosen": " answer question", "rejected": " bad"}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + '\n{"prompt": "trunc')
    return p


def test_json_report_counts_and_locates_problems(capsys, pairs):
    code, rep, err = run_json(capsys, str(pairs), "--on-bad-row", "skip")
    assert code == 0
    assert {k: rep[k] for k in ("format", "task", "rows", "records", "skipped")} == {
        "format": "preference", "task": "preference", "rows": 2, "records": 4,
        "skipped": {"invalid_json": 1, "identical_pair": 1}}
    assert rep["problems"]["identical_pair"]["count"] == 1
    (first,) = rep["problems"]["identical_pair"]["first"]
    assert (first["file"], first["line"], first["index"], first["field"]) == (str(pairs), 2, 1, "chosen")
    assert rep["problems"]["invalid_json"]["first"][0]["line"] == 4
    assert rep["tokens"] is None


def test_error_mode_still_reports_then_exits_2(capsys, pairs):
    code, rep, err = run_json(capsys, str(pairs))
    assert code == 2 and rep["rows"] == 2 and "would stop" in err


def test_human_report(capsys, pairs):
    assert main(["data", "inspect", str(pairs), "--on-bad-row", "skip"]) == 0
    out = capsys.readouterr().out
    assert "format preference, task preference" in out and "usable rows: 2" in out
    assert f"{pairs}:2 (record 1) field 'chosen': chosen and rejected are identical" in out


def test_bad_input_is_a_clean_error_not_a_traceback(capsys, tmp_path):
    assert main(["data", "inspect", str(tmp_path / "missing.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "weird.jsonl"
    bad.write_text('{"body": "x"}\n')
    assert main(["data", "inspect", str(bad)]) == 2
    assert "cannot tell the format" in capsys.readouterr().err
    assert main(["data", "inspect", str(bad), "--columns", "prompt=body,oops=1"]) == 2
    assert "unknown field 'oops'" in capsys.readouterr().err


def test_column_mapping_and_task_flags(capsys, tmp_path):
    p = tmp_path / "votes.csv"
    p.write_text("q,r1,r2,v1,v2,v3\nQ1,a,b,1,1,2\nQ2,a,b,0,0,1\nQ3,a,b,2,2,2\n")
    cols = "prompt=q,responses=r1+r2,votes=v1+v2+v3"
    code, rep, _ = run_json(capsys, str(p), "--columns", cols)
    assert (code, rep["format"], rep["rows"], rep["dropped"]) == (0, "columns", 2, {"tie": 1})
    code, rep, _ = run_json(capsys, str(p), "--columns", cols, "--task", "unpaired")
    assert (rep["task"], rep["rows"]) == ("unpaired", 4)


def test_token_stats_with_a_tokenizer(capsys, pairs, tmp_path):
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(["hello world good bad answer question"] * 20, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>").save_pretrained(tmp_path / "tok")
    code, rep, _ = run_json(capsys, str(pairs), "--on-bad-row", "skip", "--tokenizer", str(tmp_path / "tok"),
                            "--max-length", "3")
    tokens = rep["tokens"]
    # row 1: "hello" | " world" + EOS -> 1 + 2 tokens; row 3: "good bad" | " answer question" + EOS
    assert tokens["rows_measured"] == 2
    assert tokens["chosen"]["min"] == 2 and tokens["truncation"]["rows"] == 2
    assert tokens["truncation"]["completion_truncated"] >= 1


def test_sft_totals_before_truncation_do_not_move_with_max_length(capsys, tmp_path):
    """A chat row cut at max_length also drops the template's text after its last trained token, counted in no cut:
    the "before truncation" totals were a token short per cut row (alpaca demo: mean 201.1 against 201.7)."""
    rows = tmp_path / "chat.jsonl"
    rows.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Question {i} " * (i + 2)},
                                                      {"role": "assistant", "content": f"Answer {i} " * (i + 3)}]})
                            + "\n" for i in range(4)))
    totals = []
    for extra in ([], ["--max-length", "24"]):
        code, rep, _ = run_json(capsys, str(rows), "--tokenizer", "tiny-random", *extra)
        totals.append(rep["tokens"]["total"])
    assert rep["tokens"]["truncation"]["rows"] >= 1 and totals[0] == totals[1]


def test_text_files_are_pretraining_text(capsys, tmp_path):
    """A .txt file and records holding only `text` are what `alignlab pretrain` reads, not an unknown format."""
    txt = tmp_path / "corpus.txt"
    txt.write_text("To be, or not to be.\nThat is the question.\n")
    assert main(["data", "inspect", str(txt), "--json", "--tokenizer", "tiny-random"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert (rep["format"], rep["task"], rep["documents"], rep["characters"]) == ("text", "pretrain", 1, 43)
    assert rep["tokens"] > 0
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"text": "one"}\n{"text": "two words"}\n')
    assert main(["data", "inspect", str(docs)]) == 0
    out = capsys.readouterr().out
    assert "pretraining text" in out and "2 document(s), 12 characters" in out


def test_ranked_lists_are_reported_as_rm_reads_them_and_not_converted(capsys, tmp_path):
    """A ranked-list file was read as prompt-only: inspect said 2 usable rows and exit 0 over a record `alignlab
    rm` stops on, and convert wrote the prompts alone, every completion dropped."""
    good = tmp_path / "ranked.jsonl"
    good.write_text(json.dumps({"prompt": "Q1", "completions": ["a", "b", "c"]}) + "\n"
                    + json.dumps({"prompt": "Q2", "completions": ["d", "e"]}) + "\n")
    code, rep, _ = run_json(capsys, str(good))
    assert code == 0 and rep == {"path": str(good), "format": "ranked", "task": "reward (ranked lists)", "rows": 2,
                                 "completions": 5}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "Q1", "completions": ["a", "b"]}) + "\n"
                   + json.dumps({"prompt": "Q2", "completions": ["d"]}) + "\n")
    assert main(["data", "inspect", str(bad)]) == 2
    assert "bad.jsonl:2 (record 1): field 'completions'" in capsys.readouterr().err
    assert main(["data", "convert", str(good), str(tmp_path / "out.jsonl")]) == 2
    assert "ranked lists" in capsys.readouterr().err and not (tmp_path / "out.jsonl").exists()


def test_sample_and_max_length_must_be_positive(capsys, pairs):
    # --sample -1 measured all rows but the last (a slice), --max-length 0 reported every row cut to nothing
    for flag, value in (("--sample", "-1"), ("--sample", "0"), ("--max-length", "0")):
        assert main(["data", "inspect", str(pairs), flag, value]) == 2
        assert "--sample and --max-length must be >= 1" in capsys.readouterr().err
