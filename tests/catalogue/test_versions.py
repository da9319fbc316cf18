"""Model versions: numbered version folders, declared versions, tokens, providers, and serving.

A model folder may hold numbered versions (``scale/1/model.py``, ``scale/2/model.py``); the
newest serves by default, HTTP serves any version by path, the MLClient node sees the newest
with its version in the label, and neither the runner nor the result cache ever mixes two
versions (or a model before and after its files changed).
"""

from __future__ import annotations

import logging
import os
import sys
import types
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from frameserve import ImageSpec, Model
from frameserve.catalogue.registry import ModelEntry, ModelRegistry
from frameserve.engine.cache import request_key
from frameserve.engine.request import build_request
from frameserve.engine.runner import Runner
from frameserve.errors import ConfigError, ModelNotFoundError
from frameserve.serve.server import FrameServer
from tests.support.model_folders import (
    frame,
    http_call,
    http_infer,
    index_of,
    menu,
    node_infer,
    scale_source,
    write_file,
    write_model,
)
from tests.support.servers import start_server


@pytest.fixture
def versioned(tmp_path: Path) -> Path:
    """A models folder: ``scale`` in versions 1 (x1) and 2 (x2), and ``solo`` (x5)."""
    root = tmp_path / "models"
    write_model(root / "scale" / "1", scale_source("scale", 1.0, label="Scale"))
    write_model(root / "scale" / "2", scale_source("scale", 2.0, label="Scale"))
    write_model(root / "solo", scale_source("solo", 5.0, label="Solo"))
    return root


def versions_of(registry: ModelRegistry) -> dict[str, list[str]]:
    return {e.id: registry.versions(e.id) for e in registry.newest()}


# -- the registry ------------------------------------------------------------------------------


def test_numbered_folders_are_versions_and_the_newest_is_the_default(versioned: Path) -> None:
    registry = ModelRegistry([versioned], builtins=False)
    assert versions_of(registry) == {"scale": ["1", "2"], "solo": ["1"]}
    assert registry.get("scale").version == "2"
    first, second = registry.get("scale", "1"), registry.get("scale", "2")
    assert first.source == str(versioned / "scale" / "1" / "model.py")
    assert first.model_class is not second.model_class
    assert first.token and second.token and first.token != second.token
    assert [(e.id, e.version) for e in registry.available()] == [
        ("scale", "1"),
        ("scale", "2"),
        ("solo", "1"),
    ]
    assert [e.version for e in registry.newest()] == ["2", "1"]


def test_versions_compare_as_numbers(tmp_path: Path) -> None:
    for number in ("9", "10", "2"):
        write_model(tmp_path / "scale" / number, scale_source("scale", float(number)))
    write_model(tmp_path / "scale" / "03", scale_source("scale", 3.0))  # not a version folder
    registry = ModelRegistry([tmp_path], builtins=False)
    assert registry.versions("scale") == ["2", "9", "10"]
    assert registry.get("scale").version == "10"


def test_a_versioned_folder_may_be_given_directly(versioned: Path) -> None:
    registry = ModelRegistry([versioned / "scale"], builtins=False)
    assert registry.versions("scale") == ["1", "2"]


def test_a_model_class_may_declare_its_version(tmp_path: Path) -> None:
    write_model(tmp_path / "a", scale_source("declared", 1.0, version="3"))
    write_model(tmp_path / "b" / "2", scale_source("numbered", 1.0, version="7"))
    registry = ModelRegistry([tmp_path], builtins=False)
    assert registry.versions("declared") == ["3"]
    assert registry.versions("numbered") == ["2"]  # the folder's number wins


def test_a_wrong_version_is_listed_with_its_error(tmp_path: Path) -> None:
    write_model(tmp_path / "good", scale_source("good", 1.0))
    write_model(tmp_path / "bad", scale_source("bad", 1.0).replace("class Scale", "class Bad"))
    source = (tmp_path / "bad" / "model.py").read_text()
    write_file(tmp_path / "bad" / "model.py", source + "\nBad.version = 3\n")
    registry = ModelRegistry([tmp_path], builtins=False)
    assert [e.id for e in registry.available()] == ["good"]
    (failed,) = [e for e in registry.entries() if not e.ok]
    assert failed.id == "bad"
    assert "version must be a string of letters, digits" in (failed.error or "")
    assert "not 3" in (failed.error or "")


def test_get_an_unknown_version_lists_the_versions(versioned: Path) -> None:
    registry = ModelRegistry([versioned], builtins=False)
    with pytest.raises(ModelNotFoundError) as caught:
        registry.get("scale", "7")
    assert str(caught.value) == "model 'scale' has no version '7'; versions: 1, 2"
    with pytest.raises(ModelNotFoundError, match="unknown model 'nope'"):
        registry.versions("nope")


