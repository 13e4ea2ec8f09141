"""`alignlab generate --search mcts` on tiny-random: the policy against itself has implicit reward 0 everywhere,
the budget holds, and the answers are written like any other generate output."""

import json

from alignlab.cli import main


def test_generate_search_mcts(tmp_path, capsys):
    out = tmp_path / "mcts.jsonl"
    code = main(["generate", "tiny-random", "--prompt", "Hello", "--prompt", "The film was", "--raw",
                 "--search", "mcts", "--ref", "tiny-random", "--budget", "12", "--max-new-tokens", "5",
                 "--out", str(out)])
    assert code == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt_index"] for r in recs] == [0, 1]
    assert all(r["implicit_reward"] == 0.0 and 1 <= r["num_tokens"] <= 5 for r in recs)
    assert "model calls" in capsys.readouterr().err
    assert main(["generate", "tiny-random", "--prompt", "Hi", "--search", "mcts"]) == 2  # no --ref
