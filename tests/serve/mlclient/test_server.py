"""The MLClient front door, end to end: a real server on loopback, spoken to like Nuke's node.

Every request here goes through ``tests/support/node_client.py``, which frames requests exactly
as Foundry's compiled MLClient node does (``docs/mlclient-protocol.md``). The tests read
as the promises the README makes to an artist and a TD:

- Connect lists every model with its inputs, outputs and knobs, each knob showing its default;
- frames come back bit for bit where the model does not change them, in Nuke's orientation;
- knob values belong to the request that sent them;
- every mistake a client can make is answered with an ``Error`` that says what is allowed, and
  the server goes on serving;
- one slow render or one silent client never holds up another artist.
"""

from __future__ import annotations

import ast
import math
import re
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import scipy.ndimage
import skimage.data

from frameserve.engine.limits import DEFAULT_MAX_FRAME_BYTES
from frameserve.serve.mlclient import messages as pb
from frameserve.serve.server import FrameServer
from tests.support.node_client import (
    NodeClient,
    decode_image,
    encode_image,
    frame_request,
    inference_request,
    parse_reply,
    recv_until_eof,
)
from tests.support.servers import start_server

#: Idle timeout of the servers that test stalled and silent clients.
STALL_TIMEOUT = 0.5
#: Upper bound on any wait for a reply: a guard against hanging, never a speed target.
HANG_GUARD = 20.0

KNOBBY_KNOBS = "invert, steps, gain, note, mode, report"


# --- helpers -------------------------------------------------------------------------------


def random_frame(seed: int, *, channels: int = 3, height: int = 23, width: int = 37) -> np.ndarray:
    """Return a float32 ``(C, H, W)`` frame of scene-linear values (some above 1, some below 0)."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-0.5, 4.0, size=(channels, height, width)).astype(np.float32)


def image_of(reply: pb.RespondWrapper) -> np.ndarray:
    """Return the first image of a successful inference reply, top row first."""
    assert not reply.HasField("error"), f"expected an image, got the error {reply.error.msg!r}"
    assert reply.info and reply.HasField("r2")
    assert reply.r2.num_images == len(reply.r2.images) >= 1
    return decode_image(reply.r2.images[0])


def error_of(reply: pb.RespondWrapper) -> str:
    """Return the message of an ``Error`` reply (failing the test for any other reply)."""
    assert reply.HasField("error"), f"expected an Error reply, got {reply}"
    assert reply.info, "the node only reads replies with info set"
    assert reply.error.msg, "an Error reply must say what was wrong"
    return str(reply.error.msg)


def send_body(node: NodeClient, body: bytes) -> pb.RespondWrapper:
    """Frame ``body`` with a correct header, send it and return the parsed reply."""
    return parse_reply(node.send_raw(b"%012d" % len(body) + body, shutdown_write=True))


def send_bytes(node: NodeClient, data: bytes) -> pb.RespondWrapper:
    """Send raw bytes (no header added), close the sending side and parse the reply."""
    return parse_reply(node.send_raw(data, shutdown_write=True))


def assert_still_serving(node: NodeClient) -> None:
    """An info request on a new connection is answered with the model list."""
    reply = node.info()
    assert not reply.HasField("error")
    assert "identity" in {model.name for model in reply.r1.models}


def report_of(reply: pb.RespondWrapper) -> dict[str, object]:
    """Return the knob values knobby reported, read back from its ``knobs`` object."""
    assert reply.r2.num_objects == len(reply.r2.objects) == 1
    obj = reply.r2.objects[0]
    assert obj.name == "knobs"
    record = obj.values[0]
    values: dict[str, object] = {}
    for attributes in (record.int_attributes, record.float_attributes, record.string_attributes):
        for attribute in attributes:
            assert len(attribute.values) == 1
            values[attribute.name] = attribute.values[0]
    return values


def option(model: pb.Model, name: str) -> pb.BoolAttrib:
    """Return the bool, int, float, string or button option called ``name``."""
    for field in ("bool_options", "int_options", "float_options", "string_options"):
        for candidate in getattr(model, field):
            if candidate.name == name:
                return candidate
    for candidate in model.button_options:
        if candidate.name == name:
            return candidate
    raise KeyError(name)


def remove_option(model: pb.Model, name: str) -> None:
    """Remove every option called ``name`` from the model's option lists."""
    for field in ("bool_options", "int_options", "float_options", "string_options"):
        options = getattr(model, field)
        keep = [o for o in options if o.name != name]
        del options[:]
        options.extend(keep)


