"""The frameserve HTTP client: models, their knobs, and inference on numpy frames.

::

    from frameserve.client import Client

    with Client("http://127.0.0.1:8000", timeout=60.0) as client:
        result = client.infer("blur", frame, knobs={"size": 4.0})
        blurred = result.frames["image"]    # (H, W, 3) float32, top row first

    # a shared server: a token (or $FRAMESERVE_TOKEN), HTTPS with the studio's CA
    Client("https://frames.studio:8000", token="fs_...", verify="studio-ca.pem")
"""

from __future__ import annotations

import os
import ssl
import threading
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, TypeAlias
from urllib.parse import quote, urlsplit

import numpy as np
import numpy.typing as npt

from frameserve.client._exceptions import (
    NotFoundError,
    ProtocolViolation,
    ServiceUnavailableError,
)
from frameserve.client._models import InferResult, ModelInfo, model_info_from
from frameserve.client._requests import Requester
from frameserve.client._tensors import (
    DATATYPES,
    HEADER_LENGTH,
    InputTensor,
    as_input,
    decode_response,
    encode_request,
    parse_objects,
)
from frameserve.client._training import Training
from frameserve.client._transport import HTTPTransport

__all__ = ["DEFAULT_URL", "TOKEN_ENV", "Client", "Frames", "KnobValue"]

#: Where ``frameserve serve`` listens for HTTP unless told otherwise.
DEFAULT_URL = "http://127.0.0.1:8000"
#: Environment variable holding the token a client sends when none is given.
TOKEN_ENV = "FRAMESERVE_TOKEN"

#: One frame (``(H, W, C)`` or ``(H, W)``), frames in input order, or frames by input name.
Frames: TypeAlias = Mapping[str, npt.ArrayLike] | Sequence[npt.ArrayLike] | npt.NDArray[Any]
#: A knob value as JSON carries it (numpy scalars are accepted too).
KnobValue: TypeAlias = bool | int | float | str

#: Request parameters that are not knobs (the protocol's own).
_RESERVED_PARAMETERS = frozenset({"binary_data_output", "colourspace", "colorspace"})
#: The ``BYTES`` output that carries result objects.
OBJECTS_OUTPUT = "objects"


