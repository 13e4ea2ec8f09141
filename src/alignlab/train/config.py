"""The training commands' config keys, in three groups so a command holds only what it honours:
`RunConfig` (model, output, cadence, resume, precision: every trainer), `OptimConfig` (optimizer, schedule,
batch arithmetic: every trainer), and `TrainConfig` = both + an offline data file, its split and truncation
(sft, dpo, rm, pretrain). Online RL (rl/config.py) builds on RunConfig + OptimConfig with its own data keys.

Every key can be set in YAML or as `key=value` on the command line (`alignlab sft max_steps=30 lora.r=8`).
Batch arithmetic: `batch_size` sequences (or pairs) make one optimizer step; they are split into
`grad_accum` micro-batches, and under data parallelism each of `world_size` ranks takes its share, so
micro_batch = batch_size / (grad_accum * world_size) and the global batch never depends on the launcher.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from alignlab.config import ConfigError
from alignlab.errors import AlignlabError
from alignlab.models.lora import LoraConfig


@dataclass
class RunConfig:
    """What every training command honours, offline or online: the model, where results go, when to log,
    evaluate and save, how to resume, precision, device and adapters."""

    model: str = "tiny-random"
    """Model to train: a local HF directory, a hub id (offline cache) or an alias such as smollm2-135m-instruct."""
    output_dir: str = "runs/train"
    """Where checkpoints, the final model, metrics.jsonl and config.yaml go."""
    seed: int = 42
    """Seeds python, numpy and torch, the data order and dropout; the same seed gives the same run."""
    logging_steps: int = 10
    """Write a metrics.jsonl line (and a progress update) every N optimizer steps (RL commands: RL steps)."""
    eval_steps: int = 0
    """Evaluate every N optimizer steps (RL commands: RL steps; 0: only before and after training when there is eval
    data)."""
    save_steps: int = 0
    """Write a resumable checkpoint every N optimizer steps (RL commands: RL steps; 0: only the final model)."""
    keep_last: int = 2
    """Keep only the newest N checkpoints (the final model in output_dir is always kept)."""
    resume: str = "auto"
    """auto: continue from the newest complete checkpoint in output_dir if any; never; or a checkpoint path."""
    bf16: bool = False
    """Run forward passes under bfloat16 autocast (weights and optimizer stay fp32). Faster on GPUs and on CPUs with
    bf16 matrix instructions (AVX512-BF16, AMX: SmolLM2 SFT ~1.7x here); slower on CPUs without them."""
    device: str = "auto"
    """cpu, cuda, cuda:1 ... or auto (cuda when available, else cpu)."""
    gradient_checkpointing: bool | Literal["selective"] = False
    """true: keep only each layer's input and recompute the layer in backward (least activation memory, one more
    forward); selective: keep the matrix products' and attention's outputs and recompute the cheap ops (norms,
    activations, casts) in backward. Same numbers either way (models/checkpointing.py). TRL's SFT default is on."""
    compile: bool = False
    """torch.compile the MLP and RMSNorm blocks of the model trained and of its frozen reference (attention and the
    sampler's decode stay eager): fused elementwise kernels, ~10% off a SmolLM2 forward + backward on one CPU thread,
    after a one-off compile of ~20 s per process; needs a C++ compiler on CPU. The plain path's numbers to rounding
    (float32; bf16 rounds differently), the policy's and the reference's forwards bit-equal (models/compiled.py)."""
    cpu_threads: int = 0
    """torch intra-op threads on CPU; 0 keeps torch's default (one per core). 1 is much faster when other
    jobs share the cores (oversubscribed threads spin)."""
    chat_template: str | None = None
    """Jinja chat-template FILE replacing the model's own for chat data and chat prompts (and saved with the
    trained tokenizer); null keeps the model's template (the default ChatML when it has none)."""
    lora: LoraConfig | None = None
    """LoRA adapter settings ({r, alpha, dropout, target_modules}); null trains all weights."""
    progress: Literal["auto", "rich", "plain", "none"] = "auto"
    """Progress display: rich bar on a terminal, plain periodic lines otherwise (auto), or forced."""
    report_to: list[str] = field(default_factory=list)
    """Experiment trackers that also receive every logged row: any of tensorboard, wandb (offline unless
    WANDB_MODE), mlflow (file store in output_dir/mlruns unless MLFLOW_TRACKING_URI), trackio. Each needs its
    own package; a missing one is an error when the config is read. metrics.jsonl and report.html are always written."""

    def validate(self) -> None:
        for name in ("logging_steps",):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if min(self.eval_steps, self.save_steps) < 0:
            raise ConfigError("eval_steps and save_steps must not be negative")
        if self.keep_last < 1:
            raise ConfigError(f"keep_last: must be at least 1, got {self.keep_last}")
        if self.cpu_threads < 0:
            raise ConfigError(f"cpu_threads: must be >= 0 (0: torch's default), got {self.cpu_threads}")
        from alignlab.train.callbacks import check_trackers

        check_trackers(self.report_to)
        check_device(self.device)


