"""Inference over the HTTP door, spoken to by real clients (``docs/http-api.md``).

``tritonclient.http`` works unchanged, with binary or JSON tensors; frames travel as
``[H, W, C]`` and come back bit for bit where the model does not change them; knobs travel as
request parameters; outputs can be asked for as FP16 or UINT8; frames are converted from and
back to the request's colourspace.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import skimage.data
import torch
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from frameserve.builtin_models.blur.model import gaussian_blur
from tests.support.http_client import (
    assert_still_serving,
    infer,
    infer_body,
    outputs_of,
    random_frame,
    triton_identity,
    triton_input,
)


def reference_blur(frame: np.ndarray, size: float, edges: str) -> np.ndarray:
    """Return frameserve's own ``gaussian_blur`` of an ``[H, W, C]`` frame, as ``[H, W, C]``."""
    planar = torch.from_numpy(np.ascontiguousarray(frame.transpose(2, 0, 1)))
    return gaussian_blur(planar, size, edges).permute(1, 2, 0).numpy()


# --- tritonclient: inference ----------------------------------------------------------------


def test_identity_returns_a_non_square_frame_bit_for_bit(triton):
    frame = random_frame(1)
    assert frame.shape == (23, 37, 3)
    image = triton_identity(triton, frame)
    assert image.dtype == np.float32
    assert image.shape == (23, 37, 3)
    np.testing.assert_array_equal(image, frame)


def test_identity_returns_a_real_photo_bit_for_bit(triton):
    photo = skimage.data.astronaut().astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(triton_identity(triton, photo), photo)


def test_fp16_input_is_widened(triton):
    frame = random_frame(2).astype(np.float16)
    image = triton_identity(triton, frame)
    assert image.dtype == np.float32
    np.testing.assert_array_equal(image, frame.astype(np.float32))


def test_uint8_input_maps_0_255_to_0_1(triton):
    frame = np.random.default_rng(3).integers(0, 256, size=(23, 37, 3), dtype=np.uint8)
    frame[0, 0] = (0, 128, 255)
    image = triton_identity(triton, frame)
    np.testing.assert_allclose(image, frame.astype(np.float32) / 255, rtol=0, atol=1e-7)
    np.testing.assert_allclose(image[0, 0], [0.0, 128 / 255, 1.0], rtol=0, atol=1e-7)


def test_blur_with_knobs_in_parameters_matches_gaussian_blur(triton):
    frame = random_frame(4)
    result = triton.infer(
        "blur",
        [triton_input("image", frame)],
        parameters={"size": 2.5, "edges": "mirror"},
    )
    image = result.as_numpy("image")
    assert image.shape == frame.shape
    expected = reference_blur(frame, 2.5, "mirror")
    np.testing.assert_allclose(image, expected, rtol=0, atol=1e-5)
    assert not np.allclose(image, reference_blur(frame, 2.5, "black"), atol=1e-3)
    assert result.as_numpy("objects") is None  # no button pressed, no objects


def test_blur_brightest_button_returns_a_python_script_object(triton):
    frame = np.zeros((23, 37, 3), dtype=np.float32)
    frame[5, 30] = 50.0  # one bright pixel: row 5 from the top, column 30
    result = triton.infer(
        "blur",
        [triton_input("image", frame)],
        parameters={"size": 1.0, "brightest": True},
    )
    objects = result.as_numpy("objects")
    assert objects is not None and objects.shape == (1,)
    document = json.loads(objects[0])
    assert document["name"] == "PythonScript"
    (record,) = document["records"]
    script = record["script"]
    assert script.startswith("nuke.message(")
    assert "x=30, y=17" in script  # Nuke counts y from the bottom: 23 - 1 - 5
    output = result.get_output("objects")
    assert output["datatype"] == "BYTES"


def test_difference_takes_two_inputs(triton):
    a, b = random_frame(5), random_frame(6)
    result = triton.infer(
        "difference",
        [triton_input("a", a), triton_input("b", b)],
        parameters={"absolute": False, "gain": 2.0},
    )
    np.testing.assert_allclose(result.as_numpy("image"), (a - b) * 2, rtol=1e-6, atol=1e-6)


