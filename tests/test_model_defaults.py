"""Per-model generation defaults and caps (pipeline.apply_model_defaults), in each API's fields."""

from __future__ import annotations

import pytest

from jupyter_llm_af.config import LLMService
from jupyter_llm_af.pipeline import apply_model_defaults
from jupyter_llm_af.routes import route_for

DEFAULTS = LLMService().model_defaults


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        # a base model gets a short default and its stop sequences; a request's own value wins
        ("/api/chat", {"model": "gemma3:270m"}, {"num_predict": 200}),
        ("/api/generate", {"model": "gemma3:270m", "options": {"num_predict": 50}}, {"num_predict": 50}),
        # coding agents ask for 32000 tokens: clamped to the model's cap in every API
        ("/api/chat", {"model": "smollm2:135m", "options": {"num_predict": 5000}}, {"num_predict": 512}),
        ("/v1/messages", {"model": "smollm2:135m", "max_tokens": 32000}, {"max_tokens": 512}),
        (
            "/v1/chat/completions",
            {"model": "smollm2:135m", "max_completion_tokens": 9000},
            {"max_completion_tokens": 512},
        ),
        ("/v1/chat/completions", {"model": "smollm2:135m", "max_tokens": 10}, {"max_tokens": 10}),
        ("/v1/responses", {"model": "gemma3:270m"}, {"max_output_tokens": 200}),
        ("/v1/responses", {"model": "smollm2:135m", "max_output_tokens": 99999}, {"max_output_tokens": 512}),
    ],
)
def test_defaults_and_caps(path: str, body: dict, expected: dict) -> None:
    apply_model_defaults(route_for(path), body, DEFAULTS)
    got = body.get("options", body)
    assert {k: got.get(k) for k in expected} == expected


def test_models_without_defaults_and_embeddings_are_left_alone() -> None:
    body = {"model": "llama3.3:70b", "max_tokens": 32000}
    assert not apply_model_defaults(route_for("/v1/chat/completions"), body, DEFAULTS)
    assert body == {"model": "llama3.3:70b", "max_tokens": 32000}
    emb = {"model": "smollm2:135m", "input": "x"}
    assert not apply_model_defaults(route_for("/v1/embeddings"), emb, DEFAULTS)
    assert emb == {"model": "smollm2:135m", "input": "x"}


def test_every_embedded_model_has_a_small_cap() -> None:
    """The embedded models run on CPUs: a ramble to the 32000 tokens an agent asks for (or to a
    few thousand) would hold the model's slot for minutes, and Claude Code asks it to go on."""
    for name in LLMService().embedded_models:
        assert 0 < DEFAULTS[name]["max_tokens_cap"] <= 512, name
