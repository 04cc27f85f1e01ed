"""JSON from clients and peers, read as I-JSON (RFC 7493): ``loads`` refuses what ``json.loads``
accepts but no reply, store or signature can carry.

* ``NaN``, ``Infinity`` and ``-Infinity``: not JSON; Starlette's ``JSONResponse`` refuses to
  write them (``allow_nan=False``), so a task holding one could be stored but never answered.
* strings with an unpaired surrogate (``"\\ud800"``): they have no UTF-8 form, so every response
  that echoes one, the Redis backend and RFC 8785 canonical bytes fail on them.
* nesting deeper than ``MAX_DEPTH``: ``json.loads`` recurses once per level and raises
  ``RecursionError`` (a server error) near 1,000, and what it did parse would make every later
  ``json.dumps`` of it recurse as deep.

Each is refused with ``json.JSONDecodeError``, so a caller's handling of bad JSON covers them.
The surrogate and depth checks walk the parsed value only when the text could hold either (a
``\\uD8..``-``\\uDF..`` escape, or more than ``MAX_DEPTH`` opening brackets): ordinary bodies
pay one regex scan.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 128  # as serde_json's default recursion limit: far past any real payload
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE_ESCAPE_BYTES = re.compile(rb"\\u[dD][89a-fA-F]")


def _refuse(message: str) -> json.JSONDecodeError:
    return json.JSONDecodeError(message, "", 0)


def _no_constant(name: str) -> Any:
    raise _refuse(f"{name} is not JSON")


def _check(value: Any) -> None:
    """Raise on a string (key or value) with no UTF-8 form, or nesting past ``MAX_DEPTH``."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise _refuse("a string holds an unpaired surrogate") from None
        elif isinstance(item, (dict, list)):
            if depth >= MAX_DEPTH:
                raise _refuse(f"JSON nested deeper than {MAX_DEPTH} levels")
            if isinstance(item, dict):
                stack.extend((k, depth) for k in item)
                stack.extend((v, depth + 1) for v in item.values())
            else:
                stack.extend((v, depth + 1) for v in item)


def loads(raw: bytes | str) -> Any:
    """``json.loads(raw)``, refusing what the module docstring lists (``json.JSONDecodeError``;
    undecodable bytes still raise ``UnicodeDecodeError``)."""
    try:
        value = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise _refuse(f"JSON nested deeper than {MAX_DEPTH} levels") from None
    if isinstance(raw, bytes):
        suspect = raw.count(b"[") + raw.count(b"{") > MAX_DEPTH or _SURROGATE_ESCAPE_BYTES.search(raw)
    else:
        suspect = raw.count("[") + raw.count("{") > MAX_DEPTH or _SURROGATE_ESCAPE.search(raw)
    if suspect:
        _check(value)
    return value
