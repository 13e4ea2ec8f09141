"""Crash safety: SIGKILL at random points (some inside a checkpoint write), NaN/inf stops, disk full on save.

The kill tests run the shared loop in a child process on a tiny Llama (dropout on, so resuming must restore
the RNG state too) with a checkpoint every 2 steps. The child's `torch.save` is wrapped to pause while it
writes optimizer.pt (and to leave a marker file saying so), so the parent can land a kill inside a
checkpoint write on purpose; other kills land at seeded random times. After every kill the newest complete
checkpoint must load fully (weights, optimizer, RNG); after the last relaunch the final weights must equal
an uninterrupted run's.
"""

from __future__ import annotations

import errno
import json
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
from transformers import LlamaConfig, LlamaForCausalLM

from alignlab.data.collate import Collator
from alignlab.train import TrainConfig, TrainingDiverged, build_optimizer, train
from alignlab.train.batches import Sampler
from alignlab.train.checkpoint import CheckpointError, list_checkpoints, load_checkpoint
from alignlab.train.steps import causal_lm_step

SRC = str(Path(__file__).resolve().parents[2] / "src")
POISON = 61  # token id that only the poisoned row holds (normal rows use ids < 60)

CHILD = textwrap.dedent("""
    import os, sys, time
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {here!r})
    from test_crash_sigkill import tiny_llama, counting_data, config, slow_step
    from alignlab.data.collate import Collator
    from alignlab.train import train

    out, pause, steps = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    marker = os.path.join(os.path.dirname(out), "writing")
    real_save = torch.save

    def pausing_save(obj, f, *args, **kwargs):
        # The model file is already in the temp dir, optimizer.pt is not: a kill now leaves half a checkpoint.
        if pause and os.path.basename(str(f)) == "optimizer.pt":
            with open(marker, "w") as m:
                m.write(str(f))
            time.sleep(pause)
        real_save(obj, f, *args, **kwargs)

    torch.save = pausing_save
    train(config(out, max_steps=steps), tiny_llama(), slow_step, counting_data(), Collator(0, packing=True))
    print("finished", flush=True)
""")


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                        attention_dropout=0.1))


def counting_data(n: int = 40, poison: int | None = None) -> list[dict]:
    """Rows counting up by a per-row stride (ids < 60); row `poison` holds POISON tokens instead."""
    g = torch.Generator().manual_seed(5)
    rows = []
    for i in range(n):
        start, stride = torch.randint(0, 60, (2,), generator=g).tolist()
        length = int(torch.randint(3, 11, (1,), generator=g))
        ids = [POISON] * length if i == poison else [(start + k * (stride % 4 + 1)) % 60 for k in range(length)]
        rows.append({"input_ids": ids, "labels": [-100] + ids[1:]})
    return rows


def config(out, **kw) -> TrainConfig:
    base = dict(output_dir=str(out), max_steps=14, batch_size=4, learning_rate=3e-3, logging_steps=1,
                save_steps=2, keep_last=2, progress="none", device="cpu", warmup_steps=2,
                cpu_threads=1)
    return TrainConfig(**{**base, **kw})


def slow_step(model, batch):
    time.sleep(0.04)  # spreads a step over enough wall time for random kills to land between steps too
    return causal_lm_step(model, batch)


def assert_newest_checkpoint_whole(out: Path) -> int:
    """Every listed checkpoint has all its files; the newest restores weights, optimizer and RNG."""
    found = list_checkpoints(out)
    for step, path in found:
        names = {p.name for p in path.iterdir()}
        assert {"model.safetensors", "optimizer.pt", "rng.pt", "trainer_state.json"} <= names, (path, names)
        assert json.loads((path / "trainer_state.json").read_text())["step"] == step
    if not found:
        return 0
    step, path = found[-1]
    model = tiny_llama()
    opt = build_optimizer(model, config(out))
    assert load_checkpoint(path, model, opt)["step"] == step
    assert all(torch.isfinite(p).all() for p in model.parameters())
    return step


def writing_step(marker: Path) -> int:
    """Step of the checkpoint the child is writing now (0 when none): the marker names its temp dir."""
    try:
        return int(Path(marker.read_text()).parent.name.rsplit("-", 1)[1])
    except (OSError, ValueError, IndexError):
        return 0


