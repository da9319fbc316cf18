"""Colour conversions between the colourspaces of an OpenColorIO config.

Frames inside frameserve are scene-linear (see :mod:`frameserve.plugin.frames`): they are in the
colourspace of the config's ``scene_linear`` role. A model that wants something else (most
networks trained on photographs want sRGB-encoded values) declares it, and the runner converts
with a :class:`ColourManager` on the way in and back on the way out::

    colour = default_manager()                     # $OCIO, else OCIO's built-in ACES CG config
    srgb = colour.convert(frame, SCENE_LINEAR, "srgb")
    back = colour.convert(srgb, "srgb", SCENE_LINEAR)  # equals frame within float precision

**Which config.** ``ColourManager(config)`` takes a path to a studio ``.ocio`` file (or an
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

**What is converted.** :meth:`ColourManager.convert` converts the first three channels (RGB) of
a float32 ``(C, H, W)`` frame; channels after the third (alpha, mattes) are copied bit for
bit. A one- or two-channel frame is converted as grey: channel 0 goes in as R = G = B and
comes out as the mean of the three converted channels (equal to each of them for conversions
that keep neutrals neutral, as every conversion between the ACES config's RGB spaces does);
channel 1 (alpha) is copied. RGB values are converted as they arrive: frameserve does not
unpremultiply, so with a premultiplied frame and a non-linear target the soft edges differ
from unpremultiply-convert-premultiply.

**HDR values (the sRGB question).** In VFX, scene-linear values above 1 (highlights) and below
0 (out-of-gamut colours, negative lobes of filters) are normal. OCIO's sRGB texture colourspace
is an ``ExponentWithLinearTransform`` (gamma 2.4, offset 0.055, negative style ``linear``)
that *extends* the sRGB curve in both directions instead of clamping: above 1 the power
segment goes on (linear 10 encodes to 2.699, linear 100 to 7.133) and below 0 the straight
segment goes on (linear -1 encodes to -12.923). OCIO makes the two segments' slopes meet, so
its straight segment has slope 12.9232 up to linear 0.00304, where IEC 61966-2-1 rounds to
12.92 and 0.0031308 (a difference below 3e-4 relative, in the darkest values only).

The curve is strictly monotonic, so a model that declares sRGB receives encoded values above
1 for highlights, never a clipped frame, and converting its output back restores them:
scene-linear -> sRGB -> scene-linear round-trips within 2e-6 relative error from -100 to 1e6
(tested), provided OCIO computes ``pow`` exactly. OCIO's default CPU optimisation
(``OPTIMIZATION_FAST_LOG_EXP_POW``) uses a fast approximation of ``pow`` that is off by up to
4e-5 (linear 1.0 encodes to 1.0000067 and the round trip misses by 3.9e-5), so every processor
here is built with that flag turned off; exact ``pow`` makes sRGB conversions roughly 30-50%
slower (measured). OCIO lets ``$OCIO_OPTIMIZATION_FLAGS`` override those flags; a manager
created while it is set logs a WARNING. A model that needs values inside 0-1 must clamp them
itself and say so in its docs; frameserve never clips for it.

Studio configs may clamp where the ACES configs do not (an ``ExponentTransform`` clamps
negatives by default; a LUT clamps to its domain). Each conversion is therefore probed once,
when it is first used, with grey values from -1 to 100 sent there and back; if they do not come
back, a WARNING names the conversion and the range it alters ("below 0", "above 1"). The
conversion is still made: the config is the studio's decision, but never a silent one.

**NaN and Inf** pass through untouched: a pixel with a NaN or an infinity in any of its RGB
channels keeps all three channels exactly as they came (OCIO would turn them into NaN or huge
finite values, and a matrix would spread them to the pixel's other channels). Finite values
whose result overflows float32 become infinite, as in any float computation.

**Threads and speed.** One manager serves every thread: colourspace names and processors are
cached behind a lock, and OCIO's CPU processors are safe to apply from many threads at once
(they are built without dynamic properties). OCIO releases the GIL while it applies.
Conversions run on the CPU with a ``PlanarImageDesc`` over the frame's own channel planes (no
transpose); measured on a 1080p RGBA frame, planar is faster than packed RGB or RGBA (packed
needs a transposing copy each way). A frame on another device is copied to the CPU and back.
"""

from __future__ import annotations

import difflib
import logging
import os
import threading
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final, NamedTuple

