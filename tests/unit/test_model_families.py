"""Model families whose forward does more than Llama's: the log-probs training uses equal the model's own forward.

Granite divides its logits by `logits_scaling`; Gemma 4 keeps `final_logit_softcapping` in its text config; Mistral,
Gemma 2/3 and Phi-3 have sliding-window layers, which one prefix-shared mask for every layer would drop."""

import pytest
import torch
import transformers as T

from alignlab.data.pairs import PairCollator
from alignlab.errors import AlignlabError
from alignlab.models.layouts import pair_layout
from alignlab.ops.logprobs import head_post
from alignlab.train.preference import sequence_logps
from alignlab.train.steps import supports_chunked

PAIR = dict(prompt_ids=[1, 17, 40, 9, 88, 5, 61, 33], chosen_ids=[44, 21, 7, 70, 2], rejected_ids=[90, 3, 15, 2])
SIZES = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def _model(config_cls, **extra):
    torch.manual_seed(0)
    cfg = config_cls(**SIZES, **extra)
    cfg._attn_implementation = "sdpa"
    return T.AutoModelForCausalLM.from_config(cfg).eval()


def _forward_logps(model):
    out = []
    for key in ("chosen_ids", "rejected_ids"):
        ids = torch.tensor([PAIR["prompt_ids"] + PAIR[key]])
        with torch.no_grad():
            lp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None])[:, 0]
        out.append(float(lp[len(PAIR["prompt_ids"]) - 1:].sum()))
    return out


def test_granite_logits_scaling_is_applied_as_its_forward_does():
    # the head's output was used unscaled: [-25.06, -19.62] against the forward's [-24.33, -19.41]
    model = _model(T.GraniteConfig, logits_scaling=8.0)
    assert head_post(model.config) == (None, 8.0, None) and not supports_chunked(model)
    with torch.no_grad():
        got = sequence_logps(model, PairCollator(0, "plain")([PAIR]))[0].tolist()
    assert got == pytest.approx(_forward_logps(model), abs=1e-5)


@pytest.mark.parametrize("family, keys, post", [
    ("HyperCLOVAXConfig", {"logits_scaling": 4.0}, (4.0, None, None)),  # multiplies, where Granite divides
    ("FalconH1Config", {"lm_head_multiplier": 0.25}, (0.25, None, None)),  # was not read at all
])
def test_logit_multipliers_of_other_families(family, keys, post):
    # HyperCLOVAX's logits_scaling was taken as Granite's divisor, Falcon-H1's multiplier ignored: DPO logps off by
    # 2.9 and 0.2 nats, GRPO's by up to 1.7
    config_cls = getattr(T, family, None)
    if config_cls is None:
        pytest.skip(f"transformers has no {family}")
    assert head_post(config_cls(**keys)) == post


def test_head_post_reads_the_text_config_of_a_multimodal_wrapper():
    # Gemma 4's ForConditionalGeneration keeps final_logit_softcapping in text_config only
    class Wrapper:
        def get_text_config(self, decoder=True):
            return T.LlamaConfig(final_logit_softcapping=30.0)

    assert head_post(Wrapper()) == (None, None, 30.0)


def test_sliding_window_models_take_packed_rows_not_the_prefix_mask():
    # one 4D prefix mask for every layer let window-4 layers attend beyond their window (0.7 nats off)
    model = _model(T.MistralConfig, sliding_window=4)
    assert pair_layout("prefix", model) == "packed" and pair_layout("plain", model) == "plain"
    with torch.no_grad():
        got = sequence_logps(model, PairCollator(0, pair_layout("prefix", model))([PAIR]))[0].tolist()
    assert got == pytest.approx(_forward_logps(model), abs=1e-5)
    with pytest.raises(AlignlabError, match="sliding-window"):
        sequence_logps(model, PairCollator(0, "prefix")([PAIR]))
    assert pair_layout("prefix", _model(T.LlamaConfig)) == "prefix"


