"""rollout.generate: our KV-cache loop against transformers' own `generate`, and the sampling rules."""

import math

import pytest
import torch
from test_rollout_tiny import tiny_lm

from alignlab.errors import AlignlabError
from alignlab.rollout.encode import encode_prompt
from alignlab.rollout.generate import SamplingConfig, generate, sample_next

PROMPTS = ["Hi", "The quick brown fox", "a=1;", "Once upon a time, in a land far away"]


def hf_greedy(model, tok, prompts, max_new):
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    out = model.generate(**enc, do_sample=False, max_new_tokens=max_new, pad_token_id=tok.pad_token_id)
    new = out[:, enc.input_ids.shape[1]:].tolist()
    eos = set(model.generation_config.eos_token_id if isinstance(model.generation_config.eos_token_id, list)
              else [model.generation_config.eos_token_id])
    cut = []
    for row in new:  # HF pads finished rows; keep up to and including the first EOS
        end = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        cut.append(row[:end])
    return cut


def test_greedy_equals_hf_generate_token_for_token():
    model, tok = tiny_lm()
    res = generate(model, tok, PROMPTS, SamplingConfig(greedy=True, max_new_tokens=12))
    assert [s.completion_ids for s in res.samples] == hf_greedy(model, tok, PROMPTS, 12)
    assert all(s.finish_reason == "length" for s in res.samples)
    assert res.num_tokens == 4 * 12 and res.tokens_per_second > 0


def test_eos_stops_one_row_while_others_continue():
    """Make a token that row 1 greedily emits at step 4 an EOS: row 1 must end there (5 tokens, EOS
    included, reason 'eos'), rows without that token run to max_new_tokens, all equal to HF's output."""
    model, tok = tiny_lm()
    base = generate(model, tok, PROMPTS, SamplingConfig(greedy=True, max_new_tokens=12)).samples
    stop_tok = base[1].completion_ids[4]
    model.generation_config.eos_token_id = [2, stop_tok]
    res = generate(model, tok, PROMPTS, SamplingConfig(greedy=True, max_new_tokens=12)).samples
    expected = hf_greedy(model, tok, PROMPTS, 12)
    assert [s.completion_ids for s in res] == expected
    first = base[1].completion_ids.index(stop_tok)
    assert len(res[1].completion_ids) == first + 1 and res[1].finish_reason == "eos"
    assert any(s.finish_reason == "length" and len(s.completion_ids) == 12 for s in res)


def test_sampling_reproducible_under_seed_and_independent_of_global_rng():
    model, tok = tiny_lm()
    cfg = SamplingConfig(max_new_tokens=10, seed=7)
    a = generate(model, tok, PROMPTS, cfg, n=3)
    torch.manual_seed(123)
    torch.rand(5)
    b = generate(model, tok, PROMPTS, cfg, n=3)
    c = generate(model, tok, PROMPTS, SamplingConfig(max_new_tokens=10, seed=8), n=3)
    ids = lambda r: [s.completion_ids for s in r.samples]  # noqa: E731
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)
    assert len(a.samples) == 12 and [s.prompt_index for s in a.samples[:4]] == [0, 0, 0, 1]
    assert len(set(map(tuple, ids(a)[:3]))) > 1  # the 3 samples of one prompt differ


def test_top_k_1_equals_greedy_and_n_samples_share_the_prefill():
    model, tok = tiny_lm()
    greedy = generate(model, tok, PROMPTS, SamplingConfig(greedy=True, max_new_tokens=8))
    topk1 = generate(model, tok, PROMPTS, SamplingConfig(top_k=1, temperature=0.7, max_new_tokens=8), n=2)
    g = [s.completion_ids for s in greedy.samples]
    assert [s.completion_ids for s in topk1.samples] == [x for x in g for _ in range(2)]


def test_small_batches_and_unsorted_prompts_give_the_same_greedy_output():
    model, tok = tiny_lm()
    a = generate(model, tok, PROMPTS, SamplingConfig(greedy=True, max_new_tokens=8))
    b = generate(model, tok, PROMPTS, SamplingConfig(greedy=True, max_new_tokens=8, batch_size=1,
                                                     sort_by_length=False))
    assert [s.completion_ids for s in a.samples] == [s.completion_ids for s in b.samples]


def test_stop_string_cuts_text_before_it():
    model, tok = tiny_lm()
    base = generate(model, tok, PROMPTS, SamplingConfig(greedy=True, max_new_tokens=16)).samples
    text = base[3].text  # char tokenizer: one token per character
    stop = text[5:7]
    at = text.find(stop)
    res = generate(model, tok, PROMPTS, SamplingConfig(greedy=True, max_new_tokens=16, stop=[stop])).samples
    assert res[3].finish_reason == "stop"
    assert res[3].text == text[:at]
    assert res[3].completion_ids == base[3].completion_ids[:at + len(stop)]
    for b, r in zip(base, res):  # other rows: cut where the stop string first appears, or untouched
        cut = b.text.find(stop)
        assert r.text == (b.text[:cut] if cut >= 0 else b.text)


def test_logprobs_match_a_full_forward_at_the_temperature():
    model, tok = tiny_lm()
    res = generate(model, tok, PROMPTS[:2], SamplingConfig(max_new_tokens=6, temperature=0.8, top_k=20,
                                                           logprobs=True, seed=3))
    for s in res.samples:
        ids = torch.tensor([s.prompt_ids + s.completion_ids])
        with torch.no_grad():
            logits = model(ids).logits[0, len(s.prompt_ids) - 1:-1] / 0.8
        want = torch.log_softmax(logits, -1).gather(-1, torch.tensor(s.completion_ids)[:, None])[:, 0]
        assert torch.allclose(torch.tensor(s.logprobs), want, atol=1e-4)


