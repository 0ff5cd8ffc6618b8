"""dvc.yaml wiring: every stage lists (exactly) the fat/ modules its script imports, transitively,
and the params sections it reads; metrics are declared with cache: false."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _module_file(mod: str) -> Path | None:
    """The file of module `mod` (a package's `__init__.py`), or None when it is no module of fat/."""
    base = ROOT / mod.replace(".", "/")
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(path: Path) -> set[str]:
    """fat modules imported anywhere in a file (module level or inside functions): for
    `from fat.pkg import name`, the submodule fat.pkg.name when there is one, else fat.pkg."""
    mods = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            mods |= {a.name for a in node.names if a.name.startswith("fat.")}
        elif (isinstance(node, ast.ImportFrom) and node.module
              and (node.module == "fat" or node.module.startswith("fat."))):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                mods.add(sub if _module_file(sub) is not None else node.module)
    return mods


def fat_closure(script: Path) -> set[str]:
    """Paths (relative to the repo) of every fat/ module reachable from `script`. Package
    `__init__.py` files are empty (a test below keeps them so), so they are no deps."""
    seen: set[str] = set()
    todo = list(_imports(script))
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        path = _module_file(mod)
        if path is None:
            raise AssertionError(f"{script}: imports {mod}, which is not a module file")
        seen.add(mod)
        todo += list(_imports(path))
    files = {_module_file(m).relative_to(ROOT).as_posix() for m in seen}
    return {f for f in files if not f.endswith("/__init__.py")}


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
    # data folders beside a module (fat/corrections/ for fat/data/corrections.py) are deps exactly when it is imported
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
    # members imports the training loop, which imports predict: the closure must reach predict.py
    assert "fat/evaluation/predict.py" in fat_closure(ROOT / "stages/train.py")
    assert "fat/data/synth.py" in fat_closure(ROOT / "stages/prepare.py")  # via fat.data.prepare
    assert "fat/data/synth.py" not in fat_closure(ROOT / "stages/features.py")


def test_package_init_files_are_empty():
    """A package's `__init__.py` runs on every import of a module inside it; empty, it adds nothing
    a stage would have to depend on."""
    inits = sorted((ROOT / "fat").rglob("__init__.py"))
    assert inits, "fat/ has no packages"
    for init in inits:
        assert init.read_text().strip() == "", f"{init.relative_to(ROOT)} is not empty"


def test_training_and_prediction_stages_do_not_depend_on_the_log_mel_computation():
    """They read feature stores only: an edit to the log-mel code must not make them stale."""
    for script in ("stages/train.py", "stages/pretrain.py", "stages/pseudo.py", "stages/predict.py"):
        closure = fat_closure(ROOT / script)
        assert "fat/features/store.py" in closure
        assert {"fat/features/logmel.py", "fat/features/fft.py", "fat/data/audio.py"} & closure == set(), script


def test_one_headline_metrics_file_and_every_other_figure_file_is_an_uncached_output():
    metrics = [next(iter(m)) for _, _, _, body in stages() for m in body.get("metrics", [])]
    assert metrics == ["metrics/summary.json"]  # what `dvc exp show` and `dvc metrics diff` show
    for name, _, _, body in stages():
        for o in body.get("outs", []):
            path = o if isinstance(o, str) else next(iter(o))
            if path.startswith("metrics/"):
                assert isinstance(o, dict) and o[path].get("cache") is False, \
                    f"{name}: {path} is cached (git must carry it)"


def test_artifacts_are_models_inside_the_ensemble_bundle():
    import re

    doc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    bundle = next(next(iter(o)) if isinstance(o, dict) else o for o in doc["stages"]["ensemble"]["outs"]
                  if (next(iter(o)) if isinstance(o, dict) else o) == "data/models/ensemble")
    arts = doc["artifacts"]
    assert set(arts) == {"ensemble", "finetune", "retrain"}
    for name, a in arts.items():
        assert re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", name)  # DVC's artifact name rule
        assert a["type"] == "model" and a["desc"] and a["labels"] and "audio-tagging" in a["labels"]
        assert a["path"] == bundle if name == "ensemble" else a["path"] == f"{bundle}/{name}"
