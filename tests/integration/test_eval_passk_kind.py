"""`alignlab eval` kind passk on tiny-random and a GSM8K-style file made here: the records, their standard
errors and intervals worked out by hand, the reward seeing each problem's own record columns, the report, the
`alignlab passk` shorthand giving the same numbers, and passk keys refused where they would be ignored."""

import json

import pytest
import yaml

from alignlab.cli import main
from alignlab.config import ConfigError, from_dict
from alignlab.errors import AlignlabError
from alignlab.eval.runner import EvalConfig

PROBLEMS = [("Janet has 16 eggs and eats 3. How many are left?", "16 - 3 = 13\n#### 13", "yes"),
            ("Tom has 2 apples and buys 5 more. How many now?", "2 + 5 = 7\n#### 7", "yes"),
            ("A train goes 60 km in 1 hour. How far in 3 hours?", "60 * 3 = 180\n#### 180", "no")]

# tiny-random answers noise, so the reward reads the problem's own `tests` column: problems 1 and 2 are
# solved by every sample, problem 3 by none. Any misalignment of samples and records changes pass@k.
REWARD = '''
def reward(prompts, completions, answer, tests, **_):
    assert len(prompts) == len(completions) == len(answer) == len(tests)
    return [1.0 if t == "yes" else 0.0 for t in tests]
'''


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("passk")
    data = tmp / "gsm.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": a, "tests": t}) + "\n" for q, a, t in PROBLEMS))
    (tmp / "reward_fn.py").write_text(REWARD)
    return {"dir": tmp, "data": str(data), "reward": f"{tmp / 'reward_fn.py'}:reward"}


def _spec(files: dict, **passk) -> dict:
    return {"kind": "passk", "name": "gsm", "data": files["data"], "reward": files["reward"],
            "sampling": {"max_new_tokens": 4, "temperature": 1.0, "seed": 0},
            "passk": {"n": 2, "k": [1, 2], "fields": ["tests"], **passk}}


