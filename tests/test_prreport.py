"""`fat pr-report`: on a small git + DVC repository with two commits that differ in mixup.alpha,
the report carries the params change, the metric changes and a plots diff page of both revisions."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from fat.tools import cli, prreport

STAGE = """\
import json, pathlib, yaml
alpha = yaml.safe_load(open("params.yaml"))["mixup"]["alpha"]
pathlib.Path("metrics/train").mkdir(parents=True, exist_ok=True)
json.dump({"lwlrap": round(0.8 - alpha / 10, 6), "test_lwlrap": 0.7}, open("metrics/ensemble.json", "w"))
open("metrics/train/curve.tsv", "w").write("step\\tval_lwlrap\\n" + "".join(f"{s}\\t{0.5 + s * (0.1 - alpha / 20):.4f}\\n" for s in range(1, 5)))
"""
DVC_YAML = """\
stages:
  train:
    cmd: python train.py
    deps: [train.py]
    params: [mixup]
    metrics:
      - metrics/ensemble.json: {cache: false}
    plots:
      - metrics/train/curve.tsv: {cache: false, x: step}
"""


def sh(cmd, cwd):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout}\n{proc.stderr}"
    return proc.stdout


def commit(repo, msg):
    sh(["git", "add", "-A"], repo)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", msg], repo)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("pr") / "repo"
    repo.mkdir()
    sh(["git", "init", "-q"], repo)
    sh([sys.executable, "-m", "dvc", "init", "-q"], repo)
    sh([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], repo)
    (repo / "train.py").write_text(STAGE)
    (repo / "dvc.yaml").write_text(DVC_YAML)
    for alpha, msg in ((0.0, "alpha 0"), (0.4, "alpha 0.4")):
        (repo / "params.yaml").write_text(yaml.safe_dump({"seed": 1, "mixup": {"alpha": alpha}}))
        sh([sys.executable, "-m", "dvc", "repro", "-q"], repo)
        commit(repo, msg)
    return repo


def test_report_of_two_commits_that_differ_in_mixup_alpha(repo, tmp_path, capsys):
    out = tmp_path / "pr"
    assert cli.main(["pr-report", "HEAD~1", "--repo", str(repo), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / "report.md")
    md = (out / "report.md").read_text()
    params = md.split("### Params", 1)[1].split("###", 1)[0]
    assert "mixup.alpha" in params and "| 0.0 " in params and "| 0.4 " in params
    metrics = md.split("### Metrics", 1)[1].split("###", 1)[0]
    assert "lwlrap" in metrics and "0.8" in metrics and "0.76" in metrics and "-0.04" in metrics
    assert "test_lwlrap" not in metrics  # unchanged metrics are left out
    assert "0.8000 → 0.7600 (-0.0400 ▼)" in md  # the headline
    page = (out / "plots/index.html").read_text()
    assert "HEAD~1" in page and "workspace" in page and "val_lwlrap" in page
    assert "](plots/index.html)" in md


def test_report_against_head_of_a_clean_workspace_says_nothing_changed(repo, tmp_path):
    report = prreport.build("HEAD", repo, tmp_path / "pr", plots_url="https://ci.example/run/1")
    md = report.read_text()
    assert "No metric changed." in md and "No parameter changed." in md
    assert "[https://ci.example/run/1](https://ci.example/run/1)" in md


def test_unknown_base_is_a_clear_error(repo, tmp_path, capsys):
    assert cli.main(["pr-report", "no-such-branch", "--repo", str(repo), "--out", str(tmp_path / "x")]) == 2
    assert "no-such-branch" in capsys.readouterr().err


def test_runs_as_a_module_without_the_fat_command(repo, tmp_path):
    out = sh([sys.executable, "-m", "fat.tools.prreport", "HEAD~1", "--repo", str(repo), "--out", str(tmp_path / "m")],
             Path.cwd())
    assert (tmp_path / "m/report.md").read_text().startswith("## fat: results of this change against `HEAD~1`")
    assert out.strip().endswith("report.md")


def test_example_workflow_runs_the_module_with_arguments_it_accepts():
    import argparse
    import shlex

    wf = yaml.safe_load((Path(__file__).resolve().parents[1] / ".github/workflows/pr-report.yml").read_text())
    assert "pull_request" in wf.get("on", wf.get(True))  # YAML 1.1 reads the key `on` as true
    steps = wf["jobs"]["report"]["steps"]
    args = shlex.split(next(s["run"] for s in steps if "fat.tools.prreport" in s.get("run", "")))
    ap = argparse.ArgumentParser()
    prreport._arguments(ap)
    ns = ap.parse_args(args[args.index("fat.tools.prreport") + 1:])
    assert ns.base.startswith("origin/") and ns.plots_url.startswith("${{ github.server_url }}")
    uploads = [s["with"]["path"] for s in steps if s.get("uses", "").startswith("actions/upload-artifact")]
    assert [u.rstrip("/") for u in uploads] == [str(ns.out)]
    assert any(f"{ns.out}/report.md" in s.get("run", "") and "gh pr comment" in s.get("run", "") for s in steps)
