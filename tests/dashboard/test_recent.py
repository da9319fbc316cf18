"""The engine's ring of recent requests, which the dashboard's overview shows."""

from __future__ import annotations

import threading

from frameserve.engine.recent import SAMPLES_PER_MINUTE, RecentRequests


def test_the_newest_come_first_and_the_ring_is_bounded() -> None:
    recent = RecentRequests(capacity=5)
    for index in range(12):
        recent.add(model=f"m{index}", protocol="http", outcome="ok", seconds=0.001, user="maya")
    latest = recent.latest(10)
    assert [r.model for r in latest] == ["m11", "m10", "m9", "m8", "m7"]
    assert recent.sequence == 12
    assert [r.model for r in recent.latest(10, after=11)] == ["m11"]  # sequences start at 1
    assert latest[0].to_dict()["milliseconds"] == 1.0


def test_each_minute_has_its_count_errors_and_percentiles() -> None:
    recent = RecentRequests(clock=lambda: 1_800_000_030.0)  # one minute, whenever this runs
    for ms in range(1, 101):  # 1 ... 100 ms
        recent.add(model="blur", protocol="mlclient", outcome="ok", seconds=ms / 1000)
    recent.add(model="blur", protocol="http", outcome="400", seconds=0.5)
    (minute,) = recent.per_minute()
    assert minute["minute"] == 1_800_000_000
    assert minute["count"] == 101 and minute["errors"] == 1
    assert minute["p50_ms"] == 51.0
    assert minute["p95_ms"] == 96.0


def test_a_busy_minute_keeps_a_bounded_sample() -> None:
    recent = RecentRequests(capacity=10, clock=lambda: 1_800_000_030.0)
    threads = [
        threading.Thread(
            target=lambda: [
                recent.add(model="x", protocol="http", outcome="ok", seconds=0.01)
                for _ in range(500)
            ]
        )
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    (minute,) = recent.per_minute()
    assert minute["count"] == 2000
    assert minute["p50_ms"] == 10.0
    assert len(recent._minutes[-1].samples) == SAMPLES_PER_MINUTE
    assert len(recent.latest(100)) == 10


def test_minutes_older_than_the_window_are_left_out() -> None:
    now = [1_800_000_030.0]
    recent = RecentRequests(window_minutes=3, clock=lambda: now[0])
    for _ in range(5):
        recent.add(model="x", protocol="http", outcome="ok", seconds=0.01)
        now[0] += 60
    assert [m["minute"] for m in recent.per_minute()] == [1_800_000_180, 1_800_000_240]
