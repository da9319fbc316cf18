"""The networks a training job learns: a U-Net for images, a small encoder for labels and numbers.

**Image to image** (:class:`UNet`): a fully convolutional U-Net. Each level holds two 3x3
convolutions with LeakyReLU; a 2x2 stride-2 convolution goes down a level and a 2x2 stride-2
transposed convolution comes back up, where the skip connection is concatenated. Channels
double per level. Frames must be multiples of ``2 ** depth`` (the engine pads them); the
receptive field radius is computed exactly from the layout (:func:`receptive_field_radius`).
With ``residual=True`` (only when input and output channels match) the network predicts the
difference to its input, which makes small corrections (grades, sharpening, grain removal)
quick to learn.

====== ============ ===== ======== ============= ============= ===========================
size   channels     depth size     receptive     U-Net         encoder parameters
                          multiple field radius  parameters    (3 in, 10 classes)
                                                 (3 in, 3 out)
====== ============ ===== ======== ============= ============= ===========================
small  16, 32 … 128 3     8        51 pixels     0.62 M        0.29 M (16 … 128 channels)
medium 24, 48 … 192 3     8        51 pixels     1.40 M        1.17 M (32 … 256 channels)
large  32, 64 … 512 4     16       107 pixels    10.0 M        2.64 M (48 … 384 channels)
====== ============ ===== ======== ============= ============= ===========================

On an otherwise idle 2-core CPU a training step of the small U-Net on four 64-pixel crops
(the default settings) takes about 35 ms (``benchmarks/training_quality.py``), the medium one
about twice that and the large one about five times (it is meant for a GPU). Weights start
with He initialisation for the LeakyReLU; a residual network's last layer starts at zero.

**Image to label / number** (:class:`ImageEncoder`): the frame is resized to a square of
``image_size`` pixels (bilinear, antialiased), goes through four stages of a stride-2 and a
plain 3x3 convolution, is averaged over space and a linear layer gives one score per class
(``outputs`` classes) or one number (``outputs=1``). Numbers are learnt normalised: the
network holds ``output_scale`` and ``output_offset`` and returns values in the data's units.

**Restoration networks** (for training with synthetic degradations,
:mod:`frameserve.training.degradations`; the built-in ``deblur`` and ``denoise`` models): kind
``"restoration"`` is :class:`~frameserve.networks.restoration.RestorationUNet` (a residual U-Net
on pixel-unshuffled frames), kind ``"dncnn"`` is :class:`~frameserve.networks.dncnn.DnCNN`
(the authors' layout). Both are residual by design (``residual`` is ignored). A DnCNN has as
many output channels as input channels; a restoration U-Net may take more inputs than it gives
outputs: the image, then channels that tell it something (``condition``, such as the path of a
motion blur). :func:`network_size_multiple` gives their size multiple.

=========== ====== ======================================== ========== ========= ==========
kind        size   layout                                   parameters size      GFLOP per
                                                            (RGB)      multiple  megapixel
=========== ====== ======================================== ========== ========= ==========
restoration small  width 16, 3 levels, 1 block per level    0.14 M     8         14
restoration medium width 24, 3 levels, 1 block per level    0.32 M     8         31
restoration large  width 16, 4 levels, 2 blocks per level   1.07 M     16        36
dncnn       small  depth 10, width 32                       0.08 M     1         151
dncnn       medium depth 17, width 64 (the authors' fixed)  0.56 M     1         1113
dncnn       large  depth 20, width 64 (the authors' blind)  0.67 M     1         1334
=========== ====== ======================================== ========== ========= ==========

Networks are rebuilt from a :class:`NetworkSpec` (plain data, stored in checkpoints)::

    spec = NetworkSpec(kind="unet", size="medium", in_channels=3, out_channels=3, residual=True)
    net = build_network(spec)
    out = net(torch.rand(1, 3, 64, 96))          # (1, 3, 64, 96)

Every network is scriptable with :func:`torch.jit.script`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from frameserve.errors import ConfigError
from frameserve.networks.dncnn import DnCNN
from frameserve.networks.restoration import RestorationUNet

__all__ = [
    "NETWORK_KINDS",
    "NETWORK_SIZES",
    "RESTORATION_KINDS",
    "ImageEncoder",
    "NetworkSpec",
    "UNet",
    "build_network",
    "network_size_multiple",
    "receptive_field_radius",
    "size_multiple",
]

logger = logging.getLogger(__name__)

#: Network kinds: ``"unet"`` (image to image), ``"encoder"`` (image to label or number), and
#: the restoration networks ``"restoration"`` and ``"dncnn"`` (image to image, residual).
NETWORK_KINDS = ("unet", "encoder", "restoration", "dncnn")
#: The restoration kinds: residual image-to-image networks with their own layouts (a trainer
#: trains them when given their spec; the settings' ``network`` size names the U-Net's).
RESTORATION_KINDS = ("restoration", "dncnn")


@dataclass(frozen=True)
class _UNetLayout:
    base_channels: int
    depth: int
    max_channels: int


@dataclass(frozen=True)
class _EncoderLayout:
    widths: tuple[int, int, int, int]


_UNET_LAYOUTS = {
    "small": _UNetLayout(base_channels=16, depth=3, max_channels=128),
    "medium": _UNetLayout(base_channels=24, depth=3, max_channels=192),
    "large": _UNetLayout(base_channels=32, depth=4, max_channels=512),
}
_ENCODER_LAYOUTS = {
    "small": _EncoderLayout(widths=(16, 32, 64, 128)),
    "medium": _EncoderLayout(widths=(32, 64, 128, 256)),
    "large": _EncoderLayout(widths=(48, 96, 192, 384)),
}

#: Restoration U-Net layouts: (width, levels, blocks per level).
_RESTORATION_LAYOUTS = {"small": (16, 3, 1), "medium": (24, 3, 1), "large": (16, 4, 2)}
#: DnCNN layouts: (depth, width).
_DNCNN_LAYOUTS = {"small": (10, 32), "medium": (17, 64), "large": (20, 64)}

#: Network sizes, smallest first.
NETWORK_SIZES = ("small", "medium", "large")

_CONVS_PER_LEVEL = 2
_SLOPE = 0.1


@dataclass(frozen=True, kw_only=True)
class NetworkSpec:
    """What a network is, as plain data: enough to rebuild it before loading its weights.

    Attributes:
        kind: ``"unet"`` (image to image) or ``"encoder"`` (image to label or number).
        size: ``"small"``, ``"medium"`` or ``"large"`` (see the module docstring).
        in_channels: channels of the input frames.
        out_channels: U-Net: channels of the output frames; encoder: classes, or 1 for a
            number.
        residual: U-Net only: predict the difference to the input (needs
            ``in_channels == out_channels``).
        image_size: encoder only: the square size frames are resized to.
    """

    kind: str
    size: str
    in_channels: int
    out_channels: int
    residual: bool = False
    image_size: int = 64

    def __post_init__(self) -> None:
        if self.kind not in NETWORK_KINDS:
            raise ConfigError(f"network kind {self.kind!r} is not one of {NETWORK_KINDS}")
        if self.size not in NETWORK_SIZES:
            raise ConfigError(
                f"network size {self.size!r} is not allowed; choose one of "
                f"{', '.join(repr(s) for s in NETWORK_SIZES)}"
            )
        for name in ("in_channels", "out_channels", "image_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"network {name} must be a whole number of at least 1: {value!r}")
        if self.kind == "dncnn" and self.in_channels != self.out_channels:
            raise ConfigError(
                f"a 'dncnn' network needs as many output channels as input channels; "
                f"got {self.in_channels} in, {self.out_channels} out"
            )
        if self.kind == "restoration" and self.in_channels < self.out_channels:
            raise ConfigError(
                f"a 'restoration' network needs at least as many input channels as output "
                f"channels (the image, then what it is told); got {self.in_channels} in, "
                f"{self.out_channels} out"
            )
        if self.residual and (self.kind != "unet" or self.in_channels != self.out_channels):
            raise ConfigError(
                f"a residual network needs as many output channels as input channels "
                f"(image to image); got {self.in_channels} in, {self.out_channels} out"
            )

    def to_dict(self) -> dict[str, Any]:
        """Return the spec as plain data (for checkpoints and JSON)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetworkSpec:
        """Return the spec written by :meth:`to_dict`."""
        return cls(**data)


