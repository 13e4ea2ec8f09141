"""Silence the third-party output every run prints although nothing is wrong; keep everything else.

What is expected, and why it is safe to drop:
- transformers' "Token indices sequence length is longer than the specified maximum sequence length": the
  data layer tokenises whole texts and then truncates to `max_length` itself (data.tokenize), so the long
  sequence never reaches the model.
- transformers' LOAD REPORT when its only rows are a scorer's new head (`score.*` MISSING: a reward or value
  model built on a causal LM starts its head fresh) or the causal LM head it does not use (`lm_head.*`
  UNEXPECTED). A report with any other row (a missing layer, a size mismatch) is still printed.
- transformers' FutureWarning that `is_gradient_checkpointing` is renamed: peft reads the old name, nothing
  of ours does.
- progress bars of weight loading and shard writing ("Loading weights", "Writing model shards"): our own
  progress display says what the run is doing. HF_HUB_DISABLE_PROGRESS_BARS=0 in the environment keeps them.
Filters sit on the named loggers, so nothing is imported here (`alignlab --help` stays instant).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings

_EXPECTED_LOAD_ROWS = re.compile(r"^(score\.(weight|bias)\s*\|\s*MISSING|lm_head\.weight\s*\|\s*UNEXPECTED)\b")
_TABLE_ROW = re.compile(r"^\s*[\w.\[\]*-]+\s*\|\s*[A-Z_]+\s*\|")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def is_expected_load_report(message: str) -> bool:
    """A LOAD REPORT whose table rows are all expected for a freshly headed scorer (module docstring)."""
    if "LOAD REPORT" not in message:
        return False
    rows = [ln.strip() for ln in _ANSI.sub("", message).splitlines() if _TABLE_ROW.match(ln)]
    rows = [r for r in rows if not r.startswith("Key")]
    return bool(rows) and all(_EXPECTED_LOAD_ROWS.match(r) for r in rows)


class _DropExpected(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to judge
            return True
        if message.startswith("Token indices sequence length is longer than the specified maximum"):
            return False
        return not is_expected_load_report(message)


_FILTER = _DropExpected()
_LOGGERS = ("transformers.modeling_utils", "transformers.modeling_layers", "transformers.integrations.peft",
            "transformers.tokenization_utils_base")


def quiet_expected_noise() -> None:
    """Install the filters (idempotent) and turn off the loaders' progress bars unless the user set them."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1" and "transformers" in sys.modules:
        # transformers was imported first and read the variable too early: tell it directly
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
