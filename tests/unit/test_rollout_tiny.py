"""A tiny random Llama and a character-level tokenizer with a chat template, built in memory (no files, no
network) for the rollout tests; other test_rollout_* files import `tiny_lm` from here."""

import string

import pytest

CHARS = string.ascii_letters + string.digits + string.punctuation + " \n"
TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def char_tokenizer():
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for c in CHARS:
        vocab[c] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>",
                                  eos_token="</s>", unk_token="<unk>")
    tok.chat_template = TEMPLATE
    return tok


def tiny_lm(seed: int = 0):
    """2-layer Llama, hidden 32, GQA (4 heads, 2 kv heads), random weights from `seed`; vocab = the
    tokenizer's 100 ids, so every sampled id decodes to text."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = char_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    return model, tok


def test_char_tokenizer_round_trips():
    tok = char_tokenizer()
    ids = tok("ab c", add_special_tokens=False).input_ids
    assert len(ids) == 4 and tok.decode(ids) == "ab c"
    assert len(tok) <= 128


@pytest.fixture
def lm():
    return tiny_lm()
