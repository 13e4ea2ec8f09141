"""`alignlab dpo`: the DPO family (dpo, ipo, simpo, orpo, kto, ...) on preference or unpaired data.

Wiring only: rows from `data.sources` (task "preference", or "unpaired" when the loss is; paired
files are unpaired automatically for kto), token ids from `data.tokenize` (joint prompt+completion
tokenisation, EOS on plain text), batches from `data.pairs` in the chosen forward path, the step
from `train.preference`, the reference strategy from the LossMix's `needs_reference`, the loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from alignlab.config import ConfigError
from alignlab.errors import AlignlabError
from alignlab.train.config import TrainConfig


@dataclass
class DPOConfig(TrainConfig):
    model: str = "smollm2-135m-instruct"
    """Policy to train: HF directory, hub id (offline cache) or alias (smollm2-135m-instruct, tiny-random)."""
    ref_model: str | None = None
    """Separate frozen reference; null: the policy's own starting weights (the LoRA base when lora is set)."""
    data_format: str | None = None
    """Force the data format (e.g. sharegpt, preference, messages); null detects it."""
    loss: list[str] = field(default_factory=lambda: ["dpo"])
    """Loss or weighted list of losses: dpo, cdpo, robust, ipo, hinge, sigmoid_norm, simpo, orpo, apo_zero,
    apo_down, bco_pair, sft, kto (unpaired). [dpo, sft] with loss_weights [1, 0.2] is RPO."""
    loss_weights: list[float] | None = None
    """One weight per loss (default all 1.0)."""
    loss_params: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per-loss parameters, e.g. {cdpo: {label_smoothing: 0.1}, simpo: {gamma: 0.5}, kto: {desirable_weight: 1.0}}."""
    beta: float | None = None
    """Strength of the KL-to-reference (inverse temperature); null takes the first loss's usual value
    (0.1 for dpo, 5 for sigmoid_norm, 2 for simpo)."""
    reference: Literal["auto", "model", "adapter", "cache", "none"] = "auto"
    """auto: none if no loss needs one, the disabled LoRA adapter for a LoRA policy, else a frozen model.
    cache: reference log-probs computed once before training, cached on disk, the reference freed."""
    ref_cache_dir: str | None = None
    """Where cached reference log-probs live (default $ALIGNLAB_CACHE/ref_logps; reused across runs)."""
    forward_path: Literal["plain", "packed", "prefix"] = "prefix"
    """prefix: [prompt|chosen|rejected] in one block, the prompt computed once (fastest, same numbers);
    packed: padding-free rows; plain: 2B padded rows as TRL."""
    row_tokens: int = 0
    """Packed/prefix rows hold up to max(row_tokens, longest pair) tokens; 0 caps rows at the longest pair,
    fastest with sdpa on CPU (a masked row costs its length squared in attention)."""
    max_prompt_length: int | None = None
    """Truncate longer prompts (from the start, keeping the end); null: half of max_length when needed."""
    logprob_chunk_size: int = 1024
    """Tokens per LM-head chunk (memory ~ chunk x vocab x 4 bytes)."""
    learning_rate: float = 1e-6
    """Peak learning rate (DPO full fine-tuning ~5e-7..5e-6; LoRA ~5e-6..5e-5)."""

    def validate(self) -> None:
        super().validate()
        if self.beta is not None and self.beta <= 0:
            raise ConfigError(f"beta: must be positive, got {self.beta}")
        if self.row_tokens < 0 or self.logprob_chunk_size < 1:
            raise ConfigError("row_tokens must be >= 0 and logprob_chunk_size >= 1")


def load_split(cfg: DPOConfig, task: str) -> tuple[list, list]:
    """(train rows, eval rows) of the task, eval from eval_data or a seeded held-out split."""
    from alignlab.data.sources import load_rows
    from alignlab.recipes.sft import split_eval

    if not cfg.data:
        raise AlignlabError("data: give a preference file, e.g. data=../shared/data/llamafactory_demo/dpo_en_demo.json")

    def load(path: str) -> list:
        result = load_rows(path, task=task, format=cfg.data_format, on_bad_row=cfg.on_bad_row)
        if result.skipped:
            print(f"{path}: skipped bad records {dict(result.skipped)}", flush=True)
        return result.rows

    rows = load(cfg.data)
    if cfg.eval_data:
        return rows, load(cfg.eval_data)[: cfg.max_eval_rows]
    return split_eval(rows, cfg.eval_split, cfg.seed, cfg.max_eval_rows)


def tokenize_rows(rows: list, tokenizer: Any, cfg: DPOConfig, source: str, paired: bool) -> list:
    """Tokenised pairs (or unpaired examples); ones left with an empty completion are dropped, as TRL does."""
    from alignlab.data.tokenize import tokenize_pair, tokenize_unpaired
    from alignlab.ops.logprobs import scored_tokens

    out = []
    for row in rows:
        if paired:
            ex = tokenize_pair(row, tokenizer, cfg.max_length, cfg.max_prompt_length)
            keep = scored_tokens(ex.prompt_ids, ex.chosen_ids) and scored_tokens(ex.prompt_ids, ex.rejected_ids)
        else:
            ex = tokenize_unpaired(row, tokenizer, cfg.max_length, cfg.max_prompt_length)
            keep = scored_tokens(ex.prompt_ids, ex.completion_ids) > 0
        if keep:
            out.append(ex)
    if len(out) < len(rows):
        print(f"{source}: {len(rows) - len(out)} rows have no completion token left within max_length "
              f"{cfg.max_length}; dropped", flush=True)
    if not out:
        raise AlignlabError(f"{source}: no trainable rows (raise max_length?)")
    return out


def load_policy(cfg: DPOConfig) -> tuple[Any, Any]:
    from alignlab.recipes.sft import prepare_model

    return prepare_model(cfg)


def make_reference(cfg: DPOConfig, kind: str, policy: Any, source: Any):
    """The reference object for the step; `source` is the model whose weights are the reference."""
    from alignlab.train.preference import AdapterReference, CachedReference, ModelReference, NoReference

    chunk = cfg.logprob_chunk_size
    if kind == "none":
        return NoReference()
    if kind == "cache":
        return CachedReference()
    if kind == "adapter":
        return AdapterReference(chunk)
    import torch

    # Under bf16 autocast the frozen reference keeps its Linear weights in bf16: same numbers, no per-step casts.
    return ModelReference(source, chunk, autocast_dtype=torch.bfloat16 if cfg.bf16 else None)


def reference_source(cfg: DPOConfig, kind: str, policy: Any) -> tuple[Any, str]:
    """(model holding the reference weights, live kind that computes from it)."""
    from alignlab.models.load import load_model
    from alignlab.train.preference import is_peft

    if kind in ("none", "adapter"):
        return policy, kind
    if cfg.ref_model:
        return load_model(cfg.ref_model), "model"
    if is_peft(policy):
        return policy, "adapter"
    return load_model(cfg.model), "model"  # a frozen copy of the policy's starting weights


def cached_sets(cfg: DPOConfig, sets: list[list], policy: Any, collate: Any, device: str) -> list[list]:
    """Attach cached reference log-probs to each set, computing them once (then freeing the reference)."""
    import gc

    from alignlab.train.refcache import load_or_compute

    source, live_kind = reference_source(cfg, "cache", policy)
    live = make_reference(cfg, live_kind, policy, source)
    settings = {"max_length": cfg.max_length, "max_prompt_length": cfg.max_prompt_length, "model": cfg.model,
                "ref_model": cfg.ref_model, "data_format": cfg.data_format}
    if cfg.bf16:  # a separate reference then computes under bf16 autocast (make_reference); float32 keys unchanged
        settings["bf16"] = True
    out = []
    for examples in sets:
        if not examples:
            out.append(examples)
            continue
        cache = load_or_compute(live, policy, source, examples, collate, settings=settings,
                                cache_dir=cfg.ref_cache_dir, batch_size=max(cfg.micro_batch_size(), 1),
                                device=device, progress=cfg.progress != "none")
        print(f"reference log-probs: {'reused' if cache.hit else 'computed and saved'} {cache.path}", flush=True)
        out.append(cache.attach(examples))
    del live, source
    gc.collect()  # the separate reference model is not needed again
    return out


def _summary(result: Any, cfg: DPOConfig) -> dict[str, float]:
    last = dict(result.evals[-1]) if result.evals else {}
    last.pop("step", None)
    pairs_s = result.step * cfg.batch_size / max(result.train_runtime, 1e-9)
    return {"pairs_per_second": round(pairs_s, 3), **{k: round(v, 4) for k, v in last.items()}}


def run(cfg: DPOConfig):
    """Train and return the loop's TrainResult; the model lands in cfg.output_dir."""
    import torch

    from alignlab.data.pairs import PairCollator, unpaired_as_pairs
    from alignlab.losses import combine
    from alignlab.recipes.sft import saved_config_text
    from alignlab.train.loop import evaluate, seed_everything, train
    from alignlab.train.preference import PreferenceStep, UnpairedStep, choose_reference_kind
    from alignlab.train.world import World

    mix = combine(cfg.loss, cfg.loss_weights, cfg.loss_params)
    beta = cfg.beta if cfg.beta is not None else mix.default_beta
    world = World.from_env(cfg.device)
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    seed_everything(cfg.seed)
    tokenizer, policy = load_policy(cfg)
    rows, eval_rows = load_split(cfg, "preference" if mix.paired else "unpaired")
    train_set = tokenize_rows(rows, tokenizer, cfg, cfg.data, mix.paired)
    eval_set = tokenize_rows(eval_rows, tokenizer, cfg, cfg.eval_data or "held-out", mix.paired) if eval_rows else []
    micro = cfg.micro_batch_size(world.size)
    if not mix.paired:  # mismatched-completion groups of one process's micro-batch: the same data on any world size
        group = cfg.micro_batch_size()
        train_set, eval_set = unpaired_as_pairs(train_set, group), unpaired_as_pairs(eval_set, group) if eval_set else []
    collate = PairCollator(tokenizer.pad_token_id, cfg.forward_path, row_tokens=cfg.row_tokens or None)
    kind = choose_reference_kind(cfg.reference, mix.needs_reference, policy, bool(cfg.ref_model))
    if kind == "cache":
        train_set, eval_set = cached_sets(cfg, [train_set, eval_set], policy, collate, world.device)
        reference = make_reference(cfg, "cache", policy, None)
    else:
        source, kind = reference_source(cfg, kind, policy)
        reference = make_reference(cfg, kind, policy, source)
    step_cls = PreferenceStep if mix.paired else UnpairedStep
    step_fn = step_cls(mix, reference, beta=beta, chunk_size=cfg.logprob_chunk_size)
    print(f"dpo: loss {list(mix.names)} beta {beta}, reference {kind}, forward path {cfg.forward_path}, "
          f"{len(train_set)} train / {len(eval_set)} eval examples", flush=True)

    def eval_fn(model: Any) -> dict[str, float]:
        return evaluate(model, step_fn, eval_set, collate, batch_size=micro, device=world.device, cfg=cfg)

    result = train(cfg, policy, step_fn, train_set, collate, eval_fn=eval_fn if eval_set else None,
                   tokenizer=tokenizer, world=world, config_yaml=saved_config_text(cfg) if world.is_main else None,
                   unit="pairs" if mix.paired else "samples")
    if world.is_main:
        print(f"dpo done: {result.step} steps in {result.train_runtime:.1f}s; {_summary(result, cfg)}; "
              f"model in {cfg.output_dir}", flush=True)
    return result