def readable(sock: socket.socket) -> bool:
    """Whether ``sock`` has data or end-of-file waiting right now."""
    return bool(select.select([sock], [], [], 0)[0])


def read_to_eof(sock: socket.socket) -> bytes:
    """Read everything until the server closes (bounded by the socket's timeout)."""
    data = bytearray()
    while piece := sock.recv(65536):
        data += piece
    return bytes(data)


@pytest.fixture
def impatient_server() -> Iterator[FrameServer]:
    """A server that drops a client after ``STALL_TIMEOUT`` seconds of silence."""
    running = start_server(read_timeout=STALL_TIMEOUT)
    yield running
    running.close()


def client_of(server: FrameServer) -> NodeClient:
    """Return a node client for ``server``."""
    host, port = server.mlclient_address
    return NodeClient(host, port, timeout=HANG_GUARD)


# --- info: what the node shows after Connect ----------------------------------------------


def test_info_lists_the_builtin_and_test_models_but_not_the_broken_one(node: NodeClient) -> None:
    reply = node.info()  # the client checks that the body arrived in one recv, as the node reads it
    assert reply.info and not reply.HasField("error")
    models = {model.name: model for model in reply.r1.models}
    assert reply.r1.num_models == len(reply.r1.models)
    assert {"identity", "blur", "difference", "knobby", "slow"} <= set(models)
    assert "broken_import" not in models
    labels = {name: models[name].label for name in ("identity", "blur", "difference", "knobby")}
    assert labels == {
        "identity": "Identity",
        "blur": "Gaussian Blur",
        "difference": "Difference",
        "knobby": "Knobby (test)",
    }
    assert models["slow"].label == "slow"  # a model without a label shows its id


@pytest.mark.parametrize(
    ("name", "inputs"),
    [
        ("identity", [("image", 3)]),
        ("blur", [("image", 3)]),
        ("difference", [("a", 3), ("b", 3)]),
        ("knobby", [("image", 3)]),
        ("slow", [("image", 3)]),
    ],
)
def test_info_lists_each_models_inputs_and_nothing_the_node_ignores(
    node: NodeClient, name: str, inputs: list[tuple[str, int]]
) -> None:
    model = node.model(name)
    assert [(i.name, i.channels) for i in model.inputs] == inputs
    # compact: the node reads neither outputs nor menus, so the reply leaves them out
    assert not model.outputs and not model.mc_options


def test_every_option_carries_exactly_one_value_its_default(node: NodeClient) -> None:
    for model in node.info().r1.models:
        for field in (
            "bool_options",
            "int_options",
            "float_options",
            "string_options",
            "button_options",
        ):
            for opt in getattr(model, field):
                assert len(opt.values) == 1, f"{model.name}.{opt.name} in {field}: {opt.values}"


def test_info_shows_every_knob_kind_with_its_default(node: NodeClient) -> None:
    knobby = node.model("knobby")
    assert [(o.name, list(o.values)) for o in knobby.bool_options] == [("invert", [False])]
    assert [(o.name, list(o.values)) for o in knobby.int_options] == [("steps", [2])]
    assert [(o.name, list(o.values)) for o in knobby.float_options] == [("gain", [1.0])]
    # the node ignores menus: the choice knob is a plain string option holding its default
    assert [(o.name, list(o.values)) for o in knobby.string_options] == [
        ("note", ["hello"]),
        ("mode", ["fast"]),
    ]
    assert [(o.name, list(o.values)) for o in knobby.button_options] == [("report", [False])]


def test_info_shows_the_builtin_models_knobs(node: NodeClient) -> None:
    blur = node.model("blur")
    assert [(o.name, list(o.values)) for o in blur.float_options] == [("size", [5.0])]
    assert [(o.name, list(o.values)) for o in blur.string_options] == [("edges", ["extend"])]
    assert [(o.name, list(o.values)) for o in blur.button_options] == [("brightest", [False])]
    difference = node.model("difference")
    assert [(o.name, list(o.values)) for o in difference.bool_options] == [("absolute", [True])]
    assert [(o.name, list(o.values)) for o in difference.float_options] == [("gain", [1.0])]
    identity = node.model("identity")
    assert not any(
        getattr(identity, field)
        for field in (
            "bool_options",
            "int_options",
            "float_options",
            "string_options",
            "button_options",
            "mc_options",
        )
    )


# --- identity: frames travel bit for bit, in Nuke's orientation ---------------------------


def test_identity_returns_the_frame_bit_for_bit(node: NodeClient) -> None:
    frame = random_frame(1, height=23, width=37)
    reply = node.infer(node.model("identity"), [frame])
    image = reply.r2.images[0]
    assert (image.width, image.height, image.channels) == (37, 23, 3)
    assert image_of(reply).view(np.uint32).tobytes() == frame.view(np.uint32).tobytes()


