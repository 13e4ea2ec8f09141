"""The one training loop every recipe uses (read top to bottom, nanoGPT-style).

A recipe supplies a model, a dataset (any sequence of already-tokenised examples), a `collate`
that turns a list of examples into a batch dict, and a step function

    step_fn(model, batch) -> (loss, metrics)

where `loss` is a scalar tensor: the MEAN over the batch's units (trained tokens for LM losses,
pairs for preference losses) and `metrics` a dict of detached floats/tensors with the same
weighting. The loop weighs micro-batches by `batch_weight(batch)` (the batch's `num_items`, else
its count of trained label tokens, else 1) so that an optimizer step's gradient is the mean over
the whole global batch whatever grad_accum and world size are (the gradient-accumulation fix
HF Trainer applies with `num_items_in_batch`).

Data order is a pure function of (seed, step) (train/batches.py), so resuming needs only the step.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignlab.errors import AlignlabError
from alignlab.files import write_text_atomic
from alignlab.models.checkpointing import enable_checkpointing
from alignlab.models.compiled import compile_blocks
from alignlab.models.kept_casts import keep_weight_casts, share_input_casts
from alignlab.models.lean_blocks import lean_blocks
from alignlab.models.prepare import refuse_untrainable
from alignlab.ops.embedding import keep_embedding_grad
from alignlab.train import fsdp
from alignlab.train.batches import (
    Sampler,
    batch_weight,
    count_tokens,
    epoch_note,
    step_totals,
    to_device,
    total_steps,
)
from alignlab.train.callbacks import Callback, run_events
from alignlab.train.checkpoint import (
    load_checkpoint,
    remove_stale_temps,
    restore_step_state,
    rng_state,
    save_checkpoint,
    save_model,
    step_state,
)
from alignlab.train.config import TrainConfig
from alignlab.train.log_window import LogWindow
from alignlab.train.optim import build_optimizer, lr_at, warmup_steps_for
from alignlab.train.resume import model_sources, resume_point
from alignlab.train.step import NonFiniteStep, Weighted, add_margins, optimizer_step
from alignlab.train.world import World

StepFn = Callable[[Any, dict], tuple[Any, dict]]


class TrainingDiverged(AlignlabError):
    """The loss or gradient norm became NaN/inf; the message names the step and the batch."""


@dataclass
class TrainResult:
    step: int
    """Optimizer steps completed."""
    total_steps: int
    train_runtime: float
    """Seconds spent in the loop (excluding model loading and data preparation)."""
    last_log: dict[str, Any] = field(default_factory=dict)
    evals: list[dict[str, Any]] = field(default_factory=list)
    """Every evaluation's metrics with its step, first (before training) to last."""
    finished: bool = True
    """False when the run was stopped early by `stop_at` (simulated crash)."""
    start_step: int = 0
    """The step this call resumed from (0: a fresh run); train_runtime covers steps start_step + 1 .. step."""

    def done_line(self) -> str:
        """'N steps in T s', or after a resume 'k of N steps in T s': the seconds are this call's steps'."""
        ran = self.step - self.start_step
        return f"{f'{ran} of {self.step}' if self.start_step else ran} steps in {self.train_runtime:.1f}s"


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast(cfg: TrainConfig, device: str, *, cache: bool = True):
    """bf16 autocast when cfg.bf16. cache=False for training steps: autocast's cache keeps a bf16 copy of
    every trainable weight until the region ends, but a training forward uses each weight once, so it
    buys nothing there and costs memory (214 MB for SmolLM2) and fresh allocations (SFT step 11% slower)."""
    import torch

    if not cfg.bf16:
        return nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, cache_enabled=cache)


def _float(x: Any) -> float:
    return float(x.item()) if hasattr(x, "item") else float(x)


def evaluate(model: Any, step_fn: StepFn, dataset: Sequence, collate: Callable, *, batch_size: int,
             device: str, cfg: TrainConfig | None = None, prefix: str = "eval_") -> dict[str, float]:
    """Weighted mean of the step function's loss and metrics over `dataset` (no grad, eval mode): each key over
    the batches that report it (KTO's rewards/rejected is absent from a batch of desirable examples only; it
    was averaged as if 0 there, so the eval_* values moved with the eval batch size), as in training's log."""
    import torch

    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    with torch.no_grad():
        for i in range(0, len(dataset), batch_size):
            batch = to_device(collate([dataset[j] for j in range(i, min(i + batch_size, len(dataset)))]), device)
            with autocast(cfg, device) if cfg else nullcontext():
                loss, metrics = step_fn(model, batch)
            w = batch_weight(batch)
            for k, v in {"loss": loss, **metrics}.items():
                v, share = Weighted.split(v, w)  # as optimizer_step
                sums[k] = sums.get(k, 0.0) + _float(v) * share
                weights[k] = weights.get(k, 0.0) + share
    model.train(was_training)
    return {prefix + k: v for k, v in add_margins({k: v / max(weights[k], 1e-12) for k, v in sums.items()}).items()}


