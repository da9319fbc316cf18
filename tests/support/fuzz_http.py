"""Hypothesis strategies for the HTTP door: raw requests, smuggling shapes, hostile inference.

Every strategy draws a :class:`~tests.support.fuzz_probes.Probe`: the exact bytes of one
connection. They are written against the wire, not against frameserve's parser:

- :func:`raw_requests`: random bytes, and request lines and headers built from odd parts
  (methods, targets with every kind of escape, versions, header names and values with control
  characters, bare LF line ends, huge heads);
- :func:`smuggling`: the request shapes that request smuggling needs (Transfer-Encoding with
  Content-Length, two Content-Lengths, odd Transfer-Encoding values, malformed chunk sizes,
  obsolete line folding), each followed by a second, pipelined request;
- :func:`inference`: Open Inference Protocol infer requests with hostile JSON (wrong shapes,
  datatypes and binary sizes, huge numbers, deep nesting, bytes that are not UTF-8);
- :func:`metadata`: model paths with odd characters and every method.

``models`` is what the server offers (:meth:`FuzzServer.models`), so requests can name real
models, inputs and knobs and so reach the code behind the parser.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import numpy as np
from hypothesis import strategies as st

from frameserve.serve.mlclient import messages as pb
from tests.support.fuzz_json import Raw, deep_nesting, dumps, hostile_json, hostile_numbers
from tests.support.fuzz_probes import Probe, half_close

__all__ = [
    "compose",
    "escape",
    "inference",
    "metadata",
    "odd_segment",
    "raw_requests",
    "smuggling",
]

METHODS = ("GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT")
SERVER_PATHS = (
    "/",
    "/v2",
    "/v2/",
    "/v2/health/live",
    "/v2/health/ready",
    "/metrics",
    "/v2/repository/index",
    "/v2/models",
    "/v2/training/jobs",
    "/v2/training/uploads",
    "*",
    "http://127.0.0.1/v2",
    "//v2//health//live",
)
HEADER_NAMES = (
    "Host",
    "Content-Length",
    "Transfer-Encoding",
    "Connection",
    "Expect",
    "Content-Type",
    "Inference-Header-Content-Length",
    "Authorization",
    "Accept-Encoding",
    "Upgrade",
    "X-Forwarded-For",
)
HEADER_VALUES = (
    "",
    "0",
    "-1",
    "+5",
    "5, 5",
    "0x10",
    "1e3",
    "99999999999999999999999",
    "chunked",
    "close",
    "keep-alive",
    "100-continue",
    "Bearer x",
    "h2c",
    "application/json",
    "a\x00b",
    "\x7f",
    "é",
    " " * 100,
    "x" * 9000,
)
VERSIONS = ("HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/0.9", "HTTP/1.11", "http/1.1", "HTTP/1", "")
#: The pipelined request after a smuggling shape: what a smuggler wants the server to run.
SECOND = b"GET /v2/health/live HTTP/1.1\r\nHost: fuzz\r\n\r\n"
#: Models too slow to fuzz (a knob asks for seconds of work on purpose).
SLOW_MODELS = frozenset({"slow"})
DATATYPES = ("FP32", "FP16", "UINT8", "BYTES", "INT64", "BOOL", "fp32", "FP64", "", "x")

_latin1 = st.characters(codec="latin-1")
_token = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=12)


def compose(
    method: str | bytes,
    target: str | bytes,
    headers: Sequence[tuple[str | bytes, str | bytes]] = (),
    body: bytes = b"",
    *,
    version: str = "HTTP/1.1",
    content_length: bool = True,
    eol: bytes = b"\r\n",
) -> bytes:
    """Return a request's bytes; ``Host`` and a correct ``Content-Length`` are added unless
    ``headers`` name them (or ``content_length`` is false)."""

    def raw(text: str | bytes) -> bytes:
        return text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")

    names = {raw(name).lower() for name, _ in headers}
    lines = [raw(method) + b" " + raw(target) + (b" " + raw(version) if version else b"")]
    if b"host" not in names:
        lines.append(b"Host: fuzz")
    lines += [raw(name) + b": " + raw(value) for name, value in headers]
    if content_length and body and not names & {b"content-length", b"transfer-encoding"}:
        lines.append(b"Content-Length: %d" % len(body))
    return eol.join(lines) + eol + eol + body


def escape(text: str, safe: str = "") -> str:
    """Percent-escape ``text`` as UTF-8 (a lone surrogate too, as the bytes Python keeps)."""
    return quote(text.encode("utf-8", "surrogatepass"), safe=safe)


def odd_segment() -> st.SearchStrategy[str]:
    """One path segment as sent: percent-escaped text, or odd escapes sent as they are."""
    return st.one_of(
        st.text(max_size=16).map(escape),
        st.sampled_from(
            ["", ".", "..", "%2e%2e", "%2F", "%", "%zz", "%ff", "%00", "%c0%af", "a;b", "~", "@"]
        ),
        st.text(alphabet=_latin1, max_size=8),  # raw control and high bytes
        st.just("a" * 5000),
    )


def _targets() -> st.SearchStrategy[str]:
    segments = st.lists(odd_segment(), min_size=1, max_size=4).map("/".join)
    query = st.one_of(st.just(""), st.text(max_size=20).map(lambda q: "?" + q))
    return st.one_of(
        st.sampled_from(SERVER_PATHS),
        st.tuples(st.sampled_from(SERVER_PATHS), segments, query).map(
            lambda parts: f"{parts[0].rstrip('/')}/{parts[1]}{parts[2]}"
        ),
        st.just("/" + "a" * 70_000),  # a head past any sane limit
    )


def _headers() -> st.SearchStrategy[list[tuple[str, str]]]:
    name = st.one_of(
        st.sampled_from(HEADER_NAMES),
        _token,
        st.sampled_from(["", " Host", "Host ", "Con\x00tent-Length", "X:Y", "é"]),
    )
    value = st.one_of(st.sampled_from(HEADER_VALUES), st.text(alphabet=_latin1, max_size=20))
    return st.lists(st.tuples(name, value), max_size=6)


@st.composite
def raw_requests(draw: st.DrawFn) -> Probe:
    """Random bytes, or a request assembled from odd request lines, headers and bodies."""
    if draw(st.integers(0, 4)) == 0:
        return Probe("http", draw(st.binary(max_size=300)), draw(half_close), "http bytes")
    method = draw(st.one_of(st.sampled_from(METHODS), _token, st.sampled_from(["get", "G T"])))
    headers = draw(_headers())
    if draw(st.integers(0, 9)) == 0:
        headers += [("X-Many", "y")] * draw(st.sampled_from([200, 5000]))
    data = compose(
        method,
        draw(_targets()),
        headers,
        draw(st.binary(max_size=100)),
        version=draw(st.sampled_from(VERSIONS)),
        content_length=draw(st.booleans()),
        eol=draw(st.sampled_from([b"\r\n", b"\r\n", b"\n", b"\r"])),
    )
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]  # cut anywhere
    return Probe("http", data, draw(half_close), "http request line and headers")


def _chunked(body: bytes, sizes: Sequence[int]) -> bytes:
    out, at = bytearray(), 0
    for size in sizes:
        piece = body[at : at + size]
        at += size
        if piece:
            out += b"%x\r\n" % len(piece) + piece + b"\r\n"
    if at < len(body):
        out += b"%x\r\n" % (len(body) - at) + body[at:] + b"\r\n"
    return bytes(out + b"0\r\n\r\n")


#: Framing a server must refuse (one 4xx answer, or none, then close: never an answer to the
#: request after it), and framing RFC 9112 lets it accept, by header or chunk-size line.
_CONTENT_LENGTHS = {
    True: ["+8", "-8", "0x8", "8.0", "8a", "", "\u0668", "8,0", "8 8", "8;8", "1" * 30],
    False: [" 8", "8 ", "08", "8, 8"],
}
_TRANSFER_ENCODINGS = {
    True: ["chunked, chunked", "identity", "gzip, chunked", "chunked, gzip", "xchunked",
           "chunked\x0b", "chunked;q=1"],
    False: [" chunked", "\tchunked", "Chunked"],
}  # fmt: skip
_CHUNK_SIZES = {
    True: ["-1", "0x8", "+8", " 8", "f" * 17, "1" * 40, "g", "", "8\r\n\r\n"],
    False: ["8 ", "8;ext", '8;e="x"', "08"],
}
_FOLDS = [
    ("X-Folded", "a\r\n b"),
    ("Content-Length", "\r\n 8"),
    ("Transfer-Encoding", "\r\n chunked"),
    ("Host", "fuzz\r\n\tevil"),
]


@st.composite
def smuggling(draw: st.DrawFn) -> Probe:
    """A request in one of the shapes request smuggling needs, then a pipelined request.

    Shapes a server must refuse give a probe with ``refuse`` set: the pipelined request must
    then go unanswered.
    """
    target = draw(st.sampled_from(["/v2/repository/index", "/v2/training/jobs", "/v2/health/live"]))
    body = b'{"a": 1}'
    chunked = _chunked(body, [3])
    shape = draw(st.sampled_from(["te+cl", "cl+te", "cl+cl", "cl", "te", "chunk", "obs-fold"]))
    refuse = draw(st.booleans())
    headers: list[tuple[str, str]]
    if shape == "te+cl":
        headers, payload, refuse = (
            [("Transfer-Encoding", "chunked"), ("Content-Length", "8")],
            chunked,
            True,
        )
    elif shape == "cl+te":
        headers, payload, refuse = (
            [("Content-Length", "4"), ("Transfer-Encoding", "chunked")],
            chunked,
            True,
        )
    elif shape == "cl+cl":
        first, second = draw(st.sampled_from([(8, 8), (8, 0), (0, 8), (8, 30)]))
        headers = [("Content-Length", str(first)), ("Content-Length", str(second))]
        payload, refuse = body, first != second
    elif shape == "cl":
        headers = [("Content-Length", draw(st.sampled_from(_CONTENT_LENGTHS[refuse])))]
        payload = body
    elif shape == "te":
        headers = [("Transfer-Encoding", draw(st.sampled_from(_TRANSFER_ENCODINGS[refuse])))]
        payload = chunked
    elif shape == "chunk":
        size = draw(st.sampled_from(_CHUNK_SIZES[refuse]))
        headers = [("Transfer-Encoding", "chunked")]
        payload = size.encode("latin-1") + b"\r\n" + body + b"\r\n0\r\n\r\n"
        if draw(st.integers(0, 3)) == 0:  # and a last chunk that is cut or uses bare LF
            payload = payload[:-7] + draw(st.sampled_from([b"0\r\n\r\n", b"\r\n", b"\n0\n\n", b""]))
    else:  # obsolete line folding: a header value continued on the next line
        folded = draw(st.sampled_from(_FOLDS))
        headers = [folded, ("Content-Length", "8")] if folded[0] == "X-Folded" else [folded]
        payload = body if folded[0] != "Transfer-Encoding" else chunked
        refuse = True
    data = compose("POST", target, headers, payload, content_length=False)
    if draw(st.booleans()):
        data = data.replace(b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", 1)
    probe = Probe("http", data + SECOND, draw(half_close), f"http smuggling: {shape}")
    return dataclasses.replace(probe, refuse=refuse)


def usable(models: Sequence[pb.Model]) -> list[pb.Model]:
    """The models worth fuzzing: all but those slow on purpose."""
    return [model for model in models if model.name not in SLOW_MODELS]


_SHAPE_ITEM = st.one_of(
    st.integers(min_value=1, max_value=12),
    st.sampled_from([0, -1, -3, 65_536, 100_000, 2**31, 2**63, 2**64]),
    st.sampled_from([Raw(b"1.5"), Raw(b'"3"'), Raw(b"null"), Raw(b"true"), Raw(b"[3]")]),
    hostile_numbers,
)


_NUMPY = {"FP32": "<f4", "FP16": "<f2", "UINT8": "u1"}


@st.composite
def _usable_tensor(draw: st.DrawFn, name: str, channels: int, payload: bytearray) -> dict[str, Any]:
    """A tensor the model can take (its values may still be NaN or huge)."""
    shape = [draw(st.integers(1, 16)), draw(st.integers(1, 16)), channels]
    if draw(st.booleans()):
        shape.insert(0, draw(st.integers(1, 3)))
    datatype = draw(st.sampled_from(sorted(_NUMPY)))
    count = int(np.prod(shape))
    fill = draw(st.sampled_from([0.5, -2.0, 1e30, float("nan"), float("inf")]))
    values = (
        np.random.default_rng(count).uniform(-1, 4, count) if fill == 0.5 else np.full(count, fill)
    )
    tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
    if datatype == "UINT8":
        values = np.nan_to_num(values).clip(0, 255)
    if draw(st.integers(0, 3)):
        with np.errstate(over="ignore", invalid="ignore"):  # 1e30 as FP16: infinity
            raw = values.astype(_NUMPY[datatype]).tobytes()
        payload += raw
        tensor["parameters"] = {"binary_data_size": len(raw)}
    else:
        tensor["data"] = [float(v) if datatype != "UINT8" else int(v) for v in values]
        if not all(np.isfinite(values)):
            tensor["data"] = [0.0] * count
    return tensor


@st.composite
def _tensor(draw: st.DrawFn, name: str, channels: int, payload: bytearray) -> dict[str, Any]:
    """One input tensor description; its binary bytes (if any) are appended to ``payload``."""
    if draw(st.booleans()):
        return draw(_usable_tensor(name, channels, payload))
    if draw(st.integers(0, 2)):
        height, width = draw(st.integers(1, 12)), draw(st.integers(1, 12))
        shape: list[Any] = [height, width, draw(st.sampled_from([3, 3, 1, 4, 0]))]
        if draw(st.booleans()):
            shape.insert(0, draw(st.sampled_from([1, 2, 65, 100_000])))
    else:
        shape = draw(st.lists(_SHAPE_ITEM, max_size=6))
    datatype = draw(st.sampled_from(DATATYPES))
    tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
    count = 1
    for item in shape:
        count *= item if isinstance(item, int) and 0 <= item < 2**20 else 1
    count = min(count, 1 << 16)
    how = draw(st.sampled_from(["binary", "binary", "json", "nested", "hostile", "none"]))
    if how == "binary":
        itemsize = {"FP32": 4, "FP16": 2, "UINT8": 1}.get(datatype, 4)
        size = count * itemsize + draw(st.sampled_from([0, 0, 0, -1, 1, -count * itemsize]))
        stated = draw(st.one_of(st.just(size), st.just(size), _SHAPE_ITEM))
        values = draw(st.sampled_from(["random", "nan", "zero"]))
        floats = {
            "random": np.random.default_rng(count).random(max(size, 0) // 4 + 1) * 1e6,
            "nan": np.full(max(size, 0) // 4 + 1, np.nan),
            "zero": np.zeros(max(size, 0) // 4 + 1),
        }[values]
        payload += floats.astype("<f4").tobytes()[: max(size, 0)]
        tensor["parameters"] = {"binary_data_size": stated}
    elif how == "json":
        tensor["data"] = [0.5] * count + [0.0] * draw(st.sampled_from([0, 0, 1]))
    elif how == "nested":  # nested lists in the shape's layout, as tritonclient sends them
        sizes = [item for item in shape if isinstance(item, int) and 0 <= item <= 64]
        tensor["data"] = np.full(sizes, 0.5).tolist() if count <= 4096 else [0.5]
    elif how == "hostile":
        tensor["data"] = draw(hostile_json(6))
    if draw(st.integers(0, 5)) == 0:
        tensor[draw(st.sampled_from(["parameters", "shape", "datatype", "name", "extra"]))] = draw(
            hostile_json(4)
        )
    return tensor


def _knob_values() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.booleans(),
        st.integers(-(2**40), 2**40),
        st.floats(),
        st.text(max_size=10),
        hostile_numbers,
        hostile_json(3),
    )


@st.composite
def inference(draw: st.DrawFn, models: Sequence[pb.Model]) -> Probe:
    """An infer request to a real (or unknown) model with a hostile body."""
    choices = usable(models)
    model: pb.Model | None = None
    if choices and draw(st.integers(0, 5)) > 0:
        model = draw(st.sampled_from(choices))
    name = model.name if model is not None else draw(st.sampled_from(["nope", "broken_import"]))
    inputs = [(p.name, p.channels) for p in model.inputs] if model is not None else [("image", 3)]
    payload = bytearray()
    if draw(st.integers(0, 9)) == 0:
        header_value: Any = draw(
            st.one_of(
                hostile_json(),
                st.sampled_from([deep_nesting(100_000), deep_nesting(50_000, kind="object")]),
            )
        )
    else:
        if draw(st.integers(0, 4)) == 0:
            names = [*(input_name for input_name, _ in inputs), "nope", ""]
            inputs = draw(
                st.lists(st.sampled_from(names), max_size=5).map(
                    lambda chosen: [(input_name, 3) for input_name in chosen]
                )
            )
        tensors = [draw(_tensor(input_name, channels, payload)) for input_name, channels in inputs]
        header_value = {"id": draw(st.text(max_size=8)), "inputs": tensors}
        knobs = {}
        if model is not None:
            options = [
                o.name
                for field in (
                    "bool_options",
                    "int_options",
                    "float_options",
                    "string_options",
                    "button_options",
                    "mc_options",
                )
                for o in getattr(model, field)
            ]
            for knob in draw(st.lists(st.sampled_from(options), max_size=3)) if options else ():
                knobs[knob] = draw(_knob_values())
        for reserved in draw(
            st.lists(
                st.sampled_from(
                    ["binary_data_output", "colourspace", "priority", "deadline_ms", "client_id"]
                ),
                max_size=2,
            )
        ):
            knobs[reserved] = draw(_knob_values())
        if knobs:
            header_value["parameters"] = knobs
        if draw(st.integers(0, 3)) == 0:
            header_value["outputs"] = draw(
                st.one_of(
                    st.lists(st.fixed_dictionaries({"name": st.sampled_from(["image", "x"])})),
                    hostile_json(4),
                )
            )
    text = dumps(header_value)
    if draw(st.integers(0, 9)) == 0:
        text = text.replace(b'"', b'"\xff', 1)  # bytes that are not UTF-8
    headers: list[tuple[str, str]] = [("Content-Type", "application/json")]
    if payload or draw(st.integers(0, 4)) == 0:
        length = draw(
            st.one_of(
                st.just(str(len(text))),
                st.sampled_from(["0", "-1", str(len(text) + 1), "1" * 30, "x", ""]),
            )
        )
        headers.append(("Inference-Header-Content-Length", length))
    version = draw(st.sampled_from(["", "", "/versions/1", "/versions/2", "/versions/%ff"]))
    target = f"/v2/models/{escape(name)}{version}/infer"
    data = compose("POST", target, headers, text + bytes(payload))
    return Probe("http", data, True, "http infer")


@st.composite
def metadata(draw: st.DrawFn, models: Sequence[pb.Model]) -> Probe:
    """A model metadata path with odd characters, sent with any method."""
    known = [model.name for model in models] + ["broken_import", "nope"]
    name = draw(st.one_of(st.sampled_from(known).map(escape), odd_segment()))
    version = draw(st.one_of(st.just(""), odd_segment().map(lambda v: "/versions/" + v)))
    action = draw(st.sampled_from(["", "", "/ready", "/config", "/infer", "/", "/x", "/ready/x"]))
    query = draw(st.sampled_from(["", "?", "?a=1&a=2", "?%ff=%00", "?" + "a" * 3000]))
    method = draw(st.sampled_from(["GET", "GET", "HEAD", "POST", "DELETE", "PUT"]))
    body = draw(st.sampled_from([b"", b"{}", b"null"]))
    data = compose(method, f"/v2/models/{name}{version}{action}{query}", (), body)
    return Probe("http", data, draw(half_close), "http metadata path")
