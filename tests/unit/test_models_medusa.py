"""Medusa heads: the loss worked out by hand, heads-only save/load, and exact greedy speculative decoding."""

import math

import pytest
import torch
from torch import nn

from alignlab.errors import AlignlabError
from alignlab.models.medusa import MedusaHeads, MedusaModel, load_medusa, medusa_step


@pytest.fixture(scope="module")
def tiny():
    from alignlab.models.load import load_model, load_tokenizer

    torch.set_num_threads(1)
    return load_model("tiny-random"), load_tokenizer("tiny-random")


def test_fresh_head_is_the_base_head_and_shares_it(tiny):
    """Zero-initialised residual blocks: every fresh head's logits equal the base LM head's on the same hidden
    state. With the shared head only the K residual blocks are parameters (K x (H^2 + H))."""
    base, _ = tiny
    m = MedusaModel.create(base, num_heads=2)
    h = torch.randn(3, base.config.hidden_size)
    # atol: the shared head projects both heads in one batched matmul (summation order differs, ~1e-7)
    assert torch.allclose(m.heads(h), base.get_output_embeddings()(h).expand(2, 3, -1), atol=1e-6)
    assert torch.allclose(m.heads(h), torch.stack([m.heads.project(k, h) for k in range(2)]), atol=1e-6)
    H = base.config.hidden_size
    assert sum(p.numel() for p in m.heads.parameters()) == 2 * (H * H + H)
    assert all(not p.requires_grad for p in m.base.parameters())
    own = MedusaModel.create(base, num_heads=1, own_lm_head=True)
    assert torch.equal(own.heads.lm_heads[0].weight, base.get_output_embeddings().weight)


