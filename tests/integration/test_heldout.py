"""Held-out honesty end to end: `alignlab sft` writes split.json, and `alignlab eval` warns when it scores
records the checkpoint's run trained on, and is quiet on records past the run's data_limit."""

import json

import yaml

from alignlab.cli import main


def _sft_file(path, n=24):
    rows = [{"prompt": f"Say {i}:", "completion": f" number {i} is here."} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _eval(tmp_path, checkpoint, data, offset, name):
    cfg = {"checkpoints": [checkpoint], "output_dir": str(tmp_path / name), "report": False,
           "evaluations": [{"kind": "perplexity", "data": data, "data_offset": offset, "data_limit": 4}]}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return main(["eval", "--config", str(path)])


def test_eval_warns_on_trained_records_only(tmp_path, capsys):
    data, out = _sft_file(tmp_path / "sft.jsonl"), tmp_path / "run"
    assert main(["sft", "model=tiny-random", f"data={data}", f"output_dir={out}", "data_limit=16", "eval_split=0.25",
                 "max_eval_rows=1", "max_steps=1", "batch_size=2", "progress=none", "cpu_threads=1"]) == 0
    (split,) = json.loads((out / "split.json").read_text())["sources"]
    assert len(split["train_records"]) == 12 and len(split["held_out_records"]) == 4
    assert max(split["train_records"] + split["held_out_records"]) == 15
    capsys.readouterr()
    assert _eval(tmp_path, str(out), data, 0, "leaky") == 0
    err = capsys.readouterr().err
    assert "trained on" in err and "not held-out" in err
    trained_in_0_3 = len(set(split["train_records"]) & {0, 1, 2, 3})
    assert f"scores {trained_in_0_3} of 4 records" in err
    assert json.loads((tmp_path / "leaky" / "eval.json").read_text())["warnings"]
    assert _eval(tmp_path, str(out), data, 16, "clean") == 0  # records 16..19: past data_limit
    assert "trained on" not in capsys.readouterr().err


def test_sft_on_a_mixture_reports_and_saves_each_source(tmp_path, capsys):
    a, b = _sft_file(tmp_path / "a.jsonl", 20), _sft_file(tmp_path / "b.jsonl", 8)
    out = tmp_path / "mix"
    assert main(["sft", "model=tiny-random", f"data=[{{path: {a}, weight: 0.5}}, {{path: {b}, weight: 2}}]",
                 f"output_dir={out}", "eval_split=0.25", "max_steps=1", "batch_size=2", "progress=none",
                 "cpu_threads=1"]) == 0
    assert "data mixture:" in capsys.readouterr().out
    parts = json.loads((out / "split.json").read_text())["sources"]
    assert [(p["data"], p["weight"], p["train_rows"], len(p["held_out_records"])) for p in parts] == [
        (a, 0.5, 8, 5), (b, 2.0, 12, 2)]


def test_a_scorer_or_baseline_trained_on_the_scored_records_is_warned_about(tmp_path):
    # only the checkpoints' split.json was read: a reward model given as `scorer:` (reward_accuracy measures it), or
    # a baseline (win_rate, ratings: rated too) scoring its own training records gave no warning
    from types import SimpleNamespace

    from alignlab.data.prepare import file_sha256, write_split
    from alignlab.eval.leakage import leak_warnings

    data = _sft_file(tmp_path / "d.jsonl")
    for run in ("rm", "base", "ckpt"):
        write_split(tmp_path / run, {"sources": [{"data": data, "sha256": file_sha256(data),
                                                 "train_records": [0, 1] if run != "ckpt" else []}]}, resuming=False)
    spec = lambda kind, **kw: SimpleNamespace(kind=kind, name=None, data=data, scorer=kw.get("scorer"),  # noqa: E731
                                              baseline=kw.get("baseline"))
    evals = [spec("reward_accuracy", scorer=str(tmp_path / "rm")), spec("ratings"), spec("win_rate"), spec("kl")]
    cfg = SimpleNamespace(evaluations=evals, checkpoints=[str(tmp_path / "ckpt")], baseline=str(tmp_path / "base"))
    lines = leak_warnings(cfg, {id(e): [0, 1, 2] for e in evals})
    assert [line.split(" scores")[0] for line in lines] == [
        "warning: evaluation reward_accuracy", "warning: evaluation ratings", "warning: evaluation win_rate"]
    assert "rm's run trained on (scorer; records 0..1" in lines[0] and "(baseline; records 0..1" in lines[1]