def test_identity_keeps_rows_in_nukes_bottom_up_order(node: NodeClient) -> None:
    frame = np.zeros((3, 23, 37), dtype=np.float32)
    frame[:, 0, :] = [[1.0], [2.0], [3.0]]  # only the top row is lit, a different value per plane
    reply = node.infer(node.model("identity"), [frame])
    wire = np.frombuffer(reply.r2.images[0].image, dtype="<f4").reshape(3, 23, 37)
    # planar, bottom row first: the top row is the last row of each plane on the wire
    assert np.array_equal(wire[:, -1, :], frame[:, 0, :])
    assert not wire[:, :-1, :].any()
    assert np.array_equal(image_of(reply), frame)


def test_identity_passes_nan_and_inf_through_unchanged(node: NodeClient) -> None:
    special = np.array(
        [
            0x7FC00000,  # NaN
            0xFFC00000,  # -NaN
            0x7FC12345,  # NaN with a payload
            0x7F800001,  # signalling NaN
            0x7F800000,  # +Inf
            0xFF800000,  # -Inf
            0x80000000,  # -0.0
            0x00000001,  # the smallest denormal
            0x7F7FFFFF,  # the largest float32
        ],
        dtype=np.uint32,
    )
    frame = random_frame(2, height=5, width=7)
    frame.reshape(-1)[3 : 3 + special.size] = special.view(np.float32)
    frame[2, 4, 6] = np.inf  # the bottom-right pixel of the last plane
    reply = node.infer(node.model("identity"), [frame])
    assert image_of(reply).view(np.uint32).tobytes() == frame.view(np.uint32).tobytes()


def test_identity_keeps_the_first_three_channels_of_an_rgba_frame(node: NodeClient) -> None:
    frame = random_frame(3, channels=4, height=6, width=9)
    assert np.array_equal(image_of(node.infer(node.model("identity"), [frame])), frame[:3])


def test_a_request_that_arrives_in_pieces_is_served(node: NodeClient) -> None:
    frame = random_frame(4, height=8, width=11)
    request = frame_request(inference_request(node.model("identity"), [frame]))
    with socket.create_connection((node.host, node.port), timeout=HANG_GUARD) as sock:
        for start, end in [(0, 5), (5, 12), (12, 40), (40, len(request))]:
            sock.sendall(request[start:end])
            time.sleep(0.02)
        reply = parse_reply(read_to_eof(sock))
    assert np.array_equal(image_of(reply), frame)


def test_the_server_closes_the_connection_after_an_inference_reply(node: NodeClient) -> None:
    frame = random_frame(5, height=10, width=12)
    request = frame_request(inference_request(node.model("identity"), [frame]))
    with socket.create_connection((node.host, node.port), timeout=HANG_GUARD) as sock:
        sock.sendall(request)
        # the node reads 1 KiB at a time until end-of-file: a server that kept the connection
        # open would leave this read waiting until the socket timed out
        raw = recv_until_eof(sock, size_hint=0, chunk=1024)
    assert int(raw[:12]) == len(raw)  # the reply header counts itself: 12 + the body
    assert np.array_equal(image_of(parse_reply(raw)), frame)


# --- blur ------------------------------------------------------------------------------------


def astronaut() -> np.ndarray:
    """Return a real photo as a float32 ``(3, H, W)`` frame in 0..1 (downscaled, non-square)."""
    photo = skimage.data.astronaut()[::4, ::5]  # 128 x 103 pixels
    return np.ascontiguousarray(photo.transpose(2, 0, 1), dtype=np.float32) / np.float32(255)


@pytest.mark.parametrize(
    ("edges", "scipy_mode"), [("extend", "nearest"), ("mirror", "mirror"), ("black", "constant")]
)
@pytest.mark.parametrize("size", [1.0, 3.0])
def test_blur_matches_scipys_gaussian_filter(
    node: NodeClient, edges: str, scipy_mode: str, size: float
) -> None:
    photo = astronaut()
    reply = node.infer(node.model("blur"), [photo], knobs={"size": size, "edges": edges})
    expected = scipy.ndimage.gaussian_filter(
        photo.astype(np.float64), sigma=(0, size, size), mode=scipy_mode, truncate=3.0
    )
    result = image_of(reply)
    assert result.shape == photo.shape
    np.testing.assert_allclose(result, expected, rtol=0, atol=1e-4)
    assert not np.allclose(result, photo, atol=1e-3)  # it did blur