def kill_run(out: Path, rng: random.Random, in_write: bool, env: dict, script: Path, steps: int) -> dict:
    """Start the child, SIGKILL it inside a checkpoint write (in_write) or at a random moment; report what happened."""
    marker = out.parent / "writing"
    marker.unlink(missing_ok=True)
    at_launch = list_checkpoints(out)[-1][0] if list_checkpoints(out) else 0
    pause = "0.4" if in_write else "0.05"
    proc = subprocess.Popen([sys.executable, str(script), str(out), pause, str(steps)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        newest = list_checkpoints(out)[-1][0] if list_checkpoints(out) else 0
        if in_write and newest > at_launch and writing_step(marker) > newest:
            time.sleep(rng.uniform(0.0, 0.3))  # the writer pauses 0.4 s: the kill lands inside the write
            break
        if not in_write and newest > at_launch:  # training is running: kill at a random moment from here
            time.sleep(rng.uniform(0.0, 0.4))
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    output = proc.communicate()[0]
    assert "finished" not in output, "the kill must land before the run ends"
    temps = sorted(p.name for p in out.glob(".tmp-checkpoint-*"))
    return {"in_write": in_write, "temps": temps, "newest": assert_newest_checkpoint_whole(out)}


@pytest.mark.parametrize("kills", [pytest.param(3, id="3-kills"),
                                   pytest.param(8, id="8-kills", marks=pytest.mark.slow)])
def test_random_sigkills_then_resume_equal_uninterrupted_run(tmp_path, kills):
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(here=str(Path(__file__).parent)))
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    rng = random.Random(kills)
    steps = 6 * kills + 4  # each launch gets past at least one checkpoint (two for a kill inside a write)
    events = [kill_run(out, rng, in_write=(i % 2 == 0), env=env, script=script, steps=steps) for i in range(kills)]
    in_write = [e for e in events if e["in_write"]]
    # A kill inside a write leaves the temp dir and no new checkpoint-<step> for it (the next start removes it).
    assert all(e["temps"] for e in in_write), events
    assert sum(e["in_write"] for e in events) == (kills + 1) // 2
    newest = [e["newest"] for e in events]
    assert newest == sorted(newest) and newest[-1] < steps, events
    print(f"{kills} SIGKILLs, newest checkpoint after each: {newest}, temp dirs left: {[e['temps'] for e in events]}")

    finished = subprocess.run([sys.executable, str(script), str(out), "0", str(steps)], env=env, capture_output=True,
                              text=True, timeout=300)
    assert finished.returncode == 0 and "finished" in finished.stdout, finished.stdout + finished.stderr
    assert not list(out.glob(".tmp-checkpoint-*"))
    reference = tiny_llama()
    train(config(tmp_path / "uninterrupted", max_steps=steps), reference, causal_lm_step, counting_data(), Collator(0, packing=True))
    resumed = load_file(str(out / "model.safetensors"))
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(resumed[name], value, atol=1e-6, rtol=0, msg=name)


def first_step_with(index: int, cfg: TrainConfig, n: int) -> int:
    """1-based optimizer step whose global batch holds dataset row `index`."""
    sampler = Sampler(n, cfg.batch_size, cfg.seed)
    return next(s + 1 for s in range(cfg.max_steps) if index in sampler.step_indices(s))


def test_inf_loss_stops_naming_step_and_rows_keeping_last_good_checkpoint(tmp_path):
    cfg = config(tmp_path, max_steps=10)
    poison = next(i for i in range(40) if first_step_with(i, cfg, 40) in (5, 6))
    bad_step = first_step_with(poison, cfg, 40)

    def step(model, batch):
        loss, metrics = causal_lm_step(model, batch)
        return (loss * float("inf") if (batch["input_ids"] == POISON).any() else loss), metrics

    with pytest.raises(TrainingDiverged, match=f"loss is inf at step {bad_step} ") as err:
        train(cfg, tiny_llama(), step, counting_data(poison=poison), Collator(0, packing=True))
    assert str(poison) in str(err.value) and "bad_batch.json" in str(err.value)
    bad = json.loads((tmp_path / "bad_batch.json").read_text())
    assert bad["step"] == bad_step and poison in bad["indices"]
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 4]
    assert assert_newest_checkpoint_whole(tmp_path) == 4
    assert not (tmp_path / "model.safetensors").exists(), "a diverged run must not write a final model"


def test_nan_gradient_with_finite_loss_stops_before_the_update(tmp_path):
    """sqrt(x - x) is 0 with an infinite derivative, so the loss stays finite while the gradient is NaN."""
    cfg = config(tmp_path, max_steps=6)

    def step(model, batch):
        loss, metrics = causal_lm_step(model, batch)
        w = next(model.parameters())
        if int(batch["input_ids"].numel()) and model.training and step.calls == 3:
            loss = loss + torch.sqrt(w.sum() - w.sum())
        step.calls += 1
        return loss, metrics

    step.calls = 0
    model = tiny_llama()
    with pytest.raises(TrainingDiverged, match="gradient norm is nan at step 4"):
        train(cfg, model, step, counting_data(), Collator(0, packing=True))
    bad = json.loads((tmp_path / "bad_batch.json").read_text())
    assert bad["step"] == 4 and bad["indices"] == Sampler(40, 4, cfg.seed).step_indices(3)
    assert all(torch.isfinite(p).all() for p in model.parameters()), "the NaN step must not be applied"
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2]


def test_disk_full_while_saving_reports_and_keeps_previous_checkpoint(tmp_path, monkeypatch):
    """ENOSPC from the writer while checkpoint-4 (the last step's) is written: a clear error, checkpoint-2
    intact, no temp dir left; once space is back, resume from checkpoint-2 ends at the uninterrupted weights."""
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if ".tmp-checkpoint-4" in str(f):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    out = tmp_path / "run"
    with pytest.raises(CheckpointError, match="checkpoint-4: No space left on device; earlier checkpoints are kept"):
        train(config(out, max_steps=4), tiny_llama(), causal_lm_step, counting_data(), Collator(0, packing=True))
    assert [s for s, _ in list_checkpoints(out)] == [2]
    assert not list(out.glob(".tmp-checkpoint-*"))
    assert assert_newest_checkpoint_whole(out) == 2

    monkeypatch.setattr(torch, "save", real_save)
    resumed = tiny_llama()
    train(config(out, max_steps=4), resumed, causal_lm_step, counting_data(), Collator(0, packing=True))
    reference = tiny_llama()
    train(config(tmp_path / "ref", max_steps=4), reference, causal_lm_step, counting_data(),
          Collator(0, packing=True))
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, atol=1e-6, rtol=0, msg=name)
