"""Tests for frameserve.training.settings: validation, plain data, schedules."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from frameserve.errors import ConfigError
from frameserve.training import ImagePairs, Trainer, TrainingSettings
from tests.training.helpers import fast_settings


def test_the_defaults_are_valid_and_round_trip() -> None:
    settings = TrainingSettings()
    assert TrainingSettings.from_dict(settings.to_dict()) == settings
    assert settings.loss == "l1" and settings.device == "cpu"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"network": "huge"}, "'network': 'huge' is not allowed; choose one of 'small'"),
        ({"crop_size": 100}, "'crop_size': 100 is not a multiple of 8"),
        ({"network": "large", "crop_size": 72}, "not a multiple of 16, the size multiple"),
        ({"crop_size": 4}, "'crop_size': 4 is below the minimum 8"),
        ({"batch_size": 0}, "'batch_size': 0 is below the minimum 1"),
        ({"batch_size": 2.5}, "'batch_size': 2.5 is not allowed; expected a whole number"),
        ({"steps": True}, "'steps': True is not allowed; expected a whole number"),
        ({"learning_rate": 0}, "'learning_rate': 0 is not allowed; expected a number above 0"),
        ({"learning_rate": float("nan")}, "'learning_rate': nan is not allowed"),
        ({"schedule": "linear"}, "'schedule': 'linear' is not allowed; choose one of 'constant'"),
        ({"loss": "huber"}, "'loss': 'huber' is not allowed; choose one of 'l1', 'l2'"),
        ({"flips": "yes"}, "'flips': 'yes' is not allowed; expected true or false"),
        ({"checkpoint_interval": -1}, "'checkpoint_interval': -1 is below the minimum 0"),
        ({"keep_checkpoints": 0}, "'keep_checkpoints': 0 is below the minimum 1"),
        ({"validation_crops": 0}, "'validation_crops': 0 is below the minimum 1"),
        ({"device": "tpu"}, "tpu"),
    ],
)
def test_wrong_values_say_what_is_allowed(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        TrainingSettings(**options)  # type: ignore[arg-type]


def test_settings_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        TrainingSettings("small")  # type: ignore[misc]


def test_unknown_names_in_plain_data_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"unknown training setting.*'epochs'"):
        TrainingSettings.from_dict({"epochs": 3})


@pytest.mark.parametrize("schedule", ["constant", "cosine", "step"])
def test_schedules_start_at_the_rate_and_never_rise(schedule: str) -> None:
    settings = TrainingSettings(steps=100, learning_rate=0.01, schedule=schedule)
    rates = [settings.learning_rate_at(step) for step in range(101)]
    assert rates[0] == 0.01
    assert all(b <= a for a, b in itertools.pairwise(rates))
    if schedule == "constant":
        assert set(rates) == {0.01}
    else:
        assert rates[-1] <= 0.0002


def test_a_crop_larger_than_a_frame_is_refused(pairs: ImagePairs, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'crop_size': 40 is larger than 'random 1' \\(45x37\\)"):
        Trainer(pairs, fast_settings(crop_size=40), job_dir=tmp_path)
