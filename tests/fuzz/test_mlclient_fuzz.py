"""Fuzzing the MLClient door: whatever arrives, the server answers or closes, and lives on.

Each example is one connection's bytes (:mod:`tests.support.fuzz_mlclient`); after each, the
server must still be whole (:meth:`~tests.support.fuzz_server.FuzzServer.check`): no hang, no
"internal server error", no malformed reply, both doors answering, a clean log.
"""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from tests.support.fuzz_mlclient import headers, inference_requests, protobuf_bodies
from tests.support.fuzz_probes import SUITE, Probe
from tests.support.fuzz_server import FuzzServer, ModelList


@SUITE
@given(probe=headers())
@example(probe=Probe("mlclient", b"0000", half_close=False, label="silent after 4 bytes"))
@example(probe=Probe("mlclient", b"000000000100" + b"x" * 10, half_close=False, label="stalls"))
@example(probe=Probe("mlclient", b"999999999999", half_close=False, label="announces 1 TB"))
def test_random_bytes_and_odd_headers(fuzz_server: FuzzServer, probe: Probe) -> None:
    fuzz_server.assert_survives([probe])


@SUITE
@given(probe=protobuf_bodies())
def test_framed_random_protobuf(fuzz_server: FuzzServer, probe: Probe) -> None:
    fuzz_server.assert_survives([probe])


@SUITE
@given(data=st.data())
def test_inference_requests_with_hostile_values(
    fuzz_server: FuzzServer, served_models: ModelList, data: st.DataObject
) -> None:
    fuzz_server.assert_survives([data.draw(inference_requests(served_models), label="probe")])
