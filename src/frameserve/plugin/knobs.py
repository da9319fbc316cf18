"""Typed knob specs, and the validation of one request's knob values against them.

A model declares its knobs as a list of specs::

    knobs = [
        FloatKnob("size", default=3.0, min=0.0, max=100.0, help="Blur radius in pixels."),
        ChoiceKnob("edges", default="reflect", choices=("reflect", "replicate", "zero")),
        ButtonKnob("brightest", help="Report the brightest pixel."),
    ]

Values are validated once, at the front door, by :func:`resolve_knobs`, which returns a
:class:`KnobValues` mapping holding exactly the values the request sent and the defaults for the
rest. Values belong to the request: nothing is ever stored on the model.

**Knob kinds** are defined here and nowhere else. :data:`KNOB_KINDS` maps each kind's name
(``"float"``, the ``type`` of :meth:`KnobSpec.describe` and of a package manifest) to its
class, and each class knows the facts other parts of frameserve ask about its kind: the
options it takes besides name, default, help and label (:meth:`KnobSpec.option_names`), the
Python types of its values (:attr:`KnobSpec.value_types`), the number a network gets it as
(:attr:`KnobSpec.number_type`, :meth:`KnobSpec.as_number`), the MLClient option that carries it
(:attr:`KnobSpec.wire_kind`) and how a value is written as text
(:meth:`KnobSpec.value_from_text`). :func:`knob_from_description` rebuilds a spec from its
described form, as a server sends it.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, ClassVar

from frameserve.errors import ConfigError, KnobError

__all__ = [
    "KNOB_KINDS",
    "BoolKnob",
    "ButtonKnob",
    "ChoiceKnob",
    "FloatKnob",
    "IntKnob",
    "KnobSpec",
    "KnobValue",
    "KnobValues",
    "StringKnob",
    "check_knob_specs",
    "knob_class",
    "knob_from_description",
    "resolve_knobs",
]

log = logging.getLogger(__name__)

KnobValue = bool | int | float | str

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_TRUE_WORDS = {"1", "true", "yes", "on"}
_FALSE_WORDS = {"0", "false", "no", "off"}


@dataclass(frozen=True, kw_only=True)
class KnobSpec:
    """What every knob declares: a name, a default and a help text.

    Class attributes (facts about the kind, the same for every knob of it):
        kind: the kind's name (the ``type`` of :meth:`describe`; a key of :data:`KNOB_KINDS`).
        value_types: the Python types a value converts to without loss, its own type first
            (a package knob fed as a TorchScript attribute sets an attribute of one of them).
        number_type: the type of number a network gets a value as (a scalar tensor of
            ``bool``, ``int`` or ``float``; see :meth:`as_number`), ``None`` for free text.
        wire_kind: the MLClient option that carries the knob (the node knows ``bool``,
            ``int``, ``float``, ``string`` and ``button`` options).
    """

    kind: ClassVar[str] = ""
    value_types: ClassVar[tuple[type, ...]] = ()
    number_type: ClassVar[type | None] = None
    wire_kind: ClassVar[str] = ""
    name: str = field(kw_only=False)
    default: Any
    help: str = ""
    label: str = ""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(
                f"knob name {self.name!r} is not allowed: use letters, digits and '_', "
                "starting with a letter or '_'"
            )
        try:
            default = self.validate(self.default, what="default of knob")
        except KnobError as exc:
            raise ConfigError(str(exc)) from None
        object.__setattr__(self, "default", default)

    def validate(self, value: object, *, what: str = "knob") -> KnobValue:
        """Return ``value`` as this knob's type, or raise :class:`KnobError` saying why not.

        Types are strict: text is not taken for a number (use :meth:`parse_text` for text).
        """
        raise NotImplementedError

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """Return the options this kind takes besides name, default, help and label."""
        common = {f.name for f in fields(KnobSpec)}
        return tuple(f.name for f in fields(cls) if f.name not in common)

    @classmethod
    def value_from_text(cls, text: str) -> KnobValue:
        """Return ``text`` read as a value of this kind, not yet checked against a spec.

        Raises:
            ValueError: ``text`` does not write a value of this kind.
        """
        return text

    def parse_text(self, text: str) -> KnobValue:
        """Return the value written as ``text`` (command lines, query strings), validated."""
        return self.validate(self.value_from_text(text))

    def as_number(self, value: KnobValue) -> bool | int | float:
        """Return a valid ``value`` as the number a network gets (see :attr:`number_type`).

        Raises:
            TypeError: the kind has no number form (free text).
        """
        if self.number_type is None:
            raise TypeError(f"a {self.kind} knob has no number form")
        number: bool | int | float = self.number_type(value)
        return number

    def other_value(self) -> KnobValue | None:
        """Return a valid value other than the default, or ``None`` when no value is sure to
        mean something else (free text); checks use it to see that a knob changes anything."""
        return None

    def describe(self) -> dict[str, Any]:
        """Return the spec as plain data (for ``frameserve models --json`` and HTTP)."""
        data: dict[str, Any] = {"name": self.name, "type": self.kind, "default": self.default}
        data["label"] = self.label or self.name
        data["help"] = self.help
        return data

    def _error(self, what: str, value: object, allowed: str) -> KnobError:
        return KnobError(f"{what} {self.name!r}: {value!r} is not allowed; {allowed}")


@dataclass(frozen=True, kw_only=True)
class BoolKnob(KnobSpec):
    """An on/off knob (a checkbox in Nuke)."""

    kind: ClassVar[str] = "bool"
    value_types: ClassVar[tuple[type, ...]] = (bool,)
    number_type: ClassVar[type | None] = bool
    wire_kind: ClassVar[str] = "bool"
    default: bool = False

    def validate(self, value: object, *, what: str = "knob") -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise self._error(what, value, "expected a bool (true or false)")

    @classmethod
    def value_from_text(cls, text: str) -> bool:
        word = text.strip().lower()
        if word in _TRUE_WORDS | _FALSE_WORDS:
            return word in _TRUE_WORDS
        raise ValueError(f"{text!r} is not a bool")

    def parse_text(self, text: str) -> bool:
        try:
            return self.value_from_text(text)
        except ValueError:
            raise self._error(
                "knob", text, "expected a bool: true or false (also yes/no, on/off, 1/0)"
            ) from None

    def other_value(self) -> bool:
        return not self.default


@dataclass(frozen=True, kw_only=True)
class ButtonKnob(BoolKnob):
    """A button: ``True`` only in the request sent when the artist presses it."""

    kind: ClassVar[str] = "button"
    wire_kind: ClassVar[str] = "button"
    default: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.default:
            raise ConfigError(f"button {self.name!r}: a button's default must be False")


def _check_range(spec: IntKnob | FloatKnob) -> None:
    if spec.min is not None and spec.max is not None and spec.min > spec.max:
        raise ConfigError(f"knob {spec.name!r}: min {spec.min} is above max {spec.max}")


@dataclass(frozen=True, kw_only=True)
class IntKnob(KnobSpec):
    """A whole number, optionally bounded by ``min`` and ``max`` (inclusive; 32-bit)."""

    kind: ClassVar[str] = "int"
    value_types: ClassVar[tuple[type, ...]] = (int, float)
    number_type: ClassVar[type | None] = int
    wire_kind: ClassVar[str] = "int"
    default: int = 0
    min: int | None = None
    max: int | None = None

    def __post_init__(self) -> None:
        _check_range(self)
        for bound in (self.min, self.max):
            if bound is not None and not INT32_MIN <= bound <= INT32_MAX:
                raise ConfigError(f"knob {self.name!r}: bound {bound} does not fit 32 bits")
        super().__post_init__()

    def validate(self, value: object, *, what: str = "knob") -> int:
        number: int
        if isinstance(value, bool):
            raise self._error(what, value, "expected a whole number, not a bool")
        if isinstance(value, int):
            number = value
        elif isinstance(value, float) and value.is_integer():
            number = int(value)
        else:
            raise self._error(what, value, "expected a whole number")
        low = INT32_MIN if self.min is None else self.min
        high = INT32_MAX if self.max is None else self.max
        if number < low:
            raise KnobError(f"{what} {self.name!r}: {number} is below the minimum {low}")
        if number > high:
            raise KnobError(f"{what} {self.name!r}: {number} is above the maximum {high}")
        return number

    @classmethod
    def value_from_text(cls, text: str) -> int:
        return int(text.strip())

    def parse_text(self, text: str) -> int:
        try:
            return self.validate(self.value_from_text(text))
        except ValueError:
            raise self._error("knob", text, "expected a whole number") from None

    def other_value(self) -> int:
        return self.validate(_other_number(self))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "min": self.min, "max": self.max}


@dataclass(frozen=True, kw_only=True)
class FloatKnob(KnobSpec):
    """A real number, optionally bounded by ``min`` and ``max`` (inclusive).

    The MLClient wire carries 32-bit floats, so a value within float32 rounding of a bound is
    taken as the bound itself.
    """

    kind: ClassVar[str] = "float"
    value_types: ClassVar[tuple[type, ...]] = (float,)
    number_type: ClassVar[type | None] = float
    wire_kind: ClassVar[str] = "float"
    default: float = 0.0
    min: float | None = None
    max: float | None = None

    def __post_init__(self) -> None:
        _check_range(self)
        super().__post_init__()

    def validate(self, value: object, *, what: str = "knob") -> float:
        if isinstance(value, bool):
            raise self._error(what, value, "expected a number, not a bool")
        if not isinstance(value, int | float):
            raise self._error(what, value, "expected a number")
        try:
            number = float(value)
        except OverflowError:
            raise self._error(what, value, "expected a finite number") from None
        if not math.isfinite(number):
            raise self._error(what, value, "expected a finite number")
        if self.min is not None and number < self.min:
            if not _within_float32(number, self.min):
                low, sent = _number_text(self.min), _number_text(number)
                raise KnobError(f"{what} {self.name!r}: {sent} is below the minimum {low}")
            number = float(self.min)
        if self.max is not None and number > self.max:
            if not _within_float32(number, self.max):
                high, sent = _number_text(self.max), _number_text(number)
                raise KnobError(f"{what} {self.name!r}: {sent} is above the maximum {high}")
            number = float(self.max)
        return number

    @classmethod
    def value_from_text(cls, text: str) -> float:
        return float(text.strip())

    def parse_text(self, text: str) -> float:
        try:
            return self.validate(self.value_from_text(text))
        except ValueError:
            raise self._error("knob", text, "expected a number") from None

    def other_value(self) -> float:
        return self.validate(_other_number(self))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "min": self.min, "max": self.max}


def _number_text(number: float) -> str:
    """``number`` for a message: whole ones without ``.0``, others as the shortest text that
    reads back as the same float, so two values never print alike ("100.0001 ... 100")."""
    value = float(number)
    return str(int(value)) if value.is_integer() and abs(value) < 1e16 else repr(value)


def _other_number(spec: IntKnob | FloatKnob) -> int | float:
    """A bound other than the default (the maximum first), else the default plus one."""
    for candidate in (spec.max, spec.min):
        if candidate is not None and candidate != spec.default:
            return candidate
    return spec.default + 1


def _within_float32(value: float, bound: float) -> bool:
    return math.isclose(value, bound, rel_tol=2e-7, abs_tol=1e-30)


@dataclass(frozen=True, kw_only=True)
class StringKnob(KnobSpec):
    """Free text."""

    kind: ClassVar[str] = "string"
    value_types: ClassVar[tuple[type, ...]] = (str,)
    wire_kind: ClassVar[str] = "string"
    default: str = ""

    def validate(self, value: object, *, what: str = "knob") -> str:
        if not isinstance(value, str):
            raise self._error(what, value, "expected a string")
        return value


@dataclass(frozen=True, kw_only=True)
class ChoiceKnob(KnobSpec):
    """One of a fixed list of strings (a menu).

    The MLClient node ignores menus, so it is offered there as a string knob whose value is
    checked against ``choices``. A network gets the index of the chosen item.
    """

    kind: ClassVar[str] = "choice"
    value_types: ClassVar[tuple[type, ...]] = (str,)
    number_type: ClassVar[type | None] = int
    wire_kind: ClassVar[str] = "string"
    default: str = ""
    choices: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if isinstance(self.choices, str):
            raise ConfigError(f"choice knob {self.name!r}: choices must be a list of strings")
        object.__setattr__(self, "choices", tuple(self.choices))
        if not self.choices or not all(isinstance(c, str) for c in self.choices):
            raise ConfigError(
                f"choice knob {self.name!r}: choices must be a non-empty list of strings"
            )
        if len(set(self.choices)) != len(self.choices):
            raise ConfigError(f"choice knob {self.name!r}: choices repeat a value")
        super().__post_init__()

    def validate(self, value: object, *, what: str = "knob") -> str:
        if not isinstance(value, str) or value not in self.choices:
            allowed = ", ".join(repr(c) for c in self.choices)
            raise self._error(what, value, f"choose one of {allowed}")
        return value

    def as_number(self, value: KnobValue) -> int:
        return self.choices.index(str(value))

    def other_value(self) -> str | None:
        return next((c for c in self.choices if c != self.default), None)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "choices": list(self.choices)}


#: Every knob kind by name, in the order messages list them.
KNOB_KINDS: Mapping[str, type[KnobSpec]] = MappingProxyType(
    {cls.kind: cls for cls in (BoolKnob, IntKnob, FloatKnob, StringKnob, ChoiceKnob, ButtonKnob)}
)


def knob_class(kind: str) -> type[KnobSpec]:
    """Return the knob class of ``kind`` (``"float"``: :class:`FloatKnob`).

    Raises:
        ConfigError: no knob kind has that name (the message lists them).
    """
    try:
        return KNOB_KINDS[kind]
    except KeyError:
        known = ", ".join(repr(name) for name in KNOB_KINDS)
        raise ConfigError(f"unknown knob type {kind!r}; the knob types are {known}") from None


def knob_from_description(data: Mapping[str, Any]) -> KnobSpec:
    """Return the knob spec ``data`` describes (:meth:`KnobSpec.describe` data, as a server
    sends it).

    A knob type this version does not know becomes a :class:`StringKnob`: its value, written
    as text, is sent as it is and the server validates it.

    Raises:
        ConfigError: the description lacks a name, or its values do not make a valid spec.
    """
    name = data.get("name")
    if not isinstance(name, str):
        raise ConfigError(f"the server described a knob without a name: {dict(data)!r}")
    kind = str(data.get("type", ""))
    options: dict[str, Any] = {"help": str(data.get("help") or "")}
    options["label"] = str(data.get("label") or "")
    cls = KNOB_KINDS.get(kind)
    if cls is None:
        log.warning("knob %r has type %r, unknown here; its value is sent as text", name, kind)
        return StringKnob(name, default="", **options)
    for key in ("default", *cls.option_names()):
        if data.get(key) is not None:
            options[key] = data[key]
    return cls(name, **options)


class KnobValues(Mapping[str, KnobValue]):
    """The knob values of one request: what it sent, defaults for the rest. Read-only."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, KnobValue]) -> None:
        self._values = dict(values)

    def __getitem__(self, name: str) -> KnobValue:
        try:
            return self._values[name]
        except KeyError:
            raise KeyError(f"no knob named {name!r}; knobs: {', '.join(self._values)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._values.items())))

    def __repr__(self) -> str:
        return f"KnobValues({self._values!r})"


def check_knob_specs(specs: Iterable[KnobSpec], *, owner: str) -> tuple[KnobSpec, ...]:
    """Return ``specs`` as a tuple after checking that they are specs with unique names."""
    result = tuple(specs)
    seen: set[str] = set()
    for spec in result:
        if not isinstance(spec, KnobSpec):
            raise ConfigError(f"{owner}: {spec!r} is not a knob spec (use IntKnob, FloatKnob, ...)")
        if spec.name in seen:
            raise ConfigError(f"{owner}: two knobs are named {spec.name!r}")
        seen.add(spec.name)
    return result


def resolve_knobs(specs: Iterable[KnobSpec], sent: Mapping[str, object]) -> KnobValues:
    """Validate the values a request ``sent`` against ``specs``; fill in defaults.

    Raises :class:`KnobError` naming the knob for an unknown name, a wrong type or a value out
    of range.
    """
    by_name = {spec.name: spec for spec in specs}
    unknown = [name for name in sent if name not in by_name]
    if unknown:
        known = ", ".join(by_name) or "none"
        raise KnobError(f"unknown knob {unknown[0]!r}; this model's knobs are: {known}")
    values: dict[str, KnobValue] = {}
    for name, spec in by_name.items():
        values[name] = spec.validate(sent[name]) if name in sent else spec.default
    return KnobValues(values)
