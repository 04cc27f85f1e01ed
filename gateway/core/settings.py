"""One settings loader for the gateway's ``Config`` and every adapter's options.

A settings class is a dataclass; ``load_settings`` fills it from explicit values (CLI flags or
keyword arguments: ``None`` means "not given"), then the environment (``<PREFIX><FIELD>`` in upper
case, empty means unset), then the field's default. Environment values are parsed by the
field's annotation: ``bool`` (1/0, true/false, yes/no, on/off), ``int``, ``float``,
``tuple[str, ...]`` (comma-separated) and ``str``; a field of any other type (a callable, say)
is never read from the environment.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def load_settings(
    cls: type[T], prefix: str, values: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> T:
    """An instance of the dataclass ``cls``: ``values`` > ``env`` (default ``os.environ``) > defaults."""
    values = values or {}
    env = os.environ if env is None else env
    chosen: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if values.get(f.name) is not None:
            chosen[f.name] = values[f.name]
        elif _kind(f) is not None and (raw := env.get(prefix + f.name.upper())) not in (None, ""):
            chosen[f.name] = parse_setting(f, raw, prefix + f.name.upper())
    return cls(**chosen)


def _kind(f: dataclasses.Field) -> str | None:
    """The parseable base type of a field's annotation, or None."""
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    for name in ("bool", "int", "float", "tuple", "str"):
        if kind.startswith(name):
            return name
    return None


def parse_setting(f: dataclasses.Field, raw: str, var: str) -> Any:
    kind = _kind(f)
    try:
        if kind == "bool":
            if raw.lower() not in _TRUE + _FALSE:
                raise ValueError(raw)
            return raw.lower() in _TRUE
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "tuple":
            return tuple(x.strip() for x in raw.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"{var}={raw!r} is not a valid {f.type}") from None
    return raw


def yaml_problem(exc: Exception) -> str:
    """A YAML error in one line: where (line, column) and what (its str() spans several)."""
    mark = getattr(exc, "problem_mark", None)
    at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{at}: {getattr(exc, 'problem', None) or exc}"
