"""The loop: learning, accumulation equivalence, metrics, exact resume (in-process and SIGKILL), NaN stop."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from alignlab.data.collate import Collator
from alignlab.train import TrainConfig, TrainingDiverged, evaluate, train
from alignlab.train.checkpoint import list_checkpoints
from alignlab.train.metrics import read_metrics
from alignlab.train.steps import causal_lm_step

SRC = str(Path(__file__).resolve().parents[2] / "src")


def tiny_llama(dropout: float = 0.0) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      attention_dropout=dropout)
    return LlamaForCausalLM(cfg)


def counting_data(n: int = 48) -> list[dict]:
    """Sequences that count up by a per-row stride mod 64: learnable, of varying length (3..12)."""
    g = torch.Generator().manual_seed(1)
    rows = []
    for _ in range(n):
        start, stride = torch.randint(0, 64, (2,), generator=g).tolist()
        length = int(torch.randint(3, 13, (1,), generator=g))
        ids = [(start + i * (stride % 5 + 1)) % 64 for i in range(length)]
        rows.append({"input_ids": ids, "labels": [-100] + ids[1:]})
    return rows


def cfg_for(tmp_path, **kw) -> TrainConfig:
    base = dict(output_dir=str(tmp_path), max_steps=6, batch_size=4, learning_rate=3e-3, logging_steps=1,
                progress="none", device="cpu", warmup_steps=1)
    base.update(kw)
    return TrainConfig(**base)


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(a, b, atol=1e-6):
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


def test_loss_falls_and_metrics_are_written(tmp_path):
    data = counting_data()
    collate = Collator(0, packing=True)
    model = tiny_llama()
    evals = lambda m: evaluate(m, causal_lm_step, data[:16], collate, batch_size=8, device="cpu")  # noqa: E731
    res = train(cfg_for(tmp_path, max_steps=30, eval_steps=15), model, causal_lm_step, data, collate,
                eval_fn=evals)
    rows = read_metrics(tmp_path)
    logged = [r for r in rows if "loss" in r]
    assert [r["step"] for r in logged] == list(range(1, 31))
    for key in ("loss", "learning_rate", "grad_norm", "tokens_per_second", "peak_memory_mb", "mean_token_accuracy"):
        assert isinstance(logged[0][key], float), key
    assert logged[-1]["loss"] < logged[0]["loss"] - 0.5
    assert [e["step"] for e in res.evals] == [0, 15, 30]
    assert res.evals[-1]["eval_loss"] < res.evals[0]["eval_loss"] - 0.5
    assert "train_runtime" in rows[-1] and rows[-1]["train_runtime"] > 0
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()


def test_grad_accum_matches_one_big_batch(tmp_path):
    """batch 4 as 1x4 or 2x2 micro-batches (unequal token counts) gives the same weights: the loop
    weighs micro-batches by trained tokens, so both are the mean over all tokens of the step."""
    data = counting_data()
    runs = []
    for accum in (1, 2, 4):
        model = tiny_llama()
        train(cfg_for(tmp_path / str(accum), grad_accum=accum), model, causal_lm_step, data, Collator(0))
        runs.append(weights(model))
    assert_same(runs[0], runs[1], atol=2e-6)
    assert_same(runs[0], runs[2], atol=2e-6)


def test_resume_after_in_process_crash_equals_uninterrupted(tmp_path):
    """Dropout on, so RNG state must be restored too. Crash after step 5 (checkpoint at 4), resume."""
    data = counting_data()
    kw = dict(max_steps=8, save_steps=2, keep_last=2)
    full = tiny_llama(dropout=0.2)
    train(cfg_for(tmp_path / "full", **kw), full, causal_lm_step, data, Collator(0, packing=True))

    crashed = tiny_llama(dropout=0.2)
    res = train(cfg_for(tmp_path / "run", **kw), crashed, causal_lm_step, data, Collator(0, packing=True),
                stop_at=5)
    assert not res.finished and [s for s, _ in list_checkpoints(tmp_path / "run")] == [2, 4]
    resumed = tiny_llama(dropout=0.2)  # a fresh process would build the model from scratch
    train(cfg_for(tmp_path / "run", **kw), resumed, causal_lm_step, data, Collator(0, packing=True))
    assert_same(weights(full), weights(resumed))
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [6, 8]  # keep_last=2


def test_metrics_after_a_resume_equal_an_uninterrupted_runs(tmp_path):
    """logging_steps 4, save_steps 3: the crash comes after step 5, the checkpoint at 3 holds a logging window of
    three steps. The resumed run's rows (the window's mean loss and grad norm, num_tokens) are the same numbers."""
    data = counting_data()
    kw = dict(max_steps=8, logging_steps=4, save_steps=3, grad_accum=2)
    train(cfg_for(tmp_path / "full", **kw), tiny_llama(dropout=0.1), causal_lm_step, data, Collator(0, packing=True))
    train(cfg_for(tmp_path / "run", **kw), tiny_llama(dropout=0.1), causal_lm_step, data, Collator(0, packing=True),
          stop_at=5)
    train(cfg_for(tmp_path / "run", **kw), tiny_llama(dropout=0.1), causal_lm_step, data, Collator(0, packing=True))
    keys = ("step", "loss", "grad_norm", "learning_rate", "num_tokens")
    rows = [[{k: r[k] for k in keys} for r in read_metrics(tmp_path / d) if "loss" in r] for d in ("full", "run")]
    assert [r["step"] for r in rows[0]] == [4, 8]
    assert rows[0] == rows[1]


def test_a_metric_some_micro_batches_leave_out_is_their_mean_not_diluted(tmp_path):
    """KTO reports rewards/rejected only for micro-batches holding undesirable examples. Here the step reports
    `x` = 1 in its second micro-batch only, `y` = 3 in both: logged x is 1 (not 0.5), y 3."""
    calls = []

    def step_fn(model, batch):
        loss, metrics = causal_lm_step(model, batch)
        calls.append(1)
        return loss, {**metrics, "y": 3.0, **({"x": 1.0} if len(calls) == 2 else {})}

    cfg = cfg_for(tmp_path, max_steps=1, batch_size=2, grad_accum=2, logging_steps=1)
    train(cfg, tiny_llama(), step_fn, counting_data(), Collator(0))
    assert len(calls) == 2
    (row,) = [r for r in read_metrics(tmp_path) if "loss" in r]
    assert row["y"] == pytest.approx(3.0) and row["x"] == pytest.approx(1.0)


def test_resume_ignores_half_written_checkpoint(tmp_path):
    data = counting_data()
    train(cfg_for(tmp_path, max_steps=4, save_steps=2), tiny_llama(), causal_lm_step, data, Collator(0),
          stop_at=2)
    (tmp_path / ".tmp-checkpoint-3").mkdir()  # what a kill during a write leaves
    (tmp_path / ".tmp-checkpoint-3" / "model.safetensors").write_bytes(b"truncated")
    (tmp_path / "checkpoint-3").mkdir()  # no trainer_state.json: incomplete, must be ignored
    train(cfg_for(tmp_path, max_steps=4, save_steps=2), tiny_llama(), causal_lm_step, data, Collator(0))
    assert not (tmp_path / ".tmp-checkpoint-3").exists()
    # resumed from checkpoint-2 (not 3, not from scratch): steps 1-2 logged before the "crash", 3-4 after
    assert [r["step"] for r in read_metrics(tmp_path) if "loss" in r] == [1, 2, 3, 4]


def test_nan_loss_stops_with_step_and_keeps_checkpoint(tmp_path):
    data = counting_data()
    calls = {"n": 0}

    def poisoned(model, batch):
        loss, metrics = causal_lm_step(model, batch)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 3 else loss), metrics

    with pytest.raises(TrainingDiverged, match="at step 3"):
        train(cfg_for(tmp_path, save_steps=2), tiny_llama(), poisoned, data, Collator(0))
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2]
    bad = json.loads((tmp_path / "bad_batch.json").read_text())
    assert bad["step"] == 3 and len(bad["indices"]) == 4


def test_each_rank_writes_the_rows_of_its_own_non_finite_loss(tmp_path):
    """Under 2 processes every rank whose loss was NaN wrote its half of the batch to one bad_batch.json, the last
    writer's half winning while the other rank's error named the file for its rows. A loss's rows are its rank's
    (in its own file for rank r > 0); a gradient norm's are the whole step's, written by rank 0 alone."""
    from alignlab.train.loop import _diverged
    from alignlab.train.step import NonFiniteStep

    cfg = cfg_for(tmp_path)
    for rank, rows in ((0, [32, 25]), (1, [10, 21])):
        err = _diverged(cfg, 2, NonFiniteStep("loss", float("nan"), 0), rows, rank)
        name = "bad_batch.json" if rank == 0 else "bad_batch.rank1.json"
        assert name in str(err) and json.loads((tmp_path / name).read_text())["indices"] == rows
    assert json.loads((tmp_path / "bad_batch.rank1.json").read_text())["rank"] == 1
    (tmp_path / "bad_batch.json").unlink()
    err = _diverged(cfg, 2, NonFiniteStep("gradient norm", float("nan"), None), [32, 25, 10, 21], 1)
    assert not (tmp_path / "bad_batch.json").exists()  # rank 0 writes the step's rows, where rank 1 says they are
    assert "bad_batch.json" in str(err) and "rank1" not in str(err)
    _diverged(cfg, 2, NonFiniteStep("gradient norm", float("nan"), None), [32, 25, 10, 21], 0)
    assert json.loads((tmp_path / "bad_batch.json").read_text())["indices"] == [32, 25, 10, 21]


SCRIPT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from test_train_loop import tiny_llama, counting_data, cfg_for, causal_lm_step
    from alignlab.data.collate import Collator
    from alignlab.train import train
    slow = sys.argv[2] == "slow"
    def step(model, batch):
        if slow:
            time.sleep(0.25)  # gives the parent time to kill us between checkpoints
        return causal_lm_step(model, batch)
    model = tiny_llama(dropout=0.2)
    train(cfg_for(sys.argv[1], max_steps=10, save_steps=3), model, step, counting_data(), Collator(0, packing=True))
""")


