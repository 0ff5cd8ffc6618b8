"""End to end: the whole DAG under `dvc repro` on the tiny profile, in a fresh git repo copied from
this checkout; then a no-op repro, and a `dvc exp run -S mixup.alpha=…` that reruns only what
depends on mixup and shows up in `dvc metrics diff`. On the same run: `dvc plots show` drawn in
headless Chromium, `fat pr-report` between the commits before and after the mixup change, and the
queued sweep of docs/experiments.md (`dvc exp run --queue -S …`, `dvc queue start -j 2`,
`dvc exp show`); `fat predict` on the test audio against data/submission.csv, `fat export`'s modules
against the pipeline's predictions, and `dvc artifacts get` of the model bundle in a fresh clone."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest
import yaml
from dvc_render.base import Renderer
from matplotlib.image import imread

import browser
from fat import params
from fat.data import corrections
from fat.data import tables as data
from fat.tools import offline_plots
from fat.training import track
from test_webview import need

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e


def env() -> dict:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "DVC_NO_ANALYTICS": "1", "FAT_LOG": "WARNING"}


def run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("e2e") / "repo"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst / f)
    run(["git", "init", "-q"], dst)
    out = run(["fat", "preset", "tiny"], dst)  # as a user would: it also prunes the fold-2 lock entries
    assert "finetune@2" in out and "finetune@2" not in yaml.safe_load((dst / "dvc.lock").read_text())["stages"]
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"], dst)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"], dst)
    return dst


@pytest.fixture(scope="module")
def first_repro(repo) -> str:
    return run(["dvc", "repro"], repo)


def test_full_dag_runs_and_writes_the_contracted_outputs(repo, first_repro):
    p = params.load(repo / "params.yaml")
    folds = p.cv.folds
    expected = {"prepare", "report", "folds", "pretrain", "ensemble"}
    expected |= {f"features@{s}" for s in ("curated", "noisy", "test")}
    for fam in ("finetune", "retrain"):
        expected |= {f"{fam}@{k}" for k in folds} | {f"predict@{fam}"}
    expected |= {f"baseline@{k}" for k in p.baseline.folds}  # the tiny profile trains the opt-in family too
    expected |= {f"pseudo@{k}" for k in folds} | {"label_issues"}
    assert list(p.baseline.folds) == list(folds)
    assert ran_stages(first_repro) == expected
    issues = corrections.read(repo / "metrics/label_issues.csv")  # a valid corrections file
    counts = json.loads((repo / "metrics/label_issues.json").read_text())
    assert len(issues) == counts["suggested"] and counts["examined"]["noisy"] == p.synth.noisy.n_clips

    classes = data.vocabulary(repo / "data/raw")
    assert len(classes) == p.synth.n_classes
    sub = pd.read_csv(repo / "data/submission.csv")
    test_fnames = pd.read_csv(repo / "data/raw/sample_submission.csv")["fname"]
    assert list(sub.columns) == ["fname"] + classes
    assert sorted(sub["fname"]) == sorted(test_fnames)
    probs = sub[classes].to_numpy()
    assert ((probs >= 0) & (probs <= 1)).all() and probs.std() > 0

    summary = json.loads((repo / "metrics/summary.json").read_text())  # the headline metrics file
    assert list(summary) == ["ensemble", "finetune", "retrain", "pretrain"]
    card = json.loads((repo / "data/models/ensemble/card.json").read_text())
    assert card["classes"] == classes and summary["ensemble"]["kept"] == ", ".join(card["kept"])
    assert not (repo / "data/models/ensemble/baseline").exists()  # a reference, not an ensemble member
    for k in folds:  # the baseline members score themselves: OOF lwlrap and test predictions
        member = json.loads((repo / f"metrics/baseline/fold{k}.json").read_text())
        assert 0 < member["lwlrap"] <= 1
        assert len(pd.read_csv(repo / f"data/models/baseline/fold{k}/test.csv")) == len(test_fnames)
    for fam in ("finetune", "retrain"):
        for k in folds:  # the bundle's fold models are the members' own files (through predict@<family>'s copies)
            model = (repo / f"data/models/{fam}/fold{k}/model.pt").read_bytes()
            assert (repo / f"data/models/ensemble/{fam}/fold{k}.pt").read_bytes() == model
            assert (repo / f"data/preds/{fam}/fold{k}/model.pt").read_bytes() == model
            assert ((repo / f"data/preds/{fam}/fold{k}/plain_oof.csv").read_bytes()
                    == (repo / f"data/models/{fam}/fold{k}/oof.csv").read_bytes())
    ens = json.loads((repo / "metrics/ensemble.json").read_text())
    assert 0 < ens["lwlrap"] <= 1 and 0 < ens["test_lwlrap"] <= 1
    assert set(ens["members"]) == {"finetune", "retrain"}
    assert set(ens["kept"]) | set(ens["dropped"]) == set(ens["members"])
    for fam in ("finetune", "retrain"):  # predict@<family>'s scores, the headline's figures
        m = json.loads((repo / f"metrics/{fam}.json").read_text())
        assert {k: m[k] for k in summary[fam]} == summary[fam]
        assert set(m["folds"]) == {f"fold{k}" for k in folds}
        assert m["oof_clips"] == p.synth.curated.n_clips  # every curated clip scored exactly once
        for key in ("oof_lwlrap", "oof_lwlrap_tta", "test_lwlrap", "test_lwlrap_tta"):
            assert 0 < m[key] <= 1
    for k in folds:
        rep = json.loads((repo / f"metrics/pseudo/fold{k}.json").read_text())
        assert rep["noisy_clips"] == p.synth.noisy.n_clips

    report = json.loads((repo / "metrics/report.json").read_text())
    for split in ("curated", "noisy", "test"):
        assert report["splits"][split]["clips"] == getattr(p.synth, split).n_clips
        assert report["splits"][split]["sample_rates"] == {str(p.synth.sample_rate): getattr(p.synth, split).n_clips}
    assert 0 < report["noisy_vs_curated"]["total_variation"] < 1
    folds_table = pd.read_csv(repo / "metrics/ensemble_folds.csv")
    assert folds_table["fold"].tolist() == [f"fold{k}" for k in folds]
    assert list(folds_table.columns[1:]) == ["finetune", "retrain", "ensemble"]
    assert folds_table.iloc[:, 1:].map(lambda v: 0 < v <= 1).all().all()
    for fam in ("baseline", "finetune", "retrain"):  # DVCLive curves of every training stage and fold
        for k in folds:
            epochs = json.loads((repo / f"metrics/{fam}/fold{k}.json").read_text())["epochs"]
            curve = pd.read_csv(repo / f"metrics/train/{fam}/fold{k}/plots/metrics/train_loss.tsv", sep="\t")
            assert curve["step"].tolist() == list(range(1, epochs + 1))


PLOT_IMAGES = ["metrics/ensemble_correlation.png", "metrics/ensemble_folds.png", "metrics/label_issues.png"] + [
    f"metrics/report/{n}.png" for n in ("class_counts", "label_shift", "labels_per_clip", "durations", "audio_formats")]


def test_plots_show_page_draws_every_plot_in_chromium(repo, first_repro, tmp_path):
    need("chromium", browser.find_chromium() is not None)
    need("the vega cache", offline_plots.cached_scripts() is not None)
    run(["fat", "offline-plots"], repo)  # cached bundles: no network
    run(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], repo)
    page = tmp_path / "plots/index.html"
    html = page.read_text()
    assert "cdn.jsdelivr" not in html  # everything it needs is inside the page

    p = params.load(repo / "params.yaml")
    n_classes = p.synth.n_classes
    curves = [f"metrics/train/{fam}/fold{k}/plots/metrics/{c}.tsv"
              for fam in ("baseline", "finetune", "retrain") for k in p.cv.folds for c in track.CURVES]
    curves += [f"metrics/train/pretrain/plots/metrics/{c}.tsv" for c in track.CURVES]
    bars = ["metrics/ensemble_per_class.csv"] + [f"metrics/pseudo/fold{k}_per_class.csv" for k in p.cv.folds]
    ident = Renderer.remove_special_chars

    rep = browser.page_report(browser.dump_dom(page))
    assert rep["done"] == len(curves) + len(bars), "not every vega view settled"
    assert set(rep["plots"]) == {ident(n) for n in curves + bars + PLOT_IMAGES}
    for name in curves:
        view = rep["plots"][ident(name)]
        assert view["render"] == "ok" and view["svg"] and view["line_points"], (name, view)
        if name.startswith("metrics/train/baseline/"):  # the tiny baseline trains 2 epochs: 2 points a line
            assert max(view["line_points"]) == p.train.epochs, (name, view)
    for name in bars:
        view = rep["plots"][ident(name)]
        assert view["render"] == "ok" and view["marks"] == {"rect": n_classes}, (name, view)
    for name in PLOT_IMAGES:
        images = rep["plots"][ident(name)]["images"]
        assert len(images) == 1 and images[0]["loaded"] == "ok", (name, images)

    shot = imread(browser.screenshot(page, tmp_path / "plots.png", width=1400, height=2400))
    assert shot[..., :3].std() > 0.05


def test_data_is_stored_once_workspace_linked_to_cache(repo, first_repro):
    """.dvc/config's cache.type: data/raw's wavs are the cache's files (hard links), not copies."""
    wav = next((repo / "data" / "raw" / "train_curated").iterdir())
    assert wav.stat().st_nlink >= 2
    cached = [p for p in (repo / ".dvc" / "cache" / "files").rglob("*") if p.is_file() and os.path.samefile(p, wav)]
    assert len(cached) == 1
    quarantine = pd.read_csv(repo / "metrics" / "quarantine.csv")
    assert list(quarantine.columns) == ["split", "fname", "file", "problem"] and quarantine.empty


