"""The node's model menu on a real network: one TCP segment, the models it can run, per-port lists.

The compiled node reads the model list with a single ``recv``; on Ethernet a segment carries
1,448 bytes. These tests put a proxy between a real server and a client that reads exactly as
the node does, cutting the server's bytes into 1,448-byte pieces with a pause between them
(``tests/support/segments.py``), for every door configuration ``docs/mlclient-protocol.md``
shows.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

import pytest

from frameserve.catalogue.registry import ModelRegistry
from frameserve.errors import ConfigError
from frameserve.serve.mlclient.menu import SEGMENT_BYTES, build_menu, menu_model
from frameserve.serve.server import FrameServer
from frameserve.serve.settings import ServerSettings
from tests.support.http_client import random_frame
from tests.support.node_client import NodeClient
from tests.support.paths import TEST_MODELS
from tests.support.segments import SEGMENT, SegmentingProxy, info_as_the_node_reads_it


def real_network_server(**settings: object) -> FrameServer:
    """A server as a TD starts it (default menu budget), on free loopback ports."""
    options: dict[str, object] = {"host": "127.0.0.1", "port": 0, "http_port": None}
    options.update(settings)
    return FrameServer(ServerSettings(**options)).start()  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def default_server() -> Iterator[FrameServer]:
    server = real_network_server(model_folders=(TEST_MODELS,))
    yield server
    server.close()


def listed(address: tuple[str, int]) -> list[str]:
    """Model ids of the menu, read whole (any number of reads)."""
    return [model.name for model in NodeClient(*address, timeout=10).info().r1.models]


# -- the proxy and the single read: a test that can fail ----------------------------------------


def test_a_menu_longer_than_a_segment_reaches_the_node_short_of_models() -> None:
    # the escape hatch opened wide: every model, more than one segment's worth
    server = real_network_server(model_folders=(TEST_MODELS,), mlclient_info_bytes=1 << 16)
    try:
        assert len(server.mlclient.menu().reply) > SEGMENT, "the control needs a long menu"
        with SegmentingProxy(server.mlclient_address) as proxy:
            announced, parsed = info_as_the_node_reads_it(proxy.address)
        assert parsed < announced, "through the proxy a long menu must arrive in pieces"
    finally:
        server.close()


def test_with_the_default_settings_every_listed_model_reaches_the_node(
    default_server: FrameServer,
) -> None:
    menu = default_server.mlclient.menu()
    assert len(menu.reply) <= SEGMENT_BYTES == SEGMENT
    with SegmentingProxy(default_server.mlclient_address) as proxy:
        announced, parsed = info_as_the_node_reads_it(proxy.address)
        assert NodeClient(*proxy.address, timeout=10).info().r1.num_models == announced
    assert parsed == announced == len(menu.listed) > 0


DOCUMENTED_DOORS = {
    "one list on the default port": {
        "mlclient_models": ("segment", "person_matte", "cutout", "blur"),
    },
    "a roto port and a cleanup port": {
        "mlclient_doors": (
            (0, ("segment", "person_matte", "cutout", "instances")),
            (0, ("denoise", "deblur", "blur")),
        ),
    },
    "everything, studio models first": {"mlclient_models": ("studio_*", "*")},
}


@pytest.mark.parametrize("settings", DOCUMENTED_DOORS.values(), ids=DOCUMENTED_DOORS.keys())
def test_every_documented_door_configuration_fits_one_segment(settings: dict[str, object]) -> None:
    server = real_network_server(**settings)
    try:
        for door in server.mlclient_doors:
            patterns = door.settings.models
            with SegmentingProxy(door.address) as proxy:
                announced, parsed = info_as_the_node_reads_it(proxy.address)
                ids = listed(proxy.address)
            assert parsed == announced == len(ids) > 0, door.name
            available = {e.id for e in server.engine.models()}
            if "*" not in patterns:  # exact lists: each named model that exists, in order
                assert ids == [p for p in patterns if p in available], door.name
    finally:
        server.close()


# -- what a door lists and runs -----------------------------------------------------------------


def test_models_whose_outputs_are_not_the_input_size_are_not_listed(
    default_server: FrameServer,
) -> None:
    menu = default_server.mlclient.menu()
    assert {"upscale_x2", "upscale_x3", "upscale_x4"} <= set(menu.unfit)
    assert not {"upscale_x2", "upscale_x3", "upscale_x4"} & set(menu.listed + menu.left_out)


def test_an_upscaler_asked_for_by_name_is_refused_before_it_runs(
    default_server: FrameServer,
) -> None:
    node = NodeClient(*default_server.mlclient_address, timeout=10)
    upscale = menu_model(default_server.engine.model("upscale_x2").spec, label="x2")
    reply = node.infer(upscale, [random_frame(1, height=8, width=8)])
    assert "'upscale_x2' makes outputs 2x the size of its inputs" in reply.error.msg
    assert "HTTP" in reply.error.msg


def test_a_port_runs_only_the_models_it_lists() -> None:
    server = real_network_server(
        mlclient_models=("identity", "*"), mlclient_doors=((0, ("blur",)),)
    )
    try:
        everything, only_blur = server.mlclient_doors
        assert listed(everything.address)[0] == "identity"
        assert listed(only_blur.address) == ["blur"]
        identity = menu_model(server.engine.model("identity").spec, label="Identity")
        node = NodeClient(*only_blur.address, timeout=10)
        refused = node.infer(identity, [random_frame(2, height=8, width=8)])
        assert "model 'identity' is not served on this port; its models: blur" in refused.error.msg
        frame = random_frame(3, height=8, width=8)
        reply = NodeClient(*everything.address, timeout=10).infer(identity, [frame])
        assert reply.r2.num_images == 1  # the same engine answers on the other port
    finally:
        server.close()


def test_the_menu_is_a_prefix_of_the_order_and_says_what_it_left_out() -> None:
    available = ModelRegistry([TEST_MODELS]).available()
    whole = build_menu(available, patterns=("*",), budget=1 << 16)
    for budget in (200, 600, 1000, SEGMENT_BYTES):
        menu = build_menu(available, patterns=("*",), budget=budget)
        assert len(menu.reply) <= budget
        assert menu.listed + menu.left_out == whole.listed
        assert menu.wanted_bytes == len(whole.reply)
    # the TD's own models first, then the built-ins in their order, blur first among them
    builtin = {e.id for e in available if e.builtin}
    first_builtin = next(i for i, m in enumerate(whole.listed) if m in builtin)
    assert not set(whole.listed[:first_builtin]) & builtin
    assert not set(whole.listed[first_builtin:]) - builtin
    assert whole.listed[first_builtin] == "blur"


def test_patterns_choose_and_order_the_menu() -> None:
    available = ModelRegistry([TEST_MODELS]).available()
    menu = build_menu(available, patterns=("identity", "b*", "identity"), budget=1 << 16)
    assert menu.listed[0] == "identity"
    assert set(menu.listed[1:]) == {e.id for e in available if e.id.startswith("b")}


def test_the_start_log_gives_each_door_its_size_and_warns_naming_the_fix(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="frameserve.serve.mlclient.server"):
        server = real_network_server(
            model_folders=(TEST_MODELS,), mlclient_doors=((0, ("blur", "nothing_*")),)
        )
        server.close()
    lines = [r.getMessage() for r in caplog.records]
    sizes = [line for line in lines if "model(s) in" in line and "bytes (at most 1448)" in line]
    assert len(sizes) == 2, lines
    warned = [line for line in lines if "left out of the node's menu" in line]
    assert warned and "--mlclient-models" in warned[0] and "--mlclient-door" in warned[0]
    assert any("nothing_*" in line and "match no model" in line for line in lines)


# -- flags and ports ----------------------------------------------------------------------------


def test_a_port_taken_twice_or_an_empty_list_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"port 56001 is given to two doors"):
        ServerSettings(port=56001, mlclient_doors=((56001, ("blur",)),))
    with pytest.raises(ConfigError, match=r"at least one model id or glob"):
        ServerSettings(mlclient_models=())


def test_a_failed_bind_of_the_http_port_names_the_http_port() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        server = FrameServer(ServerSettings(host="127.0.0.1", port=0, http_port=port))
        with pytest.raises(ConfigError, match=rf"127\.0\.0\.1:{port} for the HTTP API"):
            server.start()
        server.close()


def test_a_failed_bind_of_an_extra_door_names_its_port() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        server = FrameServer(
            ServerSettings(
                host="127.0.0.1", port=0, http_port=None, mlclient_doors=((port, ("blur",)),)
            )
        )
        with pytest.raises(ConfigError, match=rf"127\.0\.0\.1:{port} for the MLClient 'blur'"):
            server.start()
        server.close()
