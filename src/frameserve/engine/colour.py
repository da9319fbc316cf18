"""Colour conversions of frames between the colourspaces of an OpenColorIO config.

Frames arrive scene-linear unless a request says otherwise (see :mod:`frameserve.plugin.frames`):
in the colourspace of the config's ``scene_linear`` role. A model that wants something else
(most networks trained on photographs want sRGB-encoded values) declares it, and the runner
converts with a :class:`ColourManager` on the way in and back on the way out::

    colour = default_manager()                     # $OCIO, else OCIO's built-in ACES CG config
    srgb = colour.convert(frame, SCENE_LINEAR, "srgb")
    back = colour.convert(srgb, "srgb", SCENE_LINEAR)  # equals frame within float precision

Which config is loaded and what colourspace names (and the friendly aliases ``srgb``,
``linear``...) mean in it is :mod:`frameserve.engine.colourspaces`; this module builds OCIO
processors from it and applies them to frames.

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

import logging
import os
import threading
from typing import Any, Final, NamedTuple

import numpy as np
import PyOpenColorIO as ocio
import torch

from frameserve.engine.colourspaces import (
    DEFAULT_CONFIG,
    FRIENDLY_ALIASES,
    OCIO_ENV,
    OCIO_ERRORS,
    SCENE_LINEAR,
    ColourConfig,
    FriendlyAlias,
)
from frameserve.errors import ColourError
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

#: OCIO's own switch that replaces the optimisation flags of every processor (a deployment trap:
#: its default flags break the 1e-5 round trip of sRGB conversions).
OCIO_OPTIMIZATION_ENV: Final = "OCIO_OPTIMIZATION_FLAGS"

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


class _Conversion(NamedTuple):
    """A cached OCIO CPU processor for one (source, target) pair."""

    processor: Any
    is_noop: bool


class ColourManager:
    """Converts frames between the colourspaces of one OpenColorIO config.

    Args:
        config: a path to a studio ``.ocio`` file (or ``.ocioz``), or an ``ocio://`` URI such as
            ``"ocio://studio-config-latest"``. ``None`` uses ``$OCIO`` when it is set and not
            empty, else :data:`DEFAULT_CONFIG` (OCIO's built-in ACES CG config). See
            :class:`~frameserve.engine.colourspaces.ColourConfig`.

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
        self._config = ColourConfig(config)
        self._build_lock = threading.Lock()
        self._conversions: dict[tuple[str, str], _Conversion] = {}
        if os.environ.get(OCIO_OPTIMIZATION_ENV):
            logger.warning(
                "$%s is set (%s): OCIO applies it instead of frameserve's exact-pow flags, so "
                "conversions may be approximate (sRGB round trips off by up to 4e-5)",
                OCIO_OPTIMIZATION_ENV,
                os.environ[OCIO_OPTIMIZATION_ENV],
            )
        logger.info(
            "OCIO config %s (from %s): %d colourspaces, %s is %r",
            self.config_name,
            self._config.origin,
            len(self.names()),
            SCENE_LINEAR,
            self.resolve(SCENE_LINEAR),
        )

    def __repr__(self) -> str:
        return f"ColourManager({self.config_name!r})"

    @property
    def config_name(self) -> str:
        """What was loaded, for logs: the path or URI, and the config's own name."""
        return self._config.name

    def names(self) -> list[str]:
        """The names of the config's active colourspaces, in the config's order."""
        return self._config.names()

    def resolve(self, name: str) -> str:
        """Return the canonical colourspace name for a name, alias, role or friendly alias.

        Raises:
            ColourError: the config knows no such colourspace; the message suggests close
                names and says how to list them all.
        """
        return self._config.resolve(name)

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

    # -- processors ------------------------------------------------------------------------------

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
            processor = self._config.ocio.getProcessor(source, target).getOptimizedCPUProcessor(
                ocio.BIT_DEPTH_F32, ocio.BIT_DEPTH_F32, _OPTIMISATION
            )
        except OCIO_ERRORS as exc:
            raise ColourError(
                f"cannot convert {source!r} to {target!r} with OCIO config "
                f"{self.config_name}: {exc}"
            ) from exc
        is_noop = bool(processor.isNoOp())
        if not is_noop:
            self._probe(source, target, processor)
        logger.debug("OCIO conversion %r -> %r built (no-op: %s)", source, target, is_noop)
        return _Conversion(processor, is_noop)

    def _probe(self, source: str, target: str, forward: Any) -> None:
        """Log a warning when grey values sent from ``source`` to ``target`` do not come back."""
        try:
            inverse = self._config.ocio.getProcessor(target, source).getOptimizedCPUProcessor(
                ocio.BIT_DEPTH_F32, ocio.BIT_DEPTH_F32, _OPTIMISATION
            )
        except OCIO_ERRORS as exc:
            logger.warning(
                "OCIO conversion %r -> %r has no inverse in config %s (%s); values it changes "
                "cannot be restored",
                source,
                target,
                self.config_name,
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
                self.config_name,
                " or ".join(ranges),
            )


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
