"""Posting `fat pr-report` on a GitHub pull request: one comment of its own, kept up to date.

The report's comment carries a hidden marker (an HTML comment, invisible on GitHub). Posting lists
the pull request's comments (every page), edits the one that carries the marker, or creates it
when there is none; no other comment is read for anything but the marker, and none is changed.
Standard library only (urllib), like the report module, so CI needs nothing but DVC.

Settings come from the environment GitHub Actions provides: GITHUB_TOKEN (the job's token, with
`pull-requests: write`), GITHUB_REPOSITORY (owner/name) and GITHUB_API_URL (default
https://api.github.com; GitHub Enterprise sets its own).
"""
from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request

MARKER = "<!-- fat pr-report: this comment is updated on every push -->"
DEFAULT_API = "https://api.github.com"


class GitHubError(RuntimeError):
    """A GitHub API call that failed; the message names the call and GitHub's answer."""


def with_marker(body: str) -> str:
    return body if MARKER in body else f"{MARKER}\n{body}"


class Client:
    def __init__(self, repo: str, token: str, api: str = DEFAULT_API, timeout: float = 30.0):
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo or ""):
            raise ValueError(f"GITHUB_REPOSITORY must be owner/name, got {repo!r}")
        if not token:
            raise ValueError("GITHUB_TOKEN is not set: posting the report needs a token with pull-requests: write")
        self.repo, self.token, self.api, self.timeout = repo, token, api.rstrip("/"), timeout

    @classmethod
    def from_env(cls, env=os.environ) -> Client:
        return cls(env.get("GITHUB_REPOSITORY", ""), env.get("GITHUB_TOKEN", ""),
                   env.get("GITHUB_API_URL") or DEFAULT_API)

    def _call(self, method: str, url: str, payload: dict | None = None):
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(url, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28", "User-Agent": "fat-pr-report",
            **({"Content-Type": "application/json"} if data is not None else {})})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                body = resp.read()
                return (json.loads(body) if body else None), resp.headers.get("Link", "")
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:500]
            raise GitHubError(f"{method} {url}: HTTP {e.code} {e.reason}: {detail}") from None
        except urllib.error.URLError as e:
            raise GitHubError(f"{method} {url}: {e.reason}") from None

    def comments(self, pr: int):
        """Every comment of issue/pull request `pr`, following the Link header's pages."""
        url = f"{self.api}/repos/{self.repo}/issues/{int(pr)}/comments?per_page=100"
        while url:
            page, link = self._call("GET", url)
            yield from page
            nxt = re.search(r'<([^>]+)>;\s*rel="next"', link or "")
            url = nxt.group(1) if nxt else None

    def post_report(self, pr: int, body: str) -> tuple[str, dict]:
        """Edit the report's own comment (found by MARKER) or create it. Returns (action, comment)."""
        body = with_marker(body)
        mine = next((c for c in self.comments(pr) if MARKER in (c.get("body") or "")), None)
        if mine is not None:
            comment, _ = self._call("PATCH", f"{self.api}/repos/{self.repo}/issues/comments/{int(mine['id'])}",
                                    {"body": body})
            return "updated", comment
        comment, _ = self._call("POST", f"{self.api}/repos/{self.repo}/issues/{int(pr)}/comments", {"body": body})
        return "created", comment
