"""Runs the sidebar's formatting unit tests (``labextension/test/*.test.mjs``, Node's built-in
test runner on the compiled ``labextension/lib/format.js``) as part of ``pytest``.

``lib/`` is produced by the labextension build (``jlpm build:prod``, run by ``pip install``)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

LABEXT = Path(__file__).resolve().parent.parent / "labextension"


def test_format_unit_tests_pass_in_node() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed")
    if not (LABEXT / "lib" / "format.js").exists():
        pytest.fail("labextension/lib/format.js missing: cd labextension && jlpm install && jlpm build:prod")
    result = subprocess.run(
        [node, "--test", "--test-reporter=tap", "test/"],
        cwd=LABEXT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout
