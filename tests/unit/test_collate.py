"""Padding and padding-free packing: packed sequences see only themselves (transformers 5 masking_utils)."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from alignlab.data.collate import Collator, left_pad, pack, pad, sequence_ids
from alignlab.data.layout import Span
from alignlab.models.attention import enable_span_attention
from alignlab.train.steps import causal_lm_step, model_inputs


def tiny_llama(attn: str = "sdpa") -> LlamaForCausalLM:
    """attn: sdpa, eager, or spans (sdpa switched to span attention, as load_model does)."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    cfg._attn_implementation = "sdpa" if attn == "spans" else attn
    model = LlamaForCausalLM(cfg).eval()
    if attn == "spans":
        assert enable_span_attention(model)
    return model


SEQS = [[5, 9, 13, 2, 7], [11, 4, 60], [3, 3, 8, 21, 40, 41, 90]]


def alone_logprobs(model, ids):
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]
    return torch.log_softmax(logits.float(), -1)


def packed_logprobs(model, seqs, use_cache=False):
    batch = pack([{"input_ids": s} for s in seqs])
    with torch.no_grad():
        logits = model(**{**model_inputs(model, batch), "use_cache": use_cache}).logits[0]
    return torch.log_softmax(logits.float(), -1).split(batch["seq_lens"])


def test_pad_values():
    """[[1,2,3],[4]] with pad 0 -> ids [[1,2,3],[4,0,0]], mask [[1,1,1],[1,0,0]], labels pad -100."""
    b = pad([{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4]}], pad_id=0)
    assert b["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]
    assert pad([{"input_ids": [1]}], 0, pad_to_multiple_of=4)["input_ids"].tolist() == [[1, 0, 0, 0]]


def test_pack_layout():
    """Two sequences [1,2,3] and [4,5]: positions 0,1,2,0,1; each sequence's first label ignored."""
    b = pack([{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4, 5], "labels": [4, 5]}])
    assert b["input_ids"].tolist() == [[1, 2, 3, 4, 5]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert b["labels"].tolist() == [[-100, 2, 3, -100, 5]]
    assert b["attention_mask"] is None and b["seq_lens"] == [3, 2] and b["num_tokens"] == 5
    assert sequence_ids([3, 2]).tolist() == [0, 0, 0, 1, 1]


def test_pack_picks_the_cheaper_layout():
    """Lengths 5, 3, 7, cap 8: capped rows [7+1 pad], [5+3] cost 2*8*(1 + 8/r); one row 15*(1 + 15/r).
    r = 4096 (real models): 16.03 > 15.05 -> one row. r = 1 (attention-dominated): 144 < 240 -> capped."""
    one = pack([{"input_ids": s} for s in SEQS], max_row_tokens=8)
    assert one["input_ids"].shape == (1, 15)
    capped = pack([{"input_ids": s} for s in SEQS], max_row_tokens=8, attn_ratio=1)
    assert capped["input_ids"].shape == (2, 8)


def test_span_attention_packs_one_row_whatever_the_cap():
    """Lengths 3000 and 2990, cap 3000: masked attention makes one row dearer (5990 x (1 + 5990/4096) = 14,749
    against 2 x 3000 x (1 + 3000/4096) = 10,394), so it bins and pads; under span attention the attention cost does
    not grow with the row, and the capped rows' padding is never worth paying: one row of 5990."""
    examples = [{"input_ids": [1] * 3000}, {"input_ids": [2] * 2990}]
    assert Collator(0, packing=True, max_row_tokens=3000)(examples)["input_ids"].shape == (2, 3000)
    assert Collator(0, packing=True, max_row_tokens=3000, spans=True)(examples)["input_ids"].shape == (1, 5990)


def test_pack_into_capped_rows():
    """Lengths 5, 3, 7 with rows of at most 8 tokens, first-fit decreasing: 7 alone, then 5 + 3.

    Row 0 = seq 2 (7 tokens) + 1 pad token (position 0, label -100); row 1 = seq 0 then seq 1.
    """
    b = pack([{"input_ids": s} for s in SEQS], pad_id=0, max_row_tokens=8, attn_ratio=1)
    assert b["input_ids"].tolist() == [SEQS[2] + [0], SEQS[0] + SEQS[1]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5, 6, 0], [0, 1, 2, 3, 4, 0, 1, 2]]
    assert b["labels"][0].tolist() == [-100] + SEQS[2][1:] + [-100]
    assert b["segments"] == [(0, 0, 7, 2), (1, 0, 5, 0), (1, 5, 3, 1)]
    assert b["num_tokens"] == 15


