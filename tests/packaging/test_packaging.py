"""Tests for making and checking model packages: the test run, its report, atomic writes.

Reading manifests is tested in ``tests/catalogue/packages``; the commands in
``tests/cli/test_package.py``.
"""

from __future__ import annotations

import os
import shutil
import stat
import tomllib
from pathlib import Path

import pytest
import torch

from frameserve.catalogue.packages import MANIFEST_FILE
from frameserve.errors import ConfigError, ModelLoadError
from frameserve.packaging import CheckReport, check_package, write_package
from tests.support.package_networks import (
    EXAMPLE_PACKAGES,
    Grey,
    Identity,
    Unused,
    example_builder,
    make_package,
    save_onnx,
    save_script,
)

#: A manifest without a network key (make_package adds one): one image in, one image out.
IMAGE_ONLY = """\
id = "net"
version = "1.0.0"

[[inputs]]
name = "image"
channels = 3

[[outputs]]
name = "image"
channels = 3

"""
#: IMAGE_ONLY with a float knob fed as a network input of its own name.
WITH_KNOB = (
    IMAGE_ONLY
    + """\
[[knobs]]
name = "strength"
type = "float"
default = 0.5
min = 0.0
max = 1.0
"""
)


# -- the test run ------------------------------------------------------------------------------


def test_check_reports_what_the_example_network_was_fed_and_gave() -> None:
    report = check_package(EXAMPLE_PACKAGES / "soften_onnx")
    assert isinstance(report, CheckReport)
    assert report.network_inputs == ("image", "strength")
    assert dict(report.fed) == {"image": (2, 3, 64, 64), "strength": ()}
    assert dict(report.outputs) == {"image": (3, 64, 64)}
    assert report.warnings == ()
    summary = report.summary()
    assert "soften_onnx 1.0.0" in summary and "OK" in summary
    assert "knob gain: float = 1.0 [0.0..8.0] -> gain 'image'" in summary


def test_check_refuses_a_network_returning_fewer_channels_than_declared(tmp_path: Path) -> None:
    network = save_script(Grey(), tmp_path / "grey.pt")
    folder = make_package(tmp_path / "grey", network, IMAGE_ONLY)
    with pytest.raises(ModelLoadError) as caught:
        check_package(folder)
    message = str(caught.value)
    assert str(folder / MANIFEST_FILE) in message
    assert "output 'image'" in message
    assert "expected shape (1, 3, 64, 64)" in message and "got (1, 1, 64, 64)" in message


def test_check_refuses_outputs_of_another_size_than_output_scale_says(tmp_path: Path) -> None:
    from tests.support.package_networks import Upscale

    network = save_script(Upscale(), tmp_path / "up.pt")
    folder = make_package(tmp_path / "up", network, IMAGE_ONLY)
    with pytest.raises(ModelLoadError, match=r"expected shape \(1, 3, 64, 64\).*got \(1, 3, 128"):
        check_package(folder)


def test_check_names_the_network_inputs_when_the_manifest_feeds_another(tmp_path: Path) -> None:
    network = save_script(Identity(), tmp_path / "id.pt")
    text = IMAGE_ONLY.replace('name = "image"', 'name = "plate"', 1)
    folder = make_package(tmp_path / "id", network, text)
    with pytest.raises(ModelLoadError) as caught:
        check_package(folder)
    message = str(caught.value)
    assert "inputs[0] ('plate'; set its tensor key) feeds network input 'plate'" in message
    assert "its inputs are: 'image'" in message
    # binding it by name fixes it
    text = text.replace('name = "plate"', 'name = "plate"\ntensor = "image"')
    (folder / MANIFEST_FILE).write_text('network = "id.pt"\n' + text)
    assert check_package(folder).fed["image"] == (1, 3, 64, 64)


