"""`fat bench`'s stage-overhead figures: what one pipeline stage costs beyond its own work.

In a throwaway DVC repository (no git) with a directory of `files` small files (like data/raw's
wavs) and its digest file (like data/manifest/), three stages run under `dvc repro -f -s`:

- `empty`: `python -c pass`, depending on the digest file: DVC's own cost per stage (start-up,
  dependency and output hashing, the lock file rewrite) plus an interpreter start;
- `imports`: a stage that imports what the training stages import (`fat.training.members`:
  torch, pandas, the model and training code) and writes one small file: the whole overhead such
  a stage pays before and after its work;
- `directory`: `python -c pass` depending on the directory itself, for the cost of a directory
  dependency of `files` files per stage (what data/manifest/ saves).

Each figure is a wall-clock median over `rounds` runs, with the stage's own work (measured inside
the command) subtracted; then a no-op `dvc repro` and `dvc status` of the repository."""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

PROBE = textwrap.dedent("""\
    import json, sys, time
    t0 = time.perf_counter()
    from fat.training import members  # noqa: F401  what the training stages import
    t1 = time.perf_counter()
    with open(sys.argv[1], "w") as f:
        f.write("ok\\n")
    t2 = time.perf_counter()
    with open(sys.argv[2], "w") as f:
        json.dump({"imports_s": t1 - t0, "own_work_s": t2 - t1}, f)
    """)


def _env() -> dict:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": path}
    root = str(Path(__file__).resolve().parents[2])  # the probe imports this checkout's fat
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _run(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {cwd} ({proc.returncode}):\n"
                           f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return wall


def make_repo(root: Path, files: int) -> None:
    """The throwaway repository: data/in/ with `files` files, data/in.json, dvc.yaml."""
    root.mkdir(parents=True)
    src = root / "data" / "in"
    src.mkdir(parents=True)
    for i in range(files):
        (src / f"{i:06d}.wav").write_bytes(i.to_bytes(4, "little") * 256)  # 1 KB each, distinct
    (root / "data" / "in.json").write_text(json.dumps({"files": files}) + "\n")
    (root / "probe.py").write_text(PROBE)
    py = Path(sys.executable).as_posix()
    stages = {
        "empty": {"cmd": f"{py} -c pass", "deps": ["data/in.json"], "outs": []},
        "imports": {"cmd": f"{py} probe.py out/imports.txt timing.json", "deps": ["probe.py", "data/in.json"],
                    "outs": ["out/imports.txt"]},
        "directory": {"cmd": f"{py} -c pass", "deps": ["data/in"], "outs": []},
    }
    for s in stages.values():
        if not s["outs"]:
            del s["outs"]
    (root / "out").mkdir()
    (root / "dvc.yaml").write_text(json.dumps({"stages": stages}, indent=2) + "\n")  # JSON is YAML
    _run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], root)
    (root / ".dvc" / "config").write_text("[core]\n    analytics = false\n    no_scm = true\n"
                                          "[cache]\n    type = hardlink,symlink,copy\n")
    _run([sys.executable, "-m", "dvc", "repro", "-q"], root)


def measure(workdir: str | Path | None = None, files: int = 3000, rounds: int = 3) -> dict:
    work = Path(tempfile.mkdtemp(prefix="fat-overhead-", dir=workdir))
    try:
        repo = work / "repo"
        make_repo(repo, files)
        dvc = [sys.executable, "-m", "dvc"]
        names = ("empty", "imports", "directory", "python", "noop_repro", "status")
        walls: dict[str, list[float]] = {name: [] for name in names}
        inner = []
        for _ in range(rounds):  # interleaved, so that load from other processes hits every figure alike
            walls["python"].append(_run([sys.executable, "-c", "pass"], repo))
            for stage in ("empty", "imports", "directory"):
                walls[stage].append(_run(dvc + ["repro", "-f", "-s", "-q", stage], repo))
            inner.append(json.loads((repo / "timing.json").read_text()))
            walls["noop_repro"].append(_run(dvc + ["repro", "-q"], repo))
            walls["status"].append(_run(dvc + ["status", "-q"], repo))
        med = {k: statistics.median(v) for k, v in walls.items()}
        own = statistics.median(t["own_work_s"] for t in inner)
        return {
            "files": files, "rounds": rounds,
            "stage_overhead_s": round(med["imports"] - own, 2),  # a train/predict stage's wall minus its own work
            "dvc_per_stage_s": round(med["empty"] - med["python"], 2),
            "stage_imports_s": round(statistics.median(t["imports_s"] for t in inner), 2),
            "directory_dep_s": round(med["directory"] - med["empty"], 2),
            "noop_repro_s": round(med["noop_repro"], 2), "status_s": round(med["status"], 2),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def summary(o: dict) -> str:
    return (f"stage overhead (a training stage's wall time minus its own work, median of {o['rounds']}): "
            f"{o['stage_overhead_s']:.2f} s, of which DVC {o['dvc_per_stage_s']:.2f} s "
            f"and imports {o['stage_imports_s']:.2f} s; "
            f"a dependency on a directory of {o['files']:,} files adds {o['directory_dep_s']:.2f} s "
            f"per stage; no-op dvc repro {o['noop_repro_s']:.2f} s, dvc status {o['status_s']:.2f} s (3 stages)")
