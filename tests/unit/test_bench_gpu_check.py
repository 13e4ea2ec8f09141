"""bench/gpu_check.py (`make gpu-check`): its figures from a run's metrics by hand, the commands it builds, and one
check end to end as its CPU dry run (the GPU run itself needs a GPU)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def gpu_check(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH_DIR))  # it imports its sibling bench/hardware.py
    spec = importlib.util.spec_from_file_location("gpu_check", BENCH_DIR / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_summarize_by_hand(gpu_check):
    rows = [{"step": 1, "grad_norm": 1.0, "loss": 2.0, "tokens_per_second": 100.0, "peak_memory_mb": 10.0},
            {"step": 2, "grad_norm": 1.0, "loss": 1.5, "tokens_per_second": 300.0, "peak_memory_mb": 12.4},
            {"step": 3, "grad_norm": 1.0, "loss": 1.0, "tokens_per_second": 500.0, "peak_memory_mb": 11.0},
            {"eval_loss": 1.2}]
    # rate over steps 2..3 = 400 tokens/s; MFU = 400 x 6 x N(1000) / 4.8e6 FLOP/s = 0.5
    s = gpu_check.summarize("sft", rows, 12.34, 1000, 4.8e6)
    assert s == {"seconds": 12.3, "steps": 3, "tokens_per_second": 400.0, "mfu": 0.5, "peak_memory_mb": 12,
                 "first_loss": 2.0, "last_loss": 1.0}
    rl = [{"step": 1, "loss": 0.1, "time/training": 1.0, "time/generation": 3.0},
          {"step": 2, "loss": 0.2, "time/training": 2.0, "time/generation": 2.0, "time/scoring": 0.5}]
    assert gpu_check.summarize("grpo", rl, 9.0, 1000, 1e6)["seconds_per_step"] == 4.5


def test_commands_override_the_shipped_configs(gpu_check, tmp_path):
    args = gpu_check.main.__globals__["argparse"].Namespace(device="cuda", bf16=True, steps=6, model="M")
    cmd = gpu_check.command("fsdp-sft", args, tmp_path)
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port"]
    assert "distributed=fsdp" in cmd and "device=cuda" in cmd and "bf16=true" in cmd and "model=M" in cmd
    assert str(gpu_check.CONFIGS / "sft_smollm2.yaml") in cmd
    assert not any(a.startswith("model=") for a in gpu_check.command("pretrain", args, tmp_path))  # from scratch
    for name in gpu_check.CHECKS:
        assert (gpu_check.CONFIGS / gpu_check.CHECKS[name][1]).is_file()


def test_one_check_dry_run_on_cpu(gpu_check, data_dir, tmp_path, capsys):
    assert gpu_check.main(["--device", "cpu", "--model", "tiny-random", "--steps", "2", "--only", "sft",
                           "--no-bf16", "--out", str(tmp_path), "--timeout", "120"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-2].startswith("PASS sft") and "tokens/s" in out[-2]
    last = json.loads(out[-1])
    assert last["passed"] == 1 and last["checks"]["sft"]["steps"] == 2
    with pytest.raises(SystemExit, match="unknown checks"):
        gpu_check.main(["--only", "nope"])
    sys.modules.pop("hardware", None)


def test_bench_figures_by_hand(gpu_check):
    gen = {"ours_tokens_per_s": 900.0, "hf_tokens_per_s": 300.0, "ours_bf16_tokens_per_s": 1200.0,
           "roofline": {"fp32": {"fraction": 0.4, "tokens_per_s": 1}, "bf16": {"fraction": 0.3, "tokens_per_s": 1}}}
    assert gpu_check.bench_figures("gen", gen) == {"tokens_per_second": 900.0, "hf_tokens_per_second": 300.0,
                                                   "bf16_tokens_per_second": 1200.0,
                                                   "roofline": {"fp32": 0.4, "bf16": 0.3}}
    fused = {"liger": True, "ops": {"head": {"plain": {"ms": 2.0, "grad_rel_diff": 0.0}, "liger": {"ms": 1.0}}}}
    assert gpu_check.bench_figures("fused", fused) == {"ms": {"head": {"plain": 2.0, "liger": 1.0}}, "liger": True}


def test_fused_bench_dry_run_on_cpu(capsys):
    """bench/fused_vs_liger.py without a GPU: the plain ops and ours (Liger is Triton), and ours agree with plain."""
    spec = importlib.util.spec_from_file_location("fused_vs_liger", BENCH_DIR / "fused_vs_liger.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.main(["--device", "cpu", "--tokens", "64", "--reps", "1"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == res
    assert not res["liger"] and set(res["ops"]) == {"head", "rmsnorm", "swiglu"}
    for sides in res["ops"].values():
        assert set(sides) == {"plain", "ours"} and all(s["ms"] > 0 for s in sides.values())
        # the same ops in the same order (lean blocks) or the same sums chunk by chunk (the head): plain's error
        assert sides["ours"]["grad_rel_diff"] == pytest.approx(sides["plain"]["grad_rel_diff"], rel=0.05, abs=1e-6)
    assert res["ops"]["rmsnorm"]["ours"]["grad_rel_diff"] == 0.0  # float32 throughout: the same bits
    assert res["ops"]["head"]["ours"]["loss_abs_diff"] < 1e-3  # bf16 logits against float32 ones
