"""`alignlab eval --config` on tiny models: eval.json has the expected records, and each number agrees
with an independent computation (plain HF forward + log-softmax) or with the measure's own function; an
LLM judge over `alignlab serve` whose replies are garbage is counted, reported, and does not stop the run;
the judge's API key never reaches eval.json, the report or the console."""

import json
import math
import threading
import typing
from pathlib import Path

import pytest
import torch
import yaml

from alignlab.cli import main
from alignlab.config import load_config
from alignlab.eval.runner import EvalConfig
from alignlab.eval.winrate import win_rate

ROOT = Path(__file__).resolve().parents[2]
SECRET = "sk-eval-SECRET-9876543210"

PROMPTS = [{"prompt": [{"role": "user", "content": q}]} for q in
           ("Tell me about cats.", "Why is the sky blue?", "Write a happy sentence.")]
PAIRS = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in (
    ("The weather today is", " sunny and warm.", " purple elephants."),
    ("My favourite food is", " pasta with tomato.", " the number seven."),
    ("Cats like to", " sleep in the sun.", " fly to the moon."),
    ("Water boils at", " one hundred degrees.", " a quiet banana."))]
SFT = [{"prompt": p, "completion": c} for p, c in (
    ("Say hello:", " Hello there, nice to meet you."), ("Count to three:", " one, two, three."))]


