"""LoRA wiring: the disabled adapter is exactly the base model; merging reproduces the adapted model."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignlab.config import load_config
from alignlab.errors import AlignlabError
from alignlab.models.load import load_model, load_tokenizer
from alignlab.models.lora import LoraConfig, adapter_disabled, apply_lora, merge_adapter, qlora_available

IDS = torch.tensor([[5, 80, 123, 7, 300, 42, 9, 511]])


def _adapted(cfg: LoraConfig | None = None):
    """tiny-random with LoRA whose B matrices are made non-zero (fresh LoRA has B = 0, i.e. no change)."""
    model = apply_lora(load_model("tiny-random"), cfg or LoraConfig(r=4, alpha=8, dropout=0.0))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return model.eval()


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


def test_only_adapters_train_and_fresh_lora_is_the_base():
    """r=4 on 7 projections x 2 layers: A [4, in] + B [out, 4] per projection = 4*(in+out) parameters.
    q: 4*(64+64)=512, k: 4*(64+32)=384, v: 384, o: 512, gate: 4*(64+128)=768, up: 768, down: 768
    -> 4096 per layer, 8192 in total."""
    base = load_model("tiny-random").eval()
    expected = _logits(base)
    model = apply_lora(load_model("tiny-random"), LoraConfig(r=4, alpha=8, dropout=0.0)).eval()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 8192
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    assert torch.equal(_logits(model), expected)  # B = 0 at initialisation


def test_adapter_disabled_gives_exactly_the_base_logits():
    base_logits = _logits(load_model("tiny-random").eval())
    model = _adapted()
    adapted = _logits(model)
    assert (adapted - base_logits).abs().max() > 1e-3  # the adapter really changes the model
    with adapter_disabled(model) as ref:
        assert ref is model
        assert torch.equal(_logits(model), base_logits)
    assert torch.equal(_logits(model), adapted)  # re-enabled on exit


def test_adapter_disabled_refuses_a_plain_model():
    with pytest.raises(AlignlabError, match="no LoRA adapter"):
        with adapter_disabled(load_model("tiny-random")):
            pass


def test_merge_reproduces_the_adapted_model(tmp_path):
    model = _adapted()
    adapted = _logits(model)
    model.save_pretrained(tmp_path / "adapter")
    meta = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert meta["base_model_name_or_path"] == "tiny-random"  # the alias, not this user's cache path
    out = merge_adapter(tmp_path / "adapter", tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert torch.allclose(_logits(merged), adapted, atol=1e-5, rtol=0)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.encode("hello world") == load_tokenizer("tiny-random").encode("hello world")
    assert tok.chat_template
    with pytest.raises(AlignlabError, match="not empty"):
        merge_adapter(tmp_path / "adapter", tmp_path / "merged")
    with pytest.raises(AlignlabError, match="no adapter_config.json"):
        merge_adapter(tmp_path / "merged", tmp_path / "again")


@pytest.mark.parametrize("target", ["lm_head", "embed_tokens"])
def test_merge_of_an_adapter_on_a_tied_head_or_embedding(tmp_path, target):
    # tiny-random ties lm_head to embed_tokens: folding B A into the one shared tensor changed both ends of the
    # model (merged logits off by 23 and 113), while the adapter had changed one
    from alignlab.train.reference import step_reference

    model = _adapted(LoraConfig(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", target]))
    adapted = _logits(model)
    model.save_pretrained(tmp_path / "adapter", save_embedding_layers=False)
    merged = AutoModelForCausalLM.from_pretrained(merge_adapter(tmp_path / "adapter", tmp_path / "merged")).eval()
    assert not merged.config.tie_word_embeddings
    assert torch.allclose(_logits(merged), adapted, atol=1e-5, rtol=0)
    # the frozen copy a trained in-memory adapter gets as its DPO reference is the same merge
    ref = step_reference("model", model, source=None).model
    assert torch.allclose(_logits(ref.eval()), adapted, atol=1e-5, rtol=0)


def test_adapter_dir_loads_as_peft_model(tmp_path):
    model = _adapted()
    model.save_pretrained(tmp_path / "adapter")
    again = load_model(str(tmp_path / "adapter")).eval()
    assert torch.equal(_logits(again), _logits(model))
    assert load_tokenizer(str(tmp_path / "adapter")).eos_token == "<|im_end|>"


@pytest.mark.parametrize("alpha", [0, -8])
def test_lora_alpha_must_be_positive(alpha):
    # the update is (alpha / r) B A: alpha 0 trained nothing and exited 0, a negative one flipped the update
    with pytest.raises(AlignlabError, match="lora.alpha: must be positive"):
        LoraConfig(alpha=alpha)


def test_target_modules_that_do_not_exist():
    with pytest.raises(AlignlabError, match="linear layers are named .*'q_proj'"):
        apply_lora(load_model("tiny-random"), LoraConfig(target_modules=["c_attn"]))
    # beside a name that matches, a typo (or all-linear) was dropped silently: adapters on q_proj alone
    for targets, bad in ((["q_proj", "v_prj"], "v_prj"), (["all-linear", "lm_head"], "all-linear")):
        with pytest.raises(AlignlabError, match=rf"\['{bad}'\] match no module"):
            apply_lora(load_model("tiny-random"), LoraConfig(target_modules=targets))


def test_all_linear_and_config_from_overrides():
    cfg = load_config(LoraConfig, None, ["r=2", "alpha=4", "target_modules=all-linear"])
    assert (cfg.r, cfg.alpha, cfg.target_modules, cfg.qlora) == (2, 4, ["all-linear"], False)
    model = apply_lora(load_model("tiny-random"), cfg)
    # all-linear = the same 7 projections (peft skips the output head); r=2 halves the r=4 count: 4096
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 8192 // 2
    with pytest.raises(AlignlabError, match="lora.r"):
        LoraConfig(r=0)


@pytest.mark.skipif(qlora_available() is None, reason="CUDA and bitsandbytes present: QLoRA would run")
def test_qlora_refused_without_cuda():
    with pytest.raises(AlignlabError, match="lora.qlora: QLoRA needs"):
        apply_lora(load_model("tiny-random"), LoraConfig(qlora=True))


def test_saved_adapter_records_the_alias_and_loads_under_another_cache(tmp_path, monkeypatch):
    """Issue 15 item 8: the adapter's base_model_name_or_path is what the user gave (the alias), not this
    user's cache path, so the folder loads on a machine whose alias cache lives elsewhere."""
    model = _adapted()
    want = _logits(model)
    model.save_pretrained(tmp_path / "adapter")
    meta = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert meta["base_model_name_or_path"] == "tiny-random"
    monkeypatch.setenv("ALIGNLAB_CACHE", str(tmp_path / "other-cache"))  # another user: the alias is rebuilt here
    loaded = load_model(str(tmp_path / "adapter")).eval()
    torch.testing.assert_close(_logits(loaded), want, atol=1e-5, rtol=0)
    assert str(tmp_path / "other-cache") in loaded.base_model.model.name_or_path


