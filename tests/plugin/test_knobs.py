"""Tests for knob specs: declaring them, resolving a request's values, parsing text."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from frameserve.errors import ConfigError, FrameServeError, KnobError
from frameserve.plugin.knobs import (
    KNOB_KINDS,
    BoolKnob,
    ButtonKnob,
    ChoiceKnob,
    FloatKnob,
    IntKnob,
    KnobSpec,
    KnobValues,
    StringKnob,
    check_knob_specs,
    knob_class,
    knob_from_description,
    resolve_knobs,
)


def blur_knobs() -> tuple[KnobSpec, ...]:
    """The knobs of a typical model: one of each kind."""
    return (
        FloatKnob("size", default=5.0, min=0.0, max=100.0, help="Radius."),
        IntKnob("steps", default=2, min=1, max=10),
        BoolKnob("invert"),
        StringKnob("note", default="hello"),
        ChoiceKnob("edges", default="extend", choices=("extend", "mirror", "black")),
        ButtonKnob("brightest"),
    )


# -- declaring specs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: BoolKnob("flag", default=True),
        lambda: ButtonKnob("press"),
        lambda: IntKnob("steps", default=5, min=0, max=10),
        lambda: IntKnob("anything", default=-(2**31)),
        lambda: FloatKnob("gain", default=1.0, min=0.0, max=4.0),
        lambda: FloatKnob("unbounded", default=-1e30),
        lambda: StringKnob("note", default="text"),
        lambda: ChoiceKnob("mode", default="best", choices=["fast", "best"]),
    ],
    ids=["bool", "button", "int", "int-unbounded", "float", "float-unbounded", "string", "choice"],
)
def test_valid_declarations_are_accepted(make: Callable[[], KnobSpec]) -> None:
    spec = make()
    assert spec.validate(spec.default) == spec.default


def test_choice_knob_keeps_choices_as_a_tuple() -> None:
    spec = ChoiceKnob("mode", default="fast", choices=["fast", "best"])
    assert spec.choices == ("fast", "best")


@pytest.mark.parametrize("name", ["", "1st", "has space", "dash-ed", "dot.ted", "size\n"])
def test_bad_knob_names_are_config_errors(name: str) -> None:
    with pytest.raises(ConfigError, match="knob name"):
        FloatKnob(name, default=0.0)


@pytest.mark.parametrize("name", ["size", "_private", "Size2", "a_b_c"])
def test_good_knob_names(name: str) -> None:
    assert IntKnob(name).name == name


@pytest.mark.parametrize(
    "make",
    [lambda: IntKnob("steps", default=5, min=10, max=1), lambda: FloatKnob("gain", min=1, max=0)],
    ids=["int", "float"],
)
def test_min_above_max_is_a_config_error(make: Callable[[], KnobSpec]) -> None:
    with pytest.raises(ConfigError, match=r"min .* is above max"):
        make()


def test_int_bounds_must_fit_32_bits() -> None:
    with pytest.raises(ConfigError, match="32 bits"):
        IntKnob("big", default=0, max=2**31)


def test_choice_knob_without_choices_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="non-empty"):
        ChoiceKnob("mode", default="fast", choices=())


def test_choice_knob_with_non_string_choices_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="strings"):
        ChoiceKnob("mode", default="1", choices=("1", 2))  # type: ignore[arg-type]


def test_choice_knob_with_duplicate_choices_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="repeat"):
        ChoiceKnob("mode", default="fast", choices=("fast", "best", "fast"))


def test_button_with_default_true_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"button 'press'.*default must be False"):
        ButtonKnob("press", default=True)


BAD_DEFAULTS: list[Callable[[], KnobSpec]] = [
    lambda: IntKnob("steps", default=500, min=0, max=100),
    lambda: IntKnob("steps", default=2.5),
    lambda: IntKnob("steps", default=True),
    lambda: FloatKnob("gain", default=-1.0, min=0.0),
    lambda: FloatKnob("gain", default="loud"),
    lambda: FloatKnob("gain", default=float("nan")),
    lambda: BoolKnob("flag", default="maybe"),
    lambda: StringKnob("note", default=3),
    lambda: ChoiceKnob("mode", default="slow", choices=("fast", "best")),
]
BAD_DEFAULT_IDS = [
    "int-out-of-range",
    "int-fraction",
    "int-bool",
    "float-below-min",
    "float-text",
    "float-nan",
    "bool-word",
    "string-int",
    "choice-unknown",
]


@pytest.mark.parametrize("make", BAD_DEFAULTS, ids=BAD_DEFAULT_IDS)
def test_a_bad_default_is_refused_at_declaration(make: Callable[[], KnobSpec]) -> None:
    with pytest.raises(FrameServeError, match="default of knob"):
        make()


@pytest.mark.parametrize("make", BAD_DEFAULTS, ids=BAD_DEFAULT_IDS)
def test_a_bad_default_is_a_config_error(make: Callable[[], KnobSpec]) -> None:
    with pytest.raises(ConfigError, match="default of knob"):
        make()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (BoolKnob("flag", default=0), False),
        (IntKnob("steps", default=3.0), 3),  # type: ignore[arg-type]
        (FloatKnob("gain", default=1), 1.0),
    ],
    ids=["bool-from-int", "int-from-float", "float-from-int"],
)
def test_a_default_is_stored_as_the_knobs_type(spec: KnobSpec, expected: object) -> None:
    resolved = resolve_knobs([spec], {})[spec.name]
    assert resolved == expected
    assert type(resolved) is type(expected)


def test_a_default_given_as_text_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="default of knob 'flag'"):
        BoolKnob("flag", default="false")  # type: ignore[arg-type]


def test_choices_given_as_one_string_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match="choices"):
        ChoiceKnob("mode", default="a", choices="ab")  # type: ignore[arg-type]


def test_check_knob_specs_refuses_duplicates_and_non_specs() -> None:
    specs = check_knob_specs([IntKnob("a"), FloatKnob("b")], owner="model x")
    assert [s.name for s in specs] == ["a", "b"]
    with pytest.raises(ConfigError, match="model x: two knobs are named 'a'"):
        check_knob_specs([IntKnob("a"), FloatKnob("a")], owner="model x")
    with pytest.raises(ConfigError, match=r"model x: .* is not a knob spec"):
        check_knob_specs([IntKnob("a"), "b"], owner="model x")  # type: ignore[list-item]


# -- resolving a request's values --------------------------------------------------------------


def test_resolve_fills_defaults() -> None:
    values = resolve_knobs(blur_knobs(), {})
    assert dict(values) == {
        "size": 5.0,
        "steps": 2,
        "invert": False,
        "note": "hello",
        "edges": "extend",
        "brightest": False,
    }


def test_resolve_keeps_sent_values_in_declared_order() -> None:
    sent = {"brightest": True, "edges": "mirror", "size": 20.0, "steps": 10, "note": ""}
    values = resolve_knobs(blur_knobs(), sent)
    assert list(values) == ["size", "steps", "invert", "note", "edges", "brightest"]
    assert dict(values) == {**sent, "invert": False}


def test_resolve_converts_to_the_knobs_type() -> None:
    values = resolve_knobs(blur_knobs(), {"size": 2, "steps": 3.0, "invert": 1})
    assert values["size"] == 2.0 and type(values["size"]) is float
    assert values["steps"] == 3 and type(values["steps"]) is int
    assert values["invert"] is True


def test_resolve_rejects_an_unknown_knob_naming_it_and_the_known_ones() -> None:
    with pytest.raises(KnobError) as caught:
        resolve_knobs(blur_knobs(), {"sise": 3.0})
    message = str(caught.value)
    assert "'sise'" in message
    assert "size, steps, invert, note, edges, brightest" in message


def test_resolve_rejects_any_knob_for_a_model_without_knobs() -> None:
    with pytest.raises(KnobError, match=r"unknown knob 'size'.*none"):
        resolve_knobs([], {"size": 3.0})


@pytest.mark.parametrize(
    ("name", "value", "allowed"),
    [
        ("steps", True, "whole number, not a bool"),
        ("steps", 3.5, "whole number"),
        ("steps", "three", "whole number"),
        ("steps", None, "whole number"),
        ("size", True, "number, not a bool"),
        ("size", "big", "expected a number"),
        ("size", [1.0], "expected a number"),
        ("size", float("inf"), "finite"),
        ("size", float("nan"), "finite"),
        ("invert", 2, "bool"),
        ("invert", 1.0, "bool"),
        ("invert", "maybe", "bool"),
        ("note", 3, "string"),
        ("note", None, "string"),
        ("edges", 1, "choose one of"),
        ("brightest", "pressed", "bool"),
    ],
)
def test_resolve_rejects_wrong_types(name: str, value: object, allowed: str) -> None:
    with pytest.raises(KnobError) as caught:
        resolve_knobs(blur_knobs(), {name: value})
    message = str(caught.value)
    assert f"knob {name!r}" in message
    assert allowed in message


@pytest.mark.parametrize(
    ("spec", "value", "message"),
    [
        (IntKnob("size", min=0, max=100), 300, "knob 'size': 300 is above the maximum 100"),
        (IntKnob("size", min=0, max=100), -1, "knob 'size': -1 is below the minimum 0"),
        (IntKnob("size"), 2**31, "knob 'size': 2147483648 is above the maximum 2147483647"),
        (FloatKnob("size", max=100.0), 300.0, "knob 'size': 300 is above the maximum 100"),
        (
            FloatKnob("size", default=1.0, min=0.5),
            0.25,
            "knob 'size': 0.25 is below the minimum 0.5",
        ),
        # a value just past a bound never prints as the bound itself
        (FloatKnob("size", max=100.0), 100.0001, "knob 'size': 100.0001 is above the maximum 100"),
        (
            FloatKnob("size", default=1.0, min=0.5),
            0.4999,
            "knob 'size': 0.4999 is below the minimum 0.5",
        ),
        (
            FloatKnob("size", max=0.1234567),
            0.12346,
            "knob 'size': 0.12346 is above the maximum 0.1234567",
        ),
        (FloatKnob("size", max=1e20), 1.5e20, "knob 'size': 1.5e+20 is above the maximum 1e+20"),
    ],
)
def test_resolve_rejects_values_out_of_range(spec: KnobSpec, value: object, message: str) -> None:
    with pytest.raises(KnobError) as caught:
        resolve_knobs([spec], {"size": value})
    assert str(caught.value) == message


def test_bounds_are_inclusive() -> None:
    specs = [IntKnob("i", default=1, min=1, max=10), FloatKnob("f", min=0.0, max=4.0)]
    assert dict(resolve_knobs(specs, {"i": 1, "f": 0.0})) == {"i": 1, "f": 0.0}
    assert dict(resolve_knobs(specs, {"i": 10, "f": 4.0})) == {"i": 10, "f": 4.0}


def test_resolve_rejects_a_value_that_is_not_a_choice_listing_the_choices() -> None:
    with pytest.raises(KnobError) as caught:
        resolve_knobs(blur_knobs(), {"edges": "wrap"})
    assert str(caught.value) == (
        "knob 'edges': 'wrap' is not allowed; choose one of 'extend', 'mirror', 'black'"
    )


def test_choices_are_case_sensitive() -> None:
    with pytest.raises(KnobError):
        resolve_knobs(blur_knobs(), {"edges": "Mirror"})


@pytest.mark.parametrize(
    ("low", "high", "sent"),
    [
        (0.1, 1.0, 0.1),  # float32(0.1) lies just above 0.1: inside
        (0.7, 1.0, 0.7),  # float32(0.7) lies just below the minimum 0.7
        (0.0, 0.1, 0.1),  # float32(0.1) lies just above the maximum 0.1
        (-0.3, 0.0, -0.3),  # float32(-0.3) lies just below the minimum -0.3
    ],
)
def test_float32_rounding_at_a_bound_is_accepted(low: float, high: float, sent: float) -> None:
    spec = FloatKnob("x", default=low, min=low, max=high)
    wire_value = float(np.float32(sent))  # what the MLClient wire delivers for ``sent``
    value = resolve_knobs([spec], {"x": wire_value})["x"]
    assert value == pytest.approx(sent, rel=1e-7)
    assert low <= value <= high


def test_more_than_float32_rounding_past_a_bound_is_refused() -> None:
    with pytest.raises(KnobError, match="below the minimum"):
        resolve_knobs([FloatKnob("x", default=0.1, min=0.1)], {"x": 0.0999})


def test_int_knob_accepts_a_whole_float_but_not_a_fraction() -> None:
    spec = IntKnob("steps", min=0, max=10)
    assert resolve_knobs([spec], {"steps": 3.0})["steps"] == 3
    with pytest.raises(KnobError, match=r"knob 'steps': 3\.5 is not allowed; expected a whole"):
        resolve_knobs([spec], {"steps": 3.5})


def test_a_huge_int_for_a_float_knob_is_a_knob_error() -> None:
    with pytest.raises(KnobError, match="knob 'gain'"):
        resolve_knobs([FloatKnob("gain")], {"gain": 10**400})


# -- parsing text ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("True", True),
        ("1", True),
        ("yes", True),
        ("on", True),
        (" YES ", True),
        ("false", False),
        ("0", False),
        ("no", False),
        ("Off", False),
    ],
)
def test_parse_text_bool(text: str, expected: bool) -> None:
    assert BoolKnob("flag").parse_text(text) is expected
    assert ButtonKnob("press").parse_text(text) is expected


@pytest.mark.parametrize("text", ["", "maybe", "2", "tru", "y"])
def test_parse_text_bool_refuses_other_words(text: str) -> None:
    with pytest.raises(KnobError, match=r"knob 'flag'.*expected a bool"):
        BoolKnob("flag").parse_text(text)


def test_parse_text_int() -> None:
    spec = IntKnob("steps", min=-5, max=10)
    assert spec.parse_text("7") == 7
    assert spec.parse_text(" -5 ") == -5
    for bad in ("7.5", "seven", ""):
        with pytest.raises(KnobError, match="knob 'steps'"):
            spec.parse_text(bad)
    with pytest.raises(KnobError, match="11 is above the maximum 10"):
        spec.parse_text("11")


def test_parse_text_float() -> None:
    spec = FloatKnob("gain", min=0.0, max=4.0)
    assert spec.parse_text("0.25") == 0.25
    assert spec.parse_text("1e-3") == 0.001
    assert spec.parse_text("2") == 2.0
    for bad in ("nan", "inf", "loud", ""):
        with pytest.raises(KnobError, match="knob 'gain'"):
            spec.parse_text(bad)
    with pytest.raises(KnobError, match="5 is above the maximum 4"):
        spec.parse_text("5")


def test_parse_text_string_and_choice() -> None:
    assert StringKnob("note").parse_text("  spaces kept ") == "  spaces kept "
    choice = ChoiceKnob("mode", default="fast", choices=("fast", "best"))
    assert choice.parse_text("best") == "best"
    with pytest.raises(KnobError, match="choose one of 'fast', 'best'"):
        choice.parse_text("worst")


# -- the values of one request -----------------------------------------------------------------


def test_knob_values_are_read_only() -> None:
    values = resolve_knobs(blur_knobs(), {"size": 2.0})
    with pytest.raises(TypeError):
        values["size"] = 3.0  # type: ignore[index]
    with pytest.raises(TypeError):
        del values["size"]  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        values.update({"size": 3.0})  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        values.extra = 1  # type: ignore[attr-defined]
    assert values["size"] == 2.0


def test_knob_values_do_not_follow_the_dict_they_were_made_from() -> None:
    source: dict[str, bool | int | float | str] = {"size": 2.0}
    values = KnobValues(source)
    source["size"] = 9.0
    assert values["size"] == 2.0


def test_two_resolutions_share_no_state() -> None:
    specs = blur_knobs()
    sent: dict[str, object] = {"size": 20.0, "edges": "black"}
    first = resolve_knobs(specs, sent)
    second = resolve_knobs(specs, {})
    sent["size"] = 50.0
    assert first["size"] == 20.0 and first["edges"] == "black"
    assert second["size"] == 5.0 and second["edges"] == "extend"
    assert first is not second and first != second
    assert resolve_knobs(specs, {}) == second


def test_knob_values_mapping_behaviour() -> None:
    values = resolve_knobs(blur_knobs(), {"steps": 4})
    assert len(values) == 6
    assert "steps" in values and "nope" not in values
    assert values.get("nope") is None
    assert hash(values) == hash(resolve_knobs(blur_knobs(), {"steps": 4}))
    with pytest.raises(KeyError, match="no knob named 'nope'; knobs: size, steps"):
        values["nope"]


# -- describing specs --------------------------------------------------------------------------


def test_describe_every_kind() -> None:
    described = [spec.describe() for spec in blur_knobs()]
    assert described == [
        {
            "name": "size",
            "type": "float",
            "default": 5.0,
            "label": "size",
            "help": "Radius.",
            "min": 0.0,
            "max": 100.0,
        },
        {
            "name": "steps",
            "type": "int",
            "default": 2,
            "label": "steps",
            "help": "",
            "min": 1,
            "max": 10,
        },
        {"name": "invert", "type": "bool", "default": False, "label": "invert", "help": ""},
        {"name": "note", "type": "string", "default": "hello", "label": "note", "help": ""},
        {
            "name": "edges",
            "type": "choice",
            "default": "extend",
            "label": "edges",
            "help": "",
            "choices": ["extend", "mirror", "black"],
        },
        {"name": "brightest", "type": "button", "default": False, "label": "brightest", "help": ""},
    ]


def test_describe_uses_the_label_when_given() -> None:
    spec = FloatKnob("size", label="Blur size", help="Radius in pixels.")
    assert spec.describe()["label"] == "Blur size"
    assert spec.describe()["min"] is None and spec.describe()["max"] is None


def test_specs_are_frozen() -> None:
    spec = FloatKnob("size", default=1.0)
    with pytest.raises(AttributeError):
        spec.default = 2.0  # type: ignore[misc]


# -- the kinds ---------------------------------------------------------------------------------


def test_every_kind_is_named_once_in_the_order_messages_list_them() -> None:
    assert list(KNOB_KINDS) == ["bool", "int", "float", "string", "choice", "button"]
    assert all(cls.kind == kind for kind, cls in KNOB_KINDS.items())
    assert {type(spec) for spec in blur_knobs()} == set(KNOB_KINDS.values())
    assert knob_class("choice") is ChoiceKnob
    with pytest.raises(ConfigError, match="unknown knob type 'rgb'; the knob types are 'bool'"):
        knob_class("rgb")


def test_each_kind_knows_its_options_types_number_and_wire_option() -> None:
    facts = {
        kind: (cls.option_names(), cls.value_types, cls.number_type, cls.wire_kind)
        for kind, cls in KNOB_KINDS.items()
    }
    assert facts == {
        "bool": ((), (bool,), bool, "bool"),
        "int": (("min", "max"), (int, float), int, "int"),
        "float": (("min", "max"), (float,), float, "float"),
        "string": ((), (str,), None, "string"),
        "choice": (("choices",), (str,), int, "string"),  # the node has no menus
        "button": ((), (bool,), bool, "button"),
    }


def test_the_number_form_of_a_value_is_what_a_network_gets() -> None:
    size, steps, invert, note, edges, brightest = blur_knobs()
    numbers = [
        size.as_number(2.5),
        steps.as_number(3),
        invert.as_number(True),
        edges.as_number("mirror"),  # the index of the choice
        brightest.as_number(False),
    ]
    assert numbers == [2.5, 3, True, 1, False]
    assert [type(n) for n in numbers] == [float, int, bool, int, bool]
    with pytest.raises(TypeError, match="a string knob has no number form"):
        note.as_number("hello")


def test_other_value_is_a_valid_value_that_differs_from_the_default() -> None:
    size, _, invert, note, edges, brightest = blur_knobs()
    assert size.other_value() == 100.0  # the maximum first
    assert FloatKnob("gain", default=4.0, min=0.0, max=4.0).other_value() == 0.0
    assert IntKnob("count", default=2).other_value() == 3  # unbounded: the default plus one
    assert invert.other_value() is True and brightest.other_value() is True
    assert edges.other_value() == "mirror"
    assert ChoiceKnob("only", default="a", choices=("a",)).other_value() is None
    assert note.other_value() is None  # free text: nothing is sure to mean something else


def test_value_from_text_reads_a_value_of_the_kind_without_checking_bounds() -> None:
    assert IntKnob.value_from_text(" 12 ") == 12
    assert FloatKnob.value_from_text("1e3") == 1000.0
    assert BoolKnob.value_from_text("Yes") is True and ButtonKnob.value_from_text("off") is False
    assert StringKnob.value_from_text("a:b") == "a:b"
    for cls, text in ((IntKnob, "1.5"), (FloatKnob, "much"), (BoolKnob, "maybe")):
        with pytest.raises(ValueError):
            cls.value_from_text(text)


def test_a_described_knob_is_rebuilt_as_it_was() -> None:
    for spec in blur_knobs():
        rebuilt = knob_from_description(spec.describe())
        assert type(rebuilt) is type(spec) and rebuilt.describe() == spec.describe()
    unknown = knob_from_description({"name": "colour", "type": "rgb", "default": [1, 0, 0]})
    assert type(unknown) is StringKnob and unknown.parse_text("1 0 0") == "1 0 0"
    with pytest.raises(ConfigError, match="described a knob without a name"):
        knob_from_description({"type": "float"})
    with pytest.raises(ConfigError, match="choices must be a non-empty list"):
        knob_from_description({"name": "mode", "type": "choice", "default": "a"})
