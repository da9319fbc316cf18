"""Face detection: BlazeFace over the whole frame and overlapping windows; a face matte or boxes.

How a frame becomes faces::

    plate (sRGB-encoded, any size) --clamp 0-1--> pyramid of square windows
        level 0: the whole frame, shrunk into the detector's square (256 x 256 for "back")
        level k: windows 1/2^k of the frame's longer side, overlapping by half, each shrunk
                 to the detector's square; levels stop at ``smallest_face``
    each window --BlazeFace--> 896 candidates --score >= threshold--> kept
    all windows --weighted NMS (overlapping boxes blended)--> --nested ones dropped--> faces

BlazeFace finds faces from about 8% ("back" detector) or 15% ("front") of its square up to the
whole square, so one pass over a 4K frame finds only faces taller than about 300 pixels; the
windows of the further levels find the smaller ones (:mod:`frameserve.networks.detection`).
``smallest_face`` is a fraction of the frame's longer side, so a proxy-resolution render finds
the same faces as the full-resolution one.

**Output** (RGBA, like a keyer): ``output = "matte"`` gives the plate's RGB untouched and a
soft elliptical matte of every face in alpha (1 inside the face, for a grade, a blur or a
Premult); ``output = "boxes"`` draws each face's box (green) and its six landmarks (right eye
red, left eye blue, nose yellow, mouth magenta, right ear orange, left ear cyan; "right" is the
person's own) over the plate, with what was drawn in alpha so it can be merged over another
plate.

**Objects**: one ``faces`` object, one record per face, highest score first (no records when no
face is found)::

    {"score": 0.97,
     "box": [x0, y0, x1, y1],            # pixels; origin top-left, y down
     "box_nuke": [x0, y0, x1, y1],       # pixels; Nuke's origin bottom-left, y up
                                         # (left, bottom, right, top)
     "right_eye": [x, y], "right_eye_nuke": [x, y], ... for the six landmarks}

Coordinates are continuous pixel units: the top-left pixel spans 0..1 in x and y, so in Nuke's
convention ``y_nuke = height - y`` exactly.

**Colour**: the model works in sRGB-encoded values (``colourspace_in = "srgb"``). Values outside
0-1 (HDR highlights, negative lobes) and Inf are clipped to 0-1 for the detector only, before
the frame is shrunk; NaN counts as black. The plate's RGB is returned untouched (the runner
converts it back exactly) and alpha is copied through colour conversion as it is.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import torch
from torch import nn

from frameserve.networks.blazeface import KEYPOINT_NAMES, VARIANTS, BlazeFaceDetector
from frameserve.networks.detection import Detections, plan_scan, scan
from frameserve.plugin.knobs import ChoiceKnob, FloatKnob, KnobValues
from frameserve.plugin.licences import WeightsLicence
from frameserve.plugin.model import ImageSpec, Model, Prediction, SpatialNeeds
from frameserve.plugin.results import FieldValue, Record, ResultObject

__all__ = [
    "BOX_COLOUR",
    "LANDMARK_COLOURS",
    "FaceDetect",
    "draw_faces",
    "faces_object",
    "paint_matte",
]

log = logging.getLogger(__name__)

#: sRGB colour of the drawn boxes.
BOX_COLOUR = (0.0, 1.0, 0.0)
#: sRGB colour of each landmark's dot, in :data:`KEYPOINT_NAMES` order.
LANDMARK_COLOURS = (
    (1.0, 0.0, 0.0),  # right eye: red
    (0.0, 0.4, 1.0),  # left eye: blue
    (1.0, 1.0, 0.0),  # nose: yellow
    (1.0, 0.0, 1.0),  # mouth: magenta
    (1.0, 0.5, 0.0),  # right ear: orange
    (0.0, 1.0, 1.0),  # left ear: cyan
)
#: The matte's ellipse is the box's inscribed ellipse made this much taller: BlazeFace's box
#: runs from the hairline to just above the chin.
MATTE_HEIGHT = 1.1
#: Drawn lines are this many pixels wide per this many pixels of the frame's longer side.
LINE_WIDTH_PER = 800


class FaceDetect(Model):
    """Finds faces (BlazeFace); returns a face matte or drawn boxes, and each face's position.

    Good at faces turned towards the camera, from close-ups down to about 4% of the frame
    (smaller with ``smallest_face``), at any frame size. Weak on profiles, faces seen from
    above or below, heavily occluded or very dark faces; the "back" detector also finds some
    animal faces (a cat's), and the "front" detector sees faces in textures when it looks at
    windows of a frame.
    """

    id = "face_detect"
    weights = (
        WeightsLicence(
            name="BlazeFace (MediaPipe), front and back models",
            licence="Apache-2.0",
            source="github.com/hollance/BlazeFace-PyTorch (converted from MediaPipe)",
            commercial=True,
        ),
    )
    label = "Face Detect (BlazeFace)"
    description = (
        "Face detection: MediaPipe's BlazeFace (Google, Apache-2.0), run over the whole frame "
        "and overlapping windows so faces of any size are found in frames of any size. "
        "Output: the plate with a soft face matte in alpha, or with boxes and landmarks drawn; "
        "objects: box, six landmarks and score of each face."
    )
    inputs = (ImageSpec("image", channels=3),)
    outputs = (ImageSpec("image", channels=4),)
    colourspace_in = "srgb"
    colourspace_out = "srgb"  # RGB goes back to the request's colourspace, alpha is copied
    spatial = SpatialNeeds(fully_convolutional=False)  # the model cuts its own windows
    knobs = (
        ChoiceKnob(
            "output",
            default="matte",
            choices=("matte", "boxes"),
            help=(
                "matte: the plate untouched, a soft matte of the faces in alpha. boxes: the "
                "plate with each face's box and landmarks drawn, what was drawn in alpha."
            ),
        ),
        FloatKnob(
            "threshold",
            default=0.7,
            min=0.05,
            max=1.0,
            help=(
                "The lowest score (0-1) a face may have. Lower finds more faces (turned away, "
                "small, dark) and more things that are not faces."
            ),
        ),
        FloatKnob(
            "smallest_face",
            default=0.04,
            min=0.005,
            max=1.0,
            help=(
                "The smallest face to look for, as a fraction of the frame's longer side (0.04 "
                "is 77 pixels at 1920 wide). Smaller values search more, smaller windows: "
                "slower, and more false detections."
            ),
        ),
        ChoiceKnob(
            "detector",
            default="back",
            choices=("back", "front"),
            help=(
                "back: MediaPipe's rear-camera model, faces from 8% of its window up; the "
                "better choice in most shots. front: the selfie model, surest on big frontal "
                "faces, but it sees faces in textures when it looks at small windows (keep "
                "smallest_face at 0.15 or more with it)."
            ),
        ),
        FloatKnob(
            "softness",
            default=0.3,
            min=0.0,
            max=2.0,
            help=(
                "Width of the matte's soft edge, as a fraction of the face's radius "
                "(0 is a hard edge)."
            ),
        ),
    )

    def setup(self, device: torch.device) -> None:
        self.detectors = nn.ModuleDict(
            {variant: BlazeFaceDetector(variant, device) for variant in VARIANTS}
        )

    def predict(self, frames: Mapping[str, torch.Tensor], knobs: KnobValues) -> Prediction:
        plate = frames["image"]
        _, height, width = plate.shape
        faces = self.detect(
            plate,
            detector=str(knobs["detector"]),
            threshold=float(knobs["threshold"]),
            smallest_face=float(knobs["smallest_face"]),
        )
        image = plate.new_empty((4, height, width))  # one copy of the plate, into RGBA
        image[:3] = plate
        image[3] = 0.0
        if knobs["output"] == "matte":
            paint_matte(image[3], faces, softness=float(knobs["softness"]))
        else:
            draw_faces(image[:3], image[3], faces)
        return Prediction(frames={"image": image}, objects=[faces_object(faces, height)])

    def detect(
        self, plate: torch.Tensor, *, detector: str, threshold: float, smallest_face: float
    ) -> Detections:
        """Return the faces in a float32 ``(3, H, W)`` sRGB plate (any values), in its pixels.

        Args:
            plate: the frame; values outside 0-1, NaN and Inf are clamped for the detector.
            detector: ``"back"`` or ``"front"``.
            threshold: the lowest score kept, 0-1.
            smallest_face: the smallest face looked for, as a fraction of the longer side.
        """
        _, height, width = plate.shape
        net = self.detectors[detector]
        assert isinstance(net, BlazeFaceDetector)
        # Clip before shrinking, so that a highlight does not bleed into its neighbours. NaN
        # stays NaN here (one pass over the frame, not two) and becomes black at the
        # detector's resolution (to_network_range).
        clean = plate.clamp(0.0, 1.0)
        levels = plan_scan(
            height,
            width,
            input_size=net.input_size,
            smallest_fraction=net.smallest_fraction,
            smallest_object=smallest_face * max(height, width),
        )
        faces = scan(clean, net, levels, score_threshold=threshold)
        log.debug(
            "face_detect: %d face(s) in %dx%d, %d windows on %d levels (%s)",
            len(faces),
            width,
            height,
            sum(level.window_count for level in levels),
            len(levels),
            detector,
        )
        return faces


def paint_matte(matte: torch.Tensor, faces: Detections, *, softness: float) -> None:
    """Paint a soft ellipse over each face's box into a float32 ``(H, W)`` matte, in place.

    The ellipse is inscribed in the box, :data:`MATTE_HEIGHT` times taller; its edge ramps
    (smoothstep) from 1 at ``1 - softness / 2`` of its radius to 0 at ``1 + softness / 2``.
    Each pixel keeps the larger of its value and the faces' (start from zeros for a matte of
    the faces alone); values stay 0-1 if they were.
    """
    height, width = matte.shape
    device = matte.device
    reach = 1.0 + softness / 2
    for x0, y0, x1, y1 in faces.boxes.tolist():
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        rx, ry = (x1 - x0) / 2, (y1 - y0) / 2 * MATTE_HEIGHT
        if rx <= 0 or ry <= 0:
            continue
        left, right = _span(cx - rx * reach, cx + rx * reach, width)
        top, bottom = _span(cy - ry * reach, cy + ry * reach, height)
        if left >= right or top >= bottom:
            continue
        xs = (torch.arange(left, right, device=device) + 0.5 - cx) / rx
        ys = (torch.arange(top, bottom, device=device) + 0.5 - cy) / ry
        radius = torch.sqrt(ys[:, None] ** 2 + xs[None, :] ** 2)
        if softness > 0:
            ramp = ((reach - radius) / softness).clamp(0.0, 1.0)
            value = ramp * ramp * (3 - 2 * ramp)
        else:
            value = (radius <= 1.0).to(matte.dtype)
        region = matte[top:bottom, left:right]
        region.copy_(torch.maximum(region, value.to(matte.dtype)))


def _span(start: float, end: float, length: int) -> tuple[int, int]:
    """Whole pixels ``start..end`` covers, clipped to ``0..length``."""
    return max(0, math.floor(start)), min(length, math.ceil(end))


def draw_faces(rgb: torch.Tensor, cover: torch.Tensor, faces: Detections) -> None:
    """Draw each face's box and landmarks into a float32 ``(3, H, W)`` image, in place.

    Lines are ``max(1, longer side / 800)`` pixels wide; landmarks are dots of twice that
    radius (at least 2 pixels). Colours are :data:`BOX_COLOUR` and :data:`LANDMARK_COLOURS`.
    ``cover``, float32 ``(H, W)``, is set to 1 wherever something was drawn.
    """
    _, height, width = rgb.shape
    line = max(1, round(max(height, width) / LINE_WIDTH_PER))
    dot = max(2, 2 * line)
    box_colour = torch.tensor(BOX_COLOUR, dtype=rgb.dtype, device=rgb.device)
    for box, points in zip(faces.boxes.tolist(), faces.keypoints.tolist(), strict=True):
        x0, y0, x1, y1 = (round(v) for v in box)
        half = line // 2
        for top, bottom, left, right in (
            (y0 - half, y0 - half + line, x0 - half, x1 - half + line),  # top edge
            (y1 - half, y1 - half + line, x0 - half, x1 - half + line),  # bottom edge
            (y0 - half, y1 - half + line, x0 - half, x0 - half + line),  # left edge
            (y0 - half, y1 - half + line, x1 - half, x1 - half + line),  # right edge
        ):
            t, b = max(0, top), min(height, bottom)
            lft, rgt = max(0, left), min(width, right)
            if t < b and lft < rgt:
                rgb[:, t:b, lft:rgt] = box_colour[:, None, None]
                cover[t:b, lft:rgt] = 1.0
        for (x, y), colour in zip(points, LANDMARK_COLOURS, strict=True):
            _draw_dot(rgb, cover, x, y, dot, colour)


def _draw_dot(
    rgb: torch.Tensor,
    cover: torch.Tensor,
    x: float,
    y: float,
    radius: int,
    colour: tuple[float, float, float],
) -> None:
    """Paint a filled disc of ``radius`` pixels centred on ``(x, y)`` into ``rgb`` and ``cover``."""
    _, height, width = rgb.shape
    left, right = _span(x - radius, x + radius, width)
    top, bottom = _span(y - radius, y + radius, height)
    if left >= right or top >= bottom:
        return
    xs = torch.arange(left, right, device=rgb.device) + 0.5 - x
    ys = torch.arange(top, bottom, device=rgb.device) + 0.5 - y
    inside = ys[:, None] ** 2 + xs[None, :] ** 2 <= radius**2
    paint = torch.tensor(colour, dtype=rgb.dtype, device=rgb.device)[:, None, None]
    region = rgb[:, top:bottom, left:right]
    region.copy_(torch.where(inside, paint, region))
    cover[top:bottom, left:right][inside] = 1.0


def faces_object(faces: Detections, height: int) -> ResultObject:
    """Return the ``faces`` object: one record per face (see the module docstring).

    Box and landmark coordinates are given twice: image pixels (origin top-left, y down) and
    Nuke's (origin bottom-left, y up, ``y_nuke = height - y``), rounded to 0.01 pixel.
    """
    records: list[Record] = []
    for box, points, score in zip(
        faces.boxes.tolist(), faces.keypoints.tolist(), faces.scores.tolist(), strict=True
    ):
        x0, y0, x1, y1 = box
        record: dict[str, FieldValue] = {
            "score": round(score, 4),
            "box": [_px(x0), _px(y0), _px(x1), _px(y1)],
            "box_nuke": [_px(x0), _px(height - y1), _px(x1), _px(height - y0)],
        }
        for name, (x, y) in zip(KEYPOINT_NAMES, points, strict=True):
            record[name] = [_px(x), _px(y)]
            record[f"{name}_nuke"] = [_px(x), _px(height - y)]
        records.append(record)
    return ResultObject("faces", records)


def _px(value: float) -> float:
    return round(float(value), 2)
