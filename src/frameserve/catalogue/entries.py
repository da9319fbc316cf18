"""What the catalogue lists: a model version that loaded, or one that failed, and versions.

::

    entry = registry.get("blur")           # a ModelEntry: its spec and class are always there
    for item in registry.entries():        # ModelEntry or FailedModel
        print(item.id, item.version, "ok" if item.ok else item.error)

A :class:`ModelEntry` is a model that can serve: its declaration (:class:`ModelSpec`) and its
class are never missing. A :class:`FailedModel` is a model folder, package or provider entry
that could not load, listed with why. Code that serves models takes :class:`ModelEntry`;
code that lists them takes :data:`CatalogueEntry` and tells the two apart with ``ok``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, TypeAlias

from frameserve.errors import ConfigError
from frameserve.plugin.licences import commercial_refusal
from frameserve.plugin.model import Model, ModelSpec

__all__ = [
    "DEFAULT_VERSION",
    "CatalogueEntry",
    "FailedModel",
    "ModelEntry",
    "declared_version",
    "refuse_uncleared",
    "version_order",
]

DEFAULT_VERSION = "1"

_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+\-]{0,63}\Z")
_VERSION_PARTS = re.compile(r"[0-9]+|[^0-9]+")
_VERSION_RULE = (
    "a version must be a string of letters, digits, '.', '_', '+' or '-' starting with a "
    "letter or digit, such as '2' or '1.4.0'"
)


@dataclass(frozen=True, kw_only=True)
class ModelEntry:
    """One model version that loaded and can serve.

    Attributes:
        id: the model's id; ``source``: where it came from (a file, a provider).
        spec: its checked declaration; ``model_class``: the class the runner instantiates.
        version: the model's version (``"1"``, ``"2"``, ``"1.4.0"``…).
        token: changes whenever the model's source does (see
            :mod:`frameserve.catalogue.registry`); runner instances and cached results are
            keyed by :attr:`key`.
        builtin: shipped with frameserve.
    """

    ok: ClassVar[Literal[True]] = True
    #: A loaded model has no error; listing code reads ``error`` of any entry.
    error: ClassVar[None] = None

    id: str
    source: str
    spec: ModelSpec
    model_class: type[Model]
    version: str = DEFAULT_VERSION
    token: str = ""
    builtin: bool = False

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


@dataclass(frozen=True, kw_only=True)
class FailedModel:
    """A model that could not load: listed with its error, never served.

    Attributes:
        id: the id it declares, or its folder's (or provider's) name when it got no further.
        source: the file or provider it came from.
        error: why it failed, in one line.
        version: the version it would have served as.
    """

    ok: ClassVar[Literal[False]] = False

    id: str
    source: str
    error: str
    version: str = DEFAULT_VERSION
    builtin: bool = False

    @property
    def key(self) -> tuple[str, str, str]:
        """``(id, version, "")``: failed models have no token."""
        return (self.id, self.version, "")


#: Anything the catalogue lists.
CatalogueEntry: TypeAlias = ModelEntry | FailedModel


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


def refuse_uncleared(entries: Sequence[CatalogueEntry]) -> list[CatalogueEntry]:
    """``entries``, each model whose weights are not cleared for commercial use turned into a
    :class:`FailedModel` saying why (``--commercial-only``)."""
    cleared: list[CatalogueEntry] = []
    for entry in entries:
        reason = None if isinstance(entry, FailedModel) else commercial_refusal(entry.spec.weights)
        if reason is None:
            cleared.append(entry)
        else:
            cleared.append(
                FailedModel(
                    id=entry.id,
                    source=entry.source,
                    version=entry.version,
                    error=reason,
                    builtin=entry.builtin,
                )
            )
    return cleared
