"""Channel names, optional inputs and upscaling outputs, from declaration to files and wires."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F

from frameserve import ImageSpec, KnobValues, Model, SpatialNeeds
from frameserve.catalogue.registry import ModelRegistry
from frameserve.cli.main import main
from frameserve.client import Client
from frameserve.engine.request import build_request
from frameserve.engine.runner import Runner
from frameserve.errors import ConfigError, FrameError, ModelRunError
from frameserve.media.imageio import read_image, write_image
from frameserve.serve.server import FrameServer
from frameserve.serve.settings import ServerSettings
from tests.support.node_client import NodeClient, decode_image
from tests.support.registries import registry_of

MOTION_CHANNELS = ("forward.u", "forward.v", "backward.u", "backward.v")


class Gradients(Model):
    """Horizontal and vertical differences, written as named vector channels."""

    id = "gradients"
    outputs = (ImageSpec("motion", channels=4, channel_names=MOTION_CHANNELS),)

    def predict(self, frames: Mapping[str, torch.Tensor], knobs: KnobValues) -> torch.Tensor:
        grey = frames["image"].mean(0)
        dx = torch.diff(grey, dim=1, append=grey[:, -1:])
        dy = torch.diff(grey, dim=0, append=grey[-1:])
        return torch.stack([dx, -dy, -dx, dy])


class Masked(Model):
    """Multiplies the image by an optional matte (channel 0); without one, passes it through."""

    id = "masked"
    inputs = (ImageSpec("image", 3), ImageSpec("matte", 1, optional=True))

    def predict(self, frames: Mapping[str, torch.Tensor], knobs: KnobValues) -> torch.Tensor:
        image = frames["image"]
        return image * frames["matte"] if "matte" in frames else image


class Upscale3(Model):
    """Triples the size with a fixed smoothing kernel: a tiny stand-in for a super-resolver."""

    id = "upscale3"
    output_scale = 3
    spatial = SpatialNeeds(fully_convolutional=True, size_multiple=2, overlap=3)

    def predict(self, frames: Mapping[str, torch.Tensor], knobs: KnobValues) -> torch.Tensor:
        image = frames["image"][None]
        kernel = torch.full((3, 1, 3, 3), 1.0 / 9.0)
        smooth = F.conv2d(F.pad(image, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
        sharp = 2 * image - smooth  # reaches one pixel: the tiles must overlap to match
        return F.interpolate(sharp, scale_factor=3, mode="nearest")[0]


class Upscale3SmallTiles(Upscale3):
    id = "upscale3_small_tiles"
    spatial = SpatialNeeds(fully_convolutional=True, size_multiple=2, overlap=3, max_size=40)


class WrongScale(Upscale3):
    id = "wrong_scale"

    def predict(self, frames: Mapping[str, torch.Tensor], knobs: KnobValues) -> torch.Tensor:
        return F.interpolate(frames["image"][None], scale_factor=2, mode="nearest")[0]


CLASSES = (Gradients, Masked, Upscale3, Upscale3SmallTiles, WrongScale)


def photo(height: int, width: int) -> np.ndarray:
    """A (3, height, width) float32 crop of scikit-image's astronaut, values 0-1."""
    image = skimage.data.astronaut()[100 : 100 + height, 100 : 100 + width]
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / 255.0


@pytest.fixture(scope="module")
def models_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("declared")
    registry_of(folder, *CLASSES)
    return folder


@pytest.fixture(scope="module")
def runner(models_folder: Path) -> Runner:
    return Runner(ModelRegistry([models_folder], builtins=False), device="cpu")


@pytest.fixture(scope="module")
def server(models_folder: Path) -> Iterator[FrameServer]:
    server = FrameServer(
        ServerSettings(port=0, http_port=0, model_folders=(models_folder,), builtin_models=False)
    ).start()
    yield server
    server.close()


