"""Typed configs: dataclasses are the schema; YAML files and `key=value` overrides fill them.

Each config field carries a docstring (a string literal right after the field, as litgpt does);
`field_docs` reads them back from the source so `--help` and the saved YAML can show them.
Unknown keys and wrong types are errors that name the key and what was expected.

Relative data paths are resolved as they are read (config_paths.py).
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import inspect
import math
import re
import textwrap
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from alignlab.config_paths import (
    PATH_FIELDS,
    data_root,
    leaf_config,
    override_paths,
    resolve_paths,
    resolved_defaults,
)
from alignlab.errors import ConfigError

T = TypeVar("T")


@cache
def check_pad_multiple(value: int | None) -> None:
    """`pad_to_multiple_of` (SFT, DPO and the on-policy configs): a positive width multiple, or null."""
    if value is not None and value < 1:
        raise ConfigError(f"pad_to_multiple_of: must be >= 1 or null, got {value}")


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> docstring, read from the string literal that follows each annotated field."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting where it is lossless (int -> float)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        concrete = [a for a in args if a is not type(None)]
        if len(concrete) == 1:  # Optional[X]: X's own error message is the useful one
            return _coerce(value, concrete[0], key)
        nested = [a for a in concrete if dataclasses.is_dataclass(a)]
        if isinstance(value, dict) and len(nested) == 1:  # a mapping for `str | X`: X's error (unknown key) helps
            return _coerce(value, nested[0], key)
        lists = [a for a in concrete if get_origin(a) in (list, tuple)]
        if isinstance(value, (list, tuple)) and len(lists) == 1:  # a list for `str | list[X]`: the item's error
            return _coerce(value, lists[0], key)
        for arg in concrete:
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            allowed = ", ".join(repr(a) for a in get_args(tp))
            raise ConfigError(f"{key}: {value!r} is not one of the allowed values: {allowed}")
        return value
    if origin in (list, tuple):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # `loss=dpo` on the command line means a one-element list
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (inner, *_) = get_args(tp) or (Any,)
        items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if dataclasses.is_dataclass(value):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    return _coerce_scalar(value, tp, key)


def _coerce_scalar(value: Any, tp: Any, key: str) -> Any:
    """bool, float, int, str and Path leaves; anything else passes through unchecked."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads `3e-4` (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(number):  # nan passes every range check (all comparisons are false); no key means inf
            raise ConfigError(f"{key}: must be a finite number, got {value!r}")
        return number
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if tp is Path:
        return Path(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build `cls` from a plain mapping; unknown keys and wrong types raise `ConfigError`."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        allowed = ", ".join(sorted(fields))
        raise ConfigError(f"unknown key {prefix}{unknown[0]} for {cls.__name__}; allowed keys: {allowed}")
    kwargs = {name: _coerce(value, hints[name], prefix + name) for name, value in data.items()}
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field was not given
        raise ConfigError(f"{cls.__name__}: {e}") from None
    check = getattr(obj, "validate", None)
    if callable(check):
        check()
    return obj


def to_dict(cfg: Any, *, given: bool = False) -> dict[str, Any]:
    """Plain, YAML-safe mapping of a config (paths become strings). `given`: a nested config left at its default
    (a kl item's unused judge) is left out, as a file that never named it, so from_dict does not check it."""

    def unset(f: dataclasses.Field, value: Any) -> bool:
        return given and dataclasses.is_dataclass(value) and f.default_factory is not dataclasses.MISSING \
            and value == f.default_factory()

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v) if not unset(f, getattr(v, f.name))}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return plain(cfg)


