"""Environment that makes LLM clients in a kernel talk to this service with no configuration.

The Jupyter extension merges :func:`kernel_environment` into the server process's ``os.environ``
before kernels start, so every kernel (and terminal) inherits it. Imports nothing from Jupyter.

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
``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``
    The ``openai`` client (>= 1.0).
``OPENAI_API_BASE``
    The older name still read by langchain-openai 0.x, i.e. jupyter-ai 2.x ``openai-chat-custom:``.
"""

from __future__ import annotations

from collections.abc import Mapping

URL_VAR = "JUPYTER_LLM_AF_URL"
TOKEN_VAR = "JUPYTER_LLM_AF_TOKEN"

# Each group is added whole or not at all: if a user already points OPENAI_BASE_URL at some
# other server, adding our OPENAI_API_KEY would send our token there (and vice versa: their
# real OpenAI key would be sent to us). Same for Ollama (e.g. OLLAMA_API_KEY for ollama.com).
_GROUPS: tuple[tuple[str, ...], ...] = (
    (URL_VAR, TOKEN_VAR),
    ("OLLAMA_HOST", "OLLAMA_API_KEY"),
    ("OPENAI_BASE_URL", "OPENAI_API_BASE", "OPENAI_API_KEY"),
)


def kernel_environment(service_url: str, token: str, existing: Mapping[str, str]) -> dict[str, str]:
    """Variables to add to a kernel's environment so clients reach the service at ``service_url``.

    ``service_url`` is the prefix P under which the service answers (``GET P`` -> "Ollama is
    running"), e.g. ``http://127.0.0.1:8888/llm/``. ``existing`` is the environment as it is
    (usually ``os.environ``). Nothing already set there is returned: a group of related
    variables (see ``_GROUPS``) is skipped entirely if the user set any one of it.
    """
    base = service_url if service_url.endswith("/") else service_url + "/"
    wanted = {
        URL_VAR: base,
        TOKEN_VAR: token,
        # without the trailing slash: the ollama client appends "/api/..." itself
        "OLLAMA_HOST": base.rstrip("/"),
        "OLLAMA_API_KEY": token,
        "OPENAI_BASE_URL": base + "v1",
        "OPENAI_API_BASE": base + "v1",
        # the openai client refuses to start without a key, even when the server needs none
        "OPENAI_API_KEY": token or "unused",
    }
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
