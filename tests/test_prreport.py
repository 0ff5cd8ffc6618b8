"""`fat pr-report`: on a small git + DVC repository with two commits that differ in mixup.alpha,
the report carries the params change, the metric changes and a plots diff page of both revisions."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fat.tools import cli, prreport

STAGE = """\
import json, pathlib, yaml
alpha = yaml.safe_load(open("params.yaml"))["mixup"]["alpha"]
pathlib.Path("metrics/train").mkdir(parents=True, exist_ok=True)
json.dump({"ensemble": {"oof_lwlrap": round(0.8 - alpha / 10, 6), "test_lwlrap": 0.7}},
          open("metrics/summary.json", "w"))
open("metrics/train/curve.tsv", "w").write(
    "step\\tval_lwlrap\\n" + "".join(f"{s}\\t{0.5 + s * (0.1 - alpha / 20):.4f}\\n" for s in range(1, 5)))
"""
DVC_YAML = """\
stages:
  train:
    cmd: python train.py
    deps: [train.py]
    params: [mixup]
    metrics:
      - metrics/summary.json: {cache: false}
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
    assert "ensemble.oof_lwlrap" in metrics and "0.8" in metrics and "0.76" in metrics and "-0.04" in metrics
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
    pr_number = "${{ github.event.pull_request.number }}"
    assert pr_number in args
    ns = ap.parse_args([a.replace(pr_number, "7") for a in args[args.index("fat.tools.prreport") + 1:]])
    assert ns.base.startswith("origin/") and ns.plots_url.startswith("${{ github.server_url }}")
    uploads = [s["with"]["path"] for s in steps if s.get("uses", "").startswith("actions/upload-artifact")]
    assert [u.rstrip("/") for u in uploads] == [str(ns.out)]
    assert ns.post == 7  # the pull request's number: the module posts the report itself
    step = next(s for s in steps if "fat.tools.prreport" in s.get("run", ""))
    assert step["env"]["GITHUB_TOKEN"] == "${{ secrets.GITHUB_TOKEN }}"
    assert "--post" in args and args[args.index("--post") + 1] == "${{ github.event.pull_request.number }}"
    assert not any("gh pr comment" in s.get("run", "") for s in steps)  # --edit-last could edit another comment


# ------------------------------------------------------------------ posting, against a fake GitHub API
class FakeGitHub:
    """The issue-comments API of one repository on 127.0.0.1: pages of 2 comments (Link headers),
    PATCH and POST recorded; requests without the token are refused with 401."""

    def __init__(self, comments, token="t0ken", page_size=2):
        import http.server
        import threading

        self.comments, self.token, self.page_size, self.calls = [dict(c) for c in comments], token, page_size, []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _send(self, code, obj, headers=()):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _handle(self, method):
                from urllib.parse import parse_qs, urlparse

                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                payload = json.loads(self.rfile.read(length)) if length else None
                fake.calls.append((method, url.path, payload))
                if self.headers.get("Authorization") != f"Bearer {fake.token}":
                    return self._send(401, {"message": "Bad credentials"})
                if method == "GET" and url.path == "/repos/o/r/issues/5/comments":
                    page = int(parse_qs(url.query).get("page", ["1"])[0])
                    part = fake.comments[(page - 1) * fake.page_size : page * fake.page_size]
                    more = page * fake.page_size < len(fake.comments)
                    nxt = f'<http://127.0.0.1:{fake.port}{url.path}?per_page=100&page={page + 1}>; rel="next"'
                    link = [("Link", nxt)] if more else []
                    return self._send(200, part, link)
                if method == "PATCH" and url.path.startswith("/repos/o/r/issues/comments/"):
                    cid = int(url.path.rsplit("/", 1)[1])
                    c = next(c for c in fake.comments if c["id"] == cid)
                    c["body"] = payload["body"]
                    return self._send(200, c)
                if method == "POST" and url.path == "/repos/o/r/issues/5/comments":
                    c = {"id": 100 + len(fake.comments), "body": payload["body"],
                         "user": {"login": "github-actions[bot]"}}
                    fake.comments.append(c)
                    return self._send(201, c)
                return self._send(404, {"message": "Not Found"})

            def do_GET(self):
                self._handle("GET")

            def do_PATCH(self):
                self._handle("PATCH")

            def do_POST(self):
                self._handle("POST")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def github():
    servers = []

    def make(comments, **kw):
        servers.append(FakeGitHub(comments, **kw))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


