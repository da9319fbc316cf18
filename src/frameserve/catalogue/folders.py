"""Model folders on disk: where models are, their versions and tokens, importing them.

The layouts, versions and tokens are described in :mod:`frameserve.catalogue.registry`, which
decides what is served; this module only looks at files and imports them. Nothing here raises: a
folder that cannot be read or imported becomes a
:class:`~frameserve.catalogue.entries.FailedModel`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from frameserve.catalogue.entries import DEFAULT_VERSION, CatalogueEntry, FailedModel, ModelEntry
from frameserve.errors import FrameServeError, ModelLoadError
from frameserve.plugin.model import Model

__all__ = [
    "LoadedFolder",
    "ModelSource",
    "describe_error",
    "find_sources",
    "load_folder",
    "load_model_version",
    "source_of",
]

PLUGIN_FILE = "model.py"
PACKAGE_FILE = "model.toml"
_VERSION_FOLDER = re.compile(r"[1-9][0-9]{0,8}\Z")
_PACKAGES_MODULE = "frameserve.catalogue.packages"


@dataclass(frozen=True, kw_only=True)
class ModelSource:
    """One model folder as found on disk (or a models folder that is missing).

    Attributes:
        folder: the folder holding ``model.py`` or ``model.toml``.
        group: the model folder that owns the ids it declares: the versioned folder for a
            numbered version, else ``folder`` itself.
        version: the version folder's number, or ``None`` outside a versioned folder.
        order: where it comes in discovery order (folder, place in it, version).
        token: a hash of its files' names, sizes and modification times.
        problem: why a models folder cannot be read (then there is no model in it).
    """

    folder: Path
    group: Path
    version: str | None
    builtin: bool
    order: tuple[int, str, int]
    token: str
    problem: str | None = None


@dataclass(frozen=True)
class LoadedFolder:
    """What loading one model folder gave: its entries and the module it imported."""

    source: ModelSource
    entries: tuple[CatalogueEntry, ...]
    module: str | None = None


def find_sources(root: Path, index: int, *, builtin: bool) -> list[ModelSource]:
    """Return the model folders in ``root``, the ``index``-th folder the registry reads.

    ``root`` is a model folder, a versioned model folder or a folder of them; a missing or
    unreadable one gives one source with its ``problem``. Only ``os.stat`` is used.
    """

    def missing(problem: str) -> list[ModelSource]:
        return [
            ModelSource(
                folder=root,
                group=root,
                version=None,
                builtin=builtin,
                order=(index, "", 0),
                token=f"missing:{problem}",
                problem=problem,
            )
        ]

    if not root.is_dir():
        return missing(f"models folder {str(root)!r} does not exist")
    if _holds_model(root) or _version_folders(root):
        return _unit_sources(root, root, index, builtin=builtin)
    try:
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not _ignored(p.name))
    except OSError as exc:
        return missing(f"models folder {str(root)!r} cannot be read: {exc}")
    sources: list[ModelSource] = []
    for folder in folders:
        sources += _unit_sources(root, folder, index, builtin=builtin)
    return sources


def _unit_sources(root: Path, unit: Path, index: int, *, builtin: bool) -> list[ModelSource]:
    """The sources of one model folder: itself, or its numbered versions."""
    place = "" if unit == root else unit.name
    try:
        if _holds_model(unit):
            return [
                ModelSource(
                    folder=unit,
                    group=unit,
                    version=None,
                    builtin=builtin,
                    order=(index, place, 0),
                    token=_token(unit),
                )
            ]
        return [
            ModelSource(
                folder=unit / number,
                group=unit,
                version=number,
                builtin=builtin,
                order=(index, place, int(number)),
                token=_token(unit / number),
            )
            for number in _version_folders(unit)
        ]
    except OSError:  # removed while being looked at: it counts as gone until it settles
        return []


def _holds_model(folder: Path) -> bool:
    return (folder / PLUGIN_FILE).is_file() or (folder / PACKAGE_FILE).is_file()


def _version_folders(folder: Path) -> list[str]:
    """The numbered subfolders of ``folder`` that hold a model, oldest version first."""
    try:
        names = [p.name for p in folder.iterdir() if _VERSION_FOLDER.match(p.name) and p.is_dir()]
    except OSError:
        return []
    return sorted((n for n in names if _holds_model(folder / n)), key=int)


def _ignored(name: str) -> bool:
    return name.startswith(".") or name.endswith("~") or name == "__pycache__"


def _token(folder: Path) -> str:
    """Hash the names, sizes and change times of the files in ``folder`` (not their bytes)."""
    digest = hashlib.blake2b(digest_size=10)
    for top, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not _ignored(d))
        for name in sorted(files):
            if _ignored(name) or name.endswith((".pyc", ".swp")):
                continue
            path = os.path.join(top, name)
            try:
                stat = os.stat(path)
            except OSError:
                digest.update(f"{path}\0gone\n".encode())
                continue
            relative = os.path.relpath(path, folder)
            digest.update(
                f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\0{stat.st_ctime_ns}\n".encode()
            )
    return digest.hexdigest()


# -- loading -----------------------------------------------------------------------------------


def source_of(entry: ModelEntry, sources: Iterable[ModelSource]) -> ModelSource | None:
    """The one of ``sources`` (a registry's, now) that ``entry`` was loaded from, if that folder
    has not changed since; ``None`` for an entry not from a folder (a provider's)."""
    folder = Path(entry.source).parent
    return next((s for s in sources if s.folder == folder and s.token == entry.token), None)


def load_model_version(source: ModelSource, model_id: str, version: str) -> ModelEntry:
    """Import ``source`` again (in another process: a worker, a Ray replica) and return the
    entry of ``model_id`` in ``version``.

    Raises:
        ModelLoadError: it failed to load, or the folder no longer holds it.
    """
    for entry in load_folder(source).entries:
        if entry.id == model_id and entry.version == version:
            if isinstance(entry, ModelEntry):
                return entry
            raise ModelLoadError(f"model {model_id!r} failed to load: {entry.error}")
    raise ModelLoadError(f"model {model_id!r} (version {version}) is no longer in {source.folder}")


def load_folder(source: ModelSource) -> LoadedFolder:
    """Import one model folder into its entries; every failure becomes a failed entry."""
    folder = source.folder
    if source.problem is not None:
        return LoadedFolder(
            source, (FailedModel(id=folder.name, source=str(folder), error=source.problem),)
        )
    name = source.group.name
    version = source.version or DEFAULT_VERSION
    package = (folder / PACKAGE_FILE).is_file()
    where = str(folder / (PACKAGE_FILE if package else PLUGIN_FILE))
    module: ModuleType | None = None
    classes: Sequence[type[Model]]
    try:
        if package:
            classes = _package_classes(folder)
        else:
            module = _import_plugin(folder, source.token)
            classes = _model_classes(module.__name__, vars(module).values())
        if not classes:
            raise ModelLoadError(f"{where} defines no Model subclass with an id")
    except (Exception, SystemExit) as exc:  # a broken plug-in must never stop the others
        if module is not None:
            sys.modules.pop(module.__name__, None)
        return LoadedFolder(
            source,
            (FailedModel(id=name, source=where, error=describe_error(exc), version=version),),
        )
    entries: list[CatalogueEntry] = []
    for cls in classes:
        entry: CatalogueEntry
        try:
            entry = ModelEntry.from_class(
                cls,
                source=where,
                token=source.token,
                version=source.version,
                builtin=source.builtin,
            )
        except Exception as exc:  # a wrong declaration fails this model only
            model_id = cls.id if isinstance(cls.id, str) and cls.id else name
            entry = FailedModel(
                id=model_id, source=where, error=describe_error(exc), version=version
            )
        entries.append(entry)
    return LoadedFolder(source, tuple(entries), module.__name__ if module is not None else None)


def _package_classes(folder: Path) -> list[type[Model]]:
    """The model classes of the package in ``folder``, from :mod:`frameserve.catalogue.packages`."""
    try:
        packages = importlib.import_module(_PACKAGES_MODULE)
    except ImportError as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name == _PACKAGES_MODULE:
            raise ModelLoadError("model packages are not available") from exc
        raise ModelLoadError(f"model packages are not available: {exc}") from exc
    load: Callable[[Path], Sequence[type[Model]]] = packages.load_package_classes
    return list(load(folder))


def _import_plugin(folder: Path, token: str) -> ModuleType:
    """Import ``folder/model.py`` afresh under a module name unique to its path and token.

    The source is compiled from the file each time, never taken from a bytecode cache (an
    edit that keeps the file's size within the same second would otherwise go unseen).
    """
    path = (folder / PLUGIN_FILE).resolve()
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    safe = re.sub(r"\W", "_", folder.name)
    name = f"frameserve_plugins.{safe}_{digest}_{token[:12]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None:
        raise ModelLoadError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    code = compile(path.read_bytes(), str(path), "exec", dont_inherit=True)
    sys.modules[name] = module
    try:
        exec(code, module.__dict__)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _model_classes(module_name: str, members: Iterable[object]) -> Sequence[type[Model]]:
    return [
        obj
        for obj in members
        if inspect.isclass(obj)
        and issubclass(obj, Model)
        and obj.__module__ == module_name
        and bool(getattr(obj, "id", ""))
    ]


def describe_error(exc: BaseException) -> str:
    """Return a one-line description of why loading failed, with the line where it did."""
    if isinstance(exc, FrameServeError):
        return str(exc)
    if isinstance(exc, SyntaxError):
        where = f" ({Path(exc.filename).name}, line {exc.lineno})" if exc.filename else ""
        return f"{type(exc).__name__}: {exc.msg}{where}"
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" ({Path(frames[-1].filename).name}, line {frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"