def test_a_broken_version_leaves_the_others_serving(versioned: Path) -> None:
    write_model(versioned / "scale" / "3", "raise RuntimeError('version three is broken')\n")
    registry = ModelRegistry([versioned], builtins=False)
    assert registry.versions("scale") == ["1", "2"]
    assert registry.get("scale").version == "2"  # the newest that loaded
    failed = registry.failure("scale", "3")
    assert failed is not None and failed.version == "3"
    assert failed.error == "RuntimeError: version three is broken (model.py, line 1)"
    with pytest.raises(ModelNotFoundError, match="version '3' of model 'scale' failed to load"):
        registry.get("scale", "3")


def test_versions_of_one_id_come_from_one_model_folder(versioned: Path, tmp_path: Path) -> None:
    other = write_model(tmp_path / "other" / "scale" / "3", scale_source("scale", 3.0))
    registry = ModelRegistry([versioned, other.parent.parent], builtins=False)
    assert registry.versions("scale") == ["1", "2"]
    failed = registry.failure("scale", "3")
    assert failed is not None and "already used by" in (failed.error or "")


def test_the_token_follows_the_files(tmp_path: Path) -> None:
    folder = write_model(tmp_path / "scale", scale_source("scale", 2.0))
    first = ModelRegistry([tmp_path], builtins=False).get("scale").token
    assert ModelRegistry([tmp_path], builtins=False).get("scale").token == first
    (folder / ".notes.swp").write_text("an editor's file")  # hidden files do not count
    (folder / "__pycache__").mkdir()
    assert ModelRegistry([tmp_path], builtins=False).get("scale").token == first
    (folder / "weights.bin").write_bytes(b"\0" * 16)  # any other file does
    second = ModelRegistry([tmp_path], builtins=False).get("scale").token
    assert second != first
    stat = (folder / "weights.bin").stat()
    os.utime(folder / "weights.bin", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert ModelRegistry([tmp_path], builtins=False).get("scale").token not in (first, second)


def test_an_edit_that_keeps_the_size_is_imported_afresh(tmp_path: Path) -> None:
    """A same-size edit within one second is seen: no stale bytecode is ever used."""
    folder = write_model(tmp_path / "scale", scale_source("scale", 2.0))
    registry = ModelRegistry([tmp_path], builtins=False)
    old = registry.get("scale")
    write_model(folder, scale_source("scale", 3.0))  # same length, one character differs
    assert registry.reload_changed()
    new = registry.get("scale")
    assert new.token != old.token
    assert new.model_class.__module__ != old.model_class.__module__
    assert old.model_class.__module__ not in sys.modules  # the old module is let go
    image = torch.ones(3, 2, 2)
    assert float(new.model_class().predict({"image": image}, {}).mean()) == 3.0  # type: ignore[union-attr]


# -- model packages ----------------------------------------------------------------------------


class _PackagedScale(Model):
    """Stands in for a class made from a package's manifest."""

    id = "packaged"
    version = "1.4.0"
    inputs = [ImageSpec("image", 3)]
    outputs = [ImageSpec("image", 3)]

    def predict(self, frames, knobs):  # type: ignore[no-untyped-def]
        return frames["image"] * 4.0


def test_model_toml_folders_go_to_the_package_loader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Path] = []

    def load_package_classes(folder: Path) -> list[type[Model]]:
        seen.append(folder)
        if (folder / "broken").exists():
            raise ConfigError(f"{folder / 'model.toml'}: 'network' is missing")
        return [_PackagedScale]

    fake = types.ModuleType("frameserve.catalogue.packages")
    fake.load_package_classes = load_package_classes  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "frameserve.catalogue.packages", fake)
    write_file(tmp_path / "packaged" / "model.toml", "id = 'packaged'\n")
    write_file(tmp_path / "versioned" / "2" / "model.toml", "id = 'packaged_v'\n")
    write_file(tmp_path / "broken" / "model.toml", "")
    write_file(tmp_path / "broken" / "broken", "")
    registry = ModelRegistry([tmp_path], builtins=False)
    assert sorted(seen) == sorted(
        [tmp_path / "packaged", tmp_path / "versioned" / "2", tmp_path / "broken"]
    )
    entry = registry.get("packaged")
    assert entry.version == "1.4.0" and entry.source == str(tmp_path / "packaged" / "model.toml")
    assert registry.failure("packaged", "2") is not None  # one id, two model folders
    failed = registry.failure("broken")
    assert failed is not None and failed.error == (
        f"{tmp_path / 'broken' / 'model.toml'}: 'network' is missing"
    )


