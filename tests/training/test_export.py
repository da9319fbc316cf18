"""Exporting a trained job as a model package: atomic, checked, and the job's pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from frameserve.catalogue.packages import MANIFEST_FILE, read_manifest
from frameserve.catalogue.registry import ModelRegistry
from frameserve.cli.main import main
from frameserve.engine.request import build_request
from frameserve.engine.runner import Runner
from frameserve.errors import ConfigError
from frameserve.training import LabelledImage, LabelledImages, Trainer, write_model_plugin
from frameserve.training.export import export_package
from tests.training.helpers import fast_settings, small_pairs

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small image job trained a few steps (not residual: its network is far from identity)."""
    folder = tmp_path_factory.mktemp("export") / "jobs" / "look"
    trainer = Trainer(
        small_pairs(),
        fast_settings(steps=4, residual=False, checkpoint_interval=2),
        job_dir=folder,
        name="look",
    )
    trainer.run()
    return folder


def run(runner: Runner, model_id: str, frame: torch.Tensor, **knobs: object) -> torch.Tensor:
    spec = runner.registry.get(model_id).spec
    assert spec is not None
    return runner.run(build_request(spec, [frame], knobs)).frames["image"]


def plate(height: int, width: int) -> torch.Tensor:
    """Scene-linear RGB with values above 1 and below 0 (nothing is clipped on the way)."""
    return torch.rand((3, height, width), generator=torch.Generator().manual_seed(5)) * 3 - 0.5


@pytest.mark.parametrize("network_format", ["pt", "pt2", "onnx"])
def test_package_serves_the_jobs_pixels(job: Path, tmp_path: Path, network_format: str) -> None:
    models = tmp_path / "models"
    write_model_plugin(job, models / "look", model_id="look")
    report = export_package(
        job, models / "look_pkg", network_format=network_format, model_id="look_pkg"
    )
    assert report.manifest.network.name == f"look_pkg.{network_format}"
    assert sorted(p.name for p in models.iterdir()) == ["look", "look_pkg"]  # no staging left
    registry = ModelRegistry([models], builtins=False)
    assert [(e.id, e.error) for e in registry.entries() if not e.ok] == []
    runner = Runner(registry, device="cpu")
    for frame in (plate(37, 45), plate(64, 80)):  # padded to the size multiple, and not
        served = run(runner, "look", frame)
        packaged = run(runner, "look_pkg", frame)
        assert packaged.shape == served.shape == frame.shape
        assert not torch.allclose(served, frame, atol=1e-2)  # a network, not a pass-through
        torch.testing.assert_close(packaged, served, rtol=0, atol=TOLERANCE)


def test_package_of_an_older_checkpoint_and_its_manifest(job: Path, tmp_path: Path) -> None:
    out = tmp_path / "early"
    export_package(job, out, checkpoint="step_2", version="0.2.0")
    manifest = read_manifest(out / MANIFEST_FILE)
    assert (manifest.id, manifest.version, manifest.label) == ("look", "0.2.0", "look (trained)")
    assert "step 2 of 4" in manifest.description
    assert manifest.spatial.fully_convolutional and manifest.spatial.size_multiple == 8
    registry = ModelRegistry([tmp_path], builtins=False)
    write_model_plugin(job, tmp_path / "job_model", model_id="job_model")
    registry.reload()
    runner = Runner(registry, device="cpu")
    frame = plate(40, 48)
    early = run(runner, "look", frame)
    torch.testing.assert_close(
        early, run(runner, "job_model", frame, checkpoint="step_2"), rtol=0, atol=TOLERANCE
    )
    assert not torch.allclose(early, run(runner, "job_model", frame), atol=1e-4)


def test_export_refuses_and_leaves_things_as_they_were(job: Path, tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    export_package(job, out)
    before = (out / MANIFEST_FILE).read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        export_package(job, out, version="9.9.9")
    assert (out / MANIFEST_FILE).read_bytes() == before
    with pytest.raises(ConfigError, match="step_7"):
        export_package(job, tmp_path / "other", checkpoint="step_7")
    with pytest.raises(ConfigError, match="pt, pt2, onnx"):
        export_package(job, tmp_path / "other", network_format="tflite")
    export_package(job, out, version="2.0.0", force=True)
    assert read_manifest(out / MANIFEST_FILE).version == "2.0.0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]


def test_label_jobs_do_not_export_to_packages(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = [LabelledImage(rng.random((3, 16, 16), dtype=np.float32), i % 2) for i in range(4)]
    data = LabelledImages("label", images, classes=("day", "night"))
    Trainer(data, fast_settings(steps=1), job_dir=tmp_path / "labels", name="labels").run()
    with pytest.raises(ConfigError, match="label job"):
        export_package(tmp_path / "labels", tmp_path / "pkg")
    assert not (tmp_path / "pkg").exists()


def test_cli_export_local(job: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "from_cli"
    code = main(
        ["export", str(job), "--local", "--out", str(out), "--checkpoint", "2", "--id", "cli"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "cli 1.0.0" in printed
    assert read_manifest(out / MANIFEST_FILE).id == "cli"
    assert main(["export", str(job), "--local", "--out", str(out)]) == 2  # exists: no --force
    assert "already exists" in capsys.readouterr().err
    script = tmp_path / "bare.pt"
    assert main(["export", str(job), "--local", "--torchscript", str(script)]) == 0
    assert script.is_file()
