"""Presetting Jupyternaut (jupyter-ai 3.x): the plan (pure), and the real ``ConfigManager`` of
jupyter-ai-jupyternaut in ``.venv-jai3`` (``scripts/install.sh --test`` builds it; the main venv keeps
jupyter-ai 2.x for ``%%ai``). The chat itself is tested in chromium: tests/browser/test_jupyter_ai3.py."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest

from jupyter_llm_af.jupyter_ai3 import (
    CUSTOM_ID_PREFIX,
    MarkerDoc,
    custom_model,
    litellm_provider,
    plan_preset,
    read_marker,
    write_marker,
)
from tests.conftest import ROOT

JAI3_PYTHON = ROOT / ".venv-jai3" / "bin" / "python"
URL = "http://127.0.0.1:8888/llm/"
OURS = CUSTOM_ID_PREFIX + "openai/smollm2:135m"


def jai3_python() -> str:
    if not JAI3_PYTHON.exists():
        pytest.fail(f"{JAI3_PYTHON} missing: run `bash scripts/install.sh --test` (builds .venv-jai3)")
    return str(JAI3_PYTHON)


def user_model(name: str = "mine") -> dict:
    return {
        "id": f"custom-1234/{name}",
        "name": name,
        "description": None,
        "model_id": f"openai/{name}",
        "params": {"api_base": "http://elsewhere/v1"},
    }


def test_provider_is_openai_when_the_environment_routes_it_here() -> None:
    # LiteLLM's openai/ would call /api/show synchronously from the server's own event loop
    ours = {"OLLAMA_API_BASE": "http://127.0.0.1:8888/llm", "OPENAI_BASE_URL": URL + "v1"}
    assert litellm_provider(ours, URL) == "openai"
    assert litellm_provider({**ours, "OLLAMA_API_BASE": "http://gpu1:11434"}, URL) == "openai"
    assert litellm_provider({**ours, "OPENAI_BASE_URL": "https://api.openai.com/v1"}, URL) is None
    assert litellm_provider({}, URL) is None


def test_first_start_presets_default_and_offers_the_services_models() -> None:
    plan = plan_preset(None, [], {}, "openai", ["smollm2:135m", "gemma3:270m"], "smollm2:135m")
    assert plan.model_provider_id == "openai/smollm2:135m"
    assert plan.custom_models == [
        custom_model("openai", "smollm2:135m"),
        custom_model("openai", "gemma3:270m"),
    ]
    assert plan.custom_models[0] == {
        "id": OURS,
        "name": "smollm2:135m",
        "model_id": "openai/smollm2:135m",
        "params": {},
        "description": plan.custom_models[0]["description"],
    }
    assert plan.marker == {
        "model_provider_id": "openai/smollm2:135m",
        "custom_models": sorted([OURS, CUSTOM_ID_PREFIX + "openai/gemma3:270m"]),
    }


def test_a_default_set_by_someone_else_stays() -> None:
    # the user's (an older settings page) or an admin's initial_language_model
    plan = plan_preset("openai/gpt-4o", [], {}, "openai", ["smollm2:135m"], "smollm2:135m")
    assert plan.model_provider_id is None and "model_provider_id" not in plan.marker
    # the admin's trait, even when it names what was preset before
    plan = plan_preset(
        "openai/smollm2:135m",
        [],
        {"model_provider_id": "openai/smollm2:135m"},
        "openai",
        ["smollm2:135m"],
        "llama3:8b",
        admin_model=True,
    )
    assert plan.model_provider_id is None


def test_our_default_follows_the_services_default() -> None:
    marker = MarkerDoc(model_provider_id="openai/smollm2:135m")
    plan = plan_preset("openai/smollm2:135m", [], marker, "openai", ["llama3:8b"], "llama3:8b")
    assert plan.model_provider_id == "openai/llama3:8b"
    # default not known at this start (a Slurm backend without default_model): ours is kept
    plan = plan_preset("openai/smollm2:135m", [], marker, "openai", [], None)
    assert plan.model_provider_id is None and plan.custom_models is None
    assert plan.marker["model_provider_id"] == "openai/smollm2:135m"
    # unchanged: nothing to write
    plan = plan_preset(
        "openai/smollm2:135m",
        [custom_model("openai", "smollm2:135m")],
        MarkerDoc(model_provider_id="openai/smollm2:135m", custom_models=[OURS]),
        "openai",
        ["smollm2:135m"],
        "smollm2:135m",
    )
    assert not plan.changes


def test_the_users_custom_models_and_deletions_are_kept() -> None:
    edited = {
        **custom_model("openai", "smollm2:135m"),
        "name": "tiny one",
        "params": {"temperature": 0.1},
    }
    plan = plan_preset(
        None,
        [user_model(), edited],
        MarkerDoc(custom_models=[OURS]),
        "openai",
        ["smollm2:135m", "gemma3:270m"],
        "smollm2:135m",
    )
    assert plan.custom_models is not None
    assert [m["id"] for m in plan.custom_models] == [
        "custom-1234/mine",
        OURS,
        CUSTOM_ID_PREFIX + "openai/gemma3:270m",
    ]
    assert plan.custom_models[0] == user_model() and plan.custom_models[1] == edited
    # the user deleted ours: not added again
    plan = plan_preset(
        None, [user_model()], MarkerDoc(custom_models=[OURS]), "openai", ["smollm2:135m"], "smollm2:135m"
    )
    assert plan.custom_models is None
    assert plan.marker["custom_models"] == [OURS]  # still remembered as deleted


def test_models_the_service_lost_leave_the_picker_and_may_come_back() -> None:
    gone = custom_model("openai", "old:1b")
    plan = plan_preset(
        None,
        [user_model(), gone],
        MarkerDoc(custom_models=[gone["id"]]),
        "openai",
        ["smollm2:135m"],
        "smollm2:135m",
    )
    assert plan.custom_models is not None
    assert [m["id"] for m in plan.custom_models] == ["custom-1234/mine", OURS]
    assert plan.marker["custom_models"] == [OURS]
    # another provider reaches the service now (an older preset used ollama_chat/): the entries follow
    plan = plan_preset(
        None,
        [custom_model("ollama_chat", "smollm2:135m")],
        MarkerDoc(custom_models=[CUSTOM_ID_PREFIX + "ollama_chat/smollm2:135m"]),
        "openai",
        ["smollm2:135m"],
        "smollm2:135m",
    )
    assert plan.custom_models == [custom_model("openai", "smollm2:135m")]


def test_marker_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "jupyter_ai" / "marker.json"
    assert read_marker(path) == {}
    write_marker(path, MarkerDoc(model_provider_id="openai/x", custom_models=[OURS]))
    assert read_marker(path) == {"model_provider_id": "openai/x", "custom_models": [OURS]}
    path.write_text("{not json")
    assert read_marker(path) == {}


PRESET_SCRIPT = textwrap.dedent(
    """
    import json, logging, sys
    from jupyter_ai_jupyternaut.config import ConfigManager
    from jupyter_llm_af.jupyter_ai3 import apply_preset

    path, models, default = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    defaults = json.loads(sys.argv[4])
    manager = ConfigManager(log=logging.getLogger(), defaults=defaults, config_path=path)
    apply_preset(manager, "openai", models, default, admin_model="model_provider_id" in defaults)
    # what the persona resolves "Default" to, and what its model picker lists first
    again = ConfigManager(log=logging.getLogger(), defaults={}, config_path=path)
    print(json.dumps({"chat_model": again.chat_model, "chat_model_args": again.chat_model_args,
                      "custom": [[m.id, m.name, m.model_id, m.params] for m in again.custom_models]}))
    """
)


def run_preset(path: Path, models: list[str], default: str, defaults: dict | None = None) -> dict:
    out = subprocess.run(
        [
            jai3_python(),
            "-c",
            PRESET_SCRIPT,
            str(path),
            json.dumps(models),
            default,
            json.dumps(defaults or {}),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HOME": str(path.parent)},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_real_jupyternaut_config_manager(tmp_path: Path) -> None:
    config = tmp_path / "jupyter_ai" / "config.json"
    got = run_preset(config, ["smollm2:135m", "gemma3:270m"], "smollm2:135m")
    assert got["chat_model"] == "openai/smollm2:135m"
    assert got["chat_model_args"] == {}  # endpoint and token come from the environment, not the file
    assert [c[:3] for c in got["custom"]] == [
        [OURS, "smollm2:135m", "openai/smollm2:135m"],
        [CUSTOM_ID_PREFIX + "openai/gemma3:270m", "gemma3:270m", "openai/gemma3:270m"],
    ]
    assert "token" not in config.read_text().lower()

    # the user adds a model of their own and deletes gemma from the picker; the site's default changes
    doc = json.loads(config.read_text())
    doc["custom_models"] = [user_model(), doc["custom_models"][0]]
    config.write_text(json.dumps(doc))
    got = run_preset(config, ["llama3:8b", "smollm2:135m", "gemma3:270m"], "llama3:8b")
    assert got["chat_model"] == "openai/llama3:8b"
    assert [c[0] for c in got["custom"]] == [
        "custom-1234/mine",
        OURS,
        CUSTOM_ID_PREFIX + "openai/llama3:8b",
    ]
    assert got["custom"][0][3] == {"api_base": "http://elsewhere/v1"}

    # an admin's initial_language_model wins (Jupyternaut writes it into the file; we leave it)
    got = run_preset(config, ["llama3:8b"], "llama3:8b", {"model_provider_id": "openai/gpt-4o"})
    assert got["chat_model"] == "openai/gpt-4o"
