"""What a model's weights are allowed to be used for: their licence, origin and commercial use.

A model declares the learned weights it runs as :class:`WeightsLicence` items::

    class Cutout(Model):
        weights = (
            WeightsLicence(
                name="U²-Netp",
                licence="Apache-2.0",
                source="github.com/xuebinqin/U-2-Net (u2netp.onnx)",
                commercial=True,
            ),
        )

``weights = ()`` says the model runs no learned weights (a blur, an optical flow by a
classical method); that is cleared for commercial use. A model that declares nothing
(``weights = None``, the default) is *undeclared*: ``frameserve serve --commercial-only``
refuses it, since nobody has said what its weights allow. Weights a TD supplies through an
environment variable are declared ``commercial=False`` with a note naming the variable: their
licence is whatever the TD's file carries, and the published ones are often non-commercial.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from frameserve.errors import ConfigError

__all__ = [
    "WeightsLicence",
    "check_weights",
    "cleared_for_commercial_use",
    "commercial_refusal",
    "describe_weights",
]


@dataclass(frozen=True, kw_only=True)
class WeightsLicence:
    """One set of learned weights a model runs, and what its licence allows.

    Attributes:
        name: what the weights are ("SINet portrait matte", "RIFE v4.x").
        licence: the licence, as an SPDX identifier where one exists ("MIT", "Apache-2.0").
        source: where they came from (repository, paper, or "trained by frameserve").
        commercial: whether the licence allows commercial use (a studio's shows).
        note: anything a TD must know (attribution terms, a file the TD supplies).
    """

    name: str
    licence: str
    source: str
    commercial: bool
    note: str = ""

    def describe(self) -> dict[str, Any]:
        """Return the declaration as plain data (model metadata, ``frameserve models``)."""
        return {
            "name": self.name,
            "licence": self.licence,
            "source": self.source,
            "commercial": self.commercial,
            "note": self.note,
        }


def check_weights(value: object, *, owner: str) -> tuple[WeightsLicence, ...] | None:
    """Return a model's ``weights`` declaration as a tuple (``None``: undeclared).

    Raises:
        ConfigError: it is neither ``None`` nor a sequence of :class:`WeightsLicence`.
    """
    if value is None:
        return None
    if (
        isinstance(value, str | bytes)
        or not isinstance(value, Sequence)
        or not all(isinstance(item, WeightsLicence) for item in value)
    ):
        raise ConfigError(
            f"{owner}: weights must be a sequence of WeightsLicence(...) items, () for a model "
            "that runs no learned weights, or None (undeclared)"
        )
    return tuple(value)


def cleared_for_commercial_use(weights: tuple[WeightsLicence, ...] | None) -> bool:
    """Whether every set of weights is declared and cleared for commercial use."""
    return weights is not None and all(item.commercial for item in weights)


def commercial_refusal(weights: tuple[WeightsLicence, ...] | None) -> str | None:
    """Why ``--commercial-only`` refuses a model with these weights (``None``: it does not)."""
    if weights is None:
        return (
            "refused by --commercial-only: the model does not declare the licence of its "
            "weights (a plug-in's 'weights' attribute, a package's commercial_use key)"
        )
    barred = [item for item in weights if not item.commercial]
    if not barred:
        return None
    what = "; ".join(
        f"{item.name} ({item.licence}, from {item.source}){': ' + item.note if item.note else ''}"
        for item in barred
    )
    return f"refused by --commercial-only: weights not cleared for commercial use: {what}"


def describe_weights(weights: tuple[WeightsLicence, ...] | None) -> list[dict[str, Any]] | None:
    """Return a ``weights`` declaration as plain data (``None`` stays ``None``: undeclared)."""
    return None if weights is None else [item.describe() for item in weights]
