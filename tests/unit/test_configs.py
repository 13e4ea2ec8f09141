"""Every YAML in configs/ loads into its config class (unknown keys and bad values fail here, not at run time).

Which class a file uses is read from its name: the part before the first underscore is looked up in
CONFIG_CLASSES (e.g. sft_smollm2_lora.yaml -> "sft" -> SFTConfig). Adding a recipe? Add its prefix here;
a config whose prefix is missing fails with a message saying so.
"""

import importlib
from pathlib import Path

import pytest

from alignlab.config import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
CONFIG_CLASSES = {  # file-name prefix -> "module:Class"
    "sft": "alignlab.recipes.sft:SFTConfig",
    "pretrain": "alignlab.recipes.pretrain:PretrainConfig",
}


def config_class(path: Path) -> type:
    prefix = path.stem.split("_")[0]
    if prefix not in CONFIG_CLASSES:
        pytest.fail(f"{path.name}: prefix {prefix!r} is not in CONFIG_CLASSES of {__file__}; add it there")
    module, _, name = CONFIG_CLASSES[prefix].partition(":")
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
