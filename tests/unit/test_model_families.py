"""Model families whose forward does more than Llama's: the log-probs training uses equal the model's own forward.

Granite divides its logits by `logits_scaling`; Gemma 4 keeps `final_logit_softcapping` in its text config; Mistral,
Gemma 2/3 and Phi-3 have sliding-window layers, which one prefix-shared mask for every layer would drop."""

import pytest
import torch
import transformers as T

from alignlab.data.pairs import PairCollator
from alignlab.errors import AlignlabError
from alignlab.models.attention import pair_layout
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
