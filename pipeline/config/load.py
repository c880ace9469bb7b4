"""Loading the run config: YAML files merged in order, then `dotted.key=value` overrides, typed.

    cfg = load_config("configs/tiny_cpu.yaml", ["train.steps=20", "lai.filter.kind=random"])

Every error is a one-line UserError naming the file/field: an unknown key (with close matches),
a value of the wrong type (booleans, floats and ints as pipeline.values reads them, in YAML and
on the command line alike), an old flat lai key (`lai.threshold: moved to lai.filter.threshold`,
pipeline.config.moved). The `lai` section is resolved here, once (LAISettings.resolved: each
block's check, then concrete values for what was left to LAI), so everything downstream, and
RUN/config.yaml, sees concrete values. Ranges and cross-field rules: pipeline.config.validate.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from pipeline.config.moved import HOW, MOVED, migrate, moved, old_keys
from pipeline.config.validate import Config
from pipeline.errors import UserError
from pipeline.values import to_bool, to_float, to_int


def _fields(cls) -> dict[str, dataclasses.Field]:
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        f.type = hints[f.name]
        out[f.name] = f
    return out


def _all_keys(cls=Config, prefix: str = "") -> list[str]:
    keys = []
    for name, f in _fields(cls).items():
        if dataclasses.is_dataclass(f.type):
            keys += _all_keys(f.type, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _unknown(key: str, where: str) -> UserError:
    close = difflib.get_close_matches(key, _all_keys(), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    return UserError(f"{where}: unknown key {key!r}{hint}")


def _optional(tp):
    """X for `X | None`, else None."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        (inner,) = (a for a in args if a is not type(None))
        return inner
    return None


def _type_name(tp) -> str:
    inner = _optional(tp)
    if inner is not None:
        return f"{_type_name(inner)} or null"
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp, key: str, where: str) -> Any:
    """`value` (from YAML) as type `tp`, or a UserError naming `key`. Booleans, floats and ints
    are read by pipeline.values (every boolean spelling; numbers, also as numeric strings, finite
    only; ints whole: 5e8 is 500000000); nothing else is converted."""
    bad = UserError(f"{where}: {key}: expected {_type_name(tp)}, got {value!r}")
    if _optional(tp) is not None:
        return None if value is None else _coerce(value, _optional(tp), key, where)
    if tp in (bool, float):
        try:
            return (to_bool if tp is bool else to_float)(value)
        except ValueError as e:
            raise UserError(f"{where}: {key}: {e}") from None
    if tp is int:
        try:
            return to_int(value)
        except ValueError:
            raise bad from None
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise bad
        return [_coerce(v, item, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"{where}: {key}: expected a mapping, got {value!r}")
        return _build(tp, value, f"{key}.", where)
    raise AssertionError(f"unsupported config type {tp}")


def _build(cls, d: dict, prefix: str, where: str):
    fields = _fields(cls)
    kwargs = {}
    for k, v in d.items():
        if k not in fields:
            raise _unknown(f"{prefix}{k}", where)
        kwargs[k] = _coerce(v, fields[k].type, f"{prefix}{k}", where)
    return cls(**kwargs)


def _parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise UserError(f"override {text!r}: expected dotted.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if key in MOVED:
        raise UserError(f"command line: {moved(key)}")
    where = f"override {key}"
    parent: Any = Config
    tp = None
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = _fields(parent)
        if part not in fields:
            raise _unknown(key, "command line")
        tp = fields[part].type
        if dataclasses.is_dataclass(tp) and i < len(parts) - 1:
            parent = tp
        elif i < len(parts) - 1 or dataclasses.is_dataclass(tp):
            raise _unknown(key, "command line")
    if tp is str:
        return key, raw                       # strings verbatim: paths, "auto", "1e-3" as text
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise UserError(f"{where}: cannot parse value {raw!r}") from None
    return key, _coerce(value, tp, key, "command line")


def _set(cfg: Config, key: str, value: Any) -> None:
    *path, last = key.split(".")
    obj = cfg
    for p in path:
        obj = getattr(obj, p)
    setattr(obj, last, value)


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice in one mapping (plain YAML keeps the last)."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, (str, int, float, bool)):      # unhashable: YAML's own error
            continue
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}",
                                                    key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _read_yaml(p: Path) -> dict:
    try:
        text = p.read_text()
    except OSError as e:
        raise UserError(f"{p}: cannot read config: {e.strerror or e}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or ""
        if problem.startswith("duplicate key"):
            raise UserError(f"{p}: {problem}{at} (given twice in one section; keep one)") from None
        raise UserError(f"{p}: invalid YAML{at}") from None
    if not isinstance(data, dict):
        raise UserError(f"{p}: expected a mapping of sections (run, data, model, ...)")
    if old := old_keys(data):
        raise UserError(f"{p}: {moved(old[0])} ({HOW} to the new layout)")
    _build(Config, data, "", str(p))          # unknown keys / wrong types, named in this file
    return data


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(paths: str | Path | list[str | Path] | None = None,
                overrides: Sequence[str] = ()) -> Config:
    """The config of the YAML file(s) `paths` (merged in order, later files win: a run config then
    presets such as configs/zero/stage3.yaml; None = all defaults) with `overrides`
    ("a.b=value") applied. Unknown keys and wrong types raise UserError; ranges are checked by
    `validate`."""
    if paths is None:
        paths = []
    elif isinstance(paths, (str, Path)):
        paths = [paths]
    data: dict = {}
    for p in paths:
        data = _merge(data, _read_yaml(Path(p)))
    cfg = _build(Config, data, "", str(paths[-1]) if paths else "config")
    for text in overrides:
        key, value = _parse_override(text)
        _set(cfg, key, value)
    return resolve(cfg)


def resolve(cfg: Config) -> Config:
    """`cfg` with its lai section resolved (UserError naming the lai field if it is bad); the
    trainer's selector knows the training documents (lai.memory.weight)."""
    try:
        cfg.lai = cfg.lai.resolved(has_val=has_val_data(cfg), has_documents=True)
    except ValueError as e:
        raise UserError(str(e)) from None
    return cfg


def has_val_data(cfg: Config) -> bool:
    """The run has val data: data.val_sources, or a val split in every training source (read
    from their manifests; an unreadable one counts as none, and validation reports it)."""
    if cfg.data.val_sources:
        return True
    from pipeline.format.manifest import load_manifest
    try:
        return bool(cfg.data.sources) and all(load_manifest(s.path).shards_of("val")
                                              for s in cfg.data.sources)
    except UserError:
        return False


def config_from_dict(d: dict, where: str = "config") -> Config:
    """Rebuild a Config from `Config.to_dict()` output (e.g. from a checkpoint; an old lai
    layout is migrated, pipeline.config.moved)."""
    return resolve(_build(Config, migrate(d)[0], "", where))


def save_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
