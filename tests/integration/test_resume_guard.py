"""Issue 15 items 1 and 7: an output_dir's earlier run is resumed only when it is the same experiment.

On the tiny DPO config through the CLI: a finished run rerun unchanged says so and exits 0 without training or
rewriting anything (today it "resumed" at step N/N and printed pairs_per_second 77559461); a changed loss or
learning rate stops with the differing keys and the two ways on; resume=never keeps the earlier run under a
suffix; extending max_steps resumes. With a real SIGKILL: the resumed run's metrics.jsonl has each step once.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from alignlab.cli import main
from alignlab.train.checkpoint import list_checkpoints
from alignlab.train.metrics import read_metrics

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SRC = str(Path(__file__).resolve().parents[2] / "src")
FAST = ["progress=none", "cpu_threads=1", "max_length=128", "logging_steps=1", "max_eval_rows=4",
        "max_steps=2", "save_steps=2"]


def dpo(data_dir, out, *extra):
    data = data_dir / "llamafactory_demo" / "dpo_en_demo.json"
    return main(["dpo", "--config", str(CONFIGS / "dpo_tiny.yaml"), f"data={data}", f"output_dir={out}", *FAST, *extra])


def snapshot(out: Path) -> dict[str, float]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


def test_finished_run_rerun_unchanged_says_so_and_rewrites_nothing(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert dpo(data_dir, out) == 0
    before = snapshot(out)
    capsys.readouterr()
    assert dpo(data_dir, out) == 0
    said = capsys.readouterr().out
    assert "finished at step 2/2; nothing to do (raise max_steps or epochs to train on" in said  # it has checkpoints
    assert "pairs_per_second" not in said and "resuming" not in said
    assert snapshot(out) == before  # no file written, moved or touched


def test_finished_run_killed_while_writing_its_report_gets_it_on_the_rerun(data_dir, tmp_path, capsys):
    # the closing metrics row comes before report.html: a run killed while plotting was finished without a report,
    # and every rerun stopped at "nothing to do"
    out = tmp_path / "run"
    assert dpo(data_dir, out) == 0
    (out / "report.html").unlink()
    metrics = (out / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    assert dpo(data_dir, out) == 0
    said = capsys.readouterr().out
    assert "finished at step 2/2; nothing to do" in said and "(it was missing)" in said
    assert "<html" in (out / "report.html").read_text(encoding="utf-8").lower()
    assert (out / "metrics.jsonl").read_bytes() == metrics


def test_finished_run_is_recognised_before_the_model_loads(data_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert dpo(data_dir, out) == 0

    def no_load(*args, **kwargs):
        raise AssertionError("a finished run must be recognised before any model is loaded")

    monkeypatch.setattr("alignlab.models.load.load_model", no_load)
    monkeypatch.setattr("alignlab.models.load.load_tokenizer", no_load)
    capsys.readouterr()
    assert dpo(data_dir, out) == 0
    assert "finished at step 2/2; nothing to do" in capsys.readouterr().out


def test_changed_config_refuses_with_differing_keys_and_ways_on(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert dpo(data_dir, out) == 0
    before = snapshot(out)
    capsys.readouterr()
    assert dpo(data_dir, out, "loss=[ipo]", "learning_rate=5e-3", "max_steps=4") == 2
    err = capsys.readouterr().err.partition("alignlab dpo: error:")[2]
    assert "loss: ['dpo'] -> ['ipo']" in err and "learning_rate: 0.0001 -> 0.005" in err
    assert "max_steps" not in err  # extending the run is allowed
    assert "new output_dir" in err and "resume=never" in err
    assert snapshot(out) == before


def test_resume_never_keeps_the_earlier_run_under_a_suffix(data_dir, tmp_path):
    out = tmp_path / "run"
    assert dpo(data_dir, out) == 0
    old_weights = (out / "model.safetensors").read_bytes()
    assert dpo(data_dir, out, "loss=[ipo]", "resume=never") == 0
    kept = tmp_path / "run.1"
    assert (kept / "model.safetensors").read_bytes() == old_weights
    assert "- dpo" in (kept / "config.yaml").read_text() and "- ipo" in (out / "config.yaml").read_text()
    assert [r["step"] for r in read_metrics(out) if "grad_norm" in r] == [1, 2]


def test_extending_max_steps_resumes_and_logs_each_step_once(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert dpo(data_dir, out) == 0
    assert dpo(data_dir, out, "max_steps=4", "logging_steps=2") == 0
    assert "resuming from" in capsys.readouterr().out
    steps = [r["step"] for r in read_metrics(out)]
    assert steps == [0, 1, 2, 2, 4, 4, 4]  # eval 0, train 1, 2, eval 2, train 4, eval 4, closing row 4
    assert [s for s, _ in list_checkpoints(out)] == [2, 4]


def test_metrics_after_a_sigkill_and_resume_hold_each_step_once(tmp_path):
    """Kill -9 after the run has logged steps past its newest checkpoint; the relaunch redoes them."""
    from test_crash_sigkill import CHILD

    script = tmp_path / "child.py"
    script.write_text(CHILD.format(here=str(Path(__file__).parent)))
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(script), str(out), "0", "12"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    logged = []
    while proc.poll() is None and time.time() < deadline:
        ckpts = list_checkpoints(out)
        if ckpts and (out / "metrics.jsonl").is_file():
            logged = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()
                      if x.endswith("}")]
            if logged and logged[-1] > ckpts[-1][0]:
                break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert "finished" not in proc.communicate()[0]
    resume_at = list_checkpoints(out)[-1][0]
    tail = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines() if x.endswith("}")]
    assert max(tail) > resume_at  # the kill left rows the relaunch will redo

    done = subprocess.run([sys.executable, str(script), str(out), "0", "12"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and "finished" in done.stdout, done.stdout + done.stderr
    steps = [r["step"] for r in read_metrics(out) if "loss" in r]
    assert steps == list(range(1, 13))
    side = out / f"metrics.dropped-after-{resume_at}.jsonl"
    assert [json.loads(x)["step"] for x in side.read_text().splitlines()] == [s for s in tail if s > resume_at]


def test_a_finished_run_without_checkpoints_is_not_told_to_raise_max_steps(data_dir, tmp_path, capsys):
    # "raise max_steps or epochs to train on" was then refused: "no checkpoint to continue from"
    out = tmp_path / "run"
    assert dpo(data_dir, out, "save_steps=0") == 0
    capsys.readouterr()
    assert dpo(data_dir, out, "save_steps=0") == 0
    said = capsys.readouterr().out
    assert "nothing to do (resume=never to start over, or a new output_dir)" in said
