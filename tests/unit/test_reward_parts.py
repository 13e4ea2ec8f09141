"""Reward-model parts (data.ranked, train.reward, recipes.reward's config): ranked-list rows, full-sequence
tokenisation, the collator's layout, the step's loss and metrics against hand-computed values (on the real
tiny scorer), and config checks."""

import json
import math

import pytest
import torch

from alignlab.config import ConfigError, load_config
from alignlab.data.ranked import (
    RankedRow,
    RewardCollator,
    RewardExample,
    as_pairs,
    load_ranked,
    ranked_row,
    tokenize_example,
)
from alignlab.data.rows import Origin, RowProblem
from alignlab.errors import AlignlabError
from alignlab.losses.reward import bradley_terry, plackett_luce
from alignlab.models.heads import load_scorer, score
from alignlab.models.load import load_tokenizer
from alignlab.recipes.reward import RewardConfig, load_examples_rows
from alignlab.train.reward import RewardStep, ranking_metrics

ORIGIN = Origin("f.jsonl", 0, 1)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny-random")


@pytest.fixture(scope="module")
def scorer():
    torch.manual_seed(0)
    return load_scorer("tiny-random").eval()


def test_ranked_text_record_is_plain_text_best_first():
    row = ranked_row({"prompt": "Q?", "completions": ["best", "mid", "worst"]}, ORIGIN)
    assert row.chat is False and row.prompt == [{"role": "user", "content": "Q?"}]
    assert [c[0]["content"] for c in row.completions] == ["best", "mid", "worst"]
    assert all(c[0]["role"] == "assistant" for c in row.completions)


def test_ranked_messages_record_uses_chat():
    rec = {"prompt": [{"role": "user", "content": "Q?"}], "completions": ["a", [{"role": "assistant", "content": "b"}]]}
    row = ranked_row(rec, ORIGIN)
    assert row.chat is True and row.completions[1] == [{"role": "assistant", "content": "b"}]


@pytest.mark.parametrize("rec, field", [
    ({"prompt": "Q", "completions": ["only one"]}, "completions"),
    ({"prompt": "Q", "completions": ["a", "  "]}, "completions[1]"),
    ({"prompt": "", "completions": ["a", "b"]}, "prompt"),
    ({"completions": ["a", "b"]}, "prompt"),
    ({"prompt": "Q", "completions": ["same", "other", "same"]}, "completions[2]"),  # a pair of one answer
    ({"prompt": [{"role": "user", "content": "Q"}], "completions": [[{"role": "user", "content": "a"}],
                                                                   [{"role": "assistant", "content": "b"}]]},
     "completions[0]"),  # a user turn trained as the model's answer
])
def test_bad_ranked_records_name_the_field(rec, field):
    with pytest.raises(RowProblem) as e:
        ranked_row(rec, ORIGIN)
    assert e.value.field == field


def test_bad_ranked_file_names_file_line_and_field(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"prompt": "Q", "completions": ["a", "b"]}) + "\n"
                    + json.dumps({"prompt": "Q", "completions": ["a", ""]}) + "\n")
    with pytest.raises(AlignlabError, match=r"r\.jsonl:2 \(record 1\): field 'completions\[1\]': empty_completion"):
        load_ranked(str(path), "error")
    assert len(load_ranked(str(path), "skip")) == 1
    bad = tmp_path / "u.jsonl"  # invalid UTF-8 crashed inside the tokenizer, after the model loaded
    bad.write_bytes(b'{"prompt": "Q", "completions": ["caf\xe9 a", "b"]}\n')
    with pytest.raises(AlignlabError, match=r"u\.jsonl:1 \(record 0\): field 'completions\[0\]': invalid_utf8"):
        load_ranked(str(bad), "error")


def test_ranked_files_are_detected_and_pairs_come_from_the_data_layer(tmp_path):
    ranked, pairs = tmp_path / "ranked.jsonl", tmp_path / "pairs.jsonl"
    ranked.write_text(json.dumps({"prompt": "Q", "completions": ["a", "b", "c"]}) + "\n")
    pairs.write_text(json.dumps({"prompt": "Q", "chosen": "a", "rejected": "b", "margin": 1.5}) + "\n")
    cfg = RewardConfig()
    (r,) = load_examples_rows(str(ranked), cfg)
    assert len(r.completions) == 3
    (p,) = load_examples_rows(str(pairs), cfg)
    assert [c[0]["content"] for c in p.completions] == ["a", "b"] and p.margin == 1.5 and p.chat is False