def _diverged(cfg: TrainConfig, step: int, e: NonFiniteStep, idx: list[int], rank: int = 0) -> TrainingDiverged:
    """The error for a non-finite loss or gradient at optimizer step `step` (1-based), with its rows written out.

    A gradient norm is the same on every rank, and `idx` is the whole step's rows: rank 0 writes bad_batch.json. A
    loss is this rank's micro-batch (`idx`: its rows), possibly on this rank alone: each rank whose loss failed
    writes its own file (rank r > 0: bad_batch.rank<r>.json), with no collective on the way out."""
    own = rank > 0 and e.micro is not None
    bad = Path(cfg.output_dir) / (f"bad_batch.rank{rank}.json" if own else "bad_batch.json")
    if rank == 0 or own:
        import json

        from alignlab.files import write_text_atomic

        bad.parent.mkdir(parents=True, exist_ok=True)
        record = {"step": step, "what": f"{e.what} {e.value}", **({"rank": rank} if rank else {}), "indices": idx}
        write_text_atomic(bad, json.dumps(record) + "\n")
    where = f"micro-batch {e.micro}, " if e.micro is not None else ""
    return TrainingDiverged(
        f"{e.what} is {e.value} at step {step} ({where}dataset indices {idx[:8]}{'...' if len(idx) > 8 else ''}; "
        f"all in {bad}); stopping before the update. The newest checkpoint in {cfg.output_dir} is from before the "
        "divergence: lower learning_rate or check those rows.")


def _prepare_model(cfg: TrainConfig, model: Any, world: World) -> tuple[bool, Any]:
    """Threads, checkpointing, compiled blocks, placement, the embedding's kept gradient, lean norm and SwiGLU blocks,
    shared bf16 input and kept weight casts, FSDP sharding: (sharded, FSDP-wrapped model or None)."""
    import torch

    if cfg.cpu_threads > 0:
        torch.set_num_threads(cfg.cpu_threads)
    refuse_untrainable(model, cfg.bf16)
    enable_checkpointing(model, cfg.gradient_checkpointing)
    compile_blocks(model, cfg.compile)
    if not getattr(model, "hf_device_map", None):  # device-mapped (e.g. 4-bit QLoRA) models stay put
        model.to(world.device)
    # FSDP replaces the parameters by their shards, so it wraps before the optimizer sees them.
    sharded = fsdp.resolve_strategy(cfg.distributed, world.size) == "fsdp"
    if not sharded:
        keep_embedding_grad(model)  # the input embedding's dense gradient in the LM head's idle block
        # fewer activations held (same numbers) where recomputation does not drop them: lean blocks, shared casts
        lean_blocks(model, not cfg.gradient_checkpointing)
        share_input_casts(model, cfg.bf16 and not cfg.compile and not cfg.gradient_checkpointing)
        # one bf16 cast per weight per optimizer step, where a step would cast it more than once
        keep_weight_casts(model, cfg.bf16 and not cfg.compile and (cfg.grad_accum > 1 or bool(cfg.gradient_checkpointing)))
    return sharded, fsdp.shard(model, bf16=cfg.bf16) if sharded else None


