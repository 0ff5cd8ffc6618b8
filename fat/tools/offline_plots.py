"""Pages a person opens: `dvc plots show` / `dvc plots diff` offline, and headless Chromium.

DVC writes its plots page from an HTML template whose `{scripts}` placeholder loads vega,
vega-lite and vega-embed from a CDN, so with no internet the vega plots stay blank. `fat
offline-plots` makes the pages self-contained instead:
  1. `npm pack` fetches the three packages at the versions DVC's renderer pins (VEGA below) from
     the npm registry, once, into a cache directory (`$FAT_CACHE`, else `$XDG_CACHE_HOME/fat`,
     else ~/.cache/fat); each tarball is checked against its pinned sha512 integrity;
  2. a template with the three minified bundles inlined (and no `{scripts}`, so no CDN) is
     written next to them;
  3. the repository's machine-local DVC config (`.dvc/config.local`, not committed) points
     `plots.html_template` at it.
From then on plain `dvc plots show` and `dvc plots diff` write one HTML file that draws
everything offline and can be mailed or uploaded as a CI artifact as it is.

The template also records, for tests and for people, whether each plot drew: every vega view is
rendered as SVG and its container gets `data-fat-render="ok"` (or `"error"` plus the message shown
on the page); every image gets `data-fat-loaded`; `<body data-fat-done=N>` once all N views settled.
The tests drive Debian's chromium headless over such pages (tests/browser.py).
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from fat.io import atomic_path

# (npm package, version, file in the tarball, sha512 integrity of the tarball as npm reports it).
# The versions are the ones dvc-render's VegaRenderer.SCRIPTS loads from the CDN (a test checks).
VEGA = [
    ("vega", "5.20.2", "package/build/vega.min.js",
     "sha512-qmH7aD9GGPpssVdxL1xgcdxTbQzyRUeRR16Os385ymvQhiwCYQNA6+eXUPAZDTVLfk0RXu6Jzj6kUE5jQ80EVw=="),
    ("vega-lite", "5.2.0", "package/build/vega-lite.min.js",
     "sha512-Yxcg8MvYfxHcG6BbkaKT0oVCIMIcE19UvqIsEwBmyd/7h2nzW7oRnID81T8UrY7hpDrIr6wa2JADOT2dhGNErw=="),
    ("vega-embed", "6.18.2", "package/build/vega-embed.min.js",
     "sha512-wcDyQPE4J5aiCDc3/suH5RQDvrKkjuLkhzUcbOLwEkNF8/+pp17tS0JghzEvAPNRg+5aG1/N2ydixq8Lk3dOlg=="),
]
TEMPLATE_NAME = "dvc_plots_offline.html"


def cache_dir() -> Path:
    if os.environ.get("FAT_CACHE"):
        return Path(os.environ["FAT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fat"


def script_path(cache: Path, name: str, version: str) -> Path:
    return cache / "vega" / f"{name}-{version}.min.js"


def cached_scripts(cache: Path | None = None) -> list[Path] | None:
    """Paths of the three bundles if all are in the cache, else None."""
    cache = cache or cache_dir()
    paths = [script_path(cache, name, version) for name, version, _, _ in VEGA]
    return paths if all(p.is_file() and p.stat().st_size > 0 for p in paths) else None


def integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def fetch_scripts(cache: Path | None = None) -> list[Path]:
    """Make sure the pinned vega bundles are in the cache, fetching them with `npm pack` if not."""
    cache = cache or cache_dir()
    if (have := cached_scripts(cache)) is not None:
        return have
    npm = shutil.which("npm")
    if npm is None:
        raise FileNotFoundError("npm: not found; install Node.js's npm (Debian: apt-get install npm) to fetch "
                                "vega/vega-lite/vega-embed for offline plots")
    with tempfile.TemporaryDirectory() as tmp:
        specs = [f"{name}@{version}" for name, version, _, _ in VEGA]
        proc = subprocess.run([npm, "pack", "--json", "--loglevel=error", "--pack-destination", tmp, *specs],
                              capture_output=True, text=True, cwd=tmp)
        if proc.returncode != 0:
            raise RuntimeError(f"npm pack {' '.join(specs)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        packed = {(d["name"], d["version"]): Path(tmp) / d["filename"] for d in json.loads(proc.stdout)}
        for name, version, member, expected in VEGA:
            tgz = packed.get((name, version))
            if tgz is None or not tgz.is_file():
                raise RuntimeError(f"npm pack did not produce {name}@{version}")
            got = integrity(tgz.read_bytes())
            if got != expected:
                raise RuntimeError(f"{name}@{version}: tarball integrity {got} differs from the pinned {expected}")
            with tarfile.open(tgz) as tar:
                f = tar.extractfile(member)
                if f is None:
                    raise RuntimeError(f"{tgz.name}: no {member} inside")
                js = f.read()
            with atomic_path(script_path(cache, name, version)) as out:
                out.write_bytes(js)
    return cached_scripts(cache)


# A {plot_divs}-only template for dvc_render.render_html: no {scripts} (that would add the CDN tags).
_PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
{refresh_tag}
<title>fat: DVC plots</title>
<style>
  body { font-family: sans-serif; margin: 12px; }
  body > div { display: inline-block; vertical-align: top; margin: 6px; padding: 4px; border: 1px solid #ddd; }
  .fat-error { color: crimson; white-space: pre-wrap; max-width: 40em; }
  img { max-width: 100%; }
</style>
__SCRIPTS__
<script>
(function () {
  var embed = window.vegaEmbed, pending = [];
  window.vegaEmbed = function (el, spec, opts) {
    var target = document.querySelector(el);
    var p = embed(el, spec, Object.assign({renderer: "svg"}, opts || {})).then(function (result) {
      target.setAttribute("data-fat-render", "ok");
      return result;
    }, function (err) {
      target.setAttribute("data-fat-render", "error");
      var msg = document.createElement("pre");
      msg.className = "fat-error";
      msg.textContent = "This plot could not be drawn: " + err;
      target.appendChild(msg);
    });
    pending.push(p);
    return p;
  };
  window.addEventListener("load", function () {
    Promise.all(pending).then(function () {
      Array.prototype.forEach.call(document.images, function (img) {
        img.setAttribute("data-fat-loaded", img.complete && img.naturalWidth > 0 ? "ok" : "error");
      });
      document.body.setAttribute("data-fat-done", String(pending.length));
    });
  });
})();
</script>
</head>
<body>
{plot_divs}
</body>
</html>
"""


