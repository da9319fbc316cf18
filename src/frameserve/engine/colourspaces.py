"""Which OpenColorIO config frameserve converts with, and what colourspace names mean in it.

:class:`ColourConfig` loads one config and resolves the names requests and models give to the
config's own colourspaces; :class:`~frameserve.engine.colour.ColourManager` converts frames
with it::

    config = ColourConfig()                         # $OCIO, else OCIO's built-in ACES CG config
    config.resolve("srgb")                          # "sRGB - Texture"
    config.resolve("linear")                        # "ACEScg" (the scene_linear role)

**Which config.** ``ColourConfig(config)`` takes a path to a studio ``.ocio`` file (or an
``.ocioz`` archive) or an ``ocio://`` URI. Without one it uses ``$OCIO`` when that is set and
not empty, else ``ocio://default``, the ACES CG config built into OpenColorIO (it needs no
files or network). A config that cannot be loaded, does not validate, or has no
``scene_linear`` role raises :class:`~frameserve.errors.ConfigError` naming it.

**Names.** Anything the config knows names a colourspace: a colourspace name, one of its
aliases, or a role (``scene_linear``, ``color_picking``, ``aces_interchange``...), in any
letter case. Names the config does not know fall back to a small table of friendly aliases
(:data:`FRIENDLY_ALIASES`); the config's own names always win.

=================================  ===========================================================
friendly alias                     resolves to
=================================  ===========================================================
``linear``, ``scene-linear``       the ``scene_linear`` role
``srgb``, ``srgb_texture``         the sRGB texture colourspace: sRGB curve, Rec.709 primaries
                                   (``sRGB - Texture`` / ``sRGB Encoded Rec.709 (sRGB)``)
``lin_rec709``, ``lin_srgb``       linear Rec.709 primaries (``Linear Rec.709 (sRGB)``)
``acescg``                         ``ACEScg`` (linear AP1)
``aces``, ``aces2065-1``           the ``aces_interchange`` role (``ACES2065-1``, linear AP0)
=================================  ===========================================================

The sRGB texture colourspace is found by its known names in the ACES configs (1.x and 2.x)
and otherwise by asking OCIO which colourspace of the config matches the built-in one
(``Config.IdentifyBuiltinColorSpace``, which needs the config's interchange roles). The
``color_picking`` role is deliberately not used: older ACES configs point it at a display
transform with a tone curve. ``rec709`` is deliberately not an alias: it means the BT.1886
display encoding to some, the camera curve to others and linear Rec.709 to a few; name the
config's colourspace instead.

Resolved names are cached behind a lock (up to a bound: names come from requests), so one
config serves every thread.
"""

from __future__ import annotations

import difflib
import logging
import os
import threading
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final, NamedTuple

import PyOpenColorIO as ocio

from frameserve.errors import ColourError, ConfigError
from frameserve.plugin.model import SCENE_LINEAR

__all__ = [
    "DEFAULT_CONFIG",
    "FRIENDLY_ALIASES",
    "OCIO_ENV",
    "OCIO_ERRORS",
    "SCENE_LINEAR",
    "ColourConfig",
    "FriendlyAlias",
]

logger = logging.getLogger(__name__)

#: The environment variable naming the studio config (the one every OCIO application reads).
OCIO_ENV: Final = "OCIO"

#: The config used when neither a path nor ``$OCIO`` is given: OCIO's built-in ACES CG config.
DEFAULT_CONFIG: Final = "ocio://default"

#: Errors PyOpenColorIO raises (its ``ExceptionMissingFile`` does not derive from its own
#: ``Exception``, so both are named).
OCIO_ERRORS: Final = (ocio.Exception, ocio.ExceptionMissingFile)

#: Most spellings of colourspace names remembered per config (names come from requests).
_MAX_CACHED_NAMES: Final = 1024


class FriendlyAlias(NamedTuple):
    """What a friendly alias means, and where to look for it in a config."""

    meaning: str
    #: Names, aliases or roles tried in order; the first the config knows wins.
    candidates: tuple[str, ...]
    #: A colourspace of OCIO's built-in config to identify in the config when no candidate fits.
    builtin: str | None = None


