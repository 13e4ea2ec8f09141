"""Every YAML in configs/ loads into its config class (unknown keys and bad values fail here, not at run time).

Which class a file uses is read from its name: the longest CONFIG_CLASSES key that is the file's stem or
a prefix of it followed by "_" wins (sft_smollm2_lora.yaml -> "sft" -> SFTConfig; online_dpo_x.yaml ->
"online_dpo", not "online"). Adding a recipe? Add one line here (prefix = the command name, with "_" for
"-"); a config whose prefix is missing fails with a message saying so.
"""

import importlib
from pathlib import Path

import pytest

from alignlab.config import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
CONFIG_CLASSES = {  # file-name prefix (the command) -> "module:Class"
    "sft": "alignlab.recipes.sft:SFTConfig",
    "pretrain": "alignlab.recipes.pretrain:PretrainConfig",
    "dpo": "alignlab.recipes.dpo:DPOConfig",
    "rm": "alignlab.recipes.reward:RewardConfig",
    "ppo": "alignlab.rl.config:PPOConfig",
    "grpo": "alignlab.rl.config:PolicyGradientConfig",
    "online_dpo": "alignlab.rl.config:OnlineDPOConfig",
    "eval": "alignlab.eval.runner:EvalConfig",
    "demo": "alignlab.recipes.demo:DemoConfig",
}


def config_class(path: Path) -> type:
    matches = [k for k in CONFIG_CLASSES if path.stem == k or path.stem.startswith(k + "_")]
    if not matches:
        pytest.fail(f"{path.name}: no prefix of it is in CONFIG_CLASSES of {__file__}; add one there")
    module, _, name = CONFIG_CLASSES[max(matches, key=len)].partition(":")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")) + sorted(CONFIGS.glob("*.yml")), ids=lambda p: p.name)
def test_config_loads(path):
    cls = config_class(path)
    cfg = load_config(cls, path)
    assert isinstance(cfg, cls)
    header = path.read_text(encoding="utf-8").splitlines()[:12]
    assert any("alignlab " in line and line.startswith("#") for line in header), "header must show the launch command"


def test_folder_is_not_empty():
    assert len(list(CONFIGS.glob("*.yaml"))) >= 3