@dataclass
class _Run:
    """What one `train` call's steps, evaluations and saves share."""

    cfg: TrainConfig
    world: World
    model: Any
    wrapped: Any  # the model as the step function sees it: DDP- or FSDP-wrapped, or itself
    sharded: bool
    optimizer: Any
    step_fn: StepFn
    sampler: Sampler
    events: Any
    eval_fn: Callable[[Any], dict[str, float]] | None
    tokenizer: Any
    config_yaml: str | None
    n_total: int
    window: LogWindow = field(default_factory=LogWindow)
    evals: list[dict[str, Any]] = field(default_factory=list)
    start: int = 0  # the step this call resumed from

    def evaluate(self, step: int) -> None:
        if self.eval_fn is None:
            return
        with autocast(self.cfg, self.world.device):
            metrics = {k: _float(v) for k, v in self.eval_fn(self.world.unwrap(self.wrapped)).items()}
        self.model.train()
        self.evals.append({"step": step, **metrics})
        self.events.on_eval(step, metrics)

    def checkpoint(self, step: int) -> None:
        cfg, world, out = self.cfg, self.world, Path(self.cfg.output_dir)
        full = fsdp.gather_full_state(self.model, self.optimizer) if self.sharded else (None, None)  # collective
        log_window = self.window.state(world)  # collective; the metrics row after a resume continues this window
        rank_rng = world.all_gather_objects(rng_state()) if world.size > 1 else None  # each rank's dropout
        if world.is_main:
            state = {"samples_seen": step * cfg.batch_size, "epoch": step * cfg.batch_size / self.sampler.per_epoch,
                     "total_steps": self.n_total, "lr_scheduler": {"step": step}, "log_window": log_window,
                     **step_state(self.step_fn)}
            save_checkpoint(out, step, self.model, self.optimizer, state, tokenizer=self.tokenizer,
                            config_yaml=self.config_yaml, keep_last=cfg.keep_last, model_state=full[0],
                            optimizer_state=full[1], rank_rng=rank_rng)
        world.barrier()
        self.events.on_save(step, out / f"checkpoint-{step}")

    def finish(self, done: int, runtime: float, last_log: dict) -> TrainResult:
        """The final model saved (gathered from the shards under FSDP), the run's end told to the callbacks."""
        out = Path(self.cfg.output_dir)
        full = fsdp.gather_full_state(self.model, self.optimizer) if self.sharded else (None, None)  # collective
        if self.world.is_main:
            save_model(self.model, out, self.tokenizer, state_dict=full[0])
        self.events.on_save(done, out)
        self.events.on_train_end(done, {"step": done, "train_runtime": runtime})
        self.world.barrier()
        evals = self.evals
        if not evals and done == self.start and (out / "metrics.jsonl").is_file():
            # resumed with no step left (a kill in the final save): the run's last evaluation is on disk
            from alignlab.train.metrics import read_metrics

            evals = [r for r in read_metrics(out) if any(k.startswith("eval_") for k in r)][-1:]
        return TrainResult(done, self.n_total, runtime, last_log, evals, start_step=self.start)

    def step(self, step: int, dataset: Sequence, collate: Callable[[list], dict], warmup: int) -> tuple[float, Any]:
        """Optimizer step `step` (0-based) on its batch: (learning rate, gradient norm)."""
        cfg, world, t0 = self.cfg, self.world, time.perf_counter()
        micro = self.sampler.micro_indices(step, cfg.grad_accum, world)
        batches = [collate([dataset[i] for i in idx]) for idx in micro]
        weights = [batch_weight(b) for b in batches]
        step_total = world.all_reduce_sum(sum(weights))
        step_totals(batches, step_total, world)
        lr = lr_at(step, base_lr=cfg.learning_rate, total_steps=self.n_total, warmup_steps=warmup,
                   schedule=cfg.lr_scheduler, min_lr_ratio=cfg.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.window.tokens += sum(count_tokens(b) for b in batches)

        def sync(last: bool):  # gradients all-reduce on the last micro-batch only
            return fsdp.gradient_sync(self.wrapped, last) if self.sharded else world.no_sync(self.wrapped, not last)

        forwards = [lambda b=b: self.step_fn(self.wrapped, to_device(b, world.device)) for b in batches]
        try:
            out = optimizer_step(self.optimizer, forwards, weights, total=step_total, world_size=world.size,
                                 max_grad_norm=cfg.max_grad_norm, sync=sync,
                                 compute=lambda: autocast(cfg, world.device, cache=False))
        except NonFiniteStep as e:  # on_train_end(None): CallbackList.ended_on_error
            idx = micro[e.micro] if e.micro is not None else self.sampler.step_indices(step)
            raise _diverged(cfg, step + 1, e, idx, world.rank) from None
        self.window.add(out.metrics, out.weights)
        self.window.end_step(out.grad_norm, time.perf_counter() - t0)
        return lr, out.grad_norm


def _start(cfg: TrainConfig, model: Any, step_fn: StepFn, n_examples: int, world: World, *, eval_fn: Any,
           tokenizer: Any, config_yaml: str | None, callbacks: Sequence[Callback], split: Any) -> tuple[_Run, int]:
    """The model prepared, the optimizer, the resume guards and checkpoint, this run's config.yaml and split.json:
    (the run, the step it starts at)."""
    out = Path(cfg.output_dir)
    n_total = total_steps(cfg, n_examples)
    sampler = Sampler(n_examples, cfg.batch_size, cfg.seed)
    cfg.micro_batch_size(world.size)  # fails early when the batch does not split evenly

    sharded, wrapped = _prepare_model(cfg, model, world)
    optimizer = build_optimizer(model, cfg)
    start, resumed = 0, {}
    # Guards first (same config, finished run, earlier run set aside), then this run's config.yaml.
    ckpt = resume_point(out, cfg.resume, config_yaml, n_total, is_main=world.is_main)
    if world.is_main:
        if note := epoch_note(n_examples, cfg.batch_size):
            print(note, flush=True)
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out)
        if config_yaml is not None:
            write_text_atomic(out / "config.yaml", config_yaml)
        if split is not None:
            if models := model_sources(cfg):
                split.info["models"] = models
            split.save(out, resuming=ckpt is not None)
    seed_everything(cfg.seed)
    if ckpt is not None:  # weights, AdamW moments, RNG states; the data position follows from the step
        resumed = (fsdp.load_checkpoint if sharded else load_checkpoint)(ckpt, model, optimizer, world.rank)
        start = resumed["step"]
        restore_step_state(step_fn, resumed)  # loss state such as BCO's running mean
        print(f"resuming from {ckpt} at step {start}/{n_total}", flush=True)
    if not sharded:
        wrapped = world.wrap(model)
    run = _Run(cfg, world, model, wrapped, sharded, optimizer, step_fn, sampler,
               run_events(cfg, out, world, n_total, start, callbacks), eval_fn, tokenizer, config_yaml, n_total,
               start=start)
    if ckpt is not None:
        run.window.restore(resumed.get("log_window"), world)
    return run, start


