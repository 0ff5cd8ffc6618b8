"""dvc.yaml wiring: every stage lists (exactly) the fat/ modules its script imports, transitively,
and the params sections it reads; metrics are declared with cache: false."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    """fat modules imported anywhere in a file (module level or inside functions)."""
    mods = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            mods |= {a.name for a in node.names if a.name.startswith("fat.")}
        elif isinstance(node, ast.ImportFrom) and node.module and (node.module == "fat" or node.module.startswith("fat.")):
            if node.module == "fat":
                mods |= {f"fat.{a.name}" for a in node.names}
            else:
                mods.add(node.module)
    return mods


def fat_closure(script: Path) -> set[str]:
    """Paths (relative to the repo) of every fat/ module reachable from `script`."""
    seen: set[str] = set()
    todo = list(_imports(script))
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        path = ROOT / (mod.replace(".", "/") + ".py")
        if not path.exists():
            raise AssertionError(f"{script}: imports {mod}, which is not a module file")
        seen.add(mod)
        todo += list(_imports(path))
    return {m.replace(".", "/") + ".py" for m in seen}


def stages():
    """(name, cmd, deps) for every stage of dvc.yaml, foreach/matrix templates taken as written."""
    doc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    for name, st in doc["stages"].items():
        body = st.get("do", st)
        yield name, body["cmd"], [d if isinstance(d, str) else next(iter(d)) for d in body.get("deps", [])], body


def test_every_stage_script_exists_and_is_a_dep():
    for name, cmd, deps, _ in stages():
        script = cmd.split()[1]
        assert (ROOT / script).exists(), f"{name}: {script} missing"
        assert script in deps, f"{name}: its script {script} is not in deps"


@pytest.mark.parametrize("name,cmd,deps,body", list(stages()), ids=[s[0] for s in stages()])
def test_deps_list_exactly_the_imported_fat_modules(name, cmd, deps, body):
    needed = fat_closure(ROOT / cmd.split()[1])
    listed = {d for d in deps if d.startswith("fat/") and d.endswith(".py")}
    # data folders beside a module (fat/corrections/ for fat/corrections.py) are deps exactly when it is imported
    data_dirs = {d for d in deps if d.startswith("fat/") and not d.endswith(".py")}
    assert data_dirs == {m[:-3] for m in needed if (ROOT / m[:-3]).is_dir()}, f"{name}: data folders {data_dirs}"
    assert needed - listed == set(), f"{name}: imports but does not depend on {sorted(needed - listed)}"
    assert listed - needed == set(), f"{name}: depends on modules it never imports {sorted(listed - needed)}"


def test_metrics_are_not_cached():
    for name, _, _, body in stages():
        for m in body.get("metrics", []):
            assert isinstance(m, dict) and next(iter(m.values())).get("cache") is False, f"{name}: metric {m} is cached"


def test_params_declared_exist_in_params_yaml():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, _, _, body in stages():
        for p in body.get("params", []):
            node = params
            for part in str(p).split("."):
                assert isinstance(node, dict) and part in node, f"{name}: param {p} not in params.yaml"
                node = node[part]


def test_closure_helper_sees_transitive_imports():
    # family imports train, which imports predict: the closure must reach predict.py
    assert "fat/predict.py" in fat_closure(ROOT / "stages/train.py")
    assert "fat/synth.py" in fat_closure(ROOT / "stages/prepare.py")  # via fat.prepare
    assert "fat/synth.py" not in fat_closure(ROOT / "stages/features.py")


def test_one_headline_metrics_file_and_every_other_figure_file_is_an_uncached_output():
    metrics = [next(iter(m)) for _, _, _, body in stages() for m in body.get("metrics", [])]
    assert metrics == ["metrics/summary.json"]  # what `dvc exp show` and `dvc metrics diff` show
    for name, _, _, body in stages():
        for o in body.get("outs", []):
            path = o if isinstance(o, str) else next(iter(o))
            if path.startswith("metrics/"):
                assert isinstance(o, dict) and o[path].get("cache") is False, f"{name}: {path} is cached (git must carry it)"


def test_artifacts_are_models_inside_the_ensemble_bundle():
    import re

    doc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    bundle = next(next(iter(o)) if isinstance(o, dict) else o for o in doc["stages"]["ensemble"]["outs"]
                  if (next(iter(o)) if isinstance(o, dict) else o) == "data/models/ensemble")
    arts = doc["artifacts"]
    assert set(arts) == {"ensemble", "baseline", "finetune", "retrain"}
    for name, a in arts.items():
        assert re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", name)  # DVC's artifact name rule
        assert a["type"] == "model" and a["desc"] and a["labels"] and "audio-tagging" in a["labels"]
        assert a["path"] == bundle if name == "ensemble" else a["path"] == f"{bundle}/{name}"