def _jsonl(path: Path, rows: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from alignlab.models.heads import load_scorer
    from alignlab.models.load import load_model, load_tokenizer
    from alignlab.serve import ModelServer, base_url, make_http_server

    tmp = tmp_path_factory.mktemp("eval")
    base, tok = load_model("tiny-random"), load_tokenizer("tiny-random")
    perturbed = load_model("tiny-random")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a "trained" policy: the reference plus small noise
        for p in perturbed.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    perturbed.save_pretrained(tmp / "policy")
    tok.save_pretrained(tmp / "policy")
    torch.manual_seed(0)
    scorer = load_scorer("tiny-random")
    scorer.save_pretrained(tmp / "scorer")
    tok.save_pretrained(tmp / "scorer")
    httpd = make_http_server(ModelServer(base, tok, model_id="tiny-random"), "127.0.0.1", 0, quiet=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield {"dir": tmp, "policy": str(tmp / "policy"), "scorer": str(tmp / "scorer"), "url": base_url(httpd),
           "prompts": _jsonl(tmp / "prompts.jsonl", PROMPTS), "pairs": _jsonl(tmp / "pairs.jsonl", PAIRS),
           "sft": _jsonl(tmp / "sft.jsonl", SFT), "base": base, "tok": tok}
    httpd.shutdown()
    httpd.server_close()


def _config(s: dict) -> dict:
    sampling = {"max_new_tokens": 6, "temperature": 1.0, "seed": 0}
    return {
        "checkpoints": [s["policy"], "tiny-random"], "baseline": "tiny-random", "reference": "tiny-random",
        "device": "cpu", "n_boot": 100,
        "evaluations": [
            {"kind": "dpo_accuracy", "data": s["pairs"], "beta": 0.5},
            {"kind": "reward_accuracy", "data": s["pairs"], "scorer": s["scorer"]},
            {"kind": "kl", "data": s["prompts"], "samples": 2, "sampling": sampling},
            {"kind": "perplexity", "data": s["sft"]},
            {"kind": "win_rate", "name": "wr_sentiment", "data": s["prompts"], "sampling": sampling,
             "judge": {"kind": "function", "reward": "sentiment"}},
            {"kind": "win_rate", "name": "wr_llm", "data": s["prompts"], "sampling": sampling,
             "judge": {"kind": "llm", "base_url": s["url"], "model_name": "tiny-random", "max_tokens": 4,
                       "api_key_env": "ALIGNLAB_EVAL_TEST_KEY"}},
            {"kind": "ratings", "data": s["prompts"], "sampling": sampling,
             "judge": {"kind": "function", "reward": "sentiment", "score_mode": "soft"}},
            {"kind": "mean_reward", "data": s["prompts"], "reward": "sentiment", "sampling": sampling},
            {"kind": "grade", "data": s["prompts"], "sampling": sampling,
             "judge": {"kind": "llm", "base_url": s["url"], "model_name": "tiny-random", "max_tokens": 4}},
        ],
    }


@pytest.fixture(scope="module")
def evaluated(setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    cfg_path = out / "eval.yaml"
    cfg_path.write_text(yaml.safe_dump(_config(setup)), encoding="utf-8")
    mp = pytest.MonkeyPatch()
    mp.setenv("ALIGNLAB_EVAL_TEST_KEY", SECRET)
    try:
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            code = main(["eval", "--config", str(cfg_path), f"output_dir={out}"])
    finally:
        mp.undo()
    payload = json.loads((out / "eval.json").read_text())
    return {"code": code, "out": out, "console": buf.getvalue(), "payload": payload,
            "by": {(r["evaluation"], r["model"]): r for r in payload["results"]}}


def test_progress_lines_without_a_terminal(evaluated):
    n = len(evaluated["payload"]["config"]["evaluations"])
    lines = [ln for ln in evaluated["console"].splitlines() if ln.startswith("eval ")]
    assert [ln.split(":")[0] for ln in lines] == [f"eval {i}/{n}" for i in range(1, n + 1)]


def test_eval_json_records(evaluated, setup):
    assert evaluated["code"] == 0
    payload = evaluated["payload"]
    assert set(payload) == {"config", "results", "warnings", "seconds"} and payload["warnings"] == []
    names = {"dpo_accuracy", "reward_accuracy", "kl", "perplexity", "wr_sentiment", "wr_llm", "ratings",
             "mean_reward", "grade"}
    assert {r["evaluation"] for r in payload["results"]} == names
    assert len(payload["results"]) == 2 * len(names)
    for r in payload["results"]:
        assert set(r) == {"evaluation", "kind", "model", "metric", "value", "low", "high", "n", "details"}
    assert "alignlab eval" in evaluated["console"] and "perplexity" in evaluated["console"]


def _logps(model, prompt_ids, completion_ids):
    """Summed and per-token log p(completion | prompt) by a plain forward and log_softmax."""
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    return [float(logp[len(prompt_ids) - 1 + t, c]) for t, c in enumerate(completion_ids)]


def test_dpo_accuracy_matches_plain_forward(evaluated, setup):
    """Same model as reference: every implicit reward is 0, accuracy 0 (strictly above), margin 0."""
    from alignlab.data.sources import load_rows
    from alignlab.data.tokenize import tokenize_pair
    from alignlab.models.load import load_model

    same = evaluated["by"][("dpo_accuracy", "tiny-random")]
    assert same["value"] == 0.0 and same["details"]["margin_mean"] == 0.0 and same["n"] == 4
    policy, ref, tok = load_model(setup["policy"]), setup["base"], setup["tok"]
    margins = []
    for row in load_rows(setup["pairs"], task="preference").rows:
        t = tokenize_pair(row, tok, 512)
        r = [0.5 * (sum(_logps(policy, t.prompt_ids, c)) - sum(_logps(ref, t.prompt_ids, c)))
             for c in (t.chosen_ids, t.rejected_ids)]
        margins.append(r[0] - r[1])
    rec = evaluated["by"][("dpo_accuracy", setup["policy"])]
    assert rec["value"] == pytest.approx(sum(m > 0 for m in margins) / 4)
    assert rec["details"]["margin_mean"] == pytest.approx(sum(margins) / 4, rel=1e-4, abs=1e-4)


def test_reward_accuracy_matches_the_scorer(evaluated, setup):
    from alignlab.data.sources import load_rows
    from alignlab.eval.measures import reward_accuracy
    from alignlab.rollout.rewards import get_reward

    rows = load_rows(setup["pairs"], task="preference").rows
    expected = reward_accuracy(get_reward("reward_model", path=setup["scorer"]), rows, n_boot=10)
    for model in (setup["policy"], "tiny-random"):  # the scorer is fixed, so both rows agree
        rec = evaluated["by"][("reward_accuracy", model)]
        assert rec["value"] == expected["accuracy"]
        assert rec["details"]["margin_mean"] == pytest.approx(expected["margin_mean"], rel=1e-5)


def test_kl_is_zero_against_itself_and_positive_otherwise(evaluated, setup):
    same = evaluated["by"][("kl", "tiny-random")]["details"]
    assert same["k1"] == 0.0 and same["k3"] == 0.0 and same["n"] == 6  # 3 prompts x 2 samples
    other = evaluated["by"][("kl", setup["policy"])]["details"]
    assert other["k3"] > 0 and other["n"] == 6 and other["tokens"] <= 6 * 6
    assert evaluated["by"][("kl", setup["policy"])]["value"] == other["k3"]


def test_perplexity_matches_plain_forward(evaluated, setup):
    from alignlab.data.sources import load_rows
    from alignlab.data.tokenize import tokenize_sft

    tok, nll, n = setup["tok"], 0.0, 0
    for row in load_rows(setup["sft"], task="sft").rows:
        t = tokenize_sft(row, tok, 512)
        first = next(i for i, lab in enumerate(t.labels) if lab != -100)
        lps = _logps(setup["base"], t.input_ids[:first], t.input_ids[first:])
        nll, n = nll - sum(lps), n + len(lps)
    rec = evaluated["by"][("perplexity", "tiny-random")]
    assert rec["value"] == pytest.approx(math.exp(nll / n), rel=1e-4)
    assert rec["details"]["tokens"] == n


def test_win_rates_and_ratings(evaluated, setup):
    rec = evaluated["by"][("wr_sentiment", setup["policy"])]
    decided = [o for o in rec["details"]["outcomes"] if o is not None]
    assert rec["value"] == pytest.approx(win_rate(decided, n_boot=10).rate) and rec["n"] == 3
    # Checkpoint == baseline, same sampling seed: identical answers, every prompt a tie.
    assert evaluated["by"][("wr_sentiment", "tiny-random")]["details"]["outcomes"] == [0.5, 0.5, 0.5]
    ratings = [evaluated["by"][("ratings", m)] for m in (setup["policy"], "tiny-random")]
    assert all(r["n"] == 3 for r in ratings)  # 3 prompts, one pair of models
    # Two players: BT ratings differ by 400 log10(s / (1 - s)) with s the policy's mean score.
    s = ratings[0]["details"]["score"]
    if 0 < s < 1:
        assert ratings[0]["value"] - ratings[1]["value"] == pytest.approx(400 * math.log10(s / (1 - s)), abs=0.5)


def test_malformed_llm_judge_replies_are_reported_not_fatal(evaluated, setup):
    for model in (setup["policy"], "tiny-random"):
        grade = evaluated["by"][("grade", model)]
        assert grade["value"] is None and grade["n"] == 0 and sum(grade["details"]["malformed"].values()) == 3
        rec = evaluated["by"][("wr_llm", model)]
        assert rec["value"] is None  # tiny-random never gives a verdict
        assert rec["details"]["undecided"] == 3
        assert sum(rec["details"]["malformed"].values()) == 6  # 3 prompts x both orders
    report = (evaluated["out"] / "report.html").read_text()
    assert "wr_llm" in report and "malformed" in report


def test_secret_never_written_and_report_files(evaluated):
    out = evaluated["out"]
    for text in ((out / "eval.json").read_text(), (out / "report.html").read_text(), evaluated["console"]):
        assert SECRET not in text
    assert "ALIGNLAB_EVAL_TEST_KEY" in (out / "eval.json").read_text()  # the variable's name is fine
    pngs = list((out / "plots").glob("*.png"))
    assert len(pngs) == 8  # every evaluation but wr_llm and grade has a value to plot, + all_checkpoints.png
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


@pytest.mark.parametrize("name", ["eval_tiny.yaml", "eval_llm_judge.yaml"])
def test_shipped_eval_configs_load(name):
    cfg = load_config(EvalConfig, ROOT / "configs" / name)
    assert cfg.checkpoints and cfg.evaluations


def test_one_sample_gets_no_interval_and_eval_json_is_strict_json(tmp_path):
    # a single sample's kl and mean_reward claimed a zero-width 95% interval [v, v], and eval.json held bare NaN
    # (their standard errors), which strict JSON parsers refuse
    import json

    import yaml

    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "Hello"}) + "\n")
    sampling = {"max_new_tokens": 3, "seed": 0}
    cfg = {"checkpoints": ["tiny-random"], "reference": "tiny-random", "output_dir": str(tmp_path / "out"),
           "report": False, "n_boot": 20, "device": "cpu",
           "evaluations": [{"kind": "kl", "data": str(prompts), "samples": 1, "sampling": sampling},
                           {"kind": "mean_reward", "data": str(prompts), "reward": "sentiment", "sampling": sampling}]}
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["eval", "--config", str(tmp_path / "e.yaml")]) == 0

    def refuse(constant):
        raise ValueError(constant)

    results = json.loads((tmp_path / "out" / "eval.json").read_text(), parse_constant=refuse)["results"]
    assert [(r["metric"], r["n"], r["low"], r["high"]) for r in results] == [
        ("kl_k3", 1, None, None), ("mean_reward", 1, None, None)]


