"""Tests for the built-in ``face_detect`` model (BlazeFace) and the detection helpers it uses.

The reference face is the one in scikit-image's ``astronaut()`` (512 x 512), boxed by eye from
a zoomed view of the photograph: hairline to chin, cheek to cheek, and the centres of the two
eyes. Face-free photographs are ``coffee()`` and ``hubble_deep_field()``; ``chelsea()`` is not
used as one, because the "back" detector takes the cat's face for a face (documented).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
import tritonclient.http as triton_http

from frameserve.builtin_models.face_detect.model import BOX_COLOUR, FaceDetect
from frameserve.catalogue.registry import ModelRegistry
from frameserve.engine.request import InferenceResult, build_request
from frameserve.engine.runner import Runner
from frameserve.errors import KnobError
from frameserve.networks.blazeface import (
    KEYPOINT_NAMES,
    NUM_ANCHORS,
    VARIANTS,
    BlazeFace,
    decode,
    load_anchors,
)
from frameserve.networks.detection import (
    Detections,
    box_iou,
    plan_scan,
    suppress_nested,
    weighted_nms,
)
from frameserve.serve.server import FrameServer
from frameserve.weights import shipped_weights_path

#: The astronaut's face in ``skimage.data.astronaut()``: x0, y0, x1, y1 (hairline to chin).
FACE_BOX = (178.0, 72.0, 272.0, 186.0)
#: Centres of her eyes, (x, y): her right eye is on the left of the picture.
EYES = {"right_eye": (202.0, 101.0), "left_eye": (247.0, 102.0)}
#: Parameter counts of the published weights.
PARAMETERS = {"front": 101_390, "back": 136_240}


def photo(name: str) -> torch.Tensor:
    """A scikit-image photograph as a float32 (3, H, W) tensor of sRGB values, 0-1."""
    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return torch.from_numpy(image[..., :3].astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()


def resized(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    mode = "area" if height < image.shape[1] else "bilinear"
    return F.interpolate(image[None], size=(height, width), mode=mode)[0]


def iou(a: list[float] | tuple[float, ...], b: list[float] | tuple[float, ...]) -> float:
    return float(box_iou(torch.tensor([a]), torch.tensor([b]))[0, 0])


def expected_box(scale: float, x: float, y: float) -> tuple[float, ...]:
    """FACE_BOX in a copy of the astronaut scaled by ``scale`` and pasted at ``(x, y)``."""
    x0, y0, x1, y1 = FACE_BOX
    return (x0 * scale + x, y0 * scale + y, x1 * scale + x, y1 * scale + y)


@pytest.fixture(scope="module")
def runner() -> Runner:
    return Runner(ModelRegistry(builtins=True), device="cpu")


def detect(runner: Runner, frame: torch.Tensor, colourspace: str = "srgb", **knobs: object):
    """Run ``face_detect`` on ``frame``; return the RGBA image and the face records."""
    spec = runner.registry.get("face_detect").spec
    outcome = runner.run(build_request(spec, [frame], knobs, colourspace=colourspace))
    assert isinstance(outcome, InferenceResult), outcome
    (faces,) = outcome.objects
    assert faces.name == "faces"
    return outcome.frames["image"], list(faces.records)


# --- the network and its weights --------------------------------------------------------------


@pytest.mark.parametrize("variant", ["front", "back"])
def test_the_shipped_state_dicts_load_strictly(variant: str) -> None:
    info = VARIANTS[variant]
    state = torch.load(
        shipped_weights_path("face-detect", info.weights_file),
        map_location="cpu",
        weights_only=True,
    )
    assert len(state) == info.tensor_count == {"front": 74, "back": 138}[variant]
    net = BlazeFace(variant)  # type: ignore[arg-type]
    net.load_state_dict(state, strict=True)
    assert sum(p.numel() for p in net.parameters()) == PARAMETERS[variant]
    size = info.input_size
    raw_boxes, logits = net(torch.zeros(2, 3, size, size))
    assert raw_boxes.shape == (2, NUM_ANCHORS, 16) and logits.shape == (2, NUM_ANCHORS)
    with pytest.raises(ValueError, match=f"takes \\(N, 3, {size}, {size}\\)"):
        net(torch.zeros(1, 3, size, size + 1))


def test_anchors_cover_a_16_grid_then_an_8_grid() -> None:
    anchors = load_anchors(torch.device("cpu"))
    assert anchors.shape == (NUM_ANCHORS, 4)
    torch.testing.assert_close(anchors[0], torch.tensor([1 / 32, 1 / 32, 1.0, 1.0]))
    torch.testing.assert_close(anchors[512], torch.tensor([1 / 16, 1 / 16, 1.0, 1.0]))


def test_decode_places_regressions_relative_to_their_anchor() -> None:
    anchors = torch.tensor([[0.25, 0.75, 1.0, 1.0], [0.5, 0.5, 0.5, 0.5]])
    raw = torch.zeros(1, 2, 16)
    raw[0, 0, :4] = torch.tensor([12.8, -12.8, 64.0, 32.0])  # in pixels of a 128 input
    raw[0, 1, 4:6] = torch.tensor([128.0, 0.0])  # first keypoint one anchor width right
    logits = torch.tensor([[0.0, 1000.0]])
    boxes, keypoints, scores = decode(raw, logits, anchors, input_size=128)
    torch.testing.assert_close(boxes[0, 0], torch.tensor([0.1, 0.525, 0.6, 0.775]))
    torch.testing.assert_close(boxes[0, 1], torch.tensor([0.5, 0.5, 0.5, 0.5]))
    torch.testing.assert_close(keypoints[0, 1, 0], torch.tensor([1.0, 0.5]))
    torch.testing.assert_close(keypoints[0, 0, 5], torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(scores, torch.tensor([[0.5, 1.0]]))  # 1000 is clipped to 100


# --- merging detections and planning windows ---------------------------------------------------


def found(boxes: list[list[float]], scores: list[float]) -> Detections:
    tensor = torch.tensor(boxes)
    keypoints = torch.stack([tensor[:, :2], tensor[:, 2:]], dim=1)  # two corner keypoints
    return Detections(tensor, keypoints, torch.tensor(scores))


def test_box_iou_reference_values() -> None:
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 6.0, 6.0]])
    expected = torch.tensor([[1 / 7, 1.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(box_iou(a, b), expected)


def test_weighted_nms_blends_overlapping_boxes_and_keeps_the_best_score() -> None:
    merged = weighted_nms(
        found(
            [[0, 0, 10, 10], [9, 9, 19, 19], [1, 1, 11, 11], [30, 0, 40, 10]], [0.6, 0.5, 0.9, 0.8]
        )
    )
    assert len(merged) == 3
    torch.testing.assert_close(merged.scores, torch.tensor([0.9, 0.8, 0.5]))
    # boxes 0 and 2 (IoU 0.68) blend, weighted by their scores 0.6 and 0.9
    torch.testing.assert_close(merged.boxes[0], torch.tensor([0.6, 0.6, 10.6, 10.6]))
    torch.testing.assert_close(merged.keypoints[0, 1], torch.tensor([10.6, 10.6]))
    torch.testing.assert_close(merged.boxes[1], torch.tensor([30.0, 0.0, 40.0, 10.0]))
    assert len(weighted_nms(found([[0, 0, 10, 10], [3, 0, 13, 10]], [0.9, 0.8]), 0.6)) == 2


def test_a_box_inside_a_better_one_is_dropped_but_not_inside_a_worse_one() -> None:
    big, small = [0.0, 0.0, 100.0, 100.0], [40.0, 40.0, 60.0, 60.0]
    assert suppress_nested(found([big, small], [0.9, 0.8])).boxes.tolist() == [big]
    assert len(suppress_nested(found([small, big], [0.9, 0.8]))) == 2


def covers(windows: list[tuple[int, int]], length: int, size: int, axis: int) -> bool:
    """Whether every span of ``size // 2`` along ``axis`` lies wholly inside some window."""
    starts = sorted({w[axis] for w in windows})
    return all(
        any(s <= a and a + size // 2 <= s + size for s in starts)
        for a in range(0, max(1, length - size // 2 + 1))
    )


def test_plan_scan_lays_out_overlapping_windows_down_to_the_smallest_face() -> None:
    levels = plan_scan(2160, 3840, input_size=256, smallest_fraction=0.08, smallest_object=154)
    assert [(lv.height, lv.width) for lv in levels] == [(144, 256), (288, 512)]
    assert levels[0].windows == ((0, 0),)
    assert len(levels[1].windows) == 3 * 2
    deep = plan_scan(2160, 3840, input_size=256, smallest_fraction=0.08, smallest_object=20)
    assert [lv.width for lv in deep] == [256, 512, 1024, 2048, 3840]  # never enlarged
    for level in deep:
        assert all(0 <= x <= max(0, level.width - 256) for x, _ in level.windows)
        assert covers(list(level.windows), level.width, 256, 0)
        assert covers(list(level.windows), level.height, 256, 1)
    assert len(plan_scan(5, 7, input_size=128, smallest_fraction=0.2, smallest_object=1)) == 1
    one = plan_scan(1080, 1920, input_size=128, smallest_fraction=0.2, smallest_object=float("inf"))
    assert len(one) == 1


# --- the model, through the runner ------------------------------------------------------------


def check_astronaut(record: dict, *, scale: float = 1.0, x: float = 0.0, y: float = 0.0) -> None:
    """The record is the astronaut's face: box, eyes in order inside it, a high score."""
    box = record["box"]
    truth = expected_box(scale, x, y)
    assert iou(box, truth) > 0.5, (box, truth)
    for name, (ex, ey) in EYES.items():
        px, py = record[name]
        assert box[0] < px < box[2] and box[1] < py < box[3]
        assert abs(px - (ex * scale + x)) < 12 * scale and abs(py - (ey * scale + y)) < 12 * scale
    assert record["right_eye"][0] < record["left_eye"][0]
    assert record["nose"][1] > record["right_eye"][1] and record["mouth"][1] > record["nose"][1]
    assert 0.7 <= record["score"] <= 1.0


def test_the_astronaut_has_exactly_one_face_at_the_right_place(runner: Runner) -> None:
    image, faces = detect(runner, photo("astronaut"))
    assert image.shape == (4, 512, 512)
    (face,) = faces
    check_astronaut(face)
    assert set(face) == {"score", "box", "box_nuke"} | {
        f"{name}{suffix}" for name in KEYPOINT_NAMES for suffix in ("", "_nuke")
    }
    x0, y0, x1, y1 = face["box"]
    assert list(face["box_nuke"]) == pytest.approx([x0, 512 - y1, x1, 512 - y0], abs=0.011)
    nose_x, nose_y = face["nose"]
    assert list(face["nose_nuke"]) == pytest.approx([nose_x, 512 - nose_y], abs=0.011)


def test_the_front_detector_finds_the_same_face(runner: Runner) -> None:
    _, faces = detect(runner, photo("astronaut"), detector="front", smallest_face=0.15)
    (face,) = faces
    check_astronaut(face)
    assert face["score"] > 0.95


def test_two_faces_side_by_side_are_two_detections(runner: Runner) -> None:
    astronaut = photo("astronaut")
    pair = torch.cat([astronaut, astronaut.flip(2)], dim=2)  # 512 x 1024, the second mirrored
    _, faces = detect(runner, pair)
    assert len(faces) == 2
    left, right = sorted(faces, key=lambda f: f["box"][0])
    check_astronaut(left)
    mirrored = (1024 - FACE_BOX[2], FACE_BOX[1], 1024 - FACE_BOX[0], FACE_BOX[3])
    assert iou(right["box"], mirrored) > 0.5
    assert right["right_eye"][0] < right["left_eye"][0]  # a mirrored face is still a face


@pytest.mark.parametrize("name", ["coffee", "hubble_deep_field"])
def test_a_photo_without_faces_gives_none(runner: Runner, name: str) -> None:
    image, faces = detect(runner, photo(name))
    assert faces == []
    assert torch.count_nonzero(image[3]) == 0


def test_small_faces_in_a_4k_frame_are_found_by_the_windows(runner: Runner) -> None:
    canvas = resized(photo("coffee"), 2160, 3840)  # a face-free photograph behind them
    astronaut = photo("astronaut")
    pastes = [(3840 / 15 / 114, 2500, 900), (3840 / 25 / 114, 300, 200)]  # faces 1/15, 1/25 wide
    for scale, x, y in pastes:
        side = round(512 * scale)
        canvas[:, y : y + side, x : x + side] = resized(astronaut, side, side)
    image, faces = detect(runner, canvas)
    assert image.shape == (4, 2160, 3840)
    assert len(faces) == 2
    for face, (scale, x, y) in zip(sorted(faces, key=lambda f: -f["box"][0]), pastes, strict=True):
        check_astronaut(face, scale=side_scale(scale), x=x, y=y)
    # the whole frame in one window (level 0) does not see the smaller face
    _, whole_only = detect(runner, canvas, smallest_face=1.0)
    assert len(whole_only) == 1 and whole_only[0]["box"][0] > 2500


def side_scale(scale: float) -> float:
    """The scale a paste of ``round(512 * scale)`` pixels really has."""
    return round(512 * scale) / 512


def test_hdr_nan_and_inf_values_do_not_break_detection(runner: Runner) -> None:
    plate = photo("astronaut")
    plate[:, 0:250, 0:90] *= 40.0  # the flag as a blazing highlight
    plate[:, 300:310, 400:420] = float("nan")
    plate[:, 0, 511] = float("inf")
    plate[:, 400:420, 0:20] = -0.5
    image, faces = detect(runner, plate)
    (face,) = faces
    check_astronaut(face)
    torch.testing.assert_close(image[:3], plate, equal_nan=True, rtol=0, atol=0)
    assert torch.isfinite(image[3]).all()


def test_a_scene_linear_request_is_converted_for_the_network(runner: Runner) -> None:
    srgb = photo("astronaut")
    linear = torch.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    image, faces = detect(runner, linear, colourspace="lin_rec709")
    (face,) = faces
    check_astronaut(face)
    torch.testing.assert_close(image[:3], linear, rtol=1e-4, atol=1e-6)


def test_boxes_mode_draws_the_box_and_landmarks_only_near_the_face(runner: Runner) -> None:
    plate = photo("astronaut")
    image, (face,) = detect(runner, plate, output="boxes")
    changed = (image[:3] != plate).any(dim=0)
    torch.testing.assert_close(image[3], changed.float())  # alpha: exactly what was drawn
    rows, cols = torch.nonzero(changed, as_tuple=True)
    x0, y0, x1, y1 = face["box"]
    near = 4  # line width 1 and dots of radius 2 at 512 pixels
    assert cols.min() >= x0 - near and cols.max() <= x1 + near
    assert rows.min() >= y0 - near and rows.max() <= y1 + near
    # the box is outlined in green all round, its inside mostly untouched
    top = image[:3, round(y0), round(x0) + 5 : round(x1) - 5]
    torch.testing.assert_close(top, torch.tensor(BOX_COLOUR)[:, None].expand_as(top))
    assert changed[round(y0) : round(y1), round(x0)].float().mean() > 0.9
    inside = changed[round(y0) + 3 : round(y1) - 3, round(x0) + 3 : round(x1) - 3]
    assert 0 < inside.float().mean() < 0.1  # the six dots
    for name in KEYPOINT_NAMES:
        x, y = face[name]
        assert changed[int(y), int(x)]


def test_matte_mode_keeps_the_plate_and_mattes_the_face(runner: Runner) -> None:
    plate = photo("astronaut")
    image, (face,) = detect(runner, plate)
    assert torch.equal(image[:3], plate)
    alpha = image[3]
    x0, y0, x1, y1 = (round(v) for v in face["box"])
    w, h = x1 - x0, y1 - y0
    core = alpha[y0 + h // 4 : y1 - h // 4, x0 + w // 4 : x1 - w // 4]
    assert core.min() > 0.99
    far = torch.ones_like(alpha, dtype=torch.bool)
    far[max(0, y0 - h) : y1 + h, max(0, x0 - w) : x1 + w] = False
    assert alpha[far].max() == 0.0
    assert alpha.min() >= 0.0 and alpha.max() <= 1.0
    assert alpha.unique().numel() > 50  # a soft ramp, not two values
    hard = detect(runner, plate, softness=0.0)[0][3]
    assert set(hard.unique().tolist()) == {0.0, 1.0}


def test_tiny_frames_and_bad_knob_values(runner: Runner) -> None:
    image, faces = detect(runner, torch.rand(3, 6, 9))
    assert image.shape == (4, 6, 9) and faces == []
    spec = FaceDetect.spec()
    with pytest.raises(KnobError, match="detector"):
        build_request(spec, [torch.rand(3, 6, 9)], {"detector": "side"})
    with pytest.raises(KnobError, match="smallest_face"):
        build_request(spec, [torch.rand(3, 6, 9)], {"smallest_face": 0.0})


# --- over HTTP --------------------------------------------------------------------------------


def test_an_http_client_receives_the_faces_as_json(server: FrameServer) -> None:
    host, port = server.http_address
    client = triton_http.InferenceServerClient(url=f"{host}:{port}", network_timeout=60.0)
    try:
        frame = photo("astronaut").permute(1, 2, 0).contiguous().numpy()  # [H, W, C]
        tensor = triton_http.InferInput("image", list(frame.shape), "FP32")
        tensor.set_data_from_numpy(frame, binary_data=True)
        result = client.infer(
            "face_detect", [tensor], parameters={"colourspace": "srgb", "output": "boxes"}
        )
        image = result.as_numpy("image")
        objects = result.as_numpy("objects")
    finally:
        client.close()
    assert image is not None and image.shape == (512, 512, 4)
    assert objects is not None and objects.shape == (1,)
    document = json.loads(objects[0])
    assert document["name"] == "faces"
    (face,) = document["records"]
    check_astronaut(face)
