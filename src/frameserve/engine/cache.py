"""The result cache: identical requests are answered from memory instead of run again.

Two requests are identical when their model (its id, version and token, which changes
whenever the model's files do), knob values, colourspace and input frame bytes are. The key
hashes each frame once with a fast non-cryptographic 128-bit hash (xxHash3, several GB/s), so
building it costs little next to any inference. The cache is bounded by the bytes of the
frames it holds and evicts the least recently used results first. Results of a replaced model
are never looked up again (its token is gone) and age out like any others.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import xxhash

from frameserve.engine.request import InferenceRequest, InferenceResult

__all__ = ["ResultCache", "frame_digest", "internal_key", "request_key", "result_bytes"]


def frame_digest(data: Any, *, layout: str, shape: Iterable[int]) -> bytes:
    """Return the 16-byte digest of one frame's bytes, its layout name and shape.

    ``data`` is any contiguous buffer; ``layout`` tells apart byte orders that hold the same
    bytes differently (for example the MLClient wire's bottom-up rows and the internal form).
    """
    digest = xxhash.xxh3_128()
    digest.update(f"{layout}:{tuple(shape)}".encode())
    digest.update(data)
    return digest.digest()


def request_key(
    model: str,
    version: str,
    knobs: object,
    colourspace: str,
    digests: Iterable[bytes],
    *,
    token: str = "",
) -> bytes:
    """Return the cache key of a request from its parts and its frames' digests.

    ``version`` and ``token`` are those of the model's registry entry, so results of a model
    version, or of a model before its files changed, are never served for another.
    """
    digest = xxhash.xxh3_128()
    parts = (model, version, token, sorted(dict(knobs).items()), colourspace)  # type: ignore[call-overload]
    digest.update(repr(parts).encode())
    for part in digests:
        digest.update(part)
    return digest.digest()


def internal_key(request: InferenceRequest, version: str, *, token: str = "") -> bytes:
    """Return the cache key of a request from its internal frames (when no door gave one)."""
    digests = []
    for name, frame in request.frames.items():
        contiguous = frame.detach().to("cpu").contiguous()
        digests.append(
            frame_digest(contiguous.numpy().data, layout=f"chw:{name}", shape=contiguous.shape)
        )
    return request_key(
        request.model_id, version, request.knobs, request.colourspace, digests, token=token
    )


def result_bytes(result: InferenceResult) -> int:
    """Memory a cached result holds: the bytes of its frames."""
    return sum(frame.element_size() * frame.nelement() for frame in result.frames.values())


class ResultCache:
    """Results by request key, least recently used evicted past ``max_bytes``. Thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[bytes, tuple[InferenceResult, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def bytes_used(self) -> int:
        """Bytes of frames held now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> InferenceResult | None:
        """Return the result stored under ``key`` (counting a hit), or ``None`` (a miss)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: bytes, result: InferenceResult) -> None:
        """Store ``result``; a result larger than the whole cache is not stored."""
        size = result_bytes(result)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._entries[key] = (result, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self._bytes -= evicted

    def replace(self, key: bytes, old: InferenceResult, new: InferenceResult) -> bool:
        """Store ``new`` in place of ``old`` under ``key`` (same place in the eviction order),
        if ``old`` is still what ``key`` holds; return whether it was.

        The scheduler stores a result the moment it has it, then swaps in a copy that does not
        hold the model host's buffers (:meth:`~frameserve.engine.workers.host.ModelHost.keep`).
        """
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] is not old:
                return False
            self._entries[key] = (new, entry[1])
            return True

    def clear(self) -> None:
        """Drop every result."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0
