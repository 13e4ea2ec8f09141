"""data/prepare.py: the held-out split is decided by eval_split and seed alone (max_eval_rows bounds only what
is scored), it is made by record (the rows of one record never straddle it), data_offset/data_limit name
records of the file, and split.json records what a run trained on."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from alignlab.config import ConfigError
from alignlab.data.prepare import (
    file_sha256,
    read_split,
    run_split,
    slice_records,
    split_eval,
    train_eval_rows,
    trained_records,
)
from alignlab.data.sources import load_rows
from alignlab.errors import AlignlabError
from alignlab.recipes.dpo import DPOConfig


def _pairs(path, n, bad=(), tag="q"):
    lines = [json.dumps({"prompt": f"{tag}{i}", "chosen": f"good {i}", "rejected": f"bad {i}"}) if i not in bad
             else json.dumps({"prompt": f"{tag}{i}"}) for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _cfg(data, **kw):
    base = dict(data=data, eval_data=None, eval_split=0.2, seed=3, max_eval_rows=200, data_offset=0, data_limit=None)
    return SimpleNamespace(**{**base, **kw})


def _load(task="preference", on_bad_row="error"):
    return lambda path: load_rows(path, task=task, on_bad_row=on_bad_row).rows


def _ids(rows):
    return [r.origin.index for r in rows]


def test_max_eval_rows_bounds_what_is_scored_never_what_is_trained(tmp_path):
    """300 records, eval_split 0.2: 60 held out whatever max_eval_rows is (the old code trained on 292 with
    max_eval_rows=8, moving 52 held-out rows into training); only the first 8 held-out rows are scored."""
    data = _pairs(tmp_path / "p.jsonl", 300)
    small = train_eval_rows(_cfg(data, max_eval_rows=8), _load())
    large = train_eval_rows(_cfg(data, max_eval_rows=200), _load())
    assert (len(small.train), len(small.held_out), len(small.scored)) == (240, 60, 8)
    assert _ids(small.train) == _ids(large.train) and _ids(small.held_out) == _ids(large.held_out)
    assert _ids(small.scored) == _ids(large.held_out)[:8]
    assert not set(_ids(small.train)) & set(_ids(small.held_out))


def test_split_is_by_record_and_seeded(tmp_path):
    """Unpaired rows (chosen and rejected of one record) stay on one side; same seed, same split."""
    data = _pairs(tmp_path / "p.jsonl", 40)
    rows = _load("unpaired")(data)
    train, held = split_eval(rows, 0.25, seed=1)
    assert len(held) == 20 and len(train) == 60  # 10 of 40 records, two rows each
    assert not set(_ids(train)) & set(_ids(held))
    assert _ids(split_eval(rows, 0.25, seed=1)[1]) == _ids(held)
    assert _ids(split_eval(rows, 0.25, seed=2)[1]) != _ids(held)
    assert split_eval(rows, 0.0, seed=1) == (rows, [])


def test_data_offset_and_limit_count_records_of_the_file(tmp_path):
    """Records 2 and 5 are bad and skipped; records [3, 7) are 3, 4, 6: indices are those of the file."""
    data = _pairs(tmp_path / "p.jsonl", 10, bad=(2, 5))
    rows = _load(on_bad_row="skip")(data)
    assert _ids(slice_records(rows, 3, 4)) == [3, 4, 6]
    assert _ids(slice_records(rows, 8)) == [8, 9]
    split = train_eval_rows(_cfg(data, data_offset=3, data_limit=4, eval_split=0.0), _load(on_bad_row="skip"))
    assert _ids(split.train) == [3, 4, 6] and split.held_out == []


def test_split_json_names_the_file_its_hash_and_the_records(tmp_path):
    data = _pairs(tmp_path / "p.jsonl", 20)
    split = train_eval_rows(_cfg(data, data_offset=5, data_limit=10, eval_split=0.2, max_eval_rows=1), _load())
    path = split.save(tmp_path / "run")
    saved = json.loads(path.read_text())
    (src,) = saved["sources"]
    assert src["data"] == data and src["sha256"] == file_sha256(data) and len(src["sha256"]) == 64
    assert (src["data_offset"], src["data_limit"], saved["eval_split"], saved["seed"]) == (5, 10, 0.2, 3)
    assert sorted(src["train_records"] + src["held_out_records"]) == list(range(5, 15))
    assert len(src["held_out_records"]) == 2 and saved["scored_rows"] == 1
    assert trained_records(saved, data) == set(src["train_records"])
    assert trained_records(saved, _pairs(tmp_path / "other.jsonl", 3)) == set()  # another file (another hash)
    (tmp_path / "run" / "checkpoint-4").mkdir()
    assert read_split(tmp_path / "run" / "checkpoint-4") == saved  # found from a checkpoint folder too
    assert read_split(tmp_path) is None


def test_mixture_splits_each_source_then_weights_its_training_rows(tmp_path, capsys):
    """a: 20 records, b: 10. eval_split 0.2 holds out 4 of a and 2 of b; weight 0.5 keeps a seeded half of
    a's 16 training rows (8), weight 2 counts b's 8 twice (16): 24 training rows, 6 held out."""
    a, b = _pairs(tmp_path / "a.jsonl", 20), _pairs(tmp_path / "b.jsonl", 10, tag="b")
    mix = [{"path": a, "weight": 0.5}, {"path": b, "weight": 2.0}]
    split = train_eval_rows(_cfg(mix, eval_split=0.2), _load())
    assert (len(split.train), len(split.held_out)) == (24, 6)
    parts = split.info["sources"]
    # train_records: the records a row was trained on (a's weight 0.5 trains 8 of its 16 split records)
    assert [(p["train_rows"], p["split_records"], len(p["train_records"]), len(p["held_out_records"]))
            for p in parts] == [(8, 16, 8, 4), (16, 8, 8, 2)]
    held = {(r.origin.file, r.origin.index) for r in split.held_out}
    assert not held & {(r.origin.file, r.origin.index) for r in split.train}
    assert "data mixture:" in capsys.readouterr().out
    assert _ids(train_eval_rows(_cfg(mix, eval_split=0.2), _load()).train) == _ids(split.train)  # seeded


def test_mixture_config_keys(tmp_path):
    from alignlab.config import load_config
    from alignlab.recipes.sft import SFTConfig

    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  - {path: a.jsonl, weight: 0.5}\n  - b.jsonl\n")
    for name in ("a.jsonl", "b.jsonl"):  # paths in a config file resolve against its folder (and must exist)
        (tmp_path / name).write_text('{"prompt": "p", "completion": "c"}\n')
    loaded = load_config(SFTConfig, cfg)
    assert [(Path(s.path).name, s.weight) for s in loaded.data] == [("a.jsonl", 0.5), ("b.jsonl", 1.0)]
    assert all(Path(s.path).parent == tmp_path for s in loaded.data)
    with pytest.raises(ConfigError, match="weight"):
        load_config(SFTConfig, cfg, [f"data=[{{path: {tmp_path / 'a.jsonl'}, weight: 0}}]"])
    with pytest.raises(ConfigError, match="finite"):  # .inf overflowed mid-run
        load_config(SFTConfig, cfg, [f"data=[{{path: {tmp_path / 'a.jsonl'}, weight: .inf}}]"])
    with pytest.raises(ConfigError, match="single data file"):
        load_config(SFTConfig, cfg, ["data_limit=5"])
    # a mistake inside an entry is named at the entry, not as "data: expected str | list[...]"
    a = tmp_path / "a.jsonl"
    with pytest.raises(ConfigError, match=r"unknown key data\[0\]\.wieght"):
        load_config(SFTConfig, None, [f"data=[{{path: {a}, wieght: 0.5}}]"])
    with pytest.raises(ConfigError, match=r"data\[0\]\.weight: expected a number"):
        load_config(SFTConfig, None, [f"data=[{{path: {a}, weight: heavy}}]"])


def test_slice_keys_are_checked():
    with pytest.raises(ConfigError, match="data_offset"):
        DPOConfig(data="x", data_offset=-1).validate()
    with pytest.raises(ConfigError, match="data_limit"):
        DPOConfig(data="x", data_limit=0).validate()


def test_a_held_out_row_with_a_training_rows_content_is_not_scored(tmp_path):
    """Records repeat (10 distinct pairs, 4 copies each): a held-out copy of a pair that is also in training
    would be scored after training on it, so it is left out and counted; eval_data equal to data leaves
    nothing to score."""
    lines = [json.dumps({"prompt": f"q{i % 10}", "chosen": f"good {i % 10}", "rejected": f"bad {i % 10}"})
             for i in range(40)]
    data = tmp_path / "p.jsonl"
    data.write_text("\n".join(lines) + "\n")
    split = train_eval_rows(_cfg(str(data), eval_split=0.25), _load())
    trained = {r.prompt[0]["content"] for r in split.train}
    assert len(split.train) == 30 and all(r.prompt[0]["content"] not in trained for r in split.held_out)
    assert split.info["held_out_duplicates_of_train"] == 10 - len(split.held_out) and split.scored == split.held_out
    same = train_eval_rows(_cfg(str(data), eval_data=str(data)), _load())
    assert same.held_out == [] and same.info["held_out_duplicates_of_train"] == 40


def test_in_memory_records_take_the_same_keys_as_a_file(tmp_path):
    """The Python API's records: data_limit/data_offset slice them, an eval_data file is the held-out set (not a
    split of the records), and a training file with in-memory held-out rows trains on all its records."""
    from alignlab.data.sources import load_rows as load

    data = _pairs(tmp_path / "p.jsonl", 20)
    held_file = _pairs(tmp_path / "e.jsonl", 3, tag="e")
    records = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    held_records = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    rows = lambda x: load(x, task="preference").rows  # noqa: E731 - a path or in-memory records alike

    def split(records=None, eval_records=None, **kw):
        return run_split(_cfg(data, **kw), rows, records, eval_records)

    sliced = split(records, data_offset=4, data_limit=8, eval_split=0.25)
    assert (len(sliced.train), len(sliced.held_out)) == (6, 2)
    assert {r.prompt[0]["content"] for r in sliced.train + sliced.held_out} == {f"q{i}" for i in range(4, 12)}
    with_file = split(records, eval_data=held_file)
    assert (len(with_file.train), [r.prompt[0]["content"] for r in with_file.held_out]) == (20, ["e0", "e1", "e2"])
    from_python = split(None, held_records)
    assert (len(from_python.train), len(from_python.held_out)) == (20, 3)
    # the file's hash and trained record ids are written down as for a file's split (they were left out: a resume
    # on an edited file went on, and `alignlab eval` knew of no trained record)
    (source,) = from_python.info["sources"]
    assert source["sha256"] == file_sha256(data) and source["train_records"] == list(range(20))
    from_python.save(tmp_path)
    _pairs(tmp_path / "p.jsonl", 20, tag="edited")
    from alignlab.train.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="sha256"):
        split(None, held_records).save(tmp_path, resuming=True)


def test_a_mixtures_scored_rows_come_from_every_source(tmp_path):
    # cut in source order, max_eval_rows scored the first source's held-out rows alone
    a, b = _pairs(tmp_path / "a.jsonl", 40), _pairs(tmp_path / "b.jsonl", 40, tag="b")
    split = train_eval_rows(_cfg([a, b], eval_split=0.5, max_eval_rows=20), _load())
    assert len(split.held_out) == 40
    assert sorted(Path(r.origin.file).name for r in split.scored) == ["a.jsonl"] * 10 + ["b.jsonl"] * 10


def test_an_empty_training_set_names_the_keys_that_emptied_it(tmp_path):
    # both ended in "no trainable rows (raise max_length?)"
    data = _pairs(tmp_path / "p.jsonl", 20)
    with pytest.raises(AlignlabError, match="data_offset 1000 and data_limit None select no rows of its 20"):
        train_eval_rows(_cfg(data, data_offset=1000), _load())
    with pytest.raises(AlignlabError, match="eval_split 0.99 holds out all of its 20 rows"):
        train_eval_rows(_cfg(data, eval_split=0.99), _load())


def test_resuming_on_changed_data_is_refused(tmp_path):
    # records appended to the file: the new split held out rows the checkpoint had trained on, silently
    from alignlab.data.prepare import write_split
    from alignlab.train.checkpoint import CheckpointError

    data = tmp_path / "p.jsonl"
    first = train_eval_rows(_cfg(_pairs(data, 20)), _load())
    first.save(tmp_path)
    first.save(tmp_path, resuming=True)  # the same data: fine
    grown = train_eval_rows(_cfg(_pairs(data, 24)), _load())
    with pytest.raises(CheckpointError, match=r"not those the checkpoint trained on \(.*split.sources\[0\].sha256"):
        grown.save(tmp_path, resuming=True)
    grown.save(tmp_path)  # a fresh run on the new data writes its own split
    assert json.loads((tmp_path / "split.json").read_text()) == grown.info
    with pytest.raises(CheckpointError, match=r"split.train_prompts differ"):  # the RL loops' split record
        write_split(tmp_path / "rl", {"train_prompts": 5}, resuming=False) and write_split(
            tmp_path / "rl", {"train_prompts": 6}, resuming=True)


def test_a_model_folder_changed_under_a_checkpoint_refuses_the_resume(tmp_path):
    """A resume rebuilt the reference (teacher, critic, LoRA base) from a folder that had changed since the
    checkpoint (the SFT run it started from, extended in place) and trained other numbers, silently."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from alignlab.data.prepare import write_split
    from alignlab.train.checkpoint import CheckpointError
    from alignlab.train.resume import model_sources

    folder = tmp_path / "sft"
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    model.save_pretrained(folder)
    cfg = SimpleNamespace(model=str(folder), ref_model="tiny-random", teacher=None, reward_options={"path": None})
    before = model_sources(cfg)
    assert list(before) == ["model"]  # aliases and unset keys are not fingerprinted
    write_split(tmp_path / "run", {"seed": 1, "models": before}, resuming=False)
    write_split(tmp_path / "run", {"seed": 1, "models": model_sources(cfg)}, resuming=True)  # unchanged: fine
    with torch.no_grad():
        model.lm_head.weight.add_(0.01)
    model.save_pretrained(folder)
    with pytest.raises(CheckpointError, match=r"model folders are not those .*split.models.model"):
        write_split(tmp_path / "run", {"seed": 1, "models": model_sources(cfg)}, resuming=True)
    old = tmp_path / "old"
    write_split(old, {"seed": 1}, resuming=False)  # a split written before models were recorded still resumes
    write_split(old, {"seed": 1, "models": model_sources(cfg)}, resuming=True)
