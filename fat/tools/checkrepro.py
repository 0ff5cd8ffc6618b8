"""`fat check-repro`: rerun pipeline stages and check that their outputs match dvc.lock byte for byte.

For each stage (the named ones, or every stage of dvc.lock in its order), it runs the stage's
locked command on the locked inputs and compares every output with dvc.lock: a file by the md5
dvc.lock records, a directory file by file (against the files it held before the rerun, which
`dvc status` has just found equal to dvc.lock), so a difference is reported as the first file
inside the directory that differs (or is missing, or is new). Stages are checked one at a time,
each on the inputs dvc.lock describes, so the first stage reported as differing is where a
difference starts, not a consequence of an earlier one.

The workspace is left as it was: before a stage runs, its current outputs are moved aside (into
.dvc/tmp/check-repro/, on the same file system: no copy), and after the comparison the new outputs
are deleted and the originals moved back, also on errors, Ctrl-C and SIGTERM. dvc.lock, params and the DVC
cache are never written. If the process is killed outright, `dvc checkout` restores the outputs
from the cache (and .dvc/tmp/check-repro/ holds the originals of the stage that was running).
It refuses to start when a selected stage is not up to date with dvc.lock (`dvc status`): a
rerun of a changed stage would differ for that reason alone.

`--emulate avx2 --emulate sse4.2` reruns each stage in environments that cap every library at a
smaller instruction set (`fat.repro.EMULATE`), and `--cores 0 --cores 0,1` under `taskset` with
fewer cores: the way to check, on one machine, that outputs do not depend on the CPU.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from fat import repro

BACKUP = Path(".dvc/tmp/check-repro")


@dataclass
class OutputCheck:
    path: str
    locked: str
    got: str | None
    first_difference: str | None = None  # a file inside a directory output, or the output itself

    @property
    def same(self) -> bool:
        return self.first_difference is None


@dataclass
class StageCheck:
    stage: str
    emulation: str
    cores: str
    seconds: float
    outputs: list[OutputCheck] = field(default_factory=list)

    @property
    def same(self) -> bool:
        return all(o.same for o in self.outputs)

    def line(self) -> str:
        where = f"[{self.emulation}, cores {self.cores}]"
        if self.same:
            return f"{self.stage} {where}: identical to dvc.lock ({len(self.outputs)} outputs, {self.seconds:.1f} s)"
        bad = [o for o in self.outputs if not o.same]
        first = bad[0]
        return (f"{self.stage} {where}: DIFFERS in {len(bad)} of {len(self.outputs)} outputs; first: "
                f"{first.path}: {first.first_difference}")


def read_lock(root: Path) -> dict:
    path = root / "dvc.lock"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no dvc.lock; run `dvc repro` first")
    doc = yaml.safe_load(path.read_text()) or {}
    stages = doc.get("stages")
    if not isinstance(stages, dict):
        raise ValueError(f"{path}: not a DVC lock file (no `stages` mapping)")
    return stages


def select(lock: dict, names: list[str]) -> list[str]:
    """Stages to check, in dvc.lock's order: every one, or the named ones (a foreach name such
    as `finetune` stands for all its items)."""
    if not names:
        return [s for s, e in lock.items() if e.get("outs")]
    chosen = []
    for name in names:
        hits = [s for s in lock if s == name or s.split("@")[0] == name]
        if not hits:
            raise KeyError(f"dvc.lock has no stage {name!r} (known: {', '.join(lock)})")
        chosen += [h for h in hits if h not in chosen]
    return [s for s in lock if s in chosen]


def not_up_to_date(root: Path, stages: list[str]) -> dict:
    """`dvc status` of the stages: {stage: what changed} for those not matching dvc.lock."""
    proc = subprocess.run([sys.executable, "-m", "dvc", "status", "--json", *stages], cwd=root,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"dvc status failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return {k: v for k, v in json.loads(proc.stdout or "{}").items() if v}


def md5_file(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_md5s(path: Path) -> dict:
    """{relpath: md5} of every file under a directory."""
    return {p.relative_to(path).as_posix(): md5_file(p) for p in sorted(path.rglob("*")) if p.is_file()}


def compare(root: Path, out: dict, before: dict | None) -> OutputCheck:
    """One output against dvc.lock: a file by its md5; a directory file by file against `before`,
    the md5s of the files it held before the rerun (which `dvc status` found equal to dvc.lock)."""
    rel, locked = out["path"], out.get("md5", "")
    path = root / rel
    if not locked.endswith(".dir"):
        if not path.is_file():
            return OutputCheck(rel, locked, None, "not written by the stage")
        got = md5_file(path)
        return OutputCheck(rel, locked, got, None if got == locked else f"md5 {got}, dvc.lock has {locked}")
    if not path.is_dir():
        return OutputCheck(rel, locked, None, "directory not written by the stage")
    files = file_md5s(path)
    for name in sorted(set(before) | set(files)):
        if name not in files:
            return OutputCheck(rel, locked, None, f"{name}: missing (dvc.lock has it)")
        if name not in before:
            return OutputCheck(rel, locked, None, f"{name}: new (not in dvc.lock)")
        if files[name] != before[name]:
            return OutputCheck(rel, locked, None, f"{name}: md5 {files[name]}, dvc.lock has {before[name]}")
    return OutputCheck(rel, locked, locked)


def _move(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def run_stage(root: Path, name: str, entry: dict, emulation: str = "native",
              cores: str | None = None, log=print) -> StageCheck:
    """Run one locked stage with its outputs moved aside, compare, put the originals back."""
    outs = [o for o in entry.get("outs", []) if "path" in o]
    backup = root / BACKUP / name.replace("/", "_")
    if backup.exists():
        raise RuntimeError(f"{backup}: left by an interrupted check-repro; move its contents back "
                           "(or run `dvc checkout`) and delete it")
    env = {**os.environ, **repro.EMULATE[emulation]}
    cmd = entry["cmd"]
    argv = ["taskset", "-c", cores, "sh", "-c", cmd] if cores else ["sh", "-c", cmd]
    before = {o["path"]: file_md5s(root / o["path"]) for o in outs if str(o.get("md5", "")).endswith(".dir")}
    moved = []
    try:
        for o in outs:
            src = root / o["path"]
            if src.exists() or src.is_symlink():
                _move(src, backup / o["path"])
                moved.append(o["path"])
        t = time.perf_counter()
        proc = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t
        if proc.returncode != 0:
            raise RuntimeError(f"{name}: `{cmd}` failed ({proc.returncode}):\n{proc.stderr.strip()[-3000:]}")
        compared = [compare(root, o, before.get(o["path"])) for o in outs]
        check = StageCheck(name, emulation, cores or "all", seconds, compared)
    finally:
        for o in outs:
            if o["path"] in moved or (root / o["path"]).exists():
                _remove(root / o["path"])
        for rel in moved:
            _move(backup / rel, root / rel)
        shutil.rmtree(backup, ignore_errors=True)
    log(check.line())
    return check


def check(root: Path, names: list[str], emulations: list[str], cores: list[str | None], log=print) -> list[StageCheck]:
    root = Path(root).resolve()
    lock = read_lock(root)
    stages = select(lock, names)
    changed = not_up_to_date(root, stages)
    if changed:
        raise RuntimeError("not up to date with dvc.lock (a rerun would differ for that reason alone; run "
                           f"`dvc repro` first): {json.dumps(changed)[:2000]}")
    results = []
    for name in stages:
        for emulation in emulations:
            for c in cores:
                results.append(run_stage(root, name, lock[name], emulation, c, log=log))
    return results


def _main(args) -> int:
    try:
        return _run(args)
    except RuntimeError as e:
        print(f"fat check-repro: error: {e}", file=sys.stderr)
        return 2


def _terminate(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through run_stage's `finally`, which puts the outputs back


def _run(args) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    for c in args.cores or []:
        if not shutil.which("taskset"):
            raise RuntimeError("--cores needs `taskset` (util-linux)")
        if not all(part.strip().isdigit() for part in c.replace("-", ",").split(",")):
            raise ValueError(f"--cores {c!r}: expected a CPU list such as 0 or 0,1")
    results = check(args.repo, args.stages, args.emulate or ["native"], args.cores or [None])
    differ = [r for r in results if not r.same]
    print(f"{len(results) - len(differ)} of {len(results)} stage runs identical to dvc.lock"
          + (f"; first difference: {differ[0].line()}" if differ else ""))
    if args.json:
        args.json.write_text(json.dumps([{
            "stage": r.stage, "emulation": r.emulation, "cores": r.cores, "seconds": round(r.seconds, 2),
            "same": r.same, "outputs": [o.__dict__ for o in r.outputs]} for r in results], indent=2) + "\n")
    return 1 if differ else 0


def add_parser(sub) -> None:
    p = sub.add_parser("check-repro", help="rerun stages and check their outputs match dvc.lock byte for byte "
                                           "(the workspace is left as it was)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stages", nargs="*", metavar="STAGE",
                   help="stages to check, e.g. features@noisy or finetune (all its folds); default: every stage")
    p.add_argument("--emulate", action="append", choices=sorted(repro.EMULATE),
                   help="also run under this instruction-set cap (repeatable; default: native)")
    p.add_argument("--cores", action="append", metavar="CPUS",
                   help="run under `taskset -c CPUS` (repeatable, e.g. --cores 0 --cores 0,1)")
    p.add_argument("--repo", type=Path, default=Path("."), help="project root (default: the current directory)")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    p.set_defaults(func=_main)

