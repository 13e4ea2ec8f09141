"""Prompt-only commands read only the prompt, and every data-reading command takes --limit and --on-bad-row:
an HH file (tests/fixtures/hh_bad_rows.jsonl) whose record 1 has an empty chosen answer, record 2 dialogues
that differ before the last answer, and record 4 an empty rejected answer."""

import json
from pathlib import Path

import pytest

from alignlab.cli import main
from alignlab.data.sources import load_rows
from alignlab.errors import AlignlabError

HH = str(Path(__file__).resolve().parents[1] / "fixtures" / "hh_bad_rows.jsonl")
GEN = ["--max-new-tokens", "3", "--seed", "0"]


def test_prompt_rows_ignore_the_answers():
    """All five records give their prompt (record 2: the chosen side's dialogue); as pairs three are bad."""
    rows = load_rows(HH, task="prompt").rows
    assert len(rows) == 5
    assert [m["content"] for m in rows[2].prompt] == ["How do I bake bread?", "Mix flour and water.", "And then?"]
    with pytest.raises(AlignlabError, match="prompt_mismatch"):
        load_rows(HH, task="preference")
    assert load_rows(HH, task="preference", on_bad_row="skip").skipped == {"empty_completion": 2, "prompt_mismatch": 1}
    assert len(load_rows(HH, task="preference", limit=1).rows) == 1  # records after the first are not read


def test_generate_and_best_of_n_on_the_file(tmp_path):
    out = tmp_path / "gen.jsonl"
    assert main(["generate", "tiny-random", "--prompts", HH, *GEN, "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 5
    assert main(["generate", "tiny-random", "--prompts", HH, "--limit", "2", *GEN, "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 2
    bon = tmp_path / "bon.jsonl"
    assert main(["best-of-n", "tiny-random", "--prompts", HH, "--limit", "3", "--on-bad-row", "skip", "--n", "2",
                 "--reward", "format", "--mode", "sft", *GEN, "--out", str(bon)]) == 0
    firsts = [json.loads(line)["messages"][0]["content"] for line in bon.read_text().splitlines()]
    assert firsts == ["What is a good name for a cat?", "Tell me a joke.", "How do I bake bread?"]


def test_explain_with_limit_and_skip(capsys):
    base = ["explain", "tiny-random", "--ref", "tiny-random", "--data", HH]
    assert main([*base, "--limit", "1"]) == 0  # record 0 is good; the bad ones after it are never read
    assert "row 0 rejected" in capsys.readouterr().out
    assert main([*base, "--limit", "3"]) == 2  # records 1 and 2 are bad pairs: explain needs both answers
    err = capsys.readouterr().err
    assert "empty_completion" in err and "prompt_mismatch" in err
    assert main([*base, "--limit", "2", "--on-bad-row", "skip"]) == 0  # records 0 and 3
    out = capsys.readouterr().out
    assert "skipped bad records" in out and "row 1 chosen" in out
    # --limit 0 printed nothing and exited 0; --prompt beside --data was ignored
    for extra in (["--limit", "0"], ["--prompt", "XYZ", "--completion", "QQQ"]):
        assert main([*base, *extra]) == 2
        assert "--limit must be >= 1, and --data goes without --prompt/--completion" in capsys.readouterr().err
