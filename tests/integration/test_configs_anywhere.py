"""Issue 15 item 3: the shipped configs run from any working directory (data found through the config's folder,
then $ALIGNLAB_DATA), and a missing data file stops before any model is loaded, saying where it looked."""

from pathlib import Path

from alignlab.cli import main
from alignlab.train.metrics import read_metrics

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_shipped_dpo_config_runs_from_another_directory(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNLAB_DATA", str(data_dir))
    monkeypatch.chdir(tmp_path)
    code = main(["dpo", "--config", str(CONFIGS / "dpo_tiny.yaml"), "output_dir=out", "max_steps=1",
                 "max_length=128", "progress=none", "max_eval_rows=2"])
    assert code == 0
    assert [r["step"] for r in read_metrics(tmp_path / "out") if "grad_norm" in r] == [1]
    saved = (tmp_path / "out" / "config.yaml").read_text()
    path = data_dir / "llamafactory_demo" / "dpo_en_demo.json"
    assert str(path) in saved or str(path.resolve()) in saved  # ALIGNLAB_DATA may be a symlink


def test_missing_data_stops_before_the_model_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ALIGNLAB_DATA", str(tmp_path / "no-data-here"))
    monkeypatch.chdir(tmp_path)

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be loaded before the data path is checked")

    monkeypatch.setattr("alignlab.models.load.load_model", no_model)
    assert main(["sft", "--config", str(CONFIGS / "sft_smollm2.yaml")]) == 2
    err = capsys.readouterr().err
    assert "llamafactory_demo/alpaca_en_demo.json not found; looked for" in err
    assert str(CONFIGS / "llamafactory_demo") in err and str(tmp_path / "no-data-here") in err
