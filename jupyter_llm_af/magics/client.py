"""The streaming request behind ``%llm``: ``POST api/chat`` in a worker thread.

A worker thread with its own asyncio loop streams ``POST {P}api/chat`` (Ollama's NDJSON) and,
until the first token, polls ``backend/state`` and ``queue`` every ``poll_interval`` seconds. It
hands events to the kernel's main thread through a ``queue.Queue``: the main thread owns all
output (display updates from other threads would land in whatever cell runs then) and waits on
that queue in short slices, so a kernel interrupt (SIGINT -> KeyboardInterrupt in the main
thread) arrives promptly; :meth:`ChatRequest.cancel` then cancels the worker's task, which closes
the connection, so the service drops the request from its queue or stops generating.

Events (kind, value): ``("chunk", text)``, ``("thinking", text)``, ``("status", (state, queue))``,
``("done", final_chunk)``, ``("error", exception)``, ``("cancelled", None)``.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
from typing import Any

import httpx

from .. import clients


def chat_body(
    model: str,
    messages: list[dict[str, str]],
    temperature: float | None = None,
    max_tokens: int | None = None,
) -> dict[str, Any]:
    """The streamed Ollama ``api/chat`` request; options only where set."""
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": True}
    options = {"temperature": temperature, "num_predict": max_tokens}
    if any(v is not None for v in options.values()):
        body["options"] = {k: v for k, v in options.items() if v is not None}
    return body


class ChatRequest:
    """``POST api/chat`` streamed in a worker thread; events come out of ``self.events``."""

    def __init__(self, body: dict[str, Any], poll_interval: float, first_status_after: float):
        self.body = body
        self.poll_interval = poll_interval
        self.first_status_after = first_status_after
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._loop = asyncio.new_event_loop()
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, name="jupyter-llm-af-request", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def cancel(self, wait: float = 5.0) -> None:
        """Cancel from the main thread; returns when the connection is closed (or after ``wait``)."""
        try:
            # callbacks queued before the loop runs still run first thing, so no race with _run
            self._loop.call_soon_threadsafe(self._cancel_in_loop)
        except RuntimeError:  # loop already closed: the request had finished
            pass
        self._thread.join(wait)

    def _cancel_in_loop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._task = self._loop.create_task(self._main())
            self._loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            self.events.put(("cancelled", None))
        except httpx.TransportError as exc:
            self.events.put(("error", clients.ServiceError.from_transport(exc, clients.service_url())))
        except Exception as exc:  # shown as one line by the main thread
            self.events.put(("error", exc))
        finally:
            # finalize httpx's line iterator here, not in a closed loop ("Task was destroyed...")
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    async def _main(self) -> None:
        url = clients.service_url()
        headers = clients.auth_headers()
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=clients.TIMEOUT) as http:
            poller = asyncio.create_task(self._poll(http))
            try:
                async with http.stream("POST", "api/chat", json=self.body) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        self.events.put(("error", clients.ServiceError.from_response(response)))
                        return
                    async for line in response.aiter_lines():
                        if not line.strip():
                            continue
                        try:
                            chunk = json.loads(line)
                        except ValueError:  # e.g. an HTML login page: the URL is not the service
                            raise clients.ServiceError(
                                f"{url} did not answer in Ollama's format: is it the LLM service?"
                            ) from None
                        if chunk.get("error"):  # an error after the stream started
                            self.events.put(("error", clients.ServiceError(str(chunk["error"]))))
                            return
                        message = chunk.get("message") or {}
                        if message.get("content") or chunk.get("done"):
                            poller.cancel()
                        if message.get("content"):
                            self.events.put(("chunk", message["content"]))
                        elif message.get("thinking"):
                            self.events.put(("thinking", message["thinking"]))
                        if chunk.get("done"):
                            self.events.put(("done", chunk))
                            return
                self.events.put(("error", clients.ServiceError("The answer stopped before it was complete.")))
            finally:
                poller.cancel()

    async def _poll(self, http: httpx.AsyncClient) -> None:
        await asyncio.sleep(self.first_status_after)  # quick answers need no status line
        while True:
            state, queue_doc = await asyncio.gather(
                self._get(http, "backend/state"), self._get(http, "queue")
            )
            self.events.put(("status", (state, queue_doc)))
            await asyncio.sleep(self.poll_interval)

    @staticmethod
    async def _get(http: httpx.AsyncClient, path: str) -> dict[str, Any] | None:
        try:
            response = await http.get(path, timeout=clients.QUICK_TIMEOUT)
            return response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):  # a plain Ollama has no such route: just say "waiting"
            return None
