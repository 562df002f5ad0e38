"""GPU-memory-aware model admission: sizes, fit checks, which models fit together."""

from __future__ import annotations

import pytest

from jupyter_llm_af.modelfit import LOAD_OVERHEAD, check_fits, fits_together, model_size_gb


def test_size_from_table_wins_over_reported():
    table = {"llama3.3:70b": 42.5}
    assert model_size_gb("llama3.3:70b", table, reported_bytes=10**9) == 42.5


def test_size_latest_alias():
    assert model_size_gb("llama3", {"llama3:latest": 5.0}) == 5.0
    assert model_size_gb("llama3:latest", {"llama3": 5.0}) == 5.0
    assert model_size_gb("llama3:8b", {"llama3": 5.0}) is None


def test_size_from_reported_bytes_with_overhead():
    assert model_size_gb("qwen2.5:7b", {}, reported_bytes=4_700_000_000) == pytest.approx(4.7 * LOAD_OVERHEAD)
    assert 1.0 < LOAD_OVERHEAD < 1.5


def test_size_unknown():
    assert model_size_gb("x", {}) is None
    assert model_size_gb("x", {}, reported_bytes=0) is None


def test_check_fits_message_names_both_sizes():
    msg = check_fits("llama3.3:70b", 42.5, 40.0)
    assert msg is not None
    assert "model 'llama3.3:70b' needs 42.5 GB but the GPU has 40 GB" in msg


@pytest.mark.parametrize(
    "size,gpu",
    [(39.9, 40.0), (40.0, 40.0), (None, 40.0), (100.0, 0.0)],
)
def test_check_fits_none_when_fits_or_unknown(size, gpu):
    assert check_fits("m", size, gpu) is None


def test_fits_together_greedy_packing():
    models = {"big:70b": 42.5, "mid:14b": 9.0, "small:8b": 5.0, "tiny:1b": 1.3, "huge:13b": 26.0, "unk": None}
    r = fits_together(models, 40.0)
    assert r["gpu_memory_gb"] == 40.0
    by_name = {m["name"]: m for m in r["models"]}
    assert list(by_name) == list(models)  # input order kept
    assert by_name["big:70b"]["fits"] is False
    assert by_name["unk"]["fits"] is None
    assert all(by_name[n]["fits"] for n in ("mid:14b", "small:8b", "tiny:1b", "huge:13b"))
    assert r["largest_set"] == ["tiny:1b", "small:8b", "mid:14b"]  # 15.3 GB; adding 26 exceeds 40
    assert r["largest_set_gb"] == pytest.approx(15.3)
    assert sum(models[n] for n in r["largest_set"]) <= 40.0
    assert "3 of 4" in r["note"] and "big:70b" in r["note"] and "unk" in r["note"]


def test_fits_together_all_fit():
    r = fits_together({"a": 1.0, "b": 2.0}, 8.0)
    assert r["largest_set"] == ["a", "b"] and r["note"].startswith("All 2 models")


def test_fits_together_without_gpu_size():
    r = fits_together({"a": 1.0}, 0.0)
    assert r["models"] == [{"name": "a", "size_gb": 1.0, "fits": None}]
    assert r["largest_set"] == [] and "not configured" in r["note"]
