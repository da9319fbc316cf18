"""Model packages served by the engine: the real registry, Runner and HTTP server.

The examples (``examples/packages``: one network saved as TorchScript and exported to ONNX)
must agree within 1e-5, with each other and with the PyTorch network they were saved from;
``.pt2`` packages, knob feeds, channel selection, value ranges, temporal windows, output
scales and tiles are checked through the same Runner the server uses.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch

from frameserve.catalogue.packages import MANIFEST_FILE
from frameserve.catalogue.packages._networks import TorchScriptNetwork
from frameserve.catalogue.registry import ModelRegistry
from frameserve.client import Client
from frameserve.engine.request import build_request
from frameserve.engine.runner import Runner
from frameserve.serve.server import FrameServer
from frameserve.serve.settings import ServerSettings
from tests.support.package_networks import (
    EXAMPLE_PACKAGES,
    Identity,
    Modes,
    Scale,
    Temporal,
    Upscale,
    example_builder,
    make_package,
    save_exported,
    save_script,
)

TOLERANCE = 1e-5
EXAMPLE_IDS = ("soften", "soften_onnx")

IMAGE_IO = """\
id = "{id}"
version = "1.0.0"

[[inputs]]
name = "image"
channels = 3

[[outputs]]
name = "image"
channels = 3
"""


def registry_of(*folders: Path) -> ModelRegistry:
    """A registry (no built-ins) of the packages in ``folders``; every one must load."""
    registry = ModelRegistry(list(folders), builtins=False)
    failed = [(entry.id, entry.error) for entry in registry.entries() if not entry.ok]
    assert not failed, failed
    return registry


def run(runner: Runner, model_id: str, *frames: torch.Tensor, **knobs: object) -> torch.Tensor:
    """Run ``frames`` through ``model_id`` on ``runner``; return the first output."""
    spec = runner.registry.get(model_id).spec
    result = runner.run(build_request(spec, list(frames), knobs))
    return result.frames[spec.outputs[0].name]


def plate(height: int = 45, width: int = 67, *, seed: int = 3) -> torch.Tensor:
    """A scene-linear RGB plate with highlights above 1 and a few negative values."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((3, height, width), generator=generator) * 6.0 - 0.5


def reference(image: torch.Tensor, strength: float = 0.5, gain: float = 1.0) -> torch.Tensor:
    """What the example network gives, run in PyTorch directly."""
    net = example_builder().soften_network()
    with torch.no_grad():
        return net((image * gain)[None], torch.tensor(strength))[0]


@pytest.fixture(scope="module")
def examples() -> Runner:
    """A Runner serving the two example packages through the real registry."""
    return Runner(registry_of(EXAMPLE_PACKAGES))


# -- the examples: TorchScript and ONNX, same weights --------------------------------------


@pytest.mark.parametrize(
    "knobs", [{}, {"strength": -0.8}, {"strength": 1.0, "gain": 3.5}, {"gain": 0.0}]
)
def test_torchscript_and_onnx_examples_agree_through_the_runner(
    examples: Runner, knobs: dict[str, float]
) -> None:
    image = plate()
    outputs = [run(examples, model_id, image, **knobs) for model_id in EXAMPLE_IDS]
    expected = reference(image, **knobs)
    for output in outputs:
        assert output.shape == image.shape and output.dtype == torch.float32
        assert (output - expected).abs().max() <= TOLERANCE
    assert (outputs[0] - outputs[1]).abs().max() <= TOLERANCE
    if knobs.get("gain", 1.0):
        assert outputs[0].max() > 1.0  # scene-linear highlights are never clipped