# -- declarations --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"channels": 2, "channel_names": ("u",)}, "channel_names must be 2 distinct"),
        ({"channels": 2, "channel_names": ("u", "u")}, "channel_names must be 2 distinct"),
        ({"channels": 1, "channel_names": ("",)}, "channel_names must be 1 distinct"),
        ({"channels": 1, "channel_names": "Y"}, "channel_names must be 1 distinct"),
        ({"channels": 1, "optional": "yes"}, "optional must be True or False"),
    ],
)
def test_bad_channel_names_and_optional_flags_are_config_errors(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        ImageSpec("x", **kwargs)  # type: ignore[arg-type]


def test_optional_inputs_must_come_last() -> None:
    bad = type(
        "OptionalFirst",
        (Masked,),
        {"inputs": (ImageSpec("matte", 1, optional=True), ImageSpec("image", 3))},
    )
    with pytest.raises(ConfigError, match=r"optional inputs \(matte\) must come after"):
        bad.spec()


@pytest.mark.parametrize("scale", [0, 17, 1.5, True])
def test_a_bad_output_scale_is_a_config_error(scale: object) -> None:
    with pytest.raises(ConfigError, match=r"output_scale must be a whole number in 1\.\.16"):
        type("Bad", (Upscale3,), {"output_scale": scale}).spec()


def test_descriptions_list_channel_names_optional_inputs_and_scale() -> None:
    described = Masked.spec().describe()
    assert described["inputs"][1] == {"name": "matte", "channels": 1, "optional": True}
    assert Gradients.spec().describe()["outputs"][0]["channel_names"] == list(MOTION_CHANNELS)
    assert Upscale3.spec().describe()["output_scale"] == 3


# -- optional inputs -----------------------------------------------------------------------


def test_an_optional_input_may_be_left_out_by_position_or_by_name(runner: Runner) -> None:
    spec = runner.registry.get("masked").spec
    image = torch.from_numpy(photo(20, 30))
    matte = torch.zeros(1, 20, 30)
    matte[:, :, :15] = 1.0
    alone = runner.run(build_request(spec, [image], {})).frames["image"]
    torch.testing.assert_close(alone, image)
    masked = runner.run(build_request(spec, {"image": image, "matte": matte}, {})).frames["image"]
    torch.testing.assert_close(masked, image * matte)
    with pytest.raises(FrameError, match=r"takes 1 to 2 image\(s\).*the request has 0"):
        build_request(spec, [], {})
    with pytest.raises(FrameError, match="needs input 'image'"):
        build_request(spec, {"matte": matte}, {})
    with pytest.raises(FrameError, match="has no input 'hints'"):
        build_request(spec, {"image": image, "hints": matte}, {})


def test_http_and_mlclient_clients_may_leave_an_optional_input_out(server: FrameServer) -> None:
    image = photo(16, 24)
    matte = np.zeros((1, 16, 24), np.float32)
    matte[:, 8:] = 1.0
    with Client(f"http://{server.http_address[0]}:{server.http_address[1]}") as client:
        alone = client.infer("masked", {"image": image.transpose(1, 2, 0)}).frames["image"]
        both = client.infer(
            "masked", {"image": image.transpose(1, 2, 0), "matte": matte.transpose(1, 2, 0)}
        ).frames["image"]
    np.testing.assert_allclose(alone, image.transpose(1, 2, 0), atol=1e-6)
    np.testing.assert_allclose(both, (image * matte).transpose(1, 2, 0), atol=1e-6)
    node = NodeClient(*server.mlclient_address)
    model = node.model("masked")
    assert [i.name for i in model.inputs] == ["image", "matte"]
    reply = node.infer(model, [image])  # the artist connected only the plate
    np.testing.assert_allclose(decode_image(reply.r2.images[0]), image, atol=1e-6)


def test_run_reads_an_optional_input_only_when_given(models_folder: Path, tmp_path: Path) -> None:
    image = photo(12, 18)
    matte = np.full((1, 12, 18), 0.5, np.float32)
    write_image(tmp_path / "plate.0001.exr", image)
    write_image(tmp_path / "matte.0001.exr", matte)
    common = ["run", "masked", "--models", str(models_folder), "--no-builtins", "--frames", "1"]
    plate = ["--input", f"image={tmp_path / 'plate.####.exr'}"]
    assert main([*common, *plate, "--output", str(tmp_path / "a.####.exr")]) == 0
    with_matte = [*plate, "--input", f"matte={tmp_path / 'matte.####.exr'}"]
    assert main([*common, *with_matte, "--output", str(tmp_path / "b.####.exr")]) == 0
    np.testing.assert_allclose(read_image(tmp_path / "a.0001.exr").pixels, image, atol=1e-6)
    np.testing.assert_allclose(read_image(tmp_path / "b.0001.exr").pixels, image * 0.5, atol=1e-6)


# -- channel names -------------------------------------------------------------------------


def test_run_writes_the_declared_channel_names(models_folder: Path, tmp_path: Path) -> None:
    write_image(tmp_path / "plate.0001.exr", photo(10, 14))
    status = main(
        [
            "run", "gradients", "--models", str(models_folder), "--no-builtins",
            "--input", str(tmp_path / "plate.####.exr"),
            "--output", str(tmp_path / "vectors.####.exr"), "--frames", "1",
        ]
    )  # fmt: skip
    assert status == 0
    written = read_image(tmp_path / "vectors.0001.exr")
    assert sorted(written.channel_names) == sorted(MOTION_CHANNELS)  # EXR sorts channels
    channels = dict(zip(written.channel_names, written.pixels, strict=True))
    grey = photo(10, 14).mean(0)
    np.testing.assert_allclose(channels["forward.u"][:, :-1], np.diff(grey, axis=1), atol=1e-6)
    np.testing.assert_allclose(channels["backward.u"], -channels["forward.u"], atol=1e-6)


# -- upscaling outputs ---------------------------------------------------------------------


def test_an_upscaling_model_is_padded_and_tiled_on_the_input_grid(runner: Runner) -> None:
    image = torch.from_numpy(photo(75, 101))  # odd sizes: padded to multiples of 2
    whole_spec = runner.registry.get("upscale3").spec
    tiled_spec = runner.registry.get("upscale3_small_tiles").spec
    whole = runner.run(build_request(whole_spec, [image], {})).frames["image"]
    tiled = runner.run(build_request(tiled_spec, [image], {})).frames["image"]
    assert whole.shape == (3, 225, 303)
    assert tiled.shape == (3, 225, 303)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)
    # The model really ran: the nearest-neighbour blocks of the sharpened image.
    assert not torch.allclose(whole[:, ::3, ::3], image, atol=1e-3)


def test_an_output_of_the_wrong_scale_is_the_models_error(runner: Runner) -> None:
    spec = runner.registry.get("wrong_scale").spec
    with pytest.raises(ModelRunError, match=r"declares output_scale 3, so 30x30 was expected"):
        runner.run(build_request(spec, [torch.zeros(3, 10, 10)], {}))


def test_run_writes_upscaled_frames(models_folder: Path, tmp_path: Path) -> None:
    write_image(
        tmp_path / "small.0001.exr",
        photo(20, 30),
        metadata={"frameserve:shot": "sq010"},
        data_window=(2, 3, 30, 20),
        display_window=(0, 0, 40, 30),
    )
    status = main(
        [
            "run", "upscale3", "--models", str(models_folder), "--no-builtins",
            "--input", str(tmp_path / "small.####.exr"),
            "--output", str(tmp_path / "big.####.exr"), "--frames", "1",
        ]
    )  # fmt: skip
    assert status == 0
    big = read_image(tmp_path / "big.0001.exr")
    assert big.pixels.shape == (3, 60, 90)
    assert big.data_window == (6, 9, 90, 60)  # the windows grow with the frame
    assert big.display_window == (0, 0, 120, 90)
    assert big.metadata["frameserve:shot"] == "sq010"