BOT = {"login": "github-actions[bot]"}


def post(gh, argv_extra, repo, tmp_path, monkeypatch, token="t0ken"):
    monkeypatch.setenv("GITHUB_TOKEN", token)
    monkeypatch.setenv("GITHUB_REPOSITORY", "o/r")
    monkeypatch.setenv("GITHUB_API_URL", gh.url)
    return cli.main(["pr-report", "HEAD~1", "--repo", str(repo), "--out", str(tmp_path / "pr"), *argv_extra])


def test_post_edits_only_the_comment_with_the_marker_on_a_later_page(repo, tmp_path, monkeypatch, github):
    from fat.tools import ghcomment

    others = [{"id": 1, "body": "looks good", "user": {"login": "alice"}},
              {"id": 2, "body": "another workflow's report", "user": BOT},
              {"id": 3, "body": f"{ghcomment.MARKER}\nold report", "user": BOT},
              {"id": 4, "body": "coverage: 91%", "user": BOT}]  # the bot's LAST comment is not the report's
    gh = github(others)
    before = {c["id"]: c["body"] for c in gh.comments}
    assert post(gh, ["--post", "5"], repo, tmp_path, monkeypatch) == 0
    writes = [(m, p) for m, p, _ in gh.calls if m != "GET"]
    assert writes == [("PATCH", "/repos/o/r/issues/comments/3")]
    after = {c["id"]: c["body"] for c in gh.comments}
    assert {k: v for k, v in after.items() if k != 3} == {k: v for k, v in before.items() if k != 3}
    assert after[3].startswith(ghcomment.MARKER) and "## fat: results of this change against `HEAD~1`" in after[3]
    assert [p for m, p, _ in gh.calls if m == "GET"] == ["/repos/o/r/issues/5/comments"] * 2  # both pages read


def test_post_creates_the_comment_when_none_carries_the_marker_then_edits_it(repo, tmp_path, monkeypatch, github):
    from fat.tools import ghcomment

    gh = github([{"id": 1, "body": "a report without the marker", "user": BOT}])
    assert post(gh, ["--post", "5"], repo, tmp_path, monkeypatch) == 0
    assert [m for m, _, _ in gh.calls if m != "GET"] == ["POST"]
    assert gh.comments[0]["body"] == "a report without the marker"
    created = gh.comments[1]
    assert created["body"].startswith(ghcomment.MARKER)
    gh.calls.clear()
    assert post(gh, ["--post", "5"], repo, tmp_path, monkeypatch) == 0  # the next push: edited, not duplicated
    assert [(m, p) for m, p, _ in gh.calls if m != "GET"] == [("PATCH", f"/repos/o/r/issues/comments/{created['id']}")]
    assert len(gh.comments) == 2


def test_post_with_a_bad_token_is_a_clear_error_and_writes_nothing(repo, tmp_path, monkeypatch, github, capsys):
    gh = github([{"id": 1, "body": "hello", "user": BOT}])
    assert post(gh, ["--post", "5"], repo, tmp_path, monkeypatch, token="wrong") == 2
    err = capsys.readouterr().err
    assert "HTTP 401" in err and "Bad credentials" in err and "/repos/o/r/issues/5/comments" in err
    assert all(m == "GET" for m, _, _ in gh.calls) and gh.comments == [{"id": 1, "body": "hello", "user": BOT}]


def test_post_without_a_token_fails_before_building_the_report(repo, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    monkeypatch.setenv("GITHUB_REPOSITORY", "o/r")
    assert cli.main(["pr-report", "HEAD~1", "--repo", str(repo), "--out", str(tmp_path / "pr"), "--post", "5"]) == 2
    assert "GITHUB_TOKEN is not set" in capsys.readouterr().err
    assert not (tmp_path / "pr").exists()
