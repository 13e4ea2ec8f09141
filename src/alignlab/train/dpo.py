"""DPO-family training assembled from its parts, shared by `alignlab dpo`, the demo and the frontier.

The config (`DPOConfig`), tokenised examples (`data.prepare`), the reference (`train.reference`: a frozen
model, the disabled LoRA adapter, log-probs cached once by `train.refcache`, or none, as the LossMix's
`needs_reference` asks), the step (`train.preference`), and `train_lora_dpo`, the LoRA-DPO run on a pairs
file that the demo and the frontier sweep call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from alignlab.config import ConfigError, check_pad_multiple
from alignlab.train.data_config import RowDataConfig


@dataclass
class DPOConfig(RowDataConfig):
    model: str = "smollm2-135m-instruct"
    """Policy to train: HF directory, hub id (offline cache) or alias (smollm2-135m-instruct, tiny-random)."""
    ref_model: str | None = None
    """Separate frozen reference; null: the policy's own starting weights (the LoRA base when lora is set)."""
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
    """Packed/prefix rows hold up to max(row_tokens, longest pair) tokens. 0: a micro-batch in one padding-free row
    under span attention (models alignlab loads with sdpa: a row costs its length), else rows capped at the longest
    pair (a masked sdpa row costs its length squared in attention); data/pairs.py."""
    pad_to_multiple_of: int | None = 16
    """Round each batch's row width up to a multiple of this (a pad tail of its own, never attended to or
    trained on; null: no rounding): rows of every length made oneDNN compile new kernels (~2 ms a matrix shape) and
    grow its cache, as for SFT (recipes/sft.py). The same losses and gradients within bf16 rounding (test)."""
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
        if self.max_prompt_length is not None and not 0 < self.max_prompt_length < self.max_length:
            # <= 0 cut every prompt to nothing, silently
            raise ConfigError(f"max_prompt_length: must be in [1, max_length), got {self.max_prompt_length}")
        check_pad_multiple(self.pad_to_multiple_of)
        check_unpaired_group(self, 1)

    def check_reference_keys(self, needs_reference: bool, ref_model_given: bool = False) -> None:
        """Reference keys the chosen losses and reference kind would not use, refused before any loading (a
        ref_model under reference adapter, or any reference key with simpo alone, trained as if unset)."""
        named = self.ref_model is not None or ref_model_given
        if named and self.reference == "adapter":
            raise ConfigError("ref_model: reference adapter (the LoRA base) does not use it; set reference auto or model")
        if self.ref_cache_dir is not None and self.reference != "cache":
            raise ConfigError(f"ref_cache_dir: only reference cache uses it (reference is {self.reference})")
        if not needs_reference:
            unused = [k for k, on in (("ref_model", named), ("reference", self.reference not in ("auto", "none")))
                      if on]
            if unused:
                raise ConfigError(f"{', '.join(unused)}: no chosen loss ({', '.join(self.loss)}) uses a reference")


def check_unpaired_group(cfg: DPOConfig, world_size: int) -> None:
    """KTO's KL term pairs each example with another example's answer in its micro-batch: it needs two (a raw
    ValueError after the model had loaded)."""
    from alignlab.losses import get_loss_spec

    names = [cfg.loss] if isinstance(cfg.loss, str) else cfg.loss
    if not all(get_loss_spec(n).paired for n in names) and cfg.micro_batch_size(world_size) < 2:
        raise ConfigError(f"{names[0]}: needs a micro-batch of 2 or more examples; raise batch_size or lower "
                          f"grad_accum (batch_size {cfg.batch_size}, grad_accum {cfg.grad_accum}, {world_size} rank(s))")


def dpo_examples(rows: list, tokenizer: Any, cfg: DPOConfig, source: str, paired: bool) -> list:
    """Tokenised pairs (or unpaired examples) of the rows (data.prepare; empty completions are dropped)."""
    from alignlab.data.prepare import preference_examples

    return preference_examples(rows, tokenizer, cfg.max_length, cfg.max_prompt_length, source, paired)


