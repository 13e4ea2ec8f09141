"""Beam search over a policy's log-probs (rollout/beam.py): one beam is greedy decoding token for token, a
beam as wide as the vocabulary finds the exact best two-token completion, and reported scores are the
completion's true log-likelihood."""

import pytest
import torch
from test_rollout_tiny import tiny_lm

from alignlab.errors import AlignlabError
from alignlab.rollout.beam import BeamConfig, beam_search
from alignlab.rollout.generate import SamplingConfig, generate

PROMPTS = ["Hello there", "The film was", "x", "A longer prompt, with punctuation!"]


def _eos_prone(seed: int):
    """The tiny model with its EOS row scaled up, so greedy decoding sometimes ends with EOS (id 2)."""
    model, tok = tiny_lm(seed)
    with torch.no_grad():
        model.lm_head.weight[2] *= 1.5
    return model, tok


@pytest.mark.parametrize("make", [tiny_lm, _eos_prone])
@pytest.mark.parametrize("seed", [0, 1])
def test_one_beam_equals_greedy_token_for_token(make, seed):
    model, tok = make(seed)
    greedy = generate(model, tok, PROMPTS, SamplingConfig(max_new_tokens=12, greedy=True))
    beams = beam_search(model, tok, PROMPTS, BeamConfig(num_beams=1, max_new_tokens=12))
    for g, b in zip(greedy.samples, beams):
        assert b.completion_ids == g.completion_ids
        assert b.finish_reason == g.finish_reason
        assert b.text == g.text


def test_eos_prone_model_really_finishes_some_greedy_rows_with_eos():
    """Guards the test above: the EOS path of the one-beam rule is exercised, not only 'length'."""
    model, tok = _eos_prone(0)
    beams = beam_search(model, tok, PROMPTS, BeamConfig(num_beams=1, max_new_tokens=12))
    assert {b.finish_reason for b in beams} == {"eos", "length"}


def _brute_force_best(model, prompt_ids: list[int], eos: int) -> tuple[float, list[int]]:
    """max over every completion of at most 2 tokens: [EOS] alone, or [a, b] with a != EOS (any b)."""
    with torch.no_grad():
        first = torch.log_softmax(model(torch.tensor([prompt_ids])).logits[0, -1].double(), -1)
        vocab = first.shape[0]
        firsts = [a for a in range(vocab) if a != eos]
        batch = torch.tensor([prompt_ids + [a] for a in firsts])
        second = torch.log_softmax(model(batch).logits[:, -1].double(), -1)  # [V-1, V]
    total = first[firsts][:, None] + second
    flat = int(total.argmax())
    a, b = firsts[flat // vocab], flat % vocab
    best, seq = float(total.max()), [a, b]
    if float(first[eos]) > best:
        best, seq = float(first[eos]), [eos]
    return best, seq


@pytest.mark.parametrize("make", [tiny_lm, _eos_prone])
def test_vocabulary_wide_beam_finds_the_exact_best_two_token_completion(make):
    model, tok = make(3)
    vocab = model.config.vocab_size
    for prompt in PROMPTS[:2]:
        ids = tok(prompt).input_ids
        best, seq = _brute_force_best(model, ids, eos=2)
        hyp = beam_search(model, tok, [ids], BeamConfig(num_beams=vocab, max_new_tokens=2))[0]
        assert hyp.completion_ids == seq
        assert hyp.logp == pytest.approx(best, abs=1e-6)


def test_reported_logp_is_the_completions_log_likelihood_and_beats_greedy():
    """Sum of the policy's token log-probs recomputed by a plain forward (eval.credit); a 4-beam search on
    this model scores at least as high as greedy on every prompt (true here, not in general)."""
    from alignlab.eval.credit import completion_logps

    model, tok = tiny_lm(5)
    beams = beam_search(model, tok, PROMPTS, BeamConfig(num_beams=4, max_new_tokens=8))
    greedy = beam_search(model, tok, PROMPTS, BeamConfig(num_beams=1, max_new_tokens=8))
    prompts = [tok(p).input_ids for p in PROMPTS]
    lps = completion_logps(model, prompts, [b.completion_ids for b in beams], pad_id=0)
    for b, g, lp in zip(beams, greedy, lps):
        assert b.logp == pytest.approx(sum(lp), abs=1e-4)
        assert b.logp >= g.logp - 1e-9


def test_bad_settings_are_clear_errors():
    model, tok = tiny_lm(0)
    with pytest.raises(AlignlabError, match="num_beams"):
        beam_search(model, tok, ["a"], BeamConfig(num_beams=0))
    with pytest.raises(AlignlabError, match="max_new_tokens"):
        beam_search(model, tok, ["a"], BeamConfig(max_new_tokens=0))


@pytest.mark.parametrize("seed, prompt, max_new", [(2, "x", 6), (3, "The film was", 10)])
def test_live_beams_at_the_length_limit_still_compete_with_finished_ones(seed, prompt, max_new):
    """When the last EOS hypothesis needed to fill the beam arrives on the last step, the beams still running there
    end too ('length') and compete: transformers' beam search (early_stopping=True) keeps them, and here one of
    them ranks above every finished answer (length_penalty 1, a model that ends often)."""
    model, tok = tiny_lm(seed)
    with torch.no_grad():
        model.lm_head.weight[2] *= 2.0
    ids = tok(prompt).input_ids
    hyp = beam_search(model, tok, [ids], BeamConfig(num_beams=2, max_new_tokens=max_new, length_penalty=1.0))[0]
    out = model.generate(torch.tensor([ids]), num_beams=2, do_sample=False, max_new_tokens=max_new,
                         length_penalty=1.0, early_stopping=True, eos_token_id=2, pad_token_id=0)
    assert hyp.completion_ids == out[0, len(ids):].tolist()
    assert hyp.finish_reason == "length"


def test_two_eos_ids_keep_the_beam_full_as_transformers_does():
    # the candidate pool was 2 x beams: with two EOS ids ranking high, fewer than num_beams live continuations
    # survived a step and the search went on narrower than HF's (one search in ~430 differed, this one)
    model, tok = tiny_lm(4)
    model.generation_config.eos_token_id = [2, 7]
    with torch.no_grad():
        model.lm_head.weight.mul_(2.0)
        model.lm_head.weight[2] *= 1.6
        model.lm_head.weight[7] = model.lm_head.weight[2] * 1.02
    ids = tok("The film was").input_ids
    ours = beam_search(model, tok, [ids], BeamConfig(num_beams=3, max_new_tokens=10, length_penalty=3.0))[0]
    out = model.generate(torch.tensor([ids]), num_beams=3, do_sample=False, max_new_tokens=10, length_penalty=3.0,
                         early_stopping=True, eos_token_id=[2, 7], pad_token_id=0)[0, len(ids):].tolist()
    hf = out[:next((i + 1 for i, t in enumerate(out) if t in (2, 7)), len(out))]
    assert ours.completion_ids == hf == [26, 12, 36, 88, 50, 63, 72, 7]
