"""gateway.core.strict_json: request JSON read as I-JSON (each refusal was a 500 somewhere)."""

from __future__ import annotations

import json

import pytest

from gateway.core import strict_json


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a": NaN}',
        b"[Infinity]",
        b"-Infinity",
        b'"\\ud800"',  # an unpaired high surrogate
        b'{"\\udc00": 1}',  # an unpaired low surrogate, as a key
        b'["\\ud83d"]',
        b"[" * 2000,  # json.loads: RecursionError
        ("[" * (strict_json.MAX_DEPTH + 1) + "]" * (strict_json.MAX_DEPTH + 1)).encode(),
        '{"a": [{"b": "\\uDBFF"}]}',  # text as well as bytes
    ],
)
def test_refused_as_invalid_json(raw):
    with pytest.raises(json.JSONDecodeError):
        strict_json.loads(raw)


@pytest.mark.parametrize(
    "raw,value",
    [
        (b'"\\ud83d\\ude00"', "\U0001f600"),  # a pair, as clients that escape non-ASCII send emoji
        (b'{"text": "\\\\ud800"}', {"text": "\\ud800"}),  # an escaped backslash: no surrogate at all
        (b"[1.5, -2, 1e300]", [1.5, -2, 1e300]),
        (
            ("[" * strict_json.MAX_DEPTH + "]" * strict_json.MAX_DEPTH).encode(),
            json.loads("[" * strict_json.MAX_DEPTH + "]" * strict_json.MAX_DEPTH),
        ),
        (b"[" + b"[]," * 500 + b"[]]", [[]] * 501),  # many brackets, shallow
    ],
)
def test_accepted(raw, value):
    assert strict_json.loads(raw) == value


def test_undecodable_bytes_still_raise_unicode_decode_error():
    with pytest.raises(UnicodeDecodeError):
        strict_json.loads(b'"\xff"')
