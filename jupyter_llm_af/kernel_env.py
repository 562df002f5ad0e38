"""Environment that makes LLM clients and coding agents talk to this service with no configuration.

The Jupyter extension merges :func:`server_environment` into the server process's ``os.environ``
before kernels start, so every kernel and every JupyterLab terminal (jupyter_server_terminals
spawns shells with a copy of the server's environment) inherits it. Imports nothing from Jupyter.

What each variable is for (checked against the clients in our test environment):

``JUPYTER_LLM_AF_URL`` / ``JUPYTER_LLM_AF_TOKEN``
    The service prefix URL (with trailing slash) and its token: read by ``%llm`` and
    :mod:`jupyter_llm_af.clients`.
``OLLAMA_HOST`` / ``OLLAMA_API_KEY``
    The ``ollama`` Python client (and langchain-ollama, jupyter-ai 2.x ``ollama:``) builds its
    base URL from ``OLLAMA_HOST`` and appends ``/api/...``; a path in it is kept
    (``http://127.0.0.1:8888/llm`` -> ``POST /llm/api/chat``, verified with ollama-python 0.6.3
    by a real request; its ``_parse_host`` doctests cover paths). Since 0.6 it sends
    ``OLLAMA_API_KEY`` as ``Authorization: Bearer``; older clients need
    ``jupyter_llm_af.ollama_client()`` or ``headers=`` for the token.
``OLLAMA_API_BASE``
    LiteLLM's Ollama provider (``ollama_chat/<model>``; jupyter-ai 3.x) reads this, not
    ``OLLAMA_HOST``, appends ``/api/chat`` and sends ``OLLAMA_API_KEY`` as a bearer token.
``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``
    The ``openai`` client (>= 1.0), LiteLLM's OpenAI provider.
``OPENAI_API_BASE``
    The older name still read by langchain-openai 0.x, i.e. jupyter-ai 2.x ``openai-chat-custom:``.
``ANTHROPIC_BASE_URL`` / ``ANTHROPIC_AUTH_TOKEN``
    The ``anthropic`` SDK and Claude Code: the service root *without* ``/v1`` (both append
    ``/v1/messages``); the token goes out as ``Authorization: Bearer``. ``ANTHROPIC_API_KEY`` is
    not set: it would go out as ``x-api-key`` too, and Claude Code warns about an auth conflict
    when both are set. A user's own ``ANTHROPIC_API_KEY`` means "real Anthropic": the group is
    then left alone.
``ANTHROPIC_MODEL``
    Claude Code's default model (its own default is a Claude model the service does not have);
    only when the service's default model is known.
``CODEX_HOME``
    Codex CLI reads ``$CODEX_HOME/config.toml``; :func:`codex_config` writes one whose provider
    is this service (Responses API, ``wire_api = "responses"``). Only for users without a Codex
    set-up of their own (no ``CODEX_HOME``, no ``~/.codex/config.toml`` or ``auth.json``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

URL_VAR = "JUPYTER_LLM_AF_URL"
TOKEN_VAR = "JUPYTER_LLM_AF_TOKEN"
CODEX_PROVIDER = "llm_af"

# Each group is added whole or not at all: if a user already points OPENAI_BASE_URL at some
# other server, adding our OPENAI_API_KEY would send our token there (and vice versa: their
# real OpenAI key would be sent to us). Same for Ollama (e.g. OLLAMA_API_KEY for ollama.com)
# and Anthropic (a real ANTHROPIC_API_KEY, which we never set, still keeps the group out).
_GROUPS: tuple[tuple[str, ...], ...] = (
    (URL_VAR, TOKEN_VAR),
    ("OLLAMA_HOST", "OLLAMA_API_BASE", "OLLAMA_API_KEY"),
    ("OPENAI_BASE_URL", "OPENAI_API_BASE", "OPENAI_API_KEY"),
    ("ANTHROPIC_BASE_URL", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_MODEL", "ANTHROPIC_API_KEY"),
    ("CODEX_HOME",),
)


def kernel_environment(
    service_url: str,
    token: str,
    existing: Mapping[str, str],
    model: str | None = None,
    codex_home: str | None = None,
) -> dict[str, str]:
    """Variables to add to a kernel's environment so clients reach the service at ``service_url``.

    ``service_url`` is the prefix P under which the service answers (``GET P`` -> "Ollama is
    running"), e.g. ``http://127.0.0.1:8888/llm/``. ``existing`` is the environment as it is
    (usually ``os.environ``). ``model`` is the service's default model, if known; ``codex_home``
    a directory holding a :func:`codex_config` (``None``: no Codex set-up offered). Nothing
    already set in ``existing`` is returned: a group of related variables (see ``_GROUPS``) is
    skipped entirely if the user set any one of it.
    """
    base = service_url if service_url.endswith("/") else service_url + "/"
    root = base.rstrip("/")  # clients that append "/api/..." or "/v1/..." themselves
    wanted = {
        URL_VAR: base,
        TOKEN_VAR: token,
        "OLLAMA_HOST": root,
        "OLLAMA_API_BASE": root,
        "OLLAMA_API_KEY": token,
        "OPENAI_BASE_URL": base + "v1",
        "OPENAI_API_BASE": base + "v1",
        # the openai client refuses to start without a key, even when the server needs none
        "OPENAI_API_KEY": token or "unused",
        "ANTHROPIC_BASE_URL": root,
        # the anthropic SDK refuses to send a request without a key or token
        "ANTHROPIC_AUTH_TOKEN": token or "unused",
    }
    if model:
        wanted["ANTHROPIC_MODEL"] = model
    if codex_home:
        wanted["CODEX_HOME"] = codex_home
    if not token:
        # no token (e.g. auth disabled): do not advertise empty credentials
        for name in (TOKEN_VAR, "OLLAMA_API_KEY"):
            wanted.pop(name)
    added: dict[str, str] = {}
    for group in _GROUPS:
        if any(existing.get(name) for name in group):
            continue
        added.update({name: wanted[name] for name in group if name in wanted})
    return added


def codex_config(service_url: str, token: str, model: str | None) -> str:
    """A Codex CLI ``config.toml`` whose default provider is this service's Responses API.

    The token is not written into the file: Codex reads it from ``$JUPYTER_LLM_AF_TOKEN``
    (``env_key``), which the same environment carries.
    """
    base = service_url if service_url.endswith("/") else service_url + "/"
    q = json.dumps  # a JSON string is a valid TOML basic string

    lines = ["# Written by jupyter_llm_af for this Jupyter server: Codex answers from its LLM service."]
    lines.append("# Set CODEX_HOME (or create ~/.codex/config.toml) to use your own configuration instead.")
    lines.append(f"model_provider = {q(CODEX_PROVIDER)}")
    if model:
        lines.append(f"model = {q(model)}")
    lines += ["", f"[model_providers.{CODEX_PROVIDER}]", f"name = {q('jupyter_llm_af')}"]
    lines += [f"base_url = {q(base + 'v1')}", f"wire_api = {q('responses')}"]
    if token:
        lines.append(f"env_key = {q(TOKEN_VAR)}")
    return "\n".join(lines) + "\n"


def has_own_codex_setup(existing: Mapping[str, str], home: str) -> bool:
    """Whether the user configured Codex (``CODEX_HOME`` set, or a ``~/.codex`` config or login)."""
    if existing.get("CODEX_HOME"):
        return True
    own = Path(home) / ".codex"
    return (own / "config.toml").exists() or (own / "auth.json").exists()


def server_environment(
    service_url: str,
    token: str,
    existing: Mapping[str, str],
    runtime_dir: str,
    model: str | None = None,
    home: str | None = None,
) -> dict[str, str]:
    """:func:`kernel_environment`, plus a Codex configuration under ``runtime_dir`` when the user
    has none of their own (written there, private to the user; never in ``~/.codex``).

    One directory per service URL: two Jupyter servers of one user share the runtime directory,
    and each one's terminals must reach its own service.
    """
    codex_home = None
    if not has_own_codex_setup(existing, home or os.path.expanduser("~")):
        server = hashlib.sha256(service_url.rstrip("/").encode()).hexdigest()[:12]
        codex_dir = Path(runtime_dir) / "jupyter_llm_af" / f"codex-{server}"
        codex_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        (codex_dir / "config.toml").write_text(codex_config(service_url, token, model))
        codex_home = str(codex_dir)
    return kernel_environment(service_url, token, existing, model=model, codex_home=codex_home)
