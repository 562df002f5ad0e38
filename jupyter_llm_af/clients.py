"""Ready-made clients for the shared LLM service, for notebooks and scripts.

Everything is read from the environment the service puts into each kernel
(``JUPYTER_LLM_AF_URL`` / ``JUPYTER_LLM_AF_TOKEN``, see :mod:`jupyter_llm_af.kernel_env`), falling
back to ``OLLAMA_HOST`` / ``OLLAMA_API_KEY`` so the same code runs against a plain Ollama server::

    from jupyter_llm_af import openai_client, ollama_client
    openai_client().chat.completions.create(model="smollm2:135m", messages=[...])
    ollama_client().chat(model="smollm2:135m", messages=[...])

Timeouts are long on purpose: a request may wait in the service's queue and for a Slurm GPU job
to start before the first byte arrives. ``openai`` and ``ollama`` are imported only when used.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from .kernel_env import TOKEN_VAR, URL_VAR

if TYPE_CHECKING:
    import ollama
    import openai

#: Seconds the service may stay silent before a response starts or between chunks (queue + job start).
READ_TIMEOUT = 900.0
TIMEOUT = httpx.Timeout(connect=10.0, read=READ_TIMEOUT, write=60.0, pool=READ_TIMEOUT)
#: For the service's own small JSON endpoints (state, queue), which never wait for the backend.
QUICK_TIMEOUT = httpx.Timeout(10.0)

_OLLAMA_DEFAULT = "http://127.0.0.1:11434/"


class ServiceError(Exception):
    """A failed call to the service, with a one-line ``message`` fit to show a user."""

    def __init__(self, message: str, status: int | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after

    @classmethod
    def from_response(cls, response: httpx.Response) -> ServiceError:
        """Build from an error response in either API's format (body must have been read)."""
        detail = _error_detail(response)
        retry_after = _retry_after(response)
        status = response.status_code
        if status in (401, 403):
            message = f"Not authorized by the LLM service (HTTP {status}): {detail}"
            if status == 401:
                message += f" — is {TOKEN_VAR} set?"
        elif status in (429, 503) and retry_after is not None:
            message = f"{detail} (HTTP {status}; retry in {retry_after} s)"
        else:
            message = f"{detail} (HTTP {status})"
        return cls(message, status, retry_after)

    @classmethod
    def from_transport(cls, exc: httpx.TransportError, url: str) -> ServiceError:
        """Build from a connection failure or timeout."""
        if isinstance(exc, httpx.TimeoutException):
            return cls(f"The LLM service at {url} did not answer in time ({type(exc).__name__}).")
        hint = ""
        if not os.environ.get(URL_VAR):
            hint = f" ({URL_VAR} is not set: is the jupyter_llm_af extension enabled?)"
        return cls(f"Cannot reach the LLM service at {url}: {exc or type(exc).__name__}{hint}")


def _error_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):  # OpenAI format
        return str(error.get("message") or error)
    if error:  # Ollama format
        return str(error)
    return str(body)[:300]


def _retry_after(response: httpx.Response) -> int | None:
    try:
        return int(float(response.headers["Retry-After"]))
    except (KeyError, ValueError):
        return None


def _from_ollama_host(host: str) -> str:
    """``OLLAMA_HOST`` as the ollama client reads it (``host``, ``:port``, ``host:port/path``, URL)."""
    explicit_scheme = "://" in host
    parts = urlsplit(host if explicit_scheme else "http://" + host)
    netloc = parts.netloc or "127.0.0.1"
    if netloc.startswith(":"):
        netloc = "127.0.0.1" + netloc
    if parts.port is None and not explicit_scheme:
        netloc += ":11434"
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}/"


def service_url() -> str:
    """The service prefix URL, always ending in ``/`` (``GET`` on it answers "Ollama is running")."""
    url = os.environ.get(URL_VAR)
    if not url:
        host = os.environ.get("OLLAMA_HOST")
        url = _from_ollama_host(host) if host else _OLLAMA_DEFAULT
    return url if url.endswith("/") else url + "/"


def service_token() -> str | None:
    """The token for the service, or None (e.g. a plain local Ollama needs none)."""
    return os.environ.get(TOKEN_VAR) or os.environ.get("OLLAMA_API_KEY") or None


def auth_headers() -> dict[str, str]:
    """``Authorization`` header for the service, empty without a token."""
    token = service_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


def openai_client(**kwargs: Any) -> openai.OpenAI:
    """``openai.OpenAI`` for the service's ``/v1`` API; keyword arguments override the defaults."""
    import openai

    return openai.OpenAI(**_openai_kwargs(kwargs))


def async_openai_client(**kwargs: Any) -> openai.AsyncOpenAI:
    """``openai.AsyncOpenAI`` for the service's ``/v1`` API."""
    import openai

    return openai.AsyncOpenAI(**_openai_kwargs(kwargs))


def _openai_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    kwargs.setdefault("base_url", service_url() + "v1")
    kwargs.setdefault("api_key", service_token() or "unused")  # the client insists on some key
    kwargs.setdefault("timeout", TIMEOUT)
    return kwargs


def ollama_client(**kwargs: Any) -> ollama.Client:
    """``ollama.Client`` for the service's Ollama API (also sends the token with ollama < 0.6)."""
    import ollama

    return ollama.Client(**_ollama_kwargs(kwargs))


def async_ollama_client(**kwargs: Any) -> ollama.AsyncClient:
    """``ollama.AsyncClient`` for the service's Ollama API."""
    import ollama

    return ollama.AsyncClient(**_ollama_kwargs(kwargs))


def _ollama_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    kwargs.setdefault("host", service_url().rstrip("/"))  # the client appends /api/...
    kwargs["headers"] = {**auth_headers(), **(kwargs.get("headers") or {})}
    kwargs.setdefault("timeout", TIMEOUT)
    return kwargs


def get_json(path: str, timeout: httpx.Timeout | float = QUICK_TIMEOUT) -> Any:
    """``GET`` a JSON document from the service (``path`` relative to the prefix); raises ServiceError."""
    url = service_url() + path.lstrip("/")
    try:
        response = httpx.get(url, headers=auth_headers(), timeout=timeout)
    except httpx.TransportError as exc:
        raise ServiceError.from_transport(exc, service_url()) from None
    if response.status_code >= 400:
        raise ServiceError.from_response(response)
    try:
        return response.json()
    except ValueError:
        message = f"{url} did not answer JSON: is it the LLM service?"
        raise ServiceError(message, response.status_code) from None


def post_json(path: str, body: Any = None, timeout: httpx.Timeout | float = QUICK_TIMEOUT) -> Any:
    """``POST`` to the service and return its JSON answer (``{}`` if empty); raises ServiceError."""
    url = service_url() + path.lstrip("/")
    try:
        response = httpx.post(url, headers=auth_headers(), json=body, timeout=timeout)
    except httpx.TransportError as exc:
        raise ServiceError.from_transport(exc, service_url()) from None
    if response.status_code >= 400:
        raise ServiceError.from_response(response)
    try:
        return response.json() if response.content else {}
    except ValueError:
        return {}


def state() -> dict[str, Any]:
    """The backend's state: ``{"kind", "state", "message", "job", "models", "queue", "user"}``."""
    return get_json("backend/state")


def queue() -> dict[str, Any]:
    """This user's requests in the service's queue: ``{"mine": [...], "totals": {...}}``."""
    return get_json("queue")


def models() -> list[str]:
    """Names of the models the backend offers (Ollama ``/api/tags``)."""
    return [m.get("name") or m.get("model") for m in get_json("api/tags", timeout=TIMEOUT).get("models", [])]
