"""Scalar heads: a sequence's score is the head output at its last real token, whatever the padding."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from alignlab.errors import AlignlabError
from alignlab.models.heads import load_scorer, score, values
from alignlab.models.lora import LoraConfig, apply_lora

SEQS = [[5, 80, 123, 7, 300], [42, 9], [17, 18, 19, 20, 21, 22, 23]]
PAD = 3  # tiny-random's <|pad|>


@pytest.fixture(scope="module")
def scorer():
    torch.manual_seed(0)
    return load_scorer("tiny-random").eval()


def _manual(model, ids):
    """The definition, one sequence alone with no padding: head(final hidden state of the last token)."""
    with torch.no_grad():
        hidden = model.model(torch.tensor([ids])).last_hidden_state
        return model.score(hidden)[0, -1, 0]


def _batch(seqs, left: bool, pad=PAD):
    width = max(map(len, seqs))
    ids, mask = [], []
    for s in seqs:
        fill = width - len(s)
        ids.append([pad] * fill + s if left else s + [pad] * fill)
        mask.append([0] * fill + [1] * len(s) if left else [1] * len(s) + [0] * fill)
    return torch.tensor(ids), torch.tensor(mask)


def test_scorer_config(scorer):
    assert type(scorer).__name__ == "LlamaForSequenceClassification"
    assert scorer.config.num_labels == 1 and scorer.config.pad_token_id == PAD
    assert scorer.score.weight.shape == (1, 64)


@pytest.mark.parametrize("left", [False, True])
def test_score_is_last_real_token(scorer, left):
    expected = torch.stack([_manual(scorer, s) for s in SEQS])
    ids, mask = _batch(SEQS, left)
    with torch.no_grad():
        got = score(scorer, ids, mask)
    assert got.dtype == torch.float32 and got.shape == (3,)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)
    assert expected.unique().numel() == 3  # three different numbers, so a wrong index would show


def test_sequence_ending_in_the_pad_id_is_scored_at_that_token(scorer):
    """When pad == EOS, a real trailing EOS is attended and must be the scored token (HF's pad-id search
    would skip it)."""
    seq = [5, 80, PAD]
    ids, mask = _batch([seq, [9, 10, 11, 12]], left=False)
    with torch.no_grad():
        got = score(scorer, ids, mask)
    assert torch.allclose(got[0], _manual(scorer, seq), atol=1e-5)


def test_values_per_token(scorer):
    ids, mask = _batch(SEQS, left=True)
    with torch.no_grad():
        v = values(scorer, ids, mask)
        hidden = scorer.model(torch.tensor([SEQS[0]])).last_hidden_state
        alone = scorer.score(hidden)[0, :, 0]
    assert v.shape == (3, 7)
    assert torch.allclose(v[0, 2:], alone, atol=1e-5)


def test_saved_scorer_reloads_with_its_head(scorer, tmp_path):
    scorer.save_pretrained(tmp_path / "rm")
    ids, mask = _batch(SEQS, left=False)
    with torch.no_grad():
        want = score(scorer, ids, mask)
        again = load_scorer(str(tmp_path / "rm")).eval()
        plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
        assert torch.equal(score(again, ids, mask), want)
        assert torch.equal(score(plain, ids, mask), want)
    from alignlab.models.commands import model_info

    info = model_info(str(tmp_path / "rm"))  # the tiny model's 106,816 + the 64-weight head
    assert info["architecture"] == "LlamaForSequenceClassification" and info["parameters"] == 106_816 + 64


def test_a_scorer_without_a_trained_head_is_refused_where_one_is_needed(scorer, tmp_path):
    """reward: reward_model, reward_accuracy and reward-model judges took a language model's checkpoint (a DPO
    policy) with a new random head and scored noise (accuracy 0.56, then 0.34 with another seed)."""
    from alignlab.models.load import load_model, load_tokenizer
    from alignlab.rollout.rewards import get_reward

    with pytest.raises(AlignlabError, match="'tiny-random' is not a reward model"):
        get_reward("reward_model", path="tiny-random")
    lm = apply_lora(load_model("tiny-random"), LoraConfig(r=2, alpha=4, dropout=0.0))
    lm.save_pretrained(tmp_path / "sft_adapter")  # a causal LM's adapter: folded into a backbone, new head
    with pytest.raises(AlignlabError, match="not a reward model"):
        load_scorer(str(tmp_path / "sft_adapter"), trained_head=True)
    load_scorer(str(tmp_path / "sft_adapter"))  # a value model or a reward model to train starts there
    scorer.save_pretrained(tmp_path / "rm")
    load_tokenizer("tiny-random").save_pretrained(tmp_path / "rm")
    assert get_reward("reward_model", path=str(tmp_path / "rm"))(["a"], ["b"])  # a trained head loads


def test_lora_scorer_trains_the_head(scorer):
    torch.manual_seed(0)
    model = apply_lora(load_scorer("tiny-random"), LoraConfig(r=2, alpha=4, dropout=0.0))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("score" in n for n in names) and any("lora_A" in n for n in names)
    ids, mask = _batch(SEQS, left=True)
    s = score(model, ids, mask)
    s.sum().backward()
    head = [p for n, p in model.named_parameters() if p.requires_grad and "score" in n]
    assert head[0].grad is not None and head[0].grad.abs().sum() > 0


def test_empty_row_is_an_error(scorer):
    with pytest.raises(AlignlabError, match="no attended tokens"):
        score(scorer, torch.tensor([[1, 2], [3, 3]]), torch.tensor([[1, 1], [0, 0]]))


def test_merged_scorer_adapter_matches(tmp_path):
    """A reward-model adapter (LoRA + trained head) merges into a plain scorer with the same scores (scores
    here are ~6 in size, so float32 re-association in the merged weights shows up as ~1e-5 absolute)."""
    from alignlab.models.lora import merge_adapter

    torch.manual_seed(0)
    model = apply_lora(load_scorer("tiny-random"), LoraConfig(r=2, alpha=4, dropout=0.0)).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n or ("score" in n and p.requires_grad):
                p.normal_(0, 0.5)
    ids, mask = _batch(SEQS, left=False)
    with torch.no_grad():
        want = score(model, ids, mask)
    model.save_pretrained(tmp_path / "adapter")
    with torch.no_grad():  # the adapter folder itself loads as a scorer too
        assert torch.equal(score(load_scorer(str(tmp_path / "adapter")).eval(), ids, mask), want)
    out = merge_adapter(tmp_path / "adapter", tmp_path / "merged")
    merged = AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        got = score(merged, ids, mask)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)


def test_config_attributes_as_keyword_arguments():
    # from_pretrained with `config=` hands unknown keywords to the model's constructor: use_cache=False was a TypeError
    model = load_scorer("tiny-random", use_cache=False, attn_implementation="eager")
    assert model.config.use_cache is False and model.config._attn_implementation == "eager"
    assert model.config.num_labels == 1


def test_where_to_load_from_reaches_the_weights_too(monkeypatch):
    # AutoConfig consumed `revision`: the config came from that revision, the weights from the default one
    seen = {}
    real = AutoModelForSequenceClassification.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **{k: v for k, v in kwargs.items() if k != "revision"})

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", spy)
    load_scorer("tiny-random", use_cache=False, revision="main")
    assert seen["revision"] == "main" and "use_cache" not in seen
