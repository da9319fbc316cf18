"""Frames in shared memory: the buffers both sides of a worker boundary read and write in place.

A frame crosses the boundary between the server and a worker process as a :class:`FrameRef`
(segment id, offset, shape, strides) in a small message; its pixels stay where they are, in a
*segment*: an anonymous shared-memory file (``memfd_create``; an unlinked temporary file where
there is none) mapped by both processes. A segment has no name, so nothing is ever left
behind in ``/dev/shm``: its memory goes back to the system when the last process mapping it
lets go, whether the processes stopped cleanly or were killed.

**Who makes what.** Each side has a :class:`SegmentPool` of the segments it makes: the server
for request frames (the front doors write decoded pixels straight into them, so the frame
crosses with no copy), each worker for its output frames (the one copy out: the model's
output into a segment, which the door then sends from directly). A segment's file
descriptor goes to the other side once, with the first message that refers to it; the other
side keeps its mapping in :class:`PeerSegments` until told to forget it.

**Leases and lifetimes.** :meth:`SegmentPool.frame` hands out a numpy array over a segment.
The segment is *leased* while that array, or any view or tensor made from it, is alive (a
finalizer on the array ends the lease); then it goes back to the pool's free list for the next
frame of its size — reused segments are already faulted in, where fresh shared memory costs
about 15 ms per 25 MB (a 1080p RGB float frame) to touch. Free segments beyond
``idle_bytes``, or free for more than :data:`IDLE_SECONDS`, are destroyed, least recently
used first. A result keeps its lease while it is used, so it stays valid even after the
worker that made it has died; the result cache keeps a private copy instead, so that its
segments go back to be reused (``ModelHost.keep``).
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import math
import mmap
import os
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["DEFAULT_IDLE_BYTES", "IDLE_SECONDS", "FrameRef", "PeerSegments", "SegmentPool"]

#: Free segments a pool keeps for reuse, in bytes (about ten 1080p RGB float frames).
DEFAULT_IDLE_BYTES = 256 << 20
#: Seconds a free segment is kept for reuse at most.
IDLE_SECONDS = 60.0
_SMALLEST = 64 << 10
_FLOAT = np.dtype(np.float32)


@dataclass(frozen=True)
class FrameRef:
    """Where a float32 frame lies in a segment: its offset, shape and strides (in bytes)."""

    segment: int
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]

    @property
    def extent(self) -> int:
        """Bytes from ``offset`` to the end of the frame's last value."""
        if any(size == 0 for size in self.shape):
            return 0
        pairs = zip(self.shape, self.strides, strict=True)
        return sum((size - 1) * stride for size, stride in pairs) + 4


