"""`fat check-repro` on a real git + DVC repository with one deterministic stage and one that is
not (it writes fresh random bytes into one file of its directory output): the first is reported
identical, the second as differing at exactly that file, and afterwards the workspace is what it
was (same bytes, `dvc status` clean)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fat.tools import checkrepro, cli

DVC_YAML = """\
stages:
  steady:
    cmd: python -c "import pathlib; pathlib.Path('steady.txt').write_text('same every time')"
    outs:
      - steady.txt
  noisy:
    cmd: >-
      python -c "import os, pathlib; d = pathlib.Path('noisy'); d.mkdir();
      (d / 'a_fixed.txt').write_text('fixed'); (d / 'b_random.bin').write_bytes(os.urandom(16));
      (d / 'c_fixed.txt').write_text('fixed too')"
    deps:
      - steady.txt
    outs:
      - noisy
"""


def run(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{args}: {proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    run(["git", "init", "-q"], repo)
    run([sys.executable, "-m", "dvc", "init", "-q"], repo)
    (repo / "dvc.yaml").write_text(DVC_YAML)
    run([sys.executable, "-m", "dvc", "repro", "-q"], repo)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return repo


def snapshot(repo: Path) -> dict:
    """Every file of the workspace outside .git and .dvc, with its bytes."""
    files = (p for p in sorted(repo.rglob("*")) if p.is_file())
    rels = ((p.relative_to(repo).as_posix(), p) for p in files)
    return {rel: p.read_bytes() for rel, p in rels if not rel.startswith((".git/", ".dvc/"))}


def test_reports_the_deterministic_stage_identical_and_the_other_at_its_first_differing_file(repo):
    before = snapshot(repo)
    results = checkrepro.check(repo, [], ["native"], [None], log=lambda _: None)
    by_stage = {r.stage: r for r in results}
    assert list(by_stage) == ["steady", "noisy"]  # dvc.lock's order
    assert by_stage["steady"].same
    noisy = by_stage["noisy"]
    assert not noisy.same
    (out,) = noisy.outputs
    assert out.path == "noisy" and out.first_difference.startswith("b_random.bin: md5 ")
    assert "DIFFERS in 1 of 1 outputs; first: noisy: b_random.bin" in noisy.line()
    # the workspace is left as it was: same bytes everywhere, and DVC sees it up to date
    assert snapshot(repo) == before
    assert not (repo / checkrepro.BACKUP).exists() or not any((repo / checkrepro.BACKUP).iterdir())
    status = run([sys.executable, "-m", "dvc", "status", "--json"], repo)
    assert json.loads(status) == {}


def test_command_exit_codes_and_json(repo, tmp_path, capsys):
    report = tmp_path / "report.json"
    assert cli.main(["check-repro", "--repo", str(repo), "steady", "--json", str(report)]) == 0
    assert "1 of 1 stage runs identical to dvc.lock" in capsys.readouterr().out
    assert json.loads(report.read_text())[0]["same"] is True
    assert cli.main(["check-repro", "--repo", str(repo), "noisy", "--cores", "0"]) == 1
    printed = capsys.readouterr().out
    assert "noisy [native, cores 0]: DIFFERS" in printed and "first difference" in printed


def test_refuses_a_stage_that_is_not_up_to_date(repo, capsys):
    (repo / "steady.txt").write_text("edited by hand")
    assert cli.main(["check-repro", "--repo", str(repo), "noisy"]) == 2
    err = capsys.readouterr().err
    assert "not up to date with dvc.lock" in err and "steady" in err
    assert (repo / "steady.txt").read_text() == "edited by hand"  # nothing was touched


def test_unknown_stage_is_named(repo, capsys):
    assert cli.main(["check-repro", "--repo", str(repo), "nosuch"]) == 2
    assert "dvc.lock has no stage 'nosuch' (known: steady, noisy)" in capsys.readouterr().err


def test_a_failing_stage_puts_the_outputs_back(repo):
    lock = checkrepro.read_lock(repo)
    entry = {**lock["noisy"], "cmd": "python -c \"import sys; sys.exit('boom')\""}
    before = snapshot(repo)
    with pytest.raises(RuntimeError, match=r"noisy: .* failed \(1\):\nboom"):
        checkrepro.run_stage(repo, "noisy", entry, log=lambda _: None)
    assert snapshot(repo) == before
