"""Loading recipes: YAML files with dotted command-line overrides, validated strictly (an unknown
key, a wrong type or a bad value is an error that names the key and where it came from), and the
redacted dump every stage writes."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from ..errors import ConfigError
from ..io import read_text
from ..redaction import redact
from .sections import Recipe

# ---------------------------------------------------------------------------------------------
# Validation


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    def fail(extra: str = "") -> ConfigError:
        return ConfigError(f"{source}: '{key}' must be {_type_name(tp)}, got {value!r}{extra}")

    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key, source)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key, source)
            except ConfigError:
                pass
        raise fail()
    if origin is Literal:
        if value in args:
            return value
        raise fail(f" (choose one of {', '.join(repr(a) for a in args)})")
    if origin is list:
        if not isinstance(value, list):
            raise fail()
        return [_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise fail()
        return {str(k): _coerce(v, args[1], f"{key}.{k}", source) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail()
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise fail()
        if not math.isfinite(number):
            raise fail(" (a finite number)")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise fail()
    if tp is Any:
        return value
    raise ConfigError(f"{source}: '{key}' has an unsupported type {tp}")  # pragma: no cover


def _unknown_key(cls: type, key: str, full: str, source: str) -> ConfigError:
    names = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(key, names, n=1)
    parent = full.rsplit(".", 1)[0] + "." if "." in full else ""
    hint = f"; did you mean '{parent}{close[0]}'?" if close else ""
    return ConfigError(
        f"{source}: unknown key '{full}'{hint} (known keys here: {', '.join(names)})"
    )


def _build(cls: type, raw: Any, prefix: str, source: str):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: '{prefix or '<top>'}' must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in raw.items():
        full = f"{prefix}.{k}" if prefix else str(k)
        if k not in known:
            raise _unknown_key(cls, str(k), full, source)
        kwargs[k] = _coerce(v, hints[k], full, source)
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if check is not None:
        check(source)
    if getattr(obj, "roles", None):
        obj = _role_settings(obj, prefix, source)
    return obj


def _role_settings(obj, prefix: str, source: str):
    """A training section's ``roles``: each role one of the three, each key one of the
    section's (but lora and roles) and typed as it, each role's resulting settings valid."""
    from ..constants import ROLES

    hints = typing.get_type_hints(type(obj))
    typed_roles = {}
    for role, over in obj.roles.items():
        where = f"{prefix}.roles.{role}"
        if role not in ROLES:
            raise ConfigError(f"{source}: unknown role '{where}' (roles: {', '.join(ROLES)})")
        if not isinstance(over, dict):
            raise ConfigError(f"{source}: '{where}' must be a mapping of settings, got {over!r}")
        typed = {}
        for k, v in over.items():
            if k in ("roles", "lora"):
                raise ConfigError(f"{source}: '{where}.{k}' cannot be set per role")
            if k not in hints:
                raise _unknown_key(type(obj), str(k), f"{where}.{k}", source)
            typed[k] = _coerce(v, hints[k], f"{where}.{k}", source)
        try:
            dataclasses.replace(obj, **typed, roles={}).validate(source)
        except ConfigError as e:
            raise ConfigError(f"{e} (the settings of {where})") from None
        typed_roles[role] = typed
    return dataclasses.replace(obj, roles=typed_roles)


def _leaf_type(cls: type, dotted: str, source: str) -> Any:
    """The declared type of the key ``dotted``; raises if it names no key of the recipe."""
    parts = dotted.split(".")
    tp: Any = cls
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(tp):
            dict_types = [a for a in (tp, *typing.get_args(tp)) if typing.get_origin(a) is dict]
            if dict_types:  # a free-form mapping: the value's type is its values' type
                tp = typing.get_args(dict_types[0])[1]
                continue
            raise ConfigError(f"{source}: '{'.'.join(parts[:i])}' is not a section")
        hints = typing.get_type_hints(tp)
        if part not in hints:
            raise _unknown_key(tp, part, ".".join(parts[: i + 1]), source)
        tp = hints[part]
    return tp


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _set_dotted(raw: dict, dotted: str, value: Any) -> None:
    node = raw
    parts = dotted.split(".")
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


_OVERRIDE = re.compile(r"^([A-Za-z_][\w]*(?:\.[\w\-]+)*)=(.*)$", re.S)


def parse_override(text: str) -> tuple[str, Any]:
    m = _OVERRIDE.match(text)
    if not m:
        raise ConfigError(f"command-line override {text!r}: expected key.path=value")
    key, value = m.group(1), m.group(2)
    try:
        return key, yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"command-line override {text!r}: cannot read the value ({e})") from None


def load_recipe(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), cls: type = None
) -> "Recipe":
    """Load a recipe from YAML (or the defaults when ``path`` is None) and apply overrides."""
    cls = cls or Recipe
    raw: dict = dataclasses.asdict(cls())
    source = "defaults"
    if path is not None:
        source = str(path)
        text = read_text(path, "recipe", lambda p, problem: ConfigError(problem, path=p))
        try:
            file_raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML ({' '.join(str(e).split())})") from None
        except RecursionError:
            raise ConfigError(f"{path}: YAML nested too deeply") from None
        if not isinstance(file_raw, dict):
            raise ConfigError(f"{path}: a recipe must be a mapping of sections")
        # Validate the file alone first so its errors name the file.
        _build(cls, file_raw, "", source)
        raw = _merge(raw, file_raw)
    for text in overrides:
        key, value = parse_override(text)
        where = f"command-line override {text!r}"
        _coerce(value, _leaf_type(cls, key, where), key, where)
        _set_dotted(raw, key, value)
    src = source + (" + command-line overrides" if overrides else "")
    return _build(cls, raw, "", src)


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(redact(recipe.to_dict()), sort_keys=False)