class Client:
    """A connection to one frameserve server over HTTP (Open Inference Protocol v2).

    ::

        client = Client("http://127.0.0.1:8000", timeout=60.0, retries=3)
        client.ready()                              # True
        [m.name for m in client.models()]           # ['blur', 'difference', 'identity', ...]
        result = client.infer("difference", [plate_a, plate_b], knobs={"gain": 10.0})

    Args:
        url: the server's base URL, ``http://host:port`` or ``https://host:port`` (a path
            prefix is kept).
        timeout: seconds to wait to connect, and for each read or write once connected;
            None waits for ever.
        retries: how many more times a request is tried when no connection could be made, or
            when it closed before any answer (after 0.1 s, 0.2 s, 0.4 s...). Error statuses
            and timeouts are never retried.
        token: the bearer token a server with tokens needs (``frameserve token add`` makes
            one), sent with every request; ``None`` reads ``$FRAMESERVE_TOKEN`` (unset or
            empty: no token).
        verify: for ``https://`` URLs, how the server's certificate is checked: ``True`` (the
            system's certificate authorities, or those of ``$SSL_CERT_FILE``), a CA file
            (PEM) to trust instead, or ``False`` (no check: for tests only, it lets anyone in
            the middle read the token).

    A client is safe to share between threads; each request uses its own connection from a
    small keep-alive pool. Close it (or use ``with``) to close the idle connections.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        timeout: float | None = 60.0,
        retries: int = 3,
        token: str | None = None,
        verify: bool | str | os.PathLike[str] = True,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must look like 'http://host:port' or 'https://...', got {url!r}")
        if parts.query or parts.fragment:
            raise ValueError(f"url must not have a query or fragment, got {url!r}")
        self.url = url.rstrip("/")
        https = parts.scheme == "https"
        self._transport = HTTPTransport(
            parts.hostname,
            parts.port or (443 if https else 80),
            timeout=timeout,
            retries=retries,
            ssl_context=_ssl_context(verify) if https else None,
            headers=_auth_headers(token),
        )
        self._requests = Requester(self._transport, prefix=parts.path.rstrip("/"))
        self._configs: dict[tuple[str, str | None], ModelInfo] = {}
        self._lock = threading.Lock()
        #: The training endpoints: uploads, jobs, progress, packages (:class:`Training`).
        self.training = Training(self._requests)

    @property
    def timeout(self) -> float | None:
        """Seconds to wait to connect and for each read or write (None: no limit)."""
        return self._transport.timeout

    @property
    def retries(self) -> int:
        """How many more times a request is tried when it could not reach the server."""
        return self._transport.retries

    def __repr__(self) -> str:
        return f"Client({self.url!r}, timeout={self.timeout!r}, retries={self.retries!r})"

    # -- health and metadata --------------------------------------------------------------

    def live(self) -> bool:
        """Return whether the server process answers (``GET /v2/health/live``).

        Raises:
            ConnectError: nothing answers at the URL.
        """
        return self._requests.request("GET", "/v2/health/live").status == 200

    def ready(self) -> bool:
        """Return whether the server is ready to serve (False while starting or stopping).

        Raises:
            ConnectError: nothing answers at the URL.
        """
        return self._requests.request("GET", "/v2/health/ready").status == 200

    def server_metadata(self) -> dict[str, Any]:
        """Return the server's ``name``, ``version`` and protocol ``extensions``."""
        return self._requests.json_object(self._requests.call("GET", "/v2"), "the server metadata")

    # -- models ---------------------------------------------------------------------------

    def models(self) -> list[ModelInfo]:
        """Return every model the server knows, including those that failed to load.

        A model that failed has ``state == "UNAVAILABLE"`` and says why in ``reason``; the
        others carry their inputs, outputs and knobs from their config.
        """
        response = self._requests.call("POST", "/v2/repository/index")
        index = self._requests.json(response, "the repository index")
        if not isinstance(index, list) or not all(
            isinstance(e, dict) and isinstance(e.get("name"), str) for e in index
        ):
            raise ProtocolViolation("the repository index is not a list of named models")
        found = []
        for entry in index:
            if entry.get("state", "READY") == "READY":
                info = self._fetch_config(entry["name"], None, index_entry=entry)
            else:
                info = model_info_from(entry["name"], index_entry=entry)
            found.append(info)
        return found

    def model(self, name: str) -> ModelInfo:
        """Return one model's description: label, inputs, outputs and knob specs.

        A model that failed to load comes back with ``state == "UNAVAILABLE"`` and its reason.

        Raises:
            NotFoundError: the server has no model of that name.
        """
        try:
            return self._fetch_config(name, None)
        except ServiceUnavailableError as exc:
            for info in self._index_entries():
                if info.get("name") == name:
                    return model_info_from(name, index_entry=info)
            raise NotFoundError(404, f"unknown model {name!r}") from exc

    def load_model(self, name: str) -> ModelInfo:
        """Have the server load its model folders that changed, then describe model ``name``.

        ``POST /v2/repository/models/{name}/load``; needs an ``admin`` token on a server with
        tokens. For a server whose hot reload is off, or to pick a change up at once.

        Raises:
            PermissionDeniedError: the token's role is not ``admin``.
            NotFoundError: the server has no model of that name (after loading).
            ServiceUnavailableError: the model failed to load (the message says why).
        """
        self._requests.call("POST", f"/v2/repository/models/{quote(name, safe='')}/load")
        with self._lock:
            for key in [key for key in self._configs if key[0] == name]:
                del self._configs[key]
        return self._fetch_config(name, None)

    # -- inference ------------------------------------------------------------------------

    def infer(
        self,
        name: str,
        frames: Frames,
        *,
        knobs: Mapping[str, KnobValue] | None = None,
        colourspace: str | None = None,
        binary: bool = True,
        version: str | None = None,
        output_datatype: str = "FP32",
        request_id: str | None = None,
    ) -> InferResult:
        """Run model ``name`` on ``frames`` and return its output frames and objects.

        Args:
            name: the model.
            frames: a dict of frames by input name; a list or tuple of frames in input order;
                or one frame for a single-input model. Each frame is ``(H, W, C)`` (or
                ``(H, W)``, one channel; or ``(N, H, W, C)``, a batch), top row first:
                float32 is sent as is (scene-linear values, above 1 too), float16 as ``FP16``,
                uint8 as ``UINT8`` (0–255 for 0–1), other floats as float32.
            knobs: knob values by name; knobs not given take their defaults.
            colourspace: the colourspace the frames are in and the outputs come back in
                (default: the server's scene-linear).
            binary: send and receive tensors as raw bytes (the default, no per-value text),
                or as JSON numbers.
            version: a model version ("1"); None for the server's choice.
            output_datatype: ``"FP32"`` (default), ``"FP16"`` or ``"UINT8"`` (0–1 to 0–255,
                rounded and clipped).
            request_id: an id the server logs and echoes in ``InferResult.id``.

        Raises:
            BadRequestError: an unknown knob or a bad value, a wrong shape or input.
            NotFoundError: no such model or version.
            ServiceUnavailableError: the model failed to load.
            ServerError: the model failed on these frames.
            PayloadTooLargeError: the frames are above the server's size cap.
            RequestTimeout: no answer within ``timeout`` seconds.
            ValueError, TypeError: ``frames`` or ``knobs`` cannot be sent as they are.

        ::

            result = client.infer("knobby", frame, knobs={"gain": 2.0, "report": True})
            result.frames["image"].shape   # (512, 512, 3)
            result.objects[0]["name"]      # 'knobs'
        """
        if output_datatype not in DATATYPES:
            raise ValueError(
                f"output_datatype {output_datatype!r} is not offered; use one of "
                f"{', '.join(DATATYPES)}"
            )
        inputs = self._inputs(name, version, frames)
        parameters = _knob_parameters(knobs)
        if colourspace is not None:
            parameters["colourspace"] = colourspace
        if binary:
            parameters["binary_data_output"] = True
        outputs = None
        if output_datatype != "FP32":
            info = self._config(name, version)
            wanted = {"binary_data": binary, "datatype": output_datatype}
            outputs = [{"name": out, "parameters": wanted} for out, _ in info.outputs]
            outputs.append({"name": OBJECTS_OUTPUT})
        request = encode_request(
            inputs, parameters=parameters, outputs=outputs, binary=binary, request_id=request_id
        )
        path = self._model_path(name, version, "infer")
        response = self._requests.call("POST", path, headers=request.headers, body=request.body)
        length_text = response.header(HEADER_LENGTH)
        try:
            header_length = None if length_text is None else int(length_text)
        except ValueError:
            raise ProtocolViolation(f"{HEADER_LENGTH} is not a number: {length_text!r}") from None
        decoded = decode_response(response.body, header_length)
        header = decoded.header
        return InferResult(
            frames=decoded.frames,
            objects=parse_objects(decoded.texts.get(OBJECTS_OUTPUT, [])),
            model_name=str(header.get("model_name", name)),
            model_version=str(header.get("model_version", "")),
            id=str(header.get("id", "")),
        )

    # -- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """Close the idle keep-alive connections (a later request opens a new one)."""
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- helpers --------------------------------------------------------------------------

    def _inputs(self, name: str, version: str | None, frames: Frames) -> list[InputTensor]:
        if isinstance(frames, Mapping):
            return [as_input(str(key), frame) for key, frame in frames.items()]
        names = self._config(name, version).input_names
        if isinstance(frames, list | tuple):
            if len(frames) != len(names):
                raise ValueError(
                    f"model {name!r} takes {len(names)} frame(s) ({', '.join(names)}), "
                    f"got {len(frames)}"
                )
            return [as_input(key, frame) for key, frame in zip(names, frames, strict=True)]
        if len(names) != 1:
            raise ValueError(
                f"model {name!r} takes {len(names)} frames ({', '.join(names)}): pass a list "
                "in that order or a dict by name, not one frame"
            )
        return [as_input(names[0], frames)]

    def _config(self, name: str, version: str | None) -> ModelInfo:
        """Return the model's config, fetched once per client and kept."""
        with self._lock:
            cached = self._configs.get((name, version))
        return cached if cached is not None else self._fetch_config(name, version)

    def _fetch_config(
        self, name: str, version: str | None, *, index_entry: Mapping[str, Any] | None = None
    ) -> ModelInfo:
        response = self._requests.call("GET", self._model_path(name, version, "config"))
        config = self._requests.json_object(response, f"the config of model {name!r}")
        info = model_info_from(name, config=config, index_entry=index_entry)
        with self._lock:
            self._configs[(name, version)] = info
        return info

    def _index_entries(self) -> list[dict[str, Any]]:
        index = self._requests.json(
            self._requests.call("POST", "/v2/repository/index"), "the repository index"
        )
        if not isinstance(index, list):
            raise ProtocolViolation("the repository index is not a list")
        return [entry for entry in index if isinstance(entry, dict)]

    def _model_path(self, name: str, version: str | None, action: str) -> str:
        path = f"/v2/models/{quote(name, safe='')}"
        if version is not None:
            path += f"/versions/{quote(version, safe='')}"
        return f"{path}/{action}"


