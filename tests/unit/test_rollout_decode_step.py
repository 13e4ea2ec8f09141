"""rollout/decode_step.py: the bf16 sampler's Llama step (prefill and decode) gives the model forward's tokens and
log-probs."""

import copy

import pytest
import torch
from test_rollout_engine import PROMPTS, _eos_mid_way
from test_rollout_tiny import tiny_lm

from alignlab.rollout import decode_step, weights
from alignlab.rollout.generate import SamplingConfig, generate

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="the packed bf16 sampler needs oneDNN")


def test_the_llama_step_samples_the_model_forwards_tokens_and_log_probs(monkeypatch):
    """Ragged prompts, early EOS, continuous batching (rows leave and join, left gaps masked), sampled at
    temperature 1 with n=2 and greedy, a float32 model sampled in bf16 and a bf16 model: the same tokens and log-probs
    bit for bit as decoding through the model's own forward; and the step ran for prefills and decode steps."""
    model, tok = tiny_lm()
    model.config._attn_implementation = "sdpa"
    _eos_mid_way(model, tok)
    bf = copy.deepcopy(model).to(torch.bfloat16)
    cfg = SamplingConfig(max_new_tokens=12, logprobs=True, seed=3, batch_size=4, weights_dtype="bfloat16")
    cases = ((model, cfg, 2), (model, SamplingConfig(greedy=True, max_new_tokens=12, batch_size=3,
                                                     weights_dtype="bfloat16", logprobs=True), 1),
             (bf, SamplingConfig(max_new_tokens=12, logprobs=True, seed=5, batch_size=4, weights_dtype="model"), 2))
    built, calls = decode_step.llama_step, []

    def counting(*args):
        step = built(*args)
        assert step is not None
        return lambda *a: calls.append(a[0].shape) or step(*a)

    monkeypatch.setattr(decode_step, "llama_step", counting)
    runs = [generate(m, tok, PROMPTS, c, n=n).samples for m, c, n in cases]
    assert {shape[1] == 1 for shape in calls} == {True, False}  # decode steps and prefills
    monkeypatch.setattr(decode_step, "llama_step", lambda *a: None)
    plain = [generate(m, tok, PROMPTS, c, n=n).samples for m, c, n in cases]
    for got, want in zip(runs, plain):
        assert [s.completion_ids for s in got] == [s.completion_ids for s in want]
        assert [s.logprobs for s in got] == [s.logprobs for s in want]
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_the_llama_step_declines_what_it_does_not_reproduce():
    """A hooked module, a Linear the sampler did not pack (a LoRA wrapper's), or a model that is not a plain Llama:
    no step (those decode through the model)."""
    model, _ = tiny_lm()
    packed = weights.packed_linears(model, torch.bfloat16, lambda p: p.detach().bfloat16(), 4)

    def step(linears):
        return decode_step.llama_step(model, linears, weights._sdpa_fp32)

    missing = dict(packed)
    missing.pop(model.model.layers[0].mlp.up_proj)
    assert step(missing) is None
    handle = model.model.layers[1].mlp.register_forward_hook(lambda *a: None)
    assert step(packed) is None
    handle.remove()
    model.config.hidden_act = "gelu"
    assert step(packed) is None
    model.config.hidden_act = "silu"
    assert step(packed) is not None
