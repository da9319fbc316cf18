"""U²-Netp (salient-object matte) in plain PyTorch, loaded from the published ONNX file.

U²-Net (Qin et al., "U²-Net: Going Deeper with Nested U-Structure for Salient Object
Detection", Pattern Recognition 2020; weights Apache-2.0) is a U-Net whose stages are small
U-Nets themselves, "residual U-blocks" (RSU). U²-Netp is its small version (1.13 M
parameters): six encoder stages and five decoder stages of RSU blocks with 16 channels inside
and 64 between them::

    image (N, 3, 320, 320) --RSU7-> pool --RSU6-> pool --RSU5-> pool --RSU4-> pool --RSU4F->
        pool --RSU4F--> (the bottom, 10 x 10)
    decoder: upsample, concatenate the encoder stage of that size, RSU (4F, 4, 5, 6, 7)
    side outputs: a 3x3 convolution to one channel at each decoder stage and the bottom,
        upsampled to full size; fused by a 1x1 convolution; sigmoid -> matte in 0-1

An RSU-L block: a 3x3 convolution into ``out`` channels (kept as the residual), an encoder of
``L - 1`` convolutions with 2x2 max-pools (ceil mode) between them and a dilated (2)
convolution at the bottom, a decoder that upsamples bilinearly and concatenates the encoder
level, and the residual added at the end. RSU4F keeps the resolution and dilates instead
(1, 2, 4, 8). Every convolution is followed by a ReLU (the side and fusing ones excepted).

**How it runs.** :class:`OnnxU2NetP` runs the ONNX file with onnxruntime: on a 2-core CPU it
takes about 230 ms of CPU time per 320 x 320 frame where this PyTorch network takes about 430
(one thread each, measured together), and under load PyTorch's threads suffer more. On a GPU
(onnxruntime here has no CUDA provider) :class:`U2NetP` runs on the device instead, so frames
stay there. Both take the same normalised input (:func:`normalise_for_u2net`).

**Weights.** The shipped file is the ONNX export rembg uses (``u2netp.onnx``, opset 11), in
which each batch norm is folded into the convolution before it. :func:`load_u2netp` reads its
119 convolutions in graph order (the order the network runs them, which
:meth:`U2NetP.convolutions` lists) into a state dict and loads it with ``strict=True``; the
tests compare this network with onnxruntime running the same file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from frameserve.errors import FrameError, ModelSetupError
from frameserve.networks.state_dicts import load_strict

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INPUT_SIZE",
    "RSU",
    "OnnxU2NetP",
    "RSUDilated",
    "U2NetP",
    "load_u2netp",
    "normalise_for_u2net",
    "read_onnx_convolutions",
]

#: The square size the network was trained at (and the ONNX file's fixed input size).
INPUT_SIZE = 320
#: The ImageNet statistics the network's input is normalised with (RGB, values 0-1).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: An image darker than this everywhere is not scaled up to a maximum of 1 (it is black).
_DARKEST_MAXIMUM = 1e-3
#: Channels between the stages and inside the RSU blocks.
_OUTER, _INNER = 64, 16


class ConvReLU(nn.Module):
    """A 3x3 convolution (batch norm folded into it) with ``dilation``, then a ReLU."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=True
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x))