def _segment_size(nbytes: int) -> int:
    """Round a request up so that segments of nearby sizes are interchangeable."""
    if nbytes <= _SMALLEST:
        return _SMALLEST
    if nbytes <= 1 << 20:
        return 1 << math.ceil(math.log2(nbytes))
    return -(-nbytes // (1 << 20)) << 20


def _new_file(size: int) -> int:
    """A file descriptor of ``size`` bytes of fresh anonymous shared memory."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("frameserve-frames", os.MFD_CLOEXEC)
    else:  # no memfd (macOS): an unlinked temporary file serves the same purpose
        with tempfile.TemporaryFile(prefix="frameserve-frames-") as handle:
            fd = os.dup(handle.fileno())
    try:
        os.ftruncate(fd, size)
    except OSError:
        os.close(fd)
        raise
    return fd


def _map(fd: int, size: int) -> tuple[mmap.mmap, int]:
    """Map ``fd`` read-write, shared; return the mapping and its address."""
    memory = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    address = int(np.frombuffer(memory, np.uint8, count=1).ctypes.data)
    return memory, address


class _Segment:
    """One segment this process made (see :class:`SegmentPool`)."""

    __slots__ = ("address", "fd", "freed_at", "id", "lease", "memory", "peers", "size", "tainted")

    def __init__(self, segment_id: int, size: int) -> None:
        self.id = segment_id
        self.size = size
        self.fd = _new_file(size)
        try:
            self.memory, self.address = _map(self.fd, size)
        except OSError:
            os.close(self.fd)
            raise
        self.peers: set[Hashable] = set()  # who holds its descriptor
        self.lease: weakref.ref[np.ndarray] | None = None
        self.tainted = False  # a peer keeps views of it: never hand it out again
        self.freed_at = 0.0

    def destroy(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = -1
        # The mapping goes when the last view of it does (closing it under a view would fail).
        del self.memory


class SegmentPool:
    """The shared-memory segments this process makes, handed out as frames and reused.

    Thread-safe. ``idle_bytes`` bounds the free segments kept for reuse; ``first_id`` keeps
    the two sides' ids apart in logs.

    ::

        pool = SegmentPool()
        pixels = pool.frame((3, 1080, 1920))          # float32, in shared memory, leased
        ref = pool.locate(torch.from_numpy(pixels))   # FrameRef(segment=1, offset=0, ...)
        fds = pool.descriptors(worker_id, [ref.segment])  # [(1, size, fd)]: send once
    """

    def __init__(self, *, idle_bytes: int = DEFAULT_IDLE_BYTES, first_id: int = 1) -> None:
        self.idle_bytes = idle_bytes
        self._lock = threading.Lock()
        self._ids = itertools.count(first_id)
        self._segments: dict[int, _Segment] = {}
        self._free: list[_Segment] = []  # least recently freed first
        self._released: deque[int] = deque()  # appended by finalizers, in any thread
        self._addresses: list[tuple[int, int]] = []  # (address, id) of every live segment
        self._forgotten: dict[Hashable, list[int]] = {}
        self._closed = False

    # -- handing out ---------------------------------------------------------------------------

    def frame(self, shape: tuple[int, ...]) -> np.ndarray:
        """Return a leased float32 array of ``shape`` in shared memory (contents undefined)."""
        nbytes = math.prod(shape) * _FLOAT.itemsize
        return self.allocate(nbytes)[:nbytes].view(np.float32).reshape(shape)

    def allocate(self, nbytes: int) -> np.ndarray:
        """Return a leased ``uint8`` array of ``nbytes`` at the start of a segment."""
        size = _segment_size(max(nbytes, 1))
        with self._lock:
            self._reclaim()
            segment = self._take_free(size)
        if segment is None:
            segment = _Segment(next(self._ids), size)
            with self._lock:
                self._segments[segment.id] = segment
                bisect.insort(self._addresses, (segment.address, segment.id))
        root = np.frombuffer(segment.memory, np.uint8, count=nbytes)
        segment.lease = weakref.ref(root)
        weakref.finalize(root, self._lease_ended, segment.id)
        return root

    def _lease_ended(self, segment_id: int) -> None:
        """A lease's last view is gone (a finalizer, in whatever thread dropped it)."""
        self._released.append(segment_id)
        # Once closed, nothing else would reclaim it. Never wait for the lock here: the
        # thread that dropped the view may hold it.
        if self._closed and self._lock.acquire(blocking=False):
            try:
                self._reclaim()
            finally:
                self._lock.release()

    def _take_free(self, size: int) -> _Segment | None:
        """The most recently freed segment of at least ``size`` and at most 1.5x it (locked)."""
        for index in range(len(self._free) - 1, -1, -1):
            segment = self._free[index]
            if size <= segment.size <= size + size // 2:
                del self._free[index]
                return segment
        return None

    def _reclaim(self) -> None:
        """Put segments whose lease ended back on the free list; trim it (locked)."""
        now = time.monotonic()
        while self._released:
            segment = self._segments.get(self._released.popleft())
            if segment is None:
                continue
            segment.lease = None
            if segment.tainted or self._closed:
                self._destroy(segment)
            else:
                segment.freed_at = now
                self._free.append(segment)
        idle = sum(segment.size for segment in self._free)
        while self._free and (
            idle > self.idle_bytes or self._free[0].freed_at < now - IDLE_SECONDS
        ):
            segment = self._free.pop(0)
            idle -= segment.size
            self._destroy(segment)

    def _destroy(self, segment: _Segment) -> None:
        del self._segments[segment.id]
        index = bisect.bisect_left(self._addresses, (segment.address, segment.id))
        if index < len(self._addresses) and self._addresses[index][1] == segment.id:
            del self._addresses[index]
        for peer in segment.peers:
            self._forgotten.setdefault(peer, []).append(segment.id)
        segment.destroy()

    # -- finding and sharing -------------------------------------------------------------------

    def locate(self, tensor: torch.Tensor) -> FrameRef | None:
        """Where ``tensor`` (float32, on the CPU) lies in a leased segment; ``None``: elsewhere."""
        if tensor.device.type != "cpu" or tensor.dtype != torch.float32:
            return None
        start = tensor.data_ptr()
        shape = tuple(int(size) for size in tensor.shape)
        strides = tuple(int(stride) * 4 for stride in tensor.stride())
        if any(stride < 0 for stride in strides):
            return None
        with self._lock:
            index = bisect.bisect_right(self._addresses, (start, math.inf)) - 1
            if index < 0:
                return None
            address, segment_id = self._addresses[index]
            segment = self._segments[segment_id]
            if segment.lease is None or segment.lease() is None:
                return None
        ref = FrameRef(segment_id, start - address, shape, strides)
        if ref.offset + ref.extent > segment.size:
            return None
        return ref

    def leased_view(self, ref: FrameRef) -> np.ndarray | None:
        """A float32 view of ``ref`` that holds its segment's lease; ``None`` if not leased."""
        with self._lock:
            segment = self._segments.get(ref.segment)
            root = segment.lease() if segment is not None and segment.lease else None
        if root is None or ref.offset + ref.extent > root.nbytes:
            return None
        return np.ndarray(
            ref.shape, np.float32, buffer=root, offset=ref.offset, strides=ref.strides
        )

    def descriptors(self, peer: Hashable, segment_ids: Iterable[int]) -> list[tuple[int, int, int]]:
        """``(id, size, fd)`` of the segments ``peer`` has not been sent yet (now marked sent)."""
        unsent = []
        with self._lock:
            for segment_id in dict.fromkeys(segment_ids):
                segment = self._segments.get(segment_id)
                if segment is not None and peer not in segment.peers:
                    segment.peers.add(peer)
                    unsent.append((segment.id, segment.size, segment.fd))
        return unsent

    def taint(self, segment_ids: Iterable[int]) -> None:
        """Never reuse these segments: a peer keeps views of them (destroyed once free)."""
        with self._lock:
            for segment_id in segment_ids:
                segment = self._segments.get(segment_id)
                if segment is not None:
                    segment.tainted = True

    def release(self, segment_ids: Iterable[int]) -> None:
        """End these segments' leases now (a peer gave back what it was lent)."""
        self._released.extend(segment_ids)
        with self._lock:
            self._reclaim()

    def forgotten(self, peer: Hashable) -> list[int]:
        """Segments destroyed since the last call that ``peer`` had mapped (tell it to unmap)."""
        with self._lock:
            self._reclaim()
            return self._forgotten.pop(peer, [])

    def drop_peer(self, peer: Hashable) -> None:
        """``peer`` is gone: its mappings need no more telling."""
        with self._lock:
            self._forgotten.pop(peer, None)
            for segment in self._segments.values():
                segment.peers.discard(peer)

    def stats(self) -> tuple[int, int]:
        """``(segments, bytes)`` this pool holds now, leased and free."""
        with self._lock:
            self._reclaim()
            return len(self._segments), sum(s.size for s in self._segments.values())

    def close(self) -> None:
        """Destroy the free segments; leased ones go when their leases end."""
        with self._lock:
            self._closed = True
            self._reclaim()
            for segment in self._free:
                self._destroy(segment)
            self._free.clear()


class PeerSegments:
    """The other side's segments that this process has mapped, by id. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._memory: dict[int, mmap.mmap] = {}

    def add(self, segment_id: int, size: int, fd: int) -> None:
        """Map a segment the other side sent (the descriptor is closed once mapped)."""
        try:
            memory, _ = _map(fd, size)
        finally:
            os.close(fd)
        with self._lock:
            self._memory[segment_id] = memory

    def array(
        self, ref: FrameRef, *, on_release: tuple[deque[int], int] | None = None
    ) -> np.ndarray:
        """A float32 array over ``ref``; with ``on_release`` ``(queue, id)``, the id is put on
        the queue when the array and every view of it are gone.

        Raises:
            KeyError: the segment was never sent, or forgotten.
        """
        with self._lock:
            memory = self._memory[ref.segment]
        if ref.offset + ref.extent > len(memory):
            raise ValueError(f"frame reference {ref} runs past its segment")
        root = np.frombuffer(memory, np.uint8, count=ref.offset + ref.extent)
        if on_release is not None:
            queue, segment_id = on_release
            weakref.finalize(root, queue.append, segment_id)
        return np.ndarray(
            ref.shape, np.float32, buffer=root, offset=ref.offset, strides=ref.strides
        )

    def forget(self, segment_ids: Iterable[int]) -> None:
        """Drop these mappings (arrays made from them keep their memory while they live)."""
        with self._lock:
            for segment_id in segment_ids:
                self._memory.pop(segment_id, None)

    def __len__(self) -> int:
        return len(self._memory)

    def clear(self) -> None:
        """Drop every mapping."""
        with self._lock:
            self._memory.clear()
