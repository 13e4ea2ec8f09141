"""`alignlab pretrain`: a byte-level BPE tokenizer and a small Llama trained from scratch on a text corpus, the path
for research on tiny models and for tests that need a model that knows some language. The corpus is split by position
(the last `val_fraction` of the text is validation, never seen by the tokenizer or the model; split.json records it),
cut into non-overlapping blocks of `max_length` tokens, and trained with the shared loop and LM step; validation
perplexity is exp(mean token cross-entropy)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from alignlab.config import ConfigError
from alignlab.data.corpus import blocks, corpus_split, encode_text, read_corpus
from alignlab.errors import AlignlabError
from alignlab.models.tokenizer import DEFAULT_SPECIAL_TOKENS
from alignlab.train.config import OptimConfig, RunConfig

SCRATCH_KEYS = ("tokenizer", "vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size")


@dataclass
class PretrainConfig(OptimConfig, RunConfig):  # not TrainConfig: a corpus has no records, formats or bad rows
    model: str = "scratch"
    """scratch: build a new Llama from the size keys below; or a model directory to continue pretraining (with
    `lora`, adapters on it; a scratch model trains in full)."""
    data: str = "tinyshakespeare/input.txt"
    """Corpus: a UTF-8 .txt file, or records holding only `text` (JSONL/JSON/parquet; documents joined by blank
    lines); the default is read from $ALIGNLAB_DATA (relative paths: see alignlab.config)."""
    max_eval_rows: int = 200
    """At most this many validation blocks are scored at each evaluation."""
    distributed: Literal["ddp", "fsdp"] = "ddp"
    """Data parallelism under torchrun: ddp or fsdp (train.config.TrainConfig.distributed)."""
    tokenizer: str | None = None
    """Existing tokenizer directory; null trains a byte-level BPE tokenizer on the training text."""
    vocab_size: int = 512
    """BPE vocabulary size (including the byte alphabet and special tokens)."""
    hidden_size: int = 64
    """Model width; parameters grow with its square."""
    num_layers: int = 2
    """Transformer blocks."""
    num_heads: int = 4
    """Attention heads (hidden_size must divide evenly)."""
    num_kv_heads: int = 4
    """Key/value heads; fewer than num_heads is grouped-query attention."""
    intermediate_size: int = 256
    """SwiGLU MLP width (~2.7x hidden_size in Llama)."""
    val_fraction: float = 0.1
    """Last fraction of the corpus held out for validation perplexity."""
    max_length: int = 128
    """Block length in tokens (the model's context during training)."""
    learning_rate: float = 3e-3
    """Peak learning rate (small models trained from scratch take large ones)."""
    adam_beta2: float = 0.95
    """AdamW beta2; 0.95 is steadier than 0.999 for pretraining."""
    weight_decay: float = 0.1
    """Decoupled weight decay on matrices."""
    packing: bool = False
    """Blocks already fill max_length exactly, so padding-free packing gains nothing here."""

    def validate(self) -> None:
        RunConfig.validate(self)
        OptimConfig.validate(self)
        if self.max_length < 1:
            raise ConfigError(f"max_length: must be at least 1, got {self.max_length}")
        if self.model != "scratch":  # these size a scratch model; a given model has its own
            import dataclasses
            own = [f.name for f in dataclasses.fields(self) if f.name in SCRATCH_KEYS
                   and getattr(self, f.name) != f.default]
            if own:
                raise ConfigError(f"{', '.join(own)}: set only for model=scratch; {self.model} has its own tokenizer "
                                  "and sizes")
        if self.model == "scratch" and (self.vocab_size != 512 if self.tokenizer else self.vocab_size < 256 + len(DEFAULT_SPECIAL_TOKENS)):
            raise ConfigError(f"vocab_size: {self.vocab_size}: set only when pretrain trains the tokenizer, and then at "
                              f"least its 256 bytes and {len(DEFAULT_SPECIAL_TOKENS)} special tokens")
        if self.lora is not None and self.model == "scratch":
            raise ConfigError("lora: adapters need a pretrained model to continue from; a scratch model trains in full")
        sizes = (self.num_heads, self.num_kv_heads, self.hidden_size, self.num_layers, self.intermediate_size)
        if min(sizes) < 1 or self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ConfigError("hidden_size, num_layers, num_heads, num_kv_heads and intermediate_size must be >= 1, "
                              "hidden_size a multiple of num_heads, and num_heads of num_kv_heads")
        if not 0.0 < self.val_fraction < 1.0 or self.max_eval_rows < 1:  # -5 silently dropped 5 validation blocks
            raise ConfigError(f"val_fraction must be in (0, 1) and max_eval_rows >= 1, got {self.val_fraction} and "
                              f"{self.max_eval_rows}")


def build_llama(cfg: PretrainConfig, tokenizer: Any):
    """A fresh LlamaForCausalLM sized by the config, with the tokenizer's special ids."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_length,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def prepare(cfg: PretrainConfig) -> tuple[Any, Any, str, str]:
    """Tokenizer (trained on the training text only) and the model, plus the two text parts."""
    train_text, val_text = read_corpus(cfg.data, cfg.val_fraction)
    if cfg.model != "scratch":
        from alignlab.models.load import load_model, load_tokenizer
        from alignlab.models.prepare import trainable_model

        return load_tokenizer(cfg.model), trainable_model(load_model(cfg.model), cfg.lora), train_text, val_text
    if cfg.tokenizer:
        from alignlab.models.load import load_tokenizer

        tokenizer = load_tokenizer(cfg.tokenizer)
    else:
        from alignlab.models.tokenizer import train_bpe_tokenizer

        tokenizer = train_bpe_tokenizer(train_text.splitlines(keepends=True), vocab_size=cfg.vocab_size)
    return tokenizer, build_llama(cfg, tokenizer), train_text, val_text


def run(cfg: PretrainConfig, *, callbacks: Any = ()):
    """Train and return the loop's TrainResult; the model and tokenizer land in cfg.output_dir."""
    from alignlab.config import saved_config_text
    from alignlab.data.collate import Collator
    from alignlab.data.prepare import Split
    from alignlab.models.layouts import packs_exactly
    from alignlab.train.lm import perplexity_eval
    from alignlab.train.loop import seed_everything, train
    from alignlab.train.steps import causal_lm_step
    from alignlab.train.world import World

    world = World.for_run(cfg)
    seed_everything(cfg.seed)
    tokenizer, model, train_text, val_text = prepare(cfg)
    train_set = blocks(encode_text(tokenizer, train_text), cfg.max_length)
    val_set = blocks(encode_text(tokenizer, val_text), cfg.max_length)[: cfg.max_eval_rows]
    if not train_set or not val_set:
        raise AlignlabError(f"{cfg.data}: corpus too short for blocks of {cfg.max_length} tokens")
    if world.is_main:
        print(f"pretrain: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, vocab {len(tokenizer)}, "
              f"{len(train_set)} train / {len(val_set)} val blocks of {cfg.max_length}", flush=True)
    split = Split(train_set, val_set, val_set, {**corpus_split(cfg.data, cfg.val_fraction, train_text, val_text),
                                                "train_blocks": len(train_set), "scored_blocks": len(val_set)})
    collate = Collator(tokenizer.pad_token_id or 0, packing=cfg.packing and packs_exactly(model))
    eval_fn = perplexity_eval(causal_lm_step, val_set, collate, cfg, world.device)
    from alignlab.models.tokenizer import use_chat_template  # the chat_template key: saved with the tokenizer

    result = train(cfg, model, causal_lm_step, train_set, collate, eval_fn=eval_fn,
                   tokenizer=use_chat_template(tokenizer, cfg.chat_template), world=world,
                   config_yaml=saved_config_text(cfg) if world.is_main else None, callbacks=callbacks, split=split)
    if world.is_main and result.evals:
        ppl = result.evals[-1]["eval_perplexity"]
        print(f"pretrain done: {result.done_line()}; "
              f"validation perplexity {ppl:.2f} (log {math.log(ppl):.3f})")
    return result