def template_html(cache: Path | None = None) -> str:
    """The offline page template with the cached bundles inlined."""
    paths = cached_scripts(cache)
    if paths is None:
        raise FileNotFoundError(f"{(cache or cache_dir()) / 'vega'}: vega bundles not cached; run `fat offline-plots`")
    scripts = []
    for (name, version, _, _), path in zip(VEGA, paths):
        js = path.read_text(encoding="utf-8").replace("</script", "<\\/script")
        scripts.append(f"<script>/* {name}@{version} (npm) */\n{js}\n</script>")
    return _PAGE.replace("__SCRIPTS__", "\n".join(scripts))


def write_template(cache: Path | None = None) -> Path:
    cache = cache or cache_dir()
    path = cache / TEMPLATE_NAME
    text = template_html(cache)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def configure_repo(repo: Path, template: Path) -> None:
    """Point the repository's machine-local DVC config (`.dvc/config.local`) at `template`."""
    if not (repo / ".dvc").is_dir():
        raise FileNotFoundError(f"{repo}: not a DVC repository (no .dvc/)")
    proc = subprocess.run([sys.executable, "-m", "dvc", "config", "--local", "plots.html_template",
                           str(Path(template).resolve())], cwd=repo, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"dvc config --local plots.html_template failed: {proc.stderr.strip()}")


# ----------------------------------------------------------------------------- the `fat offline-plots` command
def add_parser(sub) -> None:
    p = sub.add_parser("offline-plots", help="make `dvc plots show/diff` pages draw offline (vega from npm, once)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, default=None, help="cache directory (default: $FAT_CACHE or ~/.cache/fat)")
    p.add_argument("--repo", type=Path, default=Path("."), help="DVC repository to configure (default: .)")
    p.add_argument("--no-config", action="store_true", help="only fetch and write the template; leave DVC's config alone")
    p.set_defaults(func=_offline_plots)


def _offline_plots(args) -> int:
    cache = args.cache or cache_dir()
    try:
        fetch_scripts(cache)
        template = write_template(cache)
        if not args.no_config:
            configure_repo(args.repo, template)
    except RuntimeError as e:
        print(f"fat offline-plots: error: {e}", file=sys.stderr)
        return 2
    if not args.no_config:
        print(f"{args.repo.resolve()}: dvc plots show/diff now use {template} (in .dvc/config.local)")
    else:
        print(template)
    return 0
