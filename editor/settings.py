"""Typed settings, the one schema system: dataclasses filled from YAML/JSON values, where every
unknown key and every badly typed or out-of-range value is one error naming the key.

Recipes (``lmedit run``, the service) and the evaluation tasks' ``--set TASK.KEY=VALUE`` both go
through :func:`from_dict`; values given as text are parsed as YAML scalars by both."""

from __future__ import annotations

import dataclasses
import math
import types

from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from editor.errors import UserError


def _describe(tp) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (list, tuple):
        return f"a list of {_describe(get_args(tp)[0])}"
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            type(None): "null"}.get(tp, str(tp))


def _convert(tp, value, where: str):
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        for option in get_args(tp):
            try:
                return _convert(option, value, where)
            except UserError:
                continue
        raise UserError(f"{where}: expected {_describe(tp)}, got {value!r}")
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise UserError(f"{where}: expected one of {_describe(tp)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise UserError(f"{where}: expected {_describe(tp)}, got {value!r}")
        return [_convert(get_args(tp)[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return _count(value, where)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise UserError(f"{where}: expected a finite number, got {value!r}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            if "\0" in value or len(value) > 4096:
                raise UserError(f"{where}: a string without NUL bytes, at most 4096 characters")
            return value
    elif tp is Any:
        return value
    raise UserError(f"{where}: expected {_describe(tp)}, got {value!r}")


def _count(value: int, where: str) -> int:
    """Integers named as counts (``n``, ``n_*``, ``*_n``, ``*_size``, ``steps``) must be 1..MAX_PROMPTS, and
    no integer may exceed it by orders of magnitude: huge values are typos that would exhaust memory."""
    from editor.ranges import MAX_INDEX, MAX_PROMPTS

    key = where.rsplit(".", 1)[-1].split("[")[0]
    if key == "n" or key.startswith("n_") or key.endswith(("_n", "_size")) or key == "steps":
        if not 1 <= value <= MAX_PROMPTS:
            raise UserError(f"{where}: 1-{MAX_PROMPTS}, got {value}")
    elif abs(value) > MAX_INDEX and key != "seed":
        raise UserError(f"{where}: {value} is beyond any sensible size")
    return value


def from_dict(cls, data, where: str = "recipe"):
    """Build dataclass ``cls`` from ``data``; every unknown key or wrongly typed value is an error."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping, got {data!r}")
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise UserError(f"{where}: unknown key {key!r}; known keys: {', '.join(names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _convert(hints[f.name], data[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise UserError(f"{where}: missing key {f.name!r}")
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check:
        check(where)
    return obj


def split_assignment(item: str, example: str = "prune.retain=0.9", form: str = "KEY=VALUE",
                     what: str = "--set") -> tuple[str, str]:
    """``KEY=VALUE`` -> (key, the value's text): the one parser of assignments (recipe overrides,
    ``evaluate --set``, ``lmedit jobs submit --set``, the service page's form). ``form``
    "TASK.KEY=VALUE" also asks for a dotted key."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip() or ("." in form.split("=")[0] and "." not in key):
        raise UserError(f"bad {what} {item[:200]!r}: write {form}, e.g. {example}")
    return key.strip(), raw


def parse_value(raw: str, where: str, text: bool = False):
    """A value given as text: a YAML scalar or flow list (3 -> int, 0.5 -> float, [1, 2] -> list, empty
    -> null), or the text itself for a text setting (``text``: ``templates=3`` means template "3")."""
    if text:
        return None if raw.strip().lower() in ("", "none", "null") else raw.strip()
    try:
        return yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise UserError(f"bad setting {where}={raw[:200]}: the value is not valid YAML") from None


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """``key.sub=value`` assignments (values parsed as YAML scalars) applied to a raw recipe mapping."""
    for item in overrides:
        key, raw = split_assignment(item)
        set_value(data, key, parse_value(raw, key))
    return data


def set_value(data: dict, key: str, value) -> dict:
    """Set the dotted ``key`` (``prune.retain``) of a raw mapping to ``value``, making sections as needed."""
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        if node.get(part) is None:
            node[part] = {}
        if not isinstance(node[part], dict):
            raise UserError(f"override {key}: {part!r} is not a section")
        node = node[part]
    node[parts[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a recipe (not UTF-8 text)") from None
    return parse_yaml(text, str(path))


class _NoAliases(yaml.SafeLoader):
    """YAML without aliases: ``*name`` shares one node many times, so a few hundred bytes of nested
    aliases ("billion laughs") become a structure whose every traversal (validation, hashing, JSON)
    takes exponential time. A recipe has no use for them."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a recipe", mark)
        return super().compose_node(parent, index)


def parse_yaml(text: str, where: str) -> dict:
    """A recipe's YAML text (a file's, or one sent to the service) as a mapping."""
    try:
        data = yaml.load(text, Loader=_NoAliases)  # noqa: S506 - a SafeLoader, aliases refused
    except yaml.YAMLError as exc:
        raise UserError(f"{where}: not valid YAML ({' '.join(str(exc).split())[:300]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{where}: a recipe is a mapping of keys to values")
    return data