def size_multiple(size: str) -> int:
    """Return the multiple a U-Net of ``size`` needs frame heights and widths to be."""
    return int(2 ** _unet_layout(size).depth)


def network_size_multiple(spec: NetworkSpec) -> int:
    """Return the multiple the network of ``spec`` needs frame heights and widths to be
    (1 for label and number encoders, which resize frames)."""
    if spec.kind == "unet":
        return size_multiple(spec.size)
    if spec.kind == "restoration":
        _, levels, _ = _RESTORATION_LAYOUTS[spec.size]
        return int(2 * 2 ** (levels - 1))
    return 1


def receptive_field_radius(size: str) -> int:
    """Return how far, in pixels, an output pixel of a U-Net of ``size`` sees, at most.

    Computed exactly from the layout: the widest span of input pixels any output pixel
    depends on, over every pixel phase modulo the size multiple.
    """
    layout = _unet_layout(size)
    radius = 0
    for phase in range(2**layout.depth):
        low, high = _decoder_span(0, phase, phase, layout.depth)
        radius = max(radius, phase - low, high - phase)
    return radius


def build_network(spec: NetworkSpec) -> nn.Module:
    """Return a freshly initialised network for ``spec`` (uses torch's global RNG)."""
    if spec.kind == "restoration":
        width, levels, blocks = _RESTORATION_LAYOUTS[spec.size]
        return RestorationUNet(
            spec.out_channels,
            width=width,
            levels=levels,
            blocks=blocks,
            condition=spec.in_channels - spec.out_channels,
        )
    if spec.kind == "dncnn":
        depth, width = _DNCNN_LAYOUTS[spec.size]
        return DnCNN(spec.in_channels, depth=depth, width=width)
    if spec.kind == "unet":
        layout = _unet_layout(spec.size)
        return UNet(
            spec.in_channels,
            spec.out_channels,
            base_channels=layout.base_channels,
            depth=layout.depth,
            max_channels=layout.max_channels,
            residual=spec.residual,
        )
    return ImageEncoder(
        spec.in_channels,
        spec.out_channels,
        widths=_ENCODER_LAYOUTS[spec.size].widths,
        image_size=spec.image_size,
    )