def test_the_example_knobs_do_what_they_say(examples: Runner) -> None:
    image = plate()
    for model_id in EXAMPLE_IDS:
        untouched = run(examples, model_id, image, strength=0.0)
        assert torch.allclose(untouched, image, atol=1e-6)  # strength 0: the plate itself
        doubled = run(examples, model_id, image, strength=0.0, gain=2.0)
        assert torch.allclose(doubled, 2.0 * image, atol=1e-6)  # gain: before the network
        soft = run(examples, model_id, image, strength=1.0)
        sharp = run(examples, model_id, image, strength=-1.0)
        detail = [float((x[:, 1:] - x[:, :-1]).abs().mean()) for x in (soft, image, sharp)]
        assert detail[0] < detail[1] < detail[2]


def test_batches_of_example_requests_equal_single_ones(examples: Runner) -> None:
    images = [plate(seed=seed) for seed in range(3)]
    for model_id in EXAMPLE_IDS:
        spec = examples.registry.get(model_id).spec
        requests = [build_request(spec, [image], {"strength": 0.3}) for image in images]
        results = examples.run_batch(requests)
        for image, result in zip(images, results, strict=True):
            assert not isinstance(result, Exception), result
            single = run(examples, model_id, image, strength=0.3)
            assert (result.frames["image"] - single).abs().max() <= TOLERANCE


def test_a_fully_convolutional_package_is_tiled_by_the_engine(tmp_path: Path) -> None:
    text = (EXAMPLE_PACKAGES / "soften" / MANIFEST_FILE).read_text()
    text = text.replace('id = "soften"', 'id = "tiled"').replace(
        "overlap = 2", "overlap = 2\nmax_size = 24"
    )
    folder = tmp_path / "tiled"
    folder.mkdir()
    (folder / "soften.pt").write_bytes((EXAMPLE_PACKAGES / "soften" / "soften.pt").read_bytes())
    (folder / MANIFEST_FILE).write_text(text)
    runner = Runner(registry_of(folder))
    image = plate(70, 90)
    tiled = run(runner, "tiled", image, strength=0.9)
    assert (tiled - reference(image, 0.9)).abs().max() <= 1e-4


def test_examples_are_served_over_http() -> None:
    settings = ServerSettings(
        host="127.0.0.1",
        port=0,
        http_port=0,
        model_folders=(EXAMPLE_PACKAGES,),
        builtin_models=False,
        cache_bytes=0,
        read_timeout=5.0,
    )
    server = FrameServer(settings)
    assert "soften" in server.registry, server.registry.entries()
    server.start()
    try:
        frame = plate().permute(1, 2, 0).contiguous().numpy()  # (H, W, C) on the wire
        knobs = {"strength": -0.5, "gain": 2.0}
        with Client(server.http_url, timeout=60.0) as client:
            names = {model.name for model in client.models()}
            assert set(EXAMPLE_IDS) <= names
            outputs = [client.infer(m, frame, knobs=knobs).frames["image"] for m in EXAMPLE_IDS]
    finally:
        server.close()
    expected = reference(plate(), -0.5, 2.0).permute(1, 2, 0).numpy()
    for output in outputs:
        assert output.shape == frame.shape
        assert np.abs(output - expected).max() <= TOLERANCE
    assert np.abs(outputs[0] - outputs[1]).max() <= TOLERANCE


# -- other network formats and shapes --------------------------------------------------------


def test_a_torch_export_package_matches_the_torchscript_one(tmp_path: Path) -> None:
    builder = example_builder()
    network = save_exported(
        builder.soften_network(), tmp_path / "soften.pt2", *builder.example_inputs()
    )
    text = (EXAMPLE_PACKAGES / "soften" / MANIFEST_FILE).read_text()
    text = text.replace('id = "soften"', 'id = "soften_pt2"').replace('"soften.pt"', '"soften.pt2"')
    folder = tmp_path / "soften_pt2"
    folder.mkdir()
    network.replace(folder / network.name)
    (folder / MANIFEST_FILE).write_text(text)
    runner = Runner(registry_of(folder, EXAMPLE_PACKAGES))
    image = plate()
    exported = run(runner, "soften_pt2", image, strength=0.25, gain=1.5)
    scripted = run(runner, "soften", image, strength=0.25, gain=1.5)
    assert (exported - scripted).abs().max() <= TOLERANCE
    assert (exported - reference(image, 0.25, 1.5)).abs().max() <= TOLERANCE


