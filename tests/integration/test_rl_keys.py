"""Every key an RL command accepts has an effect: a tiny run of grpo, ppo and online-dpo reads every field of its
config (a recording subclass notes each attribute read), bf16 runs the rollout and update forwards under autocast,
and gradient_checkpointing recomputes the policy's blocks during the update."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from alignlab.rl.config import DistillConfig, OnlineDPOConfig, PolicyGradientConfig, PPOConfig

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(model="tiny-random", max_steps=2, batch_size=2, max_new_tokens=4, eval_prompts=2, num_prompts=8,
            progress="none", cpu_threads=1, save_steps=1, eval_steps=1, logging_steps=1)


def length_reward(prompts, completions, **_):
    return [float(len(c)) for c in completions]


# Reads that serialise the whole config (config.yaml, dataclasses.replace / asdict) touch every field, and a
# config's own checks read the keys they check (kl_target's range with adaptive_kl off): neither is an effect.
SERIALISERS = {"alignlab.config", "dataclasses", "copy"}
CHECKS = {"validate", "_refuse_unused_keys", "check_unpaired_group"}


def recording(cls: type, seen: set[str]) -> type:
    import sys

    names = {f.name for f in dataclasses.fields(cls)}

    def getattribute(self, name):
        caller = sys._getframe(1)
        if name in names and caller.f_globals.get("__name__") not in SERIALISERS and caller.f_code.co_name not in CHECKS:
            seen.add(name)
        return object.__getattribute__(self, name)

    return dataclasses.dataclass(type(f"Recording{cls.__name__}", (cls,), {"__getattribute__": getattribute}))


def run(command: str, cfg):
    if command == "online-dpo":
        from alignlab.recipes.online_dpo import run as go

        return go(cfg)
    if command == "distill":
        from alignlab.recipes.distill import run as go

        return go(cfg)
    from alignlab.recipes.rl import run as go

    return go(cfg, command)


def prompts_file(tmp_path: Path) -> str:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Story {i}:", "answer": str(i)}) + "\n" for i in range(10)))
    return str(path)


# Several small runs per command, so every key a setting makes conditional (epochs only without max_steps,
# eval_split only for a file, the critic's keys only with gae, max_turns only with env, ...) is exercised.
RUNS = {
    "grpo": (PolicyGradientConfig, [
        dict(num_generations=2, dynamic_sampling=True, rollout_is="tis", reward=f"{__file__}:length_reward",
             adaptive_kl=True, data="FILE", eval_split=0.25, max_steps=-1, epochs=0.5),
        dict(num_generations=2, env="calculator", max_turns=2, env_options={"max_tool_output": 100},
             data="builtin:add", reward="math"),
        dict(estimator="gae", num_generations=1, mini_batch_size=1),
    ]),
    "ppo": (PPOConfig, [
        dict(mini_batch_size=1, rollout_is="mis", data="FILE", eval_split=0.25, max_steps=-1, epochs=0.5,
             adaptive_kl=True),
        dict(estimator="rloo", num_generations=2, dynamic_sampling=True, reward=f"{__file__}:length_reward",
             env="calculator", max_turns=2, env_options={"max_tool_output": 100}, data="builtin:add"),
    ]),
    "online-dpo": (OnlineDPOConfig, [dict(data="FILE", eval_split=0.25, max_steps=-1, epochs=0.5), dict()]),
    "distill": (DistillConfig, [dict(teacher="tiny-random", beta=0.5, data="FILE", eval_split=0.25, max_steps=-1,
                                     epochs=0.5), dict(teacher="tiny-random")]),
}


@pytest.mark.parametrize("command", sorted(RUNS))
def test_every_rl_config_key_is_read(command, tmp_path):
    cls, runs = RUNS[command]
    seen: set[str] = set()
    for i, extra in enumerate(runs):
        extra = {k: prompts_file(tmp_path) if v == "FILE" else v for k, v in extra.items()}
        cfg = recording(cls, seen)(output_dir=str(tmp_path / str(i)), **{**TINY, **extra})
        cfg.validate()
        run(command, cfg)
    unread = sorted({f.name for f in dataclasses.fields(cls)} - seen)
    assert not unread, f"{command} accepts keys it never reads: {unread}"


def test_bf16_runs_rollout_and_update_under_autocast(tmp_path, monkeypatch):
    from alignlab.rl import rollout, update

    seen = []
    real = rollout.policy_logprobs

    def spy(model, ro, idx, temperature, **kw):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), torch.is_grad_enabled()))
        return real(model, ro, idx, temperature, **kw)

    monkeypatch.setattr(rollout, "policy_logprobs", spy)
    monkeypatch.setattr(update, "policy_logprobs", spy)
    cfg = PolicyGradientConfig(output_dir=str(tmp_path), bf16=True, num_generations=2, **TINY)
    history = run("grpo", cfg).history
    assert any(g for _, _, g in seen) and any(not g for _, _, g in seen)  # update and reference forwards
    assert all(on and dtype == torch.bfloat16 for on, dtype, _ in seen), seen
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history if "loss" in h)


def test_gradient_checkpointing_recomputes_blocks_in_backward(tmp_path, monkeypatch):
    """With gradient_checkpointing the decoder layers run again during backward (recomputation), so a
    2-step run calls them more often than the same run without it, and ends with the same reward curve."""
    from transformers.models.llama.modeling_llama import LlamaMLP  # inside the checkpointed layer forward

    counts = {}
    real = LlamaMLP.forward

    def counting(self, *a, **kw):
        counts[key] = counts.get(key, 0) + 1
        return real(self, *a, **kw)

    monkeypatch.setattr(LlamaMLP, "forward", counting)
    curves = {}
    for key in (False, True):
        cfg = PolicyGradientConfig(output_dir=str(tmp_path / str(key)), gradient_checkpointing=key, num_generations=2,
                                   **TINY)
        curves[key] = [h["reward_mean"] for h in run("grpo", cfg).history if "reward_mean" in h]
    assert counts[True] > counts[False]
    assert curves[True] == pytest.approx(curves[False], abs=1e-6)
