"""Data paths in configs: a relative path in a PATH_FIELDS key resolves against the folder of the config file
that gave it (the working directory for a command-line override or a default), then against `$ALIGNLAB_DATA`
(`data_root()`); the first that exists wins and is stored absolute, so a config runs the same from any
directory. A local-looking path found nowhere is an error listing where it was looked for; hub ids and
`builtin:` sources pass through.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any, get_args

from alignlab.errors import ConfigError

PATH_FIELDS: frozenset[str] = frozenset({"data", "eval_data", "chat_template"})
"""Config keys holding input files, at any nesting level of dataclass fields (e.g. evaluations[].data). A value
may be one path, a list of paths, or mappings whose `path` is one (a dataset mixture)."""

DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".txt", ".parquet", ".arrow", ".jinja", ".yaml", ".yml", ".gz")


def data_root() -> Path:
    """Where datasets are looked for after the config file's folder: $ALIGNLAB_DATA, else ../shared/data next
    to the project checkout."""
    env = os.environ.get("ALIGNLAB_DATA")
    return Path(env).expanduser() if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _looks_local(value: str) -> bool:
    """A file path rather than a hub id (org/name) or a scheme such as builtin:sentiment."""
    if ":" in value.split("/")[0]:
        return False
    return value.startswith((".", "/", "~")) or value.lower().endswith(DATA_SUFFIXES)


def resolve_path(value: str, bases: list[Path], key: str) -> str:
    """`value` made absolute against the first base folder where it exists (see the module docstring)."""
    if not value or not _looks_local(value) and not any((b / value).exists() for b in bases):
        return value
    p = Path(value).expanduser()
    looked = [p] if p.is_absolute() else [b / p for b in bases]
    for candidate in looked:
        if candidate.exists():
            return str(candidate.resolve())
    folder, _, split = str(p).rpartition(":")
    for candidate in ([Path(folder)] if Path(folder).is_absolute() else [b / folder for b in bases]) if folder else []:
        if split and "/" not in split and candidate.is_dir():  # a split of a saved DatasetDict: DIR:SPLIT
            return f"{candidate.resolve()}:{split}"
    raise ConfigError(f"{key}: {value} not found; looked for {' and '.join(str(c) for c in looked)}")


def _resolve_value(value: Any, bases: list[Path], key: str) -> Any:
    if isinstance(value, str):
        return resolve_path(value, bases, key)
    if isinstance(value, list):
        return [_resolve_value(v, bases, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict) and isinstance(value.get("path"), str):
        return {**value, "path": resolve_path(value["path"], bases, f"{key}.path")}
    return value


def _dataclass_of(tp: Any) -> type | None:
    """The dataclass an annotation holds (X, X | None, list[X]), else None."""
    if dataclasses.is_dataclass(tp):
        return tp  # type: ignore[return-value]
    for arg in get_args(tp):
        found = _dataclass_of(arg)
        if found is not None:
            return found
    return None


def resolve_paths(cls: type, data: dict[str, Any], bases: list[Path], prefix: str = "") -> dict[str, Any]:
    """A copy of the raw mapping `data` for `cls` with PATH_FIELDS values resolved, nested configs included."""
    if not dataclasses.is_dataclass(cls) or not isinstance(data, dict):
        return data
    hints = typing.get_type_hints(cls)
    out = dict(data)
    for key, value in data.items():
        if key not in hints:
            continue  # from_dict reports the unknown key
        if key in PATH_FIELDS:
            out[key] = _resolve_value(value, bases, prefix + key)
        elif (inner := _dataclass_of(hints[key])) is not None:
            if isinstance(value, dict):
                out[key] = resolve_paths(inner, value, bases, f"{prefix}{key}.")
            elif isinstance(value, list):
                out[key] = [resolve_paths(inner, v, bases, f"{prefix}{key}[{i}].") for i, v in enumerate(value)]
    return out


def resolved_defaults(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """`data` plus the class's non-empty default paths (e.g. pretrain's corpus) that it does not set, resolved as
    command-line values are, so a default works from any directory; where the file is missing the error names
    the key and where it looked."""
    out = dict(data)
    for f in dataclasses.fields(cls) if dataclasses.is_dataclass(cls) else ():
        if f.name in PATH_FIELDS and f.name not in out and isinstance(f.default, str) and f.default:
            try:
                out[f.name] = resolve_path(f.default, [Path.cwd(), data_root()], f.name)
            except ConfigError as e:
                raise ConfigError(f"{e} (the default; set {f.name}=...)") from None
    return out


def leaf_config(cls: type, dotted: str) -> type | None:
    """The (nested) config dataclass that holds key `a.b.c` (lora.r, judge.model ...), or None."""
    target: Any = cls
    for part in dotted.split(".")[:-1]:
        hints = typing.get_type_hints(target) if dataclasses.is_dataclass(target) else {}
        target = _dataclass_of(hints.get(part))
        if target is None:
            return None
    return target if dataclasses.is_dataclass(target) else None


def override_paths(cls: type, dotted: str, value: Any) -> Any:
    """Resolve a command-line value against the working directory then $ALIGNLAB_DATA, when it is a path."""
    target = leaf_config(cls, dotted)
    if target is None:
        return value
    *parents, leaf = dotted.split(".")
    return resolve_paths(target, {leaf: value}, [Path.cwd(), data_root()],
                         "" if not parents else ".".join(parents) + ".")[leaf]
