"""Frames to Open Inference Protocol tensors and back, in binary or JSON form.

A frame is a numpy array ``(H, W, C)`` (or ``(H, W)``, one channel; or ``(N, H, W, C)``, a
batch), top row first, sent as ``FP32``, ``FP16`` or ``UINT8`` after its dtype.

Where bytes are copied on the binary path:

- sending: a frame that is already C-contiguous, little-endian float32/float16/uint8 is sent
  from its own memory (a ``memoryview``); anything else is converted once
  (``np.ascontiguousarray``). The small JSON header is the only thing serialised.
- receiving: the body was read into one ``bytearray``; every output frame is a numpy view of
  it (``np.frombuffer``), so the arrays are writable and no byte is copied again.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from frameserve.client._exceptions import ProtocolViolation

__all__ = [
    "BINARY_ALIGNMENT",
    "DATATYPES",
    "HEADER_LENGTH",
    "DecodedResponse",
    "EncodedRequest",
    "InputTensor",
    "as_input",
    "decode_response",
    "encode_request",
    "parse_objects",
]

#: The HTTP header giving the length of the JSON part of a binary request or answer.
HEADER_LENGTH = "Inference-Header-Content-Length"

#: Frame datatypes of the protocol and their wire dtype (little-endian, row-major).
DATATYPES: dict[str, np.dtype[Any]] = {
    "FP32": np.dtype("<f4"),
    "FP16": np.dtype("<f2"),
    "UINT8": np.dtype("u1"),
}

#: The JSON header of a binary request is padded with spaces to a multiple of this many bytes,
#: so that the tensors after it start aligned in the server's buffer (usable in place).
BINARY_ALIGNMENT = 8

_BYTES_LENGTH = struct.Struct("<I")


@dataclass(frozen=True, eq=False)
class InputTensor:
    """One frame ready to send: ``array`` is C-contiguous in the wire dtype of ``datatype``."""

    name: str
    datatype: str
    array: npt.NDArray[Any]


@dataclass(frozen=True, eq=False)
class EncodedRequest:
    """An inference request as HTTP headers and body buffers (sent in order, never joined)."""

    headers: dict[str, str]
    body: list[bytes | memoryview]


@dataclass(frozen=True, eq=False)
class DecodedResponse:
    """An inference answer: its JSON header, frame outputs and ``BYTES`` outputs by name."""

    header: dict[str, Any]
    frames: dict[str, npt.NDArray[Any]] = field(default_factory=dict)
    texts: dict[str, list[str]] = field(default_factory=dict)


def as_input(name: str, frame: object) -> InputTensor:
    """Return ``frame`` as a tensor to send, converting it only when it has to be.

    ``frame`` is ``(H, W, C)``, ``(H, W)`` (one channel) or ``(N, H, W, C)``; uint8 goes as
    ``UINT8`` (0–255 for 0–1), float16 as ``FP16``, float32 and every other float as ``FP32``.

    Raises:
        ValueError: the frame has another number of axes.
        TypeError: the frame is not float or uint8 (integers other than uint8, bools).
    """
    array = np.asarray(frame)
    if array.ndim == 2:
        array = array[:, :, np.newaxis]
    elif array.ndim not in (3, 4):
        raise ValueError(
            f"frame {name!r} has shape {array.shape}: expected (H, W, C), (H, W) or (N, H, W, C)"
        )
    if array.dtype == np.uint8:
        datatype = "UINT8"
    elif array.dtype == np.float16:
        datatype = "FP16"
    elif array.dtype.kind == "f":
        datatype = "FP32"
    else:
        raise TypeError(
            f"frame {name!r} has dtype {array.dtype}: send float32, float16 or uint8 "
            "(scale other integers to floats in 0-1 first)"
        )
    return InputTensor(name, datatype, np.ascontiguousarray(array, dtype=DATATYPES[datatype]))


def encode_request(
    inputs: Sequence[InputTensor],
    *,
    parameters: Mapping[str, Any],
    outputs: Sequence[Mapping[str, Any]] | None,
    binary: bool,
    request_id: str | None = None,
) -> EncodedRequest:
    """Return the HTTP headers and body of an inference request.

    Binary: a JSON header whose inputs give ``binary_data_size`` (padded with spaces to a
    multiple of :data:`BINARY_ALIGNMENT` bytes), then each frame's bytes in input order. JSON:
    each input's values in ``data``, flattened row-major.
    """
    header: dict[str, Any] = {}
    if request_id is not None:
        header["id"] = request_id
    if parameters:
        header["parameters"] = dict(parameters)
    described: list[dict[str, Any]] = []
    for tensor in inputs:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.array.shape),
        }
        if binary:
            entry["parameters"] = {"binary_data_size": tensor.array.nbytes}
        else:
            entry["data"] = tensor.array.ravel().tolist()
        described.append(entry)
    header["inputs"] = described
    if outputs is not None:
        header["outputs"] = [dict(o) for o in outputs]
    text = json.dumps(header, separators=(",", ":")).encode()
    if not binary:
        return EncodedRequest({"Content-Type": "application/json"}, [text])
    text += b" " * (-len(text) % BINARY_ALIGNMENT)  # JSON allows trailing spaces
    body: list[bytes | memoryview] = [text]
    body += [t.array.data.cast("B") for t in inputs if t.array.nbytes]
    headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(text))}
    return EncodedRequest(headers, body)


def decode_response(body: bytearray, header_length: int | None) -> DecodedResponse:
    """Parse an inference answer; frames become views of ``body``.

    ``header_length`` is the ``Inference-Header-Content-Length`` of a binary answer (None for
    a JSON one).

    Raises:
        ProtocolViolation: the JSON, a shape, a datatype or a byte count does not add up.
    """
    size = len(body)
    if header_length is not None and not 0 <= header_length <= size:
        raise ProtocolViolation(f"{HEADER_LENGTH} is {header_length} but the body has {size} bytes")
    end = size if header_length is None else header_length
    header = _parse_json(memoryview(body)[:end], "the inference answer")
    if not isinstance(header, dict) or not isinstance(header.get("outputs", []), list):
        raise ProtocolViolation("the inference answer is not an object with a list of outputs")
    decoded = DecodedResponse(header)
    offset = end
    for output in header.get("outputs", []):
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise ProtocolViolation(f"an output is not an object with a name: {output!r:.200}")
        name, datatype, shape = output["name"], output.get("datatype"), _shape(output)
        binary_size = (output.get("parameters") or {}).get("binary_data_size")
        if binary_size is not None:
            if not isinstance(binary_size, int) or not 0 <= binary_size <= size - offset:
                raise ProtocolViolation(
                    f"output {name!r}: binary_data_size {binary_size!r} does not fit the "
                    f"{size - offset} bytes left in the body"
                )
            chunk = memoryview(body)[offset : offset + binary_size]
            offset += binary_size
            if datatype == "BYTES":
                decoded.texts[name] = _split_bytes(name, chunk)
            else:
                dtype = _dtype(name, datatype)
                count = _count(name, shape, binary_size, dtype.itemsize)
                decoded.frames[name] = np.frombuffer(
                    body, dtype=dtype, count=count, offset=offset - binary_size
                ).reshape(shape)
        elif "data" in output:
            decoded_data = _from_json(name, datatype, shape, output["data"])
            if isinstance(decoded_data, list):
                decoded.texts[name] = decoded_data
            else:
                decoded.frames[name] = decoded_data
        else:
            raise ProtocolViolation(f"output {name!r} has neither data nor binary_data_size")
    if offset != size:
        raise ProtocolViolation(
            f"the binary outputs take {offset - end} bytes but {size - end} follow the header"
        )
    return decoded


def parse_objects(texts: Sequence[str]) -> list[dict[str, Any]]:
    """Return the result objects of a ``BYTES`` output: one JSON document per element."""
    objects = []
    for text in texts:
        document = _parse_json(text, "a result object")
        if not isinstance(document, dict):
            raise ProtocolViolation(f"a result object is not a JSON object: {text!r:.200}")
        objects.append(document)
    return objects


def _parse_json(data: str | memoryview, what: str) -> Any:
    try:
        return json.loads(data if isinstance(data, str) else bytes(data))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolViolation(f"{what} is not JSON: {exc}") from exc


def _shape(output: Mapping[str, Any]) -> tuple[int, ...]:
    shape = output.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
    ):
        raise ProtocolViolation(f"output {output['name']!r} has no valid shape: {shape!r:.100}")
    return tuple(shape)


def _dtype(name: str, datatype: object) -> np.dtype[Any]:
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise ProtocolViolation(
            f"output {name!r} has datatype {datatype!r}; expected one of "
            f"{', '.join(DATATYPES)} or BYTES"
        )
    return DATATYPES[datatype]


def _count(name: str, shape: tuple[int, ...], nbytes: int, itemsize: int) -> int:
    count = math.prod(shape)
    if count * itemsize != nbytes:
        raise ProtocolViolation(
            f"output {name!r}: shape {list(shape)} needs {count * itemsize} bytes, "
            f"binary_data_size says {nbytes}"
        )
    return count


def _split_bytes(name: str, chunk: memoryview) -> list[str]:
    """Decode binary ``BYTES`` elements: each a 4-byte little-endian length, then the bytes."""
    texts: list[str] = []
    at = 0
    while at < len(chunk):
        if at + 4 > len(chunk):
            raise ProtocolViolation(f"output {name!r}: a BYTES element is cut short")
        (length,) = _BYTES_LENGTH.unpack_from(chunk, at)
        at += 4
        if at + length > len(chunk):
            raise ProtocolViolation(f"output {name!r}: a BYTES element is cut short")
        try:
            texts.append(bytes(chunk[at : at + length]).decode())
        except UnicodeDecodeError as exc:
            raise ProtocolViolation(f"output {name!r}: a BYTES element is not UTF-8") from exc
        at += length
    return texts


def _from_json(
    name: str, datatype: object, shape: tuple[int, ...], data: object
) -> npt.NDArray[Any] | list[str]:
    if datatype == "BYTES":
        if not isinstance(data, list) or not all(isinstance(s, str) for s in data):
            raise ProtocolViolation(f"output {name!r}: BYTES data is not a list of strings")
        return list(data)
    dtype = _dtype(name, datatype).newbyteorder("=")
    try:
        array = np.asarray(data, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise ProtocolViolation(f"output {name!r}: data is not a list of numbers") from exc
    if array.size != math.prod(shape):
        raise ProtocolViolation(
            f"output {name!r}: shape {list(shape)} needs {math.prod(shape)} values, "
            f"data has {array.size}"
        )
    return array.reshape(shape)
