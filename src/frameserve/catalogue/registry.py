"""Finding models: which exist, in which versions, where they came from, which failed to load.

Discovery order (the first model folder to claim an id keeps it; a later one is listed with an
error):

1. the built-in models shipped in ``frameserve/builtin_models/``;
2. the folders given on the command line (``--models DIR``), in order;
3. the folders in the ``FRAMESERVE_MODELS`` environment variable (separated by ``os.pathsep``);
4. providers (:meth:`ModelRegistry.add_provider`), in the order they were added: models that
   are not files, such as the training jobs of a running server.

**Layouts.** A *model folder* holds ``model.py`` (a Python plug-in) or ``model.toml`` (a model
package, read by :mod:`frameserve.catalogue.packages`; it wins when both are there). A *versioned
model folder* holds numbered model folders instead, one per version: ``denoise/1/model.py``,
``denoise/2/model.toml``; the folder's number is the version (``1``, ``2``, … without leading
zeros). A folder given to the registry is one of those, or a folder of them (taken in name
order). Importing ``model.py`` must be cheap: the registry imports it to read the declarations,
and weights load later, in ``Model.setup``. A plug-in that fails to import or declares itself
wrongly is logged and listed with its error; it never stops the others.

**Versions.** A model serves every version that loaded; the newest is the default. Inside a
numbered folder the folder's number is the version, whatever the model declares; elsewhere a
model class may declare ``version`` (``"1"`` by default; letters, digits, ``. _ + -``, such as
``"3"`` or a package's ``"1.4.0"``). Versions compare part by part, numbers as numbers
(``1.10`` is newer than ``1.9``). Versions of one id come from one model folder.

**Tokens.** Each entry carries a ``token`` that changes whenever its source does: a hash of the
names, sizes and modification times of the files in its model folder (hidden files, editor
backups and ``__pycache__`` left out). Runner instances and cached results are keyed by
``(id, version, token)``, so a changed model never answers with an old instance or result.

**Reloading.** :meth:`ModelRegistry.reload_changed` looks at the files again (``os.stat``
only), imports just the model folders that were added or changed (a changed ``model.py`` is
imported afresh, under a module name unique to its token, never from a stale bytecode cache)
and drops the ones that are gone; :mod:`frameserve.catalogue.watcher` calls it on a timer. The new
entries are built first, then swapped in at once: readers see the old models or the new ones,
never a mixture, and a request that already holds an entry runs it to the end. Only
``model.py`` is re-imported: modules it imports itself (from ``sys.path``) are not.
:mod:`frameserve.catalogue.folders` reads the folders and imports them; this module decides what
is served.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from frameserve.catalogue.entries import (
    CatalogueEntry,
    FailedModel,
    ModelEntry,
    declared_version,
    refuse_uncleared,
    version_order,
)
from frameserve.catalogue.folders import (
    LoadedFolder,
    ModelSource,
    describe_error,
    find_sources,
    load_folder,
)
from frameserve.errors import ConfigError, ModelNotFoundError

__all__ = [
    "MODELS_ENV",
    "CatalogueEntry",
    "FailedModel",
    "ModelEntry",
    "ModelRegistry",
    "ModelSource",
    "declared_version",
    "model_folders_from_env",
]

log = logging.getLogger(__name__)

MODELS_ENV = "FRAMESERVE_MODELS"
BUILTIN_FOLDER = Path(__file__).parents[1] / "builtin_models"


def model_folders_from_env(environ: dict[str, str] | None = None) -> list[Path]:
    """Return the folders listed in ``$FRAMESERVE_MODELS`` (empty parts ignored)."""
    value = (os.environ if environ is None else environ).get(MODELS_ENV, "")
    return [Path(part) for part in value.split(os.pathsep) if part.strip()]


@dataclass(frozen=True)
class _Snapshot:
    """What the registry serves at one moment; replaced whole, never changed in place."""

    entries: dict[str, dict[str, ModelEntry]] = field(default_factory=dict)
    failures: tuple[FailedModel, ...] = ()


@dataclass
class _Provider:
    entries: Callable[[], Sequence[CatalogueEntry]]
    current: tuple[CatalogueEntry, ...] = ()


class ModelRegistry:
    """The models available to a server or a command, by id and version.

    ::

        registry = ModelRegistry(["studio_models"])
        blur = registry.get("blur")                  # the newest version
        first = registry.get("blur", version="1")
        registry.versions("blur")                    # ["1", "2"]
        registry.reload_changed()                    # after files changed on disk

    Reading is thread-safe and never waits for a reload; changes are made one at a time.
    """

    def __init__(
        self,
        folders: Iterable[str | os.PathLike[str]] = (),
        *,
        builtins: bool = True,
        commercial_only: bool = False,
    ):
        unique: dict[Path, Path] = {}
        for folder in map(Path, folders):  # the same folder named twice is scanned once
            unique.setdefault(folder.resolve(), folder)
        roots = [(BUILTIN_FOLDER, True)] if builtins else []
        self._roots = roots + [(folder, False) for folder in unique.values()]
        #: Models whose weights are not cleared for commercial use are listed as failed.
        self.commercial_only = commercial_only
        self._change_lock = threading.RLock()
        self._loaded: dict[Path, LoadedFolder] = {}
        self._providers: dict[str, _Provider] = {}
        self._listeners: list[Callable[[], Callable[[], object] | None]] = []
        self._snapshot = _Snapshot()
        self._clashes: set[tuple[str, str, str, str | None]] = set()
        self._started = False
        self.reload()

    # -- reading -------------------------------------------------------------------------------

    def entries(self) -> list[CatalogueEntry]:
        """Return every model version found, those that failed to load last."""
        snapshot = self._snapshot
        return [*_all_versions(snapshot), *snapshot.failures]

    def available(self) -> list[ModelEntry]:
        """Return every model version that loaded, in discovery order, oldest version first."""
        return _all_versions(self._snapshot)

    def newest(self) -> list[ModelEntry]:
        """Return the default (newest) version of each model that loaded, in discovery order."""
        return [_newest(versions) for versions in self._snapshot.entries.values()]

    def __contains__(self, model_id: object) -> bool:
        """Whether a loaded model has this id."""
        return model_id in self._snapshot.entries

    def get(self, model_id: str, version: str | None = None) -> ModelEntry:
        """Return model ``model_id`` in ``version`` (default: its newest).

        Raises:
            ModelNotFoundError: no such model or version, or it failed to load (the message
                lists what there is, or says why it failed).
        """
        snapshot = self._snapshot
        versions = snapshot.entries.get(model_id)
        if versions is not None:
            if version is None:
                return _newest(versions)
            entry = versions.get(version)
            if entry is not None:
                return entry
        failed = _failure(snapshot, model_id, version)
        if failed is not None:
            which = f"model {model_id!r}"
            if version is not None:
                which = f"version {version!r} of {which}"
            raise ModelNotFoundError(f"{which} failed to load: {failed.error}")
        if versions is not None:
            raise ModelNotFoundError(
                f"model {model_id!r} has no version {version!r}; versions: {', '.join(versions)}"
            )
        known = ", ".join(snapshot.entries) or "none"
        raise ModelNotFoundError(f"unknown model {model_id!r}; available models: {known}")

    def versions(self, model_id: str) -> list[str]:
        """Return the versions of ``model_id`` that loaded, oldest first.

        Raises:
            ModelNotFoundError: no version of it loaded.
        """
        versions = self._snapshot.entries.get(model_id)
        if versions is None:
            self.get(model_id)  # raises, saying why
            return self.versions(model_id)  # it appeared meanwhile
        return list(versions)

    def failure(self, model_id: str, version: str | None = None) -> FailedModel | None:
        """Return the failed entry of ``model_id`` (in ``version``), or ``None``."""
        return _failure(self._snapshot, model_id, version)

    def is_current(self, key: tuple[str, str, str]) -> bool:
        """Whether the model ``(id, version, token)`` is still what the registry serves."""
        model_id, version, token = key
        current = self._snapshot.entries.get(model_id, {}).get(version)
        return current is not None and current.token == token

    def largest_input_count(self) -> int:
        """Return the most image inputs any available model takes (at least 1)."""
        return max((len(e.spec.inputs) for e in self.available()), default=1) or 1

    def add_listener(self, listener: Callable[[], object]) -> None:
        """Call ``listener()`` after every change of the models (held weakly if a method)."""
        if inspect.ismethod(listener):
            self._listeners.append(weakref.WeakMethod(listener))
        else:
            self._listeners.append(lambda: listener)

    # -- model folders -------------------------------------------------------------------------

    def scan(self) -> list[ModelSource]:
        """Return the model folders on disk now, with their tokens (reads no model code)."""
        sources: list[ModelSource] = []
        for index, (root, builtin) in enumerate(self._roots):
            sources += find_sources(root, index, builtin=builtin)
        return sources

    def sources(self) -> list[ModelSource]:
        """Return the model folders the registry serves from now."""
        return [loaded.source for loaded in self._loaded.values()]

    def reload(self) -> None:
        """Import every model folder again and replace the list of models."""
        self._apply(self.scan(), force=True)

    def reload_changed(self, sources: Sequence[ModelSource] | None = None) -> list[str]:
        """Load the model folders that were added or changed, drop those that are gone.

        ``sources`` is what to serve from (default: :meth:`scan` now); a folder whose token
        is unchanged keeps its entries. Returns one line per change (also logged).
        """
        return self._apply(self.scan() if sources is None else sources, force=False)

    # -- providers -----------------------------------------------------------------------------

    def add_provider(self, name: str, entries: Callable[[], Sequence[CatalogueEntry]]) -> None:
        """Serve the models ``entries()`` returns, listed and served like any others.

        ``entries`` is called now and at each :meth:`refresh_provider`; it should be quick
        (build entries with :meth:`ModelEntry.from_class`). If it raises, the provider is
        listed as one failed entry named ``name``.

        Raises:
            ConfigError: a provider of that name exists already.
        """
        with self._change_lock:
            if name in self._providers:
                raise ConfigError(f"a model provider called {name!r} is added already")
            self._providers[name] = _Provider(entries)
            self.refresh_provider(name)

    def refresh_provider(self, name: str) -> list[str]:
        """Ask provider ``name`` for its models again and swap them in; return the changes.

        Raises:
            ConfigError: no provider has that name.
        """
        with self._change_lock:
            provider = self._providers.get(name)
            if provider is None:
                raise ConfigError(f"no model provider is called {name!r}")
            old = provider.current
            provider.current = _provided(name, provider.entries)
            lines = [
                (logging.INFO, line) for line in _provider_changes(name, old, provider.current)
            ]
            known = {(e.id, e.error) for e in old if isinstance(e, FailedModel)}
            fresh = [
                e
                for e in provider.current
                if isinstance(e, FailedModel) and (e.id, e.error) not in known
            ]
            return self._publish(lines + _failure_lines(fresh))

    def remove_provider(self, name: str) -> None:
        """Stop serving the models of provider ``name`` (requests in flight finish)."""
        with self._change_lock:
            provider = self._providers.pop(name, None)
            if provider is not None:
                changes = _provider_changes(name, provider.current, ())
                self._publish([(logging.INFO, line) for line in changes])

    # -- changing ------------------------------------------------------------------------------

    def _apply(self, sources: Sequence[ModelSource], *, force: bool) -> list[str]:
        with self._change_lock:
            first = not self._started
            self._started = True
            ordered = sorted(sources, key=lambda source: source.order)
            old = self._loaded
            new: dict[Path, LoadedFolder] = {}
            lines: list[tuple[int, str]] = []
            for source in ordered:
                before = old.get(source.folder)
                if before is not None and before.source.token == source.token and not force:
                    new[source.folder] = before
                    continue
                loaded = load_folder(source)
                new[source.folder] = loaded
                if not first:
                    lines += _source_changes(before, loaded)
                lines += _failure_lines(loaded.entries)
                if before is not None and before.module not in (None, loaded.module):
                    sys.modules.pop(before.module, None)  # type: ignore[arg-type]
            for folder, before in old.items():
                if folder not in new:
                    lines += _source_changes(before, None)
                    if before.module is not None:
                        sys.modules.pop(before.module, None)
            self._loaded = new  # replaced whole: sources() reads it without the lock
            return self._publish(lines)

    def _publish(self, lines: list[tuple[int, str]]) -> list[str]:
        """Merge the sources and providers, swap the result in, tell the listeners (locked).

        Logs ``lines`` (level, message) and any new clash between model folders; returns the
        messages.
        """
        groups: list[tuple[str, Sequence[CatalogueEntry]]] = [
            (str(loaded.source.group), loaded.entries) for loaded in self._loaded.values()
        ]
        groups += [(f"provider {name}", p.current) for name, p in self._providers.items()]
        if self.commercial_only:
            groups = [(owner, refuse_uncleared(items)) for owner, items in groups]
        snapshot, clashes = _merge(groups)
        known = self._clashes
        self._clashes = {(e.id, e.version, e.source, e.error) for e in clashes}
        lines += _failure_lines(
            e for e in clashes if (e.id, e.version, e.source, e.error) not in known
        )
        for level, line in lines:
            log.log(level, "%s", line)
        self._snapshot = snapshot  # one assignment: readers see the old models or the new
        for reference in list(self._listeners):
            listener = reference()
            if listener is None:
                self._listeners.remove(reference)
                continue
            try:
                listener()
            except Exception:  # a listener's failure must not undo the change
                log.exception("a model registry listener failed")
        return [line for _, line in lines]


# -- merging -----------------------------------------------------------------------------------


def _merge(
    groups: Iterable[tuple[str, Sequence[CatalogueEntry]]],
) -> tuple[_Snapshot, list[FailedModel]]:
    """Combine every group's entries: the first group to claim an id keeps it.

    Also returns the clashes: entries refused because another group, or the same version,
    came first (they are among the snapshot's failures too).
    """
    entries: dict[str, dict[str, ModelEntry]] = {}
    owners: dict[str, str] = {}
    failures: list[FailedModel] = []
    clashes: list[FailedModel] = []
    for owner, items in groups:
        for entry in items:
            if isinstance(entry, FailedModel):
                failures.append(entry)
                continue
            versions = entries.setdefault(entry.id, {})
            first = owners.setdefault(entry.id, owner)
            if first != owner:
                used = next(iter(versions.values())).source
                clashes.append(_failed(entry, f"id {entry.id!r} is already used by {used}"))
            elif entry.version in versions:
                clashes.append(
                    _failed(
                        entry,
                        f"version {entry.version} of model {entry.id!r} is declared twice; "
                        f"first in {versions[entry.version].source}",
                    )
                )
            else:
                versions[entry.version] = entry
                continue
            failures.append(clashes[-1])
    ordered = {
        model_id: dict(sorted(versions.items(), key=lambda item: version_order(item[0])))
        for model_id, versions in entries.items()
    }
    return _Snapshot(ordered, tuple(failures)), clashes


def _all_versions(snapshot: _Snapshot) -> list[ModelEntry]:
    return [entry for versions in snapshot.entries.values() for entry in versions.values()]


def _newest(versions: dict[str, ModelEntry]) -> ModelEntry:
    return next(reversed(versions.values()))


def _failure(snapshot: _Snapshot, model_id: str, version: str | None) -> FailedModel | None:
    return next(
        (
            f
            for f in snapshot.failures
            if f.id == model_id and (version is None or f.version == version)
        ),
        None,
    )


def _failed(entry: CatalogueEntry, error: str) -> FailedModel:
    return FailedModel(id=entry.id, source=entry.source, version=entry.version, error=error)


def _summary(entries: Iterable[CatalogueEntry]) -> str:
    return ", ".join(f"{e.id} v{e.version}" for e in entries if isinstance(e, ModelEntry))


def _source_changes(
    before: LoadedFolder | None, after: LoadedFolder | None
) -> list[tuple[int, str]]:
    """The INFO line for a model folder that was added, changed or removed (failures aside)."""
    old = _summary(before.entries) if before is not None else ""
    if after is None:
        assert before is not None
        gone = f"removed model {old} ({before.source.folder} is gone)"
        return [(logging.INFO, gone)] if old else []
    new = _summary(after.entries)
    if not new:
        return []  # the failure has its own line
    if before is None:
        return [(logging.INFO, f"added model {new} from {after.source.folder}")]
    if before.source.token != after.source.token:
        changed = f"reloaded model {new} from {after.source.folder} (its files changed)"
        return [(logging.INFO, changed)]
    return []


def _failure_lines(entries: Iterable[CatalogueEntry]) -> list[tuple[int, str]]:
    """One WARNING line per failed entry."""
    return [
        (logging.WARNING, f"model {e.id} from {e.source} failed to load: {e.error}")
        for e in entries
        if isinstance(e, FailedModel)
    ]


def _provider_changes(
    name: str, old: Sequence[CatalogueEntry], new: Sequence[CatalogueEntry]
) -> list[str]:
    before = {e.key[:2]: e for e in old if isinstance(e, ModelEntry)}
    after = {e.key[:2]: e for e in new if isinstance(e, ModelEntry)}
    changes = []
    for key, entry in after.items():
        if key not in before:
            changes.append(f"added model {entry.id} v{entry.version} from provider {name}")
        elif before[key].token != entry.token:
            changes.append(f"reloaded model {entry.id} v{entry.version} from provider {name}")
    for key, entry in before.items():
        if key not in after:
            changes.append(f"removed model {entry.id} v{entry.version} of provider {name}")
    return changes


def _provided(
    name: str, entries: Callable[[], Sequence[CatalogueEntry]]
) -> tuple[CatalogueEntry, ...]:
    """Call a provider; whatever goes wrong becomes a failed entry, never an exception."""
    where = f"provider {name}"
    try:
        items = tuple(entries())
    except Exception as exc:  # a provider must never disturb the others
        return (FailedModel(id=name, source=where, error=describe_error(exc)),)
    checked: list[CatalogueEntry] = []
    for item in items:
        if isinstance(item, ModelEntry | FailedModel):
            checked.append(item)
        else:
            error = f"gave {type(item).__name__}, not a ModelEntry"
            checked.append(FailedModel(id=name, source=where, error=error))
    return tuple(checked)