def test_second_repro_does_nothing(repo, first_repro):
    out = run(["dvc", "repro"], repo)
    assert ran_stages(out) == set()
    assert "Data and pipelines are up to date" in out


def test_fat_predict_on_the_test_audio_reproduces_the_submission(repo, first_repro, tmp_path):
    """`fat predict data/raw/test -o OUT.csv`: same members, fold averaging, TTA and combination as
    the ensemble stage, from the audio files alone."""
    run(["fat", "predict", "data/raw/test", "-o", str(tmp_path / "out.csv")], repo)
    sub = pd.read_csv(repo / "data/submission.csv").set_index("fname")
    got = pd.read_csv(tmp_path / "out.csv").set_index("fname")
    assert list(got.columns) == list(sub.columns) and sorted(got.index) == sorted(sub.index)
    diff = (got.loc[sub.index] - sub).abs().to_numpy().max()
    assert diff <= 1e-3, diff
    assert sub.to_numpy().std() > 0


@pytest.fixture(scope="module")
def exported(repo, first_repro, tmp_path_factory) -> Path:
    from fat.inference import export

    out = tmp_path_factory.mktemp("export")
    formats = ["torchscript"] + ([] if export.missing_onnx_packages() else ["onnx"])
    run(["fat", "export", "-o", str(out), *[a for f in formats for a in ("--format", f)]], repo)
    return out