_SRGB = FriendlyAlias(
    "the sRGB texture colourspace (sRGB curve, Rec.709 primaries)",
    (
        "sRGB - Texture",
        "sRGB Encoded Rec.709 (sRGB)",
        "srgb_tx",
        "srgb_texture",
        "Utility - sRGB - Texture",
        "Input - Generic - sRGB - Texture",
    ),
    builtin="sRGB - Texture",
)
_LIN_REC709 = FriendlyAlias(
    "linear Rec.709 primaries",
    ("Linear Rec.709 (sRGB)", "lin_rec709", "lin_srgb", "Utility - Linear - sRGB"),
    builtin="Linear Rec.709 (sRGB)",
)
_ACESCG = FriendlyAlias("ACEScg (linear AP1)", ("ACEScg", "ACES - ACEScg", "lin_ap1"))
_ACES = FriendlyAlias(
    "ACES2065-1 (linear AP0)", ("aces_interchange", "ACES2065-1", "ACES - ACES2065-1")
)

#: Friendly aliases accepted when the config does not know a name itself. Keys are lower case
#: with spaces and hyphens written as underscores (lookups are normalised the same way).
FRIENDLY_ALIASES: Final[Mapping[str, FriendlyAlias]] = MappingProxyType(
    {
        "linear": FriendlyAlias("the scene_linear role", (SCENE_LINEAR,)),
        "scene_linear": FriendlyAlias("the scene_linear role", (SCENE_LINEAR,)),
        "srgb": _SRGB,
        "srgb_texture": _SRGB,
        "lin_rec709": _LIN_REC709,
        "lin_srgb": _LIN_REC709,
        "linear_rec709": _LIN_REC709,
        "acescg": _ACESCG,
        "aces": _ACES,
        "aces2065_1": _ACES,
    }
)


def _alias_key(name: str) -> str:
    """Normalise a name for the friendly-alias table."""
    return name.strip().lower().replace(" ", "_").replace("-", "_")


