"""The MLClient front door: a TCP server that Foundry's compiled MLClient node talks to.

One request per connection, as the node does it: read a 12-digit header and the body into a
preallocated buffer, answer an info request from the engine's models, or turn an inference
request into an :class:`~frameserve.engine.request.InferenceRequest` (checked by
:func:`~frameserve.engine.request.build_request`), submit it to the
:class:`~frameserve.engine.engine.Engine` and write the reply straight from the result's pixel
buffers, then close. This door only translates: it checks the wire (sizes, framing, image
byte counts), never the model's inputs or knobs.

**Cache.** The knob values are checked before any frame is converted
(:func:`~frameserve.engine.request.check_knobs`); when results are cached, the request is keyed
on those values and the image bytes as they arrived, so an identical request is answered from
the cache without converting a frame.

**Versions.** The node names models by id only, so the info reply lists, and inference runs,
the newest version of each model. Where that is not the only version ``"1"`` — the model has
several versions, or declares another — the menu label says which: ``Gaussian Blur (v2)``.

**The menu.** Each door lists the models its ``settings.models`` patterns choose, that the
node can run, within one TCP segment (:mod:`frameserve.serve.mlclient.menu`); it runs only
models its patterns match. At start the door logs its menu's size, and it warns whenever
models are left out because the menu would not fit.

**Who gets in, and for how long.** The protocol carries no credentials, so the door serves
only the networks in ``settings.allow`` (loopback unless the TD lists others): a connection
from elsewhere is reset at accept, without a reply (:mod:`frameserve.serve.net.listener`).
One address may hold ``max_connections_per_address`` connections; past that, or past
``max_connections``, the connection is answered "server busy". Each connection has its own
thread, so a silent or slow client never blocks another, and it cannot hold its thread long:
the 12 header bytes must arrive within ``header_timeout`` seconds of connecting, and a body of
N bytes within ``body_deadline(N)`` of connecting, keeping up ``min_transfer_rate`` on the
way (:func:`~frameserve.serve.net.sockets.recv_exact_into`); ``read_timeout`` seconds of
silence also end it. A request of more than ``max_request_images`` images, or an image above
``max_frame_pixels``, is refused while its message is decoded, before anything is built for
its images. Every failure the connection still allows is answered with an ``Error`` reply
that the node shows as the node's error.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from frameserve.catalogue.entries import ModelEntry
from frameserve.engine.cache import frame_digest
from frameserve.engine.engine import Engine
from frameserve.engine.request import (
    CheckedKnobs,
    InferenceRequest,
    InferenceResult,
    build_request,
    check_knobs,
)
from frameserve.errors import (
    ModelError,
    ProtocolError,
    RequestError,
    RequestTooLargeError,
)
from frameserve.serve.mlclient import messages as pb
from frameserve.serve.mlclient.convert import (
    check_wire_image,
    frame_from_wire,
    frame_to_wire,
    object_message,
    sent_knobs,
)
from frameserve.serve.mlclient.framing import (
    HEADER_SIZE,
    parse_request_header,
    reply_header,
)
from frameserve.serve.mlclient.menu import Menu, build_menu, node_can_run, patterns_match
from frameserve.serve.mlclient.streaming import (
    BodyLimits,
    StreamedImage,
    image_sources,
    receive_body,
)
from frameserve.serve.mlclient.wirecodec import (
    DecodedRequest,
    RequestKind,
    WireImage,
    WirePixels,
    decode_request,
    encode_inference_reply,
)
from frameserve.serve.net.listener import FrontDoor
from frameserve.serve.net.sockets import (
    ClientGone,
    ClientStalled,
    recv_exact_into,
    send_buffers,
    wait_while_connected,
)
from frameserve.serve.settings import MLClientDoorSettings

__all__ = ["MLClientServer"]

log = logging.getLogger(__name__)

_DRAIN_SECONDS = 1.0
_DRAIN_BYTES = 64 << 20


@dataclass
class _Exchange:
    """What one connection did, for its log line."""

    client: str
    kind: RequestKind | None = None  #: ``None`` until a request was decoded
    model: str = "-"
    size: str = "-"
    worker: str = "-"  #: the worker process that ran it (``-``: in-process or cached)
    outcome: str = "ok"
    started: float = field(default_factory=time.perf_counter)


class MLClientServer(FrontDoor):
    """Serves the MLClient protocol on ``settings.host:settings.port``, from ``engine``."""

    def __init__(self, *, engine: Engine, settings: MLClientDoorSettings) -> None:
        self.engine = engine
        self.settings = settings
        self._warned_left_out: tuple[str, ...] = ()
        super().__init__(
            name="MLClient protocol" if settings.name is None else f"MLClient {settings.name!r}",
            host=settings.host,
            port=settings.port,
            max_connections=settings.max_connections,
            max_connections_per_address=settings.max_connections_per_address,
            allow=settings.allow,
        )

    def _refuse(self, conn: socket.socket, client: str, reason: str) -> None:
        message = f"server busy: {reason}; try again"
        log.warning("%s refused: %s", client, message)
        with conn:
            conn.settimeout(self.settings.read_timeout)
            self._send_error(conn, message)

    def _serve_connection(self, conn: socket.socket, client: str) -> None:
        accepted = time.monotonic()
        exchange = _Exchange(client)
        replied = False
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            received = self._read_request(conn, accepted)
            if received is None:
                exchange.outcome = "closed without a request"
                return
            body, streamed = received
            decoded = decode_request(body.data, max_images=self.settings.max_request_images)
            exchange.kind = decoded.kind
            if decoded.kind is RequestKind.INFO:
                self._answer_info(conn)
            else:
                work, size = self._inference_request(body, decoded, exchange, streamed)
                del body, decoded, received, streamed  # the frames hold their own copies
                if isinstance(work, InferenceRequest):
                    work = wait_while_connected(conn, self.engine.submit(work))
                    exchange.worker = "-" if work.worker is None else str(work.worker)
                else:
                    exchange.outcome = "ok (cached)"
                self._send_result(conn, work, size)
            replied = True
        except (ClientGone, ClientStalled) as exc:
            exchange.outcome = f"dropped: {exc}"
            if isinstance(exc, ClientStalled):
                replied = self._send_error(conn, f"request incomplete: {exc}")
        except (RequestError, ModelError) as exc:
            exchange.outcome = f"error: {exc}"
            exchange.worker = "-" if exc.worker is None else str(exc.worker)
            replied = self._send_error(conn, str(exc))
        except OSError as exc:
            exchange.outcome = f"connection failed: {exc}"
        except Exception as exc:  # never let one request take the server down
            log.exception("%s: unexpected failure", client)
            exchange.outcome = f"internal error: {type(exc).__name__}: {exc}"
            replied = self._send_error(conn, f"internal server error: {type(exc).__name__}: {exc}")
        finally:
            self._finish(conn, drain=replied and not exchange.outcome.startswith("ok"))
            self._log(exchange)

    def _read_request(
        self, conn: socket.socket, accepted: float
    ) -> tuple[np.ndarray, StreamedImage | None] | None:
        """Read one framed request body into a fresh buffer, its first image straight into its
        frame when it can be (:mod:`.streaming`); ``None`` if nothing was sent.

        ``accepted`` (a ``time.monotonic`` value) is when the connection was accepted: the
        header and body deadlines count from it.
        """
        settings = self.settings
        idle = settings.read_timeout
        header = bytearray(HEADER_SIZE)
        try:
            recv_exact_into(
                conn,
                memoryview(header),
                idle_timeout=idle,
                deadline=accepted + settings.header_timeout,
            )
        except ClientStalled as exc:
            if time.monotonic() < accepted + settings.header_timeout:
                raise  # silent for read_timeout, before the header deadline
            raise ClientStalled(
                f"the {HEADER_SIZE}-byte header must arrive within "
                f"{settings.header_timeout:g} s of connecting: {exc}"
            ) from None
        except ClientGone as exc:
            if exc.received == 0:
                return None
            raise ProtocolError(
                f"request header must be {HEADER_SIZE} ASCII digits; the connection closed "
                f"after {exc.received}"
            ) from None
        length = parse_request_header(header)
        limit = self.settings.max_request_bytes(self.engine.largest_input_count())
        if length > limit:
            raise RequestTooLargeError(
                f"request of {length} bytes is above the limit of {limit} bytes "
                f"(--max-frame-bytes sets the limit per input)"
            )
        limits = BodyLimits(
            idle_timeout=idle,
            deadline=accepted + settings.body_deadline(length),
            min_rate=settings.min_transfer_rate,
            rate_from=accepted + settings.header_timeout,
            max_frame_bytes=settings.max_frame_bytes,
            max_frame_pixels=settings.max_frame_pixels,
        )
        try:
            return receive_body(conn, length, limits, self.engine.allocate_frame)
        except ClientGone as exc:
            raise ProtocolError(
                f"request body ended after {exc.received} of the {length} bytes its header "
                "announced"
            ) from None

    def start(self) -> None:
        """Listen, then log what the node's menu lists here and in how many bytes."""
        super().start()
        menu = self.menu()
        log.info(
            "%s door (port %d) lists %d model(s) in %d bytes (at most %d): %s",
            self.name,
            self.address[1],
            len(menu.listed),
            len(menu.reply),
            self.settings.info_bytes,
            ", ".join(menu.listed) or "none",
        )
        if menu.unfit:
            log.info(
                "%s door: not listed, their outputs are not the size of their inputs (the node "
                "cannot take them; they serve on HTTP and 'frameserve run'): %s",
                self.name,
                ", ".join(menu.unfit),
            )
        unmatched = [p for p in self.settings.models if not _matches_any(p, menu)]
        if unmatched:
            log.warning(
                "%s door: pattern(s) %s match no model (yet)", self.name, ", ".join(unmatched)
            )

    def menu(self) -> Menu:
        """Return the node's menu as this door offers it now; warn when models are left out."""
        menu = build_menu(
            self.engine.models(), patterns=self.settings.models, budget=self.settings.info_bytes
        )
        if menu.left_out and menu.left_out != self._warned_left_out:
            log.warning(
                "%s door: %d model(s) left out of the node's menu (%s): the menu would take %d "
                "bytes, more than the %d the node reads in its single recv (one TCP segment); "
                "choose what this port lists with --mlclient-models PATTERN..., or give other "
                "models ports of their own with --mlclient-door PORT=PATTERN,...",
                self.name,
                len(menu.left_out),
                ", ".join(menu.left_out),
                menu.wanted_bytes,
                self.settings.info_bytes,
            )
        self._warned_left_out = menu.left_out
        return menu

    def _answer_info(self, conn: socket.socket) -> None:
        conn.sendall(self.menu().reply)  # one write: the node reads it in one recv

    def _inference_request(
        self,
        body: np.ndarray,
        decoded: DecodedRequest,
        exchange: _Exchange,
        streamed: StreamedImage | None = None,
    ) -> tuple[InferenceRequest | InferenceResult, tuple[int, int] | None]:
        """Turn a decoded inference message into a checked request (frames copied out).

        An identical request answered before is found in the result cache by the digest of
        the bytes as received, before any frame is converted: then its result comes back
        instead. Also returns the size (height, width) the node needs its output in. The
        first image may have been received straight into its frame (``streamed``).

        Only the wire is checked here (frame byte counts, image headers); the model's inputs
        and knobs are checked by ``check_knobs`` and ``build_request``.
        """
        model = pb.Model()
        try:
            for part in decoded.model_parts:
                model.MergeFromString(part)
        except Exception as exc:  # the protobuf runtime's DecodeError
            raise ProtocolError(f"the request's model message is not valid: {exc}") from None
        exchange.model = model.name or "-"
        if not patterns_match(model.name, self.settings.models):
            raise RequestError(
                f"model {model.name!r} is not served on this port; its models: "
                f"{', '.join(self.settings.models)}"
            )
        entry = self.engine.model(model.name)
        if not node_can_run(entry.spec):
            raise RequestError(
                f"model {entry.id!r} makes outputs {entry.spec.output_scale}x the size of its "
                "inputs, which the MLClient node cannot take; run it over HTTP or with "
                "'frameserve run'"
            )
        limit = self.settings.max_frame_bytes
        for index, image in enumerate(decoded.images):
            if image.nbytes > limit:
                raise RequestTooLargeError(
                    f"image {index} holds {image.nbytes} bytes, above the limit of {limit} "
                    "bytes per frame (--max-frame-bytes)"
                )
        for index, image in enumerate(decoded.images):
            check_wire_image(
                image, what=f"image {index}", max_pixels=self.settings.max_frame_pixels
            )
        size = (decoded.images[0].height, decoded.images[0].width) if decoded.images else None
        if size is not None:
            exchange.size = f"{size[1]}x{size[0]}"
        knobs = check_knobs(entry, sent_knobs(model))
        sources = image_sources(decoded, streamed)
        key = self._cache_key(body, sources, entry, knobs)
        cached = self.engine.cached(key) if key is not None else None
        if cached is not None:
            return cached, size
        frames = [
            torch.from_numpy(source.pixels)
            if isinstance(source, StreamedImage)
            else frame_from_wire(
                body, source, what=f"image {index}", allocate=self.engine.allocate_frame
            )
            for index, source in enumerate(sources)
        ]
        request = build_request(
            entry, frames, knobs, client=exchange.client, protocol="mlclient", cache_key=key
        )
        return request, size

    def _cache_key(
        self,
        body: np.ndarray,
        sources: list[WireImage | StreamedImage],
        entry: ModelEntry,
        knobs: CheckedKnobs,
    ) -> bytes | None:
        """The result cache key of this request, from the image bytes as they arrived (the
        streamed image's as they were placed)."""
        if not self.engine.caches(entry):
            return None
        digests = [
            frame_digest(source.pixels, layout="planar-top-down-f32", shape=source.pixels.shape)
            if isinstance(source, StreamedImage)
            else frame_digest(
                body.data[source.start : source.end],
                layout="mlclient:planar-bottom-up-f32",
                shape=(source.channels, source.height, source.width),
            )
            for source in sources
        ]
        return self.engine.cache_key(entry, knobs, digests)

    def _send_result(
        self, conn: socket.socket, result: InferenceResult, size: tuple[int, ...] | None
    ) -> None:
        images: list[tuple[int, int, int, WirePixels]] = []
        for name, frame in result.frames.items():
            if size is not None and not images and tuple(frame.shape[1:]) != tuple(size):
                raise ModelError(
                    f"output {name!r} is {frame.shape[2]}x{frame.shape[1]}, but the MLClient "
                    f"node needs the input's format, {size[1]}x{size[0]}"
                )
            channels, height, width = frame.shape
            images.append((width, height, channels, frame_to_wire(frame)))
        objects = [object_message(obj).SerializeToString() for obj in result.objects]
        buffers, length = encode_inference_reply(images, objects)
        conn.settimeout(self.settings.read_timeout)
        parts: list[Any] = [reply_header(length)]
        for part in buffers:  # pixel rows are gathered by the kernel, never joined here
            parts.extend(part.views if isinstance(part, WirePixels) else (part,))
        send_buffers(conn, parts)

    def _send_error(self, conn: socket.socket, message: str) -> bool:
        """Answer with an ``Error`` reply; return whether it could be sent."""
        reply = pb.RespondWrapper(info=True, error=pb.Error(msg=message))
        body = reply.SerializeToString()
        try:
            conn.settimeout(self.settings.read_timeout)
            conn.sendall(reply_header(len(body)) + body)
        except OSError:
            return False
        return True

    def _finish(self, conn: socket.socket, *, drain: bool) -> None:
        """Close the connection, so the node sees the end of the reply.

        After an error the client may still be sending the request it announced; reading a
        little of it first lets the reply reach the client instead of being cut by a reset.
        """
        try:
            conn.shutdown(socket.SHUT_WR)
            if drain:
                _drain(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def _log(self, exchange: _Exchange) -> None:
        elapsed = (time.perf_counter() - exchange.started) * 1000
        if exchange.kind is RequestKind.INFER:
            self.engine.record_request(
                model=exchange.model,
                protocol="mlclient",
                outcome="ok" if exchange.outcome.startswith("ok") else "error",
                seconds=elapsed / 1000,
                size=exchange.size,
            )
        seen = exchange.kind is not None or exchange.outcome != "ok"
        log.log(
            logging.INFO if seen else logging.DEBUG,
            "%s %s model=%s size=%s %.1f ms worker=%s %s",
            exchange.client,
            exchange.kind.value if exchange.kind is not None else "-",
            exchange.model,
            exchange.size,
            elapsed,
            exchange.worker,
            exchange.outcome,
        )


def _matches_any(pattern: str, menu: Menu) -> bool:
    ids = (*menu.listed, *menu.left_out, *menu.unfit)
    return any(patterns_match(model_id, (pattern,)) for model_id in ids)


def _drain(conn: socket.socket) -> None:
    deadline = time.monotonic() + _DRAIN_SECONDS
    scratch = bytearray(1 << 16)
    drained = 0
    while drained < _DRAIN_BYTES:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        conn.settimeout(remaining)
        try:
            count = conn.recv_into(scratch)
        except OSError:
            return
        if count == 0:
            return
        drained += count
