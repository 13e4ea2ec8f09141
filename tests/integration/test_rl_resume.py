"""Online RL resumes exactly: grpo, ppo (with its critic) and online-dpo are SIGKILLed mid-run, once inside a
checkpoint write and once at a random moment after a checkpoint, then relaunched with resume=auto; the final
policy (and critic) weights equal an uninterrupted run's to 1e-6, metrics.jsonl holds each step once, and a
changed config refuses to resume.

The child is the real CLI in a subprocess (`alignlab <cmd> ...`) with torch.save wrapped to pause while it
writes optimizer.pt (leaving a marker naming the checkpoint), so the parent can land a kill inside the write.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignlab.cli import main
from alignlab.train.checkpoint import list_checkpoints
from alignlab.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
SRC = str(ROOT / "src")
STEPS = 6

CHILD = textwrap.dedent("""
    import os, sys, time
    import torch
    torch.set_num_threads(1)
    marker, pause = sys.argv[1], float(sys.argv[2])
    real_save = torch.save

    def pausing_save(obj, f, *args, **kwargs):
        if pause and os.path.basename(str(f)) == "optimizer.pt":
            with open(marker, "w") as m:
                m.write(str(f))
            time.sleep(pause)
        real_save(obj, f, *args, **kwargs)

    torch.save = pausing_save
    from alignlab.cli import main
    code = main(sys.argv[3:])
    print("finished", code, flush=True)
