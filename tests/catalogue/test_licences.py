"""Licences a studio can act on: every model says what its weights allow; --commercial-only.

A model declares its weights (``weights = (WeightsLicence(...),)``, ``()`` for none); a package
says ``commercial_use``. ``frameserve serve --commercial-only`` lists every model that is not
cleared as failed, with the reason, on both doors; the listings show each model's licences.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from frameserve.catalogue.registry import ModelRegistry
from frameserve.errors import ConfigError
from frameserve.plugin.licences import WeightsLicence, check_weights, commercial_refusal
from frameserve.serve.server import FrameServer
from frameserve.weights import WEIGHTS_FOLDER
from tests.support.model_folders import http_call, write_model
from tests.support.node_client import NodeClient
from tests.support.servers import start_server

NON_COMMERCIAL = {"denoise-dncnn", "motion_vectors_spynet"}  # the TD's own files

PLUGINS = {
    "declares_none": "",
    "no_weights": "    weights = ()\n",
    "research_only": (
        "    weights = (WeightsLicence(name='lab net', licence='CC BY-NC 4.0', "
        "source='a paper', commercial=False),)\n"
    ),
}


def plugin(model_id: str, declaration: str) -> str:
    """A pass-through plug-in ``model_id`` with ``declaration`` in its class body."""
    return (
        "from frameserve import ImageSpec, Model, Prediction, WeightsLicence\n\n\n"
        "class M(Model):\n"
        f"    id = {model_id!r}\n"
        f"{declaration}"
        "    inputs = (ImageSpec('image', 3),)\n"
        "    outputs = (ImageSpec('image', 3),)\n\n"
        "    def predict(self, frames, knobs):\n"
        "        return Prediction(frames={'image': frames['image']})\n"
    )


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("studio")
    for model_id, declaration in PLUGINS.items():
        write_model(folder / model_id, plugin(model_id, declaration))
    return folder


@pytest.fixture(scope="module")
def strict_server(studio: Path) -> Iterator[FrameServer]:
    server = start_server(model_folders=(studio,), commercial_only=True)
    yield server
    server.close()


def test_every_builtin_declares_its_weights_and_ships_their_licence() -> None:
    registry = ModelRegistry(builtins=True)
    for entry in registry.available():
        weights = entry.spec.weights
        assert weights is not None, f"{entry.id} does not declare its weights"
        cleared = all(item.commercial for item in weights)
        assert cleared == (entry.id not in NON_COMMERCIAL), entry.id
        for item in weights:
            assert item.name and item.licence and item.source, entry.id
    for family in (p for p in WEIGHTS_FOLDER.iterdir() if p.is_dir() and p.name != "__pycache__"):
        names = {p.name for p in family.iterdir()}
        assert any(n.startswith("LICENSE") for n in names), f"weights/{family.name}: no LICENSE"


def test_the_refusal_names_the_weights_their_licence_and_why() -> None:
    assert commercial_refusal(()) is None
    assert "does not declare the licence" in str(commercial_refusal(None))
    barred = WeightsLicence(name="lab net", licence="CC BY-NC 4.0", source="x", commercial=False)
    reason = str(commercial_refusal((barred,)))
    assert "not cleared for commercial use: lab net (CC BY-NC 4.0, from x)" in reason
    with pytest.raises(ConfigError, match=r"weights must be a sequence of WeightsLicence"):
        check_weights("MIT", owner="model 'x'")


def test_commercial_only_refuses_what_is_not_cleared_on_both_doors(
    strict_server: FrameServer,
) -> None:
    failed = {e.id: e.error for e in strict_server.engine.catalogue() if not e.ok}
    for model_id in (*NON_COMMERCIAL, "declares_none", "research_only"):
        assert model_id in failed and "refused by --commercial-only" in str(failed[model_id])
    assert "CC BY-NC 4.0" in str(failed["research_only"])
    served = {e.id for e in strict_server.engine.models()}
    assert {"no_weights", "person_matte", "blur"} <= served
    assert not served & {*NON_COMMERCIAL, "declares_none", "research_only"}
    status, answer = http_call(strict_server, "GET", "/v2/models/research_only/ready")
    assert status in (404, 503) and "refused by --commercial-only" in json.dumps(answer)
    listed = [m.name for m in NodeClient(*strict_server.mlclient_address).info().r1.models]
    assert "no_weights" in listed and "research_only" not in listed


def test_the_http_metadata_shows_each_models_weights(strict_server: FrameServer) -> None:
    status, metadata = http_call(strict_server, "GET", "/v2/models/person_matte")
    assert status == 200 and metadata["commercial_use"] is True
    [weights] = metadata["weights"]
    assert weights["licence"] == "MIT" and "clovaai" in weights["source"]
    status, metadata = http_call(strict_server, "GET", "/v2/models/no_weights")
    assert status == 200 and metadata["weights"] == [] and metadata["commercial_use"] is True


def test_a_package_declares_commercial_use_in_its_manifest(tmp_path: Path) -> None:
    base = (
        'id = "{id}"\nversion = "1"\nnetwork = "net.onnx"\nlicence = "MIT"\n{extra}'
        '[[inputs]]\nname = "image"\nchannels = 3\n[[outputs]]\nname = "image"\nchannels = 3\n'
    )
    for model_id, extra in (
        ("pkg_yes", "commercial_use = true\n"),
        ("pkg_no", "commercial_use = false\n"),
        ("pkg_unsaid", ""),
    ):
        folder = tmp_path / model_id
        folder.mkdir()
        (folder / "net.onnx").write_bytes(b"")  # listing a package never loads its network
        (folder / "model.toml").write_text(base.format(id=model_id, extra=extra))
    registry = ModelRegistry([tmp_path], builtins=False, commercial_only=True)
    assert [e.id for e in registry.available()] == ["pkg_yes"]
    [weights] = registry.get("pkg_yes").spec.weights or ()
    assert (weights.licence, weights.commercial) == ("MIT", True)
    errors = {e.id: e.error for e in registry.entries() if not e.ok}
    assert "not cleared for commercial use" in str(errors["pkg_no"])
    assert "does not declare the licence" in str(errors["pkg_unsaid"])


def test_frameserve_models_shows_licences_and_what_commercial_only_refuses(studio: Path) -> None:
    command = [sys.executable, "-m", "frameserve", "models", "--models", str(studio)]
    text = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert "weights: SINet and ExtremeC3Net portrait segmentation; MIT; commercial use: yes" in text
    assert "weights: lab net; CC BY-NC 4.0; commercial use: NO" in text
    assert "weights: licence not declared (not cleared for commercial use)" in text
    strict = subprocess.run(
        [*command, "--commercial-only", "--json"], capture_output=True, text=True, check=True
    ).stdout
    entries = {e["id"]: e for e in json.loads(strict)}
    assert "refused by --commercial-only" in entries["motion_vectors_spynet"]["error"]
    assert entries["person_matte"]["commercial_use"] is True