def parse_value(text: str) -> Any:
    """A command-line value is read as YAML, so `3`, `1e-4`, `true`, `[dpo, sft]` and `null` mean what they say;
    but numbers as written (YAML 1.1 made seed=010 octal 8 and max_steps=1:30 sexagesimal 90: 010 is 10, 1:30 is
    text that an integer key refuses), and a `#` is part of the value, not a comment (output_dir=runs/exp #3)."""
    stripped = text.strip()
    if "#" in stripped and not stripped.startswith(("[", "{", '"', "'")):
        return stripped
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if re.fullmatch(r"[-+]?\d+(?:_\d+)*", stripped):  # 010 is 10 (YAML 1.1: octal 8); 1_000 is 1000
            return int(stripped)
        if not re.fullmatch(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", stripped):
            return stripped  # hex, sexagesimal, underscores: not a number as written
    return value


def _leaf_annotation(cls: type, dotted: str) -> Any:
    """The annotation of `a.b.c` in `cls` (through nested dataclasses), or None when there is no such key."""
    target = leaf_config(cls, dotted)
    return typing.get_type_hints(target).get(dotted.split(".")[-1]) if target is not None else None


def _text_only(tp: Any) -> bool:
    """Whether the scalars `tp` admits are text only (str, string Literals; None, lists, mappings and nested
    configs aside): then a command-line value YAML would read as a number, date or bool is meant as its text."""
    if tp is str:
        return True
    if get_origin(tp) is Literal:
        return all(isinstance(a, str) for a in get_args(tp))
    if get_origin(tp) in (Union, types.UnionType):
        scalars = [a for a in get_args(tp) if a is not type(None) and get_origin(a) not in (list, tuple, dict)
                   and not dataclasses.is_dataclass(a)]
        return bool(scalars) and all(_text_only(a) for a in scalars)
    return False


def apply_override(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c=value` inside nested mappings, creating levels as needed."""
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[leaf] = value


def _read_yaml_mapping(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return loaded or {}


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """YAML file (optional) then `key=value` overrides, checked against the dataclass `cls`; relative paths
    resolved (module docstring). An error is said to come from the file only when the file alone causes it."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        data = _read_yaml_mapping(path)
        try:
            data = resolve_paths(cls, data, [path.resolve().parent, data_root()])
        except ConfigError as e:
            raise ConfigError(f"{e} (in {path})") from None
    from_file = copy.deepcopy(data)  # as the file gave it, for _blame: the overrides below change `data`
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        dotted = key.strip().lstrip("-").replace("-", "_")
        value = parse_value(text)
        if value is not None and not isinstance(value, (str, list, dict)) and _text_only(_leaf_annotation(cls, dotted)):
            value = text.strip()  # output_dir=010 is '010', not octal 8; resume=off is 'off', not false
        try:
            value = override_paths(cls, dotted, value)
        except ConfigError as e:
            raise ConfigError(f"{e} (command-line override {item!r})") from None
        apply_override(data, dotted, value)
    data = resolved_defaults(cls, data)  # after the overrides: a default path the command line replaced is not read
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        if path is None:
            raise
        raise ConfigError(f"{e}{_blame(cls, from_file, str(e), path, bool(overrides))}") from None


def build_config(cls: type, config: Any, keys: dict[str, Any], in_memory: frozenset[str] = frozenset()) -> Any:
    """The Python API's load_config: `config` (an instance of `cls` or None) with `keys` on top, checked as the
    command line checks: relative paths resolve against the working directory, then $ALIGNLAB_DATA (keys in
    `in_memory` hold objects' labels, not paths). Always a new object: the caller's config is never changed."""
    bases = [Path.cwd(), data_root()]
    keys = {**keys, **resolve_paths(cls, {k: v for k, v in keys.items() if k not in in_memory}, bases)}
    if config is None:
        return from_dict(cls, resolved_defaults(cls, keys))
    if not isinstance(config, cls):
        raise TypeError(f"config: expected a {cls.__name__}, got {type(config).__name__}")
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(keys) - fields)
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]} for {cls.__name__}; allowed keys: {', '.join(sorted(fields))}")
    # The object's fields are checked as a file's keys are (SFTConfig(bf16="false") trained under bf16: the text is
    # truthy), and its path values (its default corpus, a mixture's sources included) resolve as a file's would.
    data = {k: v for k, v in to_dict(config, given=True).items() if k in fields}
    own = {k: data[k] for k in fields & set(PATH_FIELDS) - set(keys) - in_memory if data.get(k)}
    return from_dict(cls, {**data, **resolve_paths(cls, own, bases), **keys})


def _blame(cls: type, from_file: dict[str, Any], message: str, path: Path, has_overrides: bool) -> str:
    """Where an error came from: the file, unless the file alone is fine (then the command line)."""
    if not has_overrides:
        return f" (from {path})"
    try:
        from_dict(cls, dict(from_file))
    except ConfigError as file_error:
        return f" (from {path})" if str(file_error) == message else " (from the command-line overrides)"
    return " (from the command-line overrides)"


def config_text(cfg: Any, name: str = "config.yaml") -> str:
    """The resolved config as YAML, each key preceded by its docstring as a comment."""
    lines = [f"# Resolved {type(cfg).__name__}; reload with --config {name}"]
    docs = field_docs(type(cfg))
    for key, value in to_dict(cfg).items():
        if key in docs:
            lines.append(f"# {docs[key]}")
        lines.append(yaml.safe_dump({key: value}, sort_keys=False, allow_unicode=True).rstrip())
    return "\n".join(lines) + "\n"


def save_config(cfg: Any, path: str | Path) -> None:
    """Write `config_text(cfg)` to `path` (atomically: a temp file renamed)."""
    from alignlab.files import write_text_atomic

    write_text_atomic(path, config_text(cfg, Path(path).name))


def describe(cls: type) -> str:
    """One line per field: name, type, default and docstring; used by each command's --help."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f"default {f.default!r}"
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f"default {f.default_factory()!r}"  # type: ignore[misc]
        else:
            default = "required"
        out.append(f"  {f.name} ({_type_name(hints[f.name])}, {default})\n      {docs.get(f.name, '')}")
    return "\n".join(out)


def nested_configs(cls: type) -> list[tuple[str, type]]:
    """(dotted key, dataclass) of each config a config's fields hold (one, an optional one, a list of them), depth
    first, each once: `--help` lists their keys too (eval items' data_offset, samples, judge.base_url, ... were in
    no help)."""
    out: list[tuple[str, type]] = []
    seen = {cls}

    def classes(tp: Any) -> list[type]:
        if dataclasses.is_dataclass(tp):
            return [tp]
        return [c for arg in typing.get_args(tp) for c in classes(arg)]

    def walk(c: type, prefix: str) -> None:
        hints = typing.get_type_hints(c)
        for f in dataclasses.fields(c):
            for t in classes(hints[f.name]):
                if t not in seen:
                    seen.add(t)
                    out.append((prefix + f.name, t))
                    walk(t, f"{prefix}{f.name}.")

    walk(cls, "")
    return out


def saved_config_text(cfg: Any) -> str:
    """The text the training loop stores with every checkpoint (`config_text`); also written to
    output_dir/config.yaml unless an earlier run's is there: the loop's resume guard compares that one first."""
    path = Path(cfg.output_dir) / "config.yaml"
    if not path.exists():
        save_config(cfg, path)
    return config_text(cfg)
