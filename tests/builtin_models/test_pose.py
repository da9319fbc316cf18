"""Tests for the built-in ``pose`` model (BlazePose detector + landmarks) on real photographs.

Reference points on scikit-image's ``astronaut()`` (512 x 512), placed by eye on a 6x zoom:
the centres of her pupils, the tip of her nose; and her shoulder joints, which the padded suit
hides, placed where the suit's shoulder seams meet the top of the arms (uncertain by about 15
pixels themselves). Photos without people: ``coffee()`` and ``rocket()``; ``chelsea()`` (a cat)
is found by the detector and must be refused by the landmark network's pose score.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
import tritonclient.http as triton_http

from frameserve.builtin_models.pose.model import Pose
from frameserve.builtin_models.pose.smoothing import one_euro, smoothing_cutoffs
from frameserve.catalogue.registry import ModelRegistry
from frameserve.engine.request import InferenceResult, build_request
from frameserve.engine.runner import Runner
from frameserve.networks.blazepose import LANDMARK_NAMES
from frameserve.serve.server import FrameServer

#: Hand-placed points on the astronaut, (x, y) pixels, origin top-left.
FACE = {"nose": (224.0, 127.0), "right_eye": (204.0, 101.0), "left_eye": (246.0, 103.0)}
SHOULDERS = {"right_shoulder": (100.0, 240.0), "left_shoulder": (320.0, 250.0)}
#: How far (pixels) the full model may be from them: the network sees the whole body in a
#: 256-pixel crop about 1300 frame pixels wide here, 5 frame pixels per crop pixel.
FACE_TOLERANCE = 9.0
SHOULDER_TOLERANCE = 25.0
#: Regions of the astronaut: her face, and grey backdrop beside her head.
FACE_REGION = (190, 80, 260, 150)  # x0, y0, x1, y1
BACKDROP_REGION = (300, 20, 360, 80)


def photo(name: str) -> torch.Tensor:
    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return torch.from_numpy(image[..., :3].astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()


@pytest.fixture(scope="module")
def runner() -> Runner:
    return Runner(ModelRegistry(builtins=True), device="cpu")


def pose(runner: Runner, plate: torch.Tensor, **knobs: object):
    spec = runner.registry.get("pose").spec
    outcome = runner.run(build_request(spec, [plate], knobs, colourspace="srgb"))
    assert isinstance(outcome, InferenceResult), outcome
    (poses,) = outcome.objects
    assert poses.name == "poses"
    return outcome.frames["image"], list(poses.records)


@pytest.fixture(scope="module")
def astronaut_skeleton(runner: Runner):
    return pose(runner, photo("astronaut"))


def distance(a: object, b: tuple[float, float]) -> float:
    assert isinstance(a, tuple | list)
    return math.hypot(float(a[0]) - b[0], float(a[1]) - b[1])


def test_face_and_shoulders_fall_on_the_hand_placed_points(astronaut_skeleton) -> None:
    _, records = astronaut_skeleton
    assert len(records) == 1
    (person,) = records
    assert person["score"] > 0.9
    for name, point in FACE.items():
        assert distance(person[name], point) <= FACE_TOLERANCE, (name, person[name])
        assert person[f"{name}_visibility"] > 0.9
    for name, point in SHOULDERS.items():
        assert distance(person[name], point) <= SHOULDER_TOLERANCE, (name, person[name])
    for name in LANDMARK_NAMES:  # every landmark, twice, with its visibility
        x, y = person[name]
        assert person[f"{name}_nuke"] == (x, pytest.approx(512 - y, abs=0.011))
        assert 0.0 <= person[f"{name}_visibility"] <= 1.0
    x0, y0, x1, y1 = person["box"]
    assert person["box_nuke"] == (x0, pytest.approx(512 - y1), x1, pytest.approx(512 - y0))


def test_skeleton_is_drawn_over_the_untouched_plate(astronaut_skeleton) -> None:
    image, _ = astronaut_skeleton
    plate = photo("astronaut")
    assert image.shape == (4, 512, 512)
    drawn = image[3] > 0
    assert 0.002 < drawn.float().mean() < 0.1
    torch.testing.assert_close(image[:3][:, ~drawn], plate[:, ~drawn])
    # The bone between the shoulders crosses the middle of the chest.
    assert drawn[225:250, 200:215].any()


def test_lite_model_finds_the_same_face(runner: Runner) -> None:
    _, records = pose(runner, photo("astronaut"), model="lite")
    (person,) = records
    for name, point in FACE.items():
        assert distance(person[name], point) <= 2 * FACE_TOLERANCE, (name, person[name])


def test_matte_covers_the_person_not_the_backdrop(runner: Runner) -> None:
    image, records = pose(runner, photo("astronaut"), output="matte")
    assert len(records) == 1
    torch.testing.assert_close(image[:3], photo("astronaut"))
    alpha = image[3]
    x0, y0, x1, y1 = FACE_REGION
    assert alpha[y0:y1, x0:x1].mean() > 0.9
    x0, y0, x1, y1 = BACKDROP_REGION
    assert alpha[y0:y1, x0:x1].mean() < 0.05
    assert alpha[300:400, 60:140].mean() > 0.9  # the suit's sleeve


def test_two_people_are_two_poses(runner: Runner) -> None:
    """The astronaut and her mirror image side by side: two people, each with her own face."""
    plate = photo("astronaut")
    pair = torch.cat([plate, plate.flip(-1)], dim=2)  # 512 x 1024
    _, records = pose(runner, pair)
    assert len(records) == 2
    noses = sorted(float(record["nose"][0]) for record in records)  # type: ignore[index]
    x, _ = FACE["nose"]
    assert abs(noses[0] - x) < 2 * FACE_TOLERANCE
    assert abs(noses[1] - (1024 - x)) < 2 * FACE_TOLERANCE


@pytest.mark.parametrize("name", ["coffee", "rocket", "chelsea"])
def test_photos_without_people_give_no_pose(runner: Runner, name: str) -> None:
    image, records = pose(runner, photo(name))
    assert records == []
    assert float(image[3].max()) == 0.0


def test_4k_frame_maps_landmarks_to_full_resolution(runner: Runner) -> None:
    """The astronaut enlarged 3x into a black UHD frame: the same points, 3x, shifted."""
    scale, left, top = 3, 1100, 200
    frame = torch.zeros(3, 2160, 3840)
    big = F.interpolate(photo("astronaut")[None], scale_factor=scale, mode="bilinear")[0]
    frame[:, top : top + 1536, left : left + 1536] = big[:, :1536, :1536]
    image, records = pose(runner, frame)
    assert image.shape == (4, 2160, 3840)
    (person,) = records
    for name, (x, y) in FACE.items():
        expected = (x * scale + left, y * scale + top)
        assert distance(person[name], expected) <= scale * FACE_TOLERANCE, (name, person[name])


def test_declares_its_weights_and_colourspace() -> None:
    spec = Pose.spec()
    assert spec.colourspace_in == "srgb"
    (weights,) = Pose.weights
    assert weights.licence == "Apache-2.0" and weights.commercial


# --- smoothing over a shot ----------------------------------------------------------------------

JOINTS = ("nose", "left_eye", "right_eye", "left_shoulder", "right_shoulder", "left_elbow")


def noisy_astronauts(count: int) -> list[torch.Tensor]:
    """The still astronaut with fresh grain on every frame: the landmarks jitter."""
    generator = torch.Generator().manual_seed(7)
    plate = photo("astronaut")
    return [
        (plate + 0.06 * torch.randn(plate.shape, generator=generator)).clamp(0, 1)
        for _ in range(count)
    ]


def jitter(tracks: list[list[tuple[float, float]]]) -> float:
    """Mean distance a joint moves from one frame to the next, pixels."""
    points = torch.tensor(tracks)  # (frames, joints, 2)
    return float((points[1:] - points[:-1]).norm(dim=-1).mean())


def test_one_euro_keeps_still_values_and_follows_a_step_with_lag() -> None:
    still = [(frame, torch.tensor([3.0])) for frame in range(10)]
    assert float(one_euro(still, 0.04)) == pytest.approx(3.0)
    step = [(0, torch.tensor([0.0]))] + [(frame, torch.tensor([1.0])) for frame in range(1, 4)]
    value = float(one_euro(step, 0.04))
    assert 0.2 < value < 1.0  # on its way, not there yet
    slow = float(one_euro(step, 0.04, beta=0.0))
    assert slow < value  # the speed term lets it follow faster
    assert smoothing_cutoffs(0.0) > smoothing_cutoffs(0.5) > smoothing_cutoffs(1.0)


def test_frame_knob_smooths_landmarks_over_a_shot(runner: Runner) -> None:
    frames = noisy_astronauts(4)
    runs = {}
    for strength in (0.0, 0.5):
        tracks = []
        for number, frame in enumerate(frames, start=1001):
            _, (person,) = pose(runner, frame, frame=number, smoothing=strength)
            tracks.append([person[name] for name in JOINTS])
        runs[strength] = tracks
    assert jitter(runs[0.5]) < 0.5 * jitter(runs[0.0])
    # The first frame has no history: the same either way.
    assert runs[0.5][0] == runs[0.0][0]


def test_frameserve_run_gives_the_model_each_frame_number(tmp_path) -> None:
    from frameserve.media.imageio import write_image
    from tests.shots.plates import frameserve_run

    for number, frame in enumerate(noisy_astronauts(3), start=1001):
        write_image(tmp_path / f"plate.{number}.png", frame.permute(1, 2, 0).numpy(), layout="HWC")
    tracks = {}
    for strength in ("0", "0.5"):
        out = tmp_path / f"out{strength}"
        code = frameserve_run(
            "pose", "--input", tmp_path / "plate.####.png", "--output", out / "pose.####.png",
            "--frames", "1001-1003", "--local", "--jobs", "1", "--colourspace", "srgb",
            "--knob", f"smoothing={strength}",
        )  # fmt: skip
        assert code == 0
        tracks[strength] = [
            [json.loads((out / f"pose.{n}.json").read_text())[0]["records"][0][j] for j in JOINTS]
            for n in range(1001, 1004)
        ]
    assert jitter(tracks["0.5"]) < 0.7 * jitter(tracks["0"])


def test_a_served_pose_reaches_an_http_client_as_json(server: FrameServer) -> None:
    """Through the HTTP door and a model worker process, as a TD's script would ask."""
    host, port = server.http_address
    client = triton_http.InferenceServerClient(url=f"{host}:{port}", network_timeout=120.0)
    try:
        frame = photo("astronaut").permute(1, 2, 0).contiguous().numpy()
        tensor = triton_http.InferInput("image", list(frame.shape), "FP32")
        tensor.set_data_from_numpy(frame, binary_data=True)
        result = client.infer("pose", [tensor], parameters={"colourspace": "srgb"})
        image, objects = result.as_numpy("image"), result.as_numpy("objects")
    finally:
        client.close()
    assert image is not None and image.shape == (512, 512, 4)
    assert objects is not None
    document = json.loads(objects[0])
    assert document["name"] == "poses"
    (person,) = document["records"]
    assert distance(person["nose"], FACE["nose"]) <= FACE_TOLERANCE
