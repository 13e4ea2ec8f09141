"""Fast paths that cannot give the plain path's numbers for a model are not taken for it: span attention (whole
spans) for local attention (sliding windows, attention chunks), the chunked LM head for a LoRA-wrapped lm_head."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

from alignlab.data.collate import pack
from alignlab.models.attention import enable_span_attention, uses_spans
from alignlab.models.layouts import local_attention
from alignlab.train.steps import model_inputs


def test_a_sliding_window_model_keeps_plain_attention_and_its_window():
    """Window 4 over 12 tokens: span attention would let position 11 see position 0. The model stays on sdpa and a
    batch built for it gives the windowed forward's logits."""
    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, sliding_window=4, attn_implementation="sdpa")
    model = MistralForCausalLM(cfg).eval()
    assert local_attention(model.config) and not enable_span_attention(model) and not uses_spans(model)
    ids = torch.randint(0, 100, (1, 12))
    with torch.no_grad():
        windowed = model(input_ids=ids).logits
        via_batch = model(**model_inputs(model, pack([{"input_ids": ids[0].tolist()}]))).logits
    assert torch.allclose(via_batch, windowed, atol=1e-6)


def test_full_attention_models_still_take_span_attention():
    cfg = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg)
    assert not local_attention(model.config) and enable_span_attention(model) and uses_spans(model)


def test_a_lora_lm_head_takes_the_plain_lm_step():
    """peft's LoRA on lm_head keeps the frozen base in .weight: the chunked step (hidden @ W.T) would leave the
    adapter out of the loss and its gradients. The step chosen for such a model is the plain one, and its loss is
    the adapter model's."""
    import pytest

    peft = pytest.importorskip("peft")
    from alignlab.train.lm import lm_step_for
    from alignlab.train.steps import causal_lm_step, supports_chunked

    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False))
    assert supports_chunked(base) and lm_step_for(base, True, 16) is not causal_lm_step
    lora = peft.get_peft_model(base, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "lm_head"]))
    assert not supports_chunked(lora) and lm_step_for(lora, True, 16) is causal_lm_step
