"""`fat pr-report [BASE]`: what a change does to the results, as Markdown for a pull request.

Metrics and plot data live in git (`cache: false`), so comparing two revisions needs no pipeline
run and no DVC remote: the report is
  - the headline: the ensemble's OOF (and test) lwlrap at BASE and now;
  - `dvc metrics diff --md BASE` (every metric that changed);
  - `dvc params diff --md BASE` (every parameter that changed);
  - `dvc plots diff BASE` written to `<out>/plots/index.html` (training curves, per-class bars and
    figures of both revisions side by side), linked by path or by `--plots-url`.
"Now" is the workspace (in CI: the checked-out pull request). It writes `<out>/report.md`; with
`--post PR` it also posts it on that pull request as its own comment, found again by a hidden
marker and edited on later pushes (fat/tools/ghcomment.py: no other comment is touched).
`.github/workflows/pr-report.yml` runs it on every pull request.
Runs with only the standard library and DVC installed (`python -m fat.tools.prreport`).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HEADLINE = ("metrics/summary.json", ("ensemble.oof_lwlrap", "ensemble.test_lwlrap"))


def dvc(args: list[str], repo: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed ({proc.returncode}) in {repo}:\n{proc.stderr.strip()[-3000:]}")
    return proc.stdout


def git_rev(rev: str, repo: Path) -> str:
    proc = subprocess.run(["git", "rev-parse", "--short", f"{rev}^{{commit}}"], cwd=repo, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise ValueError(f"{repo}: {rev!r} is not a git revision ({proc.stderr.strip()})")
    return proc.stdout.strip()


def headline(metrics_json: dict) -> list[str]:
    path, keys = HEADLINE
    changes = metrics_json.get(path, {})
    lines = []
    for key in keys:
        if key in changes:
            c = changes[key]
            old, new, diff = c.get("old"), c.get("new"), c.get("diff")
            arrow = "" if diff is None else (" ▲" if diff > 0 else " ▼" if diff < 0 else "")
            fmt = lambda v: "—" if v is None else f"{v:.4f}"  # noqa: E731
            lines.append(f"- **{path} `{key}`**: {fmt(old)} → {fmt(new)}"
                         f"{'' if diff is None else f' ({diff:+.4f}{arrow})'}")
    return lines


def _rows_or(table_md: str, nothing: str) -> str:
    """A Markdown table from dvc, or `nothing` when it has no rows (dvc prints only the header)."""
    return table_md if len(table_md.strip().splitlines()) > 2 else nothing


def build(base: str = "HEAD", repo: Path = Path("."), out: Path = Path("pr-report"),
          plots_url: str | None = None) -> Path:
    """Write `<out>/report.md` and `<out>/plots/index.html`; returns the report's path."""
    repo, out = Path(repo), Path(out)
    short = git_rev(base, repo)
    out.mkdir(parents=True, exist_ok=True)
    metrics_md = dvc(["metrics", "diff", "--md", base], repo).strip()
    metrics_json = json.loads(dvc(["metrics", "diff", "--json", base], repo) or "{}")
    params_md = dvc(["params", "diff", "--md", base], repo).strip()
    plots_dir = (out / "plots").resolve()
    dvc(["plots", "diff", base, "-o", str(plots_dir)], repo)
    page = plots_dir / "index.html"
    link = plots_url or str(Path("plots") / "index.html")

    lines = [f"## fat: results of this change against `{base}` ({short})", ""]
    top = headline(metrics_json)
    lines += (top + [""]) if top else []
    lines += ["### Metrics", "", _rows_or(metrics_md, "No metric changed."), ""]
    lines += ["### Params", "", _rows_or(params_md, "No parameter changed."), ""]
    lines += ["### Plots", ""]
    if page.is_file():
        lines += [f"`dvc plots diff {base}` (training curves per stage and fold, per-class and pseudo-label bars, "
                  f"ensemble and data figures, both revisions side by side): [{link}]({link})"
                  + ("" if plots_url else f" — `{page}`"), ""]
    else:
        lines += ["`dvc plots diff` found no plots.", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report


def add_parser(sub) -> None:
    p = sub.add_parser("pr-report", help="Markdown report of metrics/params/plots changes against a base revision",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _arguments(p)
    p.set_defaults(func=_run)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("base", nargs="?", default="HEAD", help="git revision to compare the workspace with (default: HEAD; "
                                                           "on a pull request: the target branch, e.g. origin/main)")
    p.add_argument("--out", type=Path, default=Path("pr-report"), help="output directory (default: %(default)s)")
    p.add_argument("--repo", type=Path, default=Path("."), help="the project's repository (default: .)")
    p.add_argument("--plots-url", default=None, help="where the plots page will be published (e.g. the CI run's "
                                                     "artifacts); linked instead of the local path")
    p.add_argument("--post", type=int, default=None, metavar="PR",
                   help="also post the report on pull request PR: its own comment (hidden marker) is edited, "
                        "or created when absent; needs GITHUB_TOKEN and GITHUB_REPOSITORY (GITHUB_API_URL optional)")


def _run(args) -> int:
    from fat.tools import ghcomment

    try:
        client = ghcomment.Client.from_env() if args.post is not None else None  # bad settings fail before the work
        report = build(args.base, args.repo, args.out, args.plots_url)
        if client is not None:
            action, comment = client.post_report(args.post, report.read_text())
            print(f"fat pr-report: {action} comment {comment.get('html_url') or comment.get('id')} on #{args.post}",
                  file=sys.stderr)
    except RuntimeError as e:  # dvc failures and GitHub API errors
        print(f"fat pr-report: error: {e}", file=sys.stderr)
        return 2
    print(report)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fat.tools.prreport", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    _arguments(ap)
    try:
        return _run(ap.parse_args(argv))
    except ValueError as e:
        print(f"fat pr-report: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
