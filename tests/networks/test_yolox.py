"""Tests for YOLOX-Nano's preprocessing, decoding and class-aware NMS (plain PyTorch).

The references here are written differently on purpose: the decoding as explicit numpy loops
over the three grids, the NMS as a brute-force Python loop over boxes, and OpenCV's
``cv2.dnn.NMSBoxesBatched`` as an outside implementation.
"""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest
import skimage.data
import torch

from frameserve.errors import KnobError
from frameserve.networks.yolox import (
    COCO_CLASSES,
    INPUT_SIZE,
    PAD_VALUE,
    YoloxDetector,
    batched_nms,
    class_ids,
    decode,
    letterbox,
    nms,
    tile_layout,
)
from frameserve.weights import shipped_weights_path


@pytest.fixture(scope="module")
def detector() -> YoloxDetector:
    return YoloxDetector(shipped_weights_path("object-detect", "yolox_nano.onnx"))


def photo(name: str) -> torch.Tensor:
    image = getattr(skimage.data, name)()
    return torch.from_numpy(image[..., :3].astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()


def reference_decode(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """YOLOX's decoding as loops: for each grid, each cell row by row, left to right."""
    boxes = np.zeros((raw.shape[0], 4))
    scores = np.zeros((raw.shape[0], raw.shape[1] - 5))
    row = 0
    for stride in (8, 16, 32):
        cells = INPUT_SIZE // stride
        for gy in range(cells):
            for gx in range(cells):
                x, y, log_w, log_h, objectness = raw[row, :5]
                cx, cy = (x + gx) * stride, (y + gy) * stride
                w, h = np.exp(log_w) * stride, np.exp(log_h) * stride
                boxes[row] = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
                scores[row] = objectness * raw[row, 5:]
                row += 1
    assert row == raw.shape[0] == 3549
    return boxes, scores


def brute_force_nms(boxes: list, scores: list, classes: list, threshold: float) -> list[int]:
    """Greedy NMS, one pair at a time, boxes only suppressing boxes of their own class."""

    def iou(a: list, b: list) -> float:
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = w * h
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union if union > 0 else 0.0

    order = sorted(range(len(boxes)), key=lambda i: -scores[i])
    kept: list[int] = []
    for i in order:
        if all(classes[k] != classes[i] or iou(boxes[k], boxes[i]) <= threshold for k in kept):
            kept.append(i)
    return kept


def random_boxes(seed: int, count: int, classes: int) -> tuple[torch.Tensor, ...]:
    rng = np.random.default_rng(seed)
    corner = rng.uniform(0, 300, (count, 2))
    size = rng.uniform(5, 120, (count, 2))
    boxes = np.concatenate([corner, corner + size], axis=1)
    # Clustered copies, so that many pairs overlap by more than the threshold.
    boxes[count // 2 :] = boxes[: count - count // 2] + rng.normal(0, 6, (count - count // 2, 4))
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    scores = rng.permutation(count) / count + 0.01  # distinct scores
    labels = rng.integers(0, classes, count)
    return (
        torch.tensor(boxes, dtype=torch.float32),
        torch.tensor(scores, dtype=torch.float32),
        torch.tensor(labels),
    )


def test_letterbox_puts_the_bgr_frame_top_left_on_grey_114() -> None:
    image = torch.zeros(3, 100, 200)
    image[0] = 1.0  # pure red
    image[2, 50:] = 0.5  # the lower half gets some blue
    square, ratio = letterbox(image)
    assert square.shape == (1, 3, INPUT_SIZE, INPUT_SIZE) and ratio == INPUT_SIZE / 200
    assert torch.all(square[0, 2, :208] == 255.0)  # red is the last channel (BGR)
    assert torch.all(square[0, 1, :208] == 0.0)
    assert square[0, 0, 10, 10] == 0.0 and square[0, 0, 200, 10] == 127.5
    assert torch.all(square[:, :, 208:] == PAD_VALUE)  # below the frame: padding
    assert letterbox(torch.zeros(3, 416, 100))[0][0, 0, :, 100:].eq(PAD_VALUE).all()


def test_letterbox_resizes_like_yoloxs_own_opencv_preprocessing() -> None:
    # YOLOX's ValTransform: cv2.resize(INTER_LINEAR) of the BGR frame by r, top-left on 114.
    image = photo("coffee")  # 600 x 400
    square, ratio = letterbox(image)
    bgr = image.permute(1, 2, 0).numpy()[..., ::-1] * 255.0
    size = (round(600 * ratio), round(400 * ratio))
    expected = np.full((INPUT_SIZE, INPUT_SIZE, 3), PAD_VALUE, np.float32)
    expected[: size[1], : size[0]] = cv2.resize(
        np.ascontiguousarray(bgr), size, interpolation=cv2.INTER_LINEAR
    )
    got = square[0].permute(1, 2, 0).numpy()
    assert np.abs(got - expected).max() < 0.5  # OpenCV's fixed-point weights: a fraction off


def test_frames_larger_than_1280_are_averaged_before_the_last_resize() -> None:
    # A one-pixel checkerboard at 4K: sampling it every tenth pixel aliases it (here every
    # sample falls on black); averaging 3 x 3 blocks first gives nearly the mean grey.
    checker = ((torch.arange(2160)[:, None] + torch.arange(3840)[None, :]) % 2).float()
    aliased = torch.nn.functional.interpolate(checker[None, None], size=(216, 384))
    assert float(aliased.max()) == 0.0
    square, _ = letterbox(checker.expand(3, -1, -1))
    inside = square[0, :, :234, :416]
    assert float((inside - 127.5).abs().max()) < 20.0


def test_decode_matches_a_loop_reference_on_the_real_network_output(
    detector: YoloxDetector,
) -> None:
    square, _ = letterbox(photo("astronaut"))
    raw = detector.raw(square)
    assert raw.shape == (1, 3549, 85)
    boxes, scores = decode(raw)
    expected_boxes, expected_scores = reference_decode(raw[0].double().numpy())
    np.testing.assert_allclose(boxes[0].numpy(), expected_boxes, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(scores[0].numpy(), expected_scores, rtol=1e-5, atol=1e-7)
    # The best row is the astronaut, a person (class 0).
    best = int(scores[0].max(dim=1).values.argmax())
    assert int(scores[0, best].argmax()) == 0 and float(scores[0, best].max()) > 0.85


def test_decode_of_hand_made_rows() -> None:
    raw = torch.zeros(1, 3549, 85)
    raw[0, 0, :5] = torch.tensor([0.5, 0.5, 0.0, 0.0, 1.0])  # stride 8, cell (0, 0)
    raw[0, 53, :5] = torch.tensor([0.0, 0.0, float(np.log(2.0)), 0.0, 0.5])  # 8: cell (1, 1)
    raw[0, 52 * 52 + 26 + 2, :4] = torch.tensor([0.25, 0.0, 0.0, 0.0])  # 16: cell (2, 1)
    raw[0, 52 * 52 + 26 * 26 + 13 * 13 - 1, :4] = torch.tensor([0.0, 0.0, 0.0, 0.0])
    raw[0, 53, 5 + 41] = 0.8
    boxes, scores = decode(raw)
    torch.testing.assert_close(boxes[0, 0], torch.tensor([0.0, 0.0, 8.0, 8.0]))
    torch.testing.assert_close(boxes[0, 53], torch.tensor([0.0, 4.0, 16.0, 12.0]))
    torch.testing.assert_close(boxes[0, 52 * 52 + 28], torch.tensor([28.0, 8.0, 44.0, 24.0]))
    torch.testing.assert_close(boxes[0, -1], torch.tensor([368.0, 368.0, 400.0, 400.0]))
    assert float(scores[0, 53, 41]) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="3548 rows"):
        decode(raw[:, 1:])


@pytest.mark.parametrize("seed", range(4))
def test_nms_matches_a_brute_force_reference(seed: int) -> None:
    boxes, scores, labels = random_boxes(seed, 120, classes=3)
    for threshold in (0.3, 0.45, 0.7):
        kept = batched_nms(boxes, scores, labels, threshold).tolist()
        expected = brute_force_nms(boxes.tolist(), scores.tolist(), labels.tolist(), threshold)
        assert kept == expected
        assert len(kept) < 120  # the clusters did suppress something
        plain = nms(boxes, scores, threshold).tolist()
        assert plain == brute_force_nms(boxes.tolist(), scores.tolist(), [0] * 120, threshold)


@pytest.mark.parametrize("seed", range(3))
def test_nms_agrees_with_opencv(seed: int) -> None:
    boxes, scores, labels = random_boxes(100 + seed, 150, classes=4)
    xywh = [[x0, y0, x1 - x0, y1 - y0] for x0, y0, x1, y1 in boxes.tolist()]
    expected = cv2.dnn.NMSBoxesBatched(xywh, scores.tolist(), labels.tolist(), 0.0, 0.45)
    kept = batched_nms(boxes, scores, labels, 0.45)
    assert sorted(kept.tolist()) == sorted(np.asarray(expected).reshape(-1).tolist())
    assert scores[kept].tolist() == sorted(scores[kept].tolist(), reverse=True)
    plain = cv2.dnn.NMSBoxes(xywh, scores.tolist(), 0.0, 0.45)
    assert sorted(nms(boxes, scores, 0.45).tolist()) == sorted(np.asarray(plain).reshape(-1))


def test_nms_of_nothing_and_of_classes_apart() -> None:
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).shape == (0,)
    same = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    scores = torch.tensor([0.9, 0.8])
    assert batched_nms(same, scores, torch.tensor([0, 0]), 0.5).tolist() == [0]
    assert batched_nms(same, scores, torch.tensor([0, 1]), 0.5).tolist() == [0, 1]


def test_class_names_are_parsed_with_close_matches_for_mistakes() -> None:
    assert len(COCO_CLASSES) == 80 and COCO_CLASSES[41] == "cup"
    assert class_ids("") is None and class_ids(" , ") is None
    assert class_ids("person, Car,traffic_light, cup") == (0, 2, 9, 41)
    with pytest.raises(KnobError, match="'peson' is not a COCO class; did you mean person"):
        class_ids("car,peson")
    with pytest.raises(KnobError, match="not a COCO class; the classes are: person, bicycle"):
        class_ids("zzzz")


def test_tiles_cover_the_frame_and_overlap() -> None:
    assert tile_layout(2160, 3840, 1) == [(0, 0, 3840, 2160)]
    tiles = tile_layout(2160, 3840, 3)
    assert len(tiles) == 9
    xs = sorted({(x0, x1) for x0, _, x1, _ in tiles})
    assert xs[0][0] == 0 and xs[-1][1] == 3840
    for (a0, a1), (b0, _) in itertools.pairwise(xs):
        assert b0 < a1 and (a1 - b0) >= 0.2 * (a1 - a0)  # neighbours overlap by about 1/4


def test_the_photos_give_their_objects(detector: YoloxDetector) -> None:
    found = detector.detect(photo("astronaut"), threshold=0.5)
    assert [COCO_CLASSES[c] for c in found.classes.tolist()] == ["person"]
    coffee = detector.detect(photo("coffee"), threshold=0.5)
    assert COCO_CLASSES[int(coffee.classes[0])] == "cup" and float(coffee.scores[0]) > 0.85
    only_cups = detector.detect(photo("coffee"), threshold=0.5, classes=(41,))
    assert only_cups.classes.tolist() == [41]
    cat = detector.detect(photo("chelsea"), threshold=0.5)
    assert [COCO_CLASSES[c] for c in cat.classes.tolist()] == ["cat"]
    assert float(cat.boxes.min()) >= 0 and float(cat.boxes[:, 2].max()) <= 451  # clipped
