"""Padding frames to a size multiple, cutting them into overlapping tiles, stitching them back.

The runner uses this so that model code never sees a frame larger than the model's
``max_size`` or of a size its network cannot take (:class:`~frameserve.plugin.model.SpatialNeeds`)::

    grid = TileGrid(2160, 3840, multiple=8, overlap=16, max_tile=1024)
    padded = grid.pad(frames)                       # (N, C, 2160, 3840), mirrored edges
    canvas = torch.zeros(n, c, 2160, 3840)          # the frame's own size
    for tile in grid.tiles:
        grid.blend_into(canvas, tile, model(padded[(..., *tile.window)]))

**Padding.** A frame of H x W pixels is padded at the bottom and the right to Hp x Wp, the next
multiples of ``multiple``, by mirroring its edge rows and columns (``d c b | a b c d | c b a``,
the edge pixel not repeated; a frame narrower than the padding is mirrored back and forth).
Outputs are cropped back to H x W.

**Tiles.** Along an axis longer than ``max_tile`` the padded frame is cut into the fewest tiles
of at most ``max_tile`` pixels that cover it, and they are made as small as that number allows
(a multiple of ``multiple``), so little work goes into overlaps. Tiles start at multiples
of ``multiple`` (so a network that downsamples sees the same pixel phase as on the whole frame),
the first at 0 and the last ending at the padded edge, spread evenly in between. The grid is
the product of the row and column layouts.

**Upscaling models** (outputs ``s`` times the input's size) are tiled on the input grid: each
tile's output is ``s`` times the tile, and is blended in at ``s`` times the tile's position.

**Overlap and blending**, along one axis, where tile *i* meets tile *i + 1*::

    tile i     [ kept ............................ ramp 1→0 | dropped ]
    tile i+1                          [ dropped | ramp 0→1 ........... kept ]
                                                 |<-blend->|
                                       |<------ at least 2 x overlap + blend ------>|

An output pixel closer than ``overlap`` pixels to a tile edge inside the frame saw that edge
(the network's own zero padding) instead of the neighbouring pixels, so it is dropped: its
weight is 0. Past it, the weight ramps linearly up over ``blend`` pixels (``overlap`` unless
given) and the weights of every tile are divided by their sum at each pixel, so they add up to
exactly 1 everywhere; where one tile alone is kept its weight is exactly 1. Hence, when every
output pixel of the model depends only on input pixels at most ``overlap`` away (its receptive
field radius), the stitched frame equals the one computed in one piece, up to float rounding;
and for networks whose real reach is longer than declared, the ramp hides the seams.

Tiles are planned on the frame's size alone, so the same grid serves every output and every
frame of a batch. Outputs must have the size of the tile they come from (times the scale).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "MIN_TILE",
    "Tile",
    "TileGrid",
    "min_tile_size",
    "pad_reflect",
    "smaller_tile_size",
]

#: Tiles are never made smaller than this many pixels (after running out of memory).
MIN_TILE = 64


class Tile:
    """One tile of a :class:`TileGrid`: where it lies in the padded frame."""

    __slots__ = ("column", "height", "left", "row", "top", "width")

    def __init__(self, *, row: int, column: int, top: int, left: int, height: int, width: int):
        self.row = row
        self.column = column
        self.top = top
        self.left = left
        self.height = height
        self.width = width

    @property
    def window(self) -> tuple[slice, slice]:
        """Row and column slices of the padded frame this tile covers."""
        return slice(self.top, self.top + self.height), slice(self.left, self.left + self.width)

    def __repr__(self) -> str:
        return f"Tile({self.width}x{self.height} at x={self.left}, y={self.top})"


class _Axis:
    """The layout of tiles along one axis: start positions and normalised 1-D weights."""

    __slots__ = ("length", "padded", "size", "starts", "weights")

    def __init__(self, length: int, padded: int, size: int, starts: tuple[int, ...]) -> None:
        self.length = length
        self.padded = padded
        self.size = size
        self.starts = starts
        self.weights: tuple[torch.Tensor, ...] = ()


class TileGrid:
    """How a frame of ``height`` x ``width`` pixels is padded and cut into tiles.

    Args:
        height, width: the frame's size in pixels.
        multiple: padded sizes, tile sizes and tile positions are multiples of this.
        overlap: pixels each tile reaches past the part of it that is kept (the model's
            receptive field radius).
        max_tile: the largest tile height or width; ``None`` makes one tile of the padded frame.
        blend: width of the linear ramp where kept parts meet (``overlap`` unless given; made
            narrower when the tile is too small for it).

    Raises:
        ValueError: the frame needs tiles and ``max_tile`` leaves no room for them: a tile must
            be at least ``2 * overlap + multiple`` pixels (see :func:`min_tile_size`).

    Example::

        >>> grid = TileGrid(1080, 1920, multiple=8, overlap=4, max_tile=1024)
        >>> (grid.padded_height, grid.padded_width, grid.tile_height, grid.tile_width, len(grid))
        (1080, 1920, 552, 968, 4)
    """

    def __init__(
        self,
        height: int,
        width: int,
        *,
        multiple: int = 1,
        overlap: int = 0,
        max_tile: int | None = None,
        blend: int | None = None,
    ) -> None:
        if height < 1 or width < 1:
            raise ValueError(f"a frame must be at least 1x1 pixels, got {width}x{height}")
        if multiple < 1 or overlap < 0:
            raise ValueError(f"multiple must be 1 or more and overlap 0 or more, got {multiple}")
        self.height = height
        self.width = width
        self.multiple = multiple
        self.overlap = overlap
        padded = (_round_up(height, multiple), _round_up(width, multiple))
        tile = None if max_tile is None else max_tile // multiple * multiple
        if tile is not None and (padded[0] > tile or padded[1] > tile):
            smallest = 2 * overlap + multiple
            if tile < smallest:
                raise ValueError(
                    f"tiles of at most {max_tile} pixels leave no room: a tile must be at least "
                    f"2 x overlap ({overlap}) + size multiple ({multiple}) = {smallest} pixels"
                )
            wanted = overlap if blend is None else blend
            self.blend = max(0, min(wanted, tile - 2 * overlap - multiple))
        else:
            tile, self.blend = None, 0
        self._rows = _layout(height, padded[0], tile, multiple, overlap, self.blend)
        self._cols = _layout(width, padded[1], tile, multiple, overlap, self.blend)
        self.tiles = tuple(
            Tile(
                row=r,
                column=c,
                top=top,
                left=left,
                height=self._rows.size,
                width=self._cols.size,
            )
            for r, top in enumerate(self._rows.starts)
            for c, left in enumerate(self._cols.starts)
        )

    @property
    def padded_height(self) -> int:
        """Height of the padded frame (a multiple of ``multiple``)."""
        return self._rows.padded

    @property
    def padded_width(self) -> int:
        """Width of the padded frame (a multiple of ``multiple``)."""
        return self._cols.padded

    @property
    def tile_height(self) -> int:
        """Height of every tile."""
        return self._rows.size

    @property
    def tile_width(self) -> int:
        """Width of every tile."""
        return self._cols.size

    @property
    def is_whole(self) -> bool:
        """Whether the grid is one tile: the whole (padded) frame."""
        return len(self.tiles) == 1

    @property
    def is_padded(self) -> bool:
        """Whether the padded frame is larger than the frame."""
        return (self.padded_height, self.padded_width) != (self.height, self.width)

    def __len__(self) -> int:
        return len(self.tiles)

    def __repr__(self) -> str:
        return (
            f"TileGrid({self.width}x{self.height} padded to {self.padded_width}x"
            f"{self.padded_height}: {len(self.tiles)} tile(s) of {self.tile_width}x"
            f"{self.tile_height}, overlap {self.overlap}, blend {self.blend})"
        )

    def pad(self, frames: torch.Tensor) -> torch.Tensor:
        """Return ``frames`` (``(*, H, W)``) mirrored out to the padded size (no copy if none)."""
        return pad_reflect(frames, self.padded_height, self.padded_width)

    def weights(self, tile: Tile) -> torch.Tensor:
        """Return the float32 ``(tile height, tile width)`` blending weights of ``tile``."""
        return self._rows.weights[tile.row][:, None] * self._cols.weights[tile.column][None, :]

    def output_scale(self, height: int, width: int) -> int | None:
        """Return s if ``height`` x ``width`` is s times the padded frame's size, else None."""
        if height % self.padded_height or width % self.padded_width:
            return None
        scale = height // self.padded_height
        return scale if scale >= 1 and width == scale * self.padded_width else None

    def crop(self, output: torch.Tensor, scale: int = 1) -> torch.Tensor:
        """Return ``output`` (``(*, Hp*scale, Wp*scale)``) cut back to the frame's size x scale."""
        if not self.is_padded:
            return output
        return output[..., : self.height * scale, : self.width * scale]

    def blend_into(
        self, canvas: torch.Tensor, tile: Tile, output: torch.Tensor, scale: int = 1
    ) -> None:
        """Add ``output`` (``(*, tile height x scale, tile width x scale)``), weighted, in.

        ``canvas`` (``(*, H x scale, W x scale)``) has the frame's own size times ``scale`` (an
        upscaling model's outputs); what lies in the padding is left out. Each output pixel
        takes the weight of the input pixel it lies in, so the weights still add up to 1.
        """
        rows = min(tile.height, self.height - tile.top)
        cols = min(tile.width, self.width - tile.left)
        if rows <= 0 or cols <= 0:
            return
        weight = self.weights(tile)[:rows, :cols].to(canvas.device)
        if scale > 1:
            weight = weight.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
        top, left = tile.top * scale, tile.left * scale
        target = canvas[..., top : top + rows * scale, left : left + cols * scale]
        target.addcmul_(output[..., : rows * scale, : cols * scale], weight)


