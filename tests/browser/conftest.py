"""Fixtures for the browser tests: a real JupyterLab with the jupyter_llm_af server extension and
this checkout's labextension build, driven by Debian's Chromium through Playwright.

What they assume:
- the labextension is built (``cd labextension && jlpm install && jlpm build:prod``, or any
  ``pip install`` of the package, which runs that build): the tests load
  ``jupyter_llm_af/labextension`` of this checkout through ``JUPYTER_PATH``, whatever copy the venv
  may hold from an earlier install;
- ``jupyter_llm_af`` is importable by the test Python (``pip install -e .``), the server extension
  is enabled through the test's own config file;
- Chromium at ``/usr/bin/chromium`` (Debian package ``chromium``; never ``playwright install``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PY, ROOT, TOKEN, Proc, auth, free_port, start_process

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
BUILD = ROOT / "jupyter_llm_af" / "labextension"
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
PANEL = "#jupyter-llm-af-panel"
PANEL_TAB = '.jp-SideBar.jp-mod-left li[data-id="jupyter-llm-af-panel"]'


def start_lab(
    llm_config: dict[str, Any],
    timeout: float = 90,
    *,
    python: str = PY,
    server_config: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> Proc:
    """``jupyter lab`` on a free loopback port with isolated config, runtime, settings and
    workspaces (``proc.extra``: ``base`` URL, ``tmp`` dir, ``start_s``).

    ``llm_config`` is the ``LLMService`` section of its config file, ``server_config`` more
    sections; ``python`` the interpreter whose Lab runs; ``env`` more environment.
    """
    if not (BUILD / "static" / "style.js").exists():
        pytest.fail(
            f"labextension not built ({BUILD} missing): cd labextension && jlpm install && jlpm build:prod"
        )
    tmp = Path(tempfile.mkdtemp(prefix="llm-af-lab-"))
    config_dir = tmp / "config"
    config_dir.mkdir()
    config = {"ServerApp": {"jpserver_extensions": {"jupyter_llm_af": True}}, "LLMService": llm_config}
    (config_dir / "jupyter_server_config.json").write_text(json.dumps({**config, **(server_config or {})}))
    settings = tmp / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    # no "get notified about Jupyter news?" toast over the screenshots
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    # this checkout's build first: Lab takes the first labextension of a name it finds
    labextensions = tmp / "path" / "labextensions"
    labextensions.mkdir(parents=True)
    (labextensions / "jupyter-llm-af").symlink_to(BUILD, target_is_directory=True)
    root = tmp / "root"
    root.mkdir()
    lab_env = {
        "JUPYTER_CONFIG_DIR": str(config_dir),
        "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(tmp / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces"),
        "JUPYTER_PATH": str(tmp / "path"),
        **(env or {}),
    }
    port = free_port()
    t0 = time.monotonic()
    proc = start_process(
        [
            python,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--allow-root",
            "--ip=127.0.0.1",
            f"--port={port}",
            f"--IdentityProvider.token={TOKEN}",
            f"--ServerApp.root_dir={root}",
            "--LabApp.expose_app_in_browser=True",
        ],
        f"http://127.0.0.1:{port}/api/status",
        headers=auth(),
        env=lab_env,
        timeout=timeout,
    )
    proc.extra.update(base=f"http://127.0.0.1:{port}/", tmp=tmp, start_s=time.monotonic() - t0)
    return proc


def stop_lab(proc: Proc) -> None:
    proc.stop()
    shutil.rmtree(proc.extra["tmp"], ignore_errors=True)


@pytest.fixture
def jp_asyncio_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """Replaces pytest_jupyter's autouse fixture, which would close the loop that Playwright's sync
    API keeps running on this thread."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def jp_server_cleanup() -> Iterator[None]:
    """Replaces pytest_jupyter's autouse cleanup of an in-process server: these tests run Lab as a
    subprocess, and the cleanup cannot run its loop next to Playwright's."""
    yield


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium for one test module. Not session-wide: Playwright's sync API keeps an event loop
    running on this thread, and pytest_jupyter's autouse loop fixture of later tests elsewhere
    would find it."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def new_page(browser: Any) -> Iterator[Callable[[Proc], Any]]:
    """``new_page(lab)``: a fresh browser context showing Lab (Launcher rendered); console errors
    are collected in ``page.console_errors``."""
    contexts = []

    def open_lab(lab: Proc) -> Any:
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=lab.extra["base"].rstrip("/"))
        contexts.append(context)
        page = context.new_page()
        page.console_errors = []
        page.on("console", lambda m: m.type == "error" and page.console_errors.append(m.text))
        page.goto(f"{lab.extra['base']}lab?reset&token={TOKEN}")
        page.wait_for_selector("#jupyterlab-splash", state="detached", timeout=60_000)
        page.wait_for_selector(".jp-Launcher", timeout=60_000)
        return page

    yield open_lab
    for context in contexts:
        context.close()


def open_panel(page: Any) -> Any:
    """Click the sidebar tab; return the panel locator once it shows a state."""
    page.click(PANEL_TAB)
    panel = page.locator(PANEL)
    panel.locator('[data-testid="llm-state"]').wait_for(timeout=30_000)
    return panel


def screenshot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def set_theme(page: Any, theme: str) -> None:
    page.evaluate("t => window.jupyterapp.commands.execute('apputils:change-theme', {theme: t})", theme)
    page.wait_for_function("t => document.body.dataset.jpThemeName === t", arg=theme, timeout=20_000)
    # Lab shows its splash while the theme's CSS loads
    page.wait_for_selector("#jupyterlab-splash", state="detached", timeout=20_000)
