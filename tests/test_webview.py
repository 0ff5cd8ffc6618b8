"""Offline plots pages (fat/tools/offline_plots.py; the Chromium driver is tests/browser.py): the pinned vega bundles, the self-contained template DVC
renders with, the DOM reader, and a real headless-Chromium render of a small DVC plots page."""
from __future__ import annotations

import base64
import hashlib
import os
import re
from pathlib import Path

import numpy as np
import pytest
from dvc_render import ImageRenderer, VegaRenderer, render_html
from matplotlib.figure import Figure

from fat.evaluation import plots
from fat.tools import offline_plots

import browser

FAKE_JS = {"vega": "window.vega = {version: '5'};", "vega-lite": "window.vegaLite = {};",
           "vega-embed": "window.vegaEmbed = function () { return Promise.resolve({}); }; // </script> inside"}


def need(what: str, ok: bool):
    """Skip where a developer lacks chromium or the vega cache; under CI that is a failure."""
    if not ok:
        msg = f"{what} missing: run `.ci/run` (installs chromium, runs `fat offline-plots`)"
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(msg)
        pytest.skip(msg)


def fake_cache(root: Path) -> Path:
    for name, version, _, _ in offline_plots.VEGA:
        p = offline_plots.script_path(root, name, version)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(FAKE_JS[name])
    return root


def test_pinned_versions_are_the_ones_dvc_render_loads():
    cdn = dict(re.findall(r"npm/(vega(?:-lite|-embed)?)@([\d.]+)", VegaRenderer.SCRIPTS))
    assert cdn == {name: version for name, version, _, _ in offline_plots.VEGA}


def test_integrity_is_npms_sha512_format():
    data = b"fat"
    assert offline_plots.integrity(data) == "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def test_template_inlines_the_bundles_and_drops_the_cdn(tmp_path):
    assert offline_plots.cached_scripts(tmp_path) is None
    with pytest.raises(FileNotFoundError, match="fat offline-plots"):
        offline_plots.template_html(tmp_path)
    cache = fake_cache(tmp_path / "cache")
    path = offline_plots.write_template(cache)
    text = path.read_text()
    assert path == cache / offline_plots.TEMPLATE_NAME
    for js in FAKE_JS.values():
        assert js.replace("</script", "<\\/script") in text
    assert "{plot_divs}" in text and "{scripts}" not in text
    renderer = VegaRenderer([{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.4}], "curve.tsv", x="step", y="loss")
    page = render_html([renderer], tmp_path / "out/index.html", html_template=str(path))
    html = Path(page).read_text()
    assert "cdn.jsdelivr" not in html and "vegaEmbed('#curve_tsv'" in html
    assert html.count("<script>/* vega") == 3


def test_page_report_reads_render_status_marks_and_images():
    dom = """<html><head></head><body data-fat-done="2">
    <div id="a_tsv" data-fat-render="ok"><div class="vega-embed"><svg class="marks"><g class="mark-line role-mark">
      <path d="M0,0L1,1L2,0"></path></g><g class="mark-text role-axis-label"><text>x</text></g>
      <g class="mark-rect role-mark"><path d="M0,0h1"/><path d="M0,1h2"/></g></svg></div></div>
    <div id="b_csv" data-fat-render="error"><pre class="fat-error">boom</pre></div>
    <div id="c_png"><p>c.png</p><div><img src="static/c.png" data-fat-loaded="ok"></div></div>
    </body></html>"""
    rep = browser.page_report(dom)
    assert rep["done"] == 2
    assert rep["plots"]["a_tsv"] == {"render": "ok", "svg": True, "marks": {"line": 1, "rect": 2},
                                     "line_points": [3], "images": []}  # axis labels are no data marks
    assert rep["plots"]["b_csv"]["render"] == "error" and rep["plots"]["b_csv"]["marks"] == {}
    assert rep["plots"]["c_png"]["images"] == [{"src": "static/c.png", "loaded": "ok"}]


def test_chromium_draws_a_dvc_plots_page_offline(tmp_path):
    need("chromium", browser.find_chromium() is not None)
    need("the vega cache", offline_plots.cached_scripts() is not None)
    template = offline_plots.write_template(offline_plots.cache_dir())
    fig = Figure(figsize=(3, 2))
    fig.add_subplot().plot([0, 1, 2], [1, 0, 1])
    plots.save_png(fig, tmp_path / "out/static/fig.png")
    rows = [{"step": s, "val_lwlrap": v} for s, v in zip(range(1, 6), np.linspace(0.3, 0.7, 5).round(3))]
    bars = [{"class": c, "lwlrap": v} for c, v in (("a", 0.9), ("b", 0.5), ("c", 0.7))]
    renderers = [VegaRenderer(rows, "curves/val_lwlrap.tsv", x="step", y="val_lwlrap", title="curve"),
                 VegaRenderer(bars, "per_class.csv", x="lwlrap", y="class", template="bars_sorted",
                              template_dir=str(Path(__file__).resolve().parents[1] / ".dvc/plots")),
                 ImageRenderer([{"rev": "workspace", "src": str(tmp_path / "out/static/fig.png")}], "fig.png")]
    page = render_html(renderers, tmp_path / "out/index.html", html_template=str(template))
    rep = browser.page_report(browser.dump_dom(page))
    assert rep["done"] == 2, rep
    curve, per_class, image = (rep["plots"][k] for k in ("curves_val_lwlrap_tsv", "per_class_csv", "fig_png"))
    assert curve["render"] == "ok" and curve["svg"] and max(curve["line_points"]) == 5  # one point per epoch
    assert per_class["render"] == "ok" and per_class["marks"] == {"rect": 3}  # one bar per class
    assert image["images"] == [{"src": "static/fig.png", "loaded": "ok"}]

    png = browser.screenshot(page, tmp_path / "shot.png", width=900, height=900)
    from matplotlib.image import imread

    img = imread(png)
    assert img.shape[:2] == (900, 900) and img[..., :3].std() > 0.05


def test_offline_plots_command_configures_the_repo_from_the_cache(tmp_path, capsys):
    import subprocess
    import sys

    from fat.tools import cli

    cache = fake_cache(tmp_path / "cache")  # already cached: nothing is fetched
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True)
    assert cli.main(["offline-plots", "--cache", str(cache), "--repo", str(repo)]) == 0
    template = cache / offline_plots.TEMPLATE_NAME
    assert str(template) in capsys.readouterr().out
    assert f"html_template = {template}" in (repo / ".dvc/config.local").read_text()
    assert "config.local" in (repo / ".dvc/.gitignore").read_text()  # machine-local, never committed
    assert cli.main(["offline-plots", "--cache", str(cache), "--repo", str(tmp_path)]) == 2  # not a DVC repo
    assert "not a DVC repository" in capsys.readouterr().err