@dataclass
class OptimConfig:
    """The optimizer, its schedule and the batch arithmetic of one optimizer step."""

    max_steps: int = -1
    """Optimizer steps to run; -1 means run `epochs` passes over the data instead. RL commands count RL steps: a
    rollout and its updates (ppo_epochs x minibatches optimizer steps), as do the schedule and the warmup."""
    epochs: float = 1.0
    """Passes over the training data when max_steps is -1 (fractions allowed). An epoch is whole batches of its own
    shuffle: the examples past the last whole batch (a different few each epoch) are left out of it."""
    batch_size: int = 8
    """Sequences (or pairs) per optimizer step, summed over micro-batches and ranks."""
    grad_accum: int = 1
    """Micro-batches per optimizer step; more saves memory at the same global batch, costs speed (kto and bco_pair:
    their batch statistics, z0 and the reward mean, come from each micro-batch, as in TRL)."""
    learning_rate: float = 2e-5
    """Peak learning rate reached after warmup (LoRA usually wants ~1e-4..3e-4, full fine-tuning ~1e-5..5e-5)."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay, applied to matrices only (biases, norms and 1-D params are not decayed)."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.999
    """AdamW beta2 (0.95 is common for pretraining from scratch)."""
    adam_eps: float = 1e-8
    """AdamW epsilon."""
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay after warmup: cosine or linear toward min_lr_ratio * learning_rate, reached just after the last step
    (as transformers' schedules), or constant."""
    warmup_steps: int = 0
    """Linear warmup steps; wins over warmup_ratio when > 0."""
    warmup_ratio: float = 0.0
    """Warmup as a fraction of the total steps (used when warmup_steps is 0)."""
    min_lr_ratio: float = 0.0
    """Final learning rate as a fraction of the peak (cosine and linear schedules)."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this; 0 disables clipping (the norm is still logged)."""

    def validate(self) -> None:
        for name in ("batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.batch_size % self.grad_accum:
            raise ConfigError(
                f"batch_size ({self.batch_size}) must be a multiple of grad_accum ({self.grad_accum})"
            )
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError(f"max_steps: must be -1 (use epochs) or positive, got {self.max_steps}")
        if self.max_steps == -1 and self.epochs <= 0:
            raise ConfigError(f"epochs: must be positive when max_steps is -1, got {self.epochs}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")
        if self.warmup_steps < 0:
            raise ConfigError("warmup_steps must not be negative")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate: must be positive, got {self.learning_rate}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:  # a negative floor turns the late schedule into gradient ascent
            raise ConfigError(f"min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay: must be >= 0, got {self.weight_decay}")
        if self.max_grad_norm < 0:
            raise ConfigError(f"max_grad_norm: must be >= 0 (0 turns clipping off), got {self.max_grad_norm}")
        if not (0.0 <= self.adam_beta1 < 1.0 and 0.0 <= self.adam_beta2 < 1.0 and self.adam_eps > 0):
            raise ConfigError(f"adam_beta1 and adam_beta2 must be in [0, 1) and adam_eps > 0, got "
                              f"{self.adam_beta1}, {self.adam_beta2}, {self.adam_eps}")

    def micro_batch_size(self, world_size: int = 1) -> int:
        """Sequences one rank feeds to one forward/backward pass."""
        per_step = self.grad_accum * world_size
        if self.batch_size % per_step:
            raise ConfigError(
                f"batch_size ({self.batch_size}) must be a multiple of grad_accum x world_size ({per_step})"
            )
        return self.batch_size // per_step


@dataclass
class TrainConfig(OptimConfig, RunConfig):  # base order: RunConfig's keys list first
    """The offline recipes' keys (sft, dpo, rm, pretrain): RunConfig + OptimConfig + a data file, its held-out
    split, truncation and the distributed strategy."""

    data: str = ""
    """Training data file (jsonl, json, parquet, txt; TRL, Alpaca, ShareGPT formats are detected)."""
    eval_data: str | None = None
    """Validation file; when empty, `eval_split` of the training records are held out instead."""
    eval_split: float = 0.05
    """Fraction of the training records held out (seeded, never trained on) when `eval_data` is not given;
    0 disables evaluation. The split is written to output_dir/split.json."""
    max_eval_rows: int = 200
    """At most this many held-out rows are scored at each evaluation (cost only: the rest of the held-out
    split is still never trained on)."""
    max_length: int = 1024
    """Longest tokenised sequence; longer rows are truncated by the data layer."""
    distributed: Literal["ddp", "fsdp"] = "ddp"
    """Data parallelism under torchrun / accelerate launch: ddp keeps a full copy per rank and all-reduces
    gradients; fsdp shards weights, gradients and AdamW state across ranks (ZeRO-3, the decoder layer as the
    wrap unit), for models whose training state does not fit one device. No effect in a single process."""
    on_bad_row: Literal["error", "skip"] = "error"
    """A malformed data row stops before training (error) or is counted and skipped (skip)."""

    def validate(self) -> None:
        """Cross-field checks; called by `load_config` after the fields are filled."""
        RunConfig.validate(self)
        OptimConfig.validate(self)
        if self.max_length < 1:
            raise ConfigError(f"max_length: must be at least 1, got {self.max_length}")
        if self.max_eval_rows < 1:
            raise ConfigError(f"max_eval_rows: must be at least 1 (eval_split 0 turns evaluation off), got "
                              f"{self.max_eval_rows}")
        if not 0.0 <= self.eval_split < 1.0:
            raise ConfigError(f"eval_split: must be in [0, 1), got {self.eval_split}")


def check_device(device: str) -> None:
    """A device torch knows and this machine has, before any data or model loads (a raw RuntimeError or
    AssertionError came out of the first .to(device))."""
    import torch

    from alignlab.models.load import resolve_device

    if device == "auto":
        return
    try:
        torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device: {device!r} is not a device (cpu, cuda, cuda:1, ... or auto)") from None
    try:
        resolve_device(device)
    except AlignlabError as e:
        raise ConfigError(str(e)) from None