def test_blur_of_size_zero_returns_the_input(node: NodeClient) -> None:
    photo = astronaut()
    reply = node.infer(node.model("blur"), [photo], knobs={"size": 0.0})
    assert np.array_equal(image_of(reply), photo)


def nuke_message_text(script: str) -> str:
    """Return the text of a script that is exactly one call ``nuke.message('<text>')``."""
    tree = ast.parse(script, mode="eval")
    call = tree.body
    assert isinstance(call, ast.Call)
    assert ast.unparse(call.func) == "nuke.message"
    assert len(call.args) == 1 and not call.keywords
    text = call.args[0]
    assert isinstance(text, ast.Constant) and isinstance(text.value, str)
    return text.value


@pytest.mark.parametrize(("row", "x"), [(7, 29), (0, 0), (29, 40)])
def test_blurs_brightest_button_reports_the_pixel_in_nukes_coordinates(
    node: NodeClient, row: int, x: int
) -> None:
    height, width = 30, 41
    frame = np.full((3, height, width), 0.1, dtype=np.float32)
    frame[:, row, x] = 50.0
    reply = node.infer(node.model("blur"), [frame], knobs={"size": 1.0}, press="brightest")
    assert image_of(reply).shape == frame.shape  # the render still gets its image
    assert reply.r2.num_objects == len(reply.r2.objects) == 1
    script_object = reply.r2.objects[0]
    assert script_object.name == "PythonScript"
    script = script_object.values[0].string_attributes[0].values[0]
    text = nuke_message_text(script)
    position = re.search(r"x=(\d+), y=(\d+)", text)
    assert position is not None, text
    assert (int(position[1]), int(position[2])) == (x, height - 1 - row)  # Nuke's y points up


def test_blur_without_a_button_press_returns_no_objects(node: NodeClient) -> None:
    reply = node.infer(node.model("blur"), [random_frame(6)], knobs={"size": 1.0})
    image_of(reply)
    assert reply.r2.num_objects == 0 and not reply.r2.objects


def test_blur_survives_nan_and_inf_pixels(node: NodeClient) -> None:
    frame = random_frame(7, height=16, width=40)
    frame[0, 3, 3] = np.nan
    frame[1, 8, 4] = np.inf
    frame[2, 12, 5] = -np.inf
    reply = node.infer(node.model("blur"), [frame], knobs={"size": 2.0}, press="brightest")
    result = image_of(reply)
    assert result.shape == frame.shape
    assert np.isfinite(result[:, :, 20:]).all()  # pixels beyond the kernel's reach stay finite
    assert reply.r2.objects[0].name == "PythonScript"
    assert_still_serving(node)


# --- difference: two inputs ------------------------------------------------------------------


def test_difference_is_absolute_by_default(node: NodeClient) -> None:
    a, b = random_frame(8), random_frame(9)
    reply = node.infer(node.model("difference"), [a, b])
    assert np.array_equal(image_of(reply), np.abs(a - b))


def test_difference_signed_with_gain(node: NodeClient) -> None:
    a, b = random_frame(10), random_frame(11)
    reply = node.infer(node.model("difference"), [a, b], knobs={"absolute": False, "gain": 2.5})
    result = image_of(reply)
    np.testing.assert_allclose(result, (a - b) * np.float32(2.5), rtol=1e-6, atol=0)
    assert (result < 0).any()


def test_difference_takes_its_inputs_in_declared_order(node: NodeClient) -> None:
    a, b = random_frame(12), random_frame(13)
    model = node.model("difference")
    forward = image_of(node.infer(model, [a, b], knobs={"absolute": False}))
    backward = image_of(node.infer(model, [b, a], knobs={"absolute": False}))
    assert np.array_equal(forward, a - b)
    assert np.array_equal(backward, -forward)


def test_difference_of_frames_of_different_sizes_is_an_error(node: NodeClient) -> None:
    reply = node.infer(node.model("difference"), [random_frame(14), random_frame(15, width=30)])
    assert "same size" in error_of(reply)
    assert_still_serving(node)


# --- knobs belong to the request ---------------------------------------------------------


KNOB_SET_A: dict[str, object] = {
    "invert": True,
    "steps": 7,
    "gain": 0.25,
    "note": "shot 010",
    "mode": "best",
}
KNOB_SET_B: dict[str, object] = {
    "invert": False,
    "steps": 3,
    "gain": 3.5,
    "note": "plate B",
    "mode": "fast",
}
KNOBBY_DEFAULTS: dict[str, object] = {
    "invert": False,
    "steps": 2,
    "gain": 1.0,
    "note": "hello",
    "mode": "fast",
}