def test_resume_after_sigkill_equals_uninterrupted(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "PYTHONPATH": SRC}
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(run_dir), "slow"], env=env)
    deadline = time.time() + 60
    while not list_checkpoints(run_dir) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = [s for s, _ in list_checkpoints(run_dir)]
    assert done and done[-1] < 10, "the kill must land mid-run"
    subprocess.run([sys.executable, str(script), str(run_dir), "fast"], env=env, check=True)
    full = tiny_llama(dropout=0.2)
    train(cfg_for(tmp_path / "full", max_steps=10, save_steps=3), full, causal_lm_step, counting_data(),
          Collator(0, packing=True))
    reloaded = LlamaForCausalLM.from_pretrained(run_dir)
    assert_same(weights(full), weights(reloaded))


def test_evaluation_averages_each_metric_over_the_batches_that_report_it():
    # KTO's step leaves logps/chosen out of a batch of undesirable examples only: evaluate divided by every batch's
    # weight, so eval_logps/chosen halved when the eval batch went from 8 to 2 (training's log was already right)
    import torch

    from alignlab.train.loop import evaluate

    data = [{"x": 1.0, "desirable": True}] * 4 + [{"x": 3.0, "desirable": False}] * 4

    def collate(rows):
        return {"x": torch.tensor([r["x"] for r in rows]), "des": torch.tensor([r["desirable"] for r in rows]),
                "num_items": len(rows)}

    def step_fn(model, batch):
        m = {}
        if batch["des"].any():
            m["logps/chosen"] = batch["x"][batch["des"]].mean()
        if (~batch["des"]).any():
            m["logps/rejected"] = batch["x"][~batch["des"]].mean()
        return batch["x"].mean(), m

    for size in (8, 2):
        out = evaluate(torch.nn.Linear(1, 1), step_fn, data, collate, batch_size=size, device="cpu")
        assert out == {"eval_loss": 2.0, "eval_logps/chosen": 1.0, "eval_logps/rejected": 3.0}, size


