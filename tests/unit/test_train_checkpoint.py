"""Checkpoints: atomic writes, keep_last, resume selection, RNG and adapter round trips."""

import random

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from alignlab.train.checkpoint import (
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from alignlab.train.resume import find_resume


def tiny(tie: bool = True) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tie))


def opt_for(model):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(input_ids=torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss.backward()
    opt.step()
    return opt


@pytest.mark.parametrize("tie", [True, False])
def test_round_trip_weights_optimizer_rng(tmp_path, tie):
    model = tiny(tie)
    opt = opt_for(model)
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    path = save_checkpoint(tmp_path, 5, model, opt, {"samples_seen": 40})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())

    other = tiny(tie)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    other_opt = opt_for(other)
    state = load_checkpoint(path, other, other_opt)
    assert state["step"] == 5 and state["samples_seen"] == 40
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], other_opt.state_dict()["state"][0]["exp_avg"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_rng_state_survives_torch_save(tmp_path):
    state = rng_state()
    torch.save(state, tmp_path / "rng.pt")
    a = (random.random(), np.random.randn(), torch.randn(2).tolist())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.randn(), torch.randn(2).tolist()) == a


def test_keep_last_and_auto_resume(tmp_path):
    model = tiny()
    opt = opt_for(model)
    for step in (2, 4, 6):
        save_checkpoint(tmp_path, step, model, opt, {}, keep_last=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 6]
    assert find_resume(tmp_path, "auto") == tmp_path / "checkpoint-6"
    assert find_resume(tmp_path, "never") is None
    assert find_resume(tmp_path / "empty", "auto") is None
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        find_resume(tmp_path, str(tmp_path / "checkpoint-3"))


class DiskFull(LlamaForCausalLM):
    def save_pretrained(self, *a, **k):  # what ENOSPC looks like half-way through a write
        super().save_pretrained(*a, **k)
        raise OSError(28, "No space left on device")


def test_failed_write_keeps_previous_checkpoint(tmp_path):
    model = tiny()
    opt = opt_for(model)
    save_checkpoint(tmp_path, 2, model, opt, {})
    broken = DiskFull(model.config)
    with pytest.raises(CheckpointError, match="No space left on device.*earlier checkpoints are kept"):
        save_checkpoint(tmp_path, 4, broken, opt, {})
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]


def test_peft_adapter_checkpoint_is_adapter_only(tmp_path):
    from peft import LoraConfig, get_peft_model

    def lora_model():
        m = get_peft_model(tiny(), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
        return m

    model = lora_model()
    opt = opt_for(model)
    path = save_checkpoint(tmp_path, 1, model, opt, {})
    assert (path / "adapter_model.safetensors").is_file() and not (path / "model.safetensors").exists()
    fresh = lora_model()
    load_checkpoint(path, fresh, opt_for(fresh))
    for (n, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), n


def test_check_resume_config_lists_each_training_key_and_allows_cadence(tmp_path):
    from alignlab.train.resume import RESUME_FREE_KEYS, check_resume_config

    (tmp_path / "config.yaml").write_text("loss: [dpo]\nlearning_rate: 0.0001\nmax_steps: 150\nlora:\n  r: 8\n"
                                          "save_steps: 50\noutput_dir: a\n")
    check_resume_config(tmp_path, "loss: [dpo]\nlearning_rate: 0.0001\nmax_steps: 160\nlora:\n  r: 8\n"
                                  "save_steps: 10\noutput_dir: b\n")
    with pytest.raises(CheckpointError) as e:
        check_resume_config(tmp_path, "loss: [ipo]\nlearning_rate: 0.005\nmax_steps: 150\nlora:\n  r: 16\n")
    msg = str(e.value)
    for line in ("loss: ['dpo'] -> ['ipo']", "learning_rate: 0.0001 -> 0.005", "lora.r: 8 -> 16"):
        assert line in msg
    assert "save_steps" not in msg and "new output_dir" in msg and "resume=never" in msg
    assert {"max_steps", "epochs", "logging_steps", "eval_steps", "save_steps", "keep_last", "resume"} <= RESUME_FREE_KEYS
    # a key added since the earlier run: null (off, the earlier behaviour) resumes, a value does not
    check_resume_config(tmp_path, "loss: [dpo]\nlearning_rate: 0.0001\nlora:\n  r: 8\npad_to_multiple_of: null\n")
    with pytest.raises(CheckpointError, match="pad_to_multiple_of: <absent> -> 16"):
        check_resume_config(tmp_path, "loss: [dpo]\nlearning_rate: 0.0001\nlora:\n  r: 8\npad_to_multiple_of: 16\n")


def test_resume_point_finished_run_and_explicit_path(tmp_path):
    import json

    from alignlab.errors import AlreadyDone
    from alignlab.train.resume import resume_point

    (tmp_path / "model.safetensors").write_bytes(b"x")
    (tmp_path / "metrics.jsonl").write_text('{"step": 4, "loss": 1}\n{"step": 4, "train_runtime": 1.0}\n')
    with pytest.raises(AlreadyDone, match="finished at step 4/4"):
        resume_point(tmp_path, "auto", None, 4)
    with pytest.raises(CheckpointError, match="no checkpoint to continue"):
        resume_point(tmp_path, "auto", None, 8)  # extending a run that saved no checkpoint cannot resume
    with pytest.raises(CheckpointError, match="beyond this run's 2 steps"):
        resume_point(tmp_path, "auto", None, 2)
    ckpt = tmp_path / "checkpoint-4"
    ckpt.mkdir()
    (ckpt / "trainer_state.json").write_text(json.dumps({"step": 4}))
    (ckpt / "config.yaml").write_text("seed: 1\n")
    assert resume_point(tmp_path, "auto", "seed: 1\n", 8) == ckpt
    with pytest.raises(CheckpointError, match="seed: 1 -> 2"):
        resume_point(tmp_path, str(ckpt), "seed: 2\n", 8)


def test_an_in_memory_records_label_without_its_hash_still_resumes():
    # runs saved before the label carried a content hash could not be resumed with the same records
    from alignlab.train.resume import config_differences

    old = "data: '<in-memory list: 10 records>'\nseed: 1\n"
    assert config_differences(old, "data: '<in-memory list: 10 records, sha256 bf65f59d87f89144>'\nseed: 1\n") == []
    assert config_differences(old, "data: '<in-memory list: 12 records, sha256 bf65f59d87f89144>'\nseed: 1\n")
    assert config_differences("data: '<in-memory list: 10 records, sha256 aaaa>'\n",
                              "data: '<in-memory list: 10 records, sha256 bbbb>'\n")


def test_a_rollout_engines_address_and_timeout_may_change_on_resume():
    # a run stopped by an engine timeout could not resume with a longer timeout or a restarted engine's new port
    from alignlab.train.resume import config_differences

    old = "rollout_engine:\n  url: http://127.0.0.1:1\n  timeout: 5.0\n  api_key_env: null\n  model: policy\n"
    new = "rollout_engine:\n  url: http://127.0.0.1:2\n  timeout: 60.0\n  api_key_env: KEY\n  model: policy\n"
    assert config_differences(old, new) == []
    assert config_differences(old, new.replace("model: policy", "model: other")) == [
        "rollout_engine.model: 'policy' -> 'other'"]