def test_lists_become_every_ordered_pair():
    """[a, b, c] best first -> (a,b), (a,c), (b,c): the better one is always first; pairs pass through."""
    c = [[{"role": "assistant", "content": x}] for x in "abc"]
    pairs = as_pairs([RankedRow([], c), RankedRow([], c[:2], margin=2.0)])
    assert [[p.completions[0][0]["content"], p.completions[1][0]["content"]] for p in pairs] == [
        ["a", "b"], ["a", "c"], ["b", "c"], ["a", "b"]]
    assert pairs[-1].margin == 2.0 and pairs[0].margin is None


def test_sequences_are_the_whole_text_tokenised(tok):
    """Plain text: the sequence is tok(prompt + completion) with one EOS appended, nothing else."""
    row = ranked_row({"prompt": "The cat sat", "completions": [" on the mat", " far away"]}, ORIGIN)
    ex = tokenize_example(row, tok, 512, None)
    for seq, text in zip(ex.sequences, ["The cat sat on the mat", "The cat sat far away"]):
        want = [t for t in tok(text)["input_ids"] if t != tok.eos_token_id] + [tok.eos_token_id]
        assert seq == want


def test_truncation_cuts_every_prompt_alike(tok):
    """A long completion forces a cut: both sequences keep the same (last) prompt tokens and fit max_length."""
    prompt = " ".join(["the dog ran home"] * 20)
    row = ranked_row({"prompt": prompt, "completions": ["short", " ".join(["water"] * 100)]}, ORIGIN)
    full = tokenize_example(row, tok, 4096, None)
    cut = tokenize_example(row, tok, 64, None)
    n_short = len(tok("short", add_special_tokens=False)["input_ids"]) + 1
    assert all(len(s) <= 64 for s in cut.sequences)
    kept_prompt = cut.sequences[0][: len(cut.sequences[0]) - n_short]
    assert len(kept_prompt) == 32  # half of max_length by default
    assert cut.sequences[1][:32] == kept_prompt == full.sequences[0][len(full.sequences[0]) - n_short - 32: -n_short]
    # an explicit max_prompt_length caps the prompt even when everything fits, again alike for both
    capped = tokenize_example(row, tok, 4096, 8)
    n_prompt = len(full.sequences[0]) - n_short
    assert [len(s) for s in capped.sequences] == [8 + n_short, 8 + len(full.sequences[1]) - n_prompt]
    assert capped.sequences[0][:8] == capped.sequences[1][:8] == kept_prompt[-8:]


def test_collator_layout():
    batch = RewardCollator(pad_id=0)([RewardExample([[5, 6, 7], [8]], 1.5), RewardExample([[9, 9], [3], [4, 4]])])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0], [9, 9, 0], [3, 0, 0], [4, 4, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 0, 0], [1, 1, 0]]
    assert batch["index"].tolist() == [[0, 1, -1], [2, 3, 4]]
    assert batch["margin"].tolist() == [1.5, 0.0]
    assert batch["num_items"] == 2 and batch["num_tokens"] == 9


