from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml

from alignlab.config import ConfigError, field_docs, load_config, save_config


@dataclass
class Inner:
    r: int = 8
    """LoRA rank."""
    targets: list[str] = field(default_factory=lambda: ["q_proj"])
    """Module names."""


@dataclass
class Cfg:
    model: str
    """Model name or path."""
    lr: float = 1e-4
    """Peak learning rate."""
    loss: list[str] = field(default_factory=lambda: ["dpo"])
    """Losses to combine."""
    sched: Literal["cosine", "linear"] = "cosine"
    """Schedule shape."""
    lora: Inner | None = None
    """Adapter settings; null trains all weights."""
    bf16: bool = False
    """Autocast to bfloat16."""


def test_yaml_then_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model: tiny\nlr: 0.01\nlora: {r: 4}\n")
    cfg = load_config(Cfg, p, ["lr=3e-4", "lora.targets=[a, b]", "loss=ipo", "bf16=true"])
    assert cfg.model == "tiny" and cfg.lr == 3e-4 and cfg.bf16 is True
    assert cfg.lora == Inner(r=4, targets=["a", "b"])
    assert cfg.loss == ["ipo"]


def test_dotted_override_creates_optional_nested():
    cfg = load_config(Cfg, None, ["model=m", "lora.r=32"])
    assert cfg.lora == Inner(r=32)


def test_a_text_key_keeps_the_text_yaml_would_read_as_a_number_date_or_bool():
    """model=010 is the folder '010', not YAML 1.1's octal 8; 1.10 keeps its zero, a date stays text, and so does
    'off' (YAML's false) for a key that takes only text. Keys that take numbers still read them."""
    for text in ("010", "1.10", "0x1A", "1_000", "2024-01-31", "off"):
        assert load_config(Cfg, None, [f"model={text}"]).model == text
    cfg = load_config(Cfg, None, ["model=m", "lr=010", "lora.r=010"])
    assert cfg.lr == 8.0 and cfg.lora == Inner(r=8)  # numbers where the key takes numbers


def test_int_accepted_for_float():
    assert load_config(Cfg, None, ["model=m", "lr=1"]).lr == 1.0


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["model=m", "lrr=1"], "unknown key lrr"),
        (["model=m", "lora.rank=1"], "unknown key lora.rank"),
        (["model=m", "sched=step"], "'cosine', 'linear'"),
        (["model=m", "lr=fast"], "lr: expected a number"),
        (["model=m", "bf16=1"], "bf16: expected true or false"),
        (["model=m", "lora.r=1.5"], "lora.r: expected an integer"),
        (["lr=1"], "model"),
        (["model"], "key=value"),
    ],
)
def test_errors_name_the_key(overrides, needle):
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("(", r"\(")):
        load_config(Cfg, None, overrides)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Cfg, tmp_path / "nope.yaml")
    p = tmp_path / "list.yaml"
    p.write_text("- a\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Cfg, p)


def test_save_roundtrip_with_docs(tmp_path):
    cfg = load_config(Cfg, None, ["model=m", "lora.r=2"])
    save_config(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert "# Peak learning rate." in text
    assert yaml.safe_load(text)["lora"] == {"r": 2, "targets": ["q_proj"]}
    assert load_config(Cfg, tmp_path / "config.yaml") == cfg


def test_field_docs():
    assert field_docs(Cfg)["lora"] == "Adapter settings; null trains all weights."
