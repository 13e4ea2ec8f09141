"""`alignlab experiment rejection-sampling` on tiny-random (R = 2, K = 2): rounds.json, per-round models, plot."""

import json

import pytest

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


def test_rejection_sampling_resumes_a_crashed_experiment_exactly(tmp_path, monkeypatch, capsys):
    """A crash inside round 2's training (after its checkpoint-1): rerunning the same command replays round 1
    from its saved model (AlreadyDone inside), resumes round 2 from its checkpoint, and ends with the rounds and
    adapter of an uninterrupted run; a changed config is refused; a finished experiment says so."""
    import pytest
    import torch
    from safetensors.torch import load_file

    import alignlab.train.steps as steps

    def args(out, *extra):
        return ["experiment", "rejection-sampling", "model=tiny-random", f"output_dir={out}", "prompts=8",
                "eval_split=0.25", "rounds=2", "samples=2", "max_steps=2", "save_steps=1", "batch_size=2",
                "max_new_tokens=6", "cpu_threads=1", "progress=none", "device=cpu", "lora.r=2", *extra]

    assert main(args(tmp_path / "full")) == 0
    real, calls = steps.causal_lm_step, []

    def crashing(model, batch):
        calls.append(1)
        if len(calls) == 4:  # round 2, step 2: round_2/checkpoint-1 is on disk
            raise RuntimeError("simulated crash")
        return real(model, batch)

    monkeypatch.setattr(steps, "causal_lm_step", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(args(tmp_path / "cut"))
    monkeypatch.setattr(steps, "causal_lm_step", real)
    assert (tmp_path / "cut" / "round_2" / "checkpoint-1").is_dir()
    assert main(args(tmp_path / "cut")) == 0
    full, cut = (json.loads((tmp_path / d / "rounds.json").read_text()) for d in ("full", "cut"))
    assert cut == full
    a, b = (load_file(str(tmp_path / d / "round_2" / "adapter_model.safetensors")) for d in ("full", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    capsys.readouterr()
    assert main(args(tmp_path / "cut")) == 0
    assert "finished; nothing to do" in capsys.readouterr().out
    assert main(args(tmp_path / "cut", "samples=3")) == 2
    assert "samples: 2 -> 3" in capsys.readouterr().err


def test_eval_steps_is_refused():
    # accepted and never used: a round's fine-tune has no eval function
    from alignlab.errors import AlignlabError
    from alignlab.recipes.rejection_sampling import RejectionSamplingConfig

    with pytest.raises(AlignlabError, match="eval_steps: rejection-sampling scores its held-out prompts after every round only"):
        RejectionSamplingConfig(eval_steps=2).validate()