def pipeline_plain_ensemble(repo: Path, classes: list[str]):
    """The pipeline's own plain-window test predictions (data/models/<family>/fold<k>/test.csv),
    fold-averaged and combined as the model card says: what the exported module computes."""
    from fat.evaluation import ensemble
    from fat.layout import Layout

    card = json.loads((repo / "data/models/ensemble/card.json").read_text())
    folds = list(params.load(repo / "params.yaml").cv.folds)
    members = [ensemble.load_member(f, folds, Layout(repo), False, classes, card["fold_agg"]) for f in card["kept"]]
    return members[0][2], ensemble.Combiner.from_state(card["combiner"])([m[3] for m in members]), card


def exported_parity(repo, exported, predict_one) -> float:
    from fat.data import audio

    classes = (exported / "classes.txt").read_text().split()
    assert classes == data.vocabulary(repo / "data/raw")
    fnames, want, card = pipeline_plain_ensemble(repo, classes)
    sr = card["audio"]["sample_rate"]
    got = [predict_one(audio.load(repo / "data/raw/test" / f, sr)) for f in fnames]
    return float(abs(pd.DataFrame(got).to_numpy() - want).max())


def test_exported_torchscript_module_matches_the_pipelines_predictions(repo, exported):
    import torch

    module = torch.jit.load(str(exported / "tagger.pt"))
    with torch.no_grad():
        diff = exported_parity(repo, exported, lambda y: module(torch.from_numpy(y)).numpy())
    assert diff <= 1e-4, diff