def test_portable_name_keeps_hub_ids_and_own_dirs(tmp_path):
    from alignlab.models.lora import portable_name

    assert portable_name("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert portable_name(str(tmp_path / "my-model")) == str(tmp_path / "my-model")


def test_an_adapter_folder_as_the_starting_model(tmp_path):
    # a LoRA SFT output as `model:` of the next stage (DPO, RM, PPO's critic): get_peft_model reset its adapter
    # (the policy was the bare base) and saved the new one against an empty base; without lora: training
    # stopped at "no trainable parameters"; a scorer from it crashed in peft
    from types import SimpleNamespace

    from alignlab.models.heads import load_scorer
    from alignlab.models.prepare import prepare_model

    model = _adapted()
    model.save_pretrained(tmp_path / "adapter")
    with pytest.raises(AlignlabError, match="already carries a LoRA adapter.*alignlab merge"):
        prepare_model(SimpleNamespace(model=str(tmp_path / "adapter"), chat_template=None,
                                      lora=LoraConfig(r=4, alpha=8)))
    _, full = prepare_model(SimpleNamespace(model=str(tmp_path / "adapter"), chat_template=None, lora=None))
    assert not any("lora" in n for n, _ in full.named_parameters()) and all(p.requires_grad for p in full.parameters())
    assert torch.allclose(_logits(full.eval()), _logits(model), atol=1e-5, rtol=0)  # base + adapter, merged
    # pretrain and rejection sampling loaded it frozen ("the model has no trainable parameters")
    from alignlab.recipes.pretrain import PretrainConfig, prepare

    corpus = tmp_path / "c.txt"
    corpus.write_text("a line of text\n" * 40)
    _, continued, _, _ = prepare(PretrainConfig(model=str(tmp_path / "adapter"), data=str(corpus)))
    assert all(p.requires_grad for p in continued.parameters()) and not hasattr(continued, "peft_config")
    scorer = load_scorer(str(tmp_path / "adapter"))
    merged = model.merge_and_unload()
    for name, p in merged.model.state_dict().items():  # the scorer's backbone is base + adapter
        assert torch.equal(scorer.model.state_dict()[name], p), name
    # an adapter folder without its weights: peft took the path for a hub repo id
    (tmp_path / "adapter" / "adapter_model.safetensors").unlink()
    for load in (load_model, load_scorer, lambda p: merge_adapter(p, tmp_path / "out")):
        with pytest.raises(AlignlabError, match="no adapter weights"):
            load(str(tmp_path / "adapter"))
