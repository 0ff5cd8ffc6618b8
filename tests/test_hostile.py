"""Hostile input (tests/hostile_cases.py builds the cases): every malformed or unusual data directory
and every bad data param ends in one clear message naming the file, the row and the problem — in
`fat validate` and in the `prepare` stage, in-process for every case and as real subprocesses for a
representative subset, and under `dvc repro` — or is accepted and counted where accepting is right.
Nothing is ever written outside the data folders."""
from __future__ import annotations

import json
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import hostile_cases as hc
from fat.errors import DataError
from fat.tools import cli

ROOT = Path(__file__).resolve().parents[1]
ROOT_USER = hasattr(os, "geteuid") and os.geteuid() == 0
SUBSET = [c for c in hc.CASES if c.subprocess]


def _skip_if_root(case):
    if case.needs_non_root and ROOT_USER:
        pytest.skip("running as root: permission bits do not stop root's reads")


def _has_all(text: str, needles) -> list[str]:
    low = text.lower()
    return [n for n in needles if n.lower() not in low]


# accepted cases: what must have been imported and counted
def _stats(s) -> dict:
    return json.loads((s.proj / "metrics" / "prepare.json").read_text())


ACCEPT_CHECKS = {
    "train_curated.csv with a UTF-8 BOM": lambda s: _stats(s)["curated_clips"] == 3,
    "CRLF line endings": lambda s: _stats(s)["noisy_clips"] == 2,
    "blank lines between rows": lambda s: _stats(s)["curated_clips"] == 3,
    "non-ASCII UTF-8 fname": lambda s: (s.proj / "data/raw/train_curated/café_ü.wav").is_file()
    and _stats(s)["curated_clips"] == 4,
    "wav is a symlink to a wav elsewhere": lambda s: not (s.proj / "data/raw/train_curated/c1.wav").is_symlink()
    and (s.proj / "data/raw/train_curated/c1.wav").stat().st_ino == (s.src.parent / "library/c1.wav").stat().st_ino,
    "stereo, one channel silent": lambda s: _stats(s)["formats"].get("PCM_16 stereo 44100 Hz") == 1,
    "float wav, peak 1.5 (over full scale)": lambda s: _stats(s)["over_full_scale"] == 1,
    "sample rate 8 kHz": lambda s: _stats(s)["formats"].get("PCM_16 mono 8000 Hz") == 1,
    "sample rate 192 kHz": lambda s: _stats(s)["formats"].get("PCM_24 mono 192000 Hz") == 1,
    "data.corrections: '' (none)": lambda s: _stats(s)["corrections"] == {},
    "corrections: comment lines and a valid drop": lambda s: _stats(s)["corrections"] == {"relabel": 0, "drop": 1}
    and _stats(s)["curated_clips"] == 2,
}


def test_every_accepted_case_has_a_reason_and_a_count():
    for case in hc.CASES:
        if case.expect == "accept":
            assert case.why and case.name in ACCEPT_CHECKS, case.name
        else:
            assert case.needles, case.name
    assert len(hc.CASES) > 100 and len({c.name for c in hc.CASES}) == len(hc.CASES)


def _run_stage(s, monkeypatch) -> tuple[int, str]:
    """stages/prepare.py as `python stages/prepare.py` runs it: (exit status, its error message)."""
    monkeypatch.chdir(s.proj)
    monkeypatch.setattr(sys, "argv", [str(ROOT / "stages/prepare.py")])
    try:
        runpy.run_path(str(ROOT / "stages/prepare.py"), run_name="__main__")
    except SystemExit as e:
        assert isinstance(e.code, str), f"exit without a message: {e.code!r}"
        return 1, e.code
    return 0, ""


@pytest.mark.parametrize("case", hc.CASES, ids=hc.CASE_IDS)
def test_prepare_stage(case, tmp_path, monkeypatch):
    _skip_if_root(case)
    s = hc.setup(case, tmp_path)
    before = hc.tree(tmp_path / "w")
    rc, msg = _run_stage(s, monkeypatch)  # any exception other than SystemExit fails the test: a traceback
    wrote = hc.outside(before, hc.tree(tmp_path / "w"), rc == 0)
    assert not wrote, f"written outside the data folders: {wrote}"
    if case.expect == "refuse":
        assert rc != 0, "accepted without a word"
        assert msg.startswith("prepare: error: ")
        assert not _has_all(msg, case.needles), f"message lacks {_has_all(msg, case.needles)}:\n{msg}"
        assert not (s.proj / "data" / "raw").exists()
    else:
        assert rc == 0, msg
        assert ACCEPT_CHECKS[case.name](s), _stats(s)


CLI_CASES = [c for c in hc.CASES if c.cli is not None]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.name for c in CLI_CASES])
def test_fat_validate(case, tmp_path, capsys, monkeypatch):
    _skip_if_root(case)
    s = hc.setup(case, tmp_path)
    monkeypatch.chdir(s.proj)
    before = hc.tree(tmp_path / "w")
    rc = cli.main(hc.cli_argv(case, s))
    out = capsys.readouterr()
    text = out.out + out.err
    assert not hc.outside(before, hc.tree(tmp_path / "w"), False), "fat validate wrote a file"
    if case.expect == "refuse":
        assert rc != 0 and "OK" not in out.out, text
        assert not _has_all(text, case.needles), f"output lacks {_has_all(text, case.needles)}:\n{text}"
    else:
        assert rc == 0, text


