"""Body pose: BlazePose's person detector, then its 33-landmark network on each body crop.

How a frame becomes poses::

    plate (sRGB-encoded, any size) --clamp 0-1-->
        whole frame, shrunk and letterboxed to 224 x 224 --detector--> person candidates
        --weighted NMS--> up to max_people people, each with a hip centre and a body axis
    each person: rotated square crop (2.5 x the axis, body upright) --256 x 256-->
        landmark network (lite / full) --> 39 landmarks, pose score, 256 x 256 segmentation
        a second pass on the crop the landmarks themselves give (MediaPipe's tracking crop)
    people whose pose score is below presence are dropped

The networks run at their own sizes (224 and 256); a 4K frame is shrunk (area average) before
the detector and before each crop is sampled, and landmarks and the matte come back in the
full frame's pixels (the matte sampled at full resolution from the crop's logits).

**Output** (RGBA): ``output = "skeleton"`` draws each person's skeleton over the plate (joints
whose visibility is below ``min_visibility`` are left out), with what was drawn in alpha;
``output = "matte"`` gives the plate's RGB untouched and BlazePose's person matte in alpha.

**Objects**: one ``poses`` object, one record per person, best score first::

    {"score": 0.99, "box": [x0, y0, x1, y1], "box_nuke": [x0, y0, x1, y1],
     "nose": [x, y], "nose_nuke": [x, y], "nose_visibility": 0.99, ... (33 landmarks)}

Coordinates are pixels: image (origin top-left, y down) and Nuke (origin bottom-left, y up,
``y_nuke = height - y``). ``box`` bounds the landmarks.

**Over a shot** the landmarks are smoothed in time (:mod:`.smoothing`, a One-Euro filter,
knob ``smoothing``) when the ``frame`` knob holds the frame number: ``frameserve run`` sets it
to each frame's number; in Nuke, link it to the frame. The model remembers the raw landmarks
of the last frames it saw (per landmark network and frame size) and smooths each frame from
the ones before it. With ``frame`` negative (the default) every frame is a still.

**Colour**: sRGB-encoded values in (``colourspace_in = "srgb"``); values outside 0-1 are
clipped for the networks only, NaN counts as black; the plate's RGB is returned untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import nn

from frameserve.builtin_models.pose.drawing import draw_dot, draw_segment, line_width
from frameserve.builtin_models.pose.smoothing import PoseHistory
from frameserve.networks.blazepose import (
    LANDMARK_NAMES,
    LANDMARK_VARIANTS,
    SKELETON,
    PoseDetector,
    PoseLandmarker,
    PoseLandmarks,
    body_crop,
    paint_segmentation,
)
from frameserve.plugin.knobs import ChoiceKnob, FloatKnob, IntKnob, KnobValues
from frameserve.plugin.licences import WeightsLicence
from frameserve.plugin.model import ImageSpec, Model, Prediction, SpatialNeeds
from frameserve.plugin.results import FieldValue, Record, ResultObject

__all__ = ["Pose", "detect_poses", "draw_skeleton", "poses_object"]

log = logging.getLogger(__name__)

#: sRGB colours: the person's left side, right side, and the middle (face, hips).
LEFT_COLOUR = (0.0, 0.6, 1.0)
RIGHT_COLOUR = (1.0, 0.45, 0.0)
MIDDLE_COLOUR = (1.0, 1.0, 1.0)
#: Two people whose landmark boxes overlap more than this (IoU) are one person seen twice.
SAME_PERSON_IOU = 0.5


class Pose(Model):
    """Finds people and their 33 body landmarks (BlazePose); draws skeletons or a person matte.

    Good on people seen whole or from the waist up, standing, walking, dancing, facing any
    way; several people when they are apart. Weak on small figures (under about a tenth of
    the frame's height), people overlapping each other, lying down, upside down, or in heavy
    costume; landmarks of hidden joints are guesses (their visibility says so).
    """

    id = "pose"
    label = "Body Pose (BlazePose)"
    description = (
        "Body landmarks: MediaPipe's BlazePose GHUM (Google, Apache-2.0), rebuilt in PyTorch. "
        "A person detector, then 33 landmarks per person (face, shoulders, elbows, wrists, "
        "hands, hips, knees, ankles, feet) with visibility. Output: the skeleton drawn over "
        "the plate, or the person matte in alpha; objects: every landmark in image and Nuke "
        "coordinates."
    )
    inputs = (ImageSpec("image", channels=3),)
    outputs = (ImageSpec("image", channels=4),)
    colourspace_in = "srgb"
    colourspace_out = "srgb"
    spatial = SpatialNeeds(fully_convolutional=False)
    weights = (
        WeightsLicence(
            name="BlazePose GHUM (pose detector, landmark lite and full)",
            licence="Apache-2.0",
            source=(
                "github.com/google/mediapipe: pose_detection.tflite from the PyPI wheel "
                "mediapipe 0.10.21, pose_landmark_lite/full.tflite from the npm package "
                "@mediapipe/pose 0.5.1675469404; converted to PyTorch state dicts"
            ),
            commercial=True,
        ),
    )
    knobs = (
        ChoiceKnob(
            "output",
            default="skeleton",
            choices=("skeleton", "matte"),
            help=(
                "skeleton: each person's skeleton drawn over the plate, what was drawn in "
                "alpha. matte: the plate untouched, BlazePose's person matte in alpha."
            ),
        ),
        ChoiceKnob(
            "model",
            default="full",
            choices=LANDMARK_VARIANTS,
            help="Landmark network: full (more accurate) or lite (about 10% faster).",
        ),
        IntKnob(
            "max_people",
            default=4,
            min=1,
            max=20,
            help="The most people looked at (best detector scores first).",
        ),
        FloatKnob(
            "threshold",
            default=0.5,
            min=0.05,
            max=1.0,
            help=(
                "The lowest person-detector score (0-1) that is looked at. Lower (0.3) finds "
                "CG characters and distant people, and more things that are not people."
            ),
        ),
        FloatKnob(
            "presence",
            default=0.5,
            min=0.0,
            max=1.0,
            help=(
                "The lowest pose score (0-1) a person must get from the landmark network: "
                "it drops things the detector took for people."
            ),
        ),
        FloatKnob(
            "smoothing",
            default=0.5,
            min=0.0,
            max=1.0,
            help=(
                "Over a shot (frameserve run, or the frame knob linked to the frame number): "
                "how strongly landmarks are smoothed over time (a One-Euro filter: still "
                "joints lose their jitter, fast ones keep up). 0: off; 1: heavy."
            ),
        ),
        IntKnob(
            "frame",
            default=-1,
            help=(
                "This frame's number, for smoothing over a shot: frameserve run sets it; in "
                "Nuke, give it the expression 'frame'. Negative (the default): a still image, "
                "nothing smoothed."
            ),
        ),
        FloatKnob(
            "min_visibility",
            default=0.5,
            min=0.0,
            max=1.0,
            help="skeleton output: joints less visible than this (0-1) are not drawn.",
        ),
    )

    def setup(self, device: torch.device) -> None:
        self.history = PoseHistory()
        self.detector = PoseDetector(device)
        self.landmarkers = nn.ModuleDict(
            {variant: PoseLandmarker(variant, device) for variant in LANDMARK_VARIANTS}
        )

    def predict(self, frames: Mapping[str, torch.Tensor], knobs: KnobValues) -> Prediction:
        plate = frames["image"]
        _, height, width = plate.shape
        landmarker = self.landmarkers[str(knobs["model"])]
        assert isinstance(landmarker, PoseLandmarker)
        people = detect_poses(
            plate,
            self.detector,
            landmarker,
            threshold=float(knobs["threshold"]),
            presence=float(knobs["presence"]),
            max_people=int(knobs["max_people"]),
        )
        frame, strength = int(knobs["frame"]), float(knobs["smoothing"])
        if frame >= 0 and strength > 0 and people:
            shot = (str(knobs["model"]), height, width)
            people = self.history.smooth(shot, frame, people, strength)
        image = plate.new_empty((4, height, width))
        image[:3] = plate
        image[3] = 0.0
        if knobs["output"] == "matte":
            for person in people:
                paint_segmentation(image[3], person)
        else:
            draw_skeleton(image[:3], image[3], people, float(knobs["min_visibility"]))
        return Prediction(frames={"image": image}, objects=[poses_object(people, height)])


def detect_poses(
    plate: torch.Tensor,
    detector: PoseDetector,
    landmarker: PoseLandmarker,
    *,
    threshold: float,
    presence: float,
    max_people: int,
) -> list[PoseLandmarks]:
    """Return the people in a float32 ``(3, H, W)`` sRGB plate, best pose score first.

    Each detected person is looked at twice: on the detector's crop, then on the crop its
    landmarks give (hip centre and body axis, auxiliary landmarks 33 and 34), which fits the
    body better; the second answer is kept when its score is at least the first's.
    """
    clean = torch.nan_to_num(plate, nan=0.0).clamp(0.0, 1.0)
    found = detector(clean, threshold=threshold)
    people: list[PoseLandmarks] = []
    for keypoints in found.keypoints[:max_people].tolist():
        first = landmarker(clean, body_crop(tuple(keypoints[0]), tuple(keypoints[1])))
        if first.score < presence:
            continue
        hip, top = first.points[33, :2].tolist(), first.points[34, :2].tolist()
        second = landmarker(clean, body_crop((hip[0], hip[1]), (top[0], top[1])))
        person = second if second.score >= first.score else first
        if all(_box_iou(_box(person), _box(other)) < SAME_PERSON_IOU for other in people):
            people.append(person)
    people.sort(key=lambda person: -person.score)
    log.debug("pose: %d people in %dx%d", len(people), plate.shape[2], plate.shape[1])
    return people


def _box(person: PoseLandmarks) -> tuple[float, float, float, float]:
    points = person.points[:33, :2]
    x0, y0 = points.min(dim=0).values.tolist()
    x1, y1 = points.max(dim=0).values.tolist()
    return x0, y0, x1, y1


def _box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _side_colour(index: int) -> tuple[float, float, float]:
    name = LANDMARK_NAMES[index]
    if name.startswith("left") or name == "mouth_left":
        return LEFT_COLOUR
    if name.startswith("right") or name == "mouth_right":
        return RIGHT_COLOUR
    return MIDDLE_COLOUR


def draw_skeleton(
    rgb: torch.Tensor, cover: torch.Tensor, people: list[PoseLandmarks], min_visibility: float
) -> None:
    """Draw each person's bones and joints into ``(3, H, W)`` ``rgb``; mark ``cover``.

    The person's left side is blue, the right orange, the middle white; bones between two
    joints that are both at least ``min_visibility`` visible.
    """
    _, height, width = rgb.shape
    line = line_width(height, width)
    for person in people:
        points = person.points[:, :2].tolist()
        visible = (person.visibility >= min_visibility).tolist()
        for a, b in SKELETON:
            if visible[a] and visible[b]:
                colour = _side_colour(a) if _side_colour(a) == _side_colour(b) else MIDDLE_COLOUR
                draw_segment(rgb, cover, points[a], points[b], line, colour)
        for index in range(len(LANDMARK_NAMES)):
            if visible[index]:
                draw_dot(rgb, cover, points[index], line * 1.2, _side_colour(index))


def poses_object(people: list[PoseLandmarks], height: int) -> ResultObject:
    """Return the ``poses`` object: one record per person (see the module docstring)."""
    records: list[Record] = []
    for person in people:
        x0, y0, x1, y1 = _box(person)
        record: dict[str, FieldValue] = {
            "score": round(person.score, 4),
            "box": [_px(x0), _px(y0), _px(x1), _px(y1)],
            "box_nuke": [_px(x0), _px(height - y1), _px(x1), _px(height - y0)],
        }
        points = person.points[:33, :2].tolist()
        visibility = person.visibility.tolist()
        for index, name in enumerate(LANDMARK_NAMES):
            x, y = points[index]
            record[name] = [_px(x), _px(y)]
            record[f"{name}_nuke"] = [_px(x), _px(height - y)]
            record[f"{name}_visibility"] = round(visibility[index], 4)
        records.append(record)
    return ResultObject("poses", records)


def _px(value: float) -> float:
    return round(float(value), 2)
