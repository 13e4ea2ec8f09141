"""Config keys of the training commands that read rows from a data file (sft, dpo, rm): which format, which
columns, which records. The loop's keys are in train/config.py; text pretraining and the RL commands
(prompts: `data.prompts.load_prompt_rows`) do not take these."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from alignlab.config import ConfigError
from alignlab.data.mixture import DataSource, sources_of
from alignlab.train.config import TrainConfig


@dataclass
class RowDataConfig(TrainConfig):
    data: str | list[DataSource | str] = ""
    """Training data file (jsonl, json, parquet, csv; TRL, Alpaca, ShareGPT, HH ... detected), or a mixture:
    [{path: a.jsonl, weight: 1.0}, {path: b.json, weight: 0.5, data_limit: 500}, ...] where weight is how many
    times a source's training rows count (0.5: a seeded half); per-source counts are printed and saved."""
    data_format: str | None = None
    """Force the data format (e.g. alpaca, sharegpt, hh, preference, messages, prompt-completion); null
    detects it (`alignlab data inspect FILE` shows what is detected)."""
    columns: dict[str, Any] | str | None = None
    """Column mapping for tables in no known format, e.g. {prompt: Question, chosen: Best Answer,
    rejected: "Incorrect Answers[0]"} or "prompt=instruction+input,completion=output"; applies to data and
    eval_data."""
    data_offset: int = 0
    """Train on the data file's records from this index on (0-based, counted in the file before bad records
    are skipped): the same key an `alignlab eval` item uses, so both can name the records training never saw."""
    data_limit: int | None = None
    """Use at most this many records from data_offset on (null: to the end); the held-out split (eval_split)
    is made inside this range."""

    @classmethod
    def data_formats(cls) -> tuple[str, ...]:
        from alignlab.data.sources import FORMATS

        return FORMATS

    def validate(self) -> None:
        super().validate()
        if self.data_offset < 0:
            raise ConfigError(f"data_offset: must be >= 0, got {self.data_offset}")
        if self.data_limit is not None and self.data_limit < 1:
            raise ConfigError(f"data_limit: must be >= 1 or null, got {self.data_limit}")
        known = self.data_formats()
        if self.data_format is not None and self.data_format not in known:  # else met after the model loaded
            raise ConfigError(f"data_format: must be one of {', '.join(known)} (or null: detected), got "
                              f"{self.data_format!r}")
        sources = sources_of(self.data, self.data_offset, self.data_limit)  # checks a mixture's sources
        if isinstance(self.data, list):
            self.data = sources  # plain paths in the list become DataSource(path, weight 1)
        if self.columns is not None and self.data_format not in (None, "columns"):
            raise ConfigError(f"columns and data_format {self.data_format!r} together: a column mapping defines "
                              "the format; drop data_format")