def test_json_input_and_output(triton):
    frame = random_frame(7, height=5, width=6)
    result = triton.infer(
        "identity",
        [triton_input("image", frame, binary=False)],
        outputs=[triton_http.InferRequestedOutput("image", binary_data=False)],
    )
    output = result.get_output("image")
    assert "data" in output and "parameters" not in output
    np.testing.assert_array_equal(result.as_numpy("image"), frame)


def test_versioned_infer_path(triton):
    frame = random_frame(8, height=4, width=9)
    result = triton.infer("identity", [triton_input("image", frame)], model_version="1")
    np.testing.assert_array_equal(result.as_numpy("image"), frame)
    response = result.get_response()
    assert response["model_name"] == "identity"
    assert response["model_version"] == "1"


def test_a_batch_runs_each_frame(triton):
    batch = np.stack([random_frame(9), random_frame(10)])
    result = triton.infer("blur", [triton_input("image", batch)], parameters={"size": 1.5})
    image = result.as_numpy("image")
    assert image.shape == (2, 23, 37, 3)
    for index in range(2):
        expected = reference_blur(batch[index], 1.5, "extend")
        np.testing.assert_allclose(image[index], expected, rtol=0, atol=1e-5)


def test_tritonclient_error_carries_the_server_message(triton):
    with pytest.raises(InferenceServerException, match="unknown knob 'radius'"):
        triton.infer(
            "blur",
            [triton_input("image", random_frame(23, height=4, width=4))],
            parameters={"radius": 1},
        )
    assert triton.is_server_live()


# --- output datatypes (tritonclient cannot set output parameters) ----------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_output_as_fp16(server, binary):
    frame = random_frame(11)
    outputs = [{"name": "image", "parameters": {"datatype": "FP16", "binary_data": binary}}]
    reply = infer(server, "identity", infer_body([("image", frame)], outputs=outputs))
    image = outputs_of(reply)["image"]
    assert image.dtype == np.float16
    np.testing.assert_array_equal(image, frame.astype(np.float16))


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_output_as_uint8_is_rounded_and_clipped(server, binary):
    frame = np.random.default_rng(12).uniform(-0.5, 1.5, size=(23, 37, 3)).astype(np.float32)
    outputs = [{"name": "image", "parameters": {"datatype": "UINT8", "binary_data": binary}}]
    reply = infer(server, "identity", infer_body([("image", frame)], outputs=outputs))
    image = outputs_of(reply)["image"]
    assert image.dtype == np.uint8
    expected = np.clip(np.round(frame * np.float32(255)), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(image, expected)
    assert image.min() == 0 and image.max() == 255


def test_unknown_output_datatype_is_refused(server):
    outputs = [{"name": "image", "parameters": {"datatype": "FP64"}}]
    reply = infer(server, "identity", infer_body([("image", random_frame(13))], outputs=outputs))
    reply.error(400, "FP64", "FP32")
    assert_still_serving(server)


# --- colourspace -----------------------------------------------------------------------------


def test_colourspace_parameter_is_not_a_knob(server):
    frame = random_frame(24)
    for name in ("colourspace", "colorspace"):
        body = infer_body([("image", frame)], parameters={name: "scene_linear"})
        np.testing.assert_array_equal(outputs_of(infer(server, "identity", body))["image"], frame)


def test_frames_are_converted_from_and_back_to_the_request_colourspace(server):
    grey = np.full((4, 5, 3), 0.5, dtype=np.float32)  # sRGB-encoded mid grey
    body = infer_body([("image", grey)], parameters={"gain": 2.0, "colourspace": "srgb"})
    image = outputs_of(infer(server, "knobby", body))["image"]

    def decode(v: float) -> float:
        return ((v + 0.055) / 1.055) ** 2.4

    def encode(v: float) -> float:
        return 1.055 * v ** (1 / 2.4) - 0.055

    # knobby doubles the linear light: sRGB 0.5 comes back near 0.686, not 1.0.
    np.testing.assert_allclose(image, encode(2 * decode(0.5)), rtol=0, atol=2e-3)


@pytest.mark.parametrize(
    ("colourspace", "fragments"),
    [("no_such_space", ["unknown colourspace 'no_such_space'"]), (5, ["'colourspace'"])],
    ids=["unknown", "not-a-string"],
)
def test_bad_colourspace_is_400(server, colourspace, fragments):
    body = infer_body(
        [("image", random_frame(25, height=4, width=4))], parameters={"colourspace": colourspace}
    )
    infer(server, "identity", body).error(400, *fragments)
    assert_still_serving(server)
