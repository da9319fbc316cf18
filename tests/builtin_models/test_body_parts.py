"""Tests for the built-in ``body_parts`` model (BodyPix 2) on real photographs.

Regions of scikit-image's ``astronaut()`` (512 x 512), chosen by eye: her face (between the
hairline and the chin, cheek to cheek) split at the nose into the picture's left half (her
right face) and right half (her left face); her chest (the suit below the helmet ring, around the
mission patch); the grey backdrop beside her head. Keypoints are compared with the points
placed by hand for the ``pose`` tests.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F

from frameserve.builtin_models.body_parts.model import PART_COLOURS, BodyParts, network_size
from frameserve.catalogue.registry import ModelRegistry
from frameserve.engine.request import InferenceResult, build_request
from frameserve.engine.runner import Runner
from frameserve.networks.bodypix import KEYPOINT_NAMES, PART_NAMES

RIGHT_FACE = (185, 85, 220, 150)  # x0, y0, x1, y1: the picture's left half of her face
LEFT_FACE = (228, 85, 262, 150)
CHEST = (130, 300, 230, 420)
BACKDROP = (320, 15, 370, 65)
FACE_POINTS = {"nose": (224.0, 127.0), "right_eye": (204.0, 101.0), "left_eye": (246.0, 103.0)}


def photo(name: str) -> torch.Tensor:
    image = getattr(skimage.data, name)()
    return torch.from_numpy(image[..., :3].astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()


@pytest.fixture(scope="module")
def runner() -> Runner:
    return Runner(ModelRegistry(builtins=True), device="cpu")


def body_parts(runner: Runner, frame: torch.Tensor, **knobs: object):
    spec = runner.registry.get("body_parts").spec
    outcome = runner.run(build_request(spec, [frame], knobs, colourspace="srgb"))
    assert isinstance(outcome, InferenceResult), outcome
    (body,) = outcome.objects
    assert body.name == "body"
    return outcome.frames["image"], list(body.records)


@pytest.fixture(scope="module")
def astronaut_ids(runner: Runner):
    return body_parts(runner, photo("astronaut"), output="part_ids")


def share(ids: torch.Tensor, region: tuple[int, int, int, int], names: set[str]) -> float:
    """The fraction of a region's pixels labelled with one of ``names``."""
    x0, y0, x1, y1 = region
    wanted = torch.tensor([PART_NAMES.index(name) + 1 for name in names])
    return float(torch.isin(ids[y0:y1, x0:x1].round().long(), wanted).float().mean())


def test_face_parts_lie_on_the_face_and_torso_on_the_torso(astronaut_ids) -> None:
    image, _ = astronaut_ids
    ids = image[0]
    assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])
    assert share(ids, RIGHT_FACE, {"right_face"}) > 0.9
    assert share(ids, LEFT_FACE, {"left_face"}) > 0.9
    assert share(ids, CHEST, {"torso_front"}) > 0.9
    x0, y0, x1, y1 = BACKDROP
    assert float(ids[y0:y1, x0:x1].max()) == 0.0  # no person there
    assert float(image[3][y0:y1, x0:x1].max()) < 0.2
    # Face labels only near the face: none below the helmet ring.
    assert share(ids, (0, 300, 512, 512), {"left_face", "right_face"}) < 0.001


def test_keypoints_and_box_as_objects(astronaut_ids) -> None:
    _, records = astronaut_ids
    (body,) = records
    for name, (x, y) in FACE_POINTS.items():
        bx, by = body[name]
        assert math.hypot(bx - x, by - y) < 10, (name, body[name])
        assert body[f"{name}_score"] > 0.9
        assert body[f"{name}_nuke"] == (bx, pytest.approx(512 - by, abs=0.011))
    assert all(name in body for name in KEYPOINT_NAMES)
    x0, y0, x1, y1 = body["box"]
    assert x0 < 100 and 0 < y0 < 40 and x1 > 350 and y1 == 512
    assert 0.3 < body["coverage"] < 0.6


def test_colours_part_matte_and_person_matte(runner: Runner) -> None:
    plate = photo("astronaut")
    colours, _ = body_parts(runner, plate, output="colours")
    x0, y0, x1, y1 = CHEST
    torso = torch.tensor(PART_COLOURS[PART_NAMES.index("torso_front")])
    assert torch.allclose(colours[:3, y0 + 10, x0 + 10], torso)
    face, _ = body_parts(runner, plate, output="part", part="left_face")
    torch.testing.assert_close(face[:3], plate)
    x0, y0, x1, y1 = LEFT_FACE
    assert face[3, y0:y1, x0:x1].mean() > 0.6
    x0, y0, x1, y1 = CHEST
    assert face[3, y0:y1, x0:x1].max() < 0.1
    person, _ = body_parts(runner, plate, output="person")
    assert person[3, y0:y1, x0:x1].mean() > 0.75  # a space suit: less sure than on skin
    x0, y0, x1, y1 = BACKDROP
    assert person[3, y0:y1, x0:x1].max() < 0.2


def test_4k_frame_is_labelled_at_full_resolution(runner: Runner) -> None:
    scale, left, top = 3, 1100, 200
    frame = torch.zeros(3, 2160, 3840)
    big = F.interpolate(photo("astronaut")[None], scale_factor=scale, mode="bilinear")[0]
    frame[:, top : top + 1536, left : left + 1536] = big
    image, records = body_parts(runner, frame, output="part_ids", resolution=1024)
    assert image.shape == (4, 2160, 3840)

    def scaled(region: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        x0, y0, x1, y1 = region
        return (x0 * scale + left, y0 * scale + top, x1 * scale + left, y1 * scale + top)

    assert share(image[0], scaled(RIGHT_FACE), {"right_face"}) > 0.8
    assert share(image[0], scaled(CHEST), {"torso_front"}) > 0.8
    assert float(image[3, :150].max()) < 0.2  # the black border above her
    (body,) = records
    x, y = FACE_POINTS["nose"]
    assert (
        math.hypot(body["nose"][0] - (x * scale + left), body["nose"][1] - (y * scale + top)) < 30
    )


def test_network_size_keeps_the_aspect_in_multiples_of_16() -> None:
    assert network_size(1080, 1920, 512) == (288, 512)
    assert network_size(2160, 3840, 1024) == (576, 1024)
    assert network_size(512, 512, 512) == (512, 512)
    assert network_size(4000, 10, 256) == (256, 16)


def test_declares_its_weights_and_colourspace() -> None:
    spec = BodyParts.spec()
    assert spec.colourspace_in == "srgb"
    (weights,) = BodyParts.weights
    assert weights.licence == "Apache-2.0" and weights.commercial
