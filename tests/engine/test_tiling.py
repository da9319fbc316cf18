"""Tests for frameserve.engine.tiling, and for the runner's padding and tiling of real frames."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F

from frameserve import ImageSpec, Model, SpatialNeeds
from frameserve.catalogue.registry import ModelRegistry
from frameserve.engine.request import build_request
from frameserve.engine.runner import Runner
from frameserve.engine.tiling import (
    MIN_TILE,
    TileGrid,
    min_tile_size,
    pad_reflect,
    smaller_tile_size,
)
from frameserve.errors import ConfigError, FrameError, ModelRunError
from tests.support.paths import TEST_MODELS
from tests.support.registries import registry_of

#: The fully convolutional test model (3 conv 3x3: receptive field radius 3), max_size 256.
ConvNet: type[Model] = (
    ModelRegistry([TEST_MODELS / "convnet"], builtins=False).get("convnet").model_class
)  # type: ignore[assignment]
RADIUS = 3


def photo(height: int, width: int) -> torch.Tensor:
    """A (3, height, width) float32 crop of scikit-image's astronaut photo, values 0-1."""
    image = skimage.data.astronaut()[:height, :width].astype(np.float32) / 255.0
    return torch.from_numpy(image).permute(2, 0, 1).contiguous()


def conv_net() -> torch.nn.Module:
    """The test model's network (seeded weights), for reference computations."""
    model = ConvNet()
    model.setup(torch.device("cpu"))
    return model.net  # type: ignore[attr-defined, no-any-return]


def stitch(grid: TileGrid, net: torch.nn.Module, frames: torch.Tensor) -> torch.Tensor:
    """Run ``net`` tile by tile over ``frames`` (N, C, H, W) and blend the tiles together."""
    padded = grid.pad(frames)
    canvas = torch.zeros(frames.shape[0], 3, grid.height, grid.width)
    with torch.inference_mode():
        for tile in grid.tiles:
            grid.blend_into(canvas, tile, net(padded[(..., *tile.window)]))
    return canvas


# -- the grid ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("height", "width", "multiple", "overlap", "max_tile"),
    [
        (1080, 1920, 8, 16, 512),
        (157, 203, 8, 3, 64),
        (333, 100, 1, 3, 32),
        (5, 300, 8, 0, 16),
        (123, 77, 4, 5, 41),
        (64, 64, 1, 3, 16),
    ],
)
def test_tiles_cover_the_padded_frame_within_the_limits(
    height: int, width: int, multiple: int, overlap: int, max_tile: int
) -> None:
    grid = TileGrid(height, width, multiple=multiple, overlap=overlap, max_tile=max_tile)
    for padded, size in ((grid.padded_height, height), (grid.padded_width, width)):
        assert padded % multiple == 0 and 0 <= padded - size < multiple
    assert len(grid) > 1
    for tile in grid.tiles:
        assert tile.height <= max_tile and tile.width <= max_tile
        assert tile.height % multiple == 0 and tile.width % multiple == 0
        assert tile.top % multiple == 0 and tile.left % multiple == 0
        assert tile.top + tile.height <= grid.padded_height
        assert tile.left + tile.width <= grid.padded_width
    assert max(t.top + t.height for t in grid.tiles) == grid.padded_height
    assert max(t.left + t.width for t in grid.tiles) == grid.padded_width
    # the weights of all tiles add up to one at every pixel of the frame
    canvas = torch.zeros(1, height, width)
    for tile in grid.tiles:
        grid.blend_into(canvas, tile, torch.ones(1, tile.height, tile.width))
    torch.testing.assert_close(canvas, torch.ones_like(canvas), atol=1e-6, rtol=0)


def test_a_frame_within_the_limit_is_one_tile_and_pads_only_when_needed() -> None:
    grid = TileGrid(1080, 1920, multiple=8, overlap=4, max_tile=2048)
    assert grid.is_whole and not grid.is_padded and len(grid) == 1
    assert (grid.tile_height, grid.tile_width) == (1080, 1920)
    frames = torch.rand(1, 3, 1080, 1920)
    assert grid.pad(frames) is frames
    odd = TileGrid(1081, 1919, multiple=8)
    assert odd.is_whole and odd.is_padded
    assert (odd.padded_height, odd.padded_width) == (1088, 1920)


def test_the_docstring_example_holds() -> None:
    grid = TileGrid(1080, 1920, multiple=8, overlap=4, max_tile=1024)
    assert (grid.padded_height, grid.padded_width, grid.tile_height, grid.tile_width) == (
        1080,
        1920,
        552,
        968,
    )
    assert len(grid) == 4
    assert [t.top for t in grid.tiles] == [0, 0, 528, 528]
    assert [t.left for t in grid.tiles] == [0, 952, 0, 952]