def train(
    cfg: TrainConfig,
    model: Any,
    step_fn: StepFn,
    dataset: Sequence,
    collate: Callable[[list], dict],
    *,
    eval_fn: Callable[[Any], dict[str, float]] | None = None,
    tokenizer: Any = None,
    world: World | None = None,
    config_yaml: str | None = None,
    stop_at: int | None = None,
    unit: str = "samples",
    callbacks: Sequence[Callback] = (),
    split: Any = None,
) -> TrainResult:
    """Train `model` on `dataset` with `step_fn`; see the module docstring for the contract.

    eval_fn(model) -> {"eval_loss": ..., ...} runs before training, every `eval_steps`, and at the end
    (model in eval mode, no grad). `tokenizer` is saved with every checkpoint and the final model.
    `config_yaml` (the resolved run config) is written next to them. `stop_at=k` ends the call after
    optimizer step k without the final save, exactly as if the process had died there (resume tests).
    `unit` names what `batch_size` counts for the logged throughput `{unit}_per_second` ("pairs" for DPO).
    `callbacks` (train.callbacks.Callback) see every log, eval, save and step end; one may request a stop.
    `split` (data.prepare.Split) is written as split.json after the resume guard (which may set an earlier run
    aside, its split.json with it).
    """
    from alignlab.ops.buffers import reused_buffers

    world = world or World.from_env(cfg.device)
    run, start = _start(cfg, model, step_fn, len(dataset), world, eval_fn=eval_fn, tokenizer=tokenizer,
                        config_yaml=config_yaml, callbacks=callbacks, split=split)
    n_total, warmup, events = run.n_total, warmup_steps_for(cfg, run.n_total), run.events
    if start == 0:
        run.evaluate(0)
    model.train()
    t_loop = time.perf_counter()
    last_log, done = {}, start
    with reused_buffers(), events.ended_on_error():  # scratch blocks, weight casts live across steps (ops/buffers.py)
        for step in range(start, n_total):
            lr, grad_norm = run.step(step, dataset, collate, warmup)
            done = step + 1
            # A stop any callback on any rank asks for: this step is logged and evaluated, then the final save.
            stop = world.all_reduce_sum(float(events.on_step_end(done, {"grad_norm": grad_norm, "learning_rate": lr}))) > 0
            if done % cfg.logging_steps == 0 or done == n_total or stop:
                last_log = run.window.row(world, lr=lr, batch_size=cfg.batch_size, unit=unit, device=world.device)
                last_log["epoch"] = done * cfg.batch_size / run.sampler.per_epoch
                events.on_log(done, last_log)
            if eval_fn is not None and ((cfg.eval_steps and done % cfg.eval_steps == 0) or done == n_total or stop):
                run.evaluate(done)
            if cfg.save_steps and (done % cfg.save_steps == 0 or done == n_total):
                run.checkpoint(done)
            if stop_at is not None and done >= stop_at and done < n_total:
                events.on_train_end(done, None)
                return TrainResult(done, n_total, time.perf_counter() - t_loop, last_log, run.evals, finished=False,
                                   start_step=start)
            if stop:
                break

    return run.finish(done, time.perf_counter() - t_loop, last_log)
