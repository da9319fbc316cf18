"""Model folders on disk: where models are, their versions and tokens, importing them.

The layouts, versions and tokens are described in :mod:`frameserve.catalogue.registry`, which
decides what is served; this module only looks at files and imports them. Nothing here raises: a
folder that cannot be read or imported becomes a failed :class:`ModelEntry`.
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

from frameserve.errors import ConfigError, FrameServeError, ModelLoadError
from frameserve.plugin.model import Model, ModelSpec

__all__ = [
    "DEFAULT_VERSION",
    "LoadedFolder",
    "ModelEntry",
    "ModelSource",
    "declared_version",
    "describe_error",
    "failed_entry",
    "find_sources",
    "load_folder",
    "version_order",
]

PLUGIN_FILE = "model.py"
PACKAGE_FILE = "model.toml"
DEFAULT_VERSION = "1"

_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+\-]{0,63}\Z")
_VERSION_FOLDER = re.compile(r"[1-9][0-9]{0,8}\Z")
_VERSION_PARTS = re.compile(r"[0-9]+|[^0-9]+")
_PACKAGES_MODULE = "frameserve.catalogue.packages"


@dataclass(frozen=True, kw_only=True)
class ModelEntry:
    """One model version the registry found, or one that failed to load (``error`` set).

    Attributes:
        version: the model's version (``"1"``, ``"2"``, ``"1.4.0"``…).
        token: changes whenever the model's source does (see :mod:`frameserve.catalogue.registry`);
            runner instances and cached results are keyed by :attr:`key`.
    """

    id: str
    source: str
    builtin: bool = False
    spec: ModelSpec | None = None
    model_class: type[Model] | None = None
    error: str | None = None
    version: str = DEFAULT_VERSION
    token: str = ""

    @property
    def ok(self) -> bool:
        """Whether the model loaded and can serve."""
        return self.error is None

    @property
    def key(self) -> tuple[str, str, str]:
        """``(id, version, token)``: what identifies this exact model."""
        return (self.id, self.version, self.token)

    @classmethod
    def from_class(
        cls,
        model_class: type[Model],
        *,
        source: str,
        token: str,
        version: str | None = None,
        builtin: bool = False,
    ) -> ModelEntry:
        """Check ``model_class``'s declaration and return its entry.

        Providers build their entries this way; ``token`` must change whenever the model
        does (a checkpoint's step, say), or results cached for the old one are served.
        ``version`` overrides the class's own (a version folder's number does).

        ::

            entry = ModelEntry.from_class(JobModel, source="training job 12", token="step-400")

        Raises:
            ConfigError: a wrong declaration or version.
        """
        spec = model_class.spec()
        declared = declared_version(model_class)
        if version is not None:
            if not isinstance(version, str) or not _VERSION.match(version):
                raise ConfigError(f"model {spec.id!r}: {_VERSION_RULE}, not {version!r}")
            declared = version
        return cls(
            id=spec.id,
            source=source,
            builtin=builtin,
            spec=spec,
            model_class=model_class,
            version=declared,
            token=token,
        )


_VERSION_RULE = (
    "a version must be a string of letters, digits, '.', '_', '+' or '-' starting with a "
    "letter or digit, such as '2' or '1.4.0'"
)


def declared_version(model_class: type[Model]) -> str:
    """Return the version a model class declares (``"1"`` unless it says otherwise).

    Raises:
        ConfigError: a version that is not a string of letters, digits, ``. _ + -``.
    """
    version = getattr(model_class, "version", DEFAULT_VERSION)
    if not isinstance(version, str) or not _VERSION.match(version):
        raise ConfigError(
            f"model class {model_class.__qualname__}: {_VERSION_RULE}, not {version!r}"
        )
    return version


def version_order(version: str) -> tuple[tuple[int, int | str], ...]:
    """Return the sort key of a version: numbers compare as numbers (``1.10`` after ``1.9``)."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part) for part in _VERSION_PARTS.findall(version)
    )


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
    entries: tuple[ModelEntry, ...]
    module: str | None = None


def failed_entry(
    model_id: str, source: str, error: str, version: str = DEFAULT_VERSION
) -> ModelEntry:
    """Return the entry of a model that failed to load."""
    return ModelEntry(id=model_id, source=source, version=version, error=error)


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


def load_folder(source: ModelSource) -> LoadedFolder:
    """Import one model folder into its entries; every failure becomes a failed entry."""
    folder = source.folder
    if source.problem is not None:
        return LoadedFolder(source, (failed_entry(folder.name, str(folder), source.problem),))
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
        return LoadedFolder(source, (failed_entry(name, where, describe_error(exc), version),))
    entries = []
    for cls in classes:
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
            entry = failed_entry(model_id, where, describe_error(exc), version)
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
