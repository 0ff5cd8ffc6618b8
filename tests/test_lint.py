"""The tree is lint-clean: `ruff check` (pycodestyle, pyflakes, import order, bugbear, pyupgrade;
configured in pyproject.toml) finds nothing, so CI, which runs the test suite, enforces it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def ruff() -> list[str]:
    exe = Path(sys.executable).parent / "ruff"
    if exe.exists():
        return [str(exe)]
    if shutil.which("ruff"):
        return ["ruff"]
    msg = "ruff missing: pip install -e '.[test]' (it is pinned in the test extra)"
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(msg)
    pytest.skip(msg)


def test_ruff_finds_nothing():
    proc = subprocess.run([*ruff(), "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_is_configured_and_pinned_for_tests():
    text = (ROOT / "pyproject.toml").read_text()
    assert "[tool.ruff.lint]" in text and '"I"' in text  # import order is part of the check
    assert "ruff==" in text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
