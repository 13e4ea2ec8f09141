"""`alignlab medusa` then `alignlab generate --speculative medusa=DIR` end to end on tiny-random."""

import json

import pytest

from alignlab.cli import main


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    words = ("movie", "river", "green", "seven", "table", "music", "storm", "lemon")
    path.write_text("".join(json.dumps({"prompt": f"{a} {b}"}) + "\n" for a in words for b in words[:3]))
    return path


def test_medusa_trains_heads_and_speculative_generate_matches_greedy(tmp_path, prompts_file, capsys):
    out = tmp_path / "heads"
    code = main(["medusa", "tiny-random", f"data={prompts_file}", f"output_dir={out}", "max_steps=6",
                 "batch_size=4", "learning_rate=1e-2", "num_heads=2", "distill_max_new_tokens=12",
                 "eval_split=0.2", "cpu_threads=1", "logging_steps=2", "progress=none", "device=cpu"])
    assert code == 0
    meta = json.loads((out / "medusa_config.json").read_text())
    assert meta["num_heads"] == 2 and meta["base_model"] == "tiny-random"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_loss" in r]
    assert evals and "eval_head2_accuracy" in evals[-1]
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]  # the heads learned something about the base
    capsys.readouterr()
    greedy = ["generate", "tiny-random", "--prompts", str(prompts_file), "--limit", "3", "--greedy",
              "--max-new-tokens", "10"]
    assert main(greedy + ["--out", str(tmp_path / "plain.jsonl")]) == 0
    assert main(greedy + ["--out", str(tmp_path / "spec.jsonl"), "--speculative", f"medusa={out}"]) == 0
    assert "mean accepted length" in capsys.readouterr().err
    plain, spec = ((tmp_path / f).read_text().splitlines() for f in ("plain.jsonl", "spec.jsonl"))
    assert [json.loads(x)["completion"] for x in spec] == [json.loads(x)["completion"] for x in plain]
    # a tree from each head's top 2, and the chain: both plain greedy's completions
    for tree in (["--tree-top-k", "2", "--tree-nodes", "5"], ["--tree-top-k", "1"]):
        assert main(greedy + ["--out", str(tmp_path / "tree.jsonl"), "--speculative", f"medusa={out}", *tree]) == 0
        tree_out = (tmp_path / "tree.jsonl").read_text().splitlines()
        assert [json.loads(x)["completion"] for x in tree_out] == [json.loads(x)["completion"] for x in plain]
    # sampling (typical acceptance): seeded, so two runs agree
    sampled = [x for x in greedy if x != "--greedy"] + ["--temperature", "0.7", "--seed", "3",
                                                          "--speculative", f"medusa={out}"]
    for name in ("s1.jsonl", "s2.jsonl"):
        assert main(sampled + ["--out", str(tmp_path / name)]) == 0
    assert (tmp_path / "s1.jsonl").read_text() == (tmp_path / "s2.jsonl").read_text()
    assert main(greedy + ["--speculative", "eagle=x"]) == 2
    assert main(greedy + ["--tree-nodes", "4"]) == 2  # a tree flag without --speculative
    assert main(greedy + ["--speculative", f"medusa={out}", "--beams", "2"]) == 2


def test_medusa_writes_its_split_and_refuses_to_resume_a_changed_config(tmp_path, prompts_file, capsys):
    """The held-out prompts are decided by eval_split alone (split.json records them; max_eval_rows only bounds
    scoring) and a rerun with other heads refuses to continue the earlier run (config.yaml was overwritten before
    the resume guard read it, so any change resumed silently)."""
    out = tmp_path / "heads"
    args = ["medusa", "tiny-random", f"data={prompts_file}", f"output_dir={out}", "max_steps=2", "batch_size=4",
            "num_heads=2", "distill_max_new_tokens=6", "eval_split=0.25", "max_eval_rows=2", "cpu_threads=1",
            "progress=none", "device=cpu", "save_steps=1"]
    assert main(args) == 0
    split = json.loads((out / "split.json").read_text())
    held, trained = split["sources"][0]["held_out_records"], split["sources"][0]["train_records"]
    assert len(held) == 6 and len(trained) == 18 and not set(held) & set(trained)  # 24 prompts, 0.25 held out
    assert split["scored_rows"] == 2
    capsys.readouterr()
    assert main([*args[:-1], "num_heads=3", "max_steps=3"]) == 2
    assert "num_heads: 2 -> 3" in capsys.readouterr().err