@pytest.mark.parametrize("attn", ["sdpa", "eager", "spans"])
def test_capped_rows_logprobs_equal_alone(attn):
    model = tiny_llama(attn)
    b = pack([{"input_ids": s} for s in SEQS], pad_id=0, max_row_tokens=8, attn_ratio=1)
    with torch.no_grad():
        logits = model(**model_inputs(model, b)).logits
    for row, start, n, i in b["segments"]:
        lp = torch.log_softmax(logits[row, start: start + n].float(), -1)
        torch.testing.assert_close(lp, alone_logprobs(model, SEQS[i]), atol=1e-5, rtol=0)


def test_pack_rounds_its_width_up_with_a_pad_tail_of_its_own():
    """15 tokens, pad_to_multiple_of=16 (the SFT default): one row of 16, the pad token in its own span at position 0
    with label -100; the sequences' layout, lengths and token count unchanged."""
    plain = pack([{"input_ids": s} for s in SEQS])
    b = Collator(0, packing=True, pad_to_multiple_of=16)([{"input_ids": s} for s in SEQS])
    assert b["input_ids"].tolist() == [sum(SEQS, []) + [0]]
    assert b["position_ids"][0, 15].item() == 0 and b["labels"][0, 15].item() == -100
    assert torch.equal(b["labels"][:, :15], plain["labels"]) and torch.equal(b["position_ids"][:, :15], plain["position_ids"])
    assert b["segments"] == plain["segments"] and b["num_tokens"] == 15
    assert b["attn_spans"][-1] == Span(0, 15, 16, ((15, 16),)) and b["attn_spans"][:-1] == plain["attn_spans"]
    assert pack([{"input_ids": s} for s in SEQS], pad_to_multiple_of=5)["input_ids"].shape == (1, 15)  # already a multiple


def _loss_and_grads(model, examples, multiple, bf16):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
        loss, _ = causal_lm_step(model, Collator(0, packing=True, pad_to_multiple_of=multiple)(examples))
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def test_a_rounded_width_gives_the_unrounded_loss_and_gradients():
    """float32: the same loss and gradients (the pad tail is neither attended to nor trained on); bf16 autocast:
    each gradient no further from float32's than the unrounded bf16 path's (1.5x: bit for bit on this CPU's tiny
    model, within rounding where a matrix kernel blocks its reduction by the longer token count)."""
    model = tiny_llama("spans").train()
    examples = [{"input_ids": s, "labels": [-100] + s[1:]} for s in SEQS]
    ref_loss, ref = _loss_and_grads(model, examples, None, False)
    loss, grads = _loss_and_grads(model, examples, 16, False)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0)
    for g, r in zip(grads, ref):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-7)
    _, plain = _loss_and_grads(model, examples, None, True)
    _, rounded = _loss_and_grads(model, examples, 16, True)
    for g, p, r in zip(rounded, plain, ref):
        assert (g - r).norm() <= 1.5 * (p - r).norm() + 1e-6 * r.norm()


def test_left_pad():
    b = left_pad([[1, 2], [3]], pad_id=0)
    assert b["input_ids"].tolist() == [[1, 2], [0, 3]] and b["attention_mask"].tolist() == [[1, 1], [0, 1]]


@pytest.mark.parametrize("attn", ["sdpa", "eager", "spans"])
def test_packed_logprobs_equal_alone(attn):
    model = tiny_llama(attn)
    for lp, ids in zip(packed_logprobs(model, SEQS), SEQS):
        torch.testing.assert_close(lp, alone_logprobs(model, ids), atol=1e-5, rtol=0)


