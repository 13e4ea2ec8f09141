"""`alignlab distill`: on-policy distillation of a teacher into the student `model` (GKD; wiring only: the step
and the held-out measure are rl/distill.py, the loss losses/distill.py, the loop, checkpoints and resume
rl/loop.py)."""

from __future__ import annotations

from typing import Any

from alignlab.rl.config import DistillConfig


def run(cfg: DistillConfig, *, model: Any = None, tokenizer: Any = None, rows: Any = None, eval_rows: Any = None,
        callbacks: Any = ()) -> Any:
    """Train the student; returns the rl.loop.RLResult (metrics also in output_dir/metrics.jsonl)."""
    from alignlab.rl.distill import distill_step, held_out_divergence
    from alignlab.rl.loop import build_state, train_rl
    from alignlab.rl.teacher import load_teacher
    from alignlab.train.loop import seed_everything
    from alignlab.train.world import World

    world = World.for_run(cfg)
    seed_everything(cfg.seed)
    state = build_state(cfg, world, reward_fn=None, reference=False, critic=False, model=model, tokenizer=tokenizer)
    state.teacher = load_teacher(cfg, state)  # a frozen local model, or a RemoteTeacher endpoint
    state.evaluate = held_out_divergence
    return train_rl(state, distill_step, "distill", records=rows, eval_records=eval_rows, callbacks=callbacks)