def _auth_headers(token: str | None) -> dict[str, str]:
    """The ``Authorization`` header of ``token`` (else of ``$FRAMESERVE_TOKEN``), if any."""
    if token is None:
        token = os.environ.get(TOKEN_ENV, "").strip() or None
    if token is None:
        return {}
    if not token or not token.isprintable() or any(c.isspace() for c in token):
        raise ValueError("token must be one word of printable characters (as 'token add' made it)")
    return {"Authorization": f"Bearer {token}"}


def _ssl_context(verify: bool | str | os.PathLike[str]) -> ssl.SSLContext:
    """The TLS context of ``verify``: system CAs (True), a CA file, or no check (False)."""
    if verify is True:
        return ssl.create_default_context()
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    try:
        return ssl.create_default_context(cafile=os.fspath(verify))
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"verify={os.fspath(verify)!r} is not a readable CA file (PEM)") from exc


def _knob_parameters(knobs: Mapping[str, KnobValue] | None) -> dict[str, Any]:
    """Return knob values as JSON request parameters (numpy scalars become Python ones)."""
    parameters: dict[str, Any] = {}
    for name, value in (knobs or {}).items():
        if name in _RESERVED_PARAMETERS:
            raise ValueError(f"{name!r} is a protocol parameter, not a knob; use infer's argument")
        plain = value.item() if isinstance(value, np.generic) else value
        if not isinstance(plain, bool | int | float | str):
            raise TypeError(
                f"knob {name!r}: {type(value).__name__} values cannot be sent; "
                "use a bool, int, float or str"
            )
        parameters[name] = plain
    return parameters
