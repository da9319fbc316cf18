"""Reading one TOML table of a manifest: typed values, and messages naming file and key."""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from frameserve.errors import ModelLoadError

__all__ = [
    "NON_EMPTY",
    "Table",
    "as_bool",
    "as_choices",
    "as_int",
    "as_number",
    "as_str",
    "is_int",
    "show",
]

T = TypeVar("T")

#: A string with something in it.
NON_EMPTY = re.compile(r"\S")


class Table:
    """One TOML table of the manifest: typed reads with messages naming file and key."""

    def __init__(
        self, file: Path, where: str, data: object, allowed: Sequence[str], *, what: str
    ) -> None:
        self.file = file
        self.where = where
        self.what = what
        if not isinstance(data, dict):
            raise ModelLoadError(
                f"{file}: {where} = {show(data)} is not allowed; expected a table ({what})"
            )
        self.data: dict[str, object] = data
        for key in data:
            if key not in allowed:
                raise self.unknown(key, allowed)

    def key(self, name: str) -> str:
        """Return the dotted key of ``name`` in this table, as messages show it."""
        return f"{self.where}.{name}" if self.where else name

    def unknown(self, name: str, allowed: Sequence[str]) -> ModelLoadError:
        """Return the error for an unknown key, with the allowed keys and a close match."""
        close = difflib.get_close_matches(name, allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        if name == "license":
            hint = " (did you mean 'licence'?)"
        return ModelLoadError(
            f"{self.file}: unknown key {self.key(name)!r}{hint}; allowed keys in {self.what}: "
            f"{', '.join(allowed)}"
        )

    def error(self, name: str, value: object, allowed: str) -> ModelLoadError:
        """Return the error for a value of the wrong type or out of bounds."""
        return ModelLoadError(
            f"{self.file}: {self.key(name)} = {show(value)} is not allowed; expected {allowed}"
        )

    def missing(self, name: str, allowed: str) -> ModelLoadError:
        """Return the error for a required key that is not there."""
        return ModelLoadError(f"{self.file}: {self.key(name)} is missing; expected {allowed}")

    def has(self, name: str) -> bool:
        """Whether the table holds ``name``."""
        return name in self.data

    def get(
        self,
        name: str,
        convert: Callable[[object], T | None],
        allowed: str,
        default: T | None = None,
        *,
        required: bool = False,
    ) -> T:
        """Return ``convert(value)``; a ``None`` from ``convert`` means the value is wrong."""
        if name not in self.data:
            if required or default is None:
                raise self.missing(name, allowed)
            return default
        value = self.data[name]
        converted = convert(value)
        if converted is None:
            raise self.error(name, value, allowed)
        return converted

    def text(
        self,
        name: str,
        default: str | None = None,
        *,
        pattern: re.Pattern[str] | None = None,
        allowed: str = "a string",
    ) -> str:
        """Return a string (matching ``pattern``, when given)."""

        def convert(value: object) -> str | None:
            if not isinstance(value, str):
                return None
            return value if pattern is None or pattern.match(value) else None

        return self.get(name, convert, allowed, default, required=default is None)

    def whole(
        self, name: str, default: int | None = None, *, low: int = 0, high: int | None = None
    ) -> int:
        """Return a whole number in ``low..high``."""
        allowed = (
            f"a whole number from {low} to {high}"
            if high is not None
            else f"a whole number of at least {low}"
        )

        def convert(value: object) -> int | None:
            if not is_int(value):
                return None
            assert isinstance(value, int)
            return value if low <= value and (high is None or value <= high) else None

        return self.get(name, convert, allowed, default, required=default is None)

    def number(self, name: str, default: float, *, low: float) -> float:
        """Return a finite number of at least ``low`` (a TOML integer is taken as a number)."""

        def convert(value: object) -> float | None:
            number = as_number(value)
            return number if number is not None and number >= low else None

        return self.get(name, convert, f"a number of at least {low:g}", default)

    def flag(self, name: str, default: T) -> bool | T:
        """Return a boolean (``true`` or ``false``); ``default`` when the key is absent."""

        def convert(value: object) -> bool | None:
            return value if isinstance(value, bool) else None

        if name not in self.data:
            return default
        return self.get(name, convert, "true or false", required=True)


def is_int(value: object) -> bool:
    """Whether ``value`` is a whole number (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool)


def as_int(value: object) -> int | None:
    """Return ``value`` if it is a whole number (not a bool), else ``None``."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def as_number(value: object) -> float | None:
    """Return ``value`` as a finite float if it is a number (not a bool), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def as_bool(value: object) -> bool | None:
    """Return ``value`` if it is a bool, else ``None``."""
    return value if isinstance(value, bool) else None


def as_str(value: object) -> str | None:
    """Return ``value`` if it is a string, else ``None``."""
    return value if isinstance(value, str) else None


def as_choices(value: object) -> tuple[str, ...] | None:
    """Return ``value`` as a tuple if it is a non-empty list of strings, else ``None``."""
    if not isinstance(value, list) or not value or not all(isinstance(c, str) for c in value):
        return None
    return tuple(value)


def show(value: object) -> str:
    """Return ``value`` as the manifest would spell it (JSON is close enough to TOML)."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)
