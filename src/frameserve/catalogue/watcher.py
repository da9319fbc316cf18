"""Hot reload: a background thread that reloads the model folders whose files changed.

The watcher decides *when*; the registry decides *what* (:meth:`ModelRegistry.reload_changed`
imports just the added or changed model folders, drops the removed ones and swaps the result
in at once). Every ``interval`` seconds the watcher looks at the files (``os.stat`` only,
through :meth:`ModelRegistry.scan`) and hands the registry the folders that have *settled*: a
folder whose files changed is reloaded once two looks in a row agree, so a file still being
written (an editor's save, a weights file being copied) is not imported half-way; a folder that
is gone is dropped once it stays gone. A change therefore takes effect within about two
intervals.

While a model reloads, its old version keeps serving; requests that hold the old version finish
on it, and the runner unloads it once none does. A model folder that fails to load is listed
with its error and disturbs nothing else; an error in the watcher itself is logged and the next
look tries again.

::

    watcher = ModelWatcher(registry, interval=1.0).start()
    ...
    watcher.close()
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from frameserve.catalogue.registry import ModelRegistry, ModelSource
from frameserve.errors import ConfigError

__all__ = ["DEFAULT_RELOAD_INTERVAL", "ModelWatcher"]

log = logging.getLogger(__name__)

#: Seconds between two looks at the model folders, by default.
DEFAULT_RELOAD_INTERVAL = 1.0


class ModelWatcher:
    """Polls ``registry``'s model folders every ``interval`` seconds and reloads changes.

    Raises:
        ConfigError: an interval that is not above 0.
    """

    def __init__(self, registry: ModelRegistry, *, interval: float = DEFAULT_RELOAD_INTERVAL):
        if not interval > 0:
            raise ConfigError(f"the reload interval must be above 0 seconds, got {interval}")
        self.registry = registry
        self.interval = interval
        self._seen: dict[Path, ModelSource] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="frameserve-model-watcher", daemon=True
        )

    def start(self) -> ModelWatcher:
        """Start polling on a background thread; return self."""
        self._thread.start()
        log.debug("watching model folders for changes every %.2f s", self.interval)
        return self

    def close(self) -> None:
        """Stop polling (a reload in progress finishes first)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def poll(self) -> list[str]:
        """Look at the folders once; reload those that changed and settled. Return the changes."""
        found = {source.folder: source for source in self.registry.scan()}
        current = {source.folder: source for source in self.registry.sources()}
        settled: list[ModelSource] = []
        for folder in {**current, **found}:
            now, before, serving = found.get(folder), self._seen.get(folder), current.get(folder)
            if now is not None and (
                (serving is not None and serving.token == now.token)
                or (before is not None and before.token == now.token)
            ):
                settled.append(now)  # unchanged, or changed and the same two looks in a row
            elif (now is not None or before is not None) and serving is not None:
                settled.append(serving)  # still changing, or just gone: keep it one more look
        self._seen = found
        if _same(settled, current):
            return []
        return self.registry.reload_changed(settled)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception:  # the watcher must outlive any surprise; the next look retries
                log.exception("looking for changed model folders failed")


def _same(settled: list[ModelSource], current: dict[Path, ModelSource]) -> bool:
    """Whether ``settled`` is what the registry serves already (same folders, same tokens)."""
    return len(settled) == len(current) and all(
        source.folder in current and current[source.folder].token == source.token
        for source in settled
    )
