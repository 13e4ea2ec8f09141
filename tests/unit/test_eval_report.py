"""The eval report: the HTML holds the numbers, escapes model text, embeds and writes valid PNGs, and
never shows the value of an API-key environment variable."""

import base64
import re

from alignlab.eval.report import redact, secret_values, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _payload(secret: str) -> dict:
    hostile = "<script>alert('x')</script> & \"quotes\""
    return {
        "config": {"checkpoints": ["policy<b>"], "evaluations": [{"judge": {"api_key_env": "ALIGNLAB_REPORT_KEY"}}]},
        "seconds": 1.5,
        "results": [
            {"evaluation": "win_rate", "kind": "win_rate", "model": "policy<b>", "metric": "win_rate",
             "value": 0.625, "low": 0.375, "high": 0.875, "n": 8,
             "details": {"malformed": {"no_verdict": 3}, "outcomes": [1, 0],
                         "examples": [{"prompt": hostile, "answer_a": hostile, "answer_b": "b",
                                       "outcome": 1.0, "judge": {"ab": f"[[A]] echo {secret}"}}]}},
            {"evaluation": "kl", "kind": "kl", "model": "policy<b>", "metric": "kl_k3", "value": 0.0421,
             "low": 0.01, "high": 0.07, "n": 4, "details": {"k1": 0.05}},
            {"evaluation": "undecided", "kind": "win_rate", "model": "m", "metric": "win_rate", "value": None,
             "low": None, "high": None, "n": 0, "details": {"malformed": {"empty": 2}}},
        ],
    }


def test_report_renders_numbers_escapes_text_and_writes_pngs(tmp_path, monkeypatch):
    secret = "sk-report-SECRET-42"
    monkeypatch.setenv("ALIGNLAB_REPORT_KEY", secret)
    path = write_report(_payload(secret), tmp_path)
    page = path.read_text(encoding="utf-8")
    for number in ("0.625", "0.375", "0.875", "0.0421", "no_verdict"):
        assert number in page
    assert "<script>" not in page and "&lt;script&gt;" in page  # model text is escaped, never executed
    assert "policy&lt;b&gt;" in page and "policy<b>" not in page
    assert secret not in page and "[redacted]" in page
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert pngs == ["all_checkpoints.png", "kl.png", "win_rate.png"]  # all-undecided: nothing to plot
    for p in (tmp_path / "plots").glob("*.png"):
        assert p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 1000
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(embedded) == 3 and all(base64.b64decode(e)[:8] == PNG_MAGIC for e in embedded)
    assert "http://" not in page.replace("http://www.w3.org", "")  # self-contained: nothing fetched


def test_secret_values_and_redact(monkeypatch):
    monkeypatch.setenv("K1", "abcdef")
    monkeypatch.delenv("K2", raising=False)
    cfg = {"a": [{"api_key_env": "K1"}, {"judge": {"api_key_env": "K2"}}], "api_key_env": None}
    assert secret_values(cfg) == ["abcdef"]
    assert redact("x abcdef y", ["abcdef"]) == "x [redacted] y"
    assert redact("a b c", ["a"]) == "a b c"  # too short to be a key; ordinary text stays


def test_report_shows_judged_examples_and_plots_checkpoints_together(tmp_path):
    """Issue 15 item 10: examples are a visible table (prompt, both answers, outcome, verdict), not raw JSON;
    one overview plot holds every checkpoint of every evaluation."""
    from alignlab.eval.report import plot_checkpoints

    results = []
    for step, (wr, kl) in enumerate([(0.5, 0.0), (0.6, 0.02), (0.7, 0.05)]):
        model = f"runs/dpo/checkpoint-{10 * (step + 1)}"
        results.append({"evaluation": "win_rate", "kind": "win_rate", "model": model, "metric": "win_rate",
                        "value": wr, "low": wr - 0.1, "high": wr + 0.1, "n": 16,
                        "details": {"baseline": "sft", "examples": [
                            {"prompt": "Say hi", "answer_a": f"hi from {step}", "answer_b": "hello",
                             "outcome": 1.0, "judge": {"ab": "[[A]] is friendlier", "ba": "[[B]]"}}]}})
        results.append({"evaluation": "kl", "kind": "kl", "model": model, "metric": "kl_k3", "value": kl,
                        "low": None, "high": None, "n": 8, "details": {}})
    page = write_report({"config": {}, "seconds": 1.0, "results": results}, tmp_path).read_text()
    assert "<table class='examples'>" in page and "A wins" in page and "hi from 2" in page
    assert "[[A]] is friendlier" in page and "answer B (sft)" in page
    assert page.index("<table class='examples'>") < page.index("<summary>all details</summary>")
    assert (tmp_path / "plots" / "all_checkpoints.png").read_bytes()[:8] == PNG_MAGIC
    assert plot_checkpoints([{**results[1], "value": None}], tmp_path / "none.png") is None
