"""rollout/engine.py and kvcache.py: continuous batching and bf16 sampling weights give the plain path's
tokens (greedy) and the log-probs of a full forward."""

import copy
from dataclasses import replace

import pytest
import torch
from test_rollout_generate import hf_greedy
from test_rollout_tiny import tiny_lm
from transformers import DynamicCache

from alignlab.rollout.encode import encode_prompt, eos_token_ids
from alignlab.rollout.engine import Engine
from alignlab.rollout.generate import SamplingConfig, _sampler, generate, sampling_forward
from alignlab.rollout.weights import onednn_packs_bf16

# ragged lengths, short ones first so that (unsorted) a long prompt joins a batch of short ones
PROMPTS = ["Hi", "a=1;", "The quick brown fox", "x", "Once upon a time, in a land far away", "ok then", "Q: 2+2?"]


def _eos_mid_way(model, tok):
    """Make tokens that several rows emit early EOS, so rows finish at different steps and others join."""
    base = generate(model, tok, PROMPTS, SamplingConfig(greedy=True, max_new_tokens=14)).samples
    stops = {base[0].completion_ids[3], base[2].completion_ids[6], base[5].completion_ids[2]}
    model.generation_config.eos_token_id = [2, *sorted(stops)]


def _engine(model, tok, cfg, n, order=None):
    enc = [encode_prompt(tok, p) for p in PROMPTS]
    gen = torch.Generator().manual_seed(cfg.seed)
    eng = Engine(model, sampling_forward(model, cfg), enc, order or list(range(len(enc))), n, cfg,
                 eos_token_ids(model, tok), tok.pad_token_id, _sampler(cfg, gen, None))
    with torch.inference_mode():
        rows = eng.run()
    return eng, rows


def test_continuous_batching_gives_the_static_and_hf_greedy_tokens_in_fewer_steps():
    model, tok = tiny_lm()
    _eos_mid_way(model, tok)
    want = hf_greedy(model, tok, PROMPTS, 14)
    assert len({len(w) for w in want}) > 2  # rows really end at different steps
    for sort in (True, False):
        cont = SamplingConfig(greedy=True, max_new_tokens=14, batch_size=3, sort_by_length=sort)
        stat = SamplingConfig(greedy=True, max_new_tokens=14, batch_size=3, sort_by_length=sort,
                              continuous_batching=False)
        a, b = generate(model, tok, PROMPTS, cont).samples, generate(model, tok, PROMPTS, stat).samples
        assert [s.completion_ids for s in a] == want == [s.completion_ids for s in b]
        assert [s.finish_reason for s in a] == [s.finish_reason for s in b]
    e_cont, _ = _engine(model, tok, SamplingConfig(greedy=True, max_new_tokens=14, batch_size=3), 1)
    e_stat, _ = _engine(model, tok, SamplingConfig(greedy=True, max_new_tokens=14, batch_size=3,
                                                   continuous_batching=False), 1)
    assert e_cont.prefills > e_stat.prefills == 3  # prompts joined one by one as rows finished
    assert e_cont.steps < e_stat.steps  # ...so fewer decode forwards for the same tokens


def test_joined_rows_sample_with_the_log_probs_of_a_full_forward():
    model, tok = tiny_lm()
    _eos_mid_way(model, tok)
    cfg = SamplingConfig(max_new_tokens=10, temperature=0.8, logprobs=True, seed=5, batch_size=4,
                         sort_by_length=False)
    eng, _ = _engine(model, tok, cfg, 2)
    assert eng.prefills > 2  # prompts joined a running batch
    res = generate(model, tok, PROMPTS, cfg, n=2)
    assert len(res.samples) == 14 and [s.prompt_index for s in res.samples[:3]] == [0, 0, 1]
    for s in res.samples:
        ids = torch.tensor([s.prompt_ids + s.completion_ids])
        with torch.no_grad():
            logits = model(ids).logits[0, len(s.prompt_ids) - 1:-1] / 0.8
        want = torch.log_softmax(logits, -1).gather(-1, torch.tensor(s.completion_ids)[:, None])[:, 0]
        assert torch.allclose(torch.tensor(s.logprobs), want, atol=1e-4)


