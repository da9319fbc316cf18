"""Tests for serving trained jobs: the generated model through the Runner, TorchScript export."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from frameserve.catalogue.registry import ModelRegistry
from frameserve.engine.request import build_request
from frameserve.engine.runner import Runner
from frameserve.errors import KnobError
from frameserve.plugin.knobs import ChoiceKnob, StringKnob
from frameserve.training import (
    ImagePairs,
    Trainer,
    export_torchscript,
    load_trained,
    model_id_for,
    trained_model_class,
    write_model_plugin,
)
from frameserve.training.export import METADATA_FILE
from tests.training.helpers import fast_settings, random_pair


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Trainer]:
    """A finished job ('Grade v2') with checkpoints at steps 3 and 6."""
    folder = tmp_path_factory.mktemp("jobs") / "grade"
    pairs = ImagePairs([random_pair(1, 37, 45), random_pair(2, 40, 33)])
    trainer = Trainer(
        pairs, fast_settings(steps=6, checkpoint_interval=3), job_dir=folder, name="Grade v2"
    )
    trainer.run()
    return folder, trainer


def test_the_model_runs_through_the_runner_like_the_trained_network(
    job: tuple[Path, Trainer], tmp_path: Path
) -> None:
    folder, trainer = job
    write_model_plugin(folder, tmp_path / "models" / "grade")
    registry = ModelRegistry([tmp_path / "models"], builtins=False)
    assert [entry.id for entry in registry.entries()] == ["Grade_v2"], registry.entries()
    spec = registry.get("Grade_v2").spec
    assert spec is not None
    frame = torch.rand(3, 61, 83)
    runner = Runner(registry, device="cpu")
    result = runner.run(build_request(spec, [frame], {}))
    expected = trainer.predict(frame[None])[0]
    assert result.frames["image"].shape == (3, 61, 83)
    assert torch.allclose(result.frames["image"], expected, atol=1e-5)
    older = runner.run(build_request(spec, [frame], {"checkpoint": "step_3"})).frames["image"]
    assert not torch.allclose(older, expected, atol=1e-5)


def test_tiles_give_the_untiled_result(job: tuple[Path, Trainer], tmp_path: Path) -> None:
    folder, trainer = job
    plugin = tmp_path / "tiled"
    plugin.mkdir()
    (plugin / "model.py").write_text(
        "from frameserve.training import trained_model_class\n"
        f"Tiled = trained_model_class({str(folder)!r}, model_id='tiled', max_size=256, "
        "module=__name__)\n"
    )
    registry = ModelRegistry([plugin], builtins=False)
    spec = registry.get("tiled").spec
    assert spec is not None and spec.spatial.overlap == 51
    frame = torch.rand(3, 200, 300)
    tiled = Runner(registry, device="cpu").run(build_request(spec, [frame], {}))
    assert torch.allclose(tiled.frames["image"], trainer.predict(frame[None])[0], atol=1e-4)


def test_the_model_declares_what_the_job_learnt(job: tuple[Path, Trainer]) -> None:
    folder, _ = job
    spec = trained_model_class(folder).spec()
    assert spec.id == "Grade_v2" and spec.label == "Grade v2 (trained)"
    assert [(i.name, i.channels) for i in spec.inputs] == [("image", 3)]
    assert spec.spatial.fully_convolutional and spec.spatial.size_multiple == 8
    assert spec.cacheable  # finished: "latest" no longer changes
    (knob,) = spec.knobs
    assert isinstance(knob, ChoiceKnob) and knob.choices == ("latest", "step_6", "step_3")


def test_while_training_the_knob_is_free_and_results_are_not_cached(
    job: tuple[Path, Trainer],
) -> None:
    folder, _ = job
    spec = trained_model_class(folder, training=True).spec()
    assert not spec.cacheable and isinstance(spec.knobs[0], StringKnob)
    model = trained_model_class(folder, training=True)()
    model.setup(torch.device("cpu"))
    with pytest.raises(KnobError, match="'step_4' is not allowed; choose one of latest, step_3"):
        model.predict({"image": torch.rand(3, 16, 16)}, {"checkpoint": "step_4"})


def test_model_ids_are_made_from_job_names() -> None:
    assert model_id_for("Degrain v2 (final)") == "Degrain_v2__final_"
    assert model_id_for("...") == "trained"


def test_torchscript_export_gives_the_same_output(
    job: tuple[Path, Trainer], tmp_path: Path
) -> None:
    folder, trainer = job
    path = export_torchscript(folder, tmp_path / "grade.pt")
    extra = {METADATA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated
        module = torch.jit.load(str(path), _extra_files=extra)
    assert json.loads(extra[METADATA_FILE])["name"] == "Grade v2"
    for height, width in ((37, 45), (64, 64), (5, 3)):
        frames = torch.rand(2, 3, height, width)
        with torch.no_grad():
            exported = module(frames)
        assert exported.shape == (2, 3, height, width)
        if min(height, width) > 8:  # the engine mirrors tiny frames back and forth instead
            assert (exported - trainer.predict(frames)).abs().max() <= 1e-5


def test_load_trained_reads_any_checkpoint(job: tuple[Path, Trainer]) -> None:
    folder, _ = job
    network, metadata = load_trained(folder / "checkpoints" / "step_3.pt")
    assert metadata.step == 3 and not metadata.finished and not network.training
    assert metadata.size_multiple == 8 and metadata.receptive_field == 51
