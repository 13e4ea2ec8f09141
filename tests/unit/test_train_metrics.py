"""metrics.jsonl rows, NaN-safe JSON, plain progress lines off a terminal."""

import json

from alignlab.train.metrics import MetricsLogger, peak_memory_mb, read_metrics


def test_rows_final_object_and_plain_progress(tmp_path, capsys):
    log = MetricsLogger(tmp_path, total_steps=4, progress="plain")
    log.log(2, {"loss": 1.5, "tokens_per_second": 100.0, "grad_norm": float("nan")})
    log.log(4, {"loss": 1.25, "tokens_per_second": 120.0})
    log.close({"step": 4, "train_runtime": 3.5})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == read_metrics(tmp_path)
    rows = read_metrics(tmp_path)
    assert rows[0] == {"step": 2, "loss": 1.5, "tokens_per_second": 100.0, "grad_norm": "nan"}
    assert rows[-1] == {"step": 4, "train_runtime": 3.5}
    err = capsys.readouterr().err
    assert "step 2/4  loss 1.5000  100 tok/s" in err and "step 4/4  loss 1.2500  120 tok/s" in err


def test_disabled_logger_writes_nothing(tmp_path):
    log = MetricsLogger(tmp_path, enabled=False)
    log.log(1, {"loss": 1.0})
    log.close({"train_runtime": 1.0})
    assert not (tmp_path / "metrics.jsonl").exists()


def test_peak_memory_is_positive():
    assert peak_memory_mb("cpu") > 10


def test_fresh_run_sets_an_earlier_runs_metrics_aside_and_a_resumed_run_appends(tmp_path):
    for run in (1, 2):
        log = MetricsLogger(tmp_path, progress="none")
        log.log(1, {"loss": float(run)})
        log.close()
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 2.0}]
    assert (tmp_path / "metrics.1.jsonl").read_text().strip() == '{"step": 1, "loss": 1.0}'
    log = MetricsLogger(tmp_path, progress="none", start_step=1)  # resuming: the same run goes on
    log.log(2, {"loss": 3.0})
    log.close()
    assert [r["loss"] for r in read_metrics(tmp_path)] == [2.0, 3.0]


def test_resumed_logger_truncates_rows_after_its_step_and_keeps_them_aside(tmp_path):
    """Issue 15 item 7: a run killed after step 5 resumes from checkpoint 4; rows 5 (and a half-written line)
    leave metrics.jsonl for a side file, so the relaunch's step 5 is the only one."""
    log = MetricsLogger(tmp_path, progress="none")
    for step in (0, 1, 2, 3, 4, 4, 5):
        log.log(step, {"loss": float(step)})
    log.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "lo')  # the kill cut this line
    log = MetricsLogger(tmp_path, progress="none", start_step=4)
    log.log(5, {"loss": 50.0})
    log.close()
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path)] == [
        (0, 0.0), (1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (4, 4.0), (5, 50.0)]
    side = (tmp_path / "metrics.dropped-after-4.jsonl").read_text().splitlines()
    assert json.loads(side[0]) == {"step": 5, "loss": 5.0} and side[1] == '{"step": 6, "lo'