def test_an_output_scale_of_two_gives_outputs_twice_the_size(tmp_path: Path) -> None:
    net = Upscale()
    network = save_script(net, tmp_path / "upscale.pt")
    manifest = (
        "output_scale = 2\n" + IMAGE_IO.format(id="upscale") + "\n[spatial]\nsize_multiple = 4\n"
    )
    runner = Runner(registry_of(make_package(tmp_path / "upscale", network, manifest)))
    image = plate(30, 41)  # padded to 32x44 for the network, cropped back to 60x82
    output = run(runner, "upscale", image)
    assert output.shape == (3, 60, 82)
    with torch.no_grad():
        expected = net(image[None])[0]
    assert (output - expected).abs().max() <= TOLERANCE


def test_a_temporal_window_stacks_neighbours_oldest_first(tmp_path: Path) -> None:
    network = save_script(Temporal(), tmp_path / "temporal.pt")
    manifest = "temporal_window = [1, 1]\n" + IMAGE_IO.format(id="temporal")
    runner = Runner(registry_of(make_package(tmp_path / "temporal", network, manifest)))
    spec = runner.registry.get("temporal").spec
    assert [i.name for i in spec.inputs] == ["image", "image@-1", "image@+1"]
    current, previous, following = plate(seed=1), plate(seed=2), plate(seed=3)
    output = run(runner, "temporal", current, previous, following)
    assert torch.allclose(output, following + current - previous, atol=1e-6)


# -- channels and value ranges -----------------------------------------------------------------


def test_use_normalise_and_range_map_channels_and_values_both_ways(tmp_path: Path) -> None:
    network = save_script(Identity(), tmp_path / "identity.pt")
    manifest = """\
        id = "ranges"
        version = "1.0.0"

        [[inputs]]
        name = "image"
        channels = 4
        use = [0, 1, 2]
        range = [-1.0, 1.0]
        normalise = true

        [[outputs]]
        name = "image"
        channels = 3
        use = [2, 1, 0]
        range = [-1.0, 1.0]
        normalise = true
        """
    runner = Runner(registry_of(make_package(tmp_path / "ranges", network, manifest)))
    rgba = torch.cat([plate(), torch.ones(1, 45, 67)])
    output = run(runner, "ranges", rgba)
    assert torch.allclose(output, rgba[[2, 1, 0]], atol=1e-6)  # through -1..1 and back
    assert output.max() > 1.0


def test_values_outside_the_range_warn_once_and_pass_unclipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    network = save_script(Identity(), tmp_path / "identity.pt")
    manifest = IMAGE_IO.format(id="ranged").replace(
        "channels = 3", "channels = 3\nrange = [0, 1]", 1
    )
    runner = Runner(registry_of(make_package(tmp_path / "ranged", network, manifest)))
    image = plate()
    with caplog.at_level(logging.WARNING, logger="frameserve.catalogue.packages"):
        first = run(runner, "ranged", image)
        second = run(runner, "ranged", image * 2)
    assert torch.equal(first, image) and torch.equal(second, image * 2)
    warnings = [r.getMessage() for r in caplog.records if "outside the range" in r.getMessage()]
    assert len(warnings) == 1
    assert "input 'image' reaches -0.4995..5.499" in warnings[0] and "never clipped" in warnings[0]


# -- knob feeds --------------------------------------------------------------------------------


def test_an_offset_knob_is_added_to_its_input(tmp_path: Path) -> None:
    network = save_script(Identity(), tmp_path / "identity.pt")
    manifest = IMAGE_IO.format(id="lift") + (
        '\n[[knobs]]\nname = "lift"\ntype = "float"\ndefault = 0.0\nfeed = "offset"\n'
    )
    runner = Runner(registry_of(make_package(tmp_path / "lift", network, manifest)))
    image = plate()
    assert torch.equal(run(runner, "lift", image), image)
    assert torch.allclose(run(runner, "lift", image, lift=0.25), image + 0.25, atol=1e-6)