import numpy as np
import PyOpenColorIO as ocio
import torch

from frameserve.errors import ColourError, ConfigError
from frameserve.plugin.frames import check_frame

__all__ = [
    "DEFAULT_CONFIG",
    "FRIENDLY_ALIASES",
    "OCIO_ENV",
    "OCIO_OPTIMIZATION_ENV",
    "SCENE_LINEAR",
    "ColourManager",
    "FriendlyAlias",
    "default_manager",
]

logger = logging.getLogger(__name__)

#: The OCIO role frames and models are in unless they say otherwise.
SCENE_LINEAR: Final = "scene_linear"

#: The environment variable naming the studio config (the one every OCIO application reads).
OCIO_ENV: Final = "OCIO"

#: OCIO's own switch that replaces the optimisation flags of every processor (a deployment trap:
#: its default flags break the 1e-5 round trip of sRGB conversions).
OCIO_OPTIMIZATION_ENV: Final = "OCIO_OPTIMIZATION_FLAGS"

#: The config used when neither a path nor ``$OCIO`` is given: OCIO's built-in ACES CG config.
DEFAULT_CONFIG: Final = "ocio://default"

#: Errors PyOpenColorIO raises (its ``ExceptionMissingFile`` does not derive from its own
#: ``Exception``, so both are named).
_OCIO_ERRORS: Final = (ocio.Exception, ocio.ExceptionMissingFile)

#: OCIO's default optimisation without the fast approximations of pow/log/exp (which miss by up
#: to 4e-5) and with dynamic properties frozen (so a processor holds no mutable state).
_OPTIMISATION: Final = ocio.OptimizationFlags(
    (int(ocio.OPTIMIZATION_DEFAULT) & ~int(ocio.OPTIMIZATION_FAST_LOG_EXP_POW))
    | int(ocio.OPTIMIZATION_NO_DYNAMIC_PROPERTIES)
)

#: Grey values sent through each new conversion and back, to find ranges the config clamps.
_PROBE_VALUES: Final = (-1.0, -0.01, 0.0, 0.001, 0.18, 0.5, 1.0, 4.0, 100.0)

#: Relative error above which a probe value counts as not coming back.
_PROBE_TOLERANCE: Final = 1e-4

#: Most spellings of colourspace names remembered per manager (names come from requests).
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


class _Conversion(NamedTuple):
    """A cached OCIO CPU processor for one (source, target) pair."""

    processor: Any
    is_noop: bool