def test_exported_onnx_module_run_by_onnx_runtime_matches_the_pipelines_predictions(repo, exported):
    from fat.inference import export

    gone = [p for p in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(p) is None]
    if gone:
        pytest.skip(f"ONNX export and its parity test need {', '.join(gone)} (pip install -e '.[export]')")
    diff = exported_parity(repo, exported, lambda y: export.run_onnx(exported / "tagger.onnx", y))
    assert diff <= 1e-4, diff


def commit(repo: Path, message: str) -> None:
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", message], repo)


def test_folds_train_in_parallel_with_dvc_wait_for_lock(repo, first_repro):
    """The parallel-folds recipe of docs/teams.md: one `dvc --wait-for-lock repro -s` per fold, two at a time.
    Both folds run, the lock file records both, and the results equal the serial run's."""
    before = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    proc = subprocess.run("printf 'finetune@%s\\n' 0 1 | xargs -P 2 -I{} dvc --wait-for-lock repro -f -s {}",
                          shell=True, cwd=repo, capture_output=True, text=True, env=env())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert ran_stages(proc.stdout + proc.stderr) == {"finetune@0", "finetune@1"}
    after = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    for stage in ("finetune@0", "finetune@1"):
        assert after[stage]["outs"] == before[stage]["outs"], f"{stage}: outputs differ from the serial run"
    assert json.loads(run(["dvc", "status", "--json"], repo)) == {}


def test_shared_remote_fresh_clone_pulls_and_does_no_work(repo, first_repro, tmp_path):
    """The team workflow of docs/teams.md: push outputs and run cache to a shared DVC remote (a local
    directory here), clone afresh, pull; the clone is up to date and its metrics are the same."""
    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "-d", "shared", str(remote)], repo)
    commit(repo, "results + shared remote")
    run(["dvc", "push", "--run-cache"], repo)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    run(["dvc", "pull", "--run-cache"], clone)
    status = json.loads(run(["dvc", "status", "--json"], clone))
    assert status == {}, status
    out = run(["dvc", "repro"], clone)
    assert ran_stages(out) == set(), out
    assert (clone / "data" / "submission.csv").read_bytes() == (repo / "data" / "submission.csv").read_bytes()
    assert json.loads(run(["dvc", "metrics", "diff", "--json", "HEAD"], clone)) == {}
    a, b = (json.loads((r / "metrics" / "ensemble.json").read_text()) for r in (repo, clone))
    assert a == b
    # the model registry: the bundle by name (a GTO version tag), outside any repository, then tagging with it
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "tag", "-a", "ensemble@v0.1.0", "-m", "ensemble"], clone)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    run(["dvc", "artifacts", "get", str(clone), "ensemble", "-o", "model"], outside)
    assert (outside / "model/card.json").is_file() and (outside / "model/retrain/fold0.pt").is_file()
    test_files = sorted((clone / "data/raw/test").iterdir())[:3]
    run(["fat", "predict", *map(str, test_files), "--model", "model", "-o", "tags.csv"], outside)
    got = pd.read_csv(outside / "tags.csv").set_index("fname")
    sub = pd.read_csv(clone / "data/submission.csv").set_index("fname").loc[got.index]
    assert (got - sub).abs().to_numpy().max() <= 1e-3


