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
