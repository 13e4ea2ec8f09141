"""bench/hardware.py and the FLOP accounting of bench/sft_vs_trl.py and bench/dpo_vs_trl.py, worked out by hand."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"

SMOLLM2 = {"hidden_size": 576, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
           "intermediate_size": 1536, "num_hidden_layers": 30, "vocab_size": 49152, "tie_word_embeddings": True}


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCH_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH_DIR))  # the scripts import their siblings peer.py and hardware.py
    yield _load
    for name in ("peer", "hardware"):
        sys.modules.pop(name, None)


def test_matmul_params_smollm2_by_hand(bench):
    # per layer: q, o 576 x 576 (9 heads x 64) = 2 x 331,776; k, v 576 x 192 (3 kv heads x 64) = 2 x 110,592
    # -> 884,736; MLP 3 x 576 x 1536 = 2,654,208; 30 layers -> 106,168,320; head 49,152 x 576 = 28,311,552
    assert bench("hardware").matmul_params(SMOLLM2) == 134_479_872


def test_matmul_params_counts_every_linear_of_a_real_model(bench):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
                      num_hidden_layers=2, vocab_size=100, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    # by hand: attention 2 x 64 x 64 + 2 x 64 x 32 = 12,288; MLP 3 x 64 x 96 = 18,432; x 2 layers; head 6,400
    assert bench("hardware").matmul_params(cfg) == linear == 2 * (12_288 + 18_432) + 6_400


def test_flops_per_token_and_share(bench):
    hw = bench("hardware")
    assert hw.train_flops_per_token(10, recompute=False) == 60
    assert hw.train_flops_per_token(10, recompute=True) == 80
    assert hw.forward_flops_per_token(10) == 20
    assert hw.share_of_peak(50e9, 200.0) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="positive"):
        hw.share_of_peak(1e9, 0.0)


def test_sft_flops_recompute_or_not(bench):
    """Useful: 6N per real token whatever the checkpointing (model FLOPs, as the DPO bench counts); processed:
    8N per position under full checkpointing (the forward runs twice), 6N without or under selective."""
    sft = bench("sft_vs_trl")
    res = {"tokens": 500, "processed_tokens": 600, "gradient_checkpointing": "on"}
    assert sft.flops(res, 10) == (60 * 500, 80 * 600)
    assert sft.flops({**res, "gradient_checkpointing": "off"}, 10) == (60 * 500, 60 * 600)
    assert sft.flops({**res, "gradient_checkpointing": "selective"}, 10) == (60 * 500, 60 * 600)


def test_dpo_flops_prefix_layout(bench):
    dpo = bench("dpo_vs_trl")
    res = {"pairs": 4, "processed_policy_tokens": 1000, "processed_reference_tokens": 900, "gradient_checkpointing": "off"}
    # useful: (6N + 2N) x 200 layout tokens per pair x 4 pairs; processed: 6N x 1000 + 2N x 900
    assert dpo.flops(res, 10, 200.0) == (80 * 200 * 4, 60 * 1000 + 20 * 900)
    # full checkpointing reruns the policy's forward (8N per policy position); selective reruns no matrix product
    assert dpo.flops({**res, "gradient_checkpointing": "full"}, 10, 200.0) == (80 * 200 * 4, 80 * 1000 + 20 * 900)
    assert dpo.flops({**res, "gradient_checkpointing": "selective"}, 10, 200.0) == dpo.flops(res, 10, 200.0)


def test_both_sides_visit_rows_in_alignlabs_order_and_flops_count_the_timed_ones(bench):
    """peer.alignlab_order is the order alignlab's loop takes (its Sampler, same seed), which the TRL side is given;
    the DPO bench's useful FLOPs average the layout tokens of the pairs in the timed steps, not of all pairs."""
    from alignlab.train.batches import Sampler

    peer, dpo = bench("peer"), bench("dpo_vs_trl")
    order = peer.alignlab_order(8, 42)
    assert order == Sampler(8, 2, 42).step_indices(0) + sum((Sampler(8, 2, 42).step_indices(s) for s in (1, 2, 3)), [])
    layout = [100, 200, 300, 400, 500, 600, 700, 800]
    assert dpo.timed_layout(layout, [7, 6, 0, 1, 2, 3, 4, 5], 2) == (100 + 200 + 300 + 400 + 500 + 600) / 6


