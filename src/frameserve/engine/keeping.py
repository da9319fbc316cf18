"""Which results the result cache keeps, and copying kept results out of a host's buffers.

A result computed in a worker process lies in the worker's shared memory. Keeping it in the
cache means copying it out (so the memory goes back to the host for the next frames), a cost
paid for every result kept, while only repeated requests gain. So:

- a result the model computed faster than its copy takes (an identity, a gain) is not kept:
  a repeat is as quickly computed again. The model version's next requests are not even keyed
  (no digest of their frames) until one of its results is slow enough to keep again;
- a result that took at least :data:`FIRST_SIGHT_FACTOR` times its copy (a network on a
  frame) is kept at once: a repeat saves far more than the copy costs;
- one in between (a blur: about 7 ms against a 5 ms copy at 1080p) is kept the second time
  its request is seen: a shot's frames each seen once (a farm's run, a playback) cost no
  copies, and a frame an artist comes back to is computed once more, then answered from the
  cache. The keys of results not kept are remembered (the newest :data:`SEEN_KEYS`).

:class:`ResultKeeper` makes the copies on a thread of its own at a lower CPU priority: the
scheduler stores a result in the cache the moment it has it (so a repeat finds it at once),
answers, and hands it here; while the door sends the answer from the host's buffers, the
keeper replaces the cached result with :meth:`ModelHost.keep`'s copy. In-process results hold
no host buffers: they are kept as they are.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Hashable

from frameserve.engine.cache import ResultCache, result_bytes
from frameserve.engine.niceness import lower_thread_priority
from frameserve.engine.request import InferenceResult
from frameserve.engine.workers.host import InProcessHost, ModelHost

__all__ = ["FIRST_SIGHT_FACTOR", "KEEP_BYTES_PER_SECOND", "SEEN_KEYS", "ResultKeeper"]

log = logging.getLogger(__name__)

#: How fast a result held in a worker's shared memory is copied out for the cache (measured:
#: about 5 ms for a 1080p RGB float frame on the 2-core development machine).
KEEP_BYTES_PER_SECOND = 5e9
#: A result that took at least this many times its copy to compute is kept the first time;
#: a quicker one only when its request comes again.
FIRST_SIGHT_FACTOR = 10.0
#: How many keys of results not kept are remembered, to know a request seen before (16-byte
#: keys: about 2 MB).
SEEN_KEYS = 16384


class ResultKeeper:
    """Decides which results are cached and swaps them for copies of their own (see above)."""

    def __init__(self, host: ModelHost, cache: ResultCache | None) -> None:
        self._host = host
        self._cache = cache
        self._not_kept: set[Hashable] = set()  # model versions whose last result was too quick
        self._seen: OrderedDict[bytes, None] = OrderedDict()  # keys of results not kept
        self._queue: queue.SimpleQueue[tuple[bytes, InferenceResult] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def keeps_results_of(self, key: Hashable) -> bool:
        """Whether the last result of model version ``key`` (``ModelEntry.key``) was kept."""
        return self._cache is not None and key not in self._not_kept

    def decide(
        self, model: Hashable, result: InferenceResult, seconds: float, key: bytes | None
    ) -> bool:
        """Whether to cache ``result`` of model version ``model`` (``ModelEntry.key``),
        computed in ``seconds``, under the request's cache ``key``; see the module docstring.

        Whether the model's last result was too quick to keep is remembered for
        :meth:`keeps_results_of`.
        """
        if self._cache is None:
            return False
        if isinstance(self._host, InProcessHost) or result.worker is None:
            return True  # in the server process a cached result costs nothing to keep
        copy_seconds = result_bytes(result) / KEEP_BYTES_PER_SECOND
        if seconds < copy_seconds:
            self._not_kept.add(model)
            return False
        self._not_kept.discard(model)
        if key is None:
            return False
        if seconds >= FIRST_SIGHT_FACTOR * copy_seconds:
            return True
        with self._lock:
            seen = key in self._seen
            self._seen[key] = None
            self._seen.move_to_end(key)
            while len(self._seen) > SEEN_KEYS:
                self._seen.popitem(last=False)
        return seen

    def keep(self, key: bytes, result: InferenceResult) -> None:
        """Replace ``result`` (cached under ``key``) with a copy of its own, soon."""
        if self._cache is None or isinstance(self._host, InProcessHost):
            return  # in-process results hold no host buffers
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="frameserve-cache-keeper", daemon=True
                )
                self._thread.start()
        self._queue.put((key, result))

    def _run(self) -> None:
        lower_thread_priority()
        while (item := self._queue.get()) is not None:
            key, result = item
            try:
                kept = self._host.keep(result)
                if kept is not result and self._cache is not None:
                    self._cache.replace(key, result, kept)
            except Exception:  # a failed copy leaves the original cached: still correct
                log.exception("copying a cached result failed")
            del item, result

    def close(self) -> None:
        """Stop the copying thread (copies not made leave the originals cached)."""
        with self._lock:
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join(5.0)
