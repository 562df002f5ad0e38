"""The route table: every route the service answers, one row each, and everything derived from it.

Imports nothing from Jupyter or Tornado. A row says what a route is (its API, its kind, its
methods), what it may reach on the backend, and how it behaves (cached listing, admin-only,
streaming rule). The handler dispatch (``tornado_specs`` in the handler layer), the error format
(:func:`api_of`), the forwarding allow-list (:func:`backend_target`) and the pipeline's choice of
step (``Route.kind``) all come from here: adding a route is one row plus its pipeline step.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from urllib.parse import quote


class Api(str, Enum):
    """Whose wire format a route speaks (and so the shape of its errors)."""

    OLLAMA = "ollama"
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    SERVICE = "service"


class Kind(str, Enum):
    """What the pipeline does with a request."""

    ROOT = "root"  # "Ollama is running"
    VERSION = "version"  # /api/version
    READ = "read"  # model listings: never start a job, never count as activity
    SHOW = "show"  # model details (POST, but no admission: no inference)
    INFERENCE = "inference"  # admission queue + backend lease + pass-through or translation
    MANAGE = "manage"  # Ollama's model-changing routes (admin, off by default)
    STATE = "state"  # /backend/state
    CONTROL = "control"  # /backend/start|stop (admin)
    QUEUE = "queue"  # /queue
    METRICS = "metrics"  # /metrics (admin or metrics token)
    USAGE = "usage"  # /usage


class Streaming(str, Enum):
    NEVER = "never"
    DEFAULT_ON = "default_on"  # Ollama: streams unless "stream": false
    OPT_IN = "opt_in"  # OpenAI/Anthropic: streams only with "stream": true


# A path parameter: a model id (Ollama/OpenAI names: letters, digits, . _ : / @ + -) or a blob digest.
MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,255}$")
BLOB_DIGEST = re.compile(r"^sha256[:-][0-9a-f]{64}$")


@dataclass(frozen=True)
class Route:
    pattern: str  # regex relative to the service root, one group at most
    path: str  # the service path; "{}" is the parameter
    api: Api
    kind: Kind
    methods: frozenset[str]
    backend_path: str | None = None  # the backend path it may reach ("{}": the checked parameter)
    cached: bool = False  # a listing remembered for when no backend is serving
    admin_only: bool = False
    streaming: Streaming = Streaming.NEVER
    param: re.Pattern[str] | None = None  # what the parameter must look like
    body: bool = False  # a JSON object body is required

    def service_path(self, arg: str | None = None) -> str:
        return self.path.replace("{}", arg or "")

    def is_stream(self, body: dict | None) -> bool:
        if body is None or self.streaming is Streaming.NEVER:
            return False
        if self.streaming is Streaming.DEFAULT_ON:
            return body.get("stream", True) is not False
        return body.get("stream") is True


GET = frozenset({"GET", "HEAD"})
POST = frozenset({"POST"})
_O, _V, _A, _S = Api.OLLAMA, Api.OPENAI, Api.ANTHROPIC, Api.SERVICE


def _inference(pattern: str, api: Api, streaming: Streaming = Streaming.NEVER) -> Route:
    path = "/" + pattern
    return Route(pattern, path, api, Kind.INFERENCE, POST, path, streaming=streaming, body=True)


def _manage(pattern: str, methods: frozenset[str] = POST, param: re.Pattern[str] | None = None) -> Route:
    path = "/" + pattern.replace("([^/]+)", "{}")
    return Route(pattern, path, _O, Kind.MANAGE, methods, path, admin_only=True, param=param)


ROUTES: tuple[Route, ...] = (
    Route(r"", "/", _O, Kind.ROOT, GET),
    # -- Ollama --------------------------------------------------------------------------------
    Route(r"api/version", "/api/version", _O, Kind.VERSION, GET, "/api/version"),
    Route(r"api/tags", "/api/tags", _O, Kind.READ, GET, "/api/tags", cached=True),
    Route(r"api/ps", "/api/ps", _O, Kind.READ, GET, "/api/ps"),
    Route(r"api/show", "/api/show", _O, Kind.SHOW, POST, "/api/show", body=True),
    _inference(r"api/chat", _O, Streaming.DEFAULT_ON),
    _inference(r"api/generate", _O, Streaming.DEFAULT_ON),
    _inference(r"api/embed", _O),
    _inference(r"api/embeddings", _O),
    _manage(r"api/pull"),
    _manage(r"api/push"),
    _manage(r"api/create"),
    _manage(r"api/copy"),
    _manage(r"api/delete", frozenset({"DELETE"})),
    _manage(r"api/blobs/([^/]+)", frozenset({"POST", "HEAD"}), BLOB_DIGEST),
    # -- OpenAI --------------------------------------------------------------------------------
    _inference(r"v1/chat/completions", _V, Streaming.OPT_IN),
    _inference(r"v1/completions", _V, Streaming.OPT_IN),
    _inference(r"v1/embeddings", _V),
    _inference(r"v1/responses", _V, Streaming.OPT_IN),
    Route(r"v1/models", "/v1/models", _V, Kind.READ, GET, "/v1/models", cached=True),
    Route(r"v1/models/(.+)", "/v1/models/{}", _V, Kind.READ, GET, "/v1/models/{}", param=MODEL_ID),
    # -- Anthropic -----------------------------------------------------------------------------
    _inference(r"v1/messages", _A, Streaming.OPT_IN),
    _inference(r"v1/messages/count_tokens", _A),
    # -- the service's own ---------------------------------------------------------------------
    Route(r"backend/state", "/backend/state", _S, Kind.STATE, GET),
    Route(r"backend/(start|stop)", "/backend/{}", _S, Kind.CONTROL, POST),
    Route(r"queue", "/queue", _S, Kind.QUEUE, GET),
    Route(r"usage", "/usage", _S, Kind.USAGE, GET),
    Route(r"metrics", "/metrics", _S, Kind.METRICS, GET),
)

_COMPILED = [(re.compile("^" + r.pattern + "/?$"), r) for r in ROUTES]
_BY_PATH = {r.path: r for r in ROUTES}


def match(path: str) -> tuple[Route, str | None] | None:
    """The route for a service-relative path without its leading '/' (and its parameter)."""
    for rx, route in _COMPILED:
        m = rx.match(path)
        if m:
            return route, (m.group(1) if m.groups() else None)
    return None


def route_for(service_path: str) -> Route:
    """The row of a fixed service path (e.g. "/api/chat")."""
    return _BY_PATH[service_path]


def api_of(path: str) -> Api:
    """Whose error format an arbitrary service path gets (unknown paths included)."""
    path = "/" + path.lstrip("/")
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return Api.ANTHROPIC
    if path == "/v1" or path.startswith("/v1/"):
        return Api.OPENAI
    if path == "/api" or path.startswith("/api/"):
        return Api.OLLAMA
    return Api.SERVICE


def backend_target(route: Route, arg: str | None = None) -> str | None:
    """The backend path a request on ``route`` may reach, or None (never forwarded).

    The one parameter is validated and re-quoted, so ``..``, encoded slashes and absolute URLs
    cannot steer a request anywhere else on the backend.
    """
    if route.backend_path is None:
        return None
    if "{}" not in route.backend_path:
        return route.backend_path
    if arg is None or route.param is None or not route.param.match(arg) or ".." in arg:
        return None
    return route.backend_path.replace("{}", quote(arg, safe=":@+"))


def allowed_backend_paths() -> frozenset[str]:
    """Every fixed backend path any route may reach (for tests and audits)."""
    return frozenset(r.backend_path for r in ROUTES if r.backend_path and "{}" not in r.backend_path)
