"""Checks a running JupyterLab started the way a new user starts it (``.ci/newcomer.sh``).

(a) the LLM sidebar panel shows the embedded default as ready (Debian chromium via Playwright;
    screenshot saved); (c) in a kernel started by the server (REST + the kernel's websocket),
    ``import ollama, openai`` works and one chat with each, with no configuration, returns text.
(b), ``llm/api/chat`` by curl, is done in newcomer.sh itself.

Runs from its own small venv (playwright, websocket-client): nothing of the product in it.
Exits non-zero with the reason on the first failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
import uuid
from datetime import datetime, timezone
from typing import Any

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]
PANEL = "#jupyter-llm-af-panel"
PANEL_TAB = '.jp-SideBar.jp-mod-left li[data-id="jupyter-llm-af-panel"]'

KERNEL_CODE = """
import json, os
from importlib.metadata import version
import ollama, openai
prompt = [{"role": "user", "content": "What is the capital of France? One word."}]
r = ollama.chat(model=MODEL, messages=prompt, options={"num_predict": 24})
o = openai.OpenAI().chat.completions.create(model=MODEL, messages=prompt, max_tokens=24)
print("NEWCOMER-RESULT " + json.dumps({
    "ollama": r["message"]["content"], "ollama_eval_count": r["eval_count"],
    "openai": o.choices[0].message.content, "openai_model": o.model,
    "OLLAMA_HOST": os.environ.get("OLLAMA_HOST"), "OPENAI_BASE_URL": os.environ.get("OPENAI_BASE_URL"),
    "ollama_version": version("ollama"), "openai_version": version("openai"),
}))
"""


class CheckFailed(Exception):
    pass


def check_panel(base: str, token: str, model: str, screenshot: str, timeout: float) -> str:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(f"{base}lab?token={token}", timeout=120_000)
            page.wait_for_selector("#jupyterlab-splash", state="detached", timeout=120_000)
            page.wait_for_selector(".jp-Launcher", timeout=60_000)
            page.click(PANEL_TAB, timeout=30_000)
            panel = page.locator(PANEL)
            state = panel.locator('[data-testid="llm-state"]')
            try:
                expect(state).to_have_attribute("data-state", "ready", timeout=timeout * 1000)
                expect(state).to_contain_text("embedded", timeout=10_000)
                expect(panel.locator(f'[data-testid="llm-models"] li[data-model="{model}"]')).to_have_count(
                    1, timeout=30_000
                )
            finally:
                os.makedirs(os.path.dirname(screenshot), exist_ok=True)
                page.screenshot(path=screenshot)
            return state.inner_text().strip()
        finally:
            browser.close()


def _post_json(url: str, token: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def _delete(url: str, token: str) -> None:
    req = urllib.request.Request(url, headers={"Authorization": f"token {token}"}, method="DELETE")
    with urllib.request.urlopen(req, timeout=30):
        pass


def run_in_kernel(base: str, token: str, code: str, timeout: float) -> tuple[str, str]:
    """Start a kernel through the server's REST API and run ``code`` over its websocket.

    Returns (stdout, error text) of the execution."""
    import websocket

    kernel = _post_json(f"{base}api/kernels", token, {"name": "python3"})
    ws_url = base.replace("http://", "ws://", 1) + f"api/kernels/{kernel['id']}/channels?token={token}"
    session = uuid.uuid4().hex
    msg_id = uuid.uuid4().hex
    ws = websocket.create_connection(ws_url, timeout=timeout)
    stdout: list[str] = []
    errors: list[str] = []
    try:
        ws.send(
            json.dumps(
                {
                    "header": {
                        "msg_id": msg_id,
                        "session": session,
                        "username": "newcomer",
                        "msg_type": "execute_request",
                        "version": "5.3",
                        "date": datetime.now(timezone.utc).isoformat(),
                    },
                    "parent_header": {},
                    "metadata": {},
                    "content": {
                        "code": code,
                        "silent": False,
                        "store_history": False,
                        "user_expressions": {},
                        "allow_stdin": False,
                        "stop_on_error": True,
                    },
                    "channel": "shell",
                    "buffers": [],
                }
            )
        )
        deadline = time.monotonic() + timeout
        replied = idle = False
        while not (replied and idle):
            ws.settimeout(max(deadline - time.monotonic(), 0.1))
            if time.monotonic() > deadline:
                raise CheckFailed(f"kernel gave no reply within {timeout:.0f} s; output so far: {stdout}")
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["header"]["msg_type"], msg["content"]
            if kind == "stream":
                (stdout if content["name"] == "stdout" else errors).append(content["text"])
            elif kind == "error":
                errors.append(f"{content['ename']}: {content['evalue']}")
            elif kind == "execute_reply":
                replied = True
                if content.get("status") != "ok":
                    errors.append(f"{content.get('ename')}: {content.get('evalue')}")
            elif kind == "status" and content["execution_state"] == "idle":
                idle = True
    finally:
        ws.close()
        _delete(f"{base}api/kernels/{kernel['id']}", token)
    return "".join(stdout), "\n".join(errors)


def check_kernel(base: str, token: str, model: str, timeout: float) -> dict[str, Any]:
    out, err = run_in_kernel(base, token, f"MODEL = {model!r}\n" + KERNEL_CODE, timeout)
    line = next((x for x in out.splitlines() if x.startswith("NEWCOMER-RESULT ")), None)
    if line is None:
        raise CheckFailed(f"the kernel's clients did not work: {err or out or 'no output'}")
    result = json.loads(line.split(" ", 1)[1])
    if not (result["ollama"] or "").strip() or result["ollama_eval_count"] <= 0:
        raise CheckFailed(f"ollama.chat in the kernel gave no text: {result}")
    if not (result["openai"] or "").strip():
        raise CheckFailed(f"openai chat in the kernel gave no text: {result}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", required=True, help="the server's URL, with trailing slash")
    parser.add_argument("--token", required=True)
    parser.add_argument("--model", default="smollm2:135m")
    parser.add_argument("--screenshot", required=True)
    parser.add_argument("--times", help="append 'phase: N s' lines to this file")
    parser.add_argument("--ready-timeout", type=float, default=180.0)
    parser.add_argument("--kernel-timeout", type=float, default=240.0)
    args = parser.parse_args()
    times: list[str] = []
    try:
        t = time.monotonic()
        headline = check_panel(args.base, args.token, args.model, args.screenshot, args.ready_timeout)
        times.append(f"(a) panel shows ready: {time.monotonic() - t:.1f} s")
        print(f"[newcomer] (a) panel: {headline!r}; screenshot {args.screenshot}", flush=True)
        t = time.monotonic()
        result = check_kernel(args.base, args.token, args.model, args.kernel_timeout)
        times.append(f"(c) kernel started + ollama and openai chats: {time.monotonic() - t:.1f} s")
        print(
            f"[newcomer] (c) kernel: OLLAMA_HOST={result['OLLAMA_HOST']}"
            f" OPENAI_BASE_URL={result['OPENAI_BASE_URL']}"
            f" (ollama {result['ollama_version']}, openai {result['openai_version']})\n"
            f"[newcomer]     ollama.chat: {result['ollama'].strip()[:80]!r}\n"
            f"[newcomer]     openai chat ({result['openai_model']}): {result['openai'].strip()[:80]!r}",
            flush=True,
        )
    except Exception as e:  # every failure is reported the same way: one line, exit 1
        print(f"[newcomer] check failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        if args.times:
            with open(args.times, "a") as f:
                f.writelines(line + "\n" for line in times)
    return 0


if __name__ == "__main__":
    sys.exit(main())
