"""Hostile JSON for fuzzing: values Python's ``json`` would never write, and odd text.

:func:`dumps` writes a value tree to JSON text, where a :class:`Raw` leaf is written as its
bytes exactly: numbers out of every range (``1e999``, 5,000 digits), ``NaN``, nesting a
hundred thousand levels deep, bytes that are not UTF-8. :func:`hostile_json` draws such trees;
:data:`odd_text` draws the strings a careless or hostile client puts where a name belongs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

__all__ = [
    "HOSTILE_NUMBERS",
    "Raw",
    "deep_nesting",
    "dumps",
    "hostile_json",
    "hostile_numbers",
    "odd_text",
]


@dataclass(frozen=True)
class Raw:
    """A piece of JSON text written as it is (it need not be valid JSON)."""

    text: bytes


#: Number literals at and past the edges of every type a server converts them to.
HOSTILE_NUMBERS: tuple[bytes, ...] = (
    b"0",
    b"-0",
    b"1",
    b"-1",
    b"1.5",
    b"-0.0",
    b"1e999",
    b"-1e999",
    b"1e-400",
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"2147483647",
    b"2147483648",
    b"-2147483649",
    b"4294967296",
    b"9223372036854775808",
    b"18446744073709551616",
    b"1" * 5000,  # past Python's 4,300-digit limit for int(str)
    b"0.1e400000",
    b"100.0001",
    b"1E5",
)

#: Strings a hostile client puts where a name or a path belongs.
ODD_STRINGS: tuple[str, ...] = (
    "",
    " ",
    ".",
    "..",
    "../",
    "../../../../etc/passwd",
    "/etc/passwd",
    "/dev/zero",
    "/dev/urandom",
    "/proc/self/environ",
    "~",
    "~root/.ssh/id_rsa",
    "a/b",
    "a\\b",
    "C:\\Windows\\win.ini",
    "nul",
    "CON",
    "a\x00b",
    "\x00",
    "\n",
    "\r\n",
    "\t",
    "%2e%2e%2f",
    "%00",
    "\u202e",
    "\ufeff",
    "é",
    "日本",
    "\U0001f600",
    "\ud800",  # a lone surrogate: valid JSON escape, not encodable as UTF-8
    "a" * 300,
    "a" * 5000,
    "identity",
    "blur",
    "-",
    "-rf",
    "$(id)",
    "'; DROP TABLE jobs; --",
    "<script>",
    "{}",
    "null",
)

odd_text: st.SearchStrategy[str] = st.one_of(
    st.sampled_from(ODD_STRINGS),
    st.text(max_size=24),
    st.text(alphabet=st.characters(codec="latin-1"), max_size=12),
)
hostile_numbers: st.SearchStrategy[Raw] = st.sampled_from(HOSTILE_NUMBERS).map(Raw)


def deep_nesting(depth: int, *, kind: str = "list") -> Raw:
    """JSON nested ``depth`` levels deep: ``[[[...]]]`` or ``{"a":{"a":...}}``."""
    if kind == "list":
        return Raw(b"[" * depth + b"]" * depth)
    return Raw(b'{"a":' * depth + b"1" + b"}" * depth)


_LEAVES: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    odd_text,
    hostile_numbers,
    st.sampled_from(
        [
            Raw(b"\xff\xfe"),
            Raw(b'"\xc3\x28"'),  # a string holding a byte sequence that is not UTF-8
            Raw(b'"\\ud800"'),
            Raw(b"tru"),
            Raw(b"'single'"),
            Raw(b"[1,]"),
            Raw(b"{,}"),
            Raw(b""),
        ]
    ),
    st.sampled_from([10, 1000, 100_000]).map(deep_nesting),
)


def hostile_json(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    """Value trees of lists and objects whose leaves are odd (see :data:`_LEAVES`)."""
    return st.recursive(
        _LEAVES,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(odd_text, children, max_size=4),
        ),
        max_leaves=max_leaves,
    )


def dumps(value: Any) -> bytes:
    """Write ``value`` as JSON text; :class:`Raw` leaves are written as their bytes."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        items = (dumps(str(key)) + b":" + dumps(item) for key, item in value.items())
        return b"{" + b",".join(items) + b"}"
    if isinstance(value, list | tuple):
        return b"[" + b",".join(dumps(item) for item in value) + b"]"
    return json.dumps(value).encode("ascii")
