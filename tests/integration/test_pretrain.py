"""`alignlab pretrain` on tiny shakespeare reaches a pinned validation perplexity, and its output is a plain HF model.

Setting: 0.16M-parameter Llama (hidden 64, 2 layers), byte-level BPE vocab 512, blocks of 64 tokens,
batch 16, 200 steps (205k training tokens), one CPU thread. Measured validation perplexity over the
last 10% of the text: 54.4 / 51.4 / 50.6 for seeds 1 / 2 / 3 (untrained: ~600, uniform over 512 ids
is 512); the bound below leaves ~10% for platform differences. About 8 s of training on 2 cores.
"""

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignlab.cli import main
from alignlab.train.metrics import read_metrics

PPL_BOUND = 60.0
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "pretrain_tiny_shakespeare.yaml"


def test_pretrain_tinyshakespeare_perplexity(data_dir, tmp_path):
    out = tmp_path / "run"
    code = main([
        "pretrain", "--config", str(CONFIG),
        f"data={data_dir / 'tinyshakespeare' / 'input.txt'}", f"output_dir={out}", "seed=1",
        "max_length=64", "max_steps=200", "eval_steps=0", "save_steps=0", "max_eval_rows=32",
        "logging_steps=50", "progress=none", "cpu_threads=1",
    ])
    assert code == 0
    evals = [r for r in read_metrics(out) if "eval_perplexity" in r]
    assert [r["step"] for r in evals] == [0, 200]
    assert evals[0]["eval_perplexity"] > 300  # starts near uniform over 512 ids
    assert evals[-1]["eval_perplexity"] < PPL_BOUND, json.dumps(evals[-1])

    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("ROMEO:", return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        gen = model.generate(ids, max_new_tokens=20, do_sample=False, pad_token_id=tok.pad_token_id)
    text = tok.decode(gen[0, ids.shape[1]:])
    assert len(gen[0]) > ids.shape[1] and text.strip(), text


def test_continued_pretraining_with_lora_trains_adapters_and_record_keys_are_refused(tmp_path, capsys):
    """A corpus has no records: eval_split, eval_data and on_bad_row are unknown keys (they were accepted and
    ignored). lora continues a pretrained model with adapters (a scratch model: an error before training)."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(200)))
    common = ["pretrain", f"data={corpus}", "max_steps=2", "batch_size=2", "max_length=32", "progress=none",
              "cpu_threads=1"]
    for key in ("eval_split=0.5", "eval_data=x.txt", "on_bad_row=skip"):
        assert main([*common, f"output_dir={tmp_path / 'bad'}", key]) != 0
        assert f"unknown key {key.split('=')[0]}" in capsys.readouterr().err
    assert main([*common, f"output_dir={tmp_path / 'scratch'}", "lora.r=2"]) != 0
    assert "a scratch model trains in full" in capsys.readouterr().err
    assert main([*common, f"output_dir={tmp_path / 'sized'}", "model=tiny-random", "vocab_size=5000"]) != 0
    assert "vocab_size: set only for model=scratch" in capsys.readouterr().err
    out = tmp_path / "lora"
    assert main([*common, f"output_dir={out}", "model=tiny-random", "lora.r=2"]) == 0
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()


def test_the_held_out_tail_is_written_down_and_a_resume_refuses_an_edited_corpus(tmp_path, capsys):
    # pretrain wrote no split.json, and resumed on a corpus edited under its checkpoint
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(200)))
    args = ["pretrain", f"data={corpus}", "batch_size=2", "max_length=32", "progress=none", "cpu_threads=1",
            f"output_dir={tmp_path / 'run'}", "save_steps=1"]
    assert main([*args, "max_steps=1"]) == 0
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split["data"] == str(corpus) and split["val_fraction"] == 0.1 and len(split["sha256"]) == 64
    assert split["held_out_chars"] == len(corpus.read_text()) - split["train_chars"] > 0
    corpus.write_text(corpus.read_text().replace("line 3:", "line 3;"))
    assert main([*args, "max_steps=2"]) != 0
    assert "split.sha256 differ" in capsys.readouterr().err
