"""`alignlab generate` and `alignlab best-of-n` end to end on tiny-random: the files they write load as the
rows `alignlab sft` / `alignlab dpo` train on, and `alignlab dpo` (when present) accepts the pairs as they are."""

import json
import re

import pytest

from alignlab.cli import build_parser, main


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": [{"role": "user", "content": t}]} for t in ("This movie was", "I hated the", "Best film")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_generate_writes_prompt_completion_rows(tmp_path, capsys):
    from alignlab.data.sources import load_rows

    out = tmp_path / "gen.jsonl"
    code = main(["generate", "tiny-random", "--prompt", "Hello there", "--prompt", "Tell me a story",
                 "--n", "2", "--max-new-tokens", "8", "--seed", "3", "--out", str(out)])
    assert code == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["prompt_index"], r["sample_index"]) for r in recs] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(1 <= r["num_tokens"] <= 8 and r["finish_reason"] in ("eos", "length") for r in recs)
    assert recs[0]["prompt"] == [{"role": "user", "content": "Hello there"}]
    assert "tokens/s" in capsys.readouterr().err
    nonempty = [r for r in recs if r["completion"][0]["content"].strip()]
    rows = load_rows(out, task="sft", on_bad_row="skip").rows
    assert len(rows) == len(nonempty)


def test_best_of_n_pairs_load_as_preference_rows(tmp_path, prompts_file):
    from alignlab.data.sources import load_rows

    out = tmp_path / "pairs.jsonl"
    code = main(["best-of-n", "tiny-random", "--prompts", str(prompts_file), "--reward", "sentiment",
                 "--n", "4", "--max-new-tokens", "24", "--seed", "0", "--out", str(out)])
    assert code == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    loaded = load_rows(out, task="preference")
    assert loaded.format == "preference" and len(loaded.rows) == len(recs) >= 1
    for row, rec in zip(loaded.rows, recs):
        assert row.chat and row.chosen[0]["content"] == rec["chosen"][0]["content"]
        assert rec["score_chosen"] > rec["score_rejected"]
    sft = tmp_path / "sft.jsonl"
    assert main(["best-of-n", "tiny-random", "--prompts", str(prompts_file), "--reward", "sentiment",
                 "--n", "3", "--max-new-tokens", "16", "--mode", "sft", "--keep", "2", "--out", str(sft)]) == 0
    assert len(load_rows(sft, task="sft").rows) == len(sft.read_text().splitlines()) >= 3


def test_best_of_n_gsm8k_reward_reads_reference_answers(tmp_path, data_dir):
    """GSM8K rows carry their reference answer; a tiny random model never matches it, so every reward is 0
    and --min-reward 1 leaves nothing: a clean error (exit 2), not an empty file."""
    out = tmp_path / "gsm.jsonl"
    code = main(["best-of-n", "tiny-random", "--prompts", str(data_dir / "gsm8k" / "test.jsonl"), "--limit", "2",
                 "--reward", "gsm8k", "--n", "2", "--max-new-tokens", "8", "--mode", "sft",
                 "--min-reward", "1", "--out", str(out)])
    assert code == 2 and not out.exists()


def test_n_zero_is_refused_not_replaced(tmp_path, prompts_file, capsys):
    # `args.n or 1` made --n 0 one sample (generate) and four (best-of-n)
    for command in (["generate", "tiny-random", "--prompts", str(prompts_file)],
                    ["best-of-n", "tiny-random", "--prompts", str(prompts_file), "--reward", "sentiment"]):
        assert main([*command, "--n", "0", "--max-new-tokens", "2", "--out", str(tmp_path / "x.jsonl")]) == 2
        assert not (tmp_path / "x.jsonl").exists()
    capsys.readouterr()


def test_bad_reward_is_a_clean_error(tmp_path, prompts_file, capsys):
    code = main(["best-of-n", "tiny-random", "--prompts", str(prompts_file), "--reward", "nosuch.module:fn",
                 "--out", str(tmp_path / "x.jsonl")])
    assert code == 2
    assert "cannot import module 'nosuch.module'" in capsys.readouterr().err