@pytest.fixture(scope="module")
def alpha_exp(repo, first_repro) -> str:
    """The results committed, then `dvc exp run -S mixup.alpha=0.4` in the workspace."""
    commit(repo, "results")
    return run(["dvc", "exp", "run", "-S", "mixup.alpha=0.4"], repo)


@pytest.fixture(scope="module")
def alpha_commit(repo, alpha_exp) -> Path:
    """Two commits that differ in mixup.alpha (0 -> 0.4), each with its results."""
    commit(repo, "mixup.alpha 0.4")
    return repo


UPSTREAM = {"prepare", "report", "folds", "features@curated", "features@noisy", "features@test"}


def test_exp_run_reruns_only_what_depends_on_mixup(repo, alpha_exp):
    out = alpha_exp
    ran = ran_stages(out)
    assert not ran & UPSTREAM, f"stages upstream of training reran: {ran & UPSTREAM}"
    assert {"baseline@0", "pretrain", "finetune@0", "retrain@0", "ensemble"} <= ran
    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], repo))
    assert set(diff) == {"metrics/summary.json"}, sorted(diff)  # the headline is the only metrics file (pretrain moves)
    # every training family's figures move (its per-fold val_loss at least; on the tiny profile
    # a near-constant model can keep the same ranking, hence the same lwlrap): in git, not in the diff
    changed = run(["git", "diff", "--name-only", "HEAD", "--", "metrics"], repo).split()
    for fam in ("baseline", "pretrain", "finetune", "retrain"):
        assert any(k.startswith(f"metrics/{fam}") for k in changed), f"no {fam} figure changed: {changed}"
    # what a person reads: the comparison leads with the headline and stays small
    table = run(["dvc", "exp", "show", "--md", "--only-changed"], repo).strip().splitlines()
    columns = [c.strip() for c in table[0].strip("|").split("|")]
    assert columns[:2] == ["Experiment", "Created"] and "mixup.alpha" in columns, columns
    figures = [c for c in columns[2:] if "/" not in c]  # metrics and params; the rest are changed deps' hashes
    summary = json.loads((repo / "metrics" / "summary.json").read_text())
    headline = {f"{section}.{key}" for section, values in summary.items() for key in values}
    assert set(figures) <= headline | {"mixup.alpha"}, sorted(set(figures) - headline)  # nothing but the headline
    assert figures[0].startswith(("ensemble.", "finetune.", "retrain.", "pretrain.")), figures
    assert not [c for c in figures if "fold" in c or "correlation" in c], figures
    assert len(run(["dvc", "metrics", "diff", "--md"], repo).strip().splitlines()) <= 30
    params_diff = json.loads(run(["dvc", "params", "diff", "--json"], repo))
    assert params_diff["params.yaml"]["mixup.alpha"]["new"] == 0.4


def test_pr_report_between_the_commits_before_and_after_the_mixup_change(alpha_commit, tmp_path):
    repo = alpha_commit
    out = run(["fat", "pr-report", "HEAD~1", "--out", str(tmp_path / "pr")], repo)
    assert out.strip().endswith("report.md")
    md = (tmp_path / "pr/report.md").read_text()
    params_part = md.split("### Params", 1)[1].split("###", 1)[0]
    assert re.search(r"\| params\.yaml\s*\| mixup\.alpha\s*\| 0\s*\| 0\.4\s*\|", params_part), params_part
    metrics_part = md.split("### Metrics", 1)[1].split("###", 1)[0]
    assert "metrics/summary.json" in metrics_part  # the headline file, and nothing else
    assert "metrics/baseline/fold0.json" not in metrics_part and "metrics/prepare.json" not in metrics_part
    old, new = (json.loads(run(["git", "show", f"{rev}:metrics/summary.json"], repo))["ensemble"]
                for rev in ("HEAD~1", "HEAD"))
    for key in ("oof_lwlrap", "test_lwlrap"):  # the headline lists the ensemble scores that moved (tiny: maybe none)
        line = f"**metrics/summary.json `ensemble.{key}`**: {old[key]:.4f} → {new[key]:.4f}"
        assert (line in md) == (old[key] != new[key]), (key, old[key], new[key])
    page = (tmp_path / "pr/plots/index.html").read_text()
    assert "HEAD~1" in page and "workspace" in page and "train_loss" in page