def test_loss_by_hand():
    """Vocabulary 3, hidden 3, identity LM head, one head with zero block: head logits = hidden state. A fake
    base returns hidden states h_t; labels [-100, -100, 2, 1] (two trained next-token units: positions 2, 3).
    Head 1 (k = 0 here) predicts the token 2 places ahead: h_0 -> labels[2] = 2, h_1 -> labels[3] = 1.
    With h_0 = (0, 0, ln 3) and h_1 = (0, 0, 0): CE = -ln(3/5) + -ln(1/3); loss = 0.8 * CE / 2."""

    class Fake(nn.Module):
        def __init__(self, hidden):
            super().__init__()
            self.hidden = hidden
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, **kw):
            return type("Out", (), {"hidden_states": (self.hidden,)})()

    hidden = torch.tensor([[[0.0, 0.0, math.log(3)], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    head = nn.Linear(3, 3, bias=False)
    nn.init.eye_(head.weight)
    heads = MedusaHeads(3, 3, 1, lm_head=head)
    model = MedusaModel.__new__(MedusaModel)
    nn.Module.__init__(model)
    model.base, model.heads = Fake(hidden), heads
    batch = {"input_ids": torch.zeros(1, 4, dtype=torch.long), "labels": torch.tensor([[-100, -100, 2, 1]])}
    loss, metrics = medusa_step(model, batch)
    ce = -math.log(3 / 5) - math.log(1 / 3)
    assert loss.item() == pytest.approx(0.8 * ce / 2, rel=1e-6)
    # h_0 -> 2 right, h_1 -> 0 (tie) wrong; weighed by its 2 targets (a plain mean per micro-batch moved the logged
    # accuracy with the batch size: 0.944 at eval batch 2, 0.895 at 1), and no key where a head has no target
    acc = metrics["head1_accuracy"]
    assert acc.value.item() == pytest.approx(0.5) and acc.weight == 2
    short = {"input_ids": torch.zeros(1, 2, dtype=torch.long), "labels": torch.tensor([[-100, 1]])}
    model.base = Fake(hidden[:, :2])
    assert "head1_accuracy" not in medusa_step(model, short)[1]


def test_save_load_heads_only_and_size_check(tiny, tmp_path):
    base, _ = tiny
    m = MedusaModel.create(base, num_heads=2, base_name="tiny-random")
    with torch.no_grad():
        m.heads.blocks[1][0].linear.weight.normal_()
    m.save_pretrained(str(tmp_path))
    assert set(m.state_dict()) == {k for k in m.state_dict() if k.startswith("heads.blocks.")}
    heads = load_medusa(tmp_path, base)
    h = torch.randn(2, base.config.hidden_size)
    assert torch.allclose(heads(h), m.heads(h))
    (tmp_path / "medusa_config.json").write_text('{"num_heads": 2, "head_layers": 1, "own_lm_head": false, '
                                                 '"hidden_size": 7, "vocab_size": 3}')
    with pytest.raises(AlignlabError, match="hidden 7"):
        load_medusa(tmp_path, base)


def _perturbed(base, scale, seed=0):
    m = MedusaModel.create(base, num_heads=3)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for blk in m.heads.blocks:
            blk[0].linear.weight.copy_(torch.randn(blk[0].linear.weight.shape, generator=g) * scale)
    return m.heads


CHAIN, TREE, WIDE = ({"tree_top_k": 1, "tree_nodes": 3}, {}, {"tree_top_k": 6, "tree_nodes": 40})


@pytest.mark.parametrize("tree", [CHAIN, TREE, WIDE], ids=["chain", "tree16", "tree40"])
@pytest.mark.parametrize("scale", [0.0, 0.5])
def test_speculative_greedy_equals_plain_greedy(tiny, scale, tree):
    """Fresh heads (scale 0) guess the base's next token again, which tiny-random's repetitive greedy output
    accepts; perturbed heads (scale 0.5) guess mostly wrong, so accepted paths run through lower-ranked nodes
    whose cache columns must be moved into place. Either way, for the top-1 chain and for trees, the tokens are
    plain greedy's, with the same finish reasons, including a stop string and EOS."""
    from alignlab.rollout.generate import SamplingConfig, generate
    from alignlab.rollout.speculative import MedusaDecoding, medusa_generate

    base, tok = tiny
    decoding = MedusaDecoding(**tree)
    prompts = ["hello there", "the cat sat on", [{"role": "user", "content": "a b c"}], "once upon a time"]
    for cfg in (SamplingConfig(greedy=True, max_new_tokens=23), SamplingConfig(greedy=True, max_new_tokens=9)):
        ref = generate(base, tok, prompts, cfg)
        res, stats = medusa_generate(base, _perturbed(base, scale), tok, prompts, cfg, decoding)
        assert [s.completion_ids for s in res.samples] == [s.completion_ids for s in ref.samples]
        assert [s.finish_reason for s in res.samples] == [s.finish_reason for s in ref.samples]
        assert stats.forwards == sum(stats.accepted) and stats.tokens >= stats.forwards
    if scale == 0.0:
        assert stats.mean_accepted_length > 1.5
    # a stop string: cut at the same place
    text = ref.samples[0].text
    if len(text) > 3:
        cfg = SamplingConfig(greedy=True, max_new_tokens=23, stop=[text[1:3]])
        ref = generate(base, tok, prompts, cfg)
        res, _ = medusa_generate(base, _perturbed(base, scale), tok, prompts, cfg, decoding)
        assert [(s.completion_ids, s.text, s.finish_reason) for s in res.samples] == \
            [(s.completion_ids, s.text, s.finish_reason) for s in ref.samples]


def test_tree_accepts_more_than_the_chain_with_perturbed_heads(tiny):
    """The point of the tree: when the top-1 guess is wrong a lower-ranked candidate can still be accepted."""
    from alignlab.rollout.generate import SamplingConfig
    from alignlab.rollout.speculative import MedusaDecoding, medusa_generate

    base, tok = tiny
    cfg = SamplingConfig(greedy=True, max_new_tokens=23)
    prompts = ["hello there", "the cat sat on", "once upon a time"]
    _, chain = medusa_generate(base, _perturbed(base, 0.5), tok, prompts, cfg, MedusaDecoding(**CHAIN))
    _, tree = medusa_generate(base, _perturbed(base, 0.5), tok, prompts, cfg, MedusaDecoding(**WIDE))
    assert tree.mean_accepted_length > chain.mean_accepted_length


def test_speculative_greedy_with_eager_attention(tiny):
    """Eager attention takes the tree mask as an additive float mask: same tokens as plain greedy."""
    import copy

    from alignlab.rollout.generate import SamplingConfig, generate
    from alignlab.rollout.speculative import MedusaDecoding, medusa_generate

    base, tok = tiny
    eager = copy.deepcopy(base)
    eager.set_attn_implementation("eager")
    cfg = SamplingConfig(greedy=True, max_new_tokens=17)
    prompts = ["hello there", "the cat sat on"]
    ref = generate(base, tok, prompts, cfg)
    res, _ = medusa_generate(eager, _perturbed(eager, 0.5), tok, prompts, cfg, MedusaDecoding(**WIDE))
    assert [s.completion_ids for s in res.samples] == [s.completion_ids for s in ref.samples]


def test_speculative_refuses_logprobs_and_constraints(tiny):
    from alignlab.rollout.generate import SamplingConfig
    from alignlab.rollout.speculative import medusa_generate

    base, tok = tiny
    with pytest.raises(AlignlabError, match="log-probs"):
        medusa_generate(base, _perturbed(base, 0.0), tok, ["hi"], SamplingConfig(logprobs=True))
    with pytest.raises(AlignlabError, match="regex"):
        medusa_generate(base, _perturbed(base, 0.0), tok, ["hi"], SamplingConfig(regex="a+"))


def test_speculative_greedy_with_own_lm_heads(tiny):
    """Heads with their own (perturbed) LM heads project separately from the base's head: same tokens."""
    from alignlab.rollout.generate import SamplingConfig, generate
    from alignlab.rollout.speculative import MedusaDecoding, medusa_generate

    base, tok = tiny
    m = MedusaModel.create(base, num_heads=2, own_lm_head=True)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for head in m.heads.lm_heads:
            head.weight.add_(torch.randn(head.weight.shape, generator=g) * 0.05)
    cfg = SamplingConfig(greedy=True, max_new_tokens=19)
    prompts = ["hello there", "once upon a time"]
    ref = generate(base, tok, prompts, cfg)
    res, stats = medusa_generate(base, m.heads, tok, prompts, cfg, MedusaDecoding(tree_top_k=3, tree_nodes=8))
    assert [s.completion_ids for s in res.samples] == [s.completion_ids for s in ref.samples]
    assert len(stats.accepted) == 3 and stats.forwards > 0


def test_speculative_refuses_sliding_window_models(tiny):
    # a sliding-window layer's cache keeps its window only, and the tree mask spans every past column: decoding
    # failed with a shape error once a sequence outgrew the window (Mistral, Gemma 2/3, Qwen2 with a window)
    from transformers import MistralConfig, MistralForCausalLM

    from alignlab.rollout.generate import SamplingConfig
    from alignlab.rollout.speculative import medusa_generate

    _, tok = tiny
    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, sliding_window=4, tie_word_embeddings=False)
    model = MistralForCausalLM(cfg).eval()
    with pytest.raises(AlignlabError, match="sliding-window or chunked attention"):
        medusa_generate(model, _perturbed(model, 0.0), tok, ["hello there"], SamplingConfig(greedy=True,
                                                                                          max_new_tokens=12))


def test_speculative_refuses_alibi_and_moving_rope_frequencies(tiny):
    """ALiBi biases a key by its index in the cache (MPT's greedy output differed from plain greedy in 11 of 28
    completions; Bloom and Falcon crashed inside transformers); dynamic-NTK and LongRoPE recompute their
    frequencies from the forward's largest position, which the deepest tree node raises (9-11 of 12 differed)."""
    from transformers import BloomConfig, BloomForCausalLM, LlamaConfig, LlamaForCausalLM

    from alignlab.rollout.generate import SamplingConfig
    from alignlab.rollout.speculative import medusa_generate

    _, tok = tiny
    bloom = BloomForCausalLM(BloomConfig(vocab_size=len(tok), hidden_size=32, n_layer=2, n_head=4)).eval()
    dynamic = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=32,
                                           rope_scaling={"rope_type": "dynamic", "factor": 2.0})).eval()
    for model, match in ((bloom, "ALiBi"), (dynamic, "dynamic rope scaling")):
        with pytest.raises(AlignlabError, match=match):
            medusa_generate(model, _perturbed(model, 0.0), tok, ["hello"], SamplingConfig(greedy=True,
                                                                                          max_new_tokens=4))


def test_speculative_greedy_fills_a_learned_position_context(tiny):
    """A full tree was verified with a few tokens of context left: nodes past GPT-2's position table raised
    IndexError (HTTP 500 from serve --speculative). Only nodes that could be emitted are verified now."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from alignlab.rollout.generate import SamplingConfig, generate
    from alignlab.rollout.speculative import MedusaDecoding, medusa_generate

    _, tok = tiny
    torch.manual_seed(0)
    base = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=32)).eval()
    heads = _perturbed(base, 0.5)
    for prompt in ("hello there", "abc"):
        cfg = SamplingConfig(greedy=True, max_new_tokens=32 - len(tok(prompt).input_ids))
        want = generate(base, tok, [prompt], cfg).samples[0].completion_ids
        got = medusa_generate(base, heads, tok, [prompt], cfg, MedusaDecoding())[0].samples[0].completion_ids
        assert got == want and len(got) == cfg.max_new_tokens
