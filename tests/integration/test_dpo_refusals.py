"""Issue 15 item 6: a dpo run in which no completion token survives truncation refuses before training
(it used to finish with exit 0 and every log-prob exactly 0), for paired and unpaired (kto) losses."""

from pathlib import Path

import pytest

from alignlab.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("loss", ["dpo", "kto"])
def test_max_length_one_refuses_before_training(data_dir, tmp_path, capsys, loss):
    data = data_dir / "llamafactory_demo" / "dpo_en_demo.json"
    code = main(["dpo", "--config", str(CONFIGS / "dpo_tiny.yaml"), f"data={data}", f"output_dir={tmp_path}",
                 "max_length=1", f"loss=[{loss}]", "progress=none", "max_steps=1"])
    assert code == 2
    assert "no trainable rows" in capsys.readouterr().err
    assert not (tmp_path / "metrics.jsonl").exists()


def test_reference_keys_the_run_would_not_use_are_refused(tmp_path):
    # ref_model under reference adapter, and any reference key with simpo alone, trained as if unset
    from alignlab.errors import AlignlabError
    from alignlab.train.dpo import DPOConfig

    with pytest.raises(AlignlabError, match="ref_model: reference adapter"):
        DPOConfig(ref_model="tiny-random", reference="adapter").check_reference_keys(True)
    with pytest.raises(AlignlabError, match="ref_cache_dir: only reference cache uses it"):
        DPOConfig(ref_cache_dir=str(tmp_path)).check_reference_keys(True)
    for keys in ({"ref_model": "tiny-random"}, {"reference": "model"}, {"reference": "cache"}):
        with pytest.raises(AlignlabError, match=r"no chosen loss \(simpo\) uses a reference"):
            DPOConfig(loss=["simpo"], **keys).check_reference_keys(False)
    DPOConfig(ref_model="tiny-random", reference="cache", ref_cache_dir=str(tmp_path)).check_reference_keys(True)
    DPOConfig(loss=["simpo"], reference="none").check_reference_keys(False)


def test_kto_with_a_micro_batch_of_one_is_refused_before_the_model_loads(data_dir, tmp_path, capsys, monkeypatch):
    # a raw ValueError traceback after the model had loaded
    import alignlab.models.prepare as prepare

    monkeypatch.setattr(prepare, "prepare_model", lambda cfg: pytest.fail("the model was loaded"))
    data = data_dir / "llamafactory_demo" / "kto_en_demo.json"
    code = main(["dpo", "--config", str(CONFIGS / "dpo_tiny.yaml"), f"data={data}", f"output_dir={tmp_path}",
                 "loss=[kto]", "batch_size=2", "grad_accum=2", "progress=none", "max_steps=1"])
    assert code == 2 and "kto: needs a micro-batch of 2 or more examples" in capsys.readouterr().err


def test_a_loss_given_as_one_string_validates():
    # the unpaired-group check read "dpo" letter by letter: "unknown loss 'd'"
    from alignlab.train.dpo import DPOConfig

    DPOConfig(loss="dpo").validate()