def expected_report(knobs: dict[str, object], *, pressed: bool = True) -> dict[str, object]:
    """Return what knobby reports for ``knobs`` (bools arrive as ints)."""
    report = {**knobs, "report": pressed}
    return {k: int(v) if isinstance(v, bool) else v for k, v in report.items()}


def knobby_render(node: NodeClient, frame: np.ndarray, knobs: dict[str, object]) -> np.ndarray:
    """Render knobby with ``knobs`` and the report button pressed; check the report."""
    reply = node.infer(node.model("knobby"), [frame], knobs=knobs, press="report")
    assert report_of(reply) == expected_report(knobs)
    return image_of(reply)


def knobby_expected_image(frame: np.ndarray, knobs: dict[str, object]) -> np.ndarray:
    """Return knobby's output: the frame times ``gain``, negated when ``invert``."""
    image = frame * np.float32(knobs["gain"])  # type: ignore[arg-type]
    return -image if knobs["invert"] else image


def test_each_request_gets_exactly_its_own_knob_values(node: NodeClient) -> None:
    frame = random_frame(20, height=6, width=8)
    for knobs in (KNOB_SET_A, KNOB_SET_B, KNOB_SET_A):  # interleaved, one after another
        image = knobby_render(node, frame, knobs)
        assert np.array_equal(image, knobby_expected_image(frame, knobs))


def test_concurrent_requests_keep_their_own_knob_values(node: NodeClient) -> None:
    jobs = [
        (random_frame(30 + i, height=6, width=8), (KNOB_SET_A, KNOB_SET_B)[i % 2])
        for i in range(12)
    ]
    start = threading.Barrier(len(jobs))

    def render(frame: np.ndarray, knobs: dict[str, object]) -> np.ndarray:
        start.wait(timeout=HANG_GUARD)
        return knobby_render(node, frame, knobs)

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = [pool.submit(render, frame, knobs) for frame, knobs in jobs]
        images = [future.result(timeout=HANG_GUARD) for future in futures]
    for (frame, knobs), image in zip(jobs, images, strict=True):
        assert np.array_equal(image, knobby_expected_image(frame, knobs))


def test_info_after_a_request_still_shows_the_defaults(node: NodeClient) -> None:
    knobby_render(node, random_frame(21, height=4, width=4), KNOB_SET_A)
    after = node.model("knobby")
    assert {o.name: list(o.values) for o in after.bool_options} == {"invert": [False]}
    assert {o.name: list(o.values) for o in after.int_options} == {"steps": [2]}
    assert {o.name: list(o.values) for o in after.float_options} == {"gain": [1.0]}
    assert {o.name: list(o.values) for o in after.string_options} == {
        "note": ["hello"],
        "mode": ["fast"],
    }
    assert {o.name: list(o.values) for o in after.button_options} == {"report": [False]}


def test_a_render_after_a_button_press_does_not_see_the_press(node: NodeClient) -> None:
    knobby = node.model("knobby")
    frame = random_frame(22, height=4, width=4)
    assert node.infer(knobby, [frame], press="report").r2.num_objects == 1
    assert node.infer(knobby, [frame], knobs=KNOB_SET_A).r2.num_objects == 0


def test_a_knob_the_request_does_not_send_gets_its_default(node: NodeClient) -> None:
    knobby = node.model("knobby")
    for name in ("invert", "steps", "gain", "note", "mode"):
        remove_option(knobby, name)
    del knobby.mc_options[:]
    frame = random_frame(23, height=4, width=4)
    reply = node.infer(knobby, [frame], press="report")
    assert report_of(reply) == expected_report(KNOBBY_DEFAULTS)
    assert np.array_equal(image_of(reply), frame)


def test_a_menu_value_sent_through_mc_options_is_used(node: NodeClient) -> None:
    knobby = node.model("knobby")
    remove_option(knobby, "mode")
    knobby.mc_options.add(name="mode", value="best")  # a client that understands menus
    reply = node.infer(knobby, [random_frame(24, height=4, width=4)], press="report")
    assert report_of(reply)["mode"] == "best"


# --- knob errors: each names the knob and what is allowed ------------------------------------


def set_values(name: str, *values: object) -> Callable[[pb.Model], None]:
    """Return an edit that gives option ``name`` exactly ``values``."""

    def edit(model: pb.Model) -> None:
        target = option(model, name)
        del target.values[:]
        target.values.extend(values)

    return edit


def send_as(field: str, name: str, value: object) -> Callable[[pb.Model], None]:
    """Return an edit that moves knob ``name`` into another option list (another wire type)."""

    def edit(model: pb.Model) -> None:
        remove_option(model, name)
        getattr(model, field).add(name=name, values=[value])

    return edit


