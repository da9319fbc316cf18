"""Tests for label and number jobs: folders, tables, training, the served answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from frameserve.errors import ConfigError
from frameserve.media.imageio import write_image
from frameserve.training import LabelledImages, Trainer, load_trained, trained_model_class
from tests.training.helpers import fast_settings


def noise_image(seed: int, brightness: float, size: tuple[int, int] = (20, 28)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (brightness + 0.1 * rng.standard_normal((3, *size))).astype(np.float32)


@pytest.fixture
def class_folders(tmp_path: Path) -> Path:
    """``dark`` and ``bright`` images of different sizes, four of each."""
    for label, brightness in (("bright", 0.8), ("dark", 0.2)):
        folder = tmp_path / "classes" / label
        folder.mkdir(parents=True)
        for index in range(4):
            image = noise_image(index, brightness, (20 + index, 28 - index))
            write_image(folder / f"{index}.png", np.clip(image, 0, 1))
    return tmp_path / "classes"


def test_classes_come_from_folder_names(class_folders: Path) -> None:
    data = LabelledImages.from_class_folders(class_folders)
    assert data.kind == "label" and data.classes == ("bright", "dark")
    assert [item.target for item in data.train] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert data.out_channels == 2 and data.in_channels == 3


def test_training_a_classifier_reduces_the_loss_and_serves_labels(
    class_folders: Path, tmp_path: Path
) -> None:
    data = LabelledImages.from_class_folders(class_folders, validation_folder=class_folders)
    settings = fast_settings(steps=30, batch_size=8, learning_rate=0.003)
    trainer = Trainer(data, settings, job_dir=tmp_path / "job", name="day or night")
    before = trainer.validate()
    trainer.run()
    after = trainer.validate()
    assert before is not None and after is not None and after < 0.5 * before

    model = trained_model_class(tmp_path / "job")()
    model.setup(torch.device("cpu"))
    frame = {"image": torch.from_numpy(noise_image(9, 0.2, (40, 30)))}
    answer = model.predict(frame, {"checkpoint": "latest", "show": False})
    (result,) = answer.objects  # type: ignore[union-attr]
    assert result.name == "label" and result.records[0]["label"] == "dark"
    assert answer.frames["image"].shape == (3, 40, 30)  # type: ignore[union-attr]

    # The node's button: a PythonScript first (the node runs objects[0]), then the answer.
    pressed = model.predict(frame, {"checkpoint": "latest", "show": True})
    script, labelled = pressed.objects  # type: ignore[union-attr]
    assert script.name == "PythonScript" and labelled.name == "label"
    assert script.records[0]["script"].startswith("nuke.message('dark (")


def test_training_a_regressor_reduces_the_loss(tmp_path: Path) -> None:
    folder = tmp_path / "values"
    folder.mkdir()
    values = {}
    for index, brightness in enumerate(np.linspace(0.1, 0.9, 8)):
        write_image(folder / f"{index}.exr", noise_image(index, float(brightness)))
        values[f"{index}.exr"] = float(brightness) * 10  # in the data's own units
    (folder / "values.json").write_text(json.dumps(values))
    data = LabelledImages.from_value_table(
        folder / "values.json", validation_table=folder / "values.json"
    )
    assert data.kind == "number" and data.out_channels == 1
    trainer = Trainer(
        data, fast_settings(steps=40, batch_size=8, learning_rate=0.003), job_dir=tmp_path / "job"
    )
    before = trainer.validate()
    trainer.run()
    after = trainer.validate()
    assert before is not None and after is not None and after < 0.5 * before
    network, metadata = load_trained(tmp_path / "job")
    assert metadata.kind == "number"
    guess = float(network(torch.from_numpy(noise_image(20, 0.9))[None])[0, 0])
    assert guess > 5.0  # bright: near 9, in the table's units


def test_a_csv_table_may_have_a_header(tmp_path: Path) -> None:
    for index in range(2):
        write_image(tmp_path / f"{index}.png", np.clip(noise_image(index, 0.5), 0, 1))
    (tmp_path / "focus.csv").write_text("file,value\n0.png,1.5\n1.png,2.5\n")
    data = LabelledImages.from_value_table(tmp_path / "focus.csv")
    assert [item.target for item in data.train] == [1.5, 2.5]


def test_a_table_without_numbers_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text(json.dumps({"a.png": "sharp"}))
    with pytest.raises(ConfigError, match=r"row 1: the file has no number") as caught:
        LabelledImages.from_value_table(tmp_path / "bad.json")
    assert "sharp" not in str(caught.value)  # errors never quote a file's contents


def test_a_folder_without_classes_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="holds no class folders"):
        LabelledImages.from_class_folders(tmp_path)