def test_check_names_a_network_input_nothing_feeds(tmp_path: Path) -> None:
    network = save_script(Unused(), tmp_path / "unused.pt")
    folder = make_package(tmp_path / "unused", network, IMAGE_ONLY)
    with pytest.raises(ModelLoadError, match=r"network input 'unused' of 'unused\.pt' is fed by"):
        check_package(folder)


def test_check_warns_about_a_knob_that_changes_nothing(tmp_path: Path) -> None:
    network = save_script(Unused(), tmp_path / "unused.pt")
    text = WITH_KNOB + 'target = "unused"\n'
    report = check_package(make_package(tmp_path / "unused", network, text))
    [warning] = report.warnings
    assert "knob 'strength' (feed = 'input', target 'unused') did not change" in warning


def test_check_compares_channels_with_an_onnx_graph_s_declared_shape(tmp_path: Path) -> None:
    folder = tmp_path / "onnx4"
    shutil.copytree(EXAMPLE_PACKAGES / "soften_onnx", folder)
    text = (folder / MANIFEST_FILE).read_text().replace("channels = 3", "channels = 4", 1)
    (folder / MANIFEST_FILE).write_text(text)
    with pytest.raises(ModelLoadError) as caught:
        check_package(folder)
    message = str(caught.value)
    assert "inputs[0] ('image') feeds network input 'image' (N, 4, H, W) frames" in message
    assert "the network expects [?, 3, ?, ?]" in message
    # with use = [0, 1, 2], an RGBA input feeds it RGB
    (folder / MANIFEST_FILE).write_text(
        text.replace("channels = 4", "channels = 4\nuse = [0, 1, 2]")
    )
    assert check_package(folder).fed["image"] == (2, 3, 64, 64)


def test_check_refuses_an_unknown_colourspace(tmp_path: Path) -> None:
    folder = tmp_path / "colour"
    shutil.copytree(EXAMPLE_PACKAGES / "soften", folder)
    text = (folder / MANIFEST_FILE).read_text()
    (folder / MANIFEST_FILE).write_text('colourspace_in = "not a space"\n' + text)
    with pytest.raises(ModelLoadError, match="colourspace_in = 'not a space' is not allowed"):
        check_package(folder)


# -- writing packages --------------------------------------------------------------------------


def example_document() -> dict[str, object]:
    """The example manifest as plain data, without its network key."""
    data = tomllib.loads((EXAMPLE_PACKAGES / "soften" / MANIFEST_FILE).read_text())
    data.pop("network")
    return data


