"""Frames in shared memory: leases, reuse, finding a tensor's segment, sharing with a peer."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
from collections import deque
from pathlib import Path

import numpy as np
import pytest
import torch

from frameserve.engine.workers.transport import FrameRef, PeerSegments, SegmentPool
from tests.engine.workers.lab import frame_mappings

SHAPE = (3, 64, 96)


@pytest.fixture
def pool() -> SegmentPool:
    made = SegmentPool(idle_bytes=64 << 20)
    yield made
    made.close()


def address(array: np.ndarray) -> int:
    return int(array.ctypes.data)


def test_a_frame_is_float32_of_its_shape_and_writable(pool: SegmentPool) -> None:
    frame = pool.frame(SHAPE)
    assert frame.shape == SHAPE and frame.dtype == np.float32 and frame.flags.writeable
    frame[...] = 1.5
    assert float(torch.from_numpy(frame).sum()) == 1.5 * frame.size


def test_a_segment_is_reused_only_once_every_view_of_it_is_gone(pool: SegmentPool) -> None:
    first = pool.frame(SHAPE)
    where = address(first)
    tensor = torch.from_numpy(first)[1:]  # a view of a view keeps the lease
    del first
    gc.collect()
    second = pool.frame(SHAPE)
    assert address(second) != where, "a segment was handed out while a tensor still used it"
    second[...] = 1.0
    assert float(tensor.sum()) != float(tensor.numel()), "a leased frame was written over"
    del tensor
    third = pool.frame(SHAPE)
    assert address(third) == where, "a free segment of the right size was not reused"
    del second, third


def test_a_segment_serves_frames_of_nearby_sizes_only(pool: SegmentPool) -> None:
    big = pool.frame((3, 1080, 1920))
    where = address(big)
    del big
    small = pool.frame((3, 8, 8))  # far smaller: its own segment, the big one stays free
    assert address(small) != where
    again = pool.frame((3, 1080, 1919))
    assert address(again) == where


def test_locate_finds_a_frame_and_its_views(pool: SegmentPool) -> None:
    frame = torch.from_numpy(pool.frame((4, 16, 8)))
    ref = pool.locate(frame)
    assert ref is not None and ref.offset == 0 and ref.shape == (4, 16, 8)
    assert ref.strides == (16 * 8 * 4, 8 * 4, 4)
    rgb = pool.locate(frame[:3])
    assert rgb is not None and rgb.segment == ref.segment and rgb.shape == (3, 16, 8)
    plane = pool.locate(frame[2])
    assert plane is not None and plane.offset == 2 * 16 * 8 * 4 and plane.shape == (16, 8)


def test_locate_answers_none_for_memory_it_did_not_hand_out(pool: SegmentPool) -> None:
    assert pool.locate(torch.zeros(SHAPE)) is None
    assert pool.locate(torch.from_numpy(pool.frame(SHAPE)).double()) is None


def test_a_leased_view_holds_the_lease(pool: SegmentPool) -> None:
    frame = pool.frame(SHAPE)
    frame[...] = 4.0
    ref = pool.locate(torch.from_numpy(frame))
    assert ref is not None
    view = pool.leased_view(ref)
    where = address(frame)
    del frame
    assert view is not None and float(view.mean()) == 4.0
    assert address(pool.frame(SHAPE)) != where  # still leased by the view
    del view
    assert address(pool.frame(SHAPE)) == where


def test_descriptors_go_to_each_peer_once(pool: SegmentPool) -> None:
    frame = torch.from_numpy(pool.frame(SHAPE))
    ref = pool.locate(frame)
    assert ref is not None
    first = pool.descriptors("a", [ref.segment, ref.segment])
    assert [(segment, size) for segment, size, _ in first] == [(ref.segment, first[0][1])]
    assert pool.descriptors("a", [ref.segment]) == []
    assert len(pool.descriptors("b", [ref.segment])) == 1


def test_a_tainted_segment_is_destroyed_not_reused_and_its_peers_are_told(
    pool: SegmentPool,
) -> None:
    frame = pool.frame(SHAPE)
    ref = pool.locate(torch.from_numpy(frame))
    assert ref is not None
    pool.descriptors("worker", [ref.segment])
    pool.taint([ref.segment])
    del frame
    after = pool.locate(torch.from_numpy(pool.frame(SHAPE)))
    assert after is not None and after.segment != ref.segment
    assert pool.forgotten("worker") == [ref.segment]
    assert pool.forgotten("worker") == []


def test_free_segments_beyond_the_idle_budget_are_destroyed(pool: SegmentPool) -> None:
    frames = [pool.frame((3, 1080, 1920)) for _ in range(4)]  # 4 x 24 MiB; 64 MiB are kept
    assert pool.stats()[0] == 4
    del frames
    count, size = pool.stats()
    assert count == 2 and size <= 64 << 20


def test_closing_destroys_free_segments_and_unmaps_them(pool: SegmentPool) -> None:
    gc.collect()  # segments of earlier tests' pools
    before = frame_mappings()
    kept = pool.frame(SHAPE)
    dropped = pool.frame(SHAPE)
    del dropped
    assert frame_mappings() == before + 2
    pool.close()
    gc.collect()
    assert frame_mappings() == before + 1  # the one still leased stays valid
    kept[...] = 1.0
    del kept
    gc.collect()
    assert frame_mappings() == before


def test_nothing_is_left_in_dev_shm(pool: SegmentPool) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm on this system")
    before = set(shm.iterdir())
    frames = [pool.frame(SHAPE) for _ in range(3)]
    assert set(shm.iterdir()) == before  # anonymous memory: never a name in /dev/shm
    del frames


def test_peer_arrays_see_the_makers_writes_and_report_their_release(pool: SegmentPool) -> None:
    frame = pool.frame(SHAPE)
    ref = pool.locate(torch.from_numpy(frame))
    assert ref is not None
    ((segment, size, fd),) = pool.descriptors("peer", [ref.segment])
    peer = PeerSegments()
    peer.add(segment, size, os.dup(fd))
    released: deque[int] = deque()
    seen = peer.array(ref, on_release=(released, segment))
    frame[...] = 7.0
    assert float(seen.mean()) == 7.0
    plane = torch.from_numpy(seen)[0]
    del seen
    assert not released
    del plane
    assert list(released) == [segment]
    peer.forget([segment])
    with pytest.raises(KeyError):
        peer.array(ref)


def test_a_reference_past_its_segment_is_refused(pool: SegmentPool) -> None:
    frame = pool.frame((3, 8, 8))
    ref = pool.locate(torch.from_numpy(frame))
    assert ref is not None
    ((segment, size, fd),) = pool.descriptors("peer", [ref.segment])
    peer = PeerSegments()
    peer.add(segment, size, os.dup(fd))
    with pytest.raises(ValueError, match="runs past"):
        peer.array(FrameRef(segment, size - 4, (3, 8, 8), (256, 32, 4)))


def test_another_process_writes_into_a_segment_in_place(pool: SegmentPool, tmp_path: Path) -> None:
    frame = pool.frame((3, 4, 4))
    frame[...] = 0.0
    ref = pool.locate(torch.from_numpy(frame))
    assert ref is not None
    ((_, size, fd),) = pool.descriptors("child", [ref.segment])
    script = textwrap.dedent(
        f"""
        import mmap, numpy
        memory = mmap.mmap({fd}, {size}, flags=mmap.MAP_SHARED)
        numpy.frombuffer(memory, numpy.float32, count=48)[:] = 2.5
        """
    )
    subprocess.run([sys.executable, "-c", script], pass_fds=(fd,), check=True, timeout=60)
    assert float(frame.min()) == float(frame.max()) == 2.5