def test_tiles_are_as_few_and_as_small_as_the_limit_allows() -> None:
    # 1100 pixels in tiles of at most 512, 8 + 8 + 8 of each not new: 3 tiles, not of 512
    grid = TileGrid(16, 1100, overlap=8, max_tile=512)
    assert len(grid) == 3 and grid.tile_width == 383
    assert 3 * grid.tile_width - 2 * 24 >= 1100


def test_weights_drop_the_overlap_and_ramp_linearly_across_the_blend_band() -> None:
    # 96 = 40 + 2 x 28: three tiles at 0, 28 and 56, kept parts meeting over 4 pixels
    grid = TileGrid(8, 96, overlap=4, max_tile=40)
    assert [t.left for t in grid.tiles] == [0, 28, 56] and grid.blend == 4
    first, middle, last = (grid.weights(t)[0] for t in grid.tiles)
    assert torch.equal(first[:32], torch.ones(32))
    torch.testing.assert_close(first[32:36], torch.tensor([0.8, 0.6, 0.4, 0.2]))
    assert torch.equal(first[36:], torch.zeros(4))
    assert torch.equal(middle[:4], torch.zeros(4))
    torch.testing.assert_close(middle[4:8], torch.tensor([0.2, 0.4, 0.6, 0.8]))
    assert torch.equal(middle[8:32], torch.ones(24))
    assert torch.equal(last[:4], torch.zeros(4)) and torch.equal(last[8:], torch.ones(32))


@pytest.mark.parametrize(
    ("height", "width", "multiple", "max_tile"),
    [(157, 203, 8, 64), (211, 97, 1, 48), (301, 437, 4, 100)],
)
def test_a_tiled_conv_net_equals_the_whole_frame_on_a_photo(
    height: int, width: int, multiple: int, max_tile: int
) -> None:
    net = conv_net()
    frames = photo(height, width)[None]
    grid = TileGrid(height, width, multiple=multiple, overlap=RADIUS, max_tile=max_tile)
    assert len(grid) >= 4
    with torch.inference_mode():
        whole = net(grid.pad(frames))[..., :height, :width]
    tiled = stitch(grid, net, frames)
    assert float((tiled - whole).abs().max()) < 1e-4


def test_an_overlap_below_the_receptive_field_shows_seams() -> None:
    """The test above can fail: with too little overlap, tiles differ from the whole frame."""
    net = conv_net()
    frames = photo(157, 203)[None]
    grid = TileGrid(157, 203, multiple=8, overlap=1, max_tile=64)
    with torch.inference_mode():
        whole = net(grid.pad(frames))[..., :157, :203]
    assert float((stitch(grid, net, frames) - whole).abs().max()) > 1e-3


def test_pad_reflect_mirrors_about_the_edge_pixel() -> None:
    frames = torch.arange(2 * 5 * 7, dtype=torch.float32).reshape(2, 5, 7)
    expected = np.pad(frames.numpy(), ((0, 0), (0, 3), (0, 4)), mode="reflect")
    assert np.array_equal(pad_reflect(frames, 8, 11).numpy(), expected)
    # padding wider than the frame mirrors back and forth; one pixel repeats
    narrow = torch.tensor([[[1.0, 2.0, 3.0]]])
    assert pad_reflect(narrow, 1, 9)[0, 0].tolist() == [1, 2, 3, 2, 1, 2, 3, 2, 1]
    single = torch.tensor([[[5.0]]])
    assert pad_reflect(single, 2, 3).tolist() == [[[5.0, 5.0, 5.0], [5.0, 5.0, 5.0]]]
    assert pad_reflect(frames, 5, 7) is frames


def test_smaller_tiles_halve_down_to_a_floor() -> None:
    sizes = [1024]
    while (smaller := smaller_tile_size(sizes[-1], multiple=8, overlap=3)) is not None:
        sizes.append(smaller)
    assert sizes == [1024, 512, 256, 128, MIN_TILE]
    assert smaller_tile_size(100, multiple=8, overlap=3) == 64
    assert min_tile_size(8, 40) == 88  # room for 2 x 40 of overlap and one step of 8
    assert smaller_tile_size(88, multiple=8, overlap=40) is None


def test_a_limit_without_room_for_tiles_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 2 x overlap"):
        TileGrid(100, 100, overlap=10, max_tile=20)
    with pytest.raises(ConfigError, match="leaves no room for tiles"):
        SpatialNeeds(fully_convolutional=True, size_multiple=8, overlap=10, max_size=31)
    with pytest.raises(ConfigError, match="below size_multiple"):
        SpatialNeeds(size_multiple=16, max_size=8)
    SpatialNeeds(fully_convolutional=True, size_multiple=8, overlap=10, max_size=32)


