"""Headless Chromium for the tests: load a `dvc plots show` page (made offline by `fat offline-plots`),
dump its DOM after the scripts ran or take a screenshot, and read from the DOM what each plot drew
(the page template marks every vega view `data-fat-render` and every image `data-fat-loaded`)."""
from __future__ import annotations

import html.parser
import shutil
import subprocess
import tempfile
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--mute-audio"]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if exe := shutil.which(name):
            return exe
    return None


def _chromium(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("chromium: not found (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="fat-chromium-") as profile:
        proc = subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"chromium {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc


def dump_dom(page: str | Path, budget_ms: int = 10000, timeout: float = 180) -> str:
    """The page's DOM after scripts ran for `budget_ms` of virtual time."""
    return _chromium([f"--virtual-time-budget={budget_ms}", "--dump-dom", Path(page).resolve().as_uri()],
                     timeout).stdout


def screenshot(page: str | Path, png: str | Path, width: int = 1600, height: int = 4000, budget_ms: int = 10000,
               timeout: float = 180) -> Path:
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    _chromium([f"--virtual-time-budget={budget_ms}", f"--window-size={width},{height}", f"--screenshot={png}",
               Path(page).resolve().as_uri()], timeout)
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot to {png}")
    return png


class _PageParser(html.parser.HTMLParser):
    """Collects, per top-level plot container (a <div id> child of <body>), its render status, the
    items of its vega data marks (SVG `g.mark-<type>.role-mark` groups) and its images."""

    VOID = {"img", "br", "meta", "link", "input", "path", "line", "rect", "circle", "hr"}

    def __init__(self):
        super().__init__()
        self.plots: dict[str, dict] = {}
        self.done = None
        self._stack: list[tuple[str, str | None, str | None]] = []  # (tag, plot id, mark type of enclosing group)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = (a.get("class") or "").split()
        plot, mark = self._stack[-1][1:] if self._stack else (None, None)
        if tag == "body":
            self.done = a.get("data-fat-done")
        if plot is None and tag == "div" and a.get("id") and self._stack and self._stack[-1][0] == "body":
            plot = a["id"]
            self.plots[plot] = {"render": a.get("data-fat-render"), "svg": False, "marks": {}, "line_points": [],
                                "images": []}
        if plot is not None:
            p = self.plots[plot]
            if tag == "svg" and "marks" in cls:
                p["svg"] = True
            if tag == "g" and "role-mark" in cls:
                mark = next((c[5:] for c in cls if c.startswith("mark-")), "other")
            elif mark is not None and tag in ("path", "line", "rect", "circle", "text"):
                p["marks"][mark] = p["marks"].get(mark, 0) + 1
                if mark == "line" and tag == "path":
                    p["line_points"].append(1 + (a.get("d") or "").count("L"))
            if tag == "img":
                p["images"].append({"src": a.get("src"), "loaded": a.get("data-fat-loaded")})
        if tag not in self.VOID:
            self._stack.append((tag, plot, mark))

    def handle_endtag(self, tag):
        for i in range(len(self._stack) - 1, -1, -1):
            if self._stack[i][0] == tag:
                del self._stack[i:]
                break


def page_report(dom: str) -> dict:
    """{"done": number of vega views settled (None if the page never finished),
        "plots": {container id: {"render": "ok"/"error"/None (images), "svg": bool,
                                 "marks": {mark type: items drawn}, "line_points": [points per line],
                                 "images": [{"src", "loaded"}]}}}."""
    parser = _PageParser()
    parser.feed(dom)
    return {"done": None if parser.done is None else int(parser.done), "plots": parser.plots}
