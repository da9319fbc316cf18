"""Tests for frameserve.training.trainer: determinism, resume, progress, cancel, sheets."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from frameserve.errors import ConfigError
from frameserve.media.imageio import read_image, write_image
from frameserve.training import (
    ImagePairs,
    Trainer,
    TrainingProgress,
    TrainingSettings,
    job_summary,
    list_checkpoints,
    load_trained,
    read_job_file,
)
from frameserve.training.checkpoints import load_checkpoint
from tests.training.helpers import dead_pid, fast_settings, random_pair, the_look


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in trainer.network.state_dict().items()}


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert different == []


def test_the_same_seed_and_data_give_bit_identical_weights(
    pairs: ImagePairs, tmp_path: Path
) -> None:
    settings = fast_settings(steps=8, colour_jitter=True)
    first = Trainer(pairs, settings, job_dir=tmp_path / "a")
    first.run()
    second = Trainer(pairs, settings, job_dir=tmp_path / "b")
    second.run()
    assert_same_weights(weights(first), weights(second))
    other = Trainer(pairs, fast_settings(steps=8, seed=1), job_dir=tmp_path / "c")
    other.run()
    assert not torch.equal(first.network.head.weight, other.network.head.weight)


def test_resuming_gives_the_weights_of_an_uninterrupted_run(
    pairs: ImagePairs, tmp_path: Path
) -> None:
    settings = fast_settings(
        steps=20, checkpoint_interval=4, validation_interval=3, contact_sheet_interval=7
    )
    straight = Trainer(pairs, settings, job_dir=tmp_path / "straight")
    straight.run()
    interrupted = Trainer(pairs, settings, job_dir=tmp_path / "resumed")
    interrupted.run(10)
    assert list_checkpoints(tmp_path / "resumed")[-1].step == 10  # saved when the run ended
    del interrupted
    resumed = Trainer.resume(tmp_path / "resumed", pairs)
    assert resumed.step_count == 10
    resumed.run()
    assert resumed.step_count == 20 and resumed.finished
    assert_same_weights(weights(straight), weights(resumed))
    a = load_checkpoint(list_checkpoints(tmp_path / "straight")[-1].path)
    b = load_checkpoint(list_checkpoints(tmp_path / "resumed")[-1].path)
    for name, value in a["optimizer_state"]["state"].items():
        assert torch.equal(value["exp_avg"], b["optimizer_state"]["state"][name]["exp_avg"])


def test_a_job_from_files_resumes_without_being_given_its_data(tmp_path: Path) -> None:
    frame = np.random.default_rng(0).random((3, 24, 30), dtype=np.float32)
    write_image(tmp_path / "in.exr", frame)
    write_image(tmp_path / "out.exr", the_look(frame))
    pairs = ImagePairs.from_files([(tmp_path / "in.exr", tmp_path / "out.exr")])
    Trainer(pairs, fast_settings(steps=4), job_dir=tmp_path / "job").run(2)
    resumed = Trainer.resume(tmp_path / "job")
    resumed.run()
    assert resumed.finished
    write_image(tmp_path / "out.exr", the_look(frame) + 0.5)  # the artist changed a target
    with pytest.raises(ConfigError, match="differs from what job 'job' trained on"):
        Trainer.resume(tmp_path / "job")


def test_a_job_from_arrays_must_be_given_its_data_to_resume(
    pairs: ImagePairs, tmp_path: Path
) -> None:
    Trainer(pairs, fast_settings(), job_dir=tmp_path).run(2)
    with pytest.raises(ConfigError, match="were given as arrays, not files"):
        Trainer.resume(tmp_path)
    other = ImagePairs([random_pair(9, 37, 45)])
    with pytest.raises(ConfigError, match="differs from what job"):
        Trainer.resume(tmp_path, other)


def test_a_folder_with_checkpoints_is_not_reused(pairs: ImagePairs, tmp_path: Path) -> None:
    Trainer(pairs, fast_settings(), job_dir=tmp_path).run(1)
    with pytest.raises(ConfigError, match="already holds checkpoints; resume it"):
        Trainer(pairs, fast_settings(), job_dir=tmp_path)


def test_a_planned_job_writes_the_job_file_a_trainer_would(
    pairs: ImagePairs, tmp_path: Path
) -> None:
    settings = fast_settings()
    Trainer.plan(pairs, settings, job_dir=tmp_path / "planned", name="grade")
    assert not (tmp_path / "planned" / "checkpoints").exists()  # no network, nothing trained
    Trainer(pairs, settings, job_dir=tmp_path / "built", name="grade")
    assert read_job_file(tmp_path / "planned") == read_job_file(tmp_path / "built")
    with pytest.raises(ConfigError, match="'crop_size': 64 is larger"):
        Trainer.plan(pairs, fast_settings(crop_size=64), job_dir=tmp_path / "big")
    Trainer(pairs, settings, job_dir=tmp_path / "built").run(1)
    with pytest.raises(ConfigError, match="already holds checkpoints; resume it"):
        Trainer.plan(pairs, settings, job_dir=tmp_path / "built")


def test_progress_is_reported_after_every_step(pairs: ImagePairs, tmp_path: Path) -> None:
    reports: list[TrainingProgress] = []
    settings = fast_settings(steps=6, validation_interval=2, checkpoint_interval=3)
    Trainer(pairs, settings, job_dir=tmp_path, on_progress=reports.append).run()
    assert [p.step for p in reports] == [1, 2, 3, 4, 5, 6]
    assert reports[0].validation_loss is None and reports[1].validation_loss is not None
    assert [p.checkpoint is not None for p in reports] == [False, False, True, False, False, True]
    last = reports[-1]
    assert last.finished and last.total_steps == 6 and last.eta_seconds == 0
    assert last.steps_per_second > 0 and last.elapsed_seconds > 0
    assert np.isfinite(last.loss) and np.isfinite(last.train_loss)


def test_should_stop_is_checked_before_every_step_and_ends_with_a_checkpoint(
    pairs: ImagePairs, tmp_path: Path
) -> None:
    calls = 0

    def should_stop() -> bool:
        nonlocal calls
        calls += 1
        return calls > 4

    trainer = Trainer(pairs, fast_settings(steps=100_000), job_dir=tmp_path)
    progress = trainer.run(should_stop=should_stop)
    assert trainer.step_count == 4 and calls == 5
    assert progress is not None and progress.checkpoint == list_checkpoints(tmp_path)[-1].path
    assert list_checkpoints(tmp_path)[-1].step == 4


def test_steps_are_short_enough_for_a_prompt_cancel(pairs: ImagePairs, tmp_path: Path) -> None:
    settings = TrainingSettings(crop_size=32, checkpoint_interval=0, validation_interval=0)
    trainer = Trainer(pairs, settings, job_dir=tmp_path)
    trainer.step()  # warm-up
    durations = []
    for _ in range(3):
        started = time.perf_counter()
        trainer.step()
        durations.append(time.perf_counter() - started)
    assert min(durations) < 1.0  # a cancel waits for at most one step


def test_old_checkpoints_are_pruned_and_leftovers_removed(
    pairs: ImagePairs, tmp_path: Path
) -> None:
    settings = fast_settings(steps=8, checkpoint_interval=2, keep_checkpoints=2)
    Trainer(pairs, settings, job_dir=tmp_path).run(4)
    killed = dead_pid()
    leftover = tmp_path / "checkpoints" / f".step_6.tmp-{killed}-0123456789ab.pt"
    leftover.write_bytes(b"half a checkpoint")  # of a process that is gone
    sheet = tmp_path / "contact_sheets" / f".step_6.tmp-{killed}-0123456789ab.png"
    sheet.parent.mkdir()
    sheet.write_bytes(b"half a sheet")
    in_progress = tmp_path / "checkpoints" / f".step_7.tmp-{os.getpid()}-0123456789ab.pt"
    in_progress.write_bytes(b"being written")  # by a process still running: kept
    Trainer.resume(tmp_path, pairs).run()
    assert [entry.name for entry in list_checkpoints(tmp_path)] == ["step_6", "step_8"]
    assert not leftover.exists() and not sheet.exists()
    assert in_progress.exists()


def test_a_contact_sheet_is_a_png_of_input_prediction_and_target(
    pairs: ImagePairs, tmp_path: Path
) -> None:
    settings = fast_settings(steps=4, contact_sheet_interval=2, contact_sheet_samples=3)
    progress = Trainer(pairs, settings, job_dir=tmp_path).run()
    assert progress is not None and progress.contact_sheet is not None
    sheets = sorted((tmp_path / "contact_sheets").glob("*.png"))
    assert [p.name for p in sheets] == ["step_2.png", "step_4.png"]
    image = read_image(sheets[-1])
    gap = 4
    assert image.pixels.shape == (3, 3 * (16 + gap) + gap, 3 * (16 + gap) + gap)
    assert sheets[-1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_job_file_and_checkpoints_describe_the_job(pairs: ImagePairs, tmp_path: Path) -> None:
    Trainer(pairs, fast_settings(steps=3), job_dir=tmp_path, name="grade").run()
    job = read_job_file(tmp_path)
    assert job["name"] == "grade" and job["task"]["kind"] == "image"
    assert [f["name"] for f in job["task"]["frames"]] == ["random 1", "random 2", "random 3"]
    summary = job_summary(tmp_path)
    assert summary["step"] == 3 and summary["finished"] and summary["checkpoints"] == ["step_3"]
    _, metadata = load_trained(tmp_path)
    assert metadata.step == 3 and metadata.finished and metadata.settings.steps == 3
    assert metadata.frames[2]["split"] == "validation"


def test_the_network_learns_the_look(pairs: ImagePairs, tmp_path: Path) -> None:
    settings = fast_settings(steps=120, learning_rate=0.003, batch_size=4)
    trainer = Trainer(pairs, settings, job_dir=tmp_path)
    before = trainer.validate()
    trainer.run()
    after = trainer.validate()
    assert before is not None and after is not None and after < 0.5 * before


def test_a_step_after_the_end_is_refused(pairs: ImagePairs, tmp_path: Path) -> None:
    trainer = Trainer(pairs, fast_settings(steps=1), job_dir=tmp_path)
    trainer.run()
    with pytest.raises(ConfigError, match="has done all its 1 steps"):
        trainer.step()