def min_tile_size(multiple: int, overlap: int) -> int:
    """Return the smallest tile worth making: :data:`MIN_TILE`, and room for the overlap."""
    return _round_up(max(MIN_TILE, 2 * overlap + multiple), multiple)


def smaller_tile_size(current: int, *, multiple: int, overlap: int) -> int | None:
    """Return about half of ``current``, never below :func:`min_tile_size`; None if no smaller."""
    proposal = max(current // 2 // multiple * multiple, min_tile_size(multiple, overlap))
    return proposal if proposal < current else None


def pad_reflect(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Return ``frames`` (``(*, H, W)``) padded at the bottom and right to ``height`` x ``width``.

    Rows and columns are mirrored about the edge pixel (``d c b | a b c d | c b a``); a frame
    smaller than its padding is mirrored back and forth; one pixel wide, it is repeated.
    Returns ``frames`` itself when no padding is needed.
    """
    rows, cols = frames.shape[-2:]
    if (rows, cols) == (height, width):
        return frames
    if height < rows or width < cols:
        raise ValueError(f"cannot pad {cols}x{rows} to the smaller {width}x{height}")
    extra_rows, extra_cols = height - rows, width - cols
    if extra_rows < rows and extra_cols < cols and frames.dim() in (3, 4):
        return F.pad(frames, (0, extra_cols, 0, extra_rows), mode="reflect")
    device = frames.device
    padded = frames.index_select(-1, _mirror_indices(cols, width, device))
    return padded.index_select(-2, _mirror_indices(rows, height, device))


def _mirror_indices(length: int, padded: int, device: torch.device) -> torch.Tensor:
    index = torch.arange(padded, device=device)
    if length == 1:
        return torch.zeros_like(index)
    period = 2 * (length - 1)
    index = index.remainder(period)
    return torch.where(index >= length, period - index, index)


def _round_up(value: int, multiple: int) -> int:
    return math.ceil(value / multiple) * multiple


def _layout(
    length: int, padded: int, tile: int | None, multiple: int, overlap: int, blend: int
) -> _Axis:
    if tile is None or padded <= tile:
        axis = _Axis(length, padded, padded, (0,))
        axis.weights = (torch.ones(padded),)
        return axis
    reach = 2 * overlap + blend  # how much of a tile is not new ground
    steps = math.ceil((padded - tile) / ((tile - reach) // multiple * multiple))
    # As few tiles as the limit allows, each as small as that number allows: less overlap work.
    size = _round_up(math.ceil((padded + steps * reach) / (steps + 1)), multiple)
    while (stride := (size - reach) // multiple * multiple) < multiple or math.ceil(
        (padded - size) / stride
    ) > steps:
        size += multiple  # rounding left a gap; ``tile`` itself always fits
    tile = size
    last = (padded - tile) // multiple  # the last start, in multiples
    # Spread evenly: start i is round(i * last / steps) multiples; no step exceeds the stride.
    starts = tuple(multiple * ((2 * i * last + steps) // (2 * steps)) for i in range(steps + 1))
    axis = _Axis(length, padded, tile, starts)
    axis.weights = _normalised_weights(padded, starts, tile, overlap, blend)
    return axis


def _normalised_weights(
    padded: int, starts: tuple[int, ...], size: int, overlap: int, blend: int
) -> tuple[torch.Tensor, ...]:
    ramp = torch.arange(1, blend + 1, dtype=torch.float64) / (blend + 1)
    last = len(starts) - 1
    raw = []
    for index in range(len(starts)):
        weight = torch.ones(size, dtype=torch.float64)
        if index > 0:  # a tile edge inside the frame on the left / top
            weight[:overlap] = 0.0
            weight[overlap : overlap + blend] = ramp
        if index < last:  # ... and on the right / bottom
            band = slice(size - overlap - blend, size - overlap)
            weight[band] = torch.minimum(weight[band], ramp.flip(0))
            weight[size - overlap :] = 0.0
        raw.append(weight)
    total = torch.zeros(padded, dtype=torch.float64)
    for start, weight in zip(starts, raw, strict=True):
        total[start : start + size] += weight
    if not bool((total > 0).all()):  # the layout guarantees it; never blend a hole
        raise AssertionError(f"tiles at {starts} of {size} leave pixels uncovered")
    return tuple(
        (weight / total[start : start + size]).to(torch.float32)
        for start, weight in zip(starts, raw, strict=True)
    )
