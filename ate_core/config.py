"""Typed configuration: plain data (YAML, JSON, ROS parameters) loaded into frozen dataclasses.

This is the loader every schema shares: the robot's (:mod:`ate_core.robot.config`), the
policies', training's, alignment's and guidance's. Validation happens once, at the edge: a wrong
key, type or value raises :class:`ConfigError` naming the source and the key path
(``config/bimanual.yaml: arms.left.ip: not an IPv4 address``); the rest of the code only ever
sees the typed objects. A field's check and its one-line description travel in the dataclass
field's metadata (:func:`checked`), so the file, ``--set`` overrides and ROS parameters (the
flattened form, :func:`flatten` / :func:`from_flat`) are checked by the same rules and the
parameters are described by the same words (:func:`key_docs`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import collections.abc
import typing
from dataclasses import field
from typing import (Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Type, TypeVar,
                    Union)

import yaml


T = TypeVar("T")
Problem = Tuple[str, str]  # (key path relative to the object, message)


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the source, the key path and why."""

    def __init__(self, source: str, key: str, message: str) -> None:
        self.source, self.key, self.message = source, key, message
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {message}")

    def __reduce__(self):  # pickled whole: a worker process's error reaches its parent intact
        return type(self), (self.source, self.key, self.message)


# ---------------------------------------------------------------------------------------------
# Field checks: attached through dataclass field metadata, run after the type is right.

Check = Callable[[Any], Optional[str]]


def ipv4(value: str) -> Optional[str]:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return "not an IPv4 address"
    return None


def port_number(value: int) -> Optional[str]:
    return None if 1 <= value <= 65535 else f"{value} is not a port number (1-65535)"


@dataclasses.dataclass(frozen=True)
class Range:
    """A closed interval every value (or every element of a tuple) must lie in; its bounds are
    data so that a ROS parameter can show them (``ros2 param describe``)."""

    lo: float
    hi: float

    def __call__(self, value: Any) -> Optional[str]:
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if not (math.isfinite(v) and self.lo <= v <= self.hi):
                return f"{v} is outside [{self.lo}, {self.hi}]"
        return None


def in_range(lo: float, hi: float) -> Range:
    return Range(lo, hi)


def positive(value: float) -> Optional[str]:
    return None if math.isfinite(value) and value > 0 else f"{value} must be > 0"


def one_of(*choices: str) -> Check:
    def check(value: str) -> Optional[str]:
        return None if value in choices else f"{value!r} is not one of {list(choices)}"
    return check


def nonempty(value: Any) -> Optional[str]:
    return None if value else "must not be empty"


def checked(default: Any = dataclasses.MISSING, *, check: Optional[Check] = None,
            doc: str = "") -> Any:
    """A dataclass field with a one-line description and a value check (``None``: any value
    of the field's type)."""
    meta = {"check": check, "doc": doc}
    if default is dataclasses.MISSING:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


# ---------------------------------------------------------------------------------------------
# Loading


def plain_data(value: Any) -> Any:
    """Tuples as lists, recursively: the form YAML and JSON write (the inverse of :func:`from_dict`)."""
    if isinstance(value, (tuple, list)):
        return [plain_data(x) for x in value]
    if isinstance(value, dict):
        return {k: plain_data(x) for k, x in value.items()}
    return value


