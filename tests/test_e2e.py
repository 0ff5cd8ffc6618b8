"""End to end: the whole DAG under `dvc repro` on the tiny profile, in a fresh git repo copied from
this checkout; then a no-op repro, and a `dvc exp run -S mixup.alpha=…` that reruns only what
depends on mixup and shows up in `dvc metrics diff`."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fat import data, params

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e


def run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "DVC_NO_ANALYTICS": "1", "FAT_LOG": "WARNING"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
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
    params.apply_preset("tiny", dst / "params.yaml")
    run(["git", "init", "-q"], dst)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"], dst)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"], dst)
    return dst


@pytest.fixture(scope="module")
def first_repro(repo) -> str:
    return run(["dvc", "repro"], repo)


def test_full_dag_runs_and_writes_the_contracted_outputs(repo, first_repro):
    p = params.load(repo / "params.yaml")
    folds = p["cv"]["folds"]
    expected = {"prepare", "folds", "pretrain", "ensemble"} | {f"features@{s}" for s in ("curated", "noisy", "test")}
    for fam in ("baseline", "finetune", "retrain"):
        expected |= {f"{fam}@{k}" for k in folds} | {f"predict@{fam}-{k}" for k in folds} | {f"score@{fam}"}
    expected |= {f"pseudo@{k}" for k in folds}
    assert ran_stages(first_repro) == expected

    classes = data.vocabulary(repo / "data/raw")
    assert len(classes) == p["synth"]["n_classes"]
    sub = pd.read_csv(repo / "data/submission.csv")
    test_fnames = pd.read_csv(repo / "data/raw/sample_submission.csv")["fname"]
    assert list(sub.columns) == ["fname"] + classes
    assert sorted(sub["fname"]) == sorted(test_fnames)
    probs = sub[classes].to_numpy()
    assert ((probs >= 0) & (probs <= 1)).all() and probs.std() > 0

    ens = json.loads((repo / "metrics/ensemble.json").read_text())
    assert 0 < ens["lwlrap"] <= 1 and 0 < ens["test_lwlrap"] <= 1
    assert set(ens["members"]) == {"baseline", "finetune", "retrain"}
    assert set(ens["kept"]) | set(ens["dropped"]) == set(ens["members"])
    for fam in ("baseline", "finetune", "retrain"):
        m = json.loads((repo / f"metrics/{fam}.json").read_text())
        assert set(m["folds"]) == {f"fold{k}" for k in folds}
        assert m["oof_clips"] == p["synth"]["curated"]["n_clips"]  # every curated clip scored exactly once
        for key in ("oof_lwlrap", "oof_lwlrap_tta", "test_lwlrap", "test_lwlrap_tta"):
            assert 0 < m[key] <= 1
    for k in folds:
        rep = json.loads((repo / f"metrics/pseudo/fold{k}.json").read_text())
        assert rep["noisy_clips"] == p["synth"]["noisy"]["n_clips"]


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


def test_folds_train_in_parallel_with_dvc_wait_for_lock(repo, first_repro):
    """README's parallel-folds recipe: one `dvc --wait-for-lock repro -s` per fold, two at a time.
    Both folds run, the lock file records both, and the results equal the serial run's."""
    before = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    proc = subprocess.run("printf 'baseline@%s\\n' 0 1 | xargs -P 2 -I{} dvc --wait-for-lock repro -f -s {}",
                          shell=True, cwd=repo, capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert ran_stages(proc.stdout + proc.stderr) == {"baseline@0", "baseline@1"}
    after = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    for stage in ("baseline@0", "baseline@1"):
        assert after[stage]["outs"] == before[stage]["outs"], f"{stage}: outputs differ from the serial run"
    assert json.loads(run(["dvc", "status", "--json"], repo)) == {}


def _commit(repo: Path, message: str) -> None:
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", message], repo)


def test_shared_remote_fresh_clone_pulls_and_does_no_work(repo, first_repro, tmp_path):
    """The team workflow of the README: push outputs and run cache to a shared DVC remote (a local
    directory here), clone afresh, pull; the clone is up to date and its metrics are the same."""
    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "-d", "shared", str(remote)], repo)
    _commit(repo, "results + shared remote")
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


def test_exp_run_reruns_only_what_depends_on_mixup(repo, first_repro):
    _commit(repo, "results")
    out = run(["dvc", "exp", "run", "-S", "mixup.alpha=0.4"], repo)
    ran = ran_stages(out)
    upstream = {"prepare", "folds", "features@curated", "features@noisy", "features@test"}
    assert not ran & upstream, f"stages upstream of training reran: {ran & upstream}"
    assert {"baseline@0", "pretrain", "finetune@0", "retrain@0", "ensemble"} <= ran
    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], repo))
    assert "metrics/ensemble.json" in diff
    # every training family's metrics move (its per-fold val_loss at least; on the tiny profile
    # a near-constant model can keep the same ranking, hence the same lwlrap)
    for fam in ("baseline", "pretrain", "finetune", "retrain"):
        assert any(k.startswith(f"metrics/{fam}") for k in diff), f"no {fam} metric changed: {sorted(diff)}"
    params_diff = json.loads(run(["dvc", "params", "diff", "--json"], repo))
    assert params_diff["params.yaml"]["mixup.alpha"]["new"] == 0.4


def test_training_stage_relaunches_under_torchrun_and_only_rank0_writes(repo, first_repro):
    """dist.nproc_per_node: 2 makes the unchanged stage command run as 2 gloo processes."""
    params_file = repo / "params.yaml"
    text = params_file.read_text()
    assert "nproc_per_node: 1" in text
    params_file.write_text(text.replace("nproc_per_node: 1", "nproc_per_node: 2", 1))
    metrics_file = repo / "metrics" / "baseline" / "fold1.json"
    metrics_file.unlink()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "FAT_LOG": "INFO"}
    proc = subprocess.run([sys.executable, "stages/train.py", "baseline", "1"], cwd=repo, env=env,
                          capture_output=True, text=True)
    params_file.write_text(text)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "relaunching under torchrun" in out and "rank 1/2" in out and "rank 0/2" in out
    assert out.count("baseline@1 done") == 1  # only rank 0 finishes by writing
    result = json.loads(metrics_file.read_text())
    assert result["fold"] == 1 and 0 < result["lwlrap"] <= 1
    assert not (repo / "data" / "checkpoints" / "baseline@1.pt").exists()  # cleared after success
