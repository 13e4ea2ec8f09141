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


def test_a_stop_string_with_special_tokens_inside_it_is_found():
    # the checker decoded the last len(stop bytes) + 4 tokens, but special tokens decode to nothing: with five of
    # them between "a" and "b", stop "ab" was missed and the row ran on to EOS with "abcd" as its text
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from alignlab.rollout.generate import SamplingConfig, generate, stop_tail

    tok = char_tokenizer()
    specials = [f"<sp{i}>" for i in range(5)]
    tok.add_special_tokens({"additional_special_tokens": specials})
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # a bigram chain: x -> a -> <sp0..4> -> b -> c -> d -> eos
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.copy_(torch.eye(len(tok), 128))
        model.lm_head.weight.zero_()
        chain = tok.convert_tokens_to_ids(["x", "a", *specials, "b", "c", "d"]) + [2]
        for cur, nxt in zip(chain, chain[1:]):
            model.lm_head.weight[nxt, cur] = 10.0
    (s,) = generate(model, tok, ["x"], SamplingConfig(greedy=True, max_new_tokens=12, stop=["ab"])).samples
    assert (s.finish_reason, s.text, len(s.completion_ids)) == ("stop", "", 7)
    assert stop_tail([9] * 3 + [100] * 20, ["ab"], {100}) == [9] * 3 + [100] * 20  # special ids counted past
    assert stop_tail(list(range(20)), ["ab"]) == list(range(14, 20))