def add_option(field: str, name: str, value: object) -> Callable[[pb.Model], None]:
    """Return an edit that adds an option the model does not declare."""

    def edit(model: pb.Model) -> None:
        getattr(model, field).add(name=name, values=[value])

    return edit


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        pytest.param(
            add_option("float_options", "colour", 1.0),
            ["unknown knob 'colour'", KNOBBY_KNOBS],
            id="unknown knob",
        ),
        pytest.param(set_values("steps", 11), ["'steps'", "above the maximum 10"], id="int>max"),
        pytest.param(set_values("steps", 0), ["'steps'", "below the minimum 1"], id="int<min"),
        pytest.param(set_values("gain", 4.5), ["'gain'", "above the maximum 4"], id="float>max"),
        pytest.param(set_values("gain", -0.5), ["'gain'", "below the minimum 0"], id="float<min"),
        pytest.param(set_values("gain", math.nan), ["'gain'", "finite"], id="float nan"),
        pytest.param(
            send_as("string_options", "steps", "many"),
            ["'steps'", "'many'", "expected a whole number"],
            id="string for int",
        ),
        pytest.param(
            send_as("float_options", "steps", 2.5),
            ["'steps'", "expected a whole number"],
            id="fraction for int",
        ),
        pytest.param(
            send_as("int_options", "note", 3), ["'note'", "expected a string"], id="int for string"
        ),
        pytest.param(
            send_as("float_options", "invert", 0.5),
            ["'invert'", "expected a bool"],
            id="float for bool",
        ),
        pytest.param(
            set_values("mode", "slow"),
            ["'mode'", "'slow'", "'fast', 'best'"],
            id="choice not among choices",
        ),
        pytest.param(set_values("steps"), ["'steps'", "exactly one value", "got 0"], id="0 values"),
        pytest.param(
            set_values("steps", 3, 4), ["'steps'", "exactly one value", "got 2"], id="2 values"
        ),
        pytest.param(
            add_option("float_options", "steps", 3.0), ["'steps'", "sent twice"], id="sent twice"
        ),
    ],
)
def test_a_bad_knob_value_is_an_error_naming_the_knob(
    node: NodeClient, edit: Callable[[pb.Model], None], expected: list[str]
) -> None:
    knobby = node.model("knobby")
    edit(knobby)
    request = inference_request(knobby, [random_frame(40, height=4, width=4)])
    message = error_of(node.send_inference(frame_request(request)))
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"
    assert_still_serving(node)


def test_a_float_knob_at_its_bound_is_accepted(node: NodeClient) -> None:
    reply = node.infer(
        node.model("knobby"),
        [random_frame(41, height=4, width=4)],
        knobs={"gain": 4.0},
        press="report",
    )
    assert report_of(reply)["gain"] == 4.0


# --- bad input: every mistake is answered, and the server keeps serving ---------------------


@pytest.mark.parametrize(
    "header", [b"hello world!", b"00000000001x", b"-00000000010", b"         100", b"+00000000010"]
)
def test_a_header_that_is_not_twelve_digits_is_an_error(node: NodeClient, header: bytes) -> None:
    message = error_of(send_bytes(node, header + b"\x08\x01\x12\x02\x08\x01"))
    assert "12 ASCII digits" in message
    assert_still_serving(node)


def test_a_header_cut_short_is_an_error(node: NodeClient) -> None:
    assert "12 ASCII digits" in error_of(send_bytes(node, b"00000"))
    assert_still_serving(node)


def test_a_request_above_the_size_cap_is_an_error() -> None:
    server = start_server(max_frame_bytes=4096)
    try:
        node = client_of(server)
        limit = server.settings.max_request_bytes(server.registry.largest_input_count())
        message = error_of(send_bytes(node, b"%012d" % (limit + 1)))
        assert "above the limit" in message and str(limit) in message
        assert_still_serving(node)
        # a request of exactly the limit is admitted: it fails only because no body follows
        assert "ended after 0 of" in error_of(send_bytes(node, b"%012d" % limit))
    finally:
        server.close()


def test_a_frame_above_max_frame_bytes_is_an_error() -> None:
    server = start_server(max_frame_bytes=4096)
    try:
        node = client_of(server)
        frame = random_frame(50, height=40, width=40)  # 19,200 bytes of pixels
        message = error_of(node.infer(node.model("identity"), [frame]))
        assert "4096" in message
    finally:
        server.close()


