"""Medusa tree verification: the tree geometry, the acceptance rules and the cache gather worked out by hand,
and speculative sampling (typical acceptance) on tiny-random: valid, seeded, and plain sampling when nothing
is accepted."""

import math

import pytest
import torch

from alignlab.errors import AlignlabError
from alignlab.rollout.medusa_tree import (
    build_tree,
    gather_cache,
    sparse_paths,
    tree_mask,
    typical_accepts,
    walk,
)


def test_sparse_paths_by_hand():
    """Prior prod 1/(i+2): (0)=1/2, (1)=1/3, (0,0)=1/4 ties (2)=1/4 (lexicographic: (0,0) first), then
    (0,1)=(1,0)=1/6. top_k=1 is the chain, as deep as the heads go."""
    assert sparse_paths(5, 3, 2) == [(0,), (1,), (0, 0), (2,), (0, 1)]
    assert sparse_paths(10, 1, 3) == [(0,), (0, 0), (0, 0, 0)]
    assert sparse_paths(2, 4, 1) == [(0,), (1,)]
    with pytest.raises(AlignlabError, match=">= 1"):
        sparse_paths(0, 3, 2)


def test_build_tree_adds_ancestors_and_orders_breadth_first():
    t = build_tree([[1, 0], [0]], num_heads=2)
    assert t.paths == [(), (0,), (1,), (1, 0)]
    assert t.parent == [-1, 0, 0, 2] and t.children == [[1, 2], [], [3], []]
    assert t.depth.tolist() == [0, 1, 1, 2] and t.max_depth == 2 and t.max_rank == 2
    assert t.ancestors.int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 1, 1]]
    # node (i_1..i_d) is head d's i_d-th candidate
    assert t.tokens(7, [[10, 11], [20, 21]]) == [7, 10, 11, 20]
    with pytest.raises(AlignlabError, match="3 deep"):
        build_tree([[0, 0, 0]], num_heads=2)
    with pytest.raises(AlignlabError, match="ranks >= 0"):
        build_tree([[-1]], num_heads=2)


def test_tree_mask_sees_the_cache_and_the_ancestors():
    class Cfg:
        _attn_implementation = "sdpa"

    class Model:
        config = Cfg()

    t = build_tree([[1, 0], [0]], num_heads=2)
    m = tree_mask(t, 2, Model(), "cpu")
    assert m.shape == (1, 1, 4, 6) and m.dtype == torch.bool
    assert m[0, 0, :, :2].all() and torch.equal(m[0, 0, :, 2:], t.ancestors)
    Model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(AlignlabError, match="sdpa or eager"):
        tree_mask(t, 2, Model(), "cpu")


def test_typical_acceptance_by_hand():
    """p = (0.7, 0.2, 0.1): H = 0.8018, exp(-H) = 0.4485. epsilon 0.09, delta 0.3: threshold
    min(0.09, 0.1346) = 0.09, all three accepted. epsilon 0.15: min(0.15, 0.1346) = 0.1346, token 2 (0.1)
    rejected. Top-k 2 (filt): p = (7/9, 2/9, 0), H = 0.5297, threshold min(0.15, 0.3 * 0.5888 = 0.1766) =
    0.15: tokens 0 and 1 accepted, 2 has p = 0. delta = epsilon = inf: nothing (p <= 1)."""
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    toks = torch.tensor([[0, 1, 2]])
    ok, lp = typical_accepts(logits, toks, 1.0, 0.09, 0.3)
    assert ok.tolist() == [[True, True, True]]
    assert lp[0].tolist() == pytest.approx([math.log(0.7), math.log(0.2), math.log(0.1)], abs=1e-6)
    assert typical_accepts(logits, toks, 1.0, 0.15, 0.3)[0].tolist() == [[True, True, False]]
    top2 = lambda s: s.masked_fill(s < s.topk(2, -1).values[:, -1:], float("-inf"))  # noqa: E731
    ok, lp = typical_accepts(logits, toks, 1.0, 0.15, 0.3, top2)
    assert ok.tolist() == [[True, True, False]] and lp[0, 0].item() == pytest.approx(math.log(7 / 9), abs=1e-6)
    # temperature 2: p ~ sqrt(0.7, 0.2, 0.1) = (0.523, 0.279, 0.198); H = 1.0111, threshold min(0.25,
    # 0.3 * 0.3638 = 0.1091) = 0.1091: all accepted at T = 2, but token 2 not at T = 1
    assert typical_accepts(logits, toks, 2.0, 0.25, 0.3)[0].tolist() == [[True, True, True]]
    assert typical_accepts(logits, toks, 1.0, 0.25, 0.3)[0].tolist() == [[True, True, False]]
    inf = float("inf")
    assert not typical_accepts(torch.tensor([[0.0, -1e4, -1e4]]), toks, 1.0, inf, inf)[0].any()


