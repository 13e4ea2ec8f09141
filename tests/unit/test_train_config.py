"""TrainConfig: every field documented, cross-field checks, YAML + overrides."""

import dataclasses

import pytest

from alignlab.config import ConfigError, field_docs, load_config
from alignlab.train.config import TrainConfig


def test_every_field_has_a_docstring():
    docs = field_docs(TrainConfig)
    missing = [f.name for f in dataclasses.fields(TrainConfig) if not docs.get(f.name)]
    assert missing == []


def test_overrides_and_lora(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("max_steps: 30\nbatch_size: 8\ngrad_accum: 2\nlearning_rate: 3e-4\n")
    cfg = load_config(TrainConfig, path, ["lr_scheduler=linear", "seed=7"])
    assert (cfg.max_steps, cfg.grad_accum, cfg.learning_rate, cfg.lr_scheduler, cfg.seed) == (
        30, 2, 3e-4, "linear", 7)
    assert cfg.micro_batch_size() == 4 and cfg.micro_batch_size(world_size=2) == 2
    lora = load_config(TrainConfig, None, ["lora.r=8"]).lora
    assert lora is not None and getattr(lora, "r", None) == 8


@pytest.mark.parametrize(
    "override, message",
    [
        ("grad_accum=3", "multiple of grad_accum"),
        ("max_steps=0", "max_steps"),
        ("lr_scheduler=step", "allowed values"),
        ("warmup_ratio=1.5", "warmup_ratio"),
        ("keep_last=0", "keep_last"),
        ("batch_siz=4", "unknown key batch_siz"),
        ("min_lr_ratio=-1", "min_lr_ratio"),  # a negative floor: the schedule's tail would climb the loss
        ("max_grad_norm=-1", "max_grad_norm"),
        ("adam_beta2=1", "adam_beta2"),
        ("adam_eps=0", "adam_eps"),
    ],
)
def test_bad_values_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TrainConfig, None, [override])


def test_world_size_must_divide():
    with pytest.raises(ConfigError, match="world_size"):
        TrainConfig(batch_size=4, grad_accum=1).micro_batch_size(world_size=3)
