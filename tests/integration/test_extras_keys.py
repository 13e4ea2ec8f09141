"""Every key `alignlab medusa` and `alignlab experiment rejection-sampling` accept has an effect: a tiny run of
each reads every field of its config (the recording subclass of test_rl_keys notes each attribute read).
Their configs used to inherit the offline TrainConfig and accepted `distributed` and others they ignored."""

from __future__ import annotations

import dataclasses
import json

import pytest
from test_rl_keys import recording

from alignlab.models.lora import LoraConfig
from alignlab.recipes.medusa import MedusaConfig
from alignlab.recipes.rejection_sampling import RejectionSamplingConfig

TINY = dict(model="tiny-random", max_steps=2, batch_size=2, progress="none", cpu_threads=1, logging_steps=1,
            device="cpu", save_steps=1, eval_steps=1)


def prompts(tmp_path, n=12, name="prompts") -> str:
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{name} {i}:"}) + "\n" for i in range(n)))
    return str(path)


def run_medusa(cfg):
    from alignlab.recipes.medusa import run

    return run(cfg)


def run_rs(cfg):
    from alignlab.recipes.rejection_sampling import run

    return run(cfg)


RUNS = {
    "medusa": (MedusaConfig, run_medusa, [
        dict(data="FILE", prompts=8, num_heads=2, distill_max_new_tokens=6, distill_batch_size=4, eval_split=0.25,
             max_eval_rows=2),
        dict(data="FILE", prompts=8, distill_temperature=1.0, own_lm_head=True, eval_data="EVAL", max_steps=-1,
             epochs=0.5, head_layers=2, head_decay=0.5),
    ]),
    "rejection-sampling": (RejectionSamplingConfig, run_rs, [
        dict(prompts=8, rounds=1, samples=2, max_new_tokens=4, eval_split=0.25, max_eval_rows=2, eval_steps=0),
        dict(data="FILE", prompts=8, rounds=2, samples=2, max_new_tokens=4, eval_data="EVAL", from_base=False,
             max_steps=-1, epochs=1,
             temperature=0.7, lora=LoraConfig(r=2), eval_steps=0),
    ]),
}


# Keys the shared base classes bring that these commands cannot honour: set, they are refused by name.
REFUSED = {"medusa": {"lora": LoraConfig(r=2)}, "rejection-sampling": {"eval_steps": 5}}


@pytest.mark.parametrize("command", sorted(RUNS))
def test_every_extras_config_key_is_read(command, tmp_path):
    from alignlab.errors import AlignlabError

    cls, go, runs = RUNS[command]
    for key, value in REFUSED[command].items():
        with pytest.raises(AlignlabError, match=key):
            cls(**{**TINY, "eval_steps": 0, key: value}).validate()
    seen: set[str] = set(REFUSED[command])
    for i, extra in enumerate(runs):
        files = {"FILE": prompts(tmp_path), "EVAL": prompts(tmp_path, 4, "held_out")}  # held-out rows of their own
        extra = {k: files.get(v, v) if isinstance(v, str) else v for k, v in extra.items()}
        cfg = recording(cls, seen)(output_dir=str(tmp_path / str(i)), **{**TINY, **extra})
        cfg.validate()
        go(cfg)
    unread = sorted({f.name for f in dataclasses.fields(cls)} - seen)
    assert not unread, f"{command} accepts keys it never reads: {unread}"
