"""Callbacks: events in order, a callback that stops the run at step 3, sinks as callbacks, report_to."""

import importlib.machinery
import importlib.util
import sys
import types

import pytest
from test_train_loop import cfg_for, counting_data, tiny_llama

from alignlab.config import ConfigError, from_dict
from alignlab.data.collate import Collator
from alignlab.train import TrainConfig, train
from alignlab.train.callbacks import Callback, CallbackList
from alignlab.train.metrics import read_metrics
from alignlab.train.steps import causal_lm_step


class StopAt3(Callback):
    """Records every event; asks to stop after optimizer step 3."""

    def __init__(self):
        self.events = []

    def on_train_begin(self, run_dir, total_steps, start_step):
        self.events.append(("begin", total_steps, start_step))

    def on_log(self, step, metrics):
        self.events.append(("log", step, round(metrics["loss"], 6)))

    def on_eval(self, step, metrics):
        self.events.append(("eval", step))

    def on_save(self, step, path):
        self.events.append(("save", step, path.name))

    def on_step_end(self, step, metrics):
        assert set(metrics) == {"grad_norm", "learning_rate"}
        self.events.append(("step", step))
        return step == 3

    def on_train_end(self, step, final):
        self.events.append(("end", step, final))


def run_toy(tmp_path, callbacks=(), **kw):
    data = counting_data()
    collate = Collator(0, packing=False)

    def eval_fn(model):
        from alignlab.train import evaluate

        return evaluate(model, causal_lm_step, data[:8], collate, batch_size=4, device="cpu")

    cfg = cfg_for(tmp_path, logging_steps=2, save_steps=2, **kw)
    return train(cfg, tiny_llama(), causal_lm_step, data, collate, eval_fn=eval_fn, callbacks=callbacks)


def test_a_callback_stops_the_run_at_step_3_with_log_eval_and_final_save(tmp_path):
    cb = StopAt3()
    result = run_toy(tmp_path, [cb])
    assert (result.step, result.total_steps) == (3, 6)
    kinds = [(e[0], e[1]) for e in cb.events]
    assert kinds == [("begin", 6), ("eval", 0), ("step", 1), ("step", 2), ("log", 2), ("save", 2),
                     ("step", 3), ("log", 3), ("eval", 3), ("save", 3), ("end", 3)]
    assert cb.events[0] == ("begin", 6, 0) and ("save", 2, "checkpoint-2") in cb.events
    assert cb.events[-2] == ("save", 3, tmp_path.name) and cb.events[-1][2]["step"] == 3
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows if "loss" in r] == [2, 3]  # the stopping step was logged
    assert [r["step"] for r in rows if "eval_loss" in r] == [0, 3]
    assert rows[-1]["step"] == 3 and "train_runtime" in rows[-1]
    logged = {(r["step"], round(r["loss"], 6)) for r in rows if "loss" in r}
    assert logged == {(e[1], e[2]) for e in cb.events if e[0] == "log"}
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "report.html").is_file()
    assert "data:image/png;base64," in (tmp_path / "report.html").read_text()


def test_callback_list_asks_everyone_and_stops_if_any_asks():
    seen = []

    class Vote(Callback):
        def __init__(self, answer):
            self.answer = answer

        def on_step_end(self, step, metrics):
            seen.append(self.answer)
            return self.answer

    assert CallbackList([Vote(True), Vote(None)]).on_step_end(1, {}) is True
    assert seen == [True, None]
    assert CallbackList([Vote(False)]).on_step_end(1, {}) is False
    with pytest.raises(TypeError, match="not an alignlab"):
        CallbackList([object()])


def test_report_to_unknown_or_uninstalled_tracker_fails_when_the_config_is_read(monkeypatch):
    with pytest.raises(ConfigError, match="unknown tracker 'comet'"):
        from_dict(TrainConfig, {"report_to": ["comet"]})
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match="needs the `wandb` package.*pip install wandb"):
        from_dict(TrainConfig, {"report_to": ["wandb"]})
    assert from_dict(TrainConfig, {}).report_to == []


def fake_module(name, **attrs):
    """Stands in for the third-party tracker package (not installed here); records the calls alignlab makes."""
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
    mod.calls = []
    for attr in attrs.get("functions", ()):
        setattr(mod, attr, lambda *a, _n=attr, **k: mod.calls.append((_n, a, k)))
    return mod