# -- through the runner ------------------------------------------------------------------------


class WholeConvNet(ConvNet):  # type: ignore[valid-type, misc]
    """The test conv net with no size limit: the reference for tiled runs."""

    id = "convnet_whole"
    spatial = SpatialNeeds(fully_convolutional=True, size_multiple=4, overlap=RADIUS)


class MultipleOf8(Model):
    """A model that refuses frames whose sides are not multiples of 8; a fixed 3x3 blur."""

    id = "multiple_of_8"
    spatial = SpatialNeeds(size_multiple=8)

    def predict(self, frames, knobs):
        image = frames["image"]
        assert image.shape[1] % 8 == 0 and image.shape[2] % 8 == 0, image.shape
        kernel = torch.full((3, 1, 3, 3), 1 / 9)
        return F.conv2d(image[None], kernel, padding=1, groups=3)[0]


class AtMost128(Model):
    """A model that takes at most 128 pixels wide and high and cannot be tiled."""

    id = "at_most_128"
    spatial = SpatialNeeds(size_multiple=8, max_size=128)

    def predict(self, frames, knobs):
        return frames["image"]


class Doubles(Model):
    """Super-resolution stand-in: nearest-neighbour x2, sides padded to multiples of 4."""

    id = "doubles"
    spatial = SpatialNeeds(size_multiple=4)

    def predict(self, frames, knobs):
        return F.interpolate(frames["image"][None], scale_factor=2, mode="nearest")[0]


class DoublesTiled(Doubles):
    """The same, declared fully convolutional with a size limit: it cannot be tiled."""

    id = "doubles_tiled"
    spatial = SpatialNeeds(fully_convolutional=True, size_multiple=4, overlap=2, max_size=64)


class TwoInputs(Model):
    """Two inputs that must be padded: they have to share one size."""

    id = "two_inputs"
    inputs = (ImageSpec("a"), ImageSpec("b"))
    spatial = SpatialNeeds(size_multiple=8)

    def predict(self, frames, knobs):
        return frames["a"] - frames["b"]


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Runner:
    registry = registry_of(
        tmp_path_factory.mktemp("tiling_models"),
        ConvNet,
        WholeConvNet,
        MultipleOf8,
        AtMost128,
        Doubles,
        DoublesTiled,
        TwoInputs,
    )
    return Runner(registry, device="cpu")


def run(runner: Runner, model_id: str, *frames: torch.Tensor) -> torch.Tensor:
    spec = runner.registry.get(model_id).spec
    return runner.run(build_request(spec, list(frames), {})).frames["image"]


def test_the_runner_tiles_big_frames_invisibly_and_exactly(runner: Runner) -> None:
    frame = photo(301, 437)
    tiled = run(runner, "convnet", frame)
    whole = run(runner, "convnet_whole", frame)
    assert tiled.shape == whole.shape == (3, 301, 437)
    assert float((tiled - whole).abs().max()) < 1e-4
    model = runner._pool._loaded[runner.registry.get("convnet").key].model  # type: ignore[attr-defined]
    assert len(model.calls) > 1  # tiles, each checked by the model: <= 256, multiples of 4
    assert all(h <= 256 and w <= 256 and h % 4 == 0 and w % 4 == 0 for *_, h, w in model.calls)


def test_padding_to_a_multiple_is_invisible_to_the_model(runner: Runner) -> None:
    frame = photo(157, 203)
    with pytest.raises(AssertionError):
        MultipleOf8().predict({"image": frame}, {})  # type: ignore[arg-type]
    out = run(runner, "multiple_of_8", frame)
    assert out.shape == (3, 157, 203) and out.is_contiguous()
    padded = torch.from_numpy(np.pad(frame.numpy(), ((0, 0), (0, 3), (0, 5)), mode="reflect"))
    expected = MultipleOf8().predict({"image": padded}, {})[:, :157, :203]  # type: ignore[arg-type]
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_a_frame_above_max_size_of_a_model_that_cannot_be_tiled_is_a_frame_error(
    runner: Runner,
) -> None:
    assert run(runner, "at_most_128", photo(100, 128)).shape == (3, 100, 128)
    with pytest.raises(FrameError, match=r"at most 128 pixels.*this one is 129x100"):
        run(runner, "at_most_128", photo(100, 129))
    with pytest.raises(FrameError, match=r"at most 128 pixels.*136x16 once padded"):
        run(runner, "at_most_128", photo(10, 130))


