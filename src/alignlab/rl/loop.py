"""The RL outer loop: for each step, this step's prompts -> a step function (rollout, advantages, updates:
rl/update.py) -> metrics, evaluation, checkpoint. One loop for grpo, ppo and online-dpo.

Exact resume (kill -9 anywhere): a checkpoint holds the policy (full or adapter) and its AdamW state, the critic
and its AdamW state, the KL controller's coefficient, the RNG states and the step. Everything else that changes
the numbers is a pure function of (seed, step): the prompt order (train/batches.Sampler), the sampler's seed, the
minibatch permutation, the learning rate. The reference is built from the starting weights before a
checkpoint is loaded. metrics.jsonl is cut back to the checkpoint's step on resume, so each step appears once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignlab.errors import AlignlabError
from alignlab.files import write_text_atomic
from alignlab.train.world import World


@dataclass
class RLResult:
    """What an RL run returns (the Python API's RunResult wraps it)."""

    step: int
    """RL steps completed."""
    history: list[dict]
    """This process's per-step metrics and evaluations, in order (also in output_dir/metrics.jsonl)."""

    @property
    def evals(self) -> list[dict]:
        """The held-out evaluations (eval_reward, or distill's eval_kl), in order."""
        return [h for h in self.history if any(k.startswith("eval_") for k in h)]


@dataclass
class RLState:
    """What the step functions read: the models, their optimizers, and the pieces the config selects."""

    cfg: Any
    world: World
    policy: Any
    """The policy itself (sampling, saving); `train_policy` is the same model, DDP-wrapped under torchrun."""
    train_policy: Any
    tokenizer: Any
    reward_fn: Callable
    optimizers: list
    reference: Any = None
    """Frozen copy of the starting policy, or None when the LoRA policy with its adapter off is the reference."""
    needs_reference: bool = False
    critic: Any = None
    train_critic: Any = None
    kl_ctl: Any = None
    estimator: Any = None
    """The estimator's AdvantageSpec (policy-gradient recipes)."""
    objective: Any = None
    """The policy loss's PolicyLossSpec (policy-gradient recipes)."""
    dpo: Any = None
    """The preference step (online-dpo)."""
    teacher: Any = None
    """The frozen teacher (distill)."""
    evaluate: Callable[[RLState, list], dict] | None = None
    """(state, held-out prompts) -> eval metrics; None: greedy_eval (mean reward of greedy answers)."""
    more_prompts: Callable[[int, int], list] | None = None
    """(step, round) -> fresh training prompts for dynamic sampling's extra rounds (a pure function: exact resume)."""
    window: dict[str, list[float]] = field(default_factory=dict)
    """Each metric's [sum, steps] since the last logged step (checkpointed: a resumed run logs the same rows)."""

    @property
    def device(self) -> str:
        return self.world.device

    def compute(self, cache: bool):
        """bf16 autocast when cfg.bf16 (cache=False for training forwards: see train.loop.autocast)."""
        from alignlab.train.loop import autocast

        return autocast(self.cfg, self.device, cache=cache)

    def sync(self, model: Any) -> Callable[[bool], Any]:
        """Gradient-sync context per micro-batch: DDP all-reduces on the last one only."""
        return lambda last: self.world.no_sync(model, not last)


def build_state(cfg: Any, world: World, *, reward_fn: Callable | None, reference: bool, critic: bool,
                model: Any = None, tokenizer: Any = None) -> RLState:
    """Policy (LoRA or full, dropout off), tokenizer, the reference (before any resume), critic, optimizers.
    reward_fn: scores each sample (None: the command scores nothing, e.g. distill); model + tokenizer: an
    in-memory policy (the Python API) used instead of cfg.model."""
    import torch

    from alignlab.models.prepare import prepare_model, refuse_untrainable
    from alignlab.ops.embedding import keep_embedding_grad
    from alignlab.rl.critic import build_critic, without_dropout
    from alignlab.train.fsdp import resolve_strategy
    from alignlab.train.optim import build_optimizer
    from alignlab.train.reference import build_reference, start_reference_kind

    # accelerate's DeepSpeed / FSDP plugins act only on code calling Accelerator.prepare: refused (DeepSpeed, in
    # resolve_strategy) or named here, rather than silently running plain DDP
    if resolve_strategy("ddp", world.size) != "ddp":
        raise AlignlabError("accelerate launch is configured for FSDP (ACCELERATE_USE_FSDP), and the online RL "
                            "commands are data-parallel with DDP only; launch with an accelerate config without "
                            "FSDP, or with torchrun (docs/distributed.md)")
    if cfg.cpu_threads > 0:
        torch.set_num_threads(cfg.cpu_threads)
    tokenizer, policy = prepare_model(cfg) if model is None else (tokenizer, model)
    refuse_untrainable(policy, cfg.bf16)
    without_dropout(policy.to(world.device), cfg.gradient_checkpointing, cfg.compile)
    keep_embedding_grad(policy)  # its dense gradient in the LM head's idle block (ops/embedding.py)
    frozen = None
    if reference:  # built from the starting weights, before any checkpoint is loaded (exact resume depends on it)
        frozen = build_reference(policy, start_reference_kind(cfg.reference, policy), bf16=cfg.bf16,
                                 compiled=cfg.compile)
    state = RLState(cfg, world, policy, world.wrap(policy), tokenizer, reward_fn,
                    [build_optimizer(policy, cfg)], reference=frozen, needs_reference=reference)
    if critic:
        if not cfg.value_model and str(cfg.model).startswith("<in-memory"):  # alignlab.api's label: no path
            raise AlignlabError("value_model: the critic is loaded from a model name or directory, and this policy "
                                "is an in-memory model; give value_model=<path or alias> (e.g. its reward model)")
        state.critic, opt = build_critic(cfg, world.device)
        state.train_critic = world.wrap(state.critic)
        state.optimizers.append(opt)
    return state


def greedy_eval(state: RLState, rows: list) -> dict[str, float]:
    """Mean reward of greedy completions on held-out prompts (accuracy for 0/1 rewards); rank 0 only."""
    from alignlab.eval.policy import score_rows
    from alignlab.rl.rollout import encode_rows
    from alignlab.rollout.generate import SamplingConfig, generate

    cfg = state.cfg
    sc = SamplingConfig(max_new_tokens=cfg.max_new_tokens, greedy=True, batch_size=cfg.generation_batch_size)
    with state.compute(cache=True):
        res = generate(state.policy, state.tokenizer, encode_rows(state.tokenizer, rows, cfg.max_prompt_length), sc)
    rewards = score_rows(state.reward_fn, rows, [s.text for s in res.samples], 1)
    return {"eval_reward": sum(rewards) / len(rewards)}


def _window_add(window: dict[str, list[float]], metrics: dict[str, float]) -> None:
    for k, v in metrics.items():
        window.setdefault(k, [0.0, 0])[0] += float(v)
        window[k][1] += 1


def _window_row(window: dict[str, list[float]], lr: float) -> dict[str, float]:
    """The logged row: each metric's mean over the steps since the last logged one (as the offline loop's LogWindow
    and TRL's GRPOTrainer.log; it held the last step's values alone) and the current learning rate; the window is
    emptied."""
    row = {k: total / n for k, (total, n) in window.items()}
    row["learning_rate"] = lr
    window.clear()
    return row


def _save(state: RLState, out: Path, step: int, config_yaml: str) -> None:
    """checkpoint-<step> with the critic and its optimizer and the KL coefficient (rank 0; others wait)."""
    import torch

    from alignlab.train.checkpoint import save_checkpoint, save_model, step_state

    if state.world.is_main:
        def extras(d: Path) -> None:
            if state.critic is not None:
                save_model(state.critic, d / "critic")
                torch.save(state.optimizers[1].state_dict(), d / "critic_optimizer.pt")

        kl = state.kl_ctl.value if state.kl_ctl is not None else None
        # online DPO's loss state (BCO's running reward mean) changes later steps' numbers: saved as offline DPO's
        extra = step_state(state.dpo) if state.dpo is not None else {}
        save_checkpoint(out, step, state.policy, state.optimizers[0], {"kl_coef": kl, "log_window": state.window,
                                                                       **extra},
                        tokenizer=state.tokenizer,
                        config_yaml=config_yaml, keep_last=state.cfg.keep_last, extras=extras)
    state.world.barrier()


def _resume(state: RLState, ckpt: Path) -> int:
    """Load a checkpoint into the state; returns its step."""
    from dataclasses import replace

    from alignlab.train.checkpoint import (
        load_checkpoint,
        load_model_weights,
        load_tensors,
        restore_step_state,
    )

    info = load_checkpoint(ckpt, state.policy, state.optimizers[0])
    if state.critic is not None:
        load_model_weights(state.critic, ckpt / "critic")
        state.optimizers[1].load_state_dict(load_tensors(ckpt / "critic_optimizer.pt"))
    if state.kl_ctl is not None and info.get("kl_coef") is not None:
        state.kl_ctl = replace(state.kl_ctl, value=float(info["kl_coef"]))
    if state.dpo is not None:
        restore_step_state(state.dpo, info)
    state.window = {k: list(v) for k, v in (info.get("log_window") or {}).items()}
    return int(info["step"])


def push_policy(state: RLState, out: Path, step: int) -> None:
    """Send the policy's weights after `step` optimizer steps (full, or the LoRA adapter) to the external rollout
    engine, so the next rollout samples from them (rank 0 writes and pushes; the others wait).

    Each push is a new directory (rollout_weights/step-N; the previous one is removed once the engine has the
    new one): vLLM keys its prefix cache by the adapter's name and path, so an adapter reloaded in place from
    the same path would keep serving prompt KV blocks computed with the old weights (its own warning says so)."""
    import shutil

    from alignlab.rollout.remote import push_weights
    from alignlab.train.checkpoint import save_model

    if state.world.is_main:
        root = out / "rollout_weights"
        path = root / f"step-{step}"
        save_model(state.policy, path)
        push_weights(state.cfg.rollout_engine, path)
        for old in root.iterdir():
            if old != path:
                shutil.rmtree(old) if old.is_dir() else old.unlink()
    state.world.barrier()


def _set_lr(state: RLState, step: int, total: int, warmup: int) -> float:
    from alignlab.train.optim import lr_at

    cfg = state.cfg
    for opt in state.optimizers:
        lr = lr_at(step, base_lr=opt.defaults["lr"], total_steps=total, warmup_steps=warmup,
                   schedule=cfg.lr_scheduler, min_lr_ratio=cfg.min_lr_ratio)
        for group in opt.param_groups:
            group["lr"] = lr
    return state.optimizers[0].param_groups[0]["lr"]


def _summary(label: str, history: list[dict], out: Path) -> None:
    steps = [h for h in history if "reward_mean" in h]
    if steps:
        kl = "".join(f", {k} {steps[-1][k]:.3f}" for k in steps[-1] if k.startswith("kl_k"))
        print(f"{label}: reward_mean {steps[0]['reward_mean']:.3f} -> {steps[-1]['reward_mean']:.3f}{kl}; "
              f"model in {out}", flush=True)


def train_rl(state: RLState, step_fn: Callable[[RLState, int, list], dict], label: str, *,
             on_step: Callable[[RLState, int], None] | None = None,
             prompts: tuple[list, list] | None = None, records: Any = None, eval_records: Any = None,
             callbacks: Any = ()) -> RLResult:
    """Run the RL steps with checkpoints, exact resume, held-out evals and live metrics; returns this process's
    per-step metrics (also in output_dir/metrics.jsonl) and saves the policy (and critic). prompts: (train, held-out)
    PromptRows instead of cfg.data's split; records / eval_records: in-memory records split as cfg.data would be.
    callbacks (train.callbacks) see every log, eval, save and step end; one may ask to stop (evaluated, saved)."""
    from alignlab.ops.buffers import reused_buffers
    from alignlab.train.batches import Sampler
    from alignlab.train.callbacks import run_events
    from alignlab.train.optim import warmup_steps_for
    from alignlab.train.step import NonFiniteStep

    cfg, world, out = state.cfg, state.world, Path(state.cfg.output_dir)
    train_rows, eval_rows, n_total, config_yaml, start = _start(state, prompts, records, eval_records)
    warmup, sampler = warmup_steps_for(cfg, n_total), Sampler(len(train_rows), cfg.batch_size, cfg.seed)
    events = run_events(cfg, out, world, n_total, start, callbacks)
    history: list[dict] = []

    def evaluate(step: int) -> None:
        if eval_rows and world.is_main:
            row = (state.evaluate or greedy_eval)(state, eval_rows)
            events.on_eval(step, row)
            history.append({"step": step, **row})
        world.barrier()

    if cfg.rollout_engine is not None:
        push_policy(state, out, start)  # the engine starts from this run's weights (fresh or resumed)
    if start == 0:
        evaluate(0)
    t0, done = time.perf_counter(), start
    with reused_buffers(), events.ended_on_error():  # scratch blocks, weight casts live across steps (ops/buffers.py)
        for step in range(start, n_total):
            lr = _set_lr(state, step, n_total, warmup)
            try:
                metrics = step_fn(state, step, [train_rows[i] for i in sampler.step_indices(step)])
            except NonFiniteStep as e:
                raise AlignlabError(f"step {step + 1}: {e}; stopped before the update. The newest checkpoint in {out} "
                                    "is from before it: lower learning_rate") from None
            metrics["learning_rate"] = lr
            if cfg.rollout_engine is not None:
                push_policy(state, out, step + 1)
            done = step + 1
            stop = world.all_reduce_sum(float(events.on_step_end(done, metrics))) > 0
            _window_add(state.window, metrics)
            if done % cfg.logging_steps == 0 or done == n_total or stop:
                events.on_log(done, _window_row(state.window, lr))
            history.append({"step": done, **metrics})
            if on_step is not None:
                on_step(state, done)
            if (cfg.eval_steps and done % cfg.eval_steps == 0) or done == n_total or stop:
                evaluate(done)
            if cfg.save_steps and (done % cfg.save_steps == 0 or done == n_total):
                _save(state, out, done, config_yaml)
                events.on_save(done, out / f"checkpoint-{done}")
            if stop:
                break
    _finish(state, events, done, time.perf_counter() - t0, label, history)
    return RLResult(done, history)


def _start(state: RLState, prompts: Any, records: Any, eval_records: Any) -> tuple[list, list, int, str, int]:
    """The prompts' split, the resume guards and checkpoint, this run's config.yaml and split: (train prompts,
    held-out prompts, total steps, the config's text, the step the run starts at)."""
    from alignlab.config import config_text
    from alignlab.data.prepare import write_split
    from alignlab.rl.prompts import split_prompts
    from alignlab.train.batches import Sampler, epoch_note, total_steps
    from alignlab.train.checkpoint import remove_stale_temps
    from alignlab.train.resume import model_sources, resume_point

    cfg, world, out = state.cfg, state.world, Path(state.cfg.output_dir)
    if prompts is None:
        train_rows, eval_rows, split = split_prompts(cfg, records, eval_records)
    else:
        (train_rows, eval_rows), split = prompts, {"data": "in memory", "train_prompts": len(prompts[0]),
                                                   "eval_prompts": len(prompts[1])}
    n_total, config_yaml = total_steps(cfg, len(train_rows)), config_text(cfg)
    # the guards: same config, a finished run says so (AlreadyDone), resume=never sets an earlier run aside
    ckpt = resume_point(out, cfg.resume, config_yaml, n_total, is_main=world.is_main)
    if world.is_main:
        if note := epoch_note(len(train_rows), cfg.batch_size, "prompts"):
            print(note, flush=True)
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out)
        write_text_atomic(out / "config.yaml", config_yaml)
        models = model_sources(cfg)  # the folders the reference, critic and reward model are rebuilt from
        write_split(out, {**split, "models": models} if models else split, resuming=ckpt is not None)
    start = _resume(state, ckpt) if ckpt is not None else 0
    if ckpt is not None:
        print(f"resuming from {ckpt} at step {start}/{n_total}", flush=True)
    extra = Sampler(len(train_rows), cfg.batch_size, cfg.seed + 1)  # dynamic sampling's extra rounds (< 1000)
    state.more_prompts = lambda step, rnd: [train_rows[i] for i in extra.step_indices(step * 1000 + rnd)]
    return train_rows, eval_rows, n_total, config_yaml, start


def _finish(state: RLState, events: Any, done: int, runtime: float, label: str, history: list[dict]) -> None:
    """The final policy (and critic) saved, the run's end told to the callbacks, the summary printed."""
    from alignlab.train.checkpoint import save_model

    out = Path(state.cfg.output_dir)
    if state.world.is_main:
        save_model(state.policy, out, state.tokenizer)
        if state.critic is not None:  # a PPO run can be continued or its critic reused
            save_model(state.critic, out / "critic")
    events.on_save(done, out)
    events.on_train_end(done, {"step": done, "train_runtime": runtime})
    state.world.barrier()
    if state.world.is_main:
        _summary(label, history, out)