def test_without_the_package_loader_packages_are_listed_as_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(
        sys.modules, "frameserve.catalogue.packages", None
    )  # as if it were not there
    write_file(tmp_path / "soften" / "model.toml", "id = 'soften'\n")
    write_model(tmp_path / "solo", scale_source("solo", 5.0))
    registry = ModelRegistry([tmp_path], builtins=False)
    assert [e.id for e in registry.available()] == ["solo"]
    failed = registry.failure("soften")
    assert failed is not None and failed.error == "model packages are not available"


class _Triple(torch.nn.Module):
    """A network for a real package: its input times 3."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Return ``image * 3``."""
        return image * 3.0


PACKAGE_MANIFEST = """\
id = "scale"
version = "1.0.0"
network = "net.pt"

[[inputs]]
name = "image"
channels = 3

[[outputs]]
name = "image"
channels = 3
"""


def test_a_real_package_as_a_version_beside_python_ones(tmp_path: Path) -> None:
    write_model(tmp_path / "scale" / "1", scale_source("scale", 1.0))
    package = tmp_path / "scale" / "3"
    package.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated
        torch.jit.script(_Triple()).save(str(package / "net.pt"))
    write_file(package / "model.toml", PACKAGE_MANIFEST)
    write_file(tmp_path / "scale" / "4" / "model.toml", "this is = not [valid toml\n")
    registry = ModelRegistry([tmp_path], builtins=False)
    assert registry.versions("scale") == ["1", "3"]  # the folder's number, not "1.0.0"
    newest = registry.get("scale")
    assert newest.version == "3" and newest.source == str(package / "model.toml")
    image = torch.from_numpy(frame(8))
    result = Runner(registry, device="cpu").run(build_request(newest, [image], {}))
    torch.testing.assert_close(result.frames["image"], image * 3.0)
    failed = registry.failure("scale", "4")
    assert failed is not None and failed.error
    assert failed.source == str(tmp_path / "scale" / "4" / "model.toml")


# -- providers ---------------------------------------------------------------------------------


class _Job(Model):
    id = "job"
    label = "Training job"

    def predict(self, frames, knobs):  # type: ignore[no-untyped-def]
        return frames["image"]


