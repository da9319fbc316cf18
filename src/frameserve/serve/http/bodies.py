"""JSON from the network, parsed safely: UTF-8, JSON, bounded nesting, or a 400 naming why.

::

    settings = json_body(request)          # {} for an empty body; ProtocolError otherwise
    header = parse_json(view, what="the inference header")   # any JSON value

Every byte from the network is hostile, and ``json.loads`` has two soft spots: deeply nested
arrays (``[[[[...`` a megabyte long) recurse until ``RecursionError``, and ``NaN`` or
``Infinity`` (not JSON, but Python reads them) slip past range checks (``NaN > 100`` is False).
So the nesting is measured first, without recursion and without a Python loop over the bytes
(a few numpy passes: strings masked out by their unescaped quotes, then a running sum of the
brackets left), and the non-JSON constants are refused.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from frameserve.errors import ProtocolError
from frameserve.serve.http.wire import HttpRequest

__all__ = ["MAX_JSON_DEPTH", "json_body", "json_depth", "parse_json"]

#: Deepest nesting of arrays and objects accepted in a JSON document from a client.
MAX_JSON_DEPTH = 64

# Byte → bracket step: +1 opens an array or object, -1 closes one, 0 anything else.
_STEP = np.zeros(256, dtype=np.int8)
_STEP[[ord("["), ord("{")]] = 1
_STEP[[ord("]"), ord("}")]] = -1
_QUOTE = ord('"')
_BACKSLASH = ord("\\")
#: Bytes measured at a time (scratch memory is a few times this), and in the first block.
_BLOCK = 1 << 16
_FIRST_BLOCK = 1 << 12


def json_body(request: HttpRequest) -> dict[str, Any]:
    """Return the request body as a JSON object; an empty body is an empty object.

    Raises:
        ProtocolError: the body is not UTF-8, not JSON, nested deeper than
            :data:`MAX_JSON_DEPTH`, or not an object.
    """
    if request.body.size == 0:
        return {}
    data = parse_json(request.body.data, what="the body")
    if not isinstance(data, dict):
        raise ProtocolError(f"the body must be a JSON object, not {_kind(data)}")
    return data


def parse_json(data: bytes | bytearray | memoryview, *, what: str) -> Any:
    """Return the JSON value in ``data`` (``what`` names it in errors: "the body").

    Raises:
        ProtocolError: not UTF-8, not JSON (``NaN`` and ``Infinity`` included), or nested
            deeper than :data:`MAX_JSON_DEPTH`.
    """
    raw = bytes(data)
    opening = raw.count(b"[") + raw.count(b"{")  # no more can nest deeper than this
    if opening > MAX_JSON_DEPTH and json_depth(raw, stop_above=MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise ProtocolError(
            f"{what} nests arrays and objects more than {MAX_JSON_DEPTH} levels deep; at most "
            f"{MAX_JSON_DEPTH} are accepted"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(
            f"{what} is not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x})"
        ) from None
    try:
        return json.loads(text, parse_constant=_not_json)
    except ProtocolError as exc:
        raise ProtocolError(f"{what} is not JSON: {exc}") from None
    except (ValueError, RecursionError) as exc:  # RecursionError: never, after the depth check
        raise ProtocolError(f"{what} is not JSON: {exc}") from None


def json_depth(data: bytes | bytearray | memoryview, *, stop_above: int | None = None) -> int:
    """Return how deep arrays and objects nest in ``data`` (JSON text; 0 for a scalar).

    Brackets inside strings do not count: a quote opens or closes a string unless an odd
    number of backslashes precede it. Linear in the length, without recursion, in blocks of
    :data:`_BLOCK` bytes (bounded scratch memory); with ``stop_above``, it returns as soon as
    the depth passes that (then the result is a lower bound), so ``[[[[...`` costs one block.
    """
    raw = np.frombuffer(data, dtype=np.uint8)
    inside = False  # whether the next block starts inside a string
    slashes_before = 0  # backslashes that end the previous block
    depth = deepest = 0
    start, size = 0, _FIRST_BLOCK
    while start < raw.size:
        block = raw[start : start + size]
        start, size = start + size, min(2 * size, _BLOCK)
        steps = _STEP[block]
        quotes = np.flatnonzero(block == _QUOTE)
        slashes = block == _BACKSLASH
        last_other = np.maximum.accumulate(np.where(slashes, -1, np.arange(block.size)))
        if quotes.size:
            before = quotes - 1
            other = last_other[np.maximum(before, 0)]  # the last byte before the run
            run = before - other  # backslashes right before each quote
            run = np.where(other < 0, run + slashes_before, run)  # the run began earlier
            run = np.where(before < 0, slashes_before, run)
            toggles = np.zeros(block.size, dtype=np.int8)
            toggles[quotes[run % 2 == 0]] = 1
            parity = np.cumsum(toggles, dtype=np.int32) % 2 == 1
            masked = parity != inside  # inside a string (its opening quote included)
            steps = np.where(masked, 0, steps)
            inside = bool(masked[-1])
        elif inside:
            steps = np.zeros_like(steps)
        if last_other[-1] < 0:
            slashes_before += block.size
        else:
            slashes_before = block.size - 1 - int(last_other[-1])
        if steps.any():
            levels = np.cumsum(steps, dtype=np.int32)
            deepest = max(deepest, depth + int(levels.max()))
            depth += int(levels[-1])
        if stop_above is not None and deepest > stop_above:
            break
    return deepest


def _not_json(name: str) -> Any:
    raise ProtocolError(f"{name} is not a JSON number")


def _kind(value: object) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")