def test_shared_collator_layout():
    """One padding-free row: each example's common prefix once (one short of its shortest sequence), then every
    sequence's tail with positions continuing the prefix; `last` is each sequence's last token in the row."""
    examples = [RewardExample([[5, 6, 7, 1], [5, 6, 2]], 1.5), RewardExample([[9, 9], [9, 9, 9], [9, 4]]),
                RewardExample([[3], [8]])]
    batch = RewardCollator(0, spans=True, pad_to_multiple_of=8)(examples)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 1, 2, 9, 9, 9, 9, 4, 3, 8, 0, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 2, 0, 1, 1, 2, 1, 0, 0, 0, 1, 2, 3]]
    assert batch["last"].tolist() == [3, 4, 6, 8, 9, 10, 11]
    assert [(s.q0, s.q1, s.keys) for s in batch["attn_spans"]] == [
        (0, 4, ((0, 4),)), (4, 5, ((0, 2), (4, 5))),                          # [5 6 | 7 1], [5 6 | 2]
        (5, 7, ((5, 7),)), (7, 9, ((5, 6), (7, 9))), (9, 10, ((5, 6), (9, 10))),  # [9 | 9], [9 | 9 9], [9 | 4]
        (10, 11, ((10, 11),)), (11, 12, ((10, 10), (11, 12))),                # no shared prefix
        (12, 16, ((12, 16),))]                                                # the pad tail
    assert batch["index"].tolist() == [[0, 1, -1], [2, 3, 4], [5, 6, -1]]
    assert batch["num_tokens"] == 4 + 3 + 2 + 3 + 2 + 1 + 1 and batch["attention_mask"] is None


