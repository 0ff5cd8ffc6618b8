"""dvc.lock housekeeping: drop the entries of stages the pipeline no longer defines.

DVC keeps a stage's lock entry after the stage disappears from the pipeline (treeverse/dvc#5293).
Here stages disappear whenever the params shrink a `foreach` list: `fat preset fat2019` runs five
folds, going back to the default's three leaves `finetune@3`, `finetune@4`, `retrain@3` … in
dvc.lock for good. Those entries do nothing but cost time: DVC parses and rewrites the whole lock
file (in pure Python) after every stage it runs and on most commands, so every stale entry slows
every `dvc repro`, `dvc status` and `dvc exp run`. `prune` removes them, keeping the file's
formatting (DVC's own YAML writer), and writes it atomically.
"""
from __future__ import annotations

import io
from pathlib import Path

from fat.io import atomic_path


def pipeline_stages(repo_root: str | Path) -> set[str]:
    """Names of the stages `dvc.yaml` defines under the current params (foreach items expanded)."""
    from dvc.repo import Repo

    with Repo(str(repo_root)) as repo:
        return {stage.name for stage in repo.index.stages if getattr(stage, "name", None)}


def stale_entries(lock: dict, stages: set[str]) -> list[str]:
    """Lock entries (in file order) whose stage is not among `stages`."""
    return [name for name in (lock.get("stages") or {}) if name not in stages]


def prune(repo_root: str | Path = ".", stages: set[str] | None = None) -> list[str]:
    """Remove from `<repo_root>/dvc.lock` every entry whose stage is not in the pipeline; returns the
    names removed (empty, and the file untouched, when there are none or no dvc.lock exists)."""
    from ruamel.yaml import YAML

    path = Path(repo_root) / "dvc.lock"
    if not path.exists():
        return []
    if stages is None:
        stages = pipeline_stages(repo_root)
    if not stages:
        raise ValueError(f"{Path(repo_root) / 'dvc.yaml'}: defines no stages; refusing to empty {path}")
    ry = YAML()  # round trip: keeps DVC's layout, so the only diff is the removed entries
    ry.default_flow_style = False
    text = path.read_text()
    doc = ry.load(text)
    if not isinstance(doc, dict) or not isinstance(doc.get("stages"), dict):
        raise ValueError(f"{path}: not a DVC lock file (no `stages` mapping)")
    stale = stale_entries(doc, stages)
    if not stale:
        return []
    for name in stale:
        del doc["stages"][name]
    buf = io.StringIO()
    ry.dump(doc, buf)
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())
    return stale
