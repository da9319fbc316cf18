"""The HTTP door's health, server and model metadata and model repository (``docs/http-api.md``).

The standard client, ``tritonclient.http``, sees a live, ready server, every model with its
state and versions, HWC tensor shapes and the knob specs; readiness turns to 503 once the
server begins to close.
"""

from __future__ import annotations

from frameserve import __version__
from tests.support.http_client import RawClient
from tests.support.servers import start_server

#: The test models that load (tests/models); ``broken_import`` fails on purpose.
TEST_MODELS = ("identity", "blur", "difference", "knobby", "slow")


# --- tritonclient: health, metadata, repository ---------------------------------------------


def test_tritonclient_sees_a_live_ready_server_and_its_metadata(triton):
    assert triton.is_server_live()
    assert triton.is_server_ready()
    metadata = triton.get_server_metadata()
    assert metadata["name"] == "frameserve"
    assert metadata["version"] == __version__
    assert "binary_tensor_data" in metadata["extensions"]


def test_repository_index_lists_every_model_and_why_one_failed(triton):
    index = {item["name"]: item for item in triton.get_model_repository_index()}
    for name in TEST_MODELS:
        assert index[name]["state"] == "READY", index[name]
        assert index[name]["version"] == "1"
    broken = index["broken_import"]
    assert broken["state"] == "UNAVAILABLE"
    assert "broken on purpose" in broken["reason"]


def test_model_metadata_gives_hwc_shapes_in_fp32(triton):
    identity = triton.get_model_metadata("identity")
    assert identity["name"] == "identity"
    assert identity["versions"] == ["1"]
    assert identity["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, -1, 3]}]
    assert identity["outputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, -1, 3]}]
    difference = triton.get_model_metadata("difference", model_version="1")
    assert [i["name"] for i in difference["inputs"]] == ["a", "b"]
    assert all(i["shape"] == [-1, -1, 3] for i in difference["inputs"])


def test_model_readiness(triton):
    assert triton.is_model_ready("identity")
    assert triton.is_model_ready("knobby", model_version="1")
    assert not triton.is_model_ready("broken_import")
    assert not triton.is_model_ready("no_such_model")


def test_model_config_holds_the_knob_specs(triton):
    config = triton.get_model_config("knobby")
    assert config["name"] == "knobby"
    assert config["label"] == "Knobby (test)"
    assert config["inputs"] == [{"name": "image", "channels": 3}]
    knobs = {knob["name"]: knob for knob in config["knobs"]}
    assert list(knobs) == ["invert", "steps", "gain", "note", "mode", "report"]
    expected = {
        "invert": {"type": "bool", "default": False, "help": "Negate the image."},
        "steps": {"type": "int", "default": 2, "min": 1, "max": 10, "help": "A whole number."},
        "gain": {"type": "float", "default": 1.0, "min": 0.0, "max": 4.0, "help": "Multiplies"},
        "note": {"type": "string", "default": "hello", "help": "Free text."},
        "mode": {"type": "choice", "default": "fast", "choices": ["fast", "best"], "help": "A"},
        "report": {"type": "button", "default": False, "help": "Return the knob values."},
    }
    for name, fields in expected.items():
        for field, value in fields.items():
            if field == "help":
                assert knobs[name][field].startswith(value), (name, knobs[name])
            else:
                assert knobs[name][field] == value, (name, field, knobs[name])


def test_server_readiness_is_503_once_close_begins():
    closing = start_server()
    client = RawClient(closing)
    try:
        ready = b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n"
        client.send(ready)
        assert client.read_response().status == 200
        closing.close()  # stops accepting; the open connection is still answered
        assert not closing.is_ready()
        client.send(ready)
        reply = client.read_response()
        assert reply.status == 503
        assert reply.json() == {"ready": False}
    finally:
        client.close()
        closing.close()
