"""backend='upstream': a fixed URL (a site's Ollama or vLLM server), proxied as is."""

from __future__ import annotations

import time

import httpx

from ..state import LauncherState
from .base import Backend, Endpoint


class UpstreamBackend(Backend):
    kind = "upstream"

    def __init__(self, url: str, health_timeout: float = 3.0):
        super().__init__()
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"upstream_url must be an http(s) URL, got {url!r}")
        self.url = url.rstrip("/")
        self.health_timeout = health_timeout
        self._healthy: bool | None = None
        self._checked_at = 0.0
        self._last_error: str | None = None

    async def ready_endpoint(self, deadline: float) -> Endpoint:
        # A fixed URL is always "ready": if it is down, the forwarder says so (502) at once.
        return Endpoint(self.url, "upstream")

    def serving_url(self) -> str | None:
        return self.url if self._healthy is not False else None

    async def check_health(self) -> bool:
        """Probe GET / (both Ollama and llama.cpp/vLLM answer it) — cached for a few seconds."""
        if time.monotonic() - self._checked_at < 2.0 and self._healthy is not None:
            return self._healthy
        try:
            async with httpx.AsyncClient(timeout=self.health_timeout, trust_env=False) as client:
                resp = await client.get(self.url + "/")
            self._healthy = resp.status_code < 500
            self._last_error = None if self._healthy else f"backend answered {resp.status_code}"
        except httpx.HTTPError as e:
            self._healthy = False
            self._last_error = f"backend unreachable: {type(e).__name__}"
        self._checked_at = time.monotonic()
        return self._healthy

    def describe(self, admin: bool = False) -> LauncherState:
        healthy = self._healthy
        out: LauncherState = {
            "kind": self.kind,
            "state": "ready" if healthy is not False else "failed",
            "message": "Ready (site backend)"
            if healthy is not False
            else "The site's LLM backend is not answering",
            "job": None,
            "successor": None,
            "idle_s": round(time.monotonic() - self.last_activity, 1),
            "last_error": self._last_error,
        }
        if admin:
            out["backend_url"] = self.url
        return out

    def wait_message(self) -> str:
        return "the site's LLM backend is not answering"