@pytest.mark.parametrize("loss", ["bradley_terry", "plackett_luce"])
def test_shared_row_gives_the_padded_rows_scores_and_gradients(loss):
    """The prefix-shared row (recipes/reward.py's default) against right-padded rows: the same loss, metrics and
    gradients, on lists whose completions share a prompt, one completion being a prefix of another."""
    prompt = [7, 3, 9, 12, 4]
    examples = [RewardExample([prompt + [5, 6, 7, 8], prompt + [9, 10]], 0.5),
                RewardExample([prompt[:3] + [11, 12], prompt[:3] + [11, 12, 13, 14]]),
                RewardExample([[20, 21], [22, 23, 24]])]
    if loss == "plackett_luce":
        examples[0].sequences.append(prompt + [30, 31, 32])
    results = []
    for spans in (False, True):
        torch.manual_seed(0)
        model = load_scorer("tiny-random")
        out, m = RewardStep(loss)(model, RewardCollator(0, spans=spans, pad_to_multiple_of=8)(examples))
        out.backward()
        results.append((out.detach(), m, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (a, ma, ga), (b, mb, gb) = results
    assert float(b) == pytest.approx(float(a), abs=1e-6)
    for key in ma:
        assert float(mb[key]) == pytest.approx(float(ma[key]), abs=1e-6)
    for name in ga:
        torch.testing.assert_close(gb[name], ga[name], atol=1e-6, rtol=1e-4, msg=name)


def test_ranking_metrics_by_hand():
    """Row 1: best 3 vs [1, 0] -> wins, rejected mean 0.5; row 2: best 0 vs [2] (third slot absent) -> loses,
    rejected 2. accuracy 1/2, chosen (3+0)/2 = 1.5, rejected (0.5+2)/2 = 1.25, margin (2.5 - 2)/2 = 0.25."""
    scores = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 99.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    m = ranking_metrics(scores, mask)
    assert [round(float(m[k]), 6) for k in ("accuracy", "chosen_score", "rejected_score", "margin")] == [
        0.5, 1.5, 1.25, 0.25]


def _alone(scorer, seqs):
    """Each sequence scored on its own (no padding), the reference for batched scoring."""
    with torch.no_grad():
        return torch.stack([score(scorer, torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long))[0] for s in seqs])


def test_bradley_terry_step_with_margin_matches_the_formula(scorer):
    """loss = mean_b -log s(r_c - r_r - m_b) with r scored one sequence at a time; a pair without margin uses 0."""
    examples = [RewardExample([[5, 6, 7, 8], [9, 10]], 0.5), RewardExample([[11, 12], [13, 14, 15, 16, 17]])]
    batch = RewardCollator(0)(examples)
    r = _alone(scorer, [s for ex in examples for s in ex.sequences])
    with torch.no_grad():
        loss, m = RewardStep("bradley_terry")(scorer, batch)
        plain, _ = RewardStep("bradley_terry", use_margin=False)(scorer, batch)
    d = [float(r[0] - r[1]), float(r[2] - r[3])]
    sp = lambda x: math.log1p(math.exp(-x))  # noqa: E731  -log s(x)
    assert float(loss) == pytest.approx((sp(d[0] - 0.5) + sp(d[1])) / 2, abs=1e-5)
    assert float(plain) == pytest.approx((sp(d[0]) + sp(d[1])) / 2, abs=1e-5)
    assert float(m["margin"]) == pytest.approx(sum(d) / 2, abs=1e-5)
    assert float(m["accuracy"]) == (d[0] > 0) / 2 + (d[1] > 0) / 2


def test_centring_adds_c_times_mean_square_sum(scorer):
    examples = [RewardExample([[5, 6, 7], [9, 10]]), RewardExample([[11, 12], [13, 14, 15]])]
    batch = RewardCollator(0)(examples)
    r = _alone(scorer, [s for ex in examples for s in ex.sequences])
    with torch.no_grad():
        base, _ = RewardStep("bradley_terry")(scorer, batch)
        centred, _ = RewardStep("bradley_terry", center_coef=0.1)(scorer, batch)
    extra = 0.1 * (float(r[0] + r[1]) ** 2 + float(r[2] + r[3]) ** 2) / 2
    assert float(centred - base) == pytest.approx(extra, abs=1e-5)


def test_plackett_luce_step_on_ragged_lists(scorer):
    """A 3-list and a 2-list in one batch: the step's loss is plackett_luce of the sequences' own scores."""
    examples = [RewardExample([[5, 6, 7], [9, 10], [20, 21, 22, 23]]), RewardExample([[11, 12], [13, 14, 15]])]
    batch = RewardCollator(0)(examples)
    r = _alone(scorer, [s for ex in examples for s in ex.sequences])
    with torch.no_grad():
        loss, m = RewardStep("plackett_luce")(scorer, batch)
    want, _ = plackett_luce(torch.stack([r[:3], torch.cat([r[3:], r[:1]])]), torch.tensor([[1, 1, 1], [1, 1, 0]]))
    assert float(loss) == pytest.approx(float(want.mean()), abs=1e-5)
    # the 2-list's term is Bradley-Terry of its pair
    bt, _ = bradley_terry(r[3:4], r[4:5])
    assert float(want[1]) == pytest.approx(float(bt[0]), abs=1e-6)
    assert float(m["chosen_score"]) == pytest.approx(float(r[0] + r[3]) / 2, abs=1e-5)


def test_step_gradients_reach_the_head(scorer):
    model = load_scorer("tiny-random")
    batch = RewardCollator(0)([RewardExample([[5, 6, 7], [9, 10]])])
    loss, _ = RewardStep("bradley_terry")(model, batch)
    loss.backward()
    assert model.score.weight.grad.abs().sum() > 0


def test_bradley_terry_refuses_unsplit_lists(scorer):
    batch = RewardCollator(0)([RewardExample([[5], [6], [7]])])
    with pytest.raises(AlignlabError, match="needs pairs"):
        RewardStep("bradley_terry")(scorer, batch)


@pytest.mark.parametrize("overrides, message", [
    (["loss=plackett_luce", "center_coef=0.01"], "bradley_terry pairs only"),
    (["center_coef=-1"], "must not be negative"),
    (["max_length=128", "max_prompt_length=128"], "max_prompt_length"),
    (["loss=listnet"], "not one of the allowed values"),
])
def test_config_checks(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(RewardConfig, None, overrides)


def test_columns_from_the_command_line():
    cfg = load_config(RewardConfig, None, ["columns.prompt=Question", "columns.chosen=Best Answer"])
    assert cfg.columns == {"prompt": "Question", "chosen": "Best Answer"}


def test_a_bpe_merge_across_one_completions_boundary_does_not_shift_the_cut(tok):
    # "the ca" + "t" merges across the boundary (tiny-random's BPE): tokenised alone, that completion's prompt was
    # a token shorter, so the keep-end window started a token later for it than for the other completion
    prompt = "one two three four five six seven eight nine ten eleven twelve the ca"
    row = ranked_row({"prompt": prompt, "completions": ["t sat on the mat " * 4, "! short"]}, ORIGIN)
    cut = tokenize_example(row, tok, 40, 8)
    assert cut.sequences[0][:7] == cut.sequences[1][:7]  # the same 7 prompt tokens before the merged one
    assert all(len(s) <= 40 for s in cut.sequences)
