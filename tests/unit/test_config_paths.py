"""Issue 15 item 3: relative data paths in a config file resolve against its folder, then $ALIGNLAB_DATA;
errors say where they looked; command-line override errors are not blamed on the config file."""

from dataclasses import dataclass, field

import pytest

from alignlab.config import ConfigError, load_config


@dataclass
class Spec:
    data: str
    """Rows file."""


@dataclass
class Cfg:
    model: str = "tiny"
    """Model."""
    data: str = ""
    """Training file."""
    eval_data: str | None = None
    """Validation file."""
    lr: float = 1e-4
    """Learning rate."""
    evaluations: list[Spec] = field(default_factory=list)
    """Nested specs with their own data."""

    def validate(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"lr: must be positive, got {self.lr}")


@pytest.fixture
def layout(tmp_path, monkeypatch):
    """configs/run.yaml next to configs/local.jsonl; datasets/shared/x.json under $ALIGNLAB_DATA; cwd elsewhere."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "local.jsonl").write_text("{}\n")
    (tmp_path / "datasets" / "shared").mkdir(parents=True)
    (tmp_path / "datasets" / "shared" / "x.json").write_text("[]")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.setenv("ALIGNLAB_DATA", str(tmp_path / "datasets"))
    monkeypatch.chdir(tmp_path / "elsewhere")
    return tmp_path


def test_file_paths_resolve_against_the_config_folder_then_alignlab_data(layout):
    cfg_file = layout / "configs" / "run.yaml"
    cfg_file.write_text("data: local.jsonl\neval_data: shared/x.json\nevaluations:\n  - data: shared/x.json\n"
                        "model: org/hub-model\n")
    cfg = load_config(Cfg, cfg_file)
    assert cfg.data == str(layout / "configs" / "local.jsonl")
    assert cfg.eval_data == cfg.evaluations[0].data == str(layout / "datasets" / "shared" / "x.json")
    assert cfg.model == "org/hub-model"  # not a path field


def test_missing_file_says_where_it_looked(layout):
    cfg_file = layout / "configs" / "run.yaml"
    cfg_file.write_text("data: nope/rows.jsonl\n")
    with pytest.raises(ConfigError) as e:
        load_config(Cfg, cfg_file)
    msg = str(e.value)
    assert str(layout / "configs" / "nope" / "rows.jsonl") in msg and str(layout / "datasets" / "nope") in msg
    assert "run.yaml" in msg


def test_override_paths_resolve_against_the_working_directory_then_alignlab_data(layout):
    (layout / "elsewhere" / "mine.jsonl").write_text("{}\n")
    cfg = load_config(Cfg, None, ["data=mine.jsonl", "eval_data=shared/x.json", "evaluations=[{data: mine.jsonl}]"])
    assert cfg.data == cfg.evaluations[0].data == str(layout / "elsewhere" / "mine.jsonl")
    assert cfg.eval_data == str(layout / "datasets" / "shared" / "x.json")
    with pytest.raises(ConfigError, match="command-line override 'data=gone.json'") as e:
        load_config(Cfg, None, ["data=gone.json"])
    assert str(layout / "elsewhere" / "gone.json") in str(e.value)


def test_override_errors_are_not_blamed_on_the_config_file(layout):
    cfg_file = layout / "configs" / "run.yaml"
    cfg_file.write_text("lr: 0.001\n")
    with pytest.raises(ConfigError) as e:
        load_config(Cfg, cfg_file, ["lr=-1"])
    assert "command-line" in str(e.value) and "run.yaml" not in str(e.value)
    cfg_file.write_text("lr: -1\n")
    with pytest.raises(ConfigError, match="from .*run.yaml"):
        load_config(Cfg, cfg_file, ["model=other"])


@dataclass
class WithDefault:
    data: str = "shared/x.json"
    """A corpus under $ALIGNLAB_DATA by default."""


def test_default_path_resolves_from_any_directory(layout):
    """A config class's default data path (pretrain's corpus) is found through $ALIGNLAB_DATA from any working
    directory, not only from the project root; a missing default names the key and where it looked."""
    cfg = load_config(WithDefault)
    assert cfg.data == str((layout / "datasets" / "shared" / "x.json").resolve())
    WithDefault.__dataclass_fields__["data"].default = "shared/missing.json"
    try:
        with pytest.raises(ConfigError, match=r"data: shared/missing.json not found; looked for .*the default"):
            load_config(WithDefault)
        # a missing default the command line replaces is never looked for (`pretrain data=my.txt` failed on it)
        assert load_config(WithDefault, None, ["data=shared/x.json"]).data == cfg.data
    finally:
        WithDefault.__dataclass_fields__["data"].default = "shared/x.json"


def test_pretrain_default_corpus_is_read_through_alignlab_data(tmp_path, monkeypatch):
    from alignlab.recipes.pretrain import PretrainConfig

    (tmp_path / "tinyshakespeare").mkdir()
    (tmp_path / "tinyshakespeare" / "input.txt").write_text("To be.\n")
    monkeypatch.setenv("ALIGNLAB_DATA", str(tmp_path))
    monkeypatch.chdir(tmp_path / "tinyshakespeare")
    assert load_config(PretrainConfig).data == str((tmp_path / "tinyshakespeare" / "input.txt").resolve())
