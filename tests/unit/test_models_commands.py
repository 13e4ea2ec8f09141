"""`alignlab model info` and `alignlab merge` through the real CLI entry point."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from alignlab.cli import main
from alignlab.models.commands import format_count


def test_format_count():
    assert format_count(134_515_008) == "134.5M"
    assert format_count(106_816) == "106.8K"
    assert format_count(1_235_814_400) == "1.24B"
    assert format_count(999) == "999"


def test_model_info_tiny_json(capsys):
    """tiny-random parameters by hand: embedding 512*64 = 32,768 (tied, counted once); per layer
    q 64*64 = 4,096, k and v 64*32 = 2,048 each (2 KV heads x head dim 16), o 4,096, gate/up/down
    64*128 = 8,192 each, two RMSNorms 2*64 = 128 -> 36,992; final norm 64.
    Total 32,768 + 2*36,992 + 64 = 106,816."""
    assert main(["model", "info", "tiny-random", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == 106_816 and info["parameters_human"] == "106.8K"
    assert info["architecture"] == "LlamaForCausalLM"
    assert (info["dtype"], info["vocab_size"], info["context_length"]) == ("float32", 512, 1024)
    assert info["chat_template"] is True and info["eos_token"] == "<|im_end|>"


def test_model_info_text_and_errors(capsys, tmp_path):
    assert main(["model", "info", "tiny-random"]) == 0
    out = capsys.readouterr().out
    assert "parameters     106.8K (106,816)" in out and "chat template  yes" in out
    assert main(["model", "info", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_model_info_reports_missing_template(tmp_path, capsys):
    from alignlab.models.load import load_model, load_tokenizer

    tok = load_tokenizer("tiny-random")
    tok.chat_template = None
    load_model("tiny-random").save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    assert main(["model", "info", str(tmp_path / "m"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["chat_template"] is False


def test_merge_command(tmp_path, capsys):
    from alignlab.models.load import load_model
    from alignlab.models.lora import LoraConfig, apply_lora

    model = apply_lora(load_model("tiny-random"), LoraConfig(r=2, alpha=4, dropout=0.0)).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.fill_(0.1)
        want = model(torch.tensor([[4, 5, 6]])).logits
    model.save_pretrained(tmp_path / "adapter")
    assert main(["merge", str(tmp_path / "adapter"), str(tmp_path / "out")]) == 0
    assert "merged" in capsys.readouterr().out
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        assert torch.allclose(merged(torch.tensor([[4, 5, 6]])).logits, want, atol=1e-5, rtol=0)
    assert main(["merge", str(tmp_path / "nothing"), str(tmp_path / "out2")]) == 2


def test_merge_command_names_the_scorer_loader(tmp_path, capsys):
    # a reward adapter merges into a sequence classifier: the causal-LM loader named before drops its score head
    from alignlab.models.heads import load_scorer
    from alignlab.models.lora import LoraConfig, apply_lora

    apply_lora(load_scorer("tiny-random"), LoraConfig(r=2, alpha=4, dropout=0.0)).save_pretrained(tmp_path / "rm")
    capsys.readouterr()
    assert main(["merge", str(tmp_path / "rm"), str(tmp_path / "out")]) == 0
    assert "loads with AutoModelForSequenceClassification.from_pretrained" in capsys.readouterr().out


@pytest.mark.slow
def test_model_info_smollm2(capsys):
    """The acceptance check of issue 2: offline, 134.5M parameters (134,515,008 with tied embeddings)."""
    assert main(["model", "info", "smollm2-135m-instruct", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters_human"] == "134.5M" and info["parameters"] == 134_515_008
    assert (info["vocab_size"], info["context_length"], info["layers"], info["hidden_size"]) == (49152, 8192, 30, 576)
    assert info["chat_template"] is True and info["eos_token"] == "<|im_end|>" and info["dtype"] == "float32"


def test_model_info_on_an_adapter_folder_describes_adapter_and_base(tmp_path, capsys):
    """Issue 15 item 8: it used to fail (no config.json in an adapter folder)."""
    from alignlab.models.load import load_model
    from alignlab.models.lora import LoraConfig, apply_lora

    model = apply_lora(load_model("tiny-random"), LoraConfig(r=2, alpha=4, dropout=0.0, target_modules=["q_proj"]))
    model.save_pretrained(tmp_path / "adapter")
    expected = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert main(["model", "info", str(tmp_path / "adapter"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["adapter"] == "lora" and info["r"] == 2 and info["alpha"] == 4 and info["target_modules"] == ["q_proj"]
    assert info["adapter_parameters"] == expected and info["base_model"] == "tiny-random"
    assert info["base"]["model_type"] == "llama" and info["base"]["parameters"] > expected
    assert main(["model", "info", str(tmp_path / "adapter")]) == 0
    out = capsys.readouterr().out
    assert "lora r=2 alpha=4" in out and "base model     tiny-random" in out and "--- base model" in out
