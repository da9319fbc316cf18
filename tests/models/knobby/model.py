"""A test model with every kind of knob; it reports the values it received."""

from __future__ import annotations

from frameserve import (
    BoolKnob,
    ButtonKnob,
    ChoiceKnob,
    FloatKnob,
    ImageSpec,
    IntKnob,
    Model,
    Prediction,
    ResultObject,
    StringKnob,
)


class Knobby(Model):
    """Multiplies the image by ``gain`` and reports every knob value as an object."""

    id = "knobby"
    label = "Knobby (test)"
    inputs = (ImageSpec("image", channels=3),)
    outputs = (ImageSpec("image", channels=3),)
    knobs = (
        BoolKnob("invert", default=False, help="Negate the image."),
        IntKnob("steps", default=2, min=1, max=10, help="A whole number."),
        FloatKnob("gain", default=1.0, min=0.0, max=4.0, help="Multiplies the image."),
        StringKnob("note", default="hello", help="Free text."),
        ChoiceKnob("mode", default="fast", choices=("fast", "best"), help="A menu."),
        ButtonKnob("report", help="Return the knob values."),
    )

    def predict(self, frames, knobs):
        image = frames["image"] * float(knobs["gain"])
        if knobs["invert"]:
            image = -image
        objects = [ResultObject("knobs", dict(knobs))] if knobs["report"] else []
        return Prediction(frames={"image": image}, objects=objects)
