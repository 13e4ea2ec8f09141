"""`alignlab experiment rejection-sampling` on tiny-random (R = 2, K = 2): rounds.json, per-round models, plot."""

import json

from alignlab.cli import main


def test_rejection_sampling_rounds(tmp_path):
    out = tmp_path / "rs"
    code = main(["experiment", "rejection-sampling", "model=tiny-random", f"output_dir={out}", "prompts=8",
                 "eval_split=0.25", "rounds=2", "samples=2", "max_steps=1", "batch_size=2", "max_new_tokens=6",
                 "cpu_threads=1", "progress=none", "device=cpu"])
    assert code == 0
    rounds = json.loads((out / "rounds.json").read_text())
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert rounds[0]["kl_k1"] == 0.0 and rounds[0]["kl_k3"] == 0.0  # the base against itself
    assert rounds[2]["pool_reward_mean"] >= rounds[1]["pool_reward_mean"]  # the pool only ever improves
    assert all(r["pool_size"] <= 6 for r in rounds[1:])
    assert (out / "rounds.png").stat().st_size > 0
    assert all((out / f"round_{r}" / "model.safetensors").exists() for r in (1, 2))
