"""bench/peer.py `compare --rounds`: the order reverses each round and the speedup is the geometric mean of the
rounds' ratios (a steady drift of the machine cancels), by hand with stand-in workers."""

import argparse
import importlib
import json
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


def test_rounds_alternate_and_average_the_ratios(monkeypatch, tmp_path, capsys):
    monkeypatch.syspath_prepend(str(BENCH_DIR))
    peer = importlib.import_module("peer")
    calls = []
    # the machine slows steadily: each run takes 10% longer than the one before; alignlab is 2x faster throughout
    def run_worker(script, python, side, spec, spec_path):
        calls.append(side)
        slow = 1.1 ** (len(calls) - 1)
        return {"rate": (2.0 if side == "alignlab" else 1.0) / slow, "peak_memory_mb": 100.0 if side == "trl" else 80.0}

    monkeypatch.setattr(peer, "run_worker", run_worker)
    monkeypatch.setattr(peer, "ensure_trl_venv", lambda path: "python")
    monkeypatch.setattr(peer, "measure_machine", lambda model_dir, threads: {
        "cpu_model": "cpu", "load_average_1m": 0.0,
        "peak_matmul": {"torch_threads": 1, "bf16_gflops": 1.0, "fp32_gflops": 1.0}})
    args = argparse.Namespace(order="alignlab,trl", trl_venv=str(tmp_path), threads=1, rounds=2, keep=False)
    out = tmp_path / "run"
    out.mkdir()
    peer.compare(Path("x.py"), args, {"model_dir": "m"}, out, lambda r: r, rate="rate",
                 describe=lambda r: f"{r['rate']:.3f}", job={})
    assert calls == ["alignlab", "trl", "trl", "alignlab"]
    assert not out.exists()  # the run folders (a checkpoint per side) are removed unless --keep
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # round ratios 2 x 1.1 = 2.2 and 2 / 1.1 = 1.818 (the slowing machine favours the side run first); their
    # geometric mean is the true 2
    assert line["round_speedups"] == [round(2 * 1.1, 3), round(2 / 1.1, 3)]
    assert line["speedup"] == 2.0 and line["memory_ratio"] == 0.8
    sys.modules.pop("peer", None)
    sys.modules.pop("hardware", None)


def test_logged_steps_turn_cumulative_tokens_into_each_steps_tokens_and_seconds(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCH_DIR))
    peer = importlib.import_module("peer")
    rows = [{"step": 1, "num_tokens": 100, "tokens_per_second": 50.0, "loss": 2.0},
            {"step": 1, "eval_loss": 1.9},  # an eval row: no throughput, skipped
            {"step": 2, "num_tokens": 250, "tokens_per_second": 75.0, "loss": 1.5},
            {"step": 3, "num_tokens": 300, "tokens_per_second": 25.0, "loss": 1.2}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    kept, tokens, seconds = peer.logged_steps(str(tmp_path))
    assert [r["loss"] for r in kept] == [2.0, 1.5, 1.2]
    assert tokens == [100, 150, 50]
    assert seconds == [2.0, 2.0, 2.0]


def test_bf16_if_fast_follows_the_cpus_bf16_units(monkeypatch):
    # the make targets' choice: bf16 on an AVX2-only EPYC ran SmolLM2's products at 2.3 GFLOP/s against 92 in fp32
    monkeypatch.syspath_prepend(str(BENCH_DIR))
    peer = importlib.import_module("peer")
    import alignlab.rollout.weights as weights

    p = argparse.ArgumentParser()
    peer.add_shared_args(p)
    for units in (True, False):
        monkeypatch.setattr(weights, "cpu_has_bf16_units", lambda units=units: units)
        assert p.parse_args(["--bf16-if-fast"]).bf16 is units
    assert p.parse_args(["--bf16-if-fast", "--bf16"]).bf16 is True and p.parse_args([]).bf16 is False