@pytest.mark.parametrize("attn", ["sdpa", "eager", "spans"])
def test_no_attention_across_sequences(attn):
    """Changing every token of sequence 0 leaves sequences 1 and 2 unchanged, bit for bit up to 1e-6."""
    model = tiny_llama(attn)
    base = packed_logprobs(model, SEQS)
    changed = packed_logprobs(model, [[t + 1 for t in SEQS[0]], *SEQS[1:]])
    assert (base[0] - changed[0]).abs().max() > 1e-3  # the change is visible where it should be
    for a, b in zip(base[1:], changed[1:]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_plain_concatenation_would_leak():
    """Control: the same row WITHOUT restarting positions lets sequence 1 see sequence 0."""
    model = tiny_llama()
    ids = torch.tensor([SEQS[0] + SEQS[1]])
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0, len(SEQS[0]):]
    leak = torch.log_softmax(logits, -1)
    assert (leak - alone_logprobs(model, SEQS[1])).abs().max() > 1e-3


def test_packed_loss_equals_padded_loss():
    """Token-mean cross-entropy is the same packed or padded (the pack drops no trained token)."""
    model = tiny_llama()
    examples = [{"input_ids": s, "labels": [-100] + s[1:]} for s in SEQS]
    with torch.no_grad():
        packed, _ = causal_lm_step(model, Collator(0, packing=True)(examples))
        padded, _ = causal_lm_step(model, Collator(0)(examples))
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=0)


def test_kv_cache_disables_packed_detection():
    """Why step functions pass use_cache=False: with a cache (the config default, even in train mode)
    transformers skips packed-sequence detection and sequence 1 attends to sequence 0."""
    model = tiny_llama().train()
    model.config.attention_dropout = 0.0
    leaked = packed_logprobs(model, SEQS, use_cache=None)[1]
    assert (leaked - alone_logprobs(model, SEQS[1])).abs().max() > 1e-3


@pytest.mark.parametrize("attn", ["sdpa", "spans"])
def test_chunked_step_equals_plain_step_and_gradients(attn):
    """Chunked head (trained tokens only) gives the plain loss and the same gradients, packed or padded, without
    calling the model's head module; span attention gives the plain path's numbers."""
    from alignlab.train.steps import chunked_causal_lm_step

    examples = [{"input_ids": s, "labels": [-100, -100] + s[2:]} for s in SEQS]
    for packing, cap in ((True, None), (True, 8), (False, None)):
        batch = Collator(0, packing=packing, max_row_tokens=cap)(examples)
        grads = []
        for step in (causal_lm_step, lambda m, b: chunked_causal_lm_step(m, b, chunk_size=3)):
            model = tiny_llama("sdpa" if step is causal_lm_step else attn).train()
            head_calls = []
            model.lm_head.register_forward_hook(lambda *a, calls=head_calls: calls.append(1))
            loss, metrics = step(model, batch)
            loss.backward()
            # the chunked step never calls the head module (its empty matmul still cast the weight under autocast)
            assert bool(head_calls) == (step is causal_lm_step)
            grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()], metrics))
        torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-6, rtol=0)
        # the same logged metrics: the chunked step logged no token accuracy
        assert grads[0][2].keys() == grads[1][2].keys() == {"mean_token_accuracy"}
        assert float(grads[0][2]["mean_token_accuracy"]) == float(grads[1][2]["mean_token_accuracy"])
        for a, b in zip(grads[0][1], grads[1][1]):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_pad_to_multiple_of_must_be_positive_or_null_in_every_config():
    from alignlab.config import load_config
    from alignlab.errors import ConfigError
    from alignlab.recipes.sft import SFTConfig
    from alignlab.rl.config import PolicyGradientConfig
    from alignlab.train.dpo import DPOConfig

    for cls in (SFTConfig, DPOConfig, PolicyGradientConfig):
        assert load_config(cls, None, ["model=m", "data=d", "pad_to_multiple_of=null"]).pad_to_multiple_of is None
        with pytest.raises(ConfigError, match="pad_to_multiple_of: must be >= 1 or null, got 0"):
            load_config(cls, None, ["model=m", "data=d", "pad_to_multiple_of=0"])