def test_kto_reward_metrics_are_means_over_their_examples_whatever_the_batches():
    """rewards/chosen was a micro-batch's mean weighed by the micro-batch's pairs: held-out batches with 1, 3 and 2
    desirable examples logged 0.0329 against their examples' mean 0.0172, and a training step split 1 + 2 logged
    0.0055 against -0.0416. Each is now weighed by its count (step.Weighted), in training and in evaluate."""
    from types import SimpleNamespace

    from alignlab.train.preference import UnpairedStep
    from alignlab.train.step import Weighted

    rewards = torch.tensor([0.3, -0.1, 0.2, 0.4, -0.6, 0.1])
    desirable = torch.tensor([True, False, True, True, False, True])
    out = SimpleNamespace(chosen_rewards=rewards[desirable], rejected_rewards=rewards[~desirable],
                          terms={"kl": torch.tensor(0.0)})
    m = UnpairedStep._metrics(out, rewards * 10, desirable)
    assert isinstance(m["rewards/chosen"], Weighted) and m["rewards/chosen"].weight == 4
    assert m["rewards/rejected"].weight == 2 and "rewards/margins" not in m  # the loop's: add_margins

    def step_fn(model, batch):  # each batch's examples: their mean reward, weighed by how many
        ids = batch["ids"]
        return torch.tensor(0.0), {"rewards/chosen": Weighted(rewards[ids].mean(), len(ids))}

    rows = [{"ids": torch.tensor([i])} for i in range(6)]
    collate = lambda rs: {"ids": torch.cat([r["ids"] for r in rs]), "input_ids": torch.zeros(len(rs), 1)}  # noqa: E731
    for batch_size in (1, 4, 6):
        got = evaluate(torch.nn.Linear(1, 1), step_fn, rows, collate, batch_size=batch_size, device="cpu")
        assert got["eval_rewards/chosen"] == pytest.approx(float(rewards.mean()), abs=1e-7), batch_size


def test_a_run_resumed_with_no_step_left_reports_its_last_evaluation(tmp_path):
    """A kill in the final save leaves checkpoint-N = the end: the resumed call runs no step and no evaluation, and
    its result (the recipes' closing summary) had no evaluation: "sft done: 0 of 40 steps; {}"."""
    data = counting_data()
    kw = dict(max_steps=4, save_steps=4, eval_steps=2)
    eval_fn = lambda m: evaluate(m, causal_lm_step, data[:8], Collator(0), batch_size=4, device="cpu")  # noqa: E731
    first = train(cfg_for(tmp_path, **kw), tiny_llama(), causal_lm_step, data, Collator(0), eval_fn=eval_fn)
    (tmp_path / "model.safetensors").unlink()  # as if killed while writing the final model
    again = train(cfg_for(tmp_path, **kw), tiny_llama(), causal_lm_step, data, Collator(0), eval_fn=eval_fn)
    assert again.start_step == 4 and again.evals and again.evals[-1] == first.evals[-1]