def test_sample_next_top_p_and_top_k_keep_the_right_tokens():
    """p = [.5, .3, .15, .05]; top_p=0.7 keeps tokens 0 and 1 (mass before token 2 is .8 >= .7), renormalised
    to [.625, .375]; top_k=2 keeps the same two. 4000 draws: frequencies within 0.03 of these."""
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(4000, 1)
    gen = torch.Generator().manual_seed(0)
    for cfg in (SamplingConfig(top_p=0.7), SamplingConfig(top_k=2)):
        tok, _ = sample_next(logits, cfg, gen)
        freq = torch.bincount(tok, minlength=4).float() / 4000
        assert freq[2] == 0 and freq[3] == 0
        assert abs(freq[0].item() - 0.625) < 0.03
    tok, lp = sample_next(logits, SamplingConfig(logprobs=True), gen)
    freq = torch.bincount(tok, minlength=4).float() / 4000
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.03)
    assert math.isclose(lp[tok == 1][0].item(), math.log(0.3), rel_tol=1e-5)


def test_chat_messages_use_the_template_and_bad_input_is_an_alignlab_error():
    _, tok = tiny_lm()
    ids = encode_prompt(tok, [{"role": "user", "content": "hi"}])
    assert tok.decode(ids) == "<user>hi\n<assistant>"
    with pytest.raises(AlignlabError, match="prompt must be"):
        encode_prompt(tok, 3.5)
    with pytest.raises(AlignlabError, match="top_p"):
        SamplingConfig(top_p=0).validate()


def test_sliding_window_model_uses_transformers_cache_and_still_matches_hf():
    """A layer type our growing cache does not model (sliding window) falls back to DynamicCache; greedy output
    still equals HF's, with one row ending on EOS early (batch compaction through batch_select_indices)."""
    from test_rollout_tiny import char_tokenizer
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from alignlab.rollout.kvcache import new_cache

    tok = char_tokenizer()
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True, sliding_window=8,
                      layer_types=["sliding_attention", "full_attention"], pad_token_id=0, eos_token_id=2)
    model = Qwen2ForCausalLM(cfg).eval()
    assert new_cache(model)[1] is False
    prompts = ["Hi", "The quick brown fox", "a=1;"]
    res = generate(model, tok, prompts, SamplingConfig(greedy=True, max_new_tokens=12)).samples
    assert [s.completion_ids for s in res] == hf_greedy(model, tok, prompts, 12)
    assert res[0].finish_reason == "eos"


def test_inverse_cdf_draws_the_float64_inverse_cdf_token_across_blocks():
    """V = 600 (blocks of 256, the last one padded), peaked logits, -inf tokens (a whole block in one row): for 500
    uniforms per row the token is the one a float64 cumulative sum over the whole vocabulary gives, wherever u is
    not within float32 rounding of a boundary; -inf tokens are never drawn, even at u = 0 and u = 1 (float32
    rounding of a uniform just below 1); bf16 logits draw what their float32 values draw; the returned normaliser
    is log-sum-exp."""
    from alignlab.rollout.generate import inverse_cdf

    torch.manual_seed(0)
    logits = torch.randn(4, 600) * 4
    logits[:, 590:] = float("-inf")
    logits[1, :300] = float("-inf")
    logits[2, 256:512] = float("-inf")
    rows = logits.repeat_interleave(502, 0)
    u = torch.rand(rows.shape[0], 1)
    u[0::502], u[1::502] = 0.0, 1.0
    tok, top, total = inverse_cdf(rows, u)
    cdf = torch.softmax(rows.double(), -1).cumsum(-1)
    want = torch.searchsorted(cdf, u.double(), right=True)[:, 0].clamp(max=599)
    near = (cdf - u.double()).abs().min(-1).values < 1e-5
    assert torch.isfinite(rows.gather(-1, tok[:, None])).all()
    assert torch.equal(tok[~near], want[~near]) and (~near).sum() > 1900
    drawn = set(tok[:502].tolist())
    assert len(drawn) > 5 and len({t // 256 for t in drawn}) == 3  # the draws spread over every block
    assert torch.allclose(top.double() + total.double().log(), torch.logsumexp(rows.double(), -1), atol=1e-5)
    low = rows.bfloat16()
    assert torch.equal(inverse_cdf(low, u)[0], inverse_cdf(low.float(), u)[0])


@pytest.mark.parametrize("stop", ["😀😀", "终止终止"])
def test_a_stop_string_of_multi_byte_characters_is_seen(stop):
    """Byte-level BPE spends up to four tokens on one character ("😀😀" is 8 tokens): the tail that the checkers
    decode each step is sized in bytes, not characters, so the sampler and the server's scheduler stop there."""
    from alignlab.models.load import load_tokenizer
    from alignlab.rollout.generate import _stop_checker
    from alignlab.rollout.scheduler import _stop_hit

    tok = load_tokenizer("tiny-random")
    ids = tok("Answer: 42 " + stop, add_special_tokens=False)["input_ids"]
    assert len(tok(stop, add_special_tokens=False)["input_ids"]) > len(stop) + 4  # more tokens than characters
    hit = _stop_checker(tok, [stop])
    assert hit(ids) and _stop_hit(tok, [stop], ids)
    assert not hit(ids[:-1]) and not _stop_hit(tok, [stop], ids[:-1])  # one byte short: not yet
