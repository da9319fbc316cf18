"""What one front door is told: where it listens, how long it waits, what it accepts and lists.

:class:`~frameserve.serve.settings.ServerSettings` makes these for each door
(``settings.mlclient_door()``, ``settings.http_door()``): each door sees only its own share.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from frameserve.engine.limits import (
    DEFAULT_MAX_BATCH_FRAMES,
    DEFAULT_MAX_FRAME_BYTES,
    DEFAULT_MAX_FRAME_PIXELS,
    DEFAULT_MAX_REQUEST_IMAGES,
    request_bytes_limit,
)
from frameserve.errors import ConfigError
from frameserve.serve.mlclient.menu import SEGMENT_BYTES

__all__ = [
    "LOOPBACK_NETWORKS",
    "DoorSettings",
    "HttpDoorSettings",
    "MLClientDoorSettings",
    "Network",
    "check_patterns",
    "is_loopback",
]

#: An address range a door admits (``--mlclient-allow 10.1.0.0/16``).
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: Who the MLClient door admits unless told otherwise: this machine only.
LOOPBACK_NETWORKS: tuple[Network, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


@dataclass(frozen=True, kw_only=True)
class DoorSettings:
    """What one front door is told: where it listens, how long it waits, how much it accepts.

    ::

        door = DoorSettings(host="127.0.0.1", port=0, max_connections=16, read_timeout=5.0,
                            request_timeout=60.0, max_frame_bytes=1 << 26)

    Attributes:
        host, port: the address it listens on (port 0 picks a free one).
        max_connections: connections served at once; more are answered with a busy error.
        max_connections_per_address: connections one client address may hold at once, so one
            host cannot take every connection.
        read_timeout: seconds a client may stay silent while sending a request.
        request_timeout: seconds a client has at most to send a whole request.
        header_timeout: seconds a client has to send the start of a request (the MLClient
            header, the HTTP request head) after connecting or after its previous request.
        min_transfer_rate: bytes per second a request body must arrive at, at least: a body
            of N bytes must be complete within ``header_timeout + N / min_transfer_rate``
            seconds (and ``request_timeout``), so a trickling client cannot hold a connection.
        max_frame_bytes: largest frame accepted per model input (see
            :func:`~frameserve.engine.limits.request_bytes_limit`).
        max_frame_pixels: largest frame accepted, in pixels (width x height), checked from
            the sizes a request announces before anything is allocated.
    """

    host: str
    port: int
    max_connections: int = 256
    max_connections_per_address: int = 32
    read_timeout: float = 30.0
    request_timeout: float = 600.0
    header_timeout: float = 5.0
    min_transfer_rate: float = 1 << 20
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS

    def max_request_bytes(self, inputs: int) -> int:
        """Return the largest request body accepted when a model takes ``inputs`` images."""
        return request_bytes_limit(self.max_frame_bytes, inputs)

    def body_deadline(self, length: int) -> float:
        """Seconds a body of ``length`` bytes may take to arrive, at most."""
        return min(self.request_timeout, self.header_timeout + length / self.min_transfer_rate)


@dataclass(frozen=True, kw_only=True)
class MLClientDoorSettings(DoorSettings):
    """The MLClient door's settings: :class:`DoorSettings`, who it admits and what it lists.

    Attributes:
        allow: the networks whose clients it serves; others are refused at accept (the
            protocol carries no credentials). Default: loopback only.
        max_request_images: images one inference request may carry.
        models: model ids or globs: what the node's menu lists, in this order, and what the
            door runs (:mod:`frameserve.serve.mlclient.menu`).
        info_bytes: the most bytes the info reply may take, header included (one TCP
            segment: the node reads it with a single ``recv``).
        name: what log lines call the door (its patterns, for an extra door); ``None``: the
            default door.
    """

    allow: tuple[Network, ...] = LOOPBACK_NETWORKS
    max_request_images: int = DEFAULT_MAX_REQUEST_IMAGES
    models: tuple[str, ...] = ("*",)
    info_bytes: int = SEGMENT_BYTES
    name: str | None = None


@dataclass(frozen=True, kw_only=True)
class HttpDoorSettings(DoorSettings):
    """The HTTP door's settings: :class:`DoorSettings`, authentication, TLS and batches.

    Attributes:
        tokens_file: the token store (:mod:`frameserve.serve.auth`); every request but
            ``/v2/health/*`` then needs a valid bearer token. ``None``: no authentication.
        tls_cert, tls_key: PEM files; when given, the door speaks HTTPS only.
        max_batch_frames: frames one inference request may carry (a ``[N, H, W, C]`` batch).
    """

    tokens_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_batch_frames: int = DEFAULT_MAX_BATCH_FRAMES


def check_patterns(patterns: object, flag: str) -> tuple[str, ...]:
    """Check a door's model patterns: ids or globs, at least one, none empty."""
    if isinstance(patterns, str) or not isinstance(patterns, tuple | list):
        raise ConfigError(f"{flag}: expected a list of model ids or globs, got {patterns!r}")
    cleaned = tuple(str(p).strip() for p in patterns)
    if not cleaned or any(not p for p in cleaned):
        raise ConfigError(
            f"{flag}: give at least one model id or glob (such as 'segment' or 'person_*'), "
            "none of them empty"
        )
    return cleaned


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` keeps a door to this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
