"""`alignlab sft` end to end: completion-only / assistant-only labels, packing, eval, LoRA + merge.

Fast tests use the `tiny-random` model (2-layer Llama, 512-token BPE); the slow one fine-tunes
SmolLM2-135M-Instruct with LoRA for 30 steps as issue 3 asks.
"""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignlab.cli import main
from alignlab.config import load_config
from alignlab.models.load import load_tokenizer
from alignlab.recipes.sft import SFTConfig, load_sft_rows, tokenize_rows
from alignlab.train.metrics import read_metrics

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
FAST = ["progress=none", "cpu_threads=1", "max_length=256", "logging_steps=1", "max_eval_rows=16"]


def sft(*args: str) -> int:
    return main(["sft", *args])


def trained_text(tok, example) -> str:
    return tok.decode([t for t, lab in zip(example.input_ids, example.labels) if lab != -100])


def test_alpaca_labels_cover_only_the_output(data_dir):
    """Completion-only: the trained tokens of an Alpaca row decode to its `output` (plus the end-of-turn)."""
    tok = load_tokenizer("tiny-random")
    path = data_dir / "llamafactory_demo" / "alpaca_en_demo.json"
    cfg = SFTConfig(data=str(path))
    rows = load_sft_rows(str(path), cfg)[:5]
    records = json.loads(path.read_text())[:5]
    for ex, rec in zip(tokenize_rows(rows, tok, 2048, "alpaca"), records):
        text = trained_text(tok, ex)
        assert text.startswith(rec["output"].strip()[:40]), text[:80]
        assert rec["instruction"][:30] not in text


def test_sharegpt_multiturn_trains_assistant_turns_only(tmp_path):
    path = tmp_path / "chat.json"
    conv = [{"conversations": [
        {"from": "human", "value": "Name a colour."}, {"from": "gpt", "value": "Blue."},
        {"from": "human", "value": "Another one?"}, {"from": "gpt", "value": "Green."}]}] * 4
    path.write_text(json.dumps(conv))
    tok = load_tokenizer("tiny-random")
    rows = load_sft_rows(str(path), SFTConfig(data=str(path)))
    text = trained_text(tok, tokenize_rows(rows, tok, 512, "chat")[0])
    assert "Blue." in text and "Green." in text
    assert "colour" not in text and "Another" not in text


def test_sft_tiny_lowers_eval_loss_and_packing_matches_padding(data_dir, tmp_path):
    data = data_dir / "llamafactory_demo" / "alpaca_en_demo.json"
    losses = {}
    for packing in ("true", "false"):
        out = tmp_path / packing
        assert sft("model=tiny-random", f"data={data}", f"output_dir={out}", "max_steps=12", "batch_size=8",
                   "learning_rate=2e-3", "eval_steps=0", f"packing={packing}", *FAST) == 0
        rows = read_metrics(out)
        evals = [r for r in rows if "eval_loss" in r]
        assert [r["step"] for r in evals] == [0, 12]
        assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] - 0.2
        assert abs(evals[-1]["eval_perplexity"] - torch.tensor(evals[-1]["eval_loss"]).exp().item()) < 1e-3
        losses[packing] = [r["loss"] for r in rows if "loss" in r]
        assert rows[-1]["train_runtime"] > 0
    # Same rows, same order, same loss: packing only removes the padding.
    assert losses["true"] == pytest.approx(losses["false"], abs=2e-4)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "true")
    assert model.config.num_hidden_layers == 2


def test_sft_lora_then_merge_generates(data_dir, tmp_path):
    data = data_dir / "llamafactory_demo" / "alpaca_en_demo.json"
    out, merged = tmp_path / "lora", tmp_path / "merged"
    assert sft("model=tiny-random", f"data={data}", f"output_dir={out}", "max_steps=4", "batch_size=4",
               "learning_rate=1e-3", "lora.r=4", "save_steps=2", *FAST) == 0
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    assert (out / "checkpoint-4" / "adapter_model.safetensors").is_file()
    assert main(["merge", str(out), str(merged)]) == 0
    # the run's split goes with the merged weights (eval warns on trained-on rows), from a checkpoint's run too
    assert (merged / "split.json").read_bytes() == (out / "split.json").read_bytes()
    assert main(["merge", str(out / "checkpoint-4"), str(tmp_path / "merged4")]) == 0
    assert (tmp_path / "merged4" / "split.json").read_bytes() == (out / "split.json").read_bytes()
    model = AutoModelForCausalLM.from_pretrained(merged)
    tok = AutoTokenizer.from_pretrained(merged)
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    gen = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert gen.shape[1] == ids.shape[1] + 5 or gen[0, -1].item() == tok.eos_token_id


@pytest.mark.slow
def test_sft_smollm2_lora_30_steps_lowers_eval_loss_and_merges(data_dir, tmp_path):
    """Issue 3 acceptance: LoRA on alpaca_en_demo, 30 steps (configs/sft_smollm2_lora.yaml).

    Batch 4 x 256 tokens and 20 eval rows keep it to ~20 min on a shared 2-core CPU (the config's
    batch 8 x 512 is for a machine of one's own). Measured (2026-11-24, shared 2-core CPU, 1 thread):
    eval loss 1.580 -> 1.510 (perplexity 4.85 -> 4.53) in 1068 s of training; the merged model
    answers "1. Stay hydrated: Drink at least 8 glasses of water per day to stay healthy."
    """
    out, merged = tmp_path / "lora", tmp_path / "merged"
    cfg = load_config(SFTConfig, CONFIGS / "sft_smollm2_lora.yaml")
    assert cfg.max_steps == 30 and cfg.lora is not None
    code = sft("--config", str(CONFIGS / "sft_smollm2_lora.yaml"),
               f"data={data_dir / 'llamafactory_demo' / 'alpaca_en_demo.json'}", f"output_dir={out}",
               "progress=plain", "save_steps=0", "eval_steps=0", "batch_size=4", "max_length=256",
               "max_eval_rows=20", "cpu_threads=1")
    assert code == 0
    evals = [r for r in read_metrics(out) if "eval_loss" in r]
    print("evals:", evals)
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] - 0.02
    assert main(["merge", str(out), str(merged)]) == 0
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(merged)
    ids = tok.apply_chat_template([{"role": "user", "content": "Give three tips for staying healthy."}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    gen = model.generate(ids, max_new_tokens=30, do_sample=False)
    answer = tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
    print("answer:", answer)
    assert len(answer.split()) >= 5
