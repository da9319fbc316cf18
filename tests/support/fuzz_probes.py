"""Fuzzing a server's front doors: one probe on the wire, and what counts as a failure.

A :class:`Probe` is the exact bytes one connection sends to one door, so every example the
fuzzers make can be saved and replayed byte for byte. :func:`exchange` sends a probe on a new
connection (closing the sending side if the probe says so, as a client that has said all it
will say), reads until the server closes, and judges what came back:

- **hang**: neither an answer nor a close within the bound;
- **5xx**: an HTTP status of 500 or above, except the documented deliberate ones
  (:data:`ALLOWED_5XX`), or any answer, on either door, that says "internal server error";
- **malformed reply**: bytes that are not HTTP responses, or an MLClient reply whose header
  is not 12 digits giving 12 + the body's length, or whose body does not parse;
- **smuggling**: a probe marked ``refuse`` (framing RFC 9112 forbids) answered with anything
  but one 4xx, for instance an answer to the request pipelined after it.

A connection the server resets or closes without answering is not a failure: that is a clean
refusal of a hostile client.

The hypothesis settings every fuzz test uses are the profiles here: ``fuzz-suite`` (small,
derandomised: the test suite) and ``fuzz-long`` (``benchmarks/fuzz.py``).
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass, field
from typing import Literal

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

from frameserve.serve.mlclient import messages as pb

__all__ = [
    "ALLOWED_5XX",
    "LONG",
    "SUITE",
    "Door",
    "Outcome",
    "Probe",
    "exchange",
    "half_close",
    "http_statuses",
    "judge_http",
    "judge_mlclient",
]

Door = Literal["mlclient", "http"]

#: 5xx answers that are deliberate, documented refusals (``docs/http-api.md``), not failures.
ALLOWED_5XX = {
    503: "busy, not ready, or the model failed to load",
    504: "the request's own deadline passed (deadline_ms)",
    507: "the uploads kept for jobs are full",
}
#: Most bytes of a probe its ``repr`` shows (a failing example's report).
REPR_BYTES = 4000
#: Most bytes kept from one reply (the rest is read and dropped).
REPLY_KEEP_BYTES = 1 << 20
_INTERNAL = "internal server error"
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})[^\r\n]*\r\n")
_MLCLIENT_HEADER = 12

_QUIET = [
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.filter_too_much,
    HealthCheck.large_base_example,
]
settings.register_profile(
    "fuzz-suite",
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=_QUIET,
    print_blob=True,
)
settings.register_profile(
    "fuzz-long",
    max_examples=10**9,
    deadline=None,
    database=None,
    phases=[Phase.generate],
    suppress_health_check=list(HealthCheck),
)
#: The test suite's profile: small, reproducible (the same examples on every run).
SUITE = settings.get_profile("fuzz-suite")
#: The long mode's profile: generate until the time is up, never shrink.
LONG = settings.get_profile("fuzz-long")


#: Whether a probe closes its sending side: mostly, since a probe that does not waits for the
#: server's timeouts (the slow-client case, worth a few examples, not most).
half_close: st.SearchStrategy[bool] = st.sampled_from([True] * 7 + [False])


@dataclass(frozen=True)
class Probe:
    """The bytes one connection sends to one door.

    Attributes:
        door: ``"mlclient"`` or ``"http"``.
        data: everything sent, in one ``sendall``.
        half_close: close the sending side after sending (``shutdown(SHUT_WR)``), so the
            server sees the end of the request at once; otherwise the connection stays open
            and the server's own timeouts end it.
        label: which strategy made it (for reports).
        refuse: the server must refuse it (HTTP framing that request smuggling needs): one
            4xx answer or none, then close, and never an answer to a request after it.
    """

    door: Door
    data: bytes
    half_close: bool = True
    label: str = ""
    refuse: bool = False

    def __repr__(self) -> str:
        head = self.data[:REPR_BYTES]
        more = f" +{len(self.data) - REPR_BYTES} bytes" if len(self.data) > REPR_BYTES else ""
        return (
            f"Probe({self.door!r}, {head!r}{more}, half_close={self.half_close}, "
            f"label={self.label!r}, refuse={self.refuse})"
        )


@dataclass
class Outcome:
    """What the server did with one probe."""

    probe: Probe
    received: bytes = b""
    ended: str = "eof"  #: ``eof``, ``reset`` or ``hang``
    seconds: float = 0.0
    statuses: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def exchange(address: tuple[str, int], probe: Probe, *, bound: float) -> Outcome:
    """Send ``probe`` on a new connection, read until the server closes; judge the answer.

    Args:
        address: the door's host and port.
        probe: what to send.
        bound: seconds the whole exchange may take before it counts as a hang.
    """
    outcome = Outcome(probe)
    started = time.monotonic()
    deadline = started + bound
    received = bytearray()
    total = 0
    try:
        with socket.create_connection(address, timeout=bound) as sock:
            try:
                sock.sendall(probe.data)
                if probe.half_close:
                    sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the server may refuse before the whole probe is sent
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    outcome.ended = "hang"
                    break
                sock.settimeout(remaining)
                try:
                    piece = sock.recv(1 << 16)
                except TimeoutError:
                    outcome.ended = "hang"
                    break
                except OSError:
                    outcome.ended = "reset"
                    break
                if not piece:
                    break
                total += len(piece)
                if len(received) < REPLY_KEEP_BYTES:
                    received += piece
    except OSError as exc:
        outcome.ended = "reset"
        outcome.problems.append(f"unresponsive: could not connect: {exc}")
    outcome.seconds = time.monotonic() - started
    outcome.received = bytes(received)
    if outcome.ended == "hang":
        outcome.problems.append(
            f"hang: no answer and no close within {bound:.0f} s ({total} bytes received)"
        )
    if probe.door == "http":
        outcome.statuses = [status for status, _ in http_statuses(outcome.received)]
        outcome.problems += judge_http(outcome.received)
        refused = outcome.statuses == [] or (
            len(outcome.statuses) == 1 and 400 <= outcome.statuses[0] < 500
        )
        if probe.refuse and not refused:
            outcome.problems.append(
                f"smuggling: framing that must be refused was answered {outcome.statuses}"
            )
    else:
        outcome.problems += judge_mlclient(outcome.received, complete=outcome.ended == "eof")
    return outcome


def http_statuses(received: bytes) -> list[tuple[int, str]]:
    """Every HTTP status line in ``received``, with the start of what follows it.

    A status line is found wherever one starts and ends with CRLF: the bodies frameserve
    answers errors with are JSON, whose strings never hold a raw CRLF.
    """
    found = []
    for match in _STATUS_LINE.finditer(received):
        after = received[match.end() : match.end() + 600]
        body = after.partition(b"\r\n\r\n")[2][:300]
        found.append((int(match[1]), body.decode("utf-8", "replace")))
    return found


def judge_http(received: bytes) -> list[str]:
    """Problems in the bytes an HTTP door answered with (none for an empty answer)."""
    if not received:
        return []
    problems = []
    if not received.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")):
        problems.append(f"malformed reply: does not start with a status line: {received[:80]!r}")
    for status, body in http_statuses(received):
        if status >= 500 and status not in ALLOWED_5XX:
            problems.append(f"5xx: {status} {body}")
        elif _INTERNAL in body.lower():
            problems.append(f"5xx: {status} says {body}")
    return problems


def judge_mlclient(received: bytes, *, complete: bool) -> list[str]:
    """Problems in the bytes an MLClient door answered with (none for an empty answer).

    Args:
        received: everything read.
        complete: whether the server closed the connection (so the reply is whole).
    """
    if not received or not complete:
        return []
    header = received[:_MLCLIENT_HEADER]
    if len(header) < _MLCLIENT_HEADER or not header.isdigit():
        return [f"malformed reply: header is not 12 digits: {received[:40]!r}"]
    if int(header) != len(received):
        return [f"malformed reply: header announces {int(header)} bytes, {len(received)} arrived"]
    try:
        reply = pb.RespondWrapper.FromString(received[_MLCLIENT_HEADER:])
    except Exception as exc:  # the protobuf runtime's DecodeError
        return [f"malformed reply: body does not parse: {exc}"]
    if reply.HasField("error") and _INTERNAL in reply.error.msg.lower():
        return [f"5xx: MLClient Error {reply.error.msg[:300]!r}"]
    return []