def test_bf16_weights_sample_like_a_bf16_model_and_leave_the_model_alone():
    """weights_dtype=bfloat16 on a float32 model gives the tokens of the same model converted to bf16, the
    sampler's own (bf16) log-probs, and leaves the caller's float32 parameters as they were."""
    model, tok = tiny_lm()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    bf = copy.deepcopy(model).to(torch.bfloat16)
    cfg = SamplingConfig(greedy=True, max_new_tokens=10, logprobs=True, weights_dtype="bfloat16")
    got = generate(model, tok, PROMPTS, cfg).samples
    want = generate(bf, tok, PROMPTS, SamplingConfig(greedy=True, max_new_tokens=10)).samples
    assert [s.completion_ids for s in got] == [s.completion_ids for s in want]
    for s in got:
        with torch.no_grad():
            logits = bf(torch.tensor([s.prompt_ids + s.completion_ids])).logits[0, len(s.prompt_ids) - 1:-1]
        lp = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(s.completion_ids)[:, None])[:, 0]
        assert torch.allclose(torch.tensor(s.logprobs), lp, atol=0.05)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert generate(model, tok, PROMPTS[:2], SamplingConfig(weights_dtype="auto", max_new_tokens=3)).samples
    # the bf16 copies sit in the modules for each forward only, and are put back after a failing one too
    fwd = sampling_forward(model, cfg)
    with pytest.raises(IndexError):
        fwd(torch.tensor([[model.config.vocab_size]]), torch.ones(1, 1, dtype=torch.long), torch.zeros(1, 1,
            dtype=torch.long), DynamicCache(config=model.config))
    assert [id(p) for p in model.parameters()] == [id(p) for p in params]
    assert all(isinstance(p, torch.nn.Parameter) and p.requires_grad for p in model.parameters())


@pytest.mark.skipif(not onednn_packs_bf16(),
                    reason="oneDNN packs bf16 weights only with AVX512 or AVX-NE-CONVERT (the sampler then does not)")
def test_prepacked_bf16_linears_give_the_plain_bf16_tokens_and_log_probs(monkeypatch):
    """The bf16 sampler's oneDNN-prepacked Linears (rollout/weights.py packed_linears) give the same bits as
    plain bf16 F.linear: same sampled tokens and log-probs, for a float32 model sampled in bf16, a bf16 model and
    a LoRA policy; the caller's modules keep their own forward (through the model's forward: a plain Llama's own
    bf16 step is tested in test_rollout_decode_step.py)."""
    import alignlab.rollout.weights as weights
    from alignlab.rollout import decode_step

    monkeypatch.setattr(decode_step, "llama_step", lambda *a: None)
    model, tok = tiny_lm()
    model.config._attn_implementation = "sdpa"
    bf = copy.deepcopy(model).to(torch.bfloat16)
    cfg = SamplingConfig(max_new_tokens=12, logprobs=True, seed=3, batch_size=4, weights_dtype="bfloat16")
    packed = [weights.packed_linears(m, torch.bfloat16, lambda p: p.detach().bfloat16(), 4) for m in (model, bf)]
    n_linear = sum(type(m) is torch.nn.Linear for m in model.modules())
    assert all(len(p) == n_linear > 0 for p in packed)
    # a LoRA policy: peft casts its adapter Linears' input itself, so those stay plain (the base model's are packed)
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    for name, p in lora.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    packed = weights.packed_linears(lora, torch.bfloat16, lambda p: p.detach().bfloat16(), 4)
    assert 0 < len(packed) == n_linear - 2 * model.config.num_hidden_layers
    cases = ((model, cfg), (bf, replace(cfg, weights_dtype="model")), (lora, cfg))
    runs = [generate(m, tok, PROMPTS, c, n=2).samples for m, c in cases]
    monkeypatch.setattr(weights, "packed_linears", lambda *a: {})
    plain = [generate(m, tok, PROMPTS, c, n=2).samples for m, c in cases]
    for got, want in zip(runs, plain):
        assert [s.completion_ids for s in got] == [s.completion_ids for s in want]
        assert [s.logprobs for s in got] == [s.logprobs for s in want]
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_bf16_sampling_on_cpu_runs_attention_in_fp32_and_restores_the_model():
    """The bf16 sampler switches attention to the fp32 sdpa wrapper during its own calls only."""
    from alignlab.rollout.weights import ATTENTION, _sdpa_fp32

    model, tok = tiny_lm()
    model.config._attn_implementation = "sdpa"
    seen = []
    model.model.layers[0].self_attn.register_forward_pre_hook(lambda m, a: seen.append(m.config._attn_implementation))
    generate(model, tok, PROMPTS[:2], SamplingConfig(max_new_tokens=3, weights_dtype="bfloat16"))
    assert set(seen) == {ATTENTION} and model.config._attn_implementation == "sdpa"
    seen.clear()
    generate(model, tok, PROMPTS[:2], SamplingConfig(max_new_tokens=3))
    assert set(seen) == {"sdpa"}
    # the wrapper: fp32 sdpa on upcast inputs, output in the input dtype
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    attn = model.model.layers[0].self_attn
    q, k, v = (torch.randn(2, n, 5, 8).bfloat16() for n in (4, 2, 2))
    got, _ = _sdpa_fp32(attn, q, k, v, None, scaling=0.3, is_causal=True)
    want, _ = sdpa_attention_forward(attn, q.float(), k.float(), v.float(), None, scaling=0.3, is_causal=True)
    assert got.dtype == torch.bfloat16 and torch.allclose(got.float(), want, atol=1e-2)


