"""rl/prompts.py: the held-out prompts of an online RL run are never trained on, and eval_data is honoured."""

import json

from alignlab.rl.config import PolicyGradientConfig
from alignlab.rl.prompts import _text, split_prompts


def _write(path, prompts):
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return str(path)


def test_a_repeated_prompt_is_never_both_trained_on_and_held_out(tmp_path):
    # a file repeating a prompt put one copy in training and one in the held-out split (1-2 of 32 on the
    # LLaMA-Factory alpaca demo); now the training copies of a held-out prompt are dropped and counted
    prompts = [f"prompt {i % 10}" for i in range(40)]  # every prompt four times
    cfg = PolicyGradientConfig(data=_write(tmp_path / "p.jsonl", prompts), eval_split=0.25, eval_prompts=32,
                               batch_size=2)
    train, evals, record = split_prompts(cfg)
    assert evals and not {_text(r) for r in train} & {_text(r) for r in evals}
    assert record["train_duplicates_of_held_out"] == 40 - len(evals) - len(train) > 0


def test_eval_data_replaces_a_built_in_sets_own_held_out_prompts(tmp_path):
    # with data=builtin:..., eval_data was silently ignored (the set's tail was scored; split.json named the file)
    cfg = PolicyGradientConfig(data="builtin:add", num_prompts=16, eval_prompts=4, batch_size=2,
                               eval_data=_write(tmp_path / "e.jsonl", ["What is 1000 + 2000?", "What is 5 + 7?"]))
    train, evals, record = split_prompts(cfg)
    assert [r.prompt[-1]["content"] for r in evals] == ["What is 1000 + 2000?", "What is 5 + 7?"]
    assert len(train) == 16 and record["eval_data"].endswith("e.jsonl")


def test_the_split_names_the_files_hash_and_trained_records_and_a_resume_checks_them(tmp_path):
    # an RL split.json held counts only: `alignlab eval` found no trained records (no leak warning) and a resume on
    # an edited prompt file went on silently, unlike sft's
    import pytest

    from alignlab.data.prepare import trained_records, write_split
    from alignlab.errors import CheckpointError

    data = _write(tmp_path / "p.jsonl", [f"prompt {i}" for i in range(12)])
    cfg = PolicyGradientConfig(data=data, eval_split=0.25, eval_prompts=3, batch_size=2)
    train, evals, record = split_prompts(cfg)
    assert sorted(trained_records(record, data) | set(record["eval_indices"])) == list(range(12))
    assert len(trained_records(record, data)) == len(train) == 9
    write_split(tmp_path / "run", record, resuming=False)
    old = {k: v for k, v in record.items() if k != "sources"}  # a split.json written before sources: resumes
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "split.json").write_text(json.dumps(old, indent=1) + "\n")
    write_split(tmp_path / "old", record, resuming=True)
    _write(tmp_path / "p.jsonl", ["edited"] + [f"prompt {i}" for i in range(1, 12)])
    with pytest.raises(CheckpointError, match=r"split.sources\[0\].sha256"):
        write_split(tmp_path / "run", split_prompts(cfg)[2], resuming=True)
    held = PolicyGradientConfig(data=data, eval_data=_write(tmp_path / "e.jsonl", ["held"]), batch_size=2)
    sources = split_prompts(held)[2]["sources"]
    assert [s["data"] for s in sources] == [data, str(tmp_path / "e.jsonl")] and sources[1]["train_records"] == []
