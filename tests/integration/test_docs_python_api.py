"""docs/python_api.md cannot rot: its ```python blocks run, in order and in one namespace, on tiny-random."""

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "python_api.md"


def blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", DOC.read_text(encoding="utf-8"), flags=re.S | re.M)


def test_the_page_has_the_promised_examples():
    code = "\n".join(blocks())
    for needle in ("alignlab.sft(", "alignlab.dpo(", "datasets.Dataset", "model.model.layers", "alignlab.evaluate(",
                   '"judge"', "alignlab.Callback", "alignlab.generate(",
                   "alignlab.grpo(", "def prefers_short"):
        assert needle in code, needle


def test_every_example_runs(tmp_path, monkeypatch, capsys):
    import torch

    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "python_api_doc"}
    for i, code in enumerate(blocks()):
        try:
            exec(compile(code, f"{DOC.name} block {i + 1}", "exec"), namespace)
        except Exception as e:  # name the block that broke
            pytest.fail(f"{DOC.name} block {i + 1} failed: {type(e).__name__}: {e}\n{code}")
    out = capsys.readouterr().out
    assert "win_rate" in out and (tmp_path / "runs" / "eval" / "eval.json").is_file()
    assert (tmp_path / "runs" / "dpo" / "report.html").is_file() and (tmp_path / "both.html").is_file()
