"""`alignlab online-dpo`: online (iterative) DPO (Guo et al. 2024, "Direct Language Model Alignment from
Online AI Feedback"; Xiong et al. 2024, "Iterative Preference Learning from Human Feedback"). Wiring only.

Each step samples `num_generations` answers per prompt from the CURRENT policy, ranks them by the reward, keeps
the best as chosen and the worst as rejected (ties are skipped: no preference) and takes one DPO-family step
(losses/registry.py's LossMix through train/preference.py's PreferenceStep, so every paired loss works). The
reference is the policy's start (frozen copy, or the LoRA base with the adapter off). Same loop, checkpoints and
resume as grpo/ppo (rl/loop.py).
"""

from __future__ import annotations

from typing import Any

from alignlab.rl.config import OnlineDPOConfig


def run(cfg: OnlineDPOConfig, *, model: Any = None, tokenizer: Any = None, rows: Any = None,
        eval_rows: Any = None, reward_fn: Any = None, callbacks: Any = ()) -> Any:
    """Train; returns the rl.loop.RLResult (metrics also in output_dir/metrics.jsonl) and saves the policy.
    alignlab.api passes in-memory model + tokenizer, prompt records and a reward callable."""
    from alignlab.losses import combine
    from alignlab.rl.loop import build_state, train_rl
    from alignlab.rl.update import dpo_step
    from alignlab.rollout.rewards import get_reward
    from alignlab.train.loop import seed_everything
    from alignlab.train.preference import AdapterReference, ModelReference, NoReference, PreferenceStep
    from alignlab.train.world import World

    world = World.for_run(cfg)
    seed_everything(cfg.seed)
    mix = combine(cfg.loss, cfg.loss_weights, cfg.loss_params)
    state = build_state(cfg, world, reference=mix.needs_reference, critic=False, model=model, tokenizer=tokenizer,
                        reward_fn=reward_fn or get_reward(cfg.reward, weights=cfg.reward_weights, **cfg.reward_options))
    reference: Any = NoReference()
    if mix.needs_reference:
        reference = ModelReference(state.reference) if state.reference is not None else AdapterReference()
    state.dpo = PreferenceStep(mix, reference, beta=cfg.beta if cfg.beta is not None else mix.default_beta)
    return train_rl(state, dpo_step, "online-dpo", records=rows, eval_records=eval_rows, callbacks=callbacks)