@pytest.mark.parametrize("mode, flags, named", [("preference", ["--keep", "3", "--min-reward", "1"],
                                                  "--keep, --min-reward"), ("sft", ["--min-margin", "1"], "--min-margin")])
def test_best_of_n_refuses_the_other_modes_flags(tmp_path, prompts_file, capsys, mode, flags, named):
    # accepted and ignored: the dataset was byte-identical to one without them
    code = main(["best-of-n", "tiny-random", "--prompts", str(prompts_file), "--reward", "sentiment", "--mode", mode,
                 *flags, "--out", str(tmp_path / "x.jsonl")])
    assert code == 2 and f"{named} do nothing under --mode {mode}" in capsys.readouterr().err


def test_dpo_accepts_best_of_n_pairs_as_they_are(tmp_path, prompts_file):
    """The issue's acceptance: `alignlab best-of-n` output goes into `alignlab dpo` unchanged."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    if "dpo" not in sub.choices:
        pytest.skip("`alignlab dpo` is not registered yet (recipes helper)")
    pairs = tmp_path / "pairs.jsonl"
    assert main(["best-of-n", "tiny-random", "--prompts", str(prompts_file), "--reward", "sentiment",
                 "--n", "6", "--max-new-tokens", "24", "--out", str(pairs)]) == 0
    code = main(["dpo", "model=tiny-random", f"data={pairs}", f"output_dir={tmp_path / 'dpo'}", "max_steps=1",
                 "batch_size=1", "eval_split=0", "save_steps=0", "progress=plain"])
    assert code == 0
    assert (tmp_path / "dpo" / "metrics.jsonl").is_file()


def test_generate_with_one_beam_equals_greedy(tmp_path):
    """`--beams 1` is beam search of width one, which must pick exactly the greedy tokens."""
    outs = {}
    for mode, extra in (("beam", ["--beams", "1"]), ("greedy", ["--greedy"])):
        outs[mode] = tmp_path / f"{mode}.jsonl"
        assert main(["generate", "tiny-random", "--prompt", "Hello there", "--prompt", "Once upon",
                     "--max-new-tokens", "12", "--out", str(outs[mode]), *extra]) == 0
    beam, greedy = ([json.loads(line) for line in p.read_text().splitlines()] for p in outs.values())
    assert [r["completion"] for r in beam] == [r["completion"] for r in greedy]
    assert [r["num_tokens"] for r in beam] == [r["num_tokens"] for r in greedy]
    assert all(r["logp"] < 0 for r in beam)


def test_generate_json_schema_flag_gives_schema_valid_completions(tmp_path, capsys):
    pytest.importorskip("llguidance", reason="--json-schema needs the optional extra `structured` (llguidance)")
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9},
                                               "ok": {"type": "boolean"}},
              "required": ["n", "ok"], "additionalProperties": False}
    schema_file, out = tmp_path / "schema.json", tmp_path / "gen.jsonl"
    schema_file.write_text(json.dumps(schema))
    assert main(["generate", "tiny-random", "--prompt", "Answer in JSON", "--n", "4", "--max-new-tokens", "40",
                 "--json-schema", str(schema_file), "--out", str(out)]) == 0
    for rec in map(json.loads, out.read_text().splitlines()):
        obj = json.loads(rec["completion"][0]["content"])
        assert set(obj) == {"n", "ok"} and 0 <= obj["n"] <= 9 and isinstance(obj["ok"], bool)
    assert main(["generate", "tiny-random", "--prompt", "x", "--raw", "--regex", "[ab]{4}", "--max-new-tokens",
                 "8", "--out", str(out)]) == 0
    assert re.fullmatch("[ab]{4}", json.loads(out.read_text().splitlines()[0])["completion"])
    schema_file.write_text("[1, 2]")
    assert main(["generate", "tiny-random", "--prompt", "x", "--json-schema", str(schema_file)]) != 0
    assert "must hold a JSON object" in capsys.readouterr().err
