"""Data layer: files -> canonical rows -> token ids.

- `readers`  : raw records from .jsonl/.json(.gz), .parquet, .csv/.tsv, `datasets` save dirs, hub ids.
- `formats`  : format detection and conversion to canonical rows (TRL, ShareGPT, Alpaca, HH, ...).
- `mapping`  : the column mapping for files in no known format (`--columns prompt=Question,...`).
- `rows`     : the canonical rows (`SFTRow`, `PreferenceRow`, `UnpairedRow`, `PromptRow`) and problems.
- `sources`  : `load_rows(path, task=..., format=..., columns=..., on_bad_row=...)` -> `LoadResult`.
- `chat`     : chat templates (`DEFAULT_CHAT_TEMPLATE`) and prompt/completion rendering.
- `tokenize` : joint prompt/completion tokenisation, label masking, truncation.
- `prepare`  : read + `data_offset`/`data_limit` + seeded held-out split (split.json) + tokenise, for every trainer.
- `mixture`  : `data: [{path, weight}, ...]` sources.
- `layout`   : span plans (the geometry of packed and prefix-shared rows) for span attention.
- `collate`, `pairs`, `ranked` : SFT batches, preference-pair batches, reward-model rows and batches.
- `builtin`, `prompts` : the `builtin:` prompt sets; `load_prompt_rows` for generation and RL.
- `convert`  : rows -> TRL-format records (`alignlab data convert`).

Importing this package does no work; import the submodule you need.
"""
