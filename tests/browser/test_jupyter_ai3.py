"""jupyter-ai 3.x in a real JupyterLab: a question typed into Jupyternaut's chat is answered, streamed,
by the embedded default (llama.cpp + SmolLM2) through the service, with no configuration.

Lab runs from ``.venv-jai3`` (jupyter-ai 3 + this checkout, built by ``scripts/install.sh --test``);
the main venv keeps jupyter-ai 2.x for ``%%ai``. The embedded server and models are the main venv's
(``jupyter-llm-af setup-local``), found through ``JUPYTER_LLM_AF_DATA_DIR``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.browser.conftest import screenshot, start_lab
from tests.conftest import ROOT, TOKEN, Proc, auth, embedded_available

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect

pytestmark = [pytest.mark.browser, pytest.mark.llama]

JAI3 = ROOT / ".venv-jai3" / "bin" / "python"
MODEL = "smollm2:135m"
QUESTION = "What is the capital of France?"
INPUT = "Type a chat message, @ to mention..."
ROUTE = "route=/v1/chat/completions"  # LiteLLM openai/: passed through to llama-server


@pytest.fixture(scope="module")
def lab3() -> Iterator[Proc]:
    if not JAI3.exists():
        pytest.fail(f"{JAI3} missing: `bash scripts/install.sh --test` builds .venv-jai3 (jupyter-ai 3)")
    if not embedded_available():
        pytest.fail("embedded backend not set up: run `jupyter-llm-af setup-local` (CI does)")
    from jupyter_llm_af import embedded

    data = Path(tempfile.mkdtemp(prefix="llm-af-jai3-data-"))  # a fresh user: Jupyternaut's config.json
    env = {
        "JUPYTER_DATA_DIR": str(data),
        "JUPYTER_LLM_AF_DATA_DIR": str(embedded.data_dir()),
        # LiteLLM fetches its model price list from the internet at import unless told not to
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "PATH": f"{JAI3.parent}:/usr/bin:/bin",
        # a user who set none of these: the extension's zero-config values apply (empty counts as unset)
        **dict.fromkeys(
            [
                "OLLAMA_HOST",
                "OLLAMA_API_BASE",
                "OLLAMA_API_KEY",
                "OPENAI_BASE_URL",
                "OPENAI_API_BASE",
                "OPENAI_API_KEY",
                "JUPYTER_LLM_AF_URL",
                "JUPYTER_LLM_AF_TOKEN",
            ],
            "",
        ),
    }
    proc = start_lab(
        {"backend": "local"},
        timeout=180,  # importing jupyter-ai 3 (LiteLLM, LangChain) takes ~15 s on 2 cores
        python=str(JAI3),
        # jupyter-server-mcp (a jupyter-ai 3 dependency) listens on 3001 unless told otherwise
        server_config={"MCPExtensionApp": {"mcp_port": 0}},
        env=env,
    )
    proc.extra["data"] = data
    yield proc
    proc.stop()
    shutil.rmtree(proc.extra["tmp"], ignore_errors=True)
    shutil.rmtree(data, ignore_errors=True)


def lab_log(lab: Proc) -> str:
    return Path(lab.log_path).read_text(errors="replace")


def test_jupyternaut_is_preset_to_the_service(lab3: Proc) -> None:
    # what Jupyternaut's own settings API says: "Default" is the service's default model, and the
    # model picker offers the service's models (endpoint and token: the server's environment)
    deadline = time.monotonic() + 30
    while True:
        doc = httpx.get(f"{lab3.extra['base']}api/jupyternaut/config", headers=auth(), timeout=10).json()
        if doc.get("model_provider_id") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert doc["model_provider_id"] == f"openai/{MODEL}", lab_log(lab3)[-3000:]
    offered = {m["model_id"]: m for m in doc["custom_models"]}
    assert f"openai/{MODEL}" in offered
    assert offered[f"openai/{MODEL}"]["params"] == {}
    assert TOKEN not in json.dumps(doc)
    assert TOKEN not in (Path(lab3.extra["data"]) / "jupyter_ai" / "config.json").read_text()


@pytest.mark.timeout(660)
def test_question_in_jupyternaut_chat_gets_a_streamed_answer(new_page, lab3: Proc) -> None:
    page = new_page(lab3)
    page.evaluate("window.jupyterapp.commands.execute('jupyterlab-chat:createAndOpen', {})")
    chat_input = page.get_by_placeholder(INPUT)
    expect(chat_input).to_be_visible(timeout=60_000)
    toolbar = page.locator(".jp-chat-input-container")
    expect(toolbar).to_contain_text("Jupyternaut", timeout=30_000)  # the persona the message goes to
    chat_input.fill(QUESTION)
    chat_input.press("Enter")
    messages = page.locator(".jp-chat-messages-container .jp-chat-rendered-message")
    expect(messages.first).to_contain_text(QUESTION, timeout=30_000)

    # Jupyternaut's answer: its own message, growing while tokens arrive (~3.7k prompt tokens of
    # system prompt and tool schemas: a minute or more on a 2-core CPU)
    t0 = time.monotonic()
    states: list[tuple[float, str]] = []
    served: list[str] = []
    ended_at = None
    while time.monotonic() - t0 < 480:
        texts = messages.all_inner_texts()
        answer = texts[1].strip() if len(texts) > 1 else ""
        if answer and (not states or states[-1][1] != answer):
            states.append((round(time.monotonic() - t0, 1), answer))
        if ended_at is None:
            log = lab_log(lab3).splitlines()
            served = [line for line in log if ROUTE in line and f"model={MODEL}" in line]
            ended_at = time.monotonic() if served else None
        elif time.monotonic() - ended_at > 3:
            break  # the request has ended (the access log says so) and the last chunk is shown
        time.sleep(0.2)
    screenshot(page, "jupyternaut3")
    assert states, f"no answer within {time.monotonic() - t0:.0f} s:\n{lab_log(lab3)[-3000:]}"
    final = states[-1][1]
    print(f"\n[jupyter-ai 3] lab start {lab3.extra['start_s']:.0f} s; answer states {states[:3]} … {final!r}")
    assert len(states) >= 2 and len(final) > len(states[0][1]), f"not streamed: {states}"
    assert not final.lower().startswith(("error", "no chat model")), final
    # it came from the model, through the service's OpenAI route, with this server's token
    assert served, lab_log(lab3)[-3000:]
    assert "status=200" in served[-1] and "stream=true" in served[-1]
    expect(page.locator(".jp-chat-messages-container")).to_contain_text(final[:20])


def test_model_picker_offers_the_services_models(new_page, lab3: Proc) -> None:
    page = new_page(lab3)
    page.evaluate("window.jupyterapp.commands.execute('jupyterlab-chat:createAndOpen', {})")
    expect(page.get_by_placeholder(INPUT)).to_be_visible(timeout=60_000)
    toolbar = page.locator(".jp-chat-input-container")
    toolbar.get_by_role("button", name="Model").click()
    # Jupyternaut's custom models come first in the picker: ours, named after the service's model
    option = page.get_by_text(MODEL, exact=True).first
    expect(option).to_be_visible(timeout=30_000)
    screenshot(page, "jupyternaut3-model-picker")
    page.keyboard.press("Escape")
