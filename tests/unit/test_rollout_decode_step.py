"""rollout/decode_step.py: the bf16 sampler's Llama step (prefill and decode) computes the model's logits to bf16
rounding, with rows leaving and joining, and declines models it does not reproduce."""

import copy
from dataclasses import replace

import pytest
import torch
from test_rollout_engine import PROMPTS, _eos_mid_way
from test_rollout_tiny import tiny_lm

from alignlab.models.lean_blocks import lean_blocks
from alignlab.rollout import decode_step, weights
from alignlab.rollout import generate as generate_mod
from alignlab.rollout.generate import SamplingConfig, generate

pytestmark = pytest.mark.skipif(not (torch.backends.mkldnn.is_available() and weights.onednn_packs_bf16()),
                                reason="the packed bf16 sampler needs oneDNN's bf16 packing (AVX512 or AVX-NE-CONVERT)")


def _logits_along(monkeypatch, model, tok, cfg, n, tokens=None, prompts=PROMPTS):
    """{(row, position): the logits the sampler was given} over generate(prompts), and {(row, position): token}:
    sampled by the real sampler, or replayed from `tokens` (the same rows then finish, leave and join as before)."""
    real, seen, chosen = generate_mod._sampler, {}, {}

    def sampler(cfg_, gen, constraint, n_=1, prompt_keys=None):
        sample = real(cfg_, gen, constraint, n_, prompt_keys)

        def replay(logits, rows, positions):
            keys = list(zip(rows.tolist(), positions.tolist()))
            seen.update({k: row.float() for k, row in zip(keys, logits)})
            if tokens is None:
                tok_, lp = sample(logits, rows, positions)
            else:
                tok_ = torch.tensor([tokens[k] for k in keys])
                lp = logits.float().log_softmax(-1).gather(-1, tok_[:, None])[:, 0]
            chosen.update(zip(keys, tok_.tolist()))
            return tok_, lp

        return replay

    monkeypatch.setattr(generate_mod, "_sampler", sampler)
    generate(model, tok, prompts, cfg, n=n)
    monkeypatch.setattr(generate_mod, "_sampler", real)
    return seen, chosen


def _replayed_errors(monkeypatch, reference, model, tok, cfg, n, prompts=PROMPTS):
    """Sample `prompts` through the installed step; replay those tokens through the model's bf16 forward and the
    float32 `reference`. Returns {"lean": step, "plain": bf16 forward} -> |logits - float32 logits| at every
    (row, position), stacked, and the float32 logits by (row, position), with the step's own."""
    step = decode_step.llama_step
    lean, tokens = _logits_along(monkeypatch, model, tok, cfg, n, prompts=prompts)
    monkeypatch.setattr(decode_step, "llama_step", lambda *a: None)
    plain, replayed = _logits_along(monkeypatch, model, tok, cfg, n, tokens, prompts)
    exact, _ = _logits_along(monkeypatch, reference, tok, replace(cfg, weights_dtype="float32"), n, tokens, prompts)
    monkeypatch.setattr(decode_step, "llama_step", step)
    assert replayed == tokens and lean.keys() == plain.keys() == exact.keys() and len(lean) > 40
    errors = {name: torch.stack([(got[k] - exact[k]).abs() for k in exact]) for name, got in (("lean", lean),
                                                                                               ("plain", plain))}
    return errors, exact, lean


