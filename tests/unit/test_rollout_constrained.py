"""Structured generation (rollout/constrained.py, llguidance): every sample of a random tiny model is in the
grammar, and the masks replayed for a trainer give the sampler's own log-probs."""

import json
import re

import pytest
import torch
from test_rollout_tiny import tiny_lm

from alignlab.errors import AlignlabError
from alignlab.rollout.generate import SamplingConfig, generate

pytest.importorskip("llguidance", reason="structured generation needs the optional extra `structured` (llguidance)")

from alignlab.rollout.constrained import advance, allowed_token_mask, grammar_for, new_state, token_masks  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {"score": {"type": "integer", "minimum": 0, "maximum": 99},
                   "label": {"enum": ["pos", "neg"]}, "ok": {"type": "boolean"}},
    "required": ["score", "label", "ok"], "additionalProperties": False,
}


def _valid(obj) -> bool:
    return (isinstance(obj, dict) and set(obj) == {"score", "label", "ok"} and type(obj["score"]) is int
            and 0 <= obj["score"] <= 99 and obj["label"] in ("pos", "neg") and isinstance(obj["ok"], bool))


def test_every_sample_is_schema_valid_json():
    model, tok = tiny_lm()
    for seed in (0, 1):
        res = generate(model, tok, ["Hi", "Rate this:", "x"], SamplingConfig(max_new_tokens=60, json_schema=SCHEMA,
                                                                             seed=seed, batch_size=4), n=6)
        assert len(res.samples) == 18
        for s in res.samples:
            assert s.finish_reason == "eos", s.text
            assert _valid(json.loads(s.text)), s.text
    free = generate(model, tok, ["Hi"], SamplingConfig(max_new_tokens=30, seed=0), n=6).samples
    assert not any(s.text.startswith("{") for s in free)  # the random model alone does not write JSON


def test_regex_and_json_text_schema_and_bad_input():
    model, tok = tiny_lm()
    res = generate(model, tok, ["Hi"], SamplingConfig(max_new_tokens=20, regex=r"[0-9]{3}-[a-z]{2,5}"), n=8)
    assert all(re.fullmatch(r"[0-9]{3}-[a-z]{2,5}", s.text) and s.finish_reason == "eos" for s in res.samples)
    res = generate(model, tok, ["Hi"], SamplingConfig(max_new_tokens=60, json_schema=json.dumps(SCHEMA)), n=2)
    assert all(_valid(json.loads(s.text)) for s in res.samples)
    with pytest.raises(AlignlabError, match="at most one"):
        SamplingConfig(regex="a", json_schema=SCHEMA).validate()
    with pytest.raises(AlignlabError, match="not valid JSON"):
        grammar_for(SamplingConfig(json_schema="{nope"))
    with pytest.raises(AlignlabError, match="does not compile"):
        generate(model, tok, ["Hi"], SamplingConfig(max_new_tokens=4, regex="(unclosed"))


def test_replayed_masks_give_the_samplers_log_probs():
    """A trainer applying token_masks to its logits (at the sampling temperature) computes exactly the
    log-probs the constrained sampler recorded; without the mask they differ (the mask matters)."""
    model, tok = tiny_lm()
    cfg = SamplingConfig(max_new_tokens=60, json_schema=SCHEMA, temperature=0.7, logprobs=True, seed=2)
    res = generate(model, tok, ["Hi", "The quick brown fox"], cfg, n=2)
    grammar, vocab = grammar_for(cfg), model.config.vocab_size
    for s in res.samples:
        masks = token_masks(grammar, tok, vocab, [2], s.completion_ids)
        assert masks.shape == (len(s.completion_ids), vocab)
        with torch.no_grad():
            logits = model(torch.tensor([s.prompt_ids + s.completion_ids])).logits[0, len(s.prompt_ids) - 1:-1]
        idx = torch.tensor(s.completion_ids)[:, None]
        masked = torch.log_softmax((logits / 0.7).masked_fill(~masks, float("-inf")), -1).gather(-1, idx)[:, 0]
        plain = torch.log_softmax(logits / 0.7, -1).gather(-1, idx)[:, 0]
        assert torch.allclose(torch.tensor(s.logprobs), masked, atol=1e-4)
        assert not torch.allclose(torch.tensor(s.logprobs), plain, atol=1e-2)


def test_the_pure_mask_step_reads_the_state_and_advance_moves_it():
    """For {"score": ..} the first token can only be '{', then only '"'; reading the mask twice changes nothing;
    after a complete object only EOS (id 2) is allowed."""
    model, tok = tiny_lm()
    vocab = model.config.vocab_size
    state = new_state(grammar_for(SamplingConfig(json_schema=SCHEMA)), tok, vocab, [2])
    first = allowed_token_mask(state)
    assert first.shape == (vocab,) and torch.equal(first, allowed_token_mask(state))
    assert first.nonzero()[:, 0].tolist() == [tok.convert_tokens_to_ids("{")]
    advance(state, tok.convert_tokens_to_ids("{"))
    assert allowed_token_mask(state).nonzero()[:, 0].tolist() == [tok.convert_tokens_to_ids('"')]
    for ch in '"score": 7, "label": "pos", "ok": true}':
        advance(state, tok.convert_tokens_to_ids(ch))
    assert allowed_token_mask(state).nonzero()[:, 0].tolist() == [2]
    with pytest.raises(AlignlabError, match="outside the grammar"):
        advance(state, tok.convert_tokens_to_ids("x"))
    fresh = new_state(grammar_for(SamplingConfig(json_schema=SCHEMA)), tok, vocab, [2])
    with pytest.raises(AlignlabError, match="outside the grammar"):
        advance(fresh, tok.convert_tokens_to_ids("x"))