def read_yaml(path: Union[str, os.PathLike]) -> Any:
    """The plain data of a YAML file (``{}`` for an empty one); problems raise :class:`ConfigError`."""
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(source, "", "file not found") from None
    except IsADirectoryError:
        raise ConfigError(source, "", "is a directory, not a YAML file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "YAML"
        raise ConfigError(source, "", f"{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    return {} if data is None else data


def load_dataclass(path: Union[str, os.PathLike], cls: Type[T]) -> T:
    """Read a YAML file into ``cls``; every problem raises :class:`ConfigError`."""
    return from_dict(cls, read_yaml(path), os.fspath(path))


def from_dict(cls: Type[T], data: Any, source: str = "<dict>") -> T:
    """Build and validate ``cls`` from plain data (as YAML gives it)."""
    return _build(cls, data, source, "")


def _join(prefix: str, key: str) -> str:
    if key.startswith("["):
        return prefix + key
    return f"{prefix}.{key}" if prefix else key


def _build(tp: Any, value: Any, source: str, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, source, path)
    if tp is Any:  # free-form plain data, checked by whoever reads it
        return value
    if origin is Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _build(inner[0], value, source, path)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(source, path, f"expected a list, got {_describe(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_build(args[0], v, source, f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(source, path, f"expected {len(args)} values, got {len(value)}")
        return tuple(_build(a, v, source, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin in (dict, Dict, Mapping, collections.abc.Mapping):
        if not isinstance(value, dict):
            raise ConfigError(source, path, f"expected a mapping, got {_describe(value)}")
        return {str(k): _build(args[1], v, source, _join(path, str(k))) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(source, path, f"expected true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(source, path, f"expected an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(source, path, f"expected a number, got {_describe(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(source, path, f"expected a string, got {_describe(value)}")
        return value
    raise TypeError(f"config schema uses an unsupported type {tp!r} at {path}")


def _build_dataclass(cls: Any, value: Any, source: str, path: str) -> Any:
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise ConfigError(source, path, f"expected a mapping, got {_describe(value)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in value:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(source, _join(path, str(key)), f"unknown key (expected one of: {known})")
    kwargs: Dict[str, Any] = {}
    for name, f in fields.items():
        key_path = _join(path, name)
        if name not in value:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(source, key_path, "required key is missing")
            continue
        built = _build(hints[name], value[name], source, key_path)
        check = f.metadata.get("check")
        if check is not None and built is not None:
            message = check(built)
            if message:
                raise ConfigError(source, key_path, message)
        kwargs[name] = built
    obj = cls(**kwargs)
    problems = getattr(obj, "problems", None)
    if problems is not None:
        for key, message in problems():
            raise ConfigError(source, _join(path, key), message)
    return obj


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


# ---------------------------------------------------------------------------------------------
# Flat form, for ROS parameters: {"arms.left.ip": "192.168.1.18", ...}

ParamValue = Union[bool, int, float, str, List[bool], List[int], List[float], List[str]]


def _leaves(obj: Any, prefix: str = "") -> Iterator[Tuple[str, Any, dataclasses.Field]]:
    """(dotted key, value, the field it is a value of) for every scalar or list in ``obj``."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = _join(prefix, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, key)
        elif isinstance(value, dict):
            for k, v in value.items():
                if dataclasses.is_dataclass(v):
                    yield from _leaves(v, f"{key}.{k}")
                else:
                    yield f"{key}.{k}", v, f
        else:
            yield key, value, f


def flatten(obj: Any, prefix: str = "") -> Dict[str, ParamValue]:
    """Dataclass -> {dotted key: scalar or homogeneous list} (what ROS parameters can hold)."""
    return {key: list(value) if isinstance(value, tuple) else value
            for key, value, _ in _leaves(obj, prefix)}


@dataclasses.dataclass(frozen=True)
class KeyDoc:
    """What a key of :func:`flatten` means: its field's one-line description and value check."""

    doc: str
    check: Optional[Check]


def key_docs(obj: Any) -> Dict[str, KeyDoc]:
    """{dotted key: :class:`KeyDoc`} for the keys of ``flatten(obj)``, from :func:`checked`."""
    return {key: KeyDoc(f.metadata.get("doc", ""), f.metadata.get("check"))
            for key, _, f in _leaves(obj)}


def from_flat(cls: Type[T], flat: Mapping[str, Any], source: str = "parameters") -> T:
    """Inverse of :func:`flatten`, validated like a file."""
    nested: Dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(source, key, "key is both a value and a section")
        node[parts[-1]] = list(value) if isinstance(value, (list, tuple)) else value
    return from_dict(cls, nested, source)


def replace_in(obj: T, updates: Mapping[str, Any], source: str = "overrides") -> T:
    """Apply dotted-key overrides to a config object and validate the result."""
    flat = flatten(obj)
    flat.update(updates)
    return from_flat(type(obj), flat, source)
