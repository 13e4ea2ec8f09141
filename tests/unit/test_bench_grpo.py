"""bench/grpo_vs_trl.py: its shared reward by hand, and its alignlab worker for one step on tiny-random (no TRL)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH_DIR))  # the script imports its sibling bench/peer.py
    spec = importlib.util.spec_from_file_location("grpo_vs_trl", BENCH_DIR / "grpo_vs_trl.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("peer", None)


def test_distinct_words_by_hand(bench):
    # "a b a" -> 2 distinct of 3; case-folded "Good good" -> 1 of 2; empty -> 0; "x y z" -> 1
    assert bench.distinct_words(["p"] * 4, ["a b a", "Good good", "", "x y z"]) == [2 / 3, 0.5, 0.0, 1.0]


def test_summarize_skips_the_first_step(bench):
    res = {"step_seconds": [10.0, 2.0, 4.0], "step_cpu_seconds": [9.0, 1.0, 2.0], "peak_memory_mb": 123.45, "rewards": [0.5, 0.6, 0.7],
           "step_tokens": [10, 20, 30]}
    s = bench.summarize(res)
    assert s["seconds_per_step"] == 3.0 and s["steps_per_second"] == round(2 / 6, 5)
    assert s["cpu_seconds_per_step"] == 1.5
    assert s["first_step_seconds"] == 10.0 and s["tokens_per_step"] == 20.0 and s["peak_memory_mb"] == 123.5
    assert (s["first_reward"], s["final_reward"]) == (0.5, 0.7)


def test_alignlab_worker_one_step_on_tiny_random(bench, tmp_path):
    args = bench.build_parser().parse_args(["--model", "tiny-random", "--steps", "1", "--prompts", "2",
                                            "--num-generations", "2", "--max-new-tokens", "4", "--threads", "1"])
    spec = bench.make_spec(args, tmp_path)
    assert len(spec["prompts"]) == 2 and all(isinstance(p, str) and p for p in spec["prompts"])
    assert Path(spec["model_dir"]).is_dir()
    threads = torch.get_num_threads()
    try:
        res = bench.alignlab_worker(spec)
    finally:
        torch.set_num_threads(threads)
    assert len(res["step_seconds"]) == 1 and res["step_seconds"][0] > 0
    assert len(res["step_cpu_seconds"]) == 1 and res["step_cpu_seconds"][0] > 0
    assert res["peak_memory_mb"] > 0
    assert len(res["rewards"]) == 1 and 0.0 <= res["rewards"][0] <= 1.0
    # 2 prompts x 2 samples x at most 4 tokens, at least one token each
    assert 4 <= round(res["step_tokens"][0]) <= 16
    assert (tmp_path / "alignlab" / "metrics.jsonl").is_file()
    # generation and training are parts of the step's wall time
    assert 0 < res["generation_seconds"][0] and 0 < res["training_seconds"][0]
    assert res["generation_seconds"][0] + res["training_seconds"][0] <= res["step_seconds"][0]
    s = bench.summarize(res)
    assert s["seconds_per_step"] == round(res["step_seconds"][0], 3)


def test_bf16_sampling_trains_in_float32_and_corrects_the_sampler(bench, tmp_path):
    import yaml

    args = bench.build_parser().parse_args(["--model", "tiny-random", "--steps", "1", "--prompts", "2",
                                            "--num-generations", "2", "--max-new-tokens", "4", "--threads", "1",
                                            "--bf16-sampling"])
    threads = torch.get_num_threads()
    try:
        bench.alignlab_worker(bench.make_spec(args, tmp_path))
    finally:
        torch.set_num_threads(threads)
    cfg = yaml.safe_load((tmp_path / "alignlab" / "config.yaml").read_text())
    assert (cfg["bf16"], cfg["sampling_weights"], cfg["rollout_is"]) == (False, "auto", "tis")