def test_choice_and_bool_knobs_reach_the_network_as_scalar_inputs(tmp_path: Path) -> None:
    network = save_script(Modes(), tmp_path / "modes.pt")
    manifest = IMAGE_IO.format(id="modes") + (
        '\n[[knobs]]\nname = "mode"\ntype = "choice"\nchoices = ["one", "two", "three"]\n'
        '\n[[knobs]]\nname = "flip"\ntype = "bool"\ndefault = false\n'
    )
    runner = Runner(registry_of(make_package(tmp_path / "modes", network, manifest)))
    image = plate()
    assert torch.allclose(run(runner, "modes", image), image, atol=1e-6)
    assert torch.allclose(run(runner, "modes", image, mode="three"), 3 * image, atol=1e-6)
    flipped = run(runner, "modes", image, mode="two", flip=True)
    assert torch.allclose(flipped, -2 * image, atol=1e-6)


def attribute_package(folder: Path, rounds: int = 12) -> Path:
    """A package whose ``amount`` knob sets the ``amount`` attribute of a scripted module."""
    network = save_script(Scale(rounds), folder.parent / f"{folder.name}.pt")
    manifest = IMAGE_IO.format(id=folder.name) + (
        '\n[[knobs]]\nname = "amount"\ntype = "float"\ndefault = 1.0\nfeed = "attribute"\n'
    )
    return make_package(folder, network, manifest)


def test_an_attribute_knob_sets_the_module_attribute(tmp_path: Path) -> None:
    runner = Runner(registry_of(attribute_package(tmp_path / "scale", rounds=1)))
    image = plate()
    assert torch.allclose(run(runner, "scale", image), image, atol=1e-6)
    assert torch.allclose(run(runner, "scale", image, amount=3.0), 3 * image, atol=1e-6)
    assert torch.allclose(run(runner, "scale", image, amount=-0.5), -0.5 * image, atol=1e-6)


def test_concurrent_attribute_knob_values_never_leak_between_requests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_attribute = TorchScriptNetwork.set_attribute

    def set_then_dawdle(self: TorchScriptNetwork, name: str, value: object) -> None:
        set_attribute(self, name, value)
        time.sleep(0.002)  # without the lock, another request would set its value here

    monkeypatch.setattr(TorchScriptNetwork, "set_attribute", set_then_dawdle)
    runner = Runner(registry_of(attribute_package(tmp_path / "scale")))
    image = plate(64, 64)
    run(runner, "scale", image)  # set up once, before the threads start
    failures: list[str] = []
    barrier = threading.Barrier(8)

    def worker(index: int) -> None:
        barrier.wait()
        for round_ in range(6):
            amount = float(index * 10 + round_ + 1)
            output = run(runner, "scale", image, amount=amount)
            if not torch.allclose(output, image * amount, rtol=1e-5, atol=1e-5):
                seen = float((output / image).median())
                failures.append(f"asked for {amount}, got {seen}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert failures == []


def test_an_instance_reads_knobs_only_from_its_call(tmp_path: Path) -> None:
    """Direct use: predict gets (C, H, W) frames and returns the outputs by name."""
    from frameserve.catalogue.packages import load_package_classes
    from frameserve.plugin.knobs import resolve_knobs

    [cls] = load_package_classes(EXAMPLE_PACKAGES / "soften_onnx")
    model = cls()
    model.setup(torch.device("cpu"))
    image = plate()
    knobs = resolve_knobs(cls.spec().knobs, {"strength": 0.2})
    result = model.predict({"image": image}, knobs)
    assert isinstance(result, Mapping)
    assert (result["image"] - reference(image, 0.2)).abs().max() <= TOLERANCE
