"""`alignlab demo` end to end: a fast run on tiny-random checks the outputs and that their numbers agree;
the real SmolLM2 run (slow) checks the acceptance: DPO raises the mean reward with a win-rate interval
above 0.5."""

import json

import pytest

from alignlab.cli import main

TINY = ["model=tiny-random", "train_prompts=32", "samples_per_prompt=6", "eval_prompts=6", "eval_samples=2",
        "progress_prompts=3", "max_new_tokens=10", "batch_size=4", "epochs=2", "eval_steps=2", "cpu_threads=1",
        "progress=none", "learning_rate=1e-2"]


def _check_consistent(out, cfg: dict) -> dict:
    """Every file is there and the numbers in results.json agree with each other and with metrics.jsonl."""
    res = json.loads((out / "results.json").read_text())
    page = (out / "report.html").read_text()
    assert (out / "plots" / "training.png").stat().st_size > 1000
    assert "data:image/png;base64," in page and "implicit reward" in page
    n = cfg["eval_prompts"] * cfg["eval_samples"]
    base, trained, wr = res["base"], res["trained"], res["win_rate"]
    assert base["n"] == trained["n"] == wr["n"] == n == len(base["rewards"]) == len(trained["rewards"])
    assert base["mean_reward"] == pytest.approx(sum(base["rewards"]) / n)
    assert trained["mean_reward"] == pytest.approx(sum(trained["rewards"]) / n)
    # the reward judge's hard outcomes are exactly the per-sample reward comparisons
    wins = sum(t > b for t, b in zip(trained["rewards"], base["rewards"]))
    ties = sum(t == b for t, b in zip(trained["rewards"], base["rewards"]))
    assert (wr["wins"], wr["ties"], wr["losses"]) == (wins, ties, n - wins - ties)
    assert wr["rate"] == pytest.approx((wins + 0.5 * ties) / n)
    assert wr["low"] <= wr["rate"] <= wr["high"]
    assert trained["kl_k3"] >= 0
    lc = res["lc_win_rate"]  # the GLM on the same outcomes: n decided prompts, rate inside its interval
    assert lc["n"] == n and lc["low"] <= lc["rate"] <= lc["high"] and "length-controlled win rate" in page
    evals = res["train"]["evals"]
    assert evals[0]["step"] == 0 and evals[0]["eval_kl"] == 0.0  # untrained adapter: policy == base exactly
    assert evals[-1]["step"] == res["train"]["steps"]
    logged = [json.loads(line) for line in (out / "model" / "metrics.jsonl").read_text().splitlines()]
    assert [r["eval_reward"] for r in logged if "eval_reward" in r] == [e["eval_reward"] for e in evals]
    assert (out / "model" / "adapter_config.json").is_file()
    lines = (out / "preferences.jsonl").read_text().splitlines()
    assert all(json.loads(x)["score_chosen"] > json.loads(x)["score_rejected"] for x in lines)
    return res


def test_tiny_demo_writes_consistent_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", f"output_dir={out}", *TINY]) == 0
    res = _check_consistent(out, {"eval_prompts": 6, "eval_samples": 2})
    assert res["train"]["steps"] >= 2
    printed = capsys.readouterr().out
    assert "report:" in printed and str((out / "report.html").resolve()) in printed.replace("\n", "")
    # alignlab explain on the demo's own adapter and pairs: chosen and rejected of one row, as HTML too
    page = tmp_path / "explain.html"
    assert main(["explain", str(out / "model"), "--data", str(out / "preferences.jsonl"), "--limit", "1",
                 "--html", str(page)]) == 0
    html = page.read_text()
    assert html.count("<small>implicit reward") == 2 and "<span title=" in html
    assert "row 0 chosen" in capsys.readouterr().out


def test_demo_rejects_overlapping_prompt_sets(tmp_path, capsys):
    assert main(["demo", f"output_dir={tmp_path}", "train_prompts=700", "eval_prompts=100"]) == 2
    assert "712" in capsys.readouterr().err


@pytest.mark.slow
def test_smollm2_demo_beats_the_base_model(tmp_path):
    """The acceptance run with the shipped defaults (minutes on 2 cores)."""
    out = tmp_path / "demo"
    assert main(["demo", f"output_dir={out}"]) == 0
    res = _check_consistent(out, {"eval_prompts": 96, "eval_samples": 2})
    assert res["trained"]["mean_reward"] > res["base"]["mean_reward"]
    assert res["win_rate"]["low"] > 0.5