def test_a_frame_too_big_is_refused_before_setup(tmp_path: Path) -> None:
    runner = Runner(registry_of(tmp_path, AtMost128))
    with pytest.raises(FrameError):
        run(runner, "at_most_128", photo(300, 300))
    assert runner.loaded_models() == []


def test_outputs_at_a_whole_multiple_of_the_size_are_cropped_to_scale(runner: Runner) -> None:
    frame = photo(10, 13)
    out = run(runner, "doubles", frame)
    assert out.shape == (3, 20, 26)
    torch.testing.assert_close(out, frame.repeat_interleave(2, 1).repeat_interleave(2, 2))


def test_tiling_refuses_outputs_of_another_size(runner: Runner) -> None:
    with pytest.raises(
        ModelRunError, match=r"is (\d+)x\1 for a \d+x\d+ tile; tiling needs outputs"
    ):
        run(runner, "doubles_tiled", photo(100, 100))


def test_inputs_of_different_sizes_cannot_be_padded(runner: Runner) -> None:
    with pytest.raises(FrameError, match=r"must all have one size.*'a' 20x10, 'b' 21x10"):
        run(runner, "two_inputs", photo(10, 20), photo(10, 21))
    assert run(runner, "two_inputs", photo(10, 20), photo(10, 20)).shape == (3, 10, 20)


# -- running out of memory ---------------------------------------------------------------------


class OutOfMemoryAbove(WholeConvNet):  # type: ignore[misc]
    """The whole-frame conv net, failing as if out of memory above 100 x 100 pixels."""

    id = "oom_above"
    error = "torch"

    def _fail_above(self, image: torch.Tensor) -> None:
        if image.shape[-1] * image.shape[-2] <= 100 * 100:
            return
        self.failures = getattr(self, "failures", 0) + 1
        if self.error == "torch":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        if self.error == "cuda-message":
            raise RuntimeError("CUDA error: out of memory")
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory"
        )

    def predict_batch(self, frames, knobs):
        self._fail_above(frames["image"])
        return super().predict_batch(frames, knobs)


class CudaMessage(OutOfMemoryAbove):
    id = "oom_cuda_message"
    error = "cuda-message"


class CpuMessage(OutOfMemoryAbove):
    id = "oom_cpu_message"
    error = "cpu-message"


class AlwaysOutOfMemory(WholeConvNet):  # type: ignore[misc]
    id = "oom_always"

    def predict_batch(self, frames, knobs):
        raise torch.OutOfMemoryError("CUDA out of memory")


class NotTileableOutOfMemory(AtMost128):
    id = "oom_not_tileable"
    spatial = SpatialNeeds()

    def predict(self, frames, knobs):
        raise MemoryError()


@pytest.fixture(scope="module")
def oom_runner(tmp_path_factory: pytest.TempPathFactory) -> Runner:
    registry = registry_of(
        tmp_path_factory.mktemp("oom_models"),
        WholeConvNet,
        OutOfMemoryAbove,
        CudaMessage,
        CpuMessage,
        AlwaysOutOfMemory,
        NotTileableOutOfMemory,
    )
    return Runner(registry, device="cpu")


@pytest.mark.parametrize("model_id", ["oom_above", "oom_cuda_message", "oom_cpu_message"])
def test_running_out_of_memory_retries_in_smaller_tiles(
    oom_runner: Runner, model_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    frame = photo(301, 437)
    with caplog.at_level(logging.WARNING, logger="frameserve.engine.execution"):
        out = run(oom_runner, model_id, frame)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # 304x440 whole, then tiles of at most 220 pixels, then at most 108 (100 or less), which fit
    assert len(warnings) == 2 and all("ran out of memory" in w for w in warnings)
    assert "trying tiles of at most 108x108" in warnings[-1]
    whole = run(oom_runner, "convnet_whole", frame)
    assert float((out - whole).abs().max()) < 1e-4
    # the tile size that worked is remembered: the next frame runs out of memory no more
    model = oom_runner._pool._loaded[oom_runner.registry.get(model_id).key].model  # type: ignore[attr-defined]
    failures = model.failures
    run(oom_runner, model_id, frame)
    assert model.failures == failures


def test_running_out_of_memory_in_the_smallest_tiles_is_a_model_run_error(
    oom_runner: Runner,
) -> None:
    with pytest.raises(
        ModelRunError, match=r"ran out of memory on cpu even in tiles of at most 64x64"
    ):
        run(oom_runner, "oom_always", photo(150, 150))


def test_a_model_that_cannot_be_tiled_fails_when_out_of_memory(oom_runner: Runner) -> None:
    with pytest.raises(ModelRunError, match=r"ran out of memory on cpu with 1 frame\(s\) of 40x30"):
        run(oom_runner, "oom_not_tileable", photo(30, 40))