def test_write_package_copies_the_network_and_writes_a_manifest(tmp_path: Path) -> None:
    network = save_script(example_builder().soften_network(), tmp_path / "soften.pt")
    out = tmp_path / "models" / "soften"
    report = write_package(network, out, example_document())
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_FILE, "soften.pt"]
    assert report.manifest.folder == out
    assert tomllib.loads((out / MANIFEST_FILE).read_text())["network"] == "soften.pt"
    mode = stat.S_IMODE(out.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o777 & ~umask  # a folder like any other, not a private temporary one
    assert sorted(p.name for p in out.parent.iterdir()) == ["soften"]  # nothing left beside it


def test_write_package_refuses_a_mismatch_and_leaves_nothing_behind(tmp_path: Path) -> None:
    network = save_script(Grey(), tmp_path / "grey.pt")
    models = tmp_path / "models"
    models.mkdir()
    document = tomllib.loads(IMAGE_ONLY)
    with pytest.raises(ModelLoadError) as caught:
        write_package(network, models / "grey", document)
    message = str(caught.value)
    assert str(models / "grey" / MANIFEST_FILE) in message  # the target, not a staging folder
    assert "expected shape (1, 3, 64, 64)" in message and "got (1, 1, 64, 64)" in message
    assert list(models.iterdir()) == []


def test_write_package_replaces_a_package_only_when_forced(tmp_path: Path) -> None:
    network = save_script(example_builder().soften_network(), tmp_path / "soften.pt")
    out = tmp_path / "soften"
    write_package(network, out, example_document())
    with pytest.raises(ConfigError, match="already exists; use --force"):
        write_package(network, out, example_document())
    document = {**example_document(), "version": "1.1.0"}
    assert write_package(network, out, document, force=True).manifest.version == "1.1.0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["soften", "soften.pt"]


def test_write_package_copies_an_onnx_graph_s_weights_file(tmp_path: Path) -> None:
    import onnx

    inline = shutil.copy(EXAMPLE_PACKAGES / "soften_onnx" / "soften.onnx", tmp_path / "in.onnx")
    graph = onnx.load(str(inline))
    network = tmp_path / "big.onnx"
    (tmp_path / "weights").mkdir()
    onnx.save_model(
        graph,
        str(network),
        save_as_external_data=True,
        location="weights/big.onnx.data",
        size_threshold=100,  # the blur's weights; small constants stay (shape inference)
    )
    assert (tmp_path / "weights" / "big.onnx.data").is_file()
    document = tomllib.loads((EXAMPLE_PACKAGES / "soften_onnx" / MANIFEST_FILE).read_text())
    out = tmp_path / "pkg"
    report = write_package(network, out, document)
    assert (out / "weights" / "big.onnx.data").is_file()
    assert report.outputs["image"] == (3, 64, 64)


def test_write_package_refuses_unsupported_network_files(tmp_path: Path) -> None:
    (tmp_path / "net.pth").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"net\.pth: unsupported network file; expected one of"):
        write_package(tmp_path / "net.pth", tmp_path / "out", {})
    with pytest.raises(ConfigError, match="no such network file"):
        write_package(tmp_path / "gone.onnx", tmp_path / "out", {})


def test_a_fixed_size_onnx_graph_is_checked_at_its_size_with_a_warning(tmp_path: Path) -> None:
    example = torch.rand(1, 3, 16, 24)
    network = save_onnx(Identity(), tmp_path / "fixed.onnx", example, dynamic=False)
    folder = make_package(tmp_path / "fixed", network, IMAGE_ONLY)
    report = check_package(folder)
    assert report.fed["image"] == (1, 3, 16, 24)
    [warning] = report.warnings
    assert "network input 'image' takes frames of 24 x 16 pixels only" in warning
    (folder / MANIFEST_FILE).write_text(
        "max_batch_size = 2\n" + (folder / MANIFEST_FILE).read_text()
    )
    with pytest.raises(ModelLoadError, match=r"'image' has a fixed batch size \(\[1, 3, 16, 24"):
        check_package(folder)


# -- binding the obvious -----------------------------------------------------------------------


class _Brighten(torch.nn.Module):
    """One image input called ``x``, one image output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0


class _TwoImages(torch.nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + y


def test_a_network_with_one_input_is_bound_whatever_its_name(tmp_path: Path) -> None:
    for network in (
        save_script(_Brighten(), tmp_path / "brighten.pt"),
        save_onnx(_Brighten(), tmp_path / "brighten.onnx", torch.rand(1, 3, 8, 8)),
    ):
        out = tmp_path / f"pkg_{network.suffix[1:]}"
        report = write_package(network, out, tomllib.loads(IMAGE_ONLY))
        assert report.manifest.inputs[0].tensor == "x"
        assert report.fed == {"x": (1, 3, 64, 64)}
        assert tomllib.loads((out / MANIFEST_FILE).read_text())["inputs"][0]["tensor"] == "x"
        assert "network gets [0, 1, 2] as 'x'" in report.summary()


def test_a_network_with_two_inputs_must_still_be_told_which_is_the_image(tmp_path: Path) -> None:
    network = save_script(_TwoImages(), tmp_path / "two.pt")
    document = tomllib.loads(IMAGE_ONLY)
    # two network inputs and nothing says which is the image: the check explains
    with pytest.raises(ModelLoadError, match=r"feeds network input 'image'.*inputs are: 'x', 'y'"):
        write_package(network, tmp_path / "unbound", document)
    assert not (tmp_path / "unbound").exists()