class ColourConfig:
    """One loaded and validated OpenColorIO config, and the colourspace names it resolves.

    Args:
        config: a path to a studio ``.ocio`` file (or ``.ocioz``), or an ``ocio://`` URI such as
            ``"ocio://studio-config-latest"``. ``None`` uses ``$OCIO`` when it is set and not
            empty, else :data:`DEFAULT_CONFIG` (OCIO's built-in ACES CG config).

    Raises:
        ConfigError: the config is missing, cannot be parsed, does not validate, or has no
            ``scene_linear`` role.

    Attributes:
        ocio: the PyOpenColorIO config (processors are built from it).
        origin: where the choice of config came from, for messages.

    One config is safe to share between threads.
    """

    def __init__(self, config: str | None = None) -> None:
        source, origin = _choose_config(config)
        self.ocio: Any = _load_config(source, origin)
        self.origin = origin
        own_name = str(self.ocio.getName())
        self._name = f"{source} ({own_name})" if own_name else source
        self._names_lock = threading.Lock()
        self._resolved: dict[str, str] = {}
        if self.ocio.getColorSpace(SCENE_LINEAR) is None:
            raise ConfigError(
                f"OCIO config {self._name} (from {origin}) has no {SCENE_LINEAR!r} role; "
                "frameserve needs it: it is the colourspace frames arrive in"
            )

    def __repr__(self) -> str:
        return f"ColourConfig({self._name!r})"

    @property
    def name(self) -> str:
        """What was loaded, for logs: the path or URI, and the config's own name."""
        return self._name

    def names(self) -> list[str]:
        """The names of the config's active colourspaces, in the config's order."""
        return [str(name) for name in self.ocio.getColorSpaceNames()]

    def resolve(self, name: str) -> str:
        """Return the canonical colourspace name for a name, alias, role or friendly alias.

        Raises:
            ColourError: the config knows no such colourspace; the message suggests close
                names and says how to list them all.
        """
        if not isinstance(name, str) or not name.strip():
            raise ColourError(f"a colourspace name must be a non-empty string, got {name!r}")
        with self._names_lock:
            cached = self._resolved.get(name)
        if cached is not None:
            return cached
        canonical = self._lookup(name)
        with self._names_lock:
            if len(self._resolved) < _MAX_CACHED_NAMES:
                self._resolved[name] = canonical
        return canonical

    def _lookup(self, name: str) -> str:
        """Resolve ``name`` without the cache."""
        found = self.ocio.getColorSpace(name)
        if found is not None:
            return str(found.getName())
        alias = FRIENDLY_ALIASES.get(_alias_key(name))
        if alias is None:
            raise ColourError(self._unknown_message(name))
        for candidate in alias.candidates:
            found = self.ocio.getColorSpace(candidate)
            if found is not None:
                return str(found.getName())
        if alias.builtin is not None:
            identified = _identify_builtin(self.ocio, alias.builtin)
            if identified is not None:
                return identified
        raise ColourError(
            f"colourspace {name!r} means {alias.meaning}, but OCIO config {self._name} "
            f"has none (looked for {', '.join(repr(c) for c in alias.candidates)}); name one of "
            f"its colourspaces instead. {self._known_names_hint()}"
        )

    def _unknown_message(self, name: str) -> str:
        """The message for a name neither the config nor the alias table knows."""
        spellings: dict[str, str] = {}
        for colourspace in self.ocio.getColorSpaces():
            for spelling in (colourspace.getName(), *colourspace.getAliases()):
                spellings.setdefault(str(spelling).lower(), str(spelling))
        for role in self.ocio.getRoleNames():
            spellings.setdefault(str(role).lower(), str(role))
        for alias in FRIENDLY_ALIASES:
            spellings.setdefault(alias, alias)
        close = difflib.get_close_matches(name.strip().lower(), spellings, n=3, cutoff=0.6)
        suggestion = (
            f"did you mean {', '.join(repr(spellings[c]) for c in close)}? " if close else ""
        )
        return (
            f"unknown colourspace {name!r} in OCIO config {self._name}; {suggestion}"
            f"{self._known_names_hint()}"
        )

    def _known_names_hint(self) -> str:
        """A few known names, and how to list all of them."""
        scene = [
            str(n)
            for n in self.ocio.getColorSpaceNames(
                ocio.SEARCH_REFERENCE_SPACE_SCENE, ocio.COLORSPACE_ACTIVE
            )
        ]
        shown = scene[:6] or self.names()[:6]
        total = len(self.names())
        more = f" and {total - len(shown)} more" if total > len(shown) else ""
        return (
            f"Known colourspaces include {', '.join(repr(n) for n in shown)}{more}; their "
            f"aliases, roles such as {SCENE_LINEAR!r} and the friendly aliases "
            f"{', '.join(repr(a) for a in ('linear', 'srgb', 'lin_rec709', 'acescg', 'aces'))} "
            "work too. ColourManager.names() or `ociocheck --iconfig <config>` lists them all."
        )


def _choose_config(config: str | None) -> tuple[str, str]:
    """Return the config to load and where the choice came from (for messages)."""
    if config is not None:
        return config, "the config argument"
    from_env = os.environ.get(OCIO_ENV, "").strip()
    if from_env:
        return from_env, f"${OCIO_ENV}"
    return DEFAULT_CONFIG, "OCIO's built-in default"


def _load_config(source: str, origin: str) -> Any:
    """Load and validate an OCIO config, mapping OCIO's errors to ConfigError."""
    if not source.strip():
        raise ConfigError(f"the OCIO config from {origin} is empty; give a path or an ocio:// URI")
    try:
        config = ocio.Config.CreateFromFile(source)
        config.validate()
    except OCIO_ERRORS as exc:
        raise ConfigError(
            f"cannot load the OCIO config {source!r} (from {origin}): {exc}; give a path to a "
            f".ocio file or an ocio:// URI such as {DEFAULT_CONFIG!r}"
        ) from exc
    return config


def _identify_builtin(config: Any, builtin_name: str) -> str | None:
    """The colourspace of ``config`` that matches one of OCIO's built-in config, if any."""
    try:
        builtin = ocio.Config.CreateFromFile(DEFAULT_CONFIG)
        found = ocio.Config.IdentifyBuiltinColorSpace(config, builtin, builtin_name)
    except OCIO_ERRORS as exc:
        logger.debug("cannot identify %r in the config: %s", builtin_name, exc)
        return None
    return str(found) if found else None