def test_eval_passk_records_report_and_shorthand(files, capsys):
    """Per-problem pass@k (1, 1, 0) for every k: mean 2/3; sample variance ((1/3)^2 * 2 + (2/3)^2) / 2 = 1/3,
    standard error sqrt(1/3 / 3) = 1/3; interval [2/3 - 1.96/3, min(1, 2/3 + 1.96/3)] = [0.01333, 1]."""
    out = files["dir"] / "eval"
    cfg = {"checkpoints": ["tiny-random"], "device": "cpu", "output_dir": str(out),
           "evaluations": [_spec(files), {**_spec(files), "name": "gsm_math", "reward": "math",
                                          "passk": {"n": 2, "k": [2], "majority": False}}]}
    (files["dir"] / "eval.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["eval", "--config", str(files["dir"] / "eval.yaml")]) == 0
    payload = json.loads((out / "eval.json").read_text())
    by = {r["evaluation"]: r for r in payload["results"]}
    assert sorted(by) == ["gsm/maj@1", "gsm/maj@2", "gsm/pass@1", "gsm/pass@2", "gsm_math/pass@2"]
    for label in ("gsm/pass@1", "gsm/pass@2"):
        r = by[label]
        assert r["kind"] == "passk" and r["model"] == "tiny-random" and r["n"] == 3
        assert r["value"] == pytest.approx(2 / 3) and r["details"]["se"] == pytest.approx(1 / 3)
        assert r["low"] == pytest.approx(2 / 3 - 1.96 / 3) and r["high"] == 1.0
    details = by["gsm/pass@1"]["details"]
    assert details["pass@2_se"] == pytest.approx(1 / 3) and details["n"] == 2 and details["problems"] == 3
    assert details["mean_reward"] == pytest.approx(2 / 3) and details["rows"] == 3
    assert 0.0 <= by["gsm/maj@2"]["value"] <= 2 / 3  # votes over noise: at most the problems solved
    assert 0.0 <= by["gsm_math/pass@2"]["value"] <= 1.0 and "maj@2" not in {r["metric"] for r in by.values()
                                                                           if r["evaluation"].startswith("gsm_math")}
    page = (out / "report.html").read_text()
    assert "gsm/pass@1" in page and "gsm/maj@2" in page and "pass@1_se" in page
    capsys.readouterr()
    # the shorthand runs the same evaluation: same numbers (same sampling, same seed, same problems)
    assert main(["passk", "model=tiny-random", f"data={files['data']}", f"reward={files['reward']}", "n=2",
                 "k=[1,2]", "fields=[answer,tests]", "max_new_tokens=4", "device=cpu"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["pass@1"] == pytest.approx(2 / 3) and line["pass@2_se"] == pytest.approx(1 / 3)
    assert line["problems"] == 3 and line["model"] == "tiny-random" and "maj@2" in line


def test_passk_keys_are_checked(files):
    base = {"checkpoints": ["tiny-random"]}
    with pytest.raises(ConfigError, match="bogus"):
        from_dict(EvalConfig, {**base, "evaluations": [_spec(files, bogus=1)]})
    for bad, match in (({"passk": {"n": 2, "k": [3]}}, "every k in"), ({"reward": None}, "needs reward"),
                       ({"kind": "mean_reward", "passk": {"n": 9}}, "kind passk only")):
        with pytest.raises(AlignlabError, match=match):
            from_dict(EvalConfig, {**base, "evaluations": [{**_spec(files), **bad}]}).evaluations[0].validate()


def test_a_missing_reward_column_names_the_record(files, tmp_path):
    cfg = from_dict(EvalConfig, {"checkpoints": ["tiny-random"], "device": "cpu", "output_dir": str(tmp_path),
                                 "evaluations": [_spec(files, fields=["tests", "solution"])]})
    from alignlab.eval.runner import run

    with pytest.raises(AlignlabError, match=r"gsm.jsonl:1 \(record 0\) has no column 'solution'"):
        run(cfg)


@pytest.mark.slow
def test_eval_passk_on_real_gsm8k(data_dir, tmp_path):
    """A config file naming gsm8k/test.jsonl resolves it under $ALIGNLAB_DATA; the rows' reference is GSM8K's
    final answer, which the math reward accepts for itself (a reward fed the reference scores 1)."""
    if not (data_dir / "gsm8k" / "test.jsonl").is_file():
        pytest.skip("GSM8K test split not found under $ALIGNLAB_DATA")
    from alignlab.config import load_config
    from alignlab.eval.runner import run

    (tmp_path / "eval.yaml").write_text(yaml.safe_dump({
        "checkpoints": ["tiny-random"], "device": "cpu", "output_dir": str(tmp_path / "out"), "report": False,
        "evaluations": [{"kind": "passk", "data": "gsm8k/test.jsonl", "data_offset": 5, "data_limit": 3,
                         "reward": "math", "passk": {"n": 2, "k": [1, 2]},
                         "sampling": {"max_new_tokens": 8, "temperature": 1.0, "seed": 0}}]}))
    cfg = load_config(EvalConfig, tmp_path / "eval.yaml")
    assert cfg.evaluations[0].data == str(data_dir.resolve() / "gsm8k" / "test.jsonl")
    payload = run(cfg)
    by = {r["evaluation"]: r for r in payload["results"]}
    assert set(by) == {"passk/pass@1", "passk/pass@2", "passk/maj@1", "passk/maj@2"}
    assert all(r["n"] == 3 and 0.0 <= r["value"] <= 1.0 for r in by.values())
    assert by["passk/pass@1"]["value"] <= by["passk/pass@2"]["value"]
    from alignlab.data.sources import load_rows
    from alignlab.rollout.rewards import get_reward

    rows = load_rows(cfg.evaluations[0].data, task="prompt", limit=8).rows[5:8]
    answers = [r.answer for r in rows]
    assert get_reward("math")([r.prompt for r in rows], [f"The answer is {a}." for a in answers],
                              answer=answers) == [1.0, 1.0, 1.0]