def test_providers_serve_models_that_are_not_files(
    versioned: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = ModelRegistry([versioned], builtins=False)
    step = {"value": 100}
    calls: list[int] = []

    def entries() -> list[ModelEntry]:
        calls.append(step["value"])
        token = f"step-{step['value']}"
        return [ModelEntry.from_class(_Job, source="training job 7", token=token)]

    with caplog.at_level(logging.INFO, logger="frameserve.catalogue.registry"):
        registry.add_provider("training", entries)
        assert registry.get("job").token == "step-100"
        assert [e.id for e in registry.newest()] == ["scale", "solo", "job"]
        step["value"] = 200
        assert registry.refresh_provider("training") == [
            "reloaded model job v1 from provider training"
        ]
        assert registry.get("job").token == "step-200"
        registry.remove_provider("training")
    assert "job" not in registry
    assert calls == [100, 200]
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert lines == [
        "added model job v1 from provider training",
        "reloaded model job v1 from provider training",
        "removed model job v1 of provider training",
    ]
    with pytest.raises(ConfigError, match="no model provider is called 'training'"):
        registry.refresh_provider("training")


def test_a_failing_provider_is_listed_and_disturbs_nothing(versioned: Path) -> None:
    registry = ModelRegistry([versioned], builtins=False)

    def broken() -> list[ModelEntry]:
        raise RuntimeError("the job's checkpoint is unreadable")

    registry.add_provider("training", broken)
    failed = registry.failure("training")
    assert failed is not None and failed.source == "provider training"
    assert (failed.error or "").startswith("RuntimeError: the job's checkpoint is unreadable")
    assert registry.versions("scale") == ["1", "2"]
    with pytest.raises(ConfigError, match="is added already"):
        registry.add_provider("training", broken)


# -- the runner and the cache ------------------------------------------------------------------


def test_the_runner_keeps_one_instance_per_version(versioned: Path) -> None:
    registry = ModelRegistry([versioned], builtins=False)
    runner = Runner(registry, device="cpu")
    image = torch.from_numpy(frame(1))
    for version, factor in (("1", 1.0), ("2", 2.0)):
        request = build_request(registry.get("scale", version), [image], {})
        torch.testing.assert_close(runner.run(request).frames["image"], image * factor)
    newest = build_request(registry.get("scale").spec, [image], {})  # type: ignore[arg-type]
    torch.testing.assert_close(runner.run(newest).frames["image"], image * 2.0)
    assert sorted(runner.loaded_models()) == ["scale", "scale"]
    assert runner.unload("scale", "1") and runner.loaded_models() == ["scale"]


def test_cache_keys_differ_by_version_and_token() -> None:
    digests = [b"x" * 16]
    key = request_key("m", "1", {}, "scene_linear", digests, token="a")
    assert key == request_key("m", "1", {}, "scene_linear", digests, token="a")
    assert key != request_key("m", "2", {}, "scene_linear", digests, token="a")
    assert key != request_key("m", "1", {}, "scene_linear", digests, token="b")


# -- serving -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrameServer]:
    """A server with the built-ins, ``scale`` v1 (x1) and v2 (x2), and ``solo`` (x5)."""
    root = tmp_path_factory.mktemp("versions") / "models"
    write_model(root / "scale" / "1", scale_source("scale", 1.0, label="Scale"))
    write_model(root / "scale" / "2", scale_source("scale", 2.0, label="Scale"))
    write_model(root / "solo", scale_source("solo", 5.0, label="Solo"))
    write_model(root / "tagged", scale_source("tagged", 6.0, label="Tagged", version="4"))
    running = start_server(model_folders=(root,), reload_interval=None)
    yield running
    running.close()


def test_http_serves_the_newest_version_by_default(server: FrameServer) -> None:
    image = frame(2)
    status, (version, output) = http_infer(server, "scale", image)
    assert status == 200 and version == "2"
    np.testing.assert_allclose(output, image * 2.0, rtol=1e-6)


def test_http_serves_an_explicit_version_by_path(server: FrameServer) -> None:
    image = frame(3)
    for version, factor in (("1", 1.0), ("2", 2.0)):
        status, (answered, output) = http_infer(server, "scale", image, version=version)
        assert status == 200 and answered == version
        np.testing.assert_allclose(output, image * factor, rtol=1e-6)


def test_tritonclient_picks_a_version(server: FrameServer) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(server.http_url.removeprefix("http://"))
    try:
        image = np.ascontiguousarray(frame(4).transpose(1, 2, 0))
        tensor = triton.InferInput("image", list(image.shape), "FP32")
        tensor.set_data_from_numpy(image, binary_data=True)
        for version, factor in (("1", 1.0), ("2", 2.0)):
            result = client.infer("scale", [tensor], model_version=version)
            assert result.get_response()["model_version"] == version
            np.testing.assert_allclose(result.as_numpy("image"), image * factor, rtol=1e-6)
        assert client.get_model_metadata("scale")["versions"] == ["1", "2"]
        assert client.get_model_metadata("scale", model_version="1")["versions"] == ["1", "2"]
        assert client.get_model_config("scale", model_version="1")["version"] == "1"
        assert client.get_model_config("scale")["version"] == "2"
        assert client.is_model_ready("scale", model_version="1")
        assert not client.is_model_ready("scale", model_version="7")
    finally:
        client.close()


def test_a_missing_version_is_404_with_the_list(server: FrameServer) -> None:
    for method, path in (
        ("POST", "/v2/models/scale/versions/7/infer"),
        ("GET", "/v2/models/scale/versions/7"),
        ("GET", "/v2/models/scale/versions/7/config"),
    ):
        status, answer = http_call(server, method, path, {} if method == "POST" else None)
        assert status == 404, answer
        assert answer["error"] == "model 'scale' has no version '7'; versions: 1, 2"


def test_the_repository_index_lists_each_version(server: FrameServer) -> None:
    index = index_of(server)
    for key in (("scale", "1"), ("scale", "2"), ("solo", "1"), ("tagged", "4"), ("blur", "1")):
        assert index[key]["state"] == "READY", index[key]


def test_mlclient_lists_the_newest_version_with_the_version_in_its_label(
    server: FrameServer,
) -> None:
    labels = menu(server)
    assert labels["scale"] == "Scale (v2)"  # several versions
    assert labels["tagged"] == "Tagged (v4)"  # a version other than 1
    assert labels["solo"] == "Solo"  # one version, 1: as the model declares it
    assert labels["blur"] == "Gaussian Blur"
    image = frame(5)
    np.testing.assert_allclose(node_infer(server, "scale", image), image * 2.0, rtol=1e-6)


def test_the_cache_never_mixes_versions(server: FrameServer) -> None:
    assert server.cache is not None
    image = frame(6)
    for _ in range(2):  # the second round is answered from the cache
        for version, factor in (("1", 1.0), ("2", 2.0)):
            status, (answered, output) = http_infer(server, "scale", image, version=version)
            assert status == 200 and answered == version
            np.testing.assert_allclose(output, image * factor, rtol=1e-6)
        np.testing.assert_allclose(node_infer(server, "scale", image), image * 2.0, rtol=1e-6)
    assert server.cache.hits >= 3