def cached_sets(cfg: DPOConfig, sets: list[list], policy: Any, collate: Any, device: str) -> list[list]:
    """Attach cached reference log-probs to each set, computing them once (then freeing the reference)."""
    import gc

    from alignlab.train.loop import autocast
    from alignlab.train.refcache import load_or_compute
    from alignlab.train.reference import start_reference_kind, step_reference

    live_kind = "model" if cfg.ref_model else start_reference_kind("auto", policy)
    live = step_reference(live_kind, policy, source=cfg.ref_model or cfg.model, chunk_size=cfg.logprob_chunk_size,
                          bf16=cfg.bf16, compiled=cfg.compile)
    if live_kind == "adapter":  # the reference is the policy's own blocks: compiled as training will run them
        from alignlab.models.compiled import compile_blocks

        compile_blocks(policy, cfg.compile)
    key_model = live.model if live_kind == "model" else policy
    settings = {"max_length": cfg.max_length, "max_prompt_length": cfg.max_prompt_length, "model": cfg.model,
                "ref_model": cfg.ref_model, "data_format": cfg.data_format}
    # a separate reference then computes under bf16 autocast, compiled blocks round otherwise: keys apart (the
    # float32, eager keys unchanged)
    settings.update({k: True for k in ("bf16", "compile") if getattr(cfg, k)})
    out = []
    for examples in sets:
        if not examples:
            out.append(examples)
            continue
        # under the training step's autocast: the adapter-off policy, a live reference, runs inside it (a separate
        # model applies its own), so cached and live log-probs are the same numbers under bf16 too
        with autocast(cfg, device, cache=False):
            cache = load_or_compute(live, policy, key_model, examples, collate, settings=settings,
                                    cache_dir=cfg.ref_cache_dir, batch_size=max(cfg.micro_batch_size(), 1),
                                    device=device, progress=cfg.progress != "none")
        print(f"reference log-probs: {'reused' if cache.hit else 'computed and saved'} {cache.path}", flush=True)
        out.append(cache.attach(examples))
    del live, key_model
    gc.collect()  # the separate reference model is not needed again
    return out


def preference_step(cfg: DPOConfig, mix: Any, kind: str, policy: Any, source: Any = "config") -> Any:
    """The step function for the LossMix with the reference of `kind` (none, cache, adapter, model). `source`:
    the reference weights (a name or a model; None copies the policy's starting weights); by default the
    config's ref_model or model."""
    from alignlab.train.preference import PreferenceStep, UnpairedStep
    from alignlab.train.reference import step_reference

    beta = cfg.beta if cfg.beta is not None else mix.default_beta
    source = (cfg.ref_model or cfg.model) if source == "config" else source
    reference = step_reference(kind, policy, source=source, chunk_size=cfg.logprob_chunk_size, bf16=cfg.bf16,
                               compiled=cfg.compile)
    step_cls = PreferenceStep if mix.paired else UnpairedStep
    return step_cls(mix, reference, beta=beta, chunk_size=cfg.logprob_chunk_size)


def lora_dpo_config(model: str, pairs: Any, output_dir: str, *, lora_r: int, beta: float, learning_rate: float,
                    batch_size: int, eval_steps: int, seed: int, cpu_threads: int = 0, progress: str = "auto",
                    epochs: float = 1.0, max_length: int = 256) -> DPOConfig:
    """LoRA-DPO settings (alpha = 2r, no dropout, the disabled adapter as reference, no held-out split) for
    the demo and the frontier, which measure progress with their own eval function."""
    from alignlab.models.lora import LoraConfig

    dcfg = DPOConfig(model=model, data=str(pairs), output_dir=output_dir,
                     lora=LoraConfig(r=lora_r, alpha=2 * lora_r, dropout=0.0), beta=beta,
                     learning_rate=learning_rate, batch_size=batch_size, epochs=epochs, eval_steps=eval_steps,
                     logging_steps=max(1, eval_steps // 2), warmup_ratio=0.1, max_length=max_length, seed=seed,
                     cpu_threads=cpu_threads, progress=progress, reference="adapter", resume="never", eval_split=0.0)
    dcfg.validate()
    return dcfg


def train_lora_dpo(dcfg: DPOConfig, policy: Any, tokenizer: Any, progress_fn: Any) -> tuple[Any, Any]:
    """LoRA-DPO (any paired loss of dcfg.loss) on the pairs file dcfg.data through the shared loop;
    `progress_fn(policy) -> {eval_...}` runs at every evaluation. Returns (the LoRA policy, TrainResult)."""
    from alignlab.config import saved_config_text
    from alignlab.data.pairs import PairCollator
    from alignlab.data.prepare import load_task_rows
    from alignlab.losses import combine
    from alignlab.models.attention import uses_spans
    from alignlab.models.layouts import pair_layout
    from alignlab.models.lora import apply_lora
    from alignlab.train.loop import train

    policy = apply_lora(policy, dcfg.lora)
    mix = combine(dcfg.loss, dcfg.loss_weights, dcfg.loss_params)
    examples = dpo_examples(load_task_rows(dcfg.data, "preference"), tokenizer, dcfg, dcfg.data, True)
    step_fn = preference_step(dcfg, mix, "adapter" if mix.needs_reference else "none", policy)
    collate = PairCollator(tokenizer.pad_token_id, pair_layout(dcfg.forward_path, policy), row_tokens=dcfg.row_tokens,
                           pad_to_multiple_of=dcfg.pad_to_multiple_of, spans=uses_spans(policy))
    result = train(dcfg, policy, step_fn, examples, collate, eval_fn=progress_fn, tokenizer=tokenizer,
                   config_yaml=saved_config_text(dcfg))
    return policy, result