def test_bf16_sampler_keeps_an_fp32_cache_and_gathers_the_last_position(monkeypatch):
    """On CPU the bf16 sampler through the model's forward stores keys/values in fp32 (what its fp32 attention
    reads, so no per-step cast of the whole cache), and keep_last's index gives the logits an int logits_to_keep
    gives."""
    from alignlab.rollout import decode_step
    from alignlab.rollout.kvcache import new_cache
    from alignlab.rollout.weights import keep_last, sampling_forward

    monkeypatch.setattr(decode_step, "llama_step", lambda *a: None)
    model, tok = tiny_lm()
    model.config._attn_implementation = "sdpa"
    fwd = sampling_forward(model, SamplingConfig(weights_dtype="bfloat16"))
    assert fwd.cache_dtype == torch.float32
    assert getattr(sampling_forward(model, SamplingConfig()), "cache_dtype", None) is None
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    mask, pos = torch.ones_like(ids), torch.arange(4).expand(2, 4)
    cache, _ = new_cache(model, 8, fwd.cache_dtype)
    logits = fwd(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache)
    assert cache.layers[0].keys.dtype == torch.float32 and logits.shape == (2, model.config.vocab_size)
    assert keep_last(ids[:, -1:]) == 1
    with torch.no_grad():
        want = model(input_ids=ids, logits_to_keep=1).logits[:, -1]
        got = model(input_ids=ids, logits_to_keep=keep_last(ids)).logits[:, -1]
    assert torch.equal(got, want)


def test_bf16_units_are_read_from_the_cpu_flags():
    """weights_dtype auto needs to know whether the CPU has AVX512-BF16 / AMX-BF16 (torch 2.13 has no probe), the
    Llama step whether it has AMX (its attention dtype)."""
    from alignlab.rollout.weights import cpu_has_amx, cpu_has_bf16_units

    assert cpu_has_bf16_units("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 avx512bw\n")
    assert cpu_has_bf16_units("flags\t: fpu amx_tile amx_bf16 amx_int8\n")
    assert not cpu_has_bf16_units("flags\t: fpu sse avx2 avx512f\n")
    assert not cpu_has_bf16_units("")
    assert cpu_has_amx("flags\t: fpu amx_tile amx_bf16 amx_int8\n")
    assert not cpu_has_amx("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 avx512bw\n") and not cpu_has_amx("")
    # oneDNN's bf16 weight packing raised a RuntimeError on an AVX2-only EPYC (family 25 model 1): not used there
    assert onednn_packs_bf16("flags\t: fpu avx2 avx512f avx512bw avx512vl avx512dq\n")
    assert onednn_packs_bf16("flags\t: fpu avx2 avx_ne_convert\n") and not onednn_packs_bf16("flags\t: fpu avx2 fma\n")
