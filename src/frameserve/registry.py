"""Finding model plug-ins: which models exist, where they came from, which failed to load.

Discovery order (the first model to claim an id keeps it; a later one is listed with an error):

1. the built-in models shipped in ``frameserve/builtin_models/``;
2. the folders given on the command line (``--models DIR``), in order;
3. the folders in the ``FRAMESERVE_MODELS`` environment variable (separated by ``os.pathsep``).

A folder is either one model folder (it holds ``model.py``) or a folder of model folders (each
subfolder holding ``model.py``, taken in name order). Importing ``model.py`` must be cheap: the
registry imports it to read the declarations, and weights load later, in ``Model.setup``. A
plug-in that fails to import or declares itself wrongly is logged and listed with its error;
it never stops the others.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import logging
import os
import re
import sys
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from frameserve.errors import FrameServeError, ModelLoadError, ModelNotFoundError
from frameserve.model import Model, ModelSpec

__all__ = ["MODELS_ENV", "ModelEntry", "ModelRegistry", "model_folders_from_env"]

log = logging.getLogger(__name__)

MODELS_ENV = "FRAMESERVE_MODELS"
BUILTIN_FOLDER = Path(__file__).parent / "builtin_models"
PLUGIN_FILE = "model.py"


@dataclass(frozen=True, kw_only=True)
class ModelEntry:
    """One model the registry found, or one that failed to load (``error`` set)."""

    id: str
    source: str
    builtin: bool = False
    spec: ModelSpec | None = None
    model_class: type[Model] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the model loaded and can serve."""
        return self.error is None


def model_folders_from_env(environ: dict[str, str] | None = None) -> list[Path]:
    """Return the folders listed in ``$FRAMESERVE_MODELS`` (empty parts ignored)."""
    value = (os.environ if environ is None else environ).get(MODELS_ENV, "")
    return [Path(part) for part in value.split(os.pathsep) if part.strip()]


class ModelRegistry:
    """The models available to a server or a command, by id."""

    def __init__(self, folders: Iterable[str | os.PathLike[str]] = (), *, builtins: bool = True):
        unique: dict[Path, Path] = {}
        for folder in map(Path, folders):  # the same folder named twice is scanned once
            unique.setdefault(folder.resolve(), folder)
        self._folders = list(unique.values())
        self._builtins = builtins
        self._entries: dict[str, ModelEntry] = {}
        self._failures: list[ModelEntry] = []
        self.reload()

    def reload(self) -> None:
        """Scan every folder again and replace the list of models."""
        entries: dict[str, ModelEntry] = {}
        failures: list[ModelEntry] = []
        roots = [(BUILTIN_FOLDER, True)] if self._builtins else []
        roots += [(folder, False) for folder in self._folders]
        for root, builtin in roots:
            for entry in _scan_root(root, builtin=builtin):
                if not entry.ok:
                    failures.append(entry)
                elif entry.id in entries:
                    first = entries[entry.id].source
                    failures.append(
                        _failed(
                            entry.id, entry.source, f"id {entry.id!r} is already used by {first}"
                        )
                    )
                else:
                    entries[entry.id] = entry
        for failure in failures:
            log.warning(
                "model %s from %s failed to load: %s", failure.id, failure.source, failure.error
            )
        self._entries = entries
        self._failures = failures

    def entries(self) -> list[ModelEntry]:
        """Return every model found, those that failed to load last."""
        return [*self._entries.values(), *self._failures]

    def available(self) -> list[ModelEntry]:
        """Return the models that loaded and can serve, in discovery order."""
        return list(self._entries.values())

    def __contains__(self, model_id: object) -> bool:
        """Whether a loaded model has this id."""
        return model_id in self._entries

    def get(self, model_id: str) -> ModelEntry:
        """Return the loaded model called ``model_id``; raise :class:`ModelNotFoundError`."""
        entry = self._entries.get(model_id)
        if entry is None:
            failed = next((f for f in self._failures if f.id == model_id), None)
            if failed is not None:
                raise ModelNotFoundError(f"model {model_id!r} failed to load: {failed.error}")
            known = ", ".join(self._entries) or "none"
            raise ModelNotFoundError(f"unknown model {model_id!r}; available models: {known}")
        return entry

    def largest_input_count(self) -> int:
        """Return the most image inputs any available model takes (at least 1)."""
        return max((len(e.spec.inputs) for e in self.available() if e.spec), default=1) or 1


def _failed(model_id: str, source: str, error: str) -> ModelEntry:
    return ModelEntry(id=model_id, source=source, error=error)


def _scan_root(root: Path, *, builtin: bool) -> list[ModelEntry]:
    if not root.is_dir():
        return [_failed(root.name, str(root), f"models folder {str(root)!r} does not exist")]
    if (root / PLUGIN_FILE).is_file():
        return _load_folder(root, builtin=builtin)
    entries: list[ModelEntry] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if (folder / PLUGIN_FILE).is_file():
            entries += _load_folder(folder, builtin=builtin)
    return entries


def _load_folder(folder: Path, *, builtin: bool) -> list[ModelEntry]:
    source = str(folder / PLUGIN_FILE)
    try:
        module = _import_plugin(folder)
        classes = _model_classes(module.__name__, vars(module).values())
        if not classes:
            raise ModelLoadError(f"{source} defines no Model subclass with an id")
    except Exception as exc:  # a broken plug-in must never stop the others
        return [_failed(folder.name, source, _describe(exc))]
    entries = []
    for cls in classes:
        try:
            spec = cls.spec()
        except Exception as exc:  # a wrong declaration fails this model only
            entries.append(_failed(str(cls.id or folder.name), source, _describe(exc)))
            continue
        entries.append(
            ModelEntry(id=spec.id, source=source, builtin=builtin, spec=spec, model_class=cls)
        )
    return entries


def _import_plugin(folder: Path) -> ModuleType:
    """Import ``folder/model.py`` under a module name unique to its path."""
    path = (folder / PLUGIN_FILE).resolve()
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    safe = re.sub(r"\W", "_", folder.name)
    name = f"frameserve_plugins.{safe}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
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


def _describe(exc: BaseException) -> str:
    if isinstance(exc, FrameServeError):
        return str(exc)
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" ({Path(frames[-1].filename).name}, line {frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"
