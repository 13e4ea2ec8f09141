"""`alignlab experiment frontier` on tiny-random with a minimal budget: every method kind runs, points.json
holds consistent points, the plot exists, and a second call resumes (nothing re-run, same points)."""

import json
import math

from alignlab.cli import main

ARGS = ["model=tiny-random", "train_prompts=24", "samples_per_prompt=6", "eval_prompts=3", "eval_samples=1",
        "max_new_tokens=8", "steps=2", "eval_every=1", "batch_size=2", "num_generations=2", "beam_width=2",
        "cpu_threads=1", "sweep={dpo: [0.1], grpo: [0.1], best_of_n: [1, 4]}"]


def test_tiny_frontier_runs_every_kind_and_resumes(tmp_path, capsys):
    out = tmp_path / "fr"
    assert main(["experiment", "frontier", f"output_dir={out}", *ARGS]) == 0
    data = json.loads((out / "points.json").read_text())
    assert set(data["runs"]) == {"dpo 0.1", "grpo 0.1", "best_of_n 1", "best_of_n 4"}
    for key in ("dpo 0.1", "grpo 0.1"):
        pts = data["runs"][key]["points"]
        assert [p["step"] for p in pts] == [0, 1, 2]
        assert pts[0]["kl"] == 0.0 and all(p["kl"] >= 0 for p in pts)  # step 0: the untouched adapter
    assert data["runs"]["dpo 0.1"]["beam"]["num_beams"] == 2
    bon = data["runs"]["best_of_n 4"]["points"][0]
    assert bon["kl"] == math.log(4) - 3 / 4
    assert bon["reward"] >= data["runs"]["best_of_n 1"]["points"][0]["reward"]  # best of 4 includes sample 1
    assert data["summary"]["highest"] is not None and (out / "frontier.png").stat().st_size > 1000
    capsys.readouterr()
    assert main(["experiment", "frontier", f"output_dir={out}", *ARGS]) == 0
    assert "0 runs to do, 4 already" in capsys.readouterr().out
    assert json.loads((out / "points.json").read_text())["runs"] == data["runs"]
    # A changed PPO/GRPO learning rate redoes the GRPO run only, under its new settings; a shared key refuses.
    assert main(["experiment", "frontier", f"output_dir={out}", *ARGS, "rl_learning_rate=2e-3"]) == 0
    printed = capsys.readouterr().out
    assert "grpo 0.1 was run with other settings (rl_learning_rate 0.001 -> 0.002): dropped" in printed
    assert "1 runs to do, 3 already" in printed
    again = json.loads((out / "points.json").read_text())["runs"]
    assert {k: again[k] for k in again if k != "grpo 0.1"} == {k: data["runs"][k] for k in again if k != "grpo 0.1"}
    assert again["grpo 0.1"]["settings"]["rl_learning_rate"] == 2e-3
    assert main(["experiment", "frontier", f"output_dir={out}", *ARGS, "seed=1"]) == 2
    assert "seed 0 -> 1" in capsys.readouterr().err
