"""dvc.lock pruning: on a real git + DVC repository whose `foreach` list shrinks from three items to
two, DVC keeps the third item's entry; `fat.lock.prune` (and `fat prune-lock`, `fat preset`) removes
exactly that entry, byte-for-byte keeps the rest, and DVC still sees the pipeline up to date."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fat.tools import cli, lock

ROOT = Path(__file__).resolve().parents[1]
DVC_YAML = """\
stages:
  make:
    foreach: ${folds}
    do:
      cmd: python -c "import sys; open(f'out{sys.argv[1]}.txt', 'w').write(sys.argv[1])" ${item}
      outs:
        - out${item}.txt
  total:
    cmd: cat out*.txt > total.txt
    deps: [out0.txt, out1.txt]
    outs: [total.txt]
"""


def dvc(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"dvc {args}: {proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture
def shrunk(tmp_path) -> Path:
    """A repo run with folds [0, 1, 2], then params changed to [0, 1] and run again."""
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc(["init", "-q"], repo)
    (repo / "dvc.yaml").write_text(DVC_YAML)
    (repo / "params.yaml").write_text(yaml.safe_dump({"folds": [0, 1, 2]}))
    dvc(["repro", "-q"], repo)
    (repo / "params.yaml").write_text(yaml.safe_dump({"folds": [0, 1]}))
    dvc(["repro", "-q"], repo)
    return repo


def test_dvc_keeps_the_entry_of_a_stage_that_left_the_pipeline(shrunk):
    """The behaviour prune exists for (treeverse/dvc#5293); if DVC ever drops the entry itself,
    this fails and the module can go."""
    assert "make@2" in yaml.safe_load((shrunk / "dvc.lock").read_text())["stages"]


def test_prune_removes_only_the_stale_entry_and_keeps_the_rest_verbatim(shrunk):
    before = (shrunk / "dvc.lock").read_text()
    assert lock.pipeline_stages(shrunk) == {"make@0", "make@1", "total"}
    assert lock.prune(shrunk) == ["make@2"]
    after = (shrunk / "dvc.lock").read_text()
    entries = yaml.safe_load(before)["stages"]
    del entries["make@2"]
    assert yaml.safe_load(after) == {"schema": "2.0", "stages": entries}
    lines = before.splitlines()
    start = lines.index("  make@2:")
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("  ") and lines[i][2] != " ")
    assert after.splitlines() == lines[:start] + lines[end:]  # exactly that entry's block is gone
    assert "up to date" in dvc(["status"], shrunk)
    assert "up to date" in dvc(["repro"], shrunk)  # nothing reruns for the removal
    assert lock.prune(shrunk) == []  # idempotent
    assert (shrunk / "dvc.lock").read_text() == after
    assert not [p for p in shrunk.iterdir() if p.name.startswith(".dvc.lock")]  # no temp file left


def test_prune_lock_command_and_preset_report_what_they_removed(shrunk, capsys):
    assert cli.main(["prune-lock", "--repo", str(shrunk)]) == 0
    out = capsys.readouterr().out
    assert "removed 1 entries" in out and "make@2" in out
    assert cli.main(["prune-lock", "--repo", str(shrunk)]) == 0
    assert "nothing to remove" in capsys.readouterr().out


def test_preset_prunes_the_folds_it_drops(tmp_path, capsys):
    """`fat preset tiny` on the project (3 folds -> 2) removes the fold-2 entries it orphans."""
    repo = tmp_path / "p"
    repo.mkdir()
    for name in ("dvc.yaml", "dvc.lock", "params.yaml"):
        shutil.copy(ROOT / name, repo / name)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc(["init", "-q"], repo)
    assert cli.main(["preset", "tiny", "--params", str(repo / "params.yaml")]) == 0
    out = capsys.readouterr().out
    names = set(yaml.safe_load((repo / "dvc.lock").read_text())["stages"])
    assert not any(n.endswith(("@2", "-2")) for n in names), names
    assert {"finetune@1", "retrain@1", "predict@retrain", "ensemble"} <= names
    assert "finetune@2" in out and "retrain@2" in out


def test_no_lock_file_is_left_alone_and_a_bad_one_is_named(tmp_path):
    assert lock.prune(tmp_path, stages={"a"}) == []
    assert not (tmp_path / "dvc.lock").exists()
    (tmp_path / "dvc.lock").write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match=r"dvc\.lock: not a DVC lock file"):
        lock.prune(tmp_path, stages={"a"})
    with pytest.raises(ValueError, match=r"defines no stages"):
        lock.prune(tmp_path, stages=set())


def test_committed_lock_holds_exactly_the_default_pipelines_stages():
    """dvc.lock is committed matching the default params: no entry of a stage they do not define
    (every stale entry slows every DVC command), and none missing."""
    names = set(yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"])
    assert names == lock.pipeline_stages(ROOT)


def test_the_baseline_family_is_opt_in_and_nothing_downstream_reads_it(tmp_path):
    """The default DAG has no baseline@k stage; `baseline.folds` adds exactly those members, and no
    other stage depends on their outputs (so adding them reruns nothing else)."""
    repo = tmp_path / "p"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, repo / name)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc(["init", "-q"], repo)
    default = set(dvc(["stage", "list", "--name-only"], repo).split())
    assert {"finetune@0", "retrain@2", "predict@finetune", "label_issues", "ensemble"} <= default
    assert not [n for n in default if n.startswith(("baseline", "predict@baseline"))], sorted(default)
    params_file = repo / "params.yaml"
    raw = yaml.safe_load(params_file.read_text())
    raw["baseline"]["folds"] = [0, 2]
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    opted = set(dvc(["stage", "list", "--name-only"], repo).split())
    assert opted - default == {"baseline@0", "baseline@2"}
    doc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    readers = [name for name, st in doc["stages"].items() if name != "baseline"
               and any(str(d).startswith("data/models/baseline") for d in st.get("do", st).get("deps", []))]
    assert readers == []