class _Block(nn.Module):
    """Two 3x3 convolutions, each followed by a LeakyReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.first = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.second = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.act = nn.LeakyReLU(_SLOPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.act(self.second(self.act(self.first(x))))
        return y


class UNet(nn.Module):
    """A fully convolutional U-Net from ``(N, in_channels, H, W)`` to ``(N, out_channels, H, W)``.

    ``H`` and ``W`` must be multiples of ``2 ** depth``. Values are not clipped: scene-linear
    frames go in and come out as they are.

    Args:
        in_channels / out_channels: channels of the input and output frames.
        base_channels: channels at full resolution; they double per level up to
            ``max_channels``.
        depth: how many times the frame is halved.
        residual: add the input to the output (the network learns the difference).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        base_channels: int = 24,
        depth: int = 3,
        max_channels: int = 256,
        residual: bool = False,
    ) -> None:
        super().__init__()
        if residual and in_channels != out_channels:
            raise ConfigError("a residual U-Net needs as many output channels as input channels")
        widths = [min(base_channels * 2**level, max_channels) for level in range(depth + 1)]
        self.residual = residual
        self.multiple = 2**depth
        self.first = _Block(in_channels, widths[0])
        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in range(1, depth + 1):
            self.downs.append(nn.Conv2d(widths[level - 1], widths[level], 2, stride=2))
            self.encoders.append(_Block(widths[level], widths[level]))
        for level in reversed(range(depth)):
            self.ups.append(nn.ConvTranspose2d(widths[level + 1], widths[level], 2, stride=2))
            self.decoders.append(_Block(2 * widths[level], widths[level]))
        self.head = nn.Conv2d(widths[0], out_channels, 1)
        self.act = nn.LeakyReLU(_SLOPE)
        for module in self.modules():  # He initialisation keeps activations alive in depth
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.kaiming_normal_(module.weight, a=_SLOPE, nonlinearity="leaky_relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if residual:  # start as the identity: the first steps refine instead of recovering it
            nn.init.zeros_(self.head.weight)
            if self.head.bias is not None:
                nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the output frames for ``x`` (``(N, C, H, W)``, H and W multiples)."""
        skips: list[torch.Tensor] = []
        y = self.first(x)
        for down, encoder in zip(self.downs, self.encoders):  # noqa: B905 (TorchScript)
            skips.append(y)
            y = encoder(self.act(down(y)))
        for up, decoder in zip(self.ups, self.decoders):  # noqa: B905 (TorchScript)
            skip = skips.pop()
            y = decoder(torch.cat([skip, self.act(up(y))], dim=1))
        out: torch.Tensor = self.head(y)
        if self.residual:
            out = out + x
        return out


class ImageEncoder(nn.Module):
    """Maps ``(N, C, H, W)`` frames of any size to ``(N, outputs)`` class scores or numbers.

    Frames are resized to ``image_size`` x ``image_size`` first (bilinear, antialiased), so
    training and inference see the same scale whatever the frame size.
    """

    if TYPE_CHECKING:  # buffers (a class annotation would confuse TorchScript)
        output_scale: torch.Tensor
        output_offset: torch.Tensor

    def __init__(
        self,
        in_channels: int,
        outputs: int,
        *,
        widths: tuple[int, ...] = (32, 64, 128, 256),
        image_size: int = 64,
    ) -> None:
        super().__init__()
        self.image_size = image_size
        stages: list[nn.Module] = []
        previous = in_channels
        for width in widths:
            stages += [
                nn.Conv2d(previous, width, 3, stride=2, padding=1),
                nn.LeakyReLU(_SLOPE),
                nn.Conv2d(width, width, 3, padding=1),
                nn.LeakyReLU(_SLOPE),
            ]
            previous = width
        self.features = nn.Sequential(*stages)
        self.head = nn.Linear(previous, outputs)
        self.register_buffer("output_scale", torch.ones(outputs))
        self.register_buffer("output_offset", torch.zeros(outputs))

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x`` resized to the network's square input size (itself when it fits)."""
        if x.shape[-2] == self.image_size and x.shape[-1] == self.image_size:
            return x
        return F.interpolate(
            x, size=[self.image_size, self.image_size], mode="bilinear", antialias=True
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``(N, outputs)`` scores (classes) or values in the data's units (numbers)."""
        features = self.features(self.resize(x)).mean(dim=(2, 3))
        scores: torch.Tensor = self.head(features)
        return scores * self.output_scale + self.output_offset


# -- layout helpers ----------------------------------------------------------------------------


def _unet_layout(size: str) -> _UNetLayout:
    if size not in _UNET_LAYOUTS:
        raise ConfigError(
            f"network size {size!r} is not allowed; choose one of "
            f"{', '.join(repr(s) for s in NETWORK_SIZES)}"
        )
    return _UNET_LAYOUTS[size]


def _decoder_span(level: int, low: int, high: int, depth: int) -> tuple[int, int]:
    """Input pixels (level 0) that decoder outputs ``low..high`` at ``level`` depend on."""
    if level == depth:  # the bottleneck: the deepest encoder block
        return _encoder_span(level, low, high)
    low, high = low - _CONVS_PER_LEVEL, high + _CONVS_PER_LEVEL  # the level's block
    skip = _encoder_span(level, low, high)
    below = _decoder_span(level + 1, low // 2, high // 2, depth)  # 2x2 transposed conv
    return min(skip[0], below[0]), max(skip[1], below[1])


def _encoder_span(level: int, low: int, high: int) -> tuple[int, int]:
    """Input pixels that the outputs ``low..high`` of the encoder block at ``level`` see."""
    low, high = low - _CONVS_PER_LEVEL, high + _CONVS_PER_LEVEL
    if level == 0:
        return low, high
    return _encoder_span(level - 1, 2 * low, 2 * high + 1)  # 2x2 stride-2 conv
