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


def test_flags_the_searches_would_ignore_are_refused(capsys):
    # `--search mcts --regex '[0-9]+'` printed unconstrained text, `--beams --stop` was not cut
    base = ["generate", "tiny-random", "--prompt", "Hi", "--raw", "--max-new-tokens", "4"]
    for extra, flag in ((["--search", "mcts", "--ref", "tiny-random", "--regex", "[0-9]+"], "--regex"),
                        (["--beams", "2", "--stop", "oo"], "--stop"),
                        (["--beams", "2", "--temperature", "0.7"], "--temperature"),
                        (["--budget", "12"], "--budget apply to --search only")):
        assert main(base + extra) == 2
        assert flag in capsys.readouterr().err


def test_flags_of_the_other_prompt_source_are_refused(tmp_path, capsys):
    # --raw with --prompts FILE, and --limit/--columns/--data-format/--on-bad-row with inline --prompt, were
    # accepted and ignored (--limit 0 still generated every prompt)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "Hi"}\n')
    base = ["generate", "tiny-random", "--max-new-tokens", "2"]
    for extra, message in ((["--prompts", str(prompts), "--raw"], "--raw apply to --prompt only"),
                           (["--prompt", "Hi", "--limit", "0", "--columns", "prompt=q"],
                            "--limit, --columns apply to --prompts only")):
        assert main(base + extra) == 2
        assert message in capsys.readouterr().err