def test_the_default_cap_admits_an_8k_rgba_frame(node: NodeClient, server: FrameServer) -> None:
    frame_bytes = 8192 * 4320 * 4 * 4
    assert server.settings.max_frame_bytes == DEFAULT_MAX_FRAME_BYTES == frame_bytes
    # the message around the frame: the image's field headers and a model with a few options
    request_bytes = frame_bytes + 4096
    assert server.settings.max_request_bytes(1) >= request_bytes
    # the header alone is admitted: the error is about the missing body, not about the size
    message = error_of(send_bytes(node, b"%012d" % request_bytes))
    assert f"ended after 0 of the {request_bytes} bytes" in message
    assert_still_serving(node)


def test_a_body_shorter_than_its_header_announced_is_an_error(node: NodeClient) -> None:
    body = inference_request(node.model("identity"), [random_frame(51, height=4, width=4)])
    raw = body.SerializeToString()
    half = len(raw) // 2
    message = error_of(send_bytes(node, b"%012d" % len(raw) + raw[:half]))
    assert f"ended after {half} of the {len(raw)} bytes" in message
    assert_still_serving(node)


def test_a_client_that_stalls_mid_body_is_dropped_while_others_are_served(
    impatient_server: FrameServer,
) -> None:
    node = client_of(impatient_server)
    request = frame_request(inference_request(node.model("identity"), [random_frame(52)]))
    with socket.create_connection((node.host, node.port), timeout=HANG_GUARD) as stalled:
        stalled.sendall(request[: len(request) // 2])
        for _ in range(3):  # others are served while the stalled client holds its connection
            assert_still_serving(node)
        assert not readable(stalled), "the stalled client was answered before the others"
        raw = read_to_eof(stalled)  # answered (or closed) once its timeout has passed
    if raw:
        assert "request incomplete" in error_of(parse_reply(raw))
    assert_still_serving(node)


def test_a_client_that_sends_nothing_is_dropped_while_others_are_served(
    impatient_server: FrameServer,
) -> None:
    node = client_of(impatient_server)
    with socket.create_connection((node.host, node.port), timeout=HANG_GUARD) as silent:
        for _ in range(3):
            assert_still_serving(node)
        assert not readable(silent), "the silent client was dropped before the others were served"
        raw = read_to_eof(silent)
    if raw:
        assert "request incomplete" in error_of(parse_reply(raw))
    assert_still_serving(node)


def test_more_connections_than_allowed_are_told_the_server_is_busy() -> None:
    server = start_server(max_connections=1)
    try:
        node = client_of(server)
        with socket.create_connection((node.host, node.port), timeout=HANG_GUARD):
            reply = node.info()  # one connection is held open by the silent client
            assert "server busy" in error_of(reply)
        # once the silent client leaves, its place is free again
        deadline = time.monotonic() + HANG_GUARD
        while node.info().HasField("error"):
            assert time.monotonic() < deadline, "the slot was never given back"
            time.sleep(0.01)
    finally:
        server.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_body_of_random_bytes_is_an_error(node: NodeClient, seed: int) -> None:
    body = np.random.default_rng(seed).integers(0, 256, size=300, dtype=np.uint8).tobytes()
    message = error_of(send_body(node, body))
    assert not message.startswith("internal server error"), message
    assert_still_serving(node)


def test_a_truncated_message_is_an_error(node: NodeClient) -> None:
    request = inference_request(node.model("identity"), [random_frame(53, height=4, width=4)])
    raw = request.SerializeToString()
    message = error_of(send_body(node, raw[: len(raw) - 7]))
    assert "request message" in message
    assert_still_serving(node)


@pytest.mark.parametrize(
    "wrapper",
    [pb.RequestWrapper(info=True), pb.RequestWrapper()],
    ids=["info flag only", "empty message"],
)
def test_a_message_with_neither_r1_nor_r2_is_an_error(
    node: NodeClient, wrapper: pb.RequestWrapper
) -> None:
    message = error_of(send_body(node, wrapper.SerializeToString()))
    assert "neither r1" in message and "r2" in message
    assert_still_serving(node)


def test_deeply_nested_groups_are_a_protocol_error(node: NodeClient) -> None:
    body = b"\x1b" * 5000 + b"\x1c" * 5000  # field 3, start group / end group, 5000 deep
    message = error_of(send_body(node, body))
    assert not message.startswith("internal server error"), message


def test_an_unknown_model_is_an_error_listing_the_available_ones(node: NodeClient) -> None:
    model = pb.Model(name="sharpen")
    message = error_of(node.infer(model, [random_frame(54, height=4, width=4)]))
    assert "unknown model 'sharpen'" in message
    for name in ("identity", "blur", "difference", "knobby"):
        assert name in message
    assert_still_serving(node)


def test_the_broken_model_is_an_error_saying_why(node: NodeClient) -> None:
    message = error_of(node.infer(pb.Model(name="broken_import"), [random_frame(55)]))
    assert "failed to load" in message and "broken on purpose" in message
    assert_still_serving(node)


@pytest.mark.parametrize(
    ("name", "count", "expected"),
    [
        ("identity", 0, "takes 1 image(s) ('image'); the request has 0"),
        ("identity", 2, "takes 1 image(s) ('image'); the request has 2"),
        ("difference", 1, "takes 2 image(s) ('a', 'b'); the request has 1"),
    ],
)
def test_the_wrong_number_of_images_is_an_error(
    node: NodeClient, name: str, count: int, expected: str
) -> None:
    frames = [random_frame(56 + i, height=4, width=4) for i in range(count)]
    assert expected in error_of(node.infer(node.model(name), frames))
    assert_still_serving(node)


def send_image(node: NodeClient, model: str, image: pb.Image) -> pb.RespondWrapper:
    """Send one hand-built ``Image`` to ``model`` and return the reply."""
    request = inference_request(node.model(model), [])
    request.r2.images.append(image)
    return node.send_inference(frame_request(request))


@pytest.mark.parametrize("delta", [-4, 4, -48])
def test_image_bytes_that_do_not_match_the_size_are_an_error(node: NodeClient, delta: int) -> None:
    image = encode_image(random_frame(60, height=4, width=5))
    image.image = image.image[:delta] if delta < 0 else image.image + bytes(delta)
    message = error_of(send_image(node, "identity", image))
    assert f"needs 240 bytes, the image holds {240 + delta}" in message
    assert_still_serving(node)


@pytest.mark.parametrize(
    ("width", "height", "channels", "expected"),
    [
        (0, 4, 3, "width must be at least 1, got 0"),
        (4, 0, 3, "height must be at least 1, got 0"),
        (4, 4, 0, "channels must be at least 1, got 0"),
        (-4, 4, 3, "width must be at least 1, got -4"),
        (4, -4, 3, "height must be at least 1, got -4"),
        (4, 4, -3, "channels must be at least 1, got -3"),
        (100000, 4, 3, "larger than the largest frame"),
        (4, 100000, 3, "larger than the largest frame"),
        (4, 4, 100000, "at most 64 are accepted"),
        (2**31 - 1, 2**31 - 1, 2**31 - 1, "larger than the largest frame"),
    ],
)
def test_impossible_image_sizes_are_an_error(
    node: NodeClient, width: int, height: int, channels: int, expected: str
) -> None:
    image = pb.Image(width=width, height=height, channels=channels, image=bytes(4 * 4 * 3 * 4))
    assert expected in error_of(send_image(node, "identity", image))
    assert_still_serving(node)


def test_fewer_channels_than_the_model_needs_is_an_error(node: NodeClient) -> None:
    frame = random_frame(61, channels=1, height=4, width=4)
    message = error_of(node.infer(node.model("identity"), [frame]))
    assert "needs 3 channel(s); the request sent 1" in message
    assert_still_serving(node)


# --- concurrency -------------------------------------------------------------------------


def test_info_is_answered_while_a_long_inference_runs(node: NodeClient) -> None:
    frame = random_frame(70, height=8, width=8)
    request = frame_request(inference_request(node.model("slow"), [frame], knobs={"seconds": 2.0}))
    with socket.create_connection((node.host, node.port), timeout=HANG_GUARD) as rendering:
        rendering.sendall(request)
        info = node.info()
        # ordering, not speed: the info reply came while the render was still computing
        assert not readable(rendering), "the inference finished before the info was answered"
        reply = parse_reply(read_to_eof(rendering))
    assert "slow" in {model.name for model in info.r1.models}
    assert np.array_equal(image_of(reply), frame)


def test_eight_clients_at_once_each_get_their_own_frame(node: NodeClient) -> None:
    identity = node.model("identity")
    frames = [random_frame(80 + i, height=20 + i, width=30 - i) for i in range(8)]
    start = threading.Barrier(len(frames))

    def render(frame: np.ndarray) -> np.ndarray:
        start.wait(timeout=HANG_GUARD)
        return image_of(node.infer(identity, [frame]))

    with ThreadPoolExecutor(max_workers=len(frames)) as pool:
        results = list(pool.map(render, frames, timeout=HANG_GUARD))
    for frame, result in zip(frames, results, strict=True):
        assert result.view(np.uint32).tobytes() == frame.view(np.uint32).tobytes()
