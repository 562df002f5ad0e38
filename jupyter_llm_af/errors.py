"""One error hierarchy for the whole service, rendered once per API format.

Imports nothing from Jupyter. Domain code raises a :class:`ServiceError` (or a subclass naming the
cause); the handler layer has one ``except ServiceError`` that calls :func:`render_error` with the
route's API, so a client always gets an error in the format its SDK parses:

* ``ollama``    ``{"error": "..."}``
* ``openai``    ``{"error": {"message", "type", "param", "code"}}``
* ``anthropic`` ``{"type": "error", "error": {"type", "message"}}``
* ``service``   ``{"error", "message", "status", ...}`` (``/backend/*``, ``/queue``)
"""

from __future__ import annotations

import json
from typing import Any


class ServiceError(Exception):
    """An answer that is not a success: status, a sentence for the user, and retry advice."""

    default_status = 500

    def __init__(
        self,
        message: str,
        status: int | None = None,
        retry_after: int | None = None,
        *,
        param: str | None = None,
        code: str | None = None,
        extra: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.status = status if status is not None else self.default_status
        self.retry_after = retry_after
        self.param = param
        self.code = code
        self.extra = extra or {}


class BadRequest(ServiceError):
    default_status = 400


class Unauthorized(ServiceError):
    default_status = 401


class Forbidden(ServiceError):
    default_status = 403


class NotFound(ServiceError):
    default_status = 404


class Conflict(ServiceError):
    """A control action the launcher cannot do (e.g. stop a fixed upstream URL)."""

    default_status = 409


class PayloadTooLarge(ServiceError):
    default_status = 413


class NotSupported(ServiceError):
    """The backend lacks this route (e.g. /api/pull on an OpenAI-only server)."""

    default_status = 501


class QueueFull(ServiceError):
    """The request may not wait: 429 (the user's own limit) or 503 (the shared queue is full)."""

    default_status = 503


class AdmissionTimeout(ServiceError):
    """The deadline passed while waiting in the queue; ``position`` is where it still was."""

    default_status = 503

    def __init__(self, message: str, retry_after: int, position: int):
        super().__init__(message, 503, retry_after)
        self.position = position


class BackendUnavailable(ServiceError):
    """No backend can serve now (starting, pending job, failed): what to tell, when to retry."""

    default_status = 503

    def __init__(self, message: str, status: int = 503, retry_after: int | None = 10):
        super().__init__(message, status, retry_after)


class UpstreamError(ServiceError):
    """The backend could not be reached or broke off. ``retryable``: nothing was sent back yet and
    the request may be tried again on a fresh connection (or the next endpoint)."""

    default_status = 502

    def __init__(self, message: str, status: int = 502, retryable: bool = False):
        super().__init__(message, status)
        self.retryable = retryable


class BackendRejected(ServiceError):
    """The backend answered with an error (its status, mapped: its 5xx for bad input is a 400)."""


# Words in a backend's 5xx error that say the *input* was wrong (llama.cpp answers a JSON type
# error with 500): such an answer is the client's 400, anything else the backend's failure (502).
_INPUT_WORDS = ("invalid", "unsupported", "must be", "expected", "parse", "missing", "required", "unknown")


def backend_error_text(doc: Any) -> str:
    """The sentence in a backend's error document: ``{"error": "..."}`` (Ollama),
    ``{"error": {"message"}}`` (OpenAI, llama.cpp) or ``{"message"}``; else the document itself."""
    if isinstance(doc, dict):
        err = doc.get("error", doc)
        if isinstance(err, dict):
            return str(err.get("message") or err)
        return str(err)
    return str(doc)


def backend_failure_status(status: int, message: str) -> int:
    """The status to answer for a backend's error ``status`` with ``message``."""
    if status < 500:
        return status
    return 400 if any(w in message.lower() for w in _INPUT_WORDS) else 502


# -- rendering -----------------------------------------------------------------------------
_OPENAI_TYPES = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "forbidden"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    409: ("invalid_request_error", "conflict"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    501: ("invalid_request_error", "not_implemented"),
}
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    501: "invalid_request_error",
    503: "overloaded_error",
    529: "overloaded_error",
}

DEFAULT_MESSAGES = {
    401: "authentication required: send 'Authorization: Bearer <token>' (or 'x-api-key: <token>')",
    403: "forbidden: authentication required (token or login) or not allowed",
    404: "not found",
    405: "method not allowed",
    413: "request body too large",
}


def error_body(api: str, err: ServiceError) -> dict[str, Any]:
    """The JSON error document of ``api`` for ``err``."""
    status, message = err.status, err.message
    if api == "openai":
        err_type, default_code = _OPENAI_TYPES.get(
            status, ("server_error" if status >= 500 else "invalid_request_error", None)
        )
        return {
            "error": {
                "message": message,
                "type": err_type,
                "param": err.param,
                "code": err.code or default_code,
            }
        }
    if api == "anthropic":
        kind = _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    if api == "ollama":
        return {"error": message}
    return {"error": message, "message": message, "status": status, **err.extra}


def render_error(api: str, err: ServiceError) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of the HTTP answer for ``err`` on a route of ``api``."""
    headers = {"Content-Type": "application/json"}
    if err.retry_after is not None:
        headers["Retry-After"] = str(max(0, int(err.retry_after)))
    if err.status == 401 and api != "ollama":
        headers["WWW-Authenticate"] = 'Bearer realm="jupyter_llm_af"'
    if 400 <= err.status < 500 and err.status not in (408, 409, 429):
        # the anthropic/openai SDKs and Claude Code retry a 401 for minutes unless told not to;
        # 429 and 5xx keep their Retry-After semantics (queue full, job pending)
        headers["x-should-retry"] = "false"
    return err.status, headers, json.dumps(error_body(api, err)).encode()


def stream_error_chunk(api: str, message: str, status: int = 502) -> bytes:
    """The last chunk of a stream the backend broke off, in the stream's own framing."""
    err = ServiceError(message, status)
    if api == "openai":
        return b"data: " + json.dumps(error_body("openai", err)).encode() + b"\n\n"
    if api == "anthropic":
        return b"event: error\ndata: " + json.dumps(error_body("anthropic", err)).encode() + b"\n\n"
    return json.dumps({"error": message}).encode() + b"\n"