@pytest.mark.parametrize("case", SUBSET, ids=[c.name for c in SUBSET])
def test_subprocesses(case, tmp_path):
    """The real thing: `python stages/prepare.py` and `fat validate` as processes."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FAT_LOG": "WARNING", "CI": "1"}
    s = hc.setup(case, tmp_path)
    before = hc.tree(tmp_path / "w")
    cmds = [[sys.executable, str(ROOT / "stages/prepare.py")]]
    if case.cli is not None:
        cmds.append([sys.executable, "-m", "fat.tools.cli", *hc.cli_argv(case, s)])
    for cmd in cmds:
        proc = subprocess.run(cmd, cwd=s.proj, env=env, capture_output=True, text=True, timeout=300)
        text = proc.stdout + proc.stderr
        assert "Traceback" not in text, text
        assert proc.returncode != 0, text
        assert not _has_all(text, case.needles), f"{cmd[-1]}: output lacks {_has_all(text, case.needles)}:\n{text}"
    assert not hc.outside(before, hc.tree(tmp_path / "w"), False)


def test_unknown_label_names_the_first_ten_rows_and_the_count(tmp_path, monkeypatch):
    case = next(c for c in hc.CASES if c.name == "unknown label on 12 rows")
    s = hc.setup(case, tmp_path)
    _, msg = _run_stage(s, monkeypatch)
    line = next(ln for ln in msg.splitlines() if "Unicorn_song" in ln)
    assert "train_curated.csv: column labels: 1 label(s) not in the vocabulary" in line
    assert "'Unicorn_song' on 12 rows: " in line and "'u09.wav'" in line and "'u10.wav'" not in line
    assert "(2 more)" in line


def test_data_error_is_the_one_exception_for_data_problems(tmp_path):
    from fat import params
    from fat.data import audio, corrections
    from fat.data import tables as data

    assert issubclass(audio.AudioError, DataError) and issubclass(DataError, ValueError)
    (tmp_path / "sample_submission.csv").write_text("fname,Meow,Meow\nx.wav,0,0\n")
    with pytest.raises(DataError, match="duplicate column name 'Meow'"):
        data.vocabulary(tmp_path)
    assert issubclass(params.ParamsError, DataError)
    with pytest.raises(DataError, match=r"data\.max_seconds must be finite, got nan"):
        params.Data.build({"source": "synthetic", "max_seconds": float("nan")}, "data")
    with pytest.raises(DataError, match=r"data\.source: missing") as e:
        params.Data.build({"n_jobs": 1, "min_peak_dbfs": 3}, "data")
    assert len(e.value.problems) == 2  # every bad key of the section at once
    with pytest.raises(DataError, match="data.corrections"):
        corrections.resolve(5)


def test_parallel_scan_refuses_the_same_special_files(tmp_path):
    """The worker pool path (more than 64 files) meets FIFOs and loops without hanging or raising."""
    from fat.data import validate

    src = hc.base_layout(tmp_path / "src")
    rows = {**hc.TABLES["train_noisy.csv"][1], **{f"x{i:03d}.wav": "Meow" for i in range(70)}}
    for f in rows:
        hc.wav(src / "train_noisy" / f)  # 72 files: more than the 64 the scan does without workers
    hc.write(src, "train_noisy.csv", hc.labels_csv(rows))
    os.unlink(src / "train_noisy" / "x010.wav")
    os.mkfifo(src / "train_noisy" / "x010.wav")
    hc.replace("train_noisy/x020.wav", "loop")(src)
    report = validate.validate(src, n_jobs=2)
    problems = dict(zip(report.bad["fname"], report.bad["problem"]))
    assert problems == {"x010.wav": "is a FIFO (named pipe), not a regular file", "x020.wav": "symlink loop"}


@pytest.mark.e2e
def test_dvc_repro_prepare_shows_the_message(tmp_path):
    """`dvc repro prepare` on a hostile data.source: the stage's message, no traceback, nothing written."""
    case = next(c for c in hc.CASES if c.name == "unknown label on 12 rows")
    s = hc.setup(case, tmp_path)
    repo = s.proj
    for f in ("dvc.yaml", "pyproject.toml"):
        shutil.copy2(ROOT / f, repo / f)
    for d in ("fat", "stages"):
        shutil.copytree(ROOT / d, repo / d, ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(repo), "DVC_NO_ANALYTICS": "1", "FAT_LOG": "WARNING"}
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=repo, env=env, check=True)
    proc = subprocess.run(["dvc", "repro", "prepare"], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in text, text
    assert "prepare: error: " in text and not _has_all(text, case.needles), text
    assert not (repo / "data" / "raw").exists()
