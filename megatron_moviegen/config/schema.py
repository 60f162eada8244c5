"""Generic dataclass <-> YAML machinery: recipes, dotted overrides, validation with field names.

Every config section is a plain dataclass. `build(cls, data)` turns nested dicts into dataclasses,
rejecting unknown keys and values of the wrong type with the dotted path of the offending field, then
calls each dataclass's `validate()` (if it has one) so cross-field rules name the field they concern.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml


class ConfigYamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader without YAML 1.1's base-60 numbers: `[1:1, 16:9]` (aspect ratios) are strings, not
    [61, 969]. Everything else reads as safe_load reads it."""


ConfigYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
ConfigYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"))
ConfigYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9_]+(?:[eE][-+][0-9]+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """YAML text -> Python values, as recipes and overrides are read (`ConfigYamlLoader`)."""
    return yaml.load(text, Loader=ConfigYamlLoader)


class ConfigError(ValueError):
    """A config value is missing, unknown, of the wrong type or inconsistent; the message names the field."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp)


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check/convert one YAML value against a type annotation; raise ConfigError naming `path`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: {value!r} matches none of {args}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{path}: got {value!r}, expected one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: got {value!r} ({type(value).__name__}), expected a list")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{path}: got {len(value)} items, expected {len(args)}")
            return tuple(_coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: got {value!r}, expected a mapping")
        key_tp, val_tp = args if args else (Any, Any)
        return {_coerce(k, key_tp, f"{path}.<key>"): _coerce(v, val_tp, f"{path}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: got {value!r} ({type(value).__name__}), expected a float")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: got {value!r} ({type(value).__name__}), expected an int")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: got {value!r} ({type(value).__name__}), expected true/false")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: got {value!r} ({type(value).__name__}), expected a string")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{path}: got {value!r}, expected {_type_name(tp)}")
    return value


def build(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass `cls` from a (nested) mapping, validating every field."""
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or cls.__name__}: got {data!r}, expected a mapping for {cls.__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(
            f"unknown field(s) {', '.join(where + u for u in unknown)}; {cls.__name__} has: {', '.join(fields)}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{path}.{name}" if path else name)
    obj = cls(**kwargs)
    validate(obj, path)
    return obj


def validate(obj: Any, path: str = "") -> None:
    """Refuse a NaN or infinite number in any field, then run `validate()` on a dataclass and its nested
    dataclasses, prefixing errors with their path (a NaN passes every `<` check, so each field's own check would
    miss it)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        where = f"{path}.{f.name}" if path else f.name
        if dataclasses.is_dataclass(value):
            validate(value, where)
        several = isinstance(value, (list, tuple))
        if any(isinstance(v, float) and not math.isfinite(v) for v in (value if several else [value])):
            need = "finite numbers" if several else "a finite number"
            raise ConfigError(f"{where}: got {value}, need {need} (not nan or inf)")
    check = getattr(obj, "validate", None)
    if check is not None:
        try:
            check()
        except ConfigError as exc:
            raise ConfigError(f"{path}.{exc}" if path and not str(exc).startswith(path) else str(exc)) from None


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def to_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides (values parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.field=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = load_yaml(raw)
    return data


def deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_recipe(path: Path, search_dir: Path, _seen: tuple = ()) -> dict:
    """Read a YAML recipe; a top-level `base: <recipe>` key inherits from another recipe first."""
    if path in _seen:
        raise ConfigError(f"recipe {path} inherits from itself through {[str(p) for p in _seen]}")
    from megatron_moviegen.utils.io import read_yaml_file  # utils.io's errors are ConfigErrors

    data = read_yaml_file(path, "recipe")
    base = data.pop("base", None)
    if base is None:
        return data
    return deep_merge(read_recipe(resolve_recipe(base, search_dir), search_dir, _seen + (path,)), data)


def resolve_recipe(name_or_path: str | Path, search_dir: Path) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") and candidate.exists():
        return candidate
    named = search_dir / f"{name_or_path}.yaml"
    if named.exists():
        return named
    available = sorted(p.stem for p in search_dir.glob("*.yaml"))
    raise ConfigError(f"no recipe {str(name_or_path)!r}: not a YAML file, and not one of {available}")


def load_recipe(cls: type, recipe: str | Path, search_dir: Path, overrides: list[str] | None = None) -> Any:
    """Dataclass `cls` from a recipe named in `search_dir` (or a YAML path), its `base:` chain merged, then `a.b=value`
    overrides applied."""
    data = read_recipe(resolve_recipe(recipe, search_dir), search_dir)
    apply_overrides(data, list(overrides or []))
    return build(cls, data)
