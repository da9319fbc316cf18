"""Fuzzing the HTTP door: odd requests, smuggling shapes, hostile inference and odd paths.

Each example is one connection's bytes (:mod:`tests.support.fuzz_http`); after each, the server
must still be whole (:meth:`~tests.support.fuzz_server.FuzzServer.check`): no hang, no 5xx but
the deliberate ones, no malformed reply, both doors answering, a clean log.
"""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from tests.support.fuzz_http import inference, metadata, raw_requests, smuggling
from tests.support.fuzz_probes import SUITE, Probe
from tests.support.fuzz_server import FuzzServer, ModelList


@SUITE
@given(probe=raw_requests())
@example(probe=Probe("http", b"GET /v2 HTTP/1.1\r\nHost: x\r\n", half_close=False, label="stalls"))
@example(
    probe=Probe(
        "http",
        b"POST /v2/training/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",
        half_close=False,
        label="body stalls",
    )
)
def test_odd_request_lines_and_headers(fuzz_server: FuzzServer, probe: Probe) -> None:
    fuzz_server.assert_survives([probe])


@SUITE
@given(probe=smuggling())
def test_smuggling_shapes(fuzz_server: FuzzServer, probe: Probe) -> None:
    fuzz_server.assert_survives([probe])


@SUITE
@given(data=st.data())
def test_inference_with_hostile_json(
    fuzz_server: FuzzServer, served_models: ModelList, data: st.DataObject
) -> None:
    fuzz_server.assert_survives([data.draw(inference(served_models), label="probe")])


@SUITE
@given(data=st.data())
def test_metadata_paths_with_odd_characters(
    fuzz_server: FuzzServer, served_models: ModelList, data: st.DataObject
) -> None:
    fuzz_server.assert_survives([data.draw(metadata(served_models), label="probe")])
