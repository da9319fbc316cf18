"""Requests to one server: a path under its URL in, an answer or the client's error out.

:class:`Requester` is what :class:`~frameserve.client.Client` and its
:class:`~frameserve.client._training.Training` endpoints share: it sends a request through the
:class:`~frameserve.client._transport.HTTPTransport`, turns an error status into the
:class:`~frameserve.client._exceptions.HTTPStatusError` for it (with the server's
``{"error": ...}`` message), and reads JSON answers. Both import it; neither imports the
other's module.

::

    requests = Requester(HTTPTransport("127.0.0.1", 8000), prefix="")
    response = requests.call("GET", "/v2/training/jobs")
    jobs = requests.json_object(response, "the job list")
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from frameserve.client._exceptions import HTTPStatusError, ProtocolViolation, error_for_status
from frameserve.client._transport import HTTPTransport, Response

__all__ = ["Requester"]


class Requester:
    """Sends requests to paths under one URL prefix; maps error statuses to exceptions."""

    def __init__(self, transport: HTTPTransport, *, prefix: str = "") -> None:
        self.transport = transport
        self.prefix = prefix

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        body: Sequence[bytes | memoryview] = (),
    ) -> Response:
        """Send a request and return the answer, whatever its status.

        Raises:
            TransportError: no answer (see :class:`~frameserve.client._transport.HTTPTransport`).
        """
        return self.transport.request(method, self.prefix + path, headers=headers, body=body)

    def call(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        body: Sequence[bytes | memoryview] = (),
    ) -> Response:
        """Send a request and return a 2xx answer.

        Raises:
            HTTPStatusError: the answer's status is an error (the most specific subclass), or
                not a success.
            TransportError: no answer.
        """
        response = self.request(method, path, headers=headers, body=body)
        if response.status >= 400:
            raise error_for_status(response.status, _error_message(response))
        if not 200 <= response.status < 300:
            raise HTTPStatusError(response.status, f"unexpected status {response.reason!r}")
        return response

    def json(self, response: Response, what: str) -> Any:
        """Return the JSON document of ``response`` (``what`` names it in an error).

        Raises:
            ProtocolViolation: the body is not JSON.
        """
        try:
            return json.loads(response.body)
        except (UnicodeDecodeError, ValueError) as exc:
            raise ProtocolViolation(f"{what} is not JSON: {exc}") from exc

    def json_object(self, response: Response, what: str) -> dict[str, Any]:
        """Return the JSON object of ``response``.

        Raises:
            ProtocolViolation: the body is not a JSON object.
        """
        document = self.json(response, what)
        if not isinstance(document, dict):
            raise ProtocolViolation(f"{what} is not a JSON object")
        return document


def _error_message(response: Response) -> str:
    """The server's ``{"error": ...}`` text, or what the body says when it is not that."""
    try:
        document = json.loads(response.body)
    except (UnicodeDecodeError, ValueError):
        document = None
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        return str(document["error"])
    text = bytes(response.body[:500]).decode("utf-8", "replace").strip()
    return text or response.reason
