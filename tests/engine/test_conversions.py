"""Colour conversions the runner does not repeat: a plate passed through, the same frame again.

A model in ``srgb`` fed scene-linear plates: an output whose RGB is the model's input RGB gets
the request's own pixels back (exact, where a round trip is only within 1e-5); a model that
changes the RGB gets it converted as always; the same plate with other knobs is converted once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch

from frameserve import FloatKnob, ImageSpec, Model, Prediction
from frameserve.engine.colour import default_manager
from frameserve.engine.conversions import ConvertedFrames, passed_through
from frameserve.engine.request import build_request
from frameserve.engine.runner import Runner
from tests.support.registries import registry_of


class MatteOver(Model):
    """The plate as it came, with a matte of its brightness in alpha (a matte model's shape)."""

    id = "matte_over"
    inputs = (ImageSpec("image", 3),)
    outputs = (ImageSpec("image", 4),)
    knobs = (FloatKnob("level", default=0.5, min=0.0, max=1.0),)
    colourspace_in = "srgb"
    colourspace_out = "srgb"

    def predict(self, frames, knobs):  # type: ignore[no-untyped-def]
        image = frames["image"]
        matte = (image.mean(dim=0, keepdim=True) > float(knobs["level"])).float()
        return Prediction(frames={"image": torch.cat([image, matte])})


class Brighten(Model):
    """Changes the RGB: its output must be converted back as always."""

    id = "brighten"
    colourspace_in = "srgb"
    colourspace_out = "srgb"

    def predict(self, frames, knobs):  # type: ignore[no-untyped-def]
        return frames["image"] * 1.1


class Scribbler(Model):
    """Writes into its input (badly behaved): the next request must not see it."""

    id = "scribbler"
    colourspace_in = "srgb"
    colourspace_out = "srgb"

    def predict(self, frames, knobs):  # type: ignore[no-untyped-def]
        image = frames["image"]
        result = image.clone()
        image.zero_()
        return result


@pytest.fixture
def runner(tmp_path: Path) -> Runner:
    return Runner(registry_of(tmp_path, MatteOver, Brighten, Scribbler), device="cpu")


@pytest.fixture(scope="module")
def plate() -> torch.Tensor:
    """A scene-linear plate with values above 1, as Nuke sends."""
    srgb = skimage.data.astronaut()[:96, :128].astype(np.float32) / 255.0
    linear = default_manager().convert(
        torch.from_numpy(srgb).permute(2, 0, 1).contiguous(), "srgb", "scene_linear"
    )
    return (linear * 1.5).contiguous()


def run(runner: Runner, model_id: str, plate: torch.Tensor, **knobs: object) -> torch.Tensor:
    spec = runner.registry.get(model_id).spec
    result = runner.run(build_request(spec, [plate.clone()], knobs))
    return result.frames["image"]


def test_a_plate_passed_through_comes_back_exactly(runner: Runner, plate: torch.Tensor) -> None:
    out = run(runner, "matte_over", plate)
    assert torch.equal(out[:3], plate)  # bit for bit, values above 1 included
    srgb = default_manager().convert(plate, "scene_linear", "srgb")
    expected_matte = (srgb.mean(dim=0) > 0.5).float()
    assert torch.equal(out[3], expected_matte)


def test_a_model_that_changes_the_rgb_is_converted_back(
    runner: Runner, plate: torch.Tensor
) -> None:
    colour = default_manager()
    expected = colour.convert(
        colour.convert(plate, "scene_linear", "srgb") * 1.1, "srgb", "scene_linear"
    )
    np.testing.assert_allclose(run(runner, "brighten", plate).numpy(), expected.numpy(), atol=1e-6)


def test_the_same_plate_with_other_knobs_is_converted_once(
    runner: Runner, plate: torch.Tensor
) -> None:
    first = run(runner, "matte_over", plate, level=0.2)
    hits = runner.conversions.hits
    second = run(runner, "matte_over", plate, level=0.8)
    assert runner.conversions.hits == hits + 1
    assert torch.equal(first[:3], second[:3]) and not torch.equal(first[3], second[3])
    other = plate.flip(2).contiguous()
    run(runner, "matte_over", other)
    assert runner.conversions.hits == hits + 1  # another plate: converted afresh


def test_a_model_writing_into_its_input_cannot_spoil_the_next_request(
    runner: Runner, plate: torch.Tensor
) -> None:
    first = run(runner, "scribbler", plate)
    second = run(runner, "scribbler", plate)  # the same plate: from the kept conversion
    np.testing.assert_allclose(second.numpy(), first.numpy(), atol=1e-6)
    assert float(second.abs().sum()) > 0


def test_passed_through_needs_the_same_rgb_bit_for_bit() -> None:
    rgb = torch.rand(3, 8, 8)
    assert passed_through(torch.cat([rgb, torch.zeros(1, 8, 8)]), rgb)
    nudged = rgb.clone()
    nudged[0, 0, 0] = torch.nextafter(nudged[0, 0, 0], torch.tensor(2.0))
    assert not passed_through(torch.cat([nudged, torch.zeros(1, 8, 8)]), rgb)
    assert not passed_through(rgb[:1], rgb) and not passed_through(rgb, rgb[:, :4])


def test_kept_conversions_stay_within_their_budget() -> None:
    kept = ConvertedFrames(budget_bytes=3 * 8 * 8 * 4 * 2)  # two 8x8 RGB frames

    def double(frame: torch.Tensor, source: str, target: str) -> torch.Tensor:
        return frame * 2

    frames = [torch.full((3, 8, 8), float(i)) for i in range(3)]
    for frame in frames:
        kept.get(frame, "a", "b", double)
    assert kept.misses == 3
    kept.get(frames[2], "a", "b", double)
    kept.get(frames[0], "a", "b", double)  # the oldest went: converted again
    assert (kept.hits, kept.misses) == (1, 4)
