"""Building a request: the one place a request's inputs and knobs are checked.

Front doors hand ``build_request`` frames as a list in input order, a mapping of names, or
``(name, frame)`` pairs as a wire lists them; knobs as sent, or checked beforehand by
``check_knobs`` (then they are not checked again).
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import torch

from frameserve import FloatKnob, ImageSpec, KnobValues, Model
from frameserve.engine.request import CheckedKnobs, build_request, check_knobs
from frameserve.errors import FrameError, KnobError


class Mix(Model):
    """Two inputs, the second optional, and one knob."""

    id = "mix"
    inputs = (ImageSpec("a"), ImageSpec("b", optional=True))
    knobs = (FloatKnob("gain", default=1.0, min=0.0, max=4.0),)

    def predict(self, frames: Mapping[str, torch.Tensor], knobs: KnobValues) -> torch.Tensor:
        return frames["a"]


class Other(Model):
    """A model with a different knob."""

    id = "other"
    inputs = (ImageSpec("a"),)
    knobs = (FloatKnob("size", default=1.0),)

    def predict(self, frames: Mapping[str, torch.Tensor], knobs: KnobValues) -> torch.Tensor:
        return frames["a"]


def frame(value: float = 0.0) -> torch.Tensor:
    return torch.full((3, 2, 2), value)


def test_check_knobs_fills_defaults_and_names_bad_values() -> None:
    checked = check_knobs(Mix.spec(), {})
    assert isinstance(checked, CheckedKnobs)
    assert dict(checked.values) == {"gain": 1.0}
    with pytest.raises(KnobError, match=r"'gain'.*above the maximum 4"):
        check_knobs(Mix.spec(), {"gain": 5.0})
    with pytest.raises(KnobError, match="unknown knob 'size'; this model's knobs are: gain"):
        check_knobs(Mix.spec(), {"size": 1.0})


def test_checked_knobs_are_taken_as_they_are() -> None:
    spec = Mix.spec()
    checked = check_knobs(spec, {"gain": 2.0})
    request = build_request(spec, [frame()], checked)
    assert request.knobs is checked.values


def test_knobs_checked_against_another_model_are_checked_again() -> None:
    checked = check_knobs(Other.spec(), {"size": 2.0})
    with pytest.raises(KnobError, match="unknown knob 'size'"):
        build_request(Mix.spec(), [frame()], checked)


def test_named_pairs_are_put_in_declared_order() -> None:
    request = build_request(Mix.spec(), [("b", frame(2.0)), ("a", frame(1.0))], {})
    assert list(request.frames) == ["a", "b"]
    assert float(request.frames["a"][0, 0, 0]) == 1.0


@pytest.mark.parametrize(
    ("named", "fragments"),
    [
        ([("a", frame()), ("a", frame())], ["'a'", "sent twice"]),
        ([("a", frame()), ("c", frame())], ["no input 'c'", "'a', 'b'"]),
        ([("b", frame())], ["needs input 'a'", "'b'"]),
    ],
    ids=["twice", "unknown", "missing"],
)
def test_named_inputs_sent_twice_unknown_or_missing_are_frame_errors(
    named: list[tuple[str, torch.Tensor]], fragments: list[str]
) -> None:
    with pytest.raises(FrameError) as caught:
        build_request(Mix.spec(), named, {})
    for fragment in fragments:
        assert fragment in str(caught.value)