""")

RECIPES = {
    "grpo": ["grpo", "--config", str(ROOT / "configs/grpo_sentiment_tiny.yaml"), "eval_steps=2", "eval_prompts=4"],
    "ppo": ["ppo", "--config", str(ROOT / "configs/ppo_sentiment_tiny.yaml"), "eval_prompts=0",
            "adaptive_kl=true", "mini_batch_size=2", "ppo_epochs=2"],
    "online-dpo": ["online-dpo", "--config", str(ROOT / "configs/online_dpo_sentiment_tiny.yaml"), "eval_prompts=0",
                   f"reward={__file__}:length_reward"],
}
# BCO keeps a running reward mean across steps: a resume must restore it (it was not checkpointed: 5.7e-4 apart)
RECIPES["online-dpo-bco"] = [*RECIPES["online-dpo"], "loss=[bco_pair]"]


def length_reward(prompts, completions, **_):
    """Longer completion = higher reward: most groups give online DPO a pair."""
    return [float(len(c)) for c in completions]


def args(recipe: str, out: Path) -> list[str]:
    return [*RECIPES[recipe], f"output_dir={out}", f"max_steps={STEPS}", "save_steps=1", "keep_last=2",
            "progress=plain", "cpu_threads=1"]


def launch(script: Path, recipe: str, out: Path, *, in_write: bool, rng: random.Random) -> None:
    """Start the child and SIGKILL it inside a checkpoint write (in_write) or at a random moment after its
    first new checkpoint; the kill must land before the run ends."""
    marker = out.parent / f"writing-{recipe}"
    marker.unlink(missing_ok=True)
    before = list_checkpoints(out)[-1][0] if list_checkpoints(out) else 0
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(marker), "0.5" if in_write else "0.02",
                             *args(recipe, out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        newest = list_checkpoints(out)[-1][0] if list_checkpoints(out) else 0
        writing = marker.is_file() and f"checkpoint-{newest + 1}" in marker.read_text()
        if in_write and newest > before and writing:
            time.sleep(rng.uniform(0.05, 0.3))  # the writer pauses 0.5 s inside optimizer.pt
            break
        if not in_write and newest > before:
            time.sleep(rng.uniform(0.0, 0.3))
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    output = proc.communicate()[0]
    assert "finished" not in output, f"the kill must land before the run ends:\n{output[-2000:]}"


def weights(out: Path) -> dict[str, torch.Tensor]:
    found = {}
    for name in ("model.safetensors", "adapter_model.safetensors", "critic/model.safetensors"):
        if (out / name).is_file():
            found.update({f"{name}:{k}": v for k, v in load_file(str(out / name)).items()})
    return found


@pytest.mark.parametrize("recipe", ["grpo", "ppo", "online-dpo", "online-dpo-bco"])
def test_sigkill_anywhere_then_resume_equals_uninterrupted(recipe, tmp_path):
    ref = tmp_path / "uninterrupted"
    assert main(args(recipe, ref)) == 0
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    out, rng = tmp_path / "killed", random.Random(recipe)
    launch(script, recipe, out, in_write=True, rng=rng)
    assert list(out.glob(".tmp-checkpoint-*")), "the first kill landed inside a checkpoint write"
    launch(script, recipe, out, in_write=False, rng=rng)
    assert main(args(recipe, out)) == 0
    assert not list(out.glob(".tmp-checkpoint-*"))
    expected, got = weights(ref), weights(out)
    assert expected.keys() == got.keys() and expected
    for k, v in expected.items():
        torch.testing.assert_close(got[k], v, atol=1e-6, rtol=0, msg=k)
    steps = [r["step"] for r in read_metrics(out) if "reward_mean" in r]
    assert steps == list(range(1, STEPS + 1)), steps
    final = [r for r in read_metrics(out) if "reward_mean" in r]
    for a, b in zip(final, [r for r in read_metrics(ref) if "reward_mean" in r]):
        assert a["reward_mean"] == pytest.approx(b["reward_mean"], abs=1e-6)


def test_resume_refuses_a_changed_config(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*args("grpo", out), "max_steps=2"]) == 0
    code = main([*args("grpo", out), "max_steps=3", "learning_rate=0.5"])
    assert code == 2
    err = capsys.readouterr().err
    assert "learning_rate: 0.001 -> 0.5" in err and "resume=never" in err
    assert main([*args("grpo", out), "max_steps=3"]) == 0  # extending the run is allowed
    assert [r["step"] for r in read_metrics(out) if "reward_mean" in r] == [1, 2, 3]


def test_logged_rows_are_window_means_and_resume_mid_window_logs_the_same(tmp_path):
    """logging_steps=3: a row held the logged step's values alone (steps 1, 2, 4, 5 were nowhere on disk). It is
    the mean over the window's steps (TRL's GRPOTrainer.log), and a run stopped after step 2's checkpoint resumes
    with the window's first two steps in it."""
    from alignlab.config import load_config
    from alignlab.recipes.rl import run
    from alignlab.rl.config import PolicyGradientConfig
    from alignlab.train.callbacks import Callback

    class Record(Callback):
        def __init__(self, stop_at=None):
            self.per_step, self.stop_at = [], stop_at

        def on_step_end(self, step, metrics):
            self.per_step.append(dict(metrics))

        def on_save(self, step, path):
            if step == self.stop_at:
                raise KeyboardInterrupt  # killed after checkpoint-2, inside the window

    def cfg(out):
        return load_config(PolicyGradientConfig, ROOT / "configs/grpo_sentiment_tiny.yaml", [
            f"output_dir={out}", "max_steps=6", "logging_steps=3", "save_steps=2", "eval_prompts=0", "progress=none",
            "cpu_threads=1"])

    ref = Record()
    run(cfg(tmp_path / "ref"), callbacks=[ref])
    rows = [r for r in read_metrics(tmp_path / "ref") if "reward_mean" in r]
    assert [r["step"] for r in rows] == [3, 6]
    for row, part in zip(rows, (ref.per_step[:3], ref.per_step[3:])):
        for key in ("reward_mean", "loss", "grad_norm"):
            assert row[key] == pytest.approx(sum(m[key] for m in part) / 3, rel=1e-6), key
    with pytest.raises(KeyboardInterrupt):
        run(cfg(tmp_path / "killed"), callbacks=[Record(stop_at=2)])
    run(cfg(tmp_path / "killed"))
    again = [r for r in read_metrics(tmp_path / "killed") if "reward_mean" in r]
    assert [r["step"] for r in again] == [3, 6]
    for a, b in zip(again, rows):
        assert a["reward_mean"] == pytest.approx(b["reward_mean"], abs=1e-6)
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