def _upsample_like(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``x`` resized bilinearly (half-pixel centres) to ``like``'s height and width."""
    if x.shape[2:] == like.shape[2:]:
        return x
    return F.interpolate(x, size=like.shape[2:], mode="bilinear", align_corners=False)


def _pool(x: torch.Tensor) -> torch.Tensor:
    """2x2 max-pool with stride 2, rounding odd sizes up (``ceil_mode``)."""
    return F.max_pool2d(x, 2, 2, ceil_mode=True)


class RSU(nn.Module):
    """A residual U-block of ``depth`` levels (RSU7 ... RSU4), pooling between levels."""

    def __init__(self, depth: int, in_channels: int, mid: int, out_channels: int) -> None:
        super().__init__()
        self.conv_in = ConvReLU(in_channels, out_channels)
        self.encoder = nn.ModuleList(
            [ConvReLU(out_channels, mid)] + [ConvReLU(mid, mid) for _ in range(depth - 2)]
        )
        self.bottom = ConvReLU(mid, mid, dilation=2)
        self.decoder = nn.ModuleList(
            [ConvReLU(2 * mid, mid) for _ in range(depth - 2)] + [ConvReLU(2 * mid, out_channels)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual: torch.Tensor = self.conv_in(x)
        levels = []
        h = residual
        for index, conv in enumerate(self.encoder):
            h = conv(h if index == 0 else _pool(h))
            levels.append(h)
        h = self.bottom(h)
        for conv, level in zip(self.decoder, reversed(levels), strict=True):
            h = conv(torch.cat([_upsample_like(h, level), level], dim=1))
        out: torch.Tensor = h + residual
        return out

    def convolutions(self) -> list[nn.Conv2d]:
        """The block's convolutions in the order it runs them."""
        blocks = [self.conv_in, *self.encoder, self.bottom, *self.decoder]
        return [block.conv for block in blocks]


class RSUDilated(nn.Module):
    """RSU4F: a residual U-block at one resolution, dilations 1, 2, 4 and 8 instead of pools."""

    def __init__(self, in_channels: int, mid: int, out_channels: int) -> None:
        super().__init__()
        self.conv_in = ConvReLU(in_channels, out_channels)
        self.encoder = nn.ModuleList(
            [ConvReLU(out_channels, mid), ConvReLU(mid, mid, 2), ConvReLU(mid, mid, 4)]
        )
        self.bottom = ConvReLU(mid, mid, dilation=8)
        self.decoder = nn.ModuleList(
            [ConvReLU(2 * mid, mid, 4), ConvReLU(2 * mid, mid, 2), ConvReLU(2 * mid, out_channels)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual: torch.Tensor = self.conv_in(x)
        levels = []
        h = residual
        for conv in self.encoder:
            h = conv(h)
            levels.append(h)
        h = self.bottom(h)
        for conv, level in zip(self.decoder, reversed(levels), strict=True):
            h = conv(torch.cat([h, level], dim=1))
        out: torch.Tensor = h + residual
        return out

    def convolutions(self) -> list[nn.Conv2d]:
        """The block's convolutions in the order it runs them."""
        blocks = [self.conv_in, *self.encoder, self.bottom, *self.decoder]
        return [block.conv for block in blocks]


class U2NetP(nn.Module):
    """U²-Netp: ``(N, 3, H, W)`` normalised RGB -> ``(N, 1, H, W)`` salient-object matte, 0-1.

    Trained at 320 x 320; other sizes run (any size, odd ones included) but were not trained.
    The input is RGB scaled to 0-1 by the image's maximum, minus the ImageNet mean
    (0.485, 0.456, 0.406), over its standard deviation (0.229, 0.224, 0.225).
    """

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.ModuleList(
            [
                RSU(7, 3, _INNER, _OUTER),
                RSU(6, _OUTER, _INNER, _OUTER),
                RSU(5, _OUTER, _INNER, _OUTER),
                RSU(4, _OUTER, _INNER, _OUTER),
                RSUDilated(_OUTER, _INNER, _OUTER),
                RSUDilated(_OUTER, _INNER, _OUTER),
            ]
        )
        # Decoder stages from the bottom up: 5d (RSU4F), 4d, 3d, 2d, 1d.
        self.decoder = nn.ModuleList(
            [
                RSUDilated(2 * _OUTER, _INNER, _OUTER),
                RSU(4, 2 * _OUTER, _INNER, _OUTER),
                RSU(5, 2 * _OUTER, _INNER, _OUTER),
                RSU(6, 2 * _OUTER, _INNER, _OUTER),
                RSU(7, 2 * _OUTER, _INNER, _OUTER),
            ]
        )
        # Side outputs of stage 1d, 2d, 3d, 4d, 5d and the bottom (6), then the fusing 1x1.
        self.sides = nn.ModuleList([nn.Conv2d(_OUTER, 1, 3, padding=1) for _ in range(6)])
        self.fuse = nn.Conv2d(6, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stages = []
        h = x
        for index, block in enumerate(self.encoder):
            h = block(h if index == 0 else _pool(h))
            stages.append(h)
        decoded = [h]  # the bottom stage, then 5d, 4d, ..., 1d
        for block, skip in zip(self.decoder, reversed(stages[:-1]), strict=True):
            h = block(torch.cat([_upsample_like(h, skip), skip], dim=1))
            decoded.append(h)
        top = decoded[-1]
        sides = [
            _upsample_like(side(stage), top)
            for side, stage in zip(self.sides, reversed(decoded), strict=True)
        ]
        return torch.sigmoid(self.fuse(torch.cat(sides, dim=1)))

    def convolutions(self) -> list[nn.Conv2d]:
        """Every convolution in the order the network runs them (the ONNX graph's order)."""
        convs: list[nn.Conv2d] = []
        for block in [*self.encoder, *self.decoder]:
            assert isinstance(block, RSU | RSUDilated)
            convs.extend(block.convolutions())
        convs.extend(side for side in self.sides if isinstance(side, nn.Conv2d))
        convs.append(self.fuse)
        return convs


def read_onnx_convolutions(path: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Return the ``(weight, bias)`` of every ``Conv`` node of an ONNX file, in graph order.

    Raises:
        ModelSetupError: the file cannot be read as ONNX, or a convolution lacks a constant
            weight or bias.
    """
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, OSError and others
        raise ModelSetupError(f"cannot read U²-Netp weights {str(path)!r}: {exc}") from exc
    constants = {tensor.name: tensor for tensor in model.graph.initializer}
    pairs = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        if len(node.input) != 3 or not all(name in constants for name in node.input[1:]):
            raise ModelSetupError(
                f"U²-Netp weights {str(path)!r}: convolution {node.name or node.output[0]!r} "
                "has no constant weight and bias"
            )
        weight, bias = (
            torch.from_numpy(numpy_helper.to_array(constants[name]).copy())
            for name in node.input[1:]
        )
        pairs.append((weight, bias))
    return pairs


def load_u2netp(path: Path, device: torch.device | str = "cpu") -> U2NetP:
    """Build :class:`U2NetP` with the weights of the ONNX file ``path`` (eval mode, frozen).

    Raises:
        ModelSetupError: the file cannot be read, or its convolutions do not fit the network
            (count, names or shapes).
    """
    net = U2NetP()
    names = {id(module): name for name, module in net.named_modules()}
    convs = net.convolutions()
    pairs = read_onnx_convolutions(path)
    if len(pairs) != len(convs):
        raise ModelSetupError(
            f"U²-Netp weights {str(path)!r} hold {len(pairs)} convolutions; the network has "
            f"{len(convs)}"
        )
    state = {}
    for conv, (weight, bias) in zip(convs, pairs, strict=True):
        state[f"{names[id(conv)]}.weight"] = weight
        state[f"{names[id(conv)]}.bias"] = bias
    return load_strict(net, state, path, "U²-Netp", device)


def normalise_for_u2net(rgb: torch.Tensor) -> torch.Tensor:
    """Return ``(N, 3, h, w)`` RGB in 0-1 as U²-Net was trained: over its maximum, normalised.

    Each image is divided by its own largest value (the authors' ``image / max(image)``; a
    nearly black image is left as it is), then the ImageNet mean is subtracted and the result
    divided by the ImageNet standard deviation, per channel.
    """
    peak = rgb.amax(dim=(1, 2, 3), keepdim=True).clamp(min=_DARKEST_MAXIMUM)
    mean = torch.tensor(IMAGENET_MEAN, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    return (rgb / peak - mean) / std


class OnnxU2NetP:
    """U²-Netp's ONNX file in an onnxruntime session on the CPU; called like :class:`U2NetP`.

    The file takes exactly ``(1, 3, 320, 320)``; a batch is run one image at a time. The fused
    matte (the graph's first output) is returned on the input's device.
    """

    def __init__(self, path: Path) -> None:
        import onnxruntime  # type: ignore[import-untyped]

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: its warnings go to stderr, not logging
        try:
            self._session = onnxruntime.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelSetupError(f"cannot load U²-Netp from {str(path)!r}: {exc}") from exc
        inputs = self._session.get_inputs()
        expected = [1, 3, INPUT_SIZE, INPUT_SIZE]
        if len(inputs) != 1 or list(inputs[0].shape) != expected:
            shapes = [list(graph_input.shape) for graph_input in inputs]
            raise ModelSetupError(
                f"{str(path)!r}: U²-Netp takes one input of {expected}; this graph takes {shapes}"
            )
        self._input = inputs[0].name
        self._output = self._session.get_outputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Run ``(N, 3, 320, 320)`` normalised RGB; return the ``(N, 1, 320, 320)`` matte."""
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, INPUT_SIZE, INPUT_SIZE):
            raise FrameError(
                f"U²-Netp (ONNX) takes (N, 3, {INPUT_SIZE}, {INPUT_SIZE}); got {tuple(x.shape)}"
            )
        array: np.ndarray[Any, Any] = x.detach().to("cpu", torch.float32).contiguous().numpy()
        outputs = [
            self._session.run([self._output], {self._input: array[i : i + 1]})[0]
            for i in range(array.shape[0])
        ]
        return torch.from_numpy(np.concatenate(outputs)).to(x.device)
