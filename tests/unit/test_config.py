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


def test_overrides_read_numbers_as_written_and_keep_a_hash():
    # YAML 1.1 read lora.r=010 as octal 8 and lr=1:30 as 90, and cut model=runs/sft #best at its "comment"
    cfg = load_config(Cfg, None, ["model=runs/sft #best", "lora.r=010"])
    assert cfg.model == "runs/sft #best" and cfg.lora.r == 10
    with pytest.raises(ConfigError, match="lr: "):
        load_config(Cfg, None, ["model=m", "lr=1:30"])
    with pytest.raises(ConfigError, match="lora.r: expected an integer, got '0x10'"):
        load_config(Cfg, None, ["model=m", "lora.r=0x10"])
    assert load_config(Cfg, None, ["model=m", "lora.r=1_000"]).lora.r == 1000  # as YAML and Python read it


def test_dotted_override_creates_optional_nested():
    cfg = load_config(Cfg, None, ["model=m", "lora.r=32"])
    assert cfg.lora == Inner(r=32)


def test_a_text_key_keeps_the_text_yaml_would_read_as_a_number_date_or_bool():
    """model=010 is the folder '010', not YAML 1.1's octal 8; 1.10 keeps its zero, a date stays text, and so does
    'off' (YAML's false) for a key that takes only text. Keys that take numbers still read them."""
    for text in ("010", "1.10", "0x1A", "1_000", "2024-01-31", "off"):
        assert load_config(Cfg, None, [f"model={text}"]).model == text
    cfg = load_config(Cfg, None, ["model=m", "lr=010", "lora.r=010"])
    assert cfg.lr == 10.0 and cfg.lora == Inner(r=10)  # numbers, as written, where the key takes numbers


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


def _recipe(name):
    from alignlab.recipes.dpo import DPOConfig
    from alignlab.recipes.pretrain import PretrainConfig
    from alignlab.recipes.sft import SFTConfig
    from alignlab.rl.config import PolicyGradientConfig

    return {"sft": SFTConfig, "dpo": DPOConfig, "pretrain": PretrainConfig, "grpo": PolicyGradientConfig}[name]


@pytest.mark.parametrize("recipe,override,message", [
    ("sft", "learning_rate=nan", "must be a finite number"),  # nan passes every range check
    ("sft", "epochs=inf", "must be a finite number"),
    ("sft", "weight_decay=-1", "weight_decay: must be >= 0"),
    ("sft", "logprob_chunk_size=0", "logprob_chunk_size and pack_length must be >= 1"),  # crashed after loading
    ("sft", "max_eval_rows=0", "max_eval_rows: must be at least 1"),
    ("sft", "cpu_threads=-1", "cpu_threads: must be >= 0"),
    ("sft", "data_format=prompt_completion", "data_format: must be one of .*prompt-completion"),  # --help said so
    ("dpo", "max_prompt_length=-3", r"max_prompt_length: must be in \[1, max_length\)"),  # every prompt emptied
    ("pretrain", "num_heads=0", "num_heads, num_kv_heads"),  # ZeroDivisionError inside validate
    ("grpo", "mini_batch_size=-4", "mini_batch_size: must be >= 0"),  # 16 % -4 == 0: trained nothing, exit 0
    ("grpo", "kl_coef=-1", r"kl_coef: must be in \[0.0, inf\]"),
    ("grpo", "gamma=2", r"gamma: must be in \[0.0, 1.0\]"),
    ("grpo", "max_turns=0", r"max_turns: must be in \[1, inf\]"),
    ("grpo", "dual_clip=0.5", "dual_clip > 1"),  # met at the first update, after sampling
    ("grpo", "overlong.buffer=-1", "overlong: need max_tokens >= 0, penalty >= 0 and 0 < buffer < max_tokens"),
    # these were met after the models loaded (the sampler's check; a raw RuntimeError from .to(device))
    ("grpo", "temperature=0", r"temperature must be > 0 and top_p in \(0, 1\]"),
    ("grpo", "top_p=2", r"temperature must be > 0 and top_p in \(0, 1\]"),
    ("sft", "device=gpu", "device: 'gpu' is not a device"),
    ("pretrain", "max_eval_rows=-5", "max_eval_rows >= 1"),  # dropped the last 5 validation blocks, silently
])
def test_out_of_range_values_are_refused_before_any_work(recipe, override, message, tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"prompt": "p", "completion": "c"}\n')
    extra = [] if recipe == "grpo" else [f"data={data}"]
    with pytest.raises(ConfigError, match=message):
        load_config(_recipe(recipe), None, [override, *extra])
