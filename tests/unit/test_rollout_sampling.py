"""rollout.sampling: best-vs-worst pairs and top-k rejection sampling, written as files the loader reads."""

import json

import pytest
from test_rollout_tiny import tiny_lm

from alignlab.errors import AlignlabError
from alignlab.rollout.generate import SamplingConfig
from alignlab.rollout.sampling import build_records, sample_and_score, write_jsonl


def count_a(prompts, completions, **_):
    """Reward = number of 'a' characters minus a tenth of the length: distinct enough to rank samples."""
    return [c.count("a") - 0.1 * len(c) for c in completions]


def scored(prompts, n=4):
    model, tok = tiny_lm()
    return sample_and_score(model, tok, prompts, count_a, n, SamplingConfig(max_new_tokens=12, seed=1))


def test_preference_pairs_are_best_and_worst_of_each_group():
    prompts = [[{"role": "user", "content": "Say a word"}], [{"role": "user", "content": "Count"}]]
    res = scored(prompts)
    recs = build_records(res, "preference")
    assert len(recs) == 2
    for i, (g, rec) in enumerate(zip(res.groups, recs)):
        pairs = [(r, s.text) for r, s in zip(g.rewards, g.samples) if s.text.strip()]  # empties never compete
        assert len(pairs) >= 2
        best = max(pairs, key=lambda x: x[0])  # equal rewards: the first generated wins
        worst = min(pairs, key=lambda x: x[0])
        assert rec["chosen"] == [{"role": "assistant", "content": best[1]}]
        assert rec["rejected"] == [{"role": "assistant", "content": worst[1]}]
        assert rec["prompt"] == prompts[i]
        assert (rec["score_chosen"], rec["score_rejected"]) == (best[0], worst[0])


def test_sft_keeps_top_k_and_respects_min_reward():
    res = scored(["Once upon", "Hello"], n=4)
    recs = build_records(res, "sft", keep=2)
    assert [r["prompt"] for r in recs] == ["Once upon", "Once upon", "Hello", "Hello"]
    for i, g in enumerate(res.groups):
        top = sorted((r for r, s in zip(g.rewards, g.samples) if s.text.strip()), reverse=True)
        assert [r["reward"] for r in recs[2 * i:2 * i + 2]] == top[:2]
        assert [r["completion"] for r in recs[2 * i:2 * i + 2]] == [
            next(s.text for r, s in zip(g.rewards, g.samples) if s.text.strip() and r == v) for v in top[:2]]
    best = max(r for r, s in zip(res.groups[0].rewards, res.groups[0].samples) if s.text.strip())
    high = build_records(res, "sft", keep=4, min_reward=best)
    assert [r["reward"] for r in high if r["prompt"] == "Once upon"] == [best]
    assert res.dropped["below_min_reward"] >= 1


def test_ties_are_skipped_and_bad_mode_is_an_error():
    res = scored(["x"], n=3)
    res.groups[0].rewards = [1.0, 1.0, 1.0]
    assert build_records(res, "preference") == [] and res.dropped["tie"] == 1
    with pytest.raises(AlignlabError, match="mode"):
        build_records(res, "dpo")
    with pytest.raises(AlignlabError, match="n must be >= 2"):
        scored(["x"], n=1)


def test_files_load_as_preference_and_sft_rows(tmp_path):
    sources = pytest.importorskip("alignlab.data.sources", reason="data layer (load_rows) not present")
    chat = scored([[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "Tell me"}]])
    plain = scored(["plain text prompt", "another one"])
    for name, res in (("chat", chat), ("plain", plain)):
        pref = write_jsonl(tmp_path / f"{name}_pairs.jsonl", build_records(res, "preference"))
        sft = write_jsonl(tmp_path / f"{name}_sft.jsonl", build_records(res, "sft", keep=2))
        rows = sources.load_rows(pref, task="preference").rows
        recs = [json.loads(line) for line in pref.read_text().splitlines()]
        assert len(rows) == len(recs) == 2
        for row, rec in zip(rows, recs):
            assert row.chat == (name == "chat")
            want = rec["chosen"][0]["content"] if row.chat else rec["chosen"]
            assert row.chosen == [{"role": "assistant", "content": want}]
        sft_rows = sources.load_rows(sft, task="sft").rows
        assert len(sft_rows) == 4 and sft_rows[0].messages[-1]["role"] == "assistant"
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files