def _tree_fixture():
    """Root 0, (0,)=1, (1,)=2, (0,0)=3, (1,0)=4, (1,1)=5; node n's token is 10 + n, hidden state one-hot n."""
    tree = build_tree([[0], [1], [0, 0], [1, 0], [1, 1]], num_heads=2)
    return tree, [10 + n for n in range(6)], torch.eye(6)


def test_walk_greedy_follows_the_argmax_and_forms_logits_only_on_the_accepted_path():
    tree, tokens, hidden = _tree_fixture()
    table = torch.full((6, 16), -5.0)
    table[0, 12] = table[2, 15] = table[5, 3] = 5.0  # root -> node 2 (token 12) -> node 5 (token 15) -> 3
    table[1, 13] = 9.0  # node 1 would accept node 3, but node 1 is not accepted: never looked at
    rows = []

    def logits_of(h):
        rows.append(h.argmax(-1).tolist())
        return h @ table

    def greedy(logits, toks):
        return toks == logits.argmax(-1, keepdim=True), torch.zeros(toks.shape)

    v = walk(tree, tokens, hidden, logits_of, greedy)
    assert v.path == [0, 2, 5] and v.logits.argmax().item() == 3
    assert rows == [[0], [2], [5]]  # one LM-head row per depth, none at rejected nodes


def test_walk_typical_prefers_the_longest_then_the_most_likely_path():
    """Root accepts both 1 and 2 (node 1 more likely); only node 2's child 4 is accepted: the longer path
    through the less likely node wins. Without node 4, the tie at depth 1 goes to the likelier node 1. (Below
    the root every row is peaked on token 0, no candidate: a flat row would accept anything, its threshold
    delta * exp(-H) = 0.3 / 16 being under every p = 1 / 16.)"""
    tree, tokens, hidden = _tree_fixture()
    table = torch.full((6, 16), -9.0)
    table[1:, 0] = 6.0
    table[0, 11], table[0, 12] = 2.0, 1.0
    table[2, 14] = 6.0  # p = 1/2 beside token 0

    def accept(logits, toks):
        return typical_accepts(logits, toks, 1.0, 0.09, 0.3)

    assert walk(tree, tokens, hidden, lambda h: h @ table, accept).path == [0, 2, 4]
    table[2, 14] = -9.0
    assert walk(tree, tokens, hidden, lambda h: h @ table, accept).path == [0, 1]


def test_gather_cache_moves_the_accepted_columns_into_place():
    class Layer:
        def __init__(self):
            self.keys = torch.arange(8.0).view(1, 1, 8, 1)
            self.values = -torch.arange(8.0).view(1, 1, 8, 1)

    class Cache:
        layers = [Layer(), Layer()]

    cache = Cache()
    gather_cache(cache, 2, [0, 2, 5])  # 2 cached positions, then the 6 tree nodes
    for layer in cache.layers:
        assert layer.keys.flatten().tolist() == [0, 1, 2, 4, 7]
        assert layer.values.flatten().tolist() == [0, -1, -2, -4, -7]
    gather_cache(cache, 3, [0])  # the root alone: a plain crop
    assert cache.layers[0].keys.flatten().tolist() == [0, 1, 2, 4]


# ---------------------------------------------------------------- sampling on tiny-random


@pytest.fixture(scope="module")
def tiny():
    from alignlab.models.load import load_model, load_tokenizer

    torch.set_num_threads(1)
    return load_model("tiny-random"), load_tokenizer("tiny-random")