class ColourManager:
    """Converts frames between the colourspaces of one OpenColorIO config.

    Args:
        config: a path to a studio ``.ocio`` file (or ``.ocioz``), or an ``ocio://`` URI such as
            ``"ocio://studio-config-latest"``. ``None`` uses ``$OCIO`` when it is set and not
            empty, else :data:`DEFAULT_CONFIG` (OCIO's built-in ACES CG config).

    Raises:
        ConfigError: the config is missing, cannot be parsed, does not validate, or has no
            ``scene_linear`` role.

    Example::

        colour = ColourManager("/studio/show/config.ocio")
        colour.resolve("linear")                   # e.g. "ACEScg"
        srgb = colour.convert(frame, "scene_linear", "srgb")

    One manager is safe to share between threads.
    """

    def __init__(self, config: str | None = None) -> None:
        source, origin = _choose_config(config)
        self._config: Any = _load_config(source, origin)
        own_name = str(self._config.getName())
        self._config_name = f"{source} ({own_name})" if own_name else source
        self._names_lock = threading.Lock()
        self._build_lock = threading.Lock()
        self._resolved: dict[str, str] = {}
        self._conversions: dict[tuple[str, str], _Conversion] = {}
        if self._config.getColorSpace(SCENE_LINEAR) is None:
            raise ConfigError(
                f"OCIO config {self._config_name} (from {origin}) has no {SCENE_LINEAR!r} role; "
                "frameserve needs it: it is the colourspace frames arrive in"
            )
        if os.environ.get(OCIO_OPTIMIZATION_ENV):
            logger.warning(
                "$%s is set (%s): OCIO applies it instead of frameserve's exact-pow flags, so "
                "conversions may be approximate (sRGB round trips off by up to 4e-5)",
                OCIO_OPTIMIZATION_ENV,
                os.environ[OCIO_OPTIMIZATION_ENV],
            )
        logger.info(
            "OCIO config %s (from %s): %d colourspaces, %s is %r",
            self._config_name,
            origin,
            len(self.names()),
            SCENE_LINEAR,
            self.resolve(SCENE_LINEAR),
        )

    def __repr__(self) -> str:
        return f"ColourManager({self._config_name!r})"

    @property
    def config_name(self) -> str:
        """What was loaded, for logs: the path or URI, and the config's own name."""
        return self._config_name

    def names(self) -> list[str]:
        """The names of the config's active colourspaces, in the config's order."""
        return [str(name) for name in self._config.getColorSpaceNames()]

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

    def convert(self, frame: torch.Tensor, source: str, target: str) -> torch.Tensor:
        """Convert the RGB channels of a frame from colourspace ``source`` to ``target``.

        Args:
            frame: float32 ``(C, H, W)`` tensor, any values (never clipped). Channels 0-2 are
                converted, later channels copied unchanged; with C of 1 or 2, channel 0 is
                converted as grey (R = G = B in, mean of the three out).
            source: the colourspace ``frame`` is in (any name :meth:`resolve` accepts).
            target: the colourspace wanted.

        Returns:
            A new float32 ``(C, H, W)`` tensor on the frame's device; or ``frame`` itself when
            both names resolve to the same colourspace or the conversion does nothing (treat
            the result as read-only). ``frame`` is never modified. NaN and Inf pixels come back
            untouched.

        Raises:
            FrameError: ``frame`` is not a float32 ``(C, H, W)`` tensor.
            ColourError: a colourspace is unknown, or OCIO cannot build the conversion.
        """
        check_frame(frame, what="frame to convert")
        source_name = self.resolve(source)
        target_name = self.resolve(target)
        if source_name == target_name:
            return frame
        conversion = self._conversion(source_name, target_name)
        if conversion.is_noop:
            return frame
        work = frame.detach()
        if work.device.type == "cpu":
            out = work.clone(memory_format=torch.contiguous_format)
        else:
            out = work.to("cpu", memory_format=torch.contiguous_format)
        if out.shape[0] >= 3:
            _apply_planar(conversion.processor, out[:3])
        else:
            grey = out[0].expand(3, -1, -1).contiguous()
            _apply_planar(conversion.processor, grey)
            out[0] = grey.mean(dim=0)
        return out.to(frame.device)

    # -- internals ------------------------------------------------------------------------------

    def _lookup(self, name: str) -> str:
        """Resolve ``name`` without the cache."""
        found = self._config.getColorSpace(name)
        if found is not None:
            return str(found.getName())
        alias = FRIENDLY_ALIASES.get(_alias_key(name))
        if alias is None:
            raise ColourError(self._unknown_message(name))
        for candidate in alias.candidates:
            found = self._config.getColorSpace(candidate)
            if found is not None:
                return str(found.getName())
        if alias.builtin is not None:
            identified = _identify_builtin(self._config, alias.builtin)
            if identified is not None:
                return identified
        raise ColourError(
            f"colourspace {name!r} means {alias.meaning}, but OCIO config {self._config_name} "
            f"has none (looked for {', '.join(repr(c) for c in alias.candidates)}); name one of "
            f"its colourspaces instead. {self._known_names_hint()}"
        )

    def _unknown_message(self, name: str) -> str:
        """The message for a name neither the config nor the alias table knows."""
        spellings: dict[str, str] = {}
        for colourspace in self._config.getColorSpaces():
            for spelling in (colourspace.getName(), *colourspace.getAliases()):
                spellings.setdefault(str(spelling).lower(), str(spelling))
        for role in self._config.getRoleNames():
            spellings.setdefault(str(role).lower(), str(role))
        for alias in FRIENDLY_ALIASES:
            spellings.setdefault(alias, alias)
        close = difflib.get_close_matches(name.strip().lower(), spellings, n=3, cutoff=0.6)
        suggestion = (
            f"did you mean {', '.join(repr(spellings[c]) for c in close)}? " if close else ""
        )
        return (
            f"unknown colourspace {name!r} in OCIO config {self._config_name}; {suggestion}"
            f"{self._known_names_hint()}"
        )

    def _known_names_hint(self) -> str:
        """A few known names, and how to list all of them."""
        scene = [
            str(n)
            for n in self._config.getColorSpaceNames(
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

    def _conversion(self, source: str, target: str) -> _Conversion:
        """The cached processor from ``source`` to ``target``, built on first use."""
        key = (source, target)
        with self._build_lock:
            conversion = self._conversions.get(key)
            if conversion is None:
                conversion = self._build(source, target)
                self._conversions[key] = conversion
        return conversion

    def _build(self, source: str, target: str) -> _Conversion:
        """Build the CPU processor for one pair and probe it for clamped ranges."""
        try:
            processor = self._config.getProcessor(source, target).getOptimizedCPUProcessor(
                ocio.BIT_DEPTH_F32, ocio.BIT_DEPTH_F32, _OPTIMISATION
            )
        except _OCIO_ERRORS as exc:
            raise ColourError(
                f"cannot convert {source!r} to {target!r} with OCIO config "
                f"{self._config_name}: {exc}"
            ) from exc
        is_noop = bool(processor.isNoOp())
        if not is_noop:
            self._probe(source, target, processor)
        logger.debug("OCIO conversion %r -> %r built (no-op: %s)", source, target, is_noop)
        return _Conversion(processor, is_noop)

    def _probe(self, source: str, target: str, forward: Any) -> None:
        """Log a warning when grey values sent from ``source`` to ``target`` do not come back."""
        try:
            inverse = self._config.getProcessor(target, source).getOptimizedCPUProcessor(
                ocio.BIT_DEPTH_F32, ocio.BIT_DEPTH_F32, _OPTIMISATION
            )
        except _OCIO_ERRORS as exc:
            logger.warning(
                "OCIO conversion %r -> %r has no inverse in config %s (%s); values it changes "
                "cannot be restored",
                source,
                target,
                self._config_name,
                exc,
            )
            return
        values = np.array(_PROBE_VALUES, dtype=np.float32)
        pixels = np.repeat(values[:, None], 3, axis=1)
        forward.applyRGB(pixels)
        inverse.applyRGB(pixels)
        error = np.abs(pixels - values[:, None]).max(axis=1) / np.maximum(1.0, np.abs(values))
        bad = ~(error <= _PROBE_TOLERANCE)  # NaN counts as bad
        ranges = [
            label
            for label, inside in (
                ("below 0", values < 0),
                ("inside 0-1", (values >= 0) & (values <= 1)),
                ("above 1", values > 1),
            )
            if bool((bad & inside).any())
        ]
        if ranges:
            logger.warning(
                "OCIO conversion %r -> %r in config %s does not round-trip values %s (the "
                "config clamps or approximates there): such values are changed by it",
                source,
                target,
                self._config_name,
                " or ".join(ranges),
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
    except _OCIO_ERRORS as exc:
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
    except _OCIO_ERRORS as exc:
        logger.debug("cannot identify %r in the config: %s", builtin_name, exc)
        return None
    return str(found) if found else None


def _apply_planar(processor: Any, rgb: torch.Tensor) -> None:
    """Apply an OCIO CPU processor in place to a contiguous float32 ``(3, H, W)`` CPU tensor.

    Pixels with a NaN or an infinity in any channel are left exactly as they were.
    """
    _, height, width = rgb.shape
    flat = rgb.view(3, -1)
    hidden: torch.Tensor | None = None
    saved: torch.Tensor | None = None
    # A sum is cheap and is finite only if every value is (a huge-but-finite frame may overflow
    # it; it then merely takes the masking path, which finds no pixel to hide).
    if not bool(torch.isfinite(rgb.sum())):
        # x * 0 is NaN exactly where x is NaN or infinite, and never overflows.
        non_finite = torch.isnan(flat[0] * 0 + flat[1] * 0 + flat[2] * 0)
        hidden = non_finite.nonzero().squeeze(1)
        saved = flat.index_select(1, hidden)
        flat.index_fill_(1, hidden, 0.0)
    red, green, blue = (rgb[i].numpy() for i in range(3))
    processor.apply(ocio.PlanarImageDesc(red, green, blue, width, height))
    if hidden is not None and saved is not None:
        flat.index_copy_(1, hidden, saved)


_default: ColourManager | None = None
_default_lock = threading.Lock()


def default_manager() -> ColourManager:
    """The process-wide manager for the default config, created on first call.

    The default config is ``$OCIO`` when set, else OCIO's built-in ACES CG config, read when
    this is first called. Safe to call from many threads; a failed load is not remembered.

    Raises:
        ConfigError: as :class:`ColourManager`.
    """
    global _default
    manager = _default
    if manager is None:
        with _default_lock:
            if _default is None:
                _default = ColourManager()
            manager = _default
    return manager