def test_bad_rows_and_missing_models_are_refused_before_any_model_loads(tmp_path, monkeypatch):
    """A column mapping that names no column, or a misspelt checkpoint, failed only when its item or model came up,
    after the evaluations before it had run (minutes with real models), and eval.json is written at the end."""
    import alignlab.models.load as load
    from alignlab.errors import AlignlabError
    from alignlab.eval.context import TASKS
    from alignlab.eval.runner import EvaluationSpec, run

    assert set(TASKS) == set(typing.get_args(typing.get_type_hints(EvaluationSpec)["kind"]))  # every kind's rows
    loads: list[str] = []
    monkeypatch.setattr(load, "load_model", lambda name, **kw: loads.append(name))
    sft, pairs = _jsonl(tmp_path / "sft.jsonl", SFT), _jsonl(tmp_path / "pairs.jsonl", PAIRS)
    good = {"kind": "perplexity", "data": sft}
    for checkpoints, bad, match in (
            (["tiny-random"], {"kind": "dpo_accuracy", "data": pairs,
                               "columns": {"prompt": "prompt", "chosen": "Best Answr", "rejected": "rejected"}},
             "Best Answr"),
            (["tiny-random", str(tmp_path / "runs" / "missing")], good, "does not exist")):
        cfg = load_config(EvalConfig, None, [f"checkpoints={json.dumps(checkpoints)}", "reference=tiny-random",
                                              f"output_dir={tmp_path / 'out'}", "report=false",
                                              f"evaluations={json.dumps([good, bad])}"])
        with pytest.raises(AlignlabError, match=match):
            run(cfg)
        assert loads == []