def queue_values(repo: Path, values: list[str]) -> dict[str, str]:
    """`dvc exp run --queue -S mixup.alpha=…`: {value: queued task name}."""
    queued = run(["dvc", "exp", "run", "--queue", "-S", f"mixup.alpha={','.join(values)}"], repo)
    names = dict(re.findall(r"mixup\.alpha=([\d.]+)'\]\}'\.\s*Queued experiment '([^']+)'", queued))
    assert set(names) == set(values), queued
    return names


def start_workers(repo: Path, log: Path) -> None:
    with open(log, "a") as f:  # the workers it starts outlive it: a file, not a pipe, takes their output
        proc = subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=repo, env=env(), stdout=f, stderr=f)
    assert proc.returncode == 0, log.read_text()


def workers_running(repo: Path) -> bool:
    """Whether a `dvc exp queue-worker` of this repo is alive (read from /proc: no dvc start-up).
    Without /proc, assume so: the wait then asks DVC once a minute or when an experiment lands."""
    if not Path("/proc/self").exists():
        return True
    for proc in Path("/proc").iterdir():
        try:
            if b"queue-worker" in (proc / "cmdline").read_bytes() and (proc / "cwd").resolve() == repo.resolve():
                return True
        except OSError:  # not a process directory, or it ended meanwhile
            continue
    return False


def exp_refs(repo: Path) -> int:
    """How many experiments git holds (DVC adds one per successful task)."""
    return len(run(["git", "for-each-ref", "refs/exps"], repo).splitlines())


def wait_for_queue(repo: Path, names: list[str], log: Path, timeout: float = 1500) -> tuple[dict[str, str], str]:
    """Poll `dvc queue status` until every task in `names` has ended; {name: its status line}.
    Workers that exit while a task is still queued (treeverse/dvc#10562) are started again, as the
    docs/experiments.md says to. `dvc queue status` costs seconds of CPU that the two workers need, so between
    its calls the wait watches cheap signs (worker processes, experiment refs) and asks DVC only
    when they say the queue may have moved on, or once a minute."""
    deadline = time.monotonic() + timeout
    stalled = 0  # polls in a row with a task queued and no worker (one alone may be workers still starting)
    refs, moved = exp_refs(repo), True
    while True:
        status = run(["dvc", "queue", "status"], repo)
        rows = {n: line for line in status.splitlines() for n in names if f" {n} " in f" {line} "}
        if len(rows) == len(names) and all(("Success" in r or "Failed" in r) for r in rows.values()):
            return rows, status
        stalled = stalled + 1 if ("Worker status: 0 active, 0 idle" in status
                                  and any("Queued" in r for r in rows.values())) else 0
        if stalled == 2:
            start_workers(repo, log)
            stalled = 0
        assert time.monotonic() < deadline, f"queue did not finish:\n{status}"
        if stalled:
            time.sleep(10)
            continue
        asked, cap = time.monotonic(), 10 if moved else 60  # just after a task ended DVC may lag its ref a little
        time.sleep(3)
        while time.monotonic() - asked < cap and workers_running(repo) and exp_refs(repo) == refs:
            time.sleep(3)
        now = exp_refs(repo)
        moved, refs = now != refs, now


