"""`alignlab grpo` / `alignlab ppo`: online RL from a reward (wiring only; the parts live in rl/).

Each step (Ouyang et al. 2022 Sec. 3.5; Shao et al. 2024 Alg. 1): sample num_generations answers for each of
batch_size prompts and score them (rl/rollout.py); old-policy and reference log-probs and, for gae, critic
values; advantages from the `estimator` registry (losses/advantages.py), the KL either shaped into the reward
(InstructGPT) or added to the loss (GRPO); ppo_epochs x minibatch optimizer steps (rl/update.py) on the shared
optimizer-step core; checkpoints with exact resume, held-out evals and live metrics (rl/loop.py).

The progress signal is `reward_mean` (and `eval_reward`), never the loss: a group-normalised loss is about 0 at
every step by construction.
"""

from __future__ import annotations

from typing import Any

from alignlab.rl.config import PolicyGradientConfig


def run(cfg: PolicyGradientConfig, label: str = "grpo", *, model: Any = None, tokenizer: Any = None,
        rows: Any = None, eval_rows: Any = None, reward_fn: Any = None, callbacks: Any = ()) -> Any:
    """Train; returns the rl.loop.RLResult (metrics also in output_dir/metrics.jsonl) and saves the policy.
    alignlab.api passes in-memory model + tokenizer, prompt records and a reward callable."""
    from alignlab.losses.advantages import get_estimator
    from alignlab.losses.policy import AdaptiveKLController, FixedKLController, get_policy_loss
    from alignlab.rl.loop import build_state, train_rl
    from alignlab.rl.update import pg_step
    from alignlab.rollout.rewards import get_reward
    from alignlab.train.loop import seed_everything
    from alignlab.train.world import World

    world = World.for_run(cfg)
    seed_everything(cfg.seed)
    estimator = get_estimator(cfg.estimator)
    # kl_coef 0 (DAPO drops the KL term) needs no frozen copy and no reference forward (adaptive_kl needs kl_coef > 0)
    reference = cfg.kl_coef > 0
    state = build_state(cfg, world, reference=reference, critic=estimator.needs_critic, model=model, tokenizer=tokenizer,
                        reward_fn=reward_fn or get_reward(cfg.reward, weights=cfg.reward_weights, **cfg.reward_options))
    state.estimator, state.objective = estimator, get_policy_loss(cfg.policy_loss)
    state.kl_ctl = (AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
                    if cfg.adaptive_kl else FixedKLController(cfg.kl_coef))
    if cfg.env is not None:  # held out: greedy episodes through the environment, not single-turn answers
        from alignlab.rl.multiturn import greedy_episodes

        state.evaluate = greedy_episodes
    return train_rl(state, pg_step, label, records=rows, eval_records=eval_rows, callbacks=callbacks)