def test_recurrent_layers_take_one_sequence_a_row_and_gpt_neo_local_layers_are_local():
    # a scan or causal convolution runs through a packed or prefix-shared row from one sequence into the next
    # (LFM2's short convs, Mamba hybrids, Qwen3-Next's linear attention): DPO logps/rejected -97.66 against -97.80
    from alignlab.models.attention import enable_span_attention
    from alignlab.models.layouts import local_attention, recurrent_mixing

    lfm2 = getattr(T, "Lfm2Config", None)
    if lfm2 is None:
        pytest.skip("transformers has no LFM2")
    model = _model(lfm2, layer_types=["conv", "full_attention"])
    assert recurrent_mixing(model) and not enable_span_attention(model)
    assert [pair_layout(p, model) for p in ("prefix", "packed", "plain")] == ["plain"] * 3
    plain = _model(T.LlamaConfig)
    assert not recurrent_mixing(plain) and pair_layout("prefix", plain) == "prefix"
    gpt2 = T.AutoModelForCausalLM.from_config(T.GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=100))
    assert not recurrent_mixing(gpt2)  # GPT-2's Conv1D is a Linear
    # GPT-Neo names its windowed layers "local" in attention_layers: its prefix rows dropped the window
    assert local_attention(T.GPTNeoConfig(attention_types=[[["global", "local"], 1]], num_layers=2, window_size=4))


def test_span_attention_only_where_the_plan_reaches_every_layer():
    # StableLM's decoder layers call attention without the forward's keyword arguments: the plan never arrived, sdpa
    # ran with the planned empty mask, and every packed SFT or prefix DPO batch failed with a shape error
    from alignlab.models.attention import enable_span_attention, uses_spans

    stablelm = _model(T.StableLmConfig)
    assert not enable_span_attention(stablelm) and stablelm.config._attn_implementation == "sdpa"
    llama = _model(T.LlamaConfig)
    assert enable_span_attention(llama) and uses_spans(llama)


def test_a_router_auxiliary_loss_asked_for_is_refused(tmp_path):
    # Qwen3-MoE with output_router_logits and a coefficient: HF's loss adds 0.5 x aux (5.860 against 4.838 here);
    # alignlab's steps read hidden states only and dropped the term silently
    import alignlab
    from alignlab.models.prepare import refuse_untrainable

    moe = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
    refuse_untrainable(_model(T.Qwen3MoeConfig, **moe))  # off by default, as in the released configs
    model = _model(T.Qwen3MoeConfig, **moe, output_router_logits=True, router_aux_loss_coef=0.5)
    with pytest.raises(AlignlabError, match="router's auxiliary loss"):
        refuse_untrainable(model)
    from alignlab.models.load import load_tokenizer

    with pytest.raises(AlignlabError, match="router's auxiliary loss"):
        alignlab.sft(model=model, tokenizer=load_tokenizer("tiny-random"), data=[{"prompt": "a", "completion": "b"}],
                     output_dir=str(tmp_path), max_steps=1, batch_size=1)


def test_a_head_before_the_output_projection_is_refused():
    # ModernBERT's decoder: get_decoder() is its output Linear, behind a prediction head the steps would skip
    from alignlab.models.prepare import refuse_untrainable

    config_cls = getattr(T, "ModernBertDecoderConfig", None)
    if config_cls is None:
        pytest.skip("transformers has no ModernBertDecoder")
    model = T.ModernBertDecoderForCausalLM(config_cls(vocab_size=100, pad_token_id=0, hidden_size=32, intermediate_size=64,
                                                      num_hidden_layers=1, num_attention_heads=4))
    with pytest.raises(AlignlabError, match="prediction head before the output projection"):
        refuse_untrainable(model)
    refuse_untrainable(_model(T.LlamaConfig))


def test_packed_rows_only_where_the_model_keeps_their_sequences_apart():
    # Bloom (ALiBi), MPT and XGLM build their masks without the position ids that split a packed row: each example
    # attended to the one before it (Bloom's held-out loss 10.65 packed against 10.77 padded)
    from alignlab.models.layouts import packs_exactly

    bloom = T.AutoModelForCausalLM.from_config(T.BloomConfig(vocab_size=100, hidden_size=32, n_layer=2, n_head=4))
    assert not packs_exactly(bloom)
    llama = _model(T.LlamaConfig)  # sdpa reads the restarting position ids: the probe finds them apart
    assert llama.config._attn_implementation == "sdpa" and packs_exactly(llama)
