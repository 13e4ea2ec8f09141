"""What alignlab's Python API (alignlab.api) takes where the command line takes a path: in-memory records, models,
tokenizers and judges, each checked at the call so that a wrong object is named there, not met deep inside a
recipe as a TypeError."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from alignlab.errors import AlignlabError

_SOURCE_KEYS = frozenset({"path", "weight", "data_offset", "data_limit"})  # data/mixture.py's DataSource


class Records(list):
    """In-memory records passed to the data layer; `str()` names them in messages and in config.yaml."""

    def __init__(self, items: Any, what: str):
        super().__init__(items)
        self.what = what
        # their content in the label: config.yaml's resume guard then refuses other records under the same name
        self.digest = hashlib.sha256(json.dumps(list(self), sort_keys=True, default=repr).encode()).hexdigest()[:16]

    def __str__(self) -> str:
        return f"<in-memory {self.what}: {len(self)} records, sha256 {self.digest}>"

    __repr__ = __str__


def as_records(obj: Any, key: str) -> Records:
    """A list of dicts, a datasets.Dataset or a DatasetDict (train split) as Records."""
    if isinstance(obj, dict) and hasattr(obj, "column_names"):  # a DatasetDict
        if "train" not in obj:
            raise AlignlabError(f"{key}: the DatasetDict has splits {list(obj)} and none is 'train'; pass ds[SPLIT]")
        obj = obj["train"]
    if hasattr(obj, "to_list") and hasattr(obj, "column_names"):  # a datasets.Dataset
        return Records(obj.to_list(), "datasets.Dataset")
    if isinstance(obj, (list, tuple)):
        bad = next((i for i, r in enumerate(obj) if not isinstance(r, dict)), None)
        if bad is not None:
            raise AlignlabError(f"{key}: record {bad} is a {type(obj[bad]).__name__}, expected a dict")
        return Records(obj, "list")
    raise AlignlabError(f"{key}: expected a path, a list of dicts, a datasets.Dataset or DatasetDict; "
                        f"got {type(obj).__name__}")


def is_path(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike))


def is_mixture(x: Any) -> bool:
    """`data=[{path, weight}, ...]`: a mixture of files as the config key takes it (it was read as two records)."""
    return (isinstance(x, (list, tuple)) and bool(x) and
            all(isinstance(s, dict) and "path" in s and set(s) <= _SOURCE_KEYS for s in x))


def check_model_object(value: Any, name: str) -> None:
    """An in-memory model is a torch module with an HF config; anything else is named here, not met deep inside."""
    import torch

    if not isinstance(value, torch.nn.Module) or not hasattr(value, "config"):
        raise AlignlabError(f"{name}: expected a path, an alias or a loaded model (a transformers/peft model), got "
                            f"{type(value).__name__}")


def check_tokenizer(value: Any, name: str = "tokenizer") -> None:
    """A loaded tokenizer (callable, with a pad id attribute); a name here raised "'str' object is not callable"."""
    if not callable(value) or not hasattr(value, "pad_token_id"):
        raise AlignlabError(f"{name}: expected a loaded tokenizer (transformers), got {type(value).__name__}; a "
                            "model named by path or alias loads its own")


def check_judge(value: Any) -> None:
    """An eval.judges.Judge; a plain function or a name failed after the models had loaded."""
    from alignlab.eval.judges import Judge

    if value is not None and not isinstance(value, Judge):
        raise AlignlabError(f"judge: expected an alignlab.eval.judges.Judge (FunctionJudge(fn) wraps a Python "
                            f"function; a configured judge goes in the evaluation's judge key), got "
                            f"{type(value).__name__}")


def model_label(model: Any) -> str:
    return f"<in-memory {type(model).__name__} from {getattr(model, 'name_or_path', '') or '?'}>"
