"""The LLM sidebar in a real JupyterLab, against the real server extension with
``backend=upstream`` in front of the Ollama test double (``tests/resources/ollama_double.py``)."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator

import httpx
import pytest

from tests.browser.conftest import PANEL, open_panel, screenshot, set_theme, start_lab, stop_lab
from tests.conftest import Proc, auth, start_double

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect

pytestmark = pytest.mark.browser

BASE_NOTE = "Base model (not instruction-tuned): it continues text."
TOKEN_DELAY = 0.15  # seconds per generated token: 60 tokens keep a request busy for 9 s


@pytest.fixture(scope="module")
def slow_double() -> Iterator[Proc]:
    proc = start_double(delay=TOKEN_DELAY)  # models tiny:1b (1 GB) and small:3b (2 GB)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def lab(slow_double: Proc) -> Iterator[Proc]:
    # one request at a time, so that a second one queues; a 2 GB GPU fits tiny:1b (1.1 GB loaded) only
    proc = start_lab(
        {
            "backend": "upstream",
            "upstream_url": slow_double.url,
            "max_concurrent": 1,
            "gpu_memory_gb": 2,
            "model_notes": {"small:3b": BASE_NOTE},
        }
    )
    yield proc
    stop_lab(proc)


def our_errors(page) -> list[str]:
    return [e for e in page.console_errors if "llm" in e.lower()]


def test_panel_opens_from_sidebar_with_state_and_models(new_page, lab: Proc) -> None:
    page = new_page(lab)
    panel = open_panel(page)
    expect(panel).to_be_visible()
    expect(panel.get_by_test_id("llm-state")).to_have_text("Ready (site backend)")
    expect(panel.get_by_test_id("llm-state")).to_have_attribute("data-state", "ready")
    expect(panel.get_by_test_id("llm-state")).to_have_attribute("data-serving", "true")
    expect(panel.get_by_test_id("llm-status")).to_contain_text("Remote backend · Ollama API")

    models = panel.locator('[data-testid="llm-models"] li')
    expect(models).to_have_count(2)
    tiny = panel.locator('[data-testid="llm-models"] li[data-model="tiny:1b"]')
    expect(tiny).to_contain_text("1.0 GB · tiny · 1B · Q4_K_M")
    expect(tiny).to_contain_text("fits the GPU (1.1 GB of 2 GB)")
    small = panel.locator('[data-testid="llm-models"] li[data-model="small:3b"]')
    expect(small).to_contain_text("too large for the GPU (2.2 GB > 2 GB)")
    # the site's note on a model shows where users pick it; models without one show none
    expect(small.get_by_test_id("llm-model-note")).to_have_text(BASE_NOTE)
    expect(tiny.get_by_test_id("llm-model-note")).to_have_count(0)
    # the service's default model (the magics' and agents' default) is marked
    default = httpx.get(f"{lab.extra['base']}llm/backend/state", headers=auth()).json()["default_model"]
    expect(panel.locator('[data-testid="llm-default"]')).to_have_count(1)
    expect(panel.locator(f'li[data-model="{default}"] [data-testid="llm-default"]')).to_have_text("default")
    expect(panel.get_by_test_id("llm-gpu-note")).to_contain_text("Too large for the GPU: small:3b")

    expect(panel.get_by_test_id("llm-queue-totals")).to_have_text("0 running of 1 slots, 0 waiting")
    expect(panel.get_by_test_id("llm-running")).to_contain_text("No model loaded.")
    # a site URL cannot be started or stopped: no admin buttons
    expect(panel.get_by_test_id("llm-admin")).to_have_count(0)
    expect(panel.get_by_test_id("llm-error")).to_have_count(0)
    screenshot(page, "panel-upstream-light")
    assert our_errors(page) == []


def test_command_palette_shows_panel(new_page, lab: Proc) -> None:
    page = new_page(lab)
    assert (
        page.evaluate("window.jupyterapp.commands.label('jupyter-llm-af:show-panel')")
        == "Show LLM service panel"
    )
    expect(page.locator(PANEL)).to_be_hidden()
    page.keyboard.press("Control+Shift+C")
    page.locator(".lm-CommandPalette-input").fill("Show LLM service")
    page.locator(".lm-CommandPalette-item", has_text="Show LLM service panel").click()
    expect(page.locator(PANEL).get_by_test_id("llm-state")).to_be_visible()


def test_copy_menu_copies_snippets(new_page, lab: Proc) -> None:
    page = new_page(lab)
    panel = open_panel(page)
    row = panel.locator('[data-testid="llm-models"] li[data-model="tiny:1b"]')
    expected = {
        "Copy %llm magic": "%llm -m tiny:1b Why is the sky blue?",
        "Copy OpenAI client (Python)": 'client.chat.completions.create(model="tiny:1b"',
        "Copy Ollama client (Python)": 'client.chat(model="tiny:1b"',
    }
    for label, fragment in expected.items():
        row.get_by_test_id("llm-copy").click()
        menu = page.locator(".jp-LLMPanel-snippetMenu")
        expect(menu.locator(".lm-Menu-item")).to_have_count(3)
        menu.locator(".lm-Menu-item", has_text=label).click()
        expect(menu).to_have_count(0)
        assert fragment in page.evaluate("navigator.clipboard.readText()")
    expect(
        page.locator(".Toastify").get_by_text("Copied the Ollama client (Python) snippet for tiny:1b")
    ).to_be_visible()


def test_queued_requests_show_positions_and_the_loaded_model(new_page, lab: Proc) -> None:
    page = new_page(lab)
    panel = open_panel(page)
    # Two requests from this browser session (the panel's user): one runs, one waits.
    page.evaluate(
        """() => {
          const xsrf = decodeURIComponent((document.cookie.match(/_xsrf=([^;]+)/) || [])[1] || '');
          const body = JSON.stringify({model: 'tiny:1b', stream: false, options: {num_predict: 40},
                                      messages: [{role: 'user', content: 'hello'}]});
          const send = () => fetch('/llm/api/chat', {method: 'POST', body,
                                   headers: {'Content-Type': 'application/json', 'X-XSRFToken': xsrf}})
                             .then(r => r.status);
          window.__llmRequests = [send(), send()];
        }"""
    )
    mine = panel.get_by_test_id("llm-queue-mine")
    expect(mine.locator('li[data-state="waiting"]')).to_contain_text(
        "tiny:1b: waiting, position 1 (", timeout=10_000
    )
    expect(mine.locator('li[data-state="running"]')).to_contain_text("tiny:1b: running")
    expect(panel.get_by_test_id("llm-queue-totals")).to_have_text("1 running of 1 slots, 1 waiting (1 user)")
    running = panel.locator('[data-testid="llm-running"] li[data-model="tiny:1b"]')
    expect(running).to_contain_text(re.compile(r"1\.0 GB in GPU memory, context 4096, expires in [45] min"))
    expect(
        panel.locator('[data-testid="llm-models"] li[data-model="tiny:1b"] [data-testid="llm-loaded"]')
    ).to_have_text("loaded")
    screenshot(page, "panel-queue-light")

    # A request from a kernel's zero-config client (the server's token, no cookie) is the same
    # owner in a single-user server: it queues behind the browser's own, as one of "mine".
    other = {}
    thread = threading.Thread(
        target=lambda: other.update(
            status=httpx.post(
                f"{lab.extra['base']}llm/api/chat",
                headers=auth(),
                json={
                    "model": "tiny:1b",
                    "stream": False,
                    "options": {"num_predict": 1},
                    "messages": [{"role": "user", "content": "hi"}],
                },
                timeout=60,
            ).status_code
        )
    )
    thread.start()
    others = panel.get_by_test_id("llm-queue-others")
    # (the browser's first request may have finished by now: the kernel's is at position 1 or 2)
    expect(mine.locator('li[data-state="waiting"]').last).to_contain_text(
        re.compile(r"tiny:1b: waiting, position [12]")
    )
    expect(others).to_have_count(0)

    assert page.evaluate("Promise.all(window.__llmRequests)") == [200, 200]
    thread.join(30)
    assert other == {"status": 200}
    expect(panel.get_by_test_id("llm-queue")).to_contain_text("None of mine in flight.", timeout=10_000)
    expect(others).to_have_count(0)


def test_usage_shows_my_requests_tokens_and_the_queue_history(new_page, lab: Proc) -> None:
    # One chat request from a kernel's client: the same user as the browser's in a single-user server.
    reply = httpx.post(
        f"{lab.extra['base']}llm/api/chat",
        headers=auth(),
        json={
            "model": "tiny:1b",
            "stream": False,
            "options": {"num_predict": 3},
            "messages": [{"role": "user", "content": "hi"}],
        },
        timeout=60,
    )
    assert reply.status_code == 200
    doc = httpx.get(f"{lab.extra['base']}llm/usage?days=7", headers=auth()).json()
    today = next(day for day in doc["usage"]["days"] if day["date"] == doc["today"])
    assert today["requests"] >= 1 and today["completion_tokens"] >= 3
    assert today["prompt_tokens"] < 1000 and today["completion_tokens"] < 1000  # written out in full

    page = new_page(lab)
    usage = open_panel(page).get_by_test_id("llm-usage")
    requests = f"{today['requests']} {'request' if today['requests'] == 1 else 'requests'}"
    expect(usage.get_by_test_id("llm-usage-today")).to_have_text(
        f"Today: {requests}, {today['prompt_tokens'] + today['completion_tokens']} tokens "
        f"({today['prompt_tokens']} prompt + {today['completion_tokens']} completion)"
    )
    expect(usage.locator('[data-testid="llm-usage-chart"] g[data-date]')).to_have_count(7)
    expect(usage.locator(f'[data-testid="llm-usage-chart"] g[data-date="{doc["today"]}"]')).to_have_class(
        "jp-mod-today"
    )
    # the request ran (one slot: max_concurrent 1): the last hour's line shows it
    expect(usage.get_by_test_id("llm-queue-history-text")).to_contain_text("Peak 1 running")
    usage.scroll_into_view_if_needed()
    screenshot(page, "panel-usage-light")
    assert our_errors(page) == []


def test_errors_are_shown(new_page, lab: Proc) -> None:
    page = new_page(lab)
    panel = open_panel(page)
    state = panel.get_by_test_id("llm-state")
    expect(state).to_have_text("Ready (site backend)")

    # Lab appends a cache-busting query to GET requests
    route = re.compile(r"/llm/backend/state(\?|$)")

    def answer(status: int, body: dict) -> None:
        page.unroute(route)
        page.route(
            route,
            lambda route: route.fulfill(
                status=status, content_type="application/json", body=json.dumps(body)
            ),
        )
        panel.get_by_test_id("llm-refresh").click()

    answer(503, {"error": {"message": "Slurm unavailable", "type": "server_error"}})
    expect(panel.get_by_test_id("llm-error")).to_have_text("Slurm unavailable")
    # the last known state stays on screen under the error
    expect(state).to_have_text("Ready (site backend)")
    answer(502, {"error": "backend down"})
    expect(panel.get_by_test_id("llm-error")).to_have_text("backend down")
    answer(403, {"message": "Forbidden"})
    expect(panel.get_by_test_id("llm-error")).to_have_text("Not authorised")
    screenshot(page, "panel-error-light")

    page.unroute(route)
    panel.get_by_test_id("llm-refresh").click()
    expect(panel.get_by_test_id("llm-error")).to_have_count(0)


def test_dark_theme(new_page, lab: Proc) -> None:
    page = new_page(lab)
    panel = open_panel(page)
    expect(panel.locator('[data-testid="llm-models"] li')).to_have_count(2)
    background = "el => getComputedStyle(el).backgroundColor"
    light = panel.evaluate(background)
    set_theme(page, "JupyterLab Dark")
    try:
        expect(panel.get_by_test_id("llm-state")).to_have_text("Ready (site backend)")
        dark = panel.evaluate(background)
        assert dark != light
        screenshot(page, "panel-upstream-dark")
    finally:
        set_theme(page, "JupyterLab Light")
