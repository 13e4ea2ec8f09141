"""alignlab eval samples a checkpoint's answers once per set of prompts, and never reuses them for other prompts."""

import json

import alignlab.rollout.rewards as rewards
from alignlab import evaluate


def test_two_evaluations_of_one_file_with_different_prompt_columns_get_their_own_answers(tmp_path, monkeypatch):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"question": f"Q{i}: say hello", "instruction": f"I{i}: write a poem"}) + "\n"
                            for i in range(3)))
    scored: list[list[tuple]] = []

    def record(prompts, completions, **_):  # what each evaluation's answers were scored against
        scored.append(list(zip(prompts, completions)))
        return [0.0] * len(completions)

    real = rewards.get_reward
    monkeypatch.setattr(rewards, "get_reward", lambda name, **kw: record if name == "record" else real(name, **kw))
    base = {"kind": "mean_reward", "data": str(path), "reward": "record", "data_limit": 3,
            "sampling": {"max_new_tokens": 8, "seed": 0, "temperature": 1.0}}
    evaluate(checkpoints=["tiny-random"], output_dir=str(tmp_path / "out"), report=False, n_boot=10,
             evaluations=[{**base, "name": "q", "columns": "prompt=question"},
                          {**base, "name": "i", "columns": "prompt=instruction"},
                          {**base, "name": "q_again", "columns": "prompt=question"}])

    by_question, by_instruction, again = scored
    assert "Q0" in str(by_question[0][0]) and "I0" in str(by_instruction[0][0])  # chat prompts: message lists
    # the same seed on other prompts gives other answers: a shared cache entry would make them equal
    assert [c for _, c in by_question] != [c for _, c in by_instruction]
    assert again == by_question  # the same prompts: answered once, reused
