"""Models: loading (local HF dirs, hub ids, the offline aliases `smollm2-135m-instruct` and `tiny-random`),
tokenizers and the default chat template, LoRA/QLoRA wiring with the disabled adapter as reference, and
scalar-head models for reward and value.

Modules: `load` (resolve_model, load_model, load_tokenizer), `prepare` (prepare_model, is_peft),
`tokenizer` (DEFAULT_CHAT_TEMPLATE, train_bpe_tokenizer, ensure_chat_ready), `lora` (LoraConfig, apply_lora,
adapter_disabled, merge_adapter), `heads` (load_scorer, score), `attention` (the span-attention kernel for
packed and prefix-shared rows; the plans are data/layout.py). Importing this package does no work.
"""