def _heads(base, scale):
    from alignlab.models.medusa import MedusaModel

    m = MedusaModel.create(base, num_heads=3)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for blk in m.heads.blocks:
            blk[0].linear.weight.copy_(torch.randn(blk[0].linear.weight.shape, generator=g) * scale)
    return m.heads


PROMPTS = ["hello there", "the cat sat on", [{"role": "user", "content": "a b c"}], "once upon a time"]


def test_sampling_with_nothing_accepted_is_plain_sampling(tiny):
    """delta = epsilon = inf: no candidate passes, each step emits the root, drawn by the same generator as
    generate() at batch size 1 draws: the same tokens, draw for draw (also keyed per row)."""
    from alignlab.rollout.generate import SamplingConfig, generate
    from alignlab.rollout.speculative import MedusaDecoding, medusa_generate

    base, tok = tiny
    never = MedusaDecoding(typical_epsilon=float("inf"), typical_delta=float("inf"))
    for cfg in (SamplingConfig(max_new_tokens=20, temperature=1.3, top_p=0.9, seed=5, batch_size=1,
                               sort_by_length=False),
                SamplingConfig(max_new_tokens=20, temperature=0.8, top_k=50, seed=2, per_row_seed=True)):
        ref = generate(base, tok, PROMPTS, cfg)
        res, stats = medusa_generate(base, _heads(base, 0.0), tok, PROMPTS, cfg, never)
        assert [s.completion_ids for s in res.samples] == [s.completion_ids for s in ref.samples]
        assert stats.accepted[1:] == [0, 0, 0] and stats.forwards > 0


def test_typical_sampling_is_valid_seeded_and_accepts(tiny):
    from alignlab.rollout.generate import SamplingConfig, generate
    from alignlab.rollout.speculative import MedusaDecoding, medusa_generate

    base, tok = tiny
    cfg = SamplingConfig(max_new_tokens=24, temperature=0.7, seed=11, stop=["zz"])
    runs = [medusa_generate(base, _heads(base, 0.0), tok, PROMPTS, cfg, MedusaDecoding()) for _ in range(2)]
    (a, stats), (b, _) = runs
    assert [s.completion_ids for s in a.samples] == [s.completion_ids for s in b.samples]  # same seed
    vocab = base.get_output_embeddings().weight.shape[0]
    for s in a.samples:
        assert s.finish_reason in ("eos", "stop", "length") and 1 <= len(s.completion_ids) <= 24
        assert all(0 <= t < vocab for t in s.completion_ids)
        assert s.text == tok.decode(s.completion_ids, skip_special_tokens=True).split("zz")[0]
    assert stats.mean_accepted_length > 1.2  # fresh heads repeat the base's confident guesses: accepted
    other = medusa_generate(base, _heads(base, 0.0), tok, PROMPTS, SamplingConfig(max_new_tokens=24,
                            temperature=0.7, seed=12), MedusaDecoding())[0]
    assert [s.completion_ids for s in other.samples] != [s.completion_ids for s in a.samples]
    # top_k = 1 sampling: the filtered distribution is the argmax alone, so even thresholds of 0 accept only
    # the argmax: plain greedy's tokens
    greedy = generate(base, tok, PROMPTS, SamplingConfig(greedy=True, max_new_tokens=24))
    res, _ = medusa_generate(base, _heads(base, 0.5), tok, PROMPTS, SamplingConfig(max_new_tokens=24, top_k=1),
                             MedusaDecoding(typical_epsilon=0.0, typical_delta=0.0))
    assert [s.completion_ids for s in res.samples] == [s.completion_ids for s in greedy.samples]


def test_decoding_validation():
    from alignlab.rollout.speculative import MedusaDecoding

    with pytest.raises(AlignlabError, match="tree_nodes"):
        MedusaDecoding(tree_nodes=0).tree(3)
    with pytest.raises(AlignlabError, match="typical"):
        MedusaDecoding(typical_delta=-1).validate()
    assert MedusaDecoding(paths=[[0], [0, 0], [1]]).tree(2).size == 4