def test_dpo_summarize_skips_the_first_step_and_scales_tokens(bench):
    dpo = bench("dpo_vs_trl")
    res = {"step_seconds": [5.0, 1.0, 1.0, 2.0], "peak_memory_mb": 10.0, "losses": [0.7, 0.6, 0.5, 0.4],
           "torch_threads": 1, "embedded_tokens": {"trained": 400, "frozen": 200}, "gradient_checkpointing": "off"}
    out = dpo.summarize(res, 2)
    assert out["pairs"] == 6 and out["pairs_per_second"] == 1.5 and out["seconds"] == 4.0
    assert out["processed_policy_tokens"] == 300 and out["processed_reference_tokens"] == 150


def test_add_flops_takes_shares_of_the_given_peak(bench):
    peer = bench("peer")
    out = peer.add_flops({"seconds": 2.0}, 400e9, 500e9, 1000.0)
    assert out["useful_gflops_per_second"] == 200.0 and out["share_of_peak"] == 0.2
    assert out["processed_share_of_peak"] == 0.25
    only_useful = peer.add_flops({"seconds": 2.0}, 40e9, None, 100.0)
    assert only_useful["share_of_peak"] == 0.2 and "processed_share_of_peak" not in only_useful


def test_grpo_useful_flops_and_the_peak_of_a_mixed_precision_step(bench):
    """10N per token of a step's prompts (once) and answers: sampling 2N, policy 6N, reference 2N (8N without a
    reference). float32 training with bf16 sampling: 2 of every 10 FLOPs at the bf16 peak (1000), 8 at the fp32
    one (100): 1 / (0.2 / 1000 + 0.8 / 100) = 121.95 GFLOP/s; TRL samples in float32: 100."""
    grpo = bench("grpo_vs_trl")
    res = {"timed_steps": 2, "timed_tokens": 100}
    assert grpo.flops(res, 1_000_000, 10.0, 0.04) == (10e6 * 120, None)
    assert grpo.flops(res, 1_000_000, 10.0, 0.0) == (8e6 * 120, None)
    machine = {"peak_matmul": {"bf16_gflops": 1000.0, "fp32_gflops": 100.0}}
    spec = {"bf16": False, "bf16_sampling": True, "beta": 0.04}
    assert grpo.peak_of("alignlab", machine, spec) == pytest.approx(1 / (0.2 / 1000 + 0.8 / 100))
    assert grpo.peak_of("trl", machine, spec) == pytest.approx(100.0)
    assert grpo.peak_of("trl", machine, {**spec, "bf16": True}) == pytest.approx(1000.0)


def test_embedded_tokens_split_by_grad_mode(bench):
    """A forward under grad mode trains (6N), one under no_grad is a reference's (2N), whatever the embedding's
    requires_grad (TRL's reference copy keeps requires_grad; a LoRA policy's embedding is frozen)."""
    peer = bench("peer")
    emb, frozen_emb = torch.nn.Embedding(10, 4), torch.nn.Embedding(10, 4).requires_grad_(False)
    counts, handle = peer.count_embedded_tokens()
    try:
        emb(torch.zeros(2, 3, dtype=torch.long))
        frozen_emb(torch.zeros(7, dtype=torch.long))  # a LoRA policy's forward: trained
        with torch.no_grad():
            emb(torch.zeros(4, dtype=torch.long))
        with torch.inference_mode():
            frozen_emb(torch.zeros(5, dtype=torch.long))
        torch.nn.Linear(4, 4)(torch.zeros(1, 4))  # not an embedding: not counted
    finally:
        handle.remove()
    emb(torch.zeros(5, dtype=torch.long))  # after remove(): not counted
    assert counts == {"trained": 13, "frozen": 9}


def test_matmul_peak_reports_both_dtypes(bench):
    hw = bench("hardware")
    cfg = {"hidden_size": 32, "intermediate_size": 64}
    out = hw.matmul_peak(cfg, threads=1, tokens=16, seconds=0.02, repeats=2)
    assert out["shapes"] == [[16, 32, 64], [16, 64, 32]] and out["torch_threads"] == 1
    assert out["bf16_gflops"] >= out["bf16_gflops_median"] > 0 and out["fp32_gflops"] >= out["fp32_gflops_median"] > 0
    assert isinstance(hw.cpu_model(), str) and hw.cpu_model()
