"""bench/serve_batching.py runs end to end on tiny-random and ends with one JSON line of step counts."""

import importlib.util
import json
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[2] / "bench" / "serve_batching.py"


def test_serve_bench_counts_steps_both_ways(capsys):
    spec = importlib.util.spec_from_file_location("serve_batching", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        bench.main(["--model", "tiny-random", "--requests", "3", "--max-tokens", "4"])
    finally:
        torch.set_num_threads(threads)
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["sequential_steps"] == 3 * 3  # alone, a 4-token request takes 3 decode steps after its prefill
    assert 3 <= last["concurrent_steps"] <= 9 and last["threads"] == 1
