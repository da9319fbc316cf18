"""The job records on disk: plain JSON, read back after a restart, leftovers cleaned up."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from frameserve.errors import ConfigError
from frameserve.training import TrainingProgress, TrainingSettings
from frameserve.training.jobs import JobKind, JobState
from frameserve.training.jobs.status import job_status
from frameserve.training.jobs.store import (
    QUEUE_FILE,
    JobRecord,
    check_job_name,
    hide_job_folder,
    load_records,
)
from tests.training.helpers import dead_pid


def a_record(folder: Path, name: str = "degrain", **changes: object) -> JobRecord:
    record = JobRecord(
        folder=folder / name,
        name=name,
        state=JobState.QUEUED,
        files={"kind": "label", "path": "/shots", "validation": None},
        settings=TrainingSettings(steps=10, device="auto").to_dict(),
        device="cpu",
    )
    for field, value in changes.items():
        setattr(record, field, value)
    return record


def test_states_and_kinds_are_plain_text_on_disk_and_read_back(tmp_path: Path) -> None:
    record = a_record(tmp_path, state=JobState.FAILED, error="out of memory")
    record.keep_progress(
        TrainingProgress(
            step=4, total_steps=10, loss=0.5, train_loss=float("nan"), validation_loss=0.25,
            learning_rate=1e-3, steps_per_second=3.0, eta_seconds=2.0, elapsed_seconds=1.5,
        )
    )  # fmt: skip
    record.save()
    text = (tmp_path / "degrain" / QUEUE_FILE).read_text()
    data = json.loads(text)
    assert data["state"] == "failed" and data["files"]["kind"] == "label"
    assert "JobState" not in text and "NaN" not in text
    assert data["progress"] == {
        "step": 4, "loss": None, "validation_loss": 0.25, "elapsed_seconds": 1.5
    }  # fmt: skip
    again = JobRecord.read(tmp_path / "degrain" / QUEUE_FILE)
    assert again == record
    assert again.state is JobState.FAILED and again.kind is JobKind.LABEL
    assert JobState.QUEUED.active and JobState.RUNNING.active and not JobState.DONE.active
    status = job_status(again, None, []).to_dict()
    assert (status["state"], status["kind"], status["step"]) == ("failed", "label", 0)
    assert type(status["state"]) is str and type(status["kind"]) is str


def test_load_records_reads_jobs_and_skips_what_is_no_job(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a_record(tmp_path, "b").save()
    a_record(tmp_path, "a", state=JobState.DONE).save()
    unknown = a_record(tmp_path, "c").to_dict() | {"state": "paused"}
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / QUEUE_FILE).write_text(json.dumps(unknown))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / QUEUE_FILE).write_text('{"name": "d", "sta')  # written by hand, cut
    a_record(tmp_path, ".uploads").save()  # hidden folders hold no job
    older = a_record(tmp_path, "e").to_dict()
    del older["device"]  # a record of before devices were resolved
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / QUEUE_FILE).write_text(json.dumps(older))
    with caplog.at_level(logging.WARNING):
        records = load_records(tmp_path)
    assert [record.name for record in records] == ["a", "b", "e"]
    assert records[0].state is JobState.DONE and records[2].device == "auto"
    assert "'paused'" in caplog.text and "/d/" in caplog.text
    assert load_records(tmp_path / "nowhere") == []


def test_load_records_removes_leftovers_of_killed_writes_and_deletions(tmp_path: Path) -> None:
    record = a_record(tmp_path)
    record.save()
    killed = tmp_path / "degrain" / f".queue.tmp-{dead_pid()}-0123456789ab.json"
    killed.write_text('{"name": "degr')
    checkpoint = tmp_path / "degrain" / "checkpoints" / f".step_4.tmp-{dead_pid()}-0123456789ab.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"half a checkpoint")
    under_way = tmp_path / "degrain" / f".queue.tmp-{os.getpid()}-0123456789ab.json"
    under_way.write_text('{"name": "degr')
    gone = a_record(tmp_path, "gone", state=JobState.DONE)
    gone.save()
    hidden = hide_job_folder(gone.folder)
    assert hidden.name.startswith(".deleted-gone-") and not gone.folder.exists()
    assert [r.name for r in load_records(tmp_path)] == ["degrain"]
    assert not killed.exists() and not checkpoint.exists() and under_way.exists()
    assert not hidden.exists()


@pytest.mark.parametrize("name", ["", ".hidden", "../up", "a/b", "x" * 65, 5])
def test_job_names_are_folder_names(name: object) -> None:
    with pytest.raises(ConfigError, match="job name"):
        check_job_name(name)
    assert check_job_name("Degrain_v2.1-final") == "Degrain_v2.1-final"