def why_failed(repo: Path, name: str) -> str:
    """What DVC kept of a failed task: its output log (empty when it failed before any stage ran)
    and the tail of each worker's log."""
    proc = subprocess.run(["dvc", "queue", "logs", name], cwd=repo, env=env(), capture_output=True, text=True)
    workers = sorted((repo / ".dvc/tmp/exps/celery").glob("dvc-exp-worker-*.out"))
    tails = "".join(f"\n--- {w.name}:\n" + "\n".join(w.read_text(errors="replace").splitlines()[-40:]) for w in workers)
    return f"dvc queue logs {name}:\n{(proc.stdout + proc.stderr)[-3000:]}{tails}"


def test_queued_sweep_reuses_the_cached_features(alpha_commit, tmp_path):
    """The sweep of docs/experiments.md: queue three mixup values, run them two at a time, compare. DVC's queue
    with two workers has known races (treeverse/dvc#10673: a task fails inside DVC; #10562: workers
    exit with a task still queued); the documented remedy (queue a failed value again) is applied
    once, with a warning that carries DVC's logs, and a value that fails twice fails the test."""
    repo = alpha_commit
    log = tmp_path / "queue-start.log"
    names = queue_values(repo, ["0", "0.2", "0.4"])
    try:
        start_workers(repo, log)
        rows, status = wait_for_queue(repo, list(names.values()), log)
        failed = [alpha for alpha, n in names.items() if "Failed" in rows[n]]
        if failed:
            warnings.warn(f"dvc queue failed mixup.alpha={failed}; queued again. "
                          + "\n".join(why_failed(repo, names[a]) for a in failed), stacklevel=2)
            retried = queue_values(repo, failed)
            start_workers(repo, log)
            rows2, status = wait_for_queue(repo, list(retried.values()), log)
            names.update(retried)
            rows.update(rows2)
        bad = [a for a, n in names.items() if "Success" not in rows[n]]
        assert not bad, f"mixup.alpha={bad} failed:\n{status}\n" + "\n".join(why_failed(repo, names[a]) for a in bad)
    finally:
        subprocess.run(["dvc", "queue", "stop"], cwd=repo, env=env(), capture_output=True)
    for alpha, name in names.items():
        log_text = run(["dvc", "queue", "logs", name], repo)
        ran = ran_stages(log_text)
        assert not ran & UPSTREAM, f"alpha={alpha}: stages upstream of training reran: {ran & UPSTREAM}"
        if alpha == "0.2":  # the one new value really trained (0 and 0.4 come from the run cache / HEAD);
            # a retried task may find what its failed attempt trained in the run cache
            done = ran | (set(re.findall(r"Stage '([^']+)' is cached", log_text)) if alpha in failed else set())
            assert {"baseline@0", "pretrain", "ensemble"} <= done, log_text[-3000:]
    table = run(["dvc", "exp", "show", "--md", "--only-changed"], repo)
    assert "mixup.alpha" in table and all(n in table for n in names.values()), table
    assert not any(s.split("@")[0] in table for s in ("features", "prepare"))  # nothing upstream changed


def test_training_stage_relaunches_under_torchrun_and_only_rank0_writes(repo, first_repro):
    """dist.nproc_per_node: 2 makes the unchanged stage command run as 2 gloo processes."""
    params_file = repo / "params.yaml"
    text = params_file.read_text()
    assert "nproc_per_node: 1" in text
    params_file.write_text(text.replace("nproc_per_node: 1", "nproc_per_node: 2", 1))
    metrics_file = repo / "metrics" / "baseline" / "fold1.json"
    metrics_file.unlink()
    proc = subprocess.run([sys.executable, "stages/train.py", "baseline", "1"], cwd=repo,
                          env={**env(), "FAT_LOG": "INFO"},
                          capture_output=True, text=True)
    params_file.write_text(text)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "relaunching under torchrun" in out and "rank 1/2" in out and "rank 0/2" in out
    assert out.count("baseline@1 done") == 1  # only rank 0 finishes by writing
    result = json.loads(metrics_file.read_text())
    assert result["fold"] == 1 and 0 < result["lwlrap"] <= 1
    assert not (repo / "data" / "checkpoints" / "baseline@1.pt").exists()  # cleared after success