@pytest.mark.parametrize("amx", [True, False], ids=["bf16-attention", "fp32-attention"])
def test_the_llama_step_gives_the_model_logits_to_bf16_rounding(monkeypatch, amx):
    """The same tokens replayed (ragged prompts, early EOS, rows leaving and joining; n=2 and greedy n=1; a float32
    model sampled in bf16, a bf16 model, a tied LM head): at every step of every row the step's logits are no further from the
    float32 model's than the bf16 model forward's are (within 1.5x, worst and mean error), on both attention paths;
    and the step ran for prefills and decode steps, with the cache dtype its attention reads."""
    monkeypatch.setattr(weights, "cpu_has_amx", lambda: amx)
    model, tok = tiny_lm()
    model.config._attn_implementation = "sdpa"
    with torch.no_grad():  # peaked attention (random init attends almost uniformly): positions and masks matter
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(12)
            layer.self_attn.k_proj.weight.mul_(12)
    _eos_mid_way(model, tok)
    bf, tied = copy.deepcopy(model).to(torch.bfloat16), copy.deepcopy(model)
    tied.lm_head.weight = tied.model.embed_tokens.weight  # a tied head (SmolLM2's): packed from the embedding's copy
    sampled = SamplingConfig(max_new_tokens=12, seed=3, batch_size=4, weights_dtype="bfloat16")
    cases = ((model, model, sampled, 2),
             (model, model, SamplingConfig(greedy=True, max_new_tokens=12, batch_size=3, weights_dtype="bfloat16"), 1),
             (model, bf, SamplingConfig(max_new_tokens=12, seed=5, batch_size=4, weights_dtype="model"), 2),
             (tied, tied, sampled, 2))
    built, calls = decode_step.llama_step, []

    def counting(*args):
        step = built(*args)
        assert step is not None and step.cache_dtype == (None if amx else torch.float32)

        def counted(*a):
            calls.append(a[0].shape)
            return step(*a)

        counted.cache_dtype = step.cache_dtype
        return counted

    monkeypatch.setattr(decode_step, "llama_step", counting)
    for reference, m, cfg, n in cases:
        err, _, _ = _replayed_errors(monkeypatch, reference, m, tok, cfg, n)
        assert err["plain"].max() > 0  # bf16 rounding shows: the comparison has a scale
        assert err["lean"].max() <= 1.5 * err["plain"].max() and err["lean"].mean() <= 1.5 * err["plain"].mean()
    assert {shape[1] == 1 for shape in calls} == {True, False}  # decode steps and prefills
    assert not any("forward" in m.__dict__ for m in model.modules())


@pytest.mark.slow
def test_the_llama_step_on_smollm2_stays_within_bf16_rounding(monkeypatch):
    """SmolLM2-135M-Instruct, 4 chat prompts x 2 samples x 24 tokens, 4 rows in flight (rows join as others finish),
    the same tokens replayed: the step's logits are no further from the float32 model's than the bf16 model
    forward's (within 1.5x, worst and mean), and its top token is float32's wherever float32's is clearly ahead."""
    from alignlab.models.load import load_model, load_tokenizer

    model, tok = load_model("smollm2-135m-instruct"), load_tokenizer("smollm2-135m-instruct")
    prompts = [[{"role": "user", "content": q}] for q in ("What is the capital of France?", "Name a colour.",
                                                          "Write one word about the sea.", "Count to five.")]
    cfg = SamplingConfig(max_new_tokens=24, seed=1, batch_size=4, weights_dtype="bfloat16")
    err, exact, lean = _replayed_errors(monkeypatch, model, model, tok, cfg, 2, prompts)
    assert err["lean"].max() <= 1.5 * err["plain"].max() and err["lean"].mean() <= 1.5 * err["plain"].mean()
    # where float32's first choice leads by more than bf16 logits can blur (their spacing is 0.125 at 16-32), the
    # step picks it too (closer calls may go either way: "The" or "L'" opens the answer to the first question)
    top2 = {k: logits.topk(2).values for k, logits in exact.items()}
    clear = [k for k, (first, second) in top2.items() if first - second > 0.5]
    assert len(clear) > len(exact) // 2
    assert all(lean[k].argmax() == exact[k].argmax() for k in clear)


def test_the_llama_step_declines_what_it_does_not_reproduce():
    """A hooked module, a LoRA-wrapped Linear, or a model that is not a plain Llama: no step (those decode through
    the model); the lean training forwards of models/lean_blocks.py do not stand in its way."""
    from peft import LoraConfig, get_peft_model

    model, _ = tiny_lm()

    def step(m=model):
        return decode_step.llama_step(m, lambda p: p.detach().bfloat16(), 4, True)

    handle = model.model.layers[1].mlp.register_forward_hook(lambda *a: None)
    assert step() is None
    handle.remove()
    model.config.hidden_act = "gelu"
    assert step() is None
    model.config.hidden_act = "silu"
    assert step() is not None
    assert lean_blocks(model) > 0 and step() is not None  # a training loop's lean norms and MLPs: still a step
    lora = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj"], lora_dropout=0.0))
    assert step(lora) is None and step(lora.get_base_model()) is None
