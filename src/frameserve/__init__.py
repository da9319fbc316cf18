"""frameserve: a deep-learning frame server for compositing.

The names a model author needs are importable from here::

    from frameserve import FloatKnob, ImageSpec, Model
"""

from __future__ import annotations

from frameserve.errors import FrameServeError
from frameserve.plugin.knobs import (
    BoolKnob,
    ButtonKnob,
    ChoiceKnob,
    FloatKnob,
    IntKnob,
    KnobSpec,
    KnobValues,
    StringKnob,
)
from frameserve.plugin.licences import WeightsLicence
from frameserve.plugin.model import ImageSpec, Model, ModelSpec, Prediction, SpatialNeeds
from frameserve.plugin.results import ResultObject, python_script

__version__ = "0.1.0"

__all__ = [
    "BoolKnob",
    "ButtonKnob",
    "ChoiceKnob",
    "FloatKnob",
    "FrameServeError",
    "ImageSpec",
    "IntKnob",
    "KnobSpec",
    "KnobValues",
    "Model",
    "ModelSpec",
    "Prediction",
    "ResultObject",
    "SpatialNeeds",
    "StringKnob",
    "WeightsLicence",
    "__version__",
    "python_script",
]
