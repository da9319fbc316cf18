"""Writing the small TOML documents a manifest is (Python reads TOML with ``tomllib``, not writes).

Only what a manifest holds: bare keys; strings, booleans, whole and real numbers, lists of
those; tables of those; lists of such tables (``[[inputs]]``). Scalars come first, then tables,
then arrays of tables, so the output reads like a hand-written manifest.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence

__all__ = ["dump_toml"]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")


def dump_toml(document: Mapping[str, object]) -> str:
    """Return ``document`` as TOML text that ``tomllib.loads`` reads back equal.

    ::

        dump_toml({"id": "soften", "inputs": [{"name": "image", "channels": 3}]})
        # 'id = "soften"\\n\\n[[inputs]]\\nname = "image"\\nchannels = 3\\n'

    Raises:
        TypeError: a value TOML (or this writer) cannot hold, such as ``None``.
    """
    lines: list[str] = []
    _write_table(lines, document, prefix="")
    return "\n".join(lines).strip("\n") + "\n"


def _write_table(lines: list[str], table: Mapping[str, object], *, prefix: str) -> None:
    tables = {k: v for k, v in table.items() if isinstance(v, Mapping)}
    arrays = {k: v for k, v in table.items() if _is_table_array(v)}
    for key, value in table.items():
        if key not in tables and key not in arrays:
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in tables.items():
        assert isinstance(value, Mapping)
        lines += ["", f"[{prefix}{_key(key)}]"]
        _write_table(lines, value, prefix=f"{prefix}{_key(key)}.")
    for key, value in arrays.items():
        assert isinstance(value, Sequence)
        for item in value:
            lines += ["", f"[[{prefix}{_key(key)}]]"]
            _write_table(lines, item, prefix=f"{prefix}{_key(key)}.")


def _is_table_array(value: object) -> bool:
    return (
        isinstance(value, list | tuple)
        and bool(value)
        and all(isinstance(item, Mapping) for item in value)
    )


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key, ensure_ascii=False)


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        # JSON escapes are TOML escapes; TOML also wants DEL escaped.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    raise TypeError(f"TOML cannot hold {type(value).__name__} {value!r}")
