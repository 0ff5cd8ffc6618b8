"""The README's quick start is the contract with users and CI: exactly two commands, the second
is what .ci/run executes, and the `fat` console script answers --help."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_quick_start_has_exactly_two_commands_install_and_repro_then_tests():
    cmds = quick_start_commands()
    assert len(cmds) == 2, cmds
    assert "pip install" in cmds[0] and "dvc repro" in cmds[0]
    assert "pytest" in cmds[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci/run").read_text().splitlines()
    test_cmd = quick_start_commands()[1]
    assert test_cmd in [line.strip() for line in ci], f".ci/run does not run {test_cmd!r}"
    install = quick_start_commands()[0].split("&&")[0].strip()
    assert any(install.replace("pip install", "").strip() in line for line in ci if "pip install" in line)


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "fat.tools.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for cmd in ("preset", "validate", "score", "synth"):
        assert cmd in out
    exe = Path(sys.executable).parent / "fat"
    if exe.exists():  # the installed entry point
        assert "dvc repro" in subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True).stdout


def test_dvc_analytics_off_in_repo_config():
    cfg = (ROOT / ".dvc/config").read_text()
    assert re.search(r"analytics\s*=\s*false", cfg)