def test_wandb_tracker_is_offline_and_gets_every_row(tmp_path, monkeypatch):
    wandb = fake_module("wandb")

    class Run:
        def log(self, metrics, step):
            wandb.calls.append(("log", step, metrics))

        def finish(self, exit_code):
            wandb.calls.append(("finish", exit_code))

    wandb.init = lambda **k: wandb.calls.append(("init", k)) or Run()
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run_toy(tmp_path, report_to=["wandb"], max_steps=4)
    init = wandb.calls[0]
    assert init[0] == "init" and init[1]["mode"] == "offline" and init[1]["config"]["report_to"] == ["wandb"]
    logged = [(c[1], sorted(c[2])[:1]) for c in wandb.calls if c[0] == "log"]
    assert [s for s, _ in logged] == [0, 2, 4, 4]  # eval 0, logs 2 and 4, eval 4
    assert wandb.calls[-1] == ("finish", 0)


def test_mlflow_tracker_uses_a_local_file_store(tmp_path, monkeypatch):
    mlflow = fake_module("mlflow", functions=("set_tracking_uri", "set_experiment", "start_run", "log_params",
                                              "log_metrics", "end_run"))
    monkeypatch.setitem(sys.modules, "mlflow", mlflow)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_toy(tmp_path, report_to=["mlflow"], max_steps=2)
    names = [c[0] for c in mlflow.calls]
    assert names[:4] == ["set_tracking_uri", "set_experiment", "start_run", "log_params"]
    assert mlflow.calls[0][1][0] == (tmp_path / "mlruns").resolve().as_uri()
    assert mlflow.calls[3][1][0]["lora"] == "None" and names.count("log_metrics") == 3
    assert mlflow.calls[-1] == ("end_run", (), {"status": "FINISHED"})


def test_tensorboard_tracker_writes_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    run_toy(tmp_path, report_to=["tensorboard"], max_steps=2)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_tensorboard_holds_each_step_once_after_a_resume(tmp_path):
    # steps redone after the checkpoint were written twice (metrics.jsonl drops its rows past the checkpoint)
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    class DieAt4(Callback):
        def on_step_end(self, step, metrics):
            if step == 4:
                raise KeyboardInterrupt  # logged 1..3, checkpoint at 2

    data, collate = counting_data(), Collator(0, packing=False)
    for callbacks in ([DieAt4()], []):
        cfg = cfg_for(tmp_path, logging_steps=1, save_steps=2, max_steps=5, report_to=["tensorboard"])
        try:
            train(cfg, tiny_llama(), causal_lm_step, data, collate, callbacks=callbacks)
        except KeyboardInterrupt:
            pass
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3, 4, 5]


def test_a_run_ended_by_an_error_still_sends_train_end_once(tmp_path):
    # only a non-finite loss sent it: a data or reward error left progress bars running and trackers' runs open
    class Fails(Callback):
        def __init__(self):
            self.events = []

        def on_step_end(self, step, metrics):
            if step == 3:
                raise RuntimeError("a bad batch")

        def on_train_end(self, step, final):
            self.events.append((step, final))

    cb = Fails()
    with pytest.raises(RuntimeError, match="a bad batch"):
        run_toy(tmp_path, [cb])
    assert cb.events == [(3, None)]  # step 3 had updated the weights


def test_no_tracker_means_no_tensorboard_folder(tmp_path):
    run_toy(tmp_path, max_steps=2)
    assert not (tmp_path / "tensorboard").exists() and (tmp_path / "metrics.jsonl").is_file()


def test_a_resumed_runs_summary_counts_the_steps_its_seconds_cover():
    # dpo's pairs_per_second divided every step of the run by the resumed call's seconds (16.3 against 7.5)
    from alignlab.recipes.dpo import _summary
    from alignlab.train.dpo import DPOConfig
    from alignlab.train.loop import TrainResult

    fresh, resumed = TrainResult(8, 8, 4.0), TrainResult(8, 8, 2.0, start_step=4)
    assert (fresh.done_line(), resumed.done_line()) == ("8 steps in 4.0s", "4 of 8 steps in 2.0s")
    cfg = DPOConfig(batch_size=4)
    assert _summary(fresh, cfg)["pairs_per_second"] == _summary(resumed, cfg)["pairs_per_second"] == 8.0
