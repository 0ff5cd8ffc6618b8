"""Adversarial data directories and params for `fat validate` and the `prepare` stage.

Each :class:`Case` starts from a small valid Kaggle-layout directory (:func:`base_layout`) and
breaks one thing. `expect` says how it must end:

* ``refuse``: one clear message that contains every string of `needles` (the file, the row's fname,
  the problem), exit status non-zero, no Python traceback, nothing written anywhere;
* ``accept``: imported, and `why` says why accepting is right (the stage's counts are checked in
  tests/test_hostile.py where there is something to count).

This module builds the cases without importing `fat`, so it can also drive an older checkout:
``python tests/hostile_cases.py --code DIR --tmp SCRATCH`` runs every case through `fat validate`
and `stages/prepare.py` (each in a forked child of one process that imported DIR's code) and prints how
each ends (clear, unclear message, traceback, silent accept, hang, wrote outside the data folders).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml

SR = 44100
CLASSES = ["Meow", "Bark", "Rain"]
TABLES = {  # csv -> (audio folder, {fname: labels})
    "train_curated.csv": ("train_curated", {"c1.wav": "Meow", "c2.wav": "Bark,Rain", "c3.wav": "Rain"}),
    "train_noisy.csv": ("train_noisy", {"n1.wav": "Bark", "n2.wav": "Meow,Bark"}),
    "test_labels.csv": ("test", {"t1.wav": "Rain", "t2.wav": "Meow"}),
}
ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- building blocks
def tone(seconds=0.2, sr=SR, amp=0.3) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def wav(path: Path, y=None, sr=SR, subtype="PCM_16") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), tone() if y is None else y, sr, subtype=subtype)


def _q(field: str) -> str:
    return '"' + field.replace('"', '""') + '"' if any(c in field for c in ',"\n\r') else field


def labels_csv(rows: dict[str, str]) -> str:
    return "fname,labels\n" + "".join(f'{_q(f)},"{labs}"\n' for f, labs in rows.items())


def submission_csv(fnames, classes=CLASSES) -> str:
    return "fname," + ",".join(classes) + "\n" + "".join(f"{f}," + ",".join("0" * len(classes)) + "\n" for f in fnames)


def base_layout(src: Path) -> Path:
    """A valid Kaggle-layout directory with test labels."""
    for csv, (folder, rows) in TABLES.items():
        (src / folder).mkdir(parents=True, exist_ok=True)
        for fname in rows:
            wav(src / folder / fname)
        (src / csv).write_text(labels_csv(rows))
    (src / "sample_submission.csv").write_text(submission_csv(TABLES["test_labels.csv"][1]))
    return src


def write(src: Path, name: str, text: str, encoding="utf-8") -> None:
    (src / name).write_bytes(text.encode(encoding))


def with_rows(csv: str, extra: dict[str, str], keep=True) -> Callable[[Path], None]:
    """Add rows (their wav files too, where the fname is a plain name) to a labels CSV."""
    def build(src):
        folder, rows = TABLES[csv]
        rows = {**(rows if keep else {}), **extra}
        for f in extra:
            if "/" not in f and "\\" not in f and "\0" not in f and f not in ("", ".", "..") and len(f) < 200:
                wav(src / folder / f)
        write(src, csv, labels_csv(rows))
    return build


def replace(rel: str, kind: str, target: str | None = None) -> Callable[[Path], None]:
    """Put something other than a regular file (or folder) at `rel`."""
    def build(src):
        p = src / rel
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        if kind == "dir":
            p.mkdir()
            (p / "inner.txt").write_text("x")
        elif kind == "fifo":
            os.mkfifo(p)
        elif kind == "symlink":
            p.symlink_to(target)
        elif kind == "loop":
            p.symlink_to(p.name)
        elif kind == "file":
            p.write_text("not a folder\n")
    return build


def chmod000(rel: str) -> Callable[[Path], None]:
    def build(src):
        os.chmod(src / rel, 0)
    return build


def audio(fname: str, y, sr=SR, subtype="FLOAT", folder="train_curated") -> Callable[[Path], None]:
    def build(src):
        wav(src / folder / fname, y, sr=sr, subtype=subtype)
    return build


def header_sr(fname: str, sr: int, folder="train_curated") -> Callable[[Path], None]:
    """A PCM wav whose header declares `sr` (libsndfile refuses to write some absurd rates)."""
    def build(src):
        p = src / folder / fname
        wav(p)
        b = bytearray(p.read_bytes())
        i = b.index(b"fmt ") + 8
        channels, bits = int.from_bytes(b[i + 2:i + 4], "little"), int.from_bytes(b[i + 14:i + 16], "little")
        b[i + 4:i + 8] = sr.to_bytes(4, "little")
        b[i + 8:i + 12] = (sr * channels * bits // 8).to_bytes(4, "little")
        p.write_bytes(bytes(b))
    return build


def corrections_file(text: str, encoding="utf-8") -> Callable[[Path], dict]:
    def build(src):
        p = src.parent / "corrections.csv"
        p.write_bytes(text.encode(encoding))
        return {"corrections": str(p)}
    return build


def corrections_thing(kind: str) -> Callable[[Path], dict]:
    def build(src):
        p = src.parent / "corrections.csv"
        if kind == "dir":
            p.mkdir()
        elif kind == "fifo":
            os.mkfifo(p)
        elif kind == "loop":
            p.symlink_to(p.name)
        return {"corrections": str(p)}
    return build


def params(**data) -> Callable[[Path], dict]:
    return lambda src: data


def seq(*builds) -> Callable[[Path], dict | None]:
    def build(src):
        out = {}
        for b in builds:
            out |= b(src) or {}
        return out
    return build


def stereo(left, right):
    return np.stack([left, right], axis=1)


# ----------------------------------------------------------------------------- the cases
@dataclass
class Case:
    name: str
    build: Callable[[Path], dict | None]  # breaks the base layout; may return data-param overrides
    expect: str  # "refuse" or "accept"
    needles: tuple[str, ...] = ()  # refuse: each must appear in the message (case-insensitive)
    why: str = ""  # accept: why accepting is right
    cli: tuple[str, ...] | None = ()  # extra `fat validate` args; None: not a `fat validate` case
    subprocess: bool = False  # also run as subprocesses in the test suite (a representative subset)
    needs_non_root: bool = False  # permission bits do not stop root
    no_base: bool = False  # the case builds the whole source itself


def _cases() -> list[Case]:
    C = []
    add = lambda *a, **k: C.append(Case(*a, **k))  # noqa: E731
    # from src/train_curated/ to the tmp root; from data/.raw.X.tmp/raw/train_curated/ to data/
    up = "../../../escape.wav"

    # --- fnames with path components, absolute, NUL, control characters
    def dotdot(src):
        wav(src.parent.parent / "escape.wav")
        write(src, "train_curated.csv", labels_csv({**TABLES["train_curated.csv"][1], up: "Meow"}))
    add("fname ../../../x.wav (curated)", dotdot, "refuse", ("train_curated.csv", up, "plain file name"),
        subprocess=True)

    def sub(src):
        wav(src / "train_curated" / "sub" / "x.wav")
        write(src, "train_curated.csv", labels_csv({**TABLES["train_curated.csv"][1], "sub/x.wav": "Meow"}))
    add("fname sub/x.wav (curated)", sub, "refuse", ("train_curated.csv", "sub/x.wav", "plain file name"))

    def absolute(src):
        p = src.parent / "elsewhere" / "abs.wav"
        wav(p)
        write(src, "train_noisy.csv", labels_csv({**TABLES["train_noisy.csv"][1], str(p): "Bark"}))
    add("fname absolute path (noisy)", absolute, "refuse", ("train_noisy.csv", "abs.wav", "plain file name"))
    add("fname with NUL (curated)", with_rows("train_curated.csv", {"c\0x.wav": "Meow"}), "refuse",
        ("train_curated.csv", "NUL"))
    add("fname with backslash (noisy)", with_rows("train_noisy.csv", {"sub\\n9.wav": "Bark"}), "refuse",
        ("train_noisy.csv", "sub\\\\n9.wav", "plain file name"))
    add("fname '..' (curated)", with_rows("train_curated.csv", {"..": "Meow"}), "refuse",
        ("train_curated.csv", "'..'", "plain file name"))
    add("fname '.' (noisy)", with_rows("train_noisy.csv", {".": "Bark"}), "refuse",
        ("train_noisy.csv", "'.'", "plain file name"))
    add("fname with a newline (curated)", with_rows("train_curated.csv", {"a\nb.wav": "Meow"}), "refuse",
        ("train_curated.csv", "a\\nb.wav", "control character"))
    add("fname of 300 characters (curated)", with_rows("train_curated.csv", {"x" * 296 + ".wav": "Meow"}), "refuse",
        ("train_curated.csv", "xxxx", "255"))

    def test_dotdot(src):
        wav(src / "t9.wav")
        rows = {**TABLES["test_labels.csv"][1], "../t9.wav": "Rain"}
        write(src, "test_labels.csv", labels_csv(rows))
        write(src, "sample_submission.csv", submission_csv(rows))
    add("fname ../t9.wav (test_labels + sample_submission)", test_dotdot, "refuse",
        ("test_labels.csv", "../t9.wav", "plain file name"))

    def sub_only(src):
        (src / "test_labels.csv").unlink()
        wav(src / "test" / "d" / "t9.wav")
        write(src, "sample_submission.csv", submission_csv(["t1.wav", "t2.wav", "d/t9.wav"]))
    add("fname d/t9.wav (sample_submission, no test labels)", sub_only, "refuse",
        ("sample_submission.csv", "d/t9.wav", "plain file name"))
    add("corrections fname ../c1.wav", corrections_file("fname,action,labels,note\n../c1.wav,drop,,x\n"), "refuse",
        ("corrections.csv", "../c1.wav", "plain file name"), cli=("--corrections", "CORR"))

    # --- fnames shared across splits
    add("fname in curated and noisy", with_rows("train_noisy.csv", {"c1.wav": "Bark"}), "refuse",
        ("c1.wav", "train_curated.csv", "train_noisy.csv", "more than one"))
    add("fname in curated and test", with_rows("train_curated.csv", {"t1.wav": "Rain"}), "refuse",
        ("t1.wav", "train_curated.csv", "test_labels.csv", "more than one"))

    def noisy_test(src):
        with_rows("train_noisy.csv", {"t2.wav": "Meow"})(src)
    add("fname in noisy and test", noisy_test, "refuse",
        ("t2.wav", "train_noisy.csv", "test_labels.csv", "more than one"))

    # --- header names: duplicate, empty, reserved (pandas' own mangled names), in every CSV
    def header(csv, head, extra_field=True):
        def build(src):
            rows = TABLES[csv][1]
            extra = ",x" if extra_field else ""
            write(src, csv, head + "\n" + "".join(f'{f},"{labs}"{extra}\n' for f, labs in rows.items()))
        return build
    for csv in ("train_curated.csv", "train_noisy.csv", "test_labels.csv"):
        add(f"{csv}: duplicated labels column", header(csv, "fname,labels,labels"), "refuse",
            (csv, "labels", "duplicate"))
        add(f"{csv}: empty header name", header(csv, "fname,labels,"), "refuse", (csv, "empty", "column 3"))
        add(f"{csv}: reserved header 'Unnamed: 2'", header(csv, "fname,labels,Unnamed: 2"), "refuse",
            (csv, "Unnamed: 2", "reserved"))
    add("train_curated.csv: duplicated fname column", header("train_curated.csv", "fname,fname,labels"), "refuse",
        ("train_curated.csv", "fname", "duplicate"))

    def sub_header(head, n):
        def build(src):
            write(src, "sample_submission.csv", head + "\n" + "t1.wav" + ",0" * n + "\nt2.wav" + ",0" * n + "\n")
        return build
    add("sample_submission: duplicated class Bark", sub_header("fname,Meow,Bark,Bark,Rain", 4), "refuse",
        ("sample_submission.csv", "Bark", "duplicate"), subprocess=True)
    add("sample_submission: empty class name", sub_header("fname,Meow,,Rain", 3), "refuse",
        ("sample_submission.csv", "empty", "column 3"))
    add("sample_submission: trailing comma in header", sub_header("fname,Meow,Bark,Rain,", 4), "refuse",
        ("sample_submission.csv", "empty", "column 5"))
    add("sample_submission: class 'Bark.1' beside Bark", sub_header("fname,Meow,Bark,Bark.1,Rain", 4), "refuse",
        ("sample_submission.csv", "Bark.1", "reserved"))
    add("sample_submission: class 'Unnamed: 2'", sub_header("fname,Meow,Unnamed: 2,Bark,Rain", 4), "refuse",
        ("sample_submission.csv", "Unnamed: 2", "reserved"))
    add("sample_submission: fname twice", sub_header("fname,fname,Meow,Bark,Rain", 4), "refuse",
        ("sample_submission.csv", "fname", "duplicate"))
    add("sample_submission: class ' Bark' with spaces", sub_header("fname,Meow, Bark,Rain", 3), "refuse",
        ("sample_submission.csv", "' Bark'", "spaces"))
    add("corrections: duplicated action column", corrections_file("fname,action,action,labels\nc1.wav,drop,drop,\n"),
        "refuse", ("corrections.csv", "action", "duplicate"), cli=("--corrections", "CORR"))
    add("corrections: empty header name", corrections_file("fname,action,,labels\nc1.wav,drop,,\n"), "refuse",
        ("corrections.csv", "empty", "column 3"), cli=("--corrections", "CORR"))
    add("corrections: reserved header 'Unnamed: 3'",
        corrections_file("fname,action,labels,Unnamed: 3\nc1.wav,drop,,\n"), "refuse",
        ("corrections.csv", "Unnamed: 3", "reserved"), cli=("--corrections", "CORR"))

    # --- unquoted multi-label rows: more fields than the header
    def unquoted(csv, all_rows=False):
        def build(src):
            rows = TABLES[csv][1]
            body = "".join(f"{f},{labs}\n" if (all_rows or "," in labs) else f'{f},"{labs}"\n'
                           for f, labs in {**rows, **({"x9.wav": "Meow,Bark"} if all_rows else {})}.items())
            if all_rows:
                wav(src / TABLES[csv][0] / "x9.wav")
                body = "".join(f"{f},{labs},Meow\n" for f, labs in rows.items())
            write(src, csv, "fname,labels\n" + body)
        return build
    add("train_curated.csv: one unquoted multi-label row", unquoted("train_curated.csv"), "refuse",
        ("train_curated.csv", "c2.wav", "more fields than the header", "quote"))
    add("train_curated.csv: every row unquoted multi-label", unquoted("train_curated.csv", True), "refuse",
        ("train_curated.csv", "c1.wav", "more fields than the header"))
    add("train_noisy.csv: unquoted multi-label row", unquoted("train_noisy.csv"), "refuse",
        ("train_noisy.csv", "n2.wav", "more fields than the header"))
    add("test_labels.csv: every row unquoted multi-label", unquoted("test_labels.csv", True), "refuse",
        ("test_labels.csv", "t1.wav", "more fields than the header"))
    add("corrections: unquoted relabel row",
        corrections_file("fname,action,labels,note\nc1.wav,relabel,Meow,Bark,typo\n"), "refuse",
        ("corrections.csv", "c1.wav", "more fields than the header"), cli=("--corrections", "CORR"))
    add("train_curated.csv: row without a labels field",
        lambda src: write(src, "train_curated.csv", "fname,labels\nc1.wav,Meow\nc2.wav\nc3.wav,Rain\n"), "refuse",
        ("train_curated.csv", "c2.wav", "without labels"))

    # --- encodings other than UTF-8 (the file named); UTF-8 variants that are fine
    def latin1_curated(src):
        wav(src / "train_curated" / "café.wav")
        write(src, "train_curated.csv", labels_csv({**TABLES["train_curated.csv"][1], "café.wav": "Meow"}), "latin-1")
    add("train_curated.csv in Latin-1", latin1_curated, "refuse", ("train_curated.csv", "UTF-8", "line 5"),
        subprocess=True)
    add("train_noisy.csv in UTF-16", lambda src: write(src, "train_noisy.csv", labels_csv(TABLES["train_noisy.csv"][1]),
                                                       "utf-16"), "refuse", ("train_noisy.csv", "UTF-16"))
    add("sample_submission.csv in Latin-1",
        lambda src: write(src, "sample_submission.csv",
                          submission_csv(["t1.wav", "t2.wav"], ["Meow", "Bark", "Rain", "Café"]), "latin-1"),
        "refuse", ("sample_submission.csv", "UTF-8"))
    add("test_labels.csv in cp1252",
        lambda src: write(src, "test_labels.csv", 'fname,labels\nt1.wav,"Rain"\nt2.wav,"Meow"\n# “quoted” note\n',
                          "cp1252"),
        "refuse", ("test_labels.csv", "UTF-8", "line 4"))
    add("corrections in Latin-1", corrections_file("fname,action,labels,note\nc1.wav,drop,,mal étiqueté\n", "latin-1"),
        "refuse", ("corrections.csv", "UTF-8", "line 2"), cli=("--corrections", "CORR"))
    add("train_curated.csv with a UTF-8 BOM", lambda src: write(src, "train_curated.csv",
                                                                "\ufeff" + labels_csv(TABLES["train_curated.csv"][1])),
        "accept", why="Excel's 'CSV UTF-8' writes a byte-order mark; the text is UTF-8 and the BOM carries no data")
    add("CRLF line endings",
        lambda src: write(src, "train_noisy.csv", labels_csv(TABLES["train_noisy.csv"][1]).replace("\n", "\r\n")),
        "accept", why="Windows line endings are standard CSV (RFC 4180)")
    add("blank lines between rows", lambda src: write(src, "train_curated.csv",
                                                      labels_csv(TABLES["train_curated.csv"][1]).replace("\n", "\n\n")),
        "accept", why="a blank line holds no row; pandas and the csv module skip it too")
    add("non-ASCII UTF-8 fname", with_rows("train_curated.csv", {"café_ü.wav": "Meow"}), "accept",
        why="a UTF-8 fname is a plain file name; the file exists")

    # --- a directory, FIFO, device or symlink loop where a file belongs; a file where a folder belongs
    for rel in ("train_curated.csv", "sample_submission.csv", "test_labels.csv"):
        add(f"{rel} is a directory", replace(rel, "dir"), "refuse", (rel, "directory"))
        add(f"{rel} is a FIFO", replace(rel, "fifo"), "refuse", (rel, "FIFO"))
        add(f"{rel} is a symlink loop", replace(rel, "loop"), "refuse", (rel, "symlink loop"))
    add("train_noisy.csv -> /dev/null", replace("train_noisy.csv", "symlink", "/dev/null"), "refuse",
        ("train_noisy.csv", "device"))
    add("corrections file is a directory", corrections_thing("dir"), "refuse", ("corrections.csv", "directory"),
        cli=("--corrections", "CORR"))
    add("corrections file is a FIFO", corrections_thing("fifo"), "refuse", ("corrections.csv", "FIFO"),
        cli=("--corrections", "CORR"))
    add("corrections file is a symlink loop", corrections_thing("loop"), "refuse", ("corrections.csv", "symlink loop"),
        cli=("--corrections", "CORR"))
    add("wav is a directory", replace("train_curated/c1.wav", "dir"), "refuse", ("c1.wav", "directory"))
    add("wav is a FIFO", replace("train_curated/c2.wav", "fifo"), "refuse", ("c2.wav", "FIFO"), subprocess=True)
    add("wav -> /dev/zero", replace("train_noisy/n1.wav", "symlink", "/dev/zero"), "refuse", ("n1.wav", "device"))
    add("wav -> /dev/null", replace("test/t1.wav", "symlink", "/dev/null"), "refuse", ("t1.wav", "device"))
    add("wav is a symlink loop", replace("train_curated/c3.wav", "loop"), "refuse", ("c3.wav", "symlink loop"))
    add("wav is a dangling symlink", replace("train_curated/c3.wav", "symlink", "gone.wav"), "refuse",
        ("c3.wav", "dangling symlink"))

    def link_elsewhere(src):
        p = src.parent / "library" / "c1.wav"
        wav(p)
        replace("train_curated/c1.wav", "symlink", str(p))(src)
    add("wav is a symlink to a wav elsewhere", link_elsewhere, "accept",
        why="datasets assembled with symlinks are common; the link's target is a regular, valid wav, read only")
    add("unlisted FIFO named x.wav in a folder", lambda src: os.mkfifo(src / "train_noisy" / "x.wav"), "refuse",
        ("x.wav", "no row in train_noisy.csv"))
    def non_utf8_name(src):
        shutil.copy(src / "train_curated" / "c1.wav", os.path.join(os.fsencode(src / "train_curated"), b"\xff.wav"))
    add("unlisted wav with a non-UTF-8 file name", non_utf8_name, "refuse",
        ("\\xff.wav", "no row in train_curated.csv"))
    add("audio folder train_curated is a file", replace("train_curated", "file"), "refuse",
        ("train_curated", "not a folder"))
    add("audio folder test is a symlink loop", replace("test", "loop"), "refuse", ("test", "symlink loop"))
    add("audio folder train_noisy -> /dev/null", replace("train_noisy", "symlink", "/dev/null"), "refuse",
        ("train_noisy", "not a folder"))
    add("data.source is a file", lambda src: {"source": str(src / "train_curated.csv")}, "refuse",
        ("train_curated.csv", "not a directory"), cli=None)
    add("unreadable wav (chmod 000)", chmod000("train_curated/c1.wav"), "refuse", ("c1.wav", "permission denied"),
        needs_non_root=True)
    add("unreadable CSV (chmod 000)", chmod000("train_noisy.csv"), "refuse", ("train_noisy.csv", "permission denied"),
        needs_non_root=True)
    add("unreadable folder (chmod 000)", chmod000("test"), "refuse", ("test", "permission denied"), needs_non_root=True)

    # --- audio levels, samples and rates
    loud = tone(amp=0.5)
    add("stereo, opposite-phase channels", audio("c1.wav", stereo(loud, -loud)), "refuse",
        ("c1.wav", "silent after the mono mix"), subprocess=True)
    add("stereo, nearly opposite-phase channels", audio("c2.wav", stereo(loud, -loud * 0.99999)), "refuse",
        ("c2.wav", "silent after the mono mix"))
    add("stereo, one channel silent", audio("c1.wav", stereo(loud, 0 * loud), subtype="PCM_16"), "accept",
        why="the mono mix is the loud channel at half level (-12 dBFS): a usable signal")
    nan_y, inf_y, ninf_y = loud.copy(), loud.copy(), loud.copy()
    nan_y[100], inf_y[200], ninf_y[300] = np.nan, np.inf, -np.inf
    add("float wav with a NaN sample", audio("c1.wav", nan_y), "refuse", ("c1.wav", "NaN"))
    add("float wav with +inf", audio("n1.wav", inf_y, folder="train_noisy"), "refuse", ("n1.wav", "infinite"))
    add("float64 wav with -inf", audio("t2.wav", ninf_y, subtype="DOUBLE", folder="test"), "refuse",
        ("t2.wav", "infinite"))
    add("float wav, peak 1e30", audio("c2.wav", loud * 2e30), "refuse", ("c2.wav", "beyond full scale"))
    add("float wav, peak 1e5", audio("c3.wav", loud * 2e5), "refuse", ("c3.wav", "beyond full scale"))
    add("float64 wav, peak 1e300", audio("c3.wav", loud.astype(np.float64) * 2e300, subtype="DOUBLE"), "refuse",
        ("c3.wav", "beyond full scale"))
    add("float wav, peak 1.5 (over full scale)", audio("c3.wav", loud * 3), "accept",
        why="float wavs may exceed full scale slightly after processing; counted in the report as over_full_scale")
    add("sample rate 1 Hz", header_sr("c1.wav", 1), "refuse", ("c1.wav", "sample rate 1 Hz"))
    add("sample rate 10 MHz", header_sr("n2.wav", 10_000_000, folder="train_noisy"), "refuse",
        ("n2.wav", "sample rate 10000000 Hz"))
    add("sample rate 100 Hz", audio("c2.wav", tone(5, sr=100), sr=100, subtype="PCM_16"), "refuse",
        ("c2.wav", "sample rate 100 Hz"))
    add("sample rate 8 kHz", audio("c2.wav", tone(sr=8000), sr=8000, subtype="PCM_16"), "accept",
        why="telephone-band audio is real audio; fat.data.audio resamples it")
    add("sample rate 192 kHz", audio("c2.wav", tone(sr=192000), sr=192000, subtype="PCM_24"), "accept",
        why="high-resolution recordings are real audio; fat.data.audio resamples them")

    # --- params of the wrong type, NaN, out of range
    for key, value, words in [
        ("max_seconds", float("nan"), "finite"), ("max_seconds", "abc", "'abc'"),
        ("max_seconds", -1, "> 0"), ("max_seconds", 0, "> 0"), ("max_seconds", float("inf"), "finite"),
        ("max_seconds", True, "True"), ("min_peak_dbfs", float("nan"), "finite"),
        ("min_peak_dbfs", "loud", "'loud'"), ("min_peak_dbfs", 10, "<= 0"),
        ("source", "", "empty"), ("source", None, "None"), ("source", 123, "123"), ("source", ["a", "b"], "['a', 'b']"),
        ("source", "   ", "empty"), ("on_bad_audio", "Skip", "'Skip'"), ("on_bad_audio", 1, "1"),
        ("corrections", 5, "5"), ("n_jobs", "abc", "'abc'"), ("n_jobs", -2, ">= 0"), ("n_jobs", 1.5, "1.5"),
    ]:
        flag = {"max_seconds": "--max-seconds", "min_peak_dbfs": "--min-peak-dbfs"}.get(key)
        cli = (flag, str(value)) if flag and isinstance(value, float) else None
        add(f"data.{key}: {value!r}", params(**{key: value}), "refuse", (f"data.{key}", words), cli=cli,
            subprocess=key in ("max_seconds", "source") and value in ("abc", ""))
    add("data.corrections: '' (none)", params(corrections=""), "accept",
        why="an empty corrections entry means none, as null")
    add("data section is not a mapping", lambda src: {"__data__": 5}, "refuse", ("params.yaml", "data", "mapping"),
        cli=None)
    add("data.source missing", lambda src: {"__drop__": "source"}, "refuse", ("params.yaml", "data.source", "missing"),
        cli=None)

    # --- table problems name the rows (fnames: first 10 and a count), the column and the value
    many = {f"u{i:02d}.wav": "Unicorn_song" for i in range(12)}
    add("unknown label on 12 rows", with_rows("train_curated.csv", many), "refuse",
        ("train_curated.csv", "labels", "Unicorn_song", "12 rows", "u00.wav", "u09.wav"), subprocess=True)
    add("two unknown labels", with_rows("train_noisy.csv", {"n7.wav": "Yeti", "n8.wav": "Bark,Kraken"}), "refuse",
        ("train_noisy.csv", "'Yeti'", "n7.wav", "'Kraken'", "n8.wav"))
    add("duplicate fnames",
        lambda src: write(src, "train_curated.csv",
                          "fname,labels\nc1.wav,Meow\nc1.wav,Bark\nc2.wav,Rain\nc3.wav,Rain\n"),
        "refuse", ("train_curated.csv", "fname", "duplicate", "c1.wav", "lines 2, 3"))
    add("empty fname",
        lambda src: write(src, "train_curated.csv", "fname,labels\nc1.wav,Meow\n,Bark\nc2.wav,Rain\nc3.wav,Rain\n"),
        "refuse", ("train_curated.csv", "fname", "empty", "line 3"))
    add("rows without labels", with_rows("train_noisy.csv", {"n5.wav": "", "n6.wav": " , "}), "refuse",
        ("train_noisy.csv", "labels", "n5.wav", "n6.wav", "2 rows"))
    add("test_labels and sample_submission differ",
        lambda src: write(src, "sample_submission.csv", submission_csv(["t1.wav", "t3.wav"])), "refuse",
        ("test_labels.csv", "sample_submission.csv", "t2.wav", "t3.wav"))
    add("header only", lambda src: write(src, "train_noisy.csv", "fname,labels\n"), "refuse",
        ("train_noisy.csv", "no rows"))
    add("empty CSV", lambda src: write(src, "train_noisy.csv", ""), "refuse", ("train_noisy.csv", "empty"))
    add("missing labels column", lambda src: write(src, "train_noisy.csv", "fname,label\nn1.wav,Bark\nn2.wav,Meow\n"),
        "refuse", ("train_noisy.csv", "labels", "missing"))
    add("corrections: unknown label",
        corrections_file("fname,action,labels,note\nc1.wav,relabel,Dragon,x\nc2.wav,relabel,Bark,y\n"), "refuse",
        ("corrections.csv", "labels", "Dragon", "c1.wav"), cli=("--corrections", "CORR"))
    add("corrections: unknown action on 11 rows", corrections_file(
        "fname,action,labels,note\n" + "".join(f"c{i}.wav,delete,,x\n" for i in range(1, 12))), "refuse",
        ("corrections.csv", "action", "'delete'", "11 rows", "c1.wav", "c10.wav"), cli=("--corrections", "CORR"))
    add("corrections: relabel without labels", corrections_file("fname,action,labels,note\nc1.wav,relabel,,x\n"),
        "refuse", ("corrections.csv", "labels", "relabel", "c1.wav"), cli=("--corrections", "CORR"))
    add("corrections: duplicate fname", corrections_file("fname,action,labels,note\nc1.wav,drop,,x\nc1.wav,drop,,y\n"),
        "refuse", ("corrections.csv", "duplicate", "c1.wav"), cli=("--corrections", "CORR"))
    add("corrections: fname in no table", corrections_file("fname,action,labels,note\nzz.wav,drop,,x\n"), "refuse",
        ("corrections.csv", "zz.wav", "no table"), cli=("--corrections", "CORR"))
    add("corrections: drops a test clip", corrections_file("fname,action,labels,note\nt1.wav,drop,,x\n"), "refuse",
        ("corrections.csv", "t1.wav", "test"), cli=("--corrections", "CORR"))
    add("corrections: comment lines and a valid drop", corrections_file("# header comment\nfname,action,labels,note\n"
                                                                        "# a comment row\nc3.wav,drop,,see #12\n"),
        "accept", why="'#' lines are comments in corrections files (the shipped file uses them); c3.wav is dropped")
    return C


CASES = _cases()
CASE_IDS = [c.name for c in CASES]


# ----------------------------------------------------------------------------- running a case
@dataclass
class Setup:
    tmp: Path
    src: Path
    proj: Path
    data: dict = field(default_factory=dict)


def setup(case: Case, tmp: Path) -> Setup:
    """Build the case's source under tmp/w/src and a project dir tmp/w/proj whose params.yaml points at it."""
    w = tmp / "w"
    src, proj = w / "src", w / "proj"
    src.mkdir(parents=True)
    proj.mkdir()
    if not case.no_base:
        base_layout(src)
    over = case.build(src) or {}
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["data"]["source"] = str(src)
    if "__data__" in over:
        p["data"] = over.pop("__data__")
    if "__drop__" in over:
        p["data"].pop(over.pop("__drop__"))
    if isinstance(p["data"], dict):
        p["data"].update(over)
    (proj / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    return Setup(tmp, src, proj, over)


def tree(root: Path) -> set[str]:
    """Every path under `root` (symlinks not followed), with sizes of regular files."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            try:
                st = p.lstat()
            except OSError:
                continue
            out.add(f"{p.relative_to(root)}:{st.st_size if p.is_file() and not p.is_symlink() else ''}")
    return out


def classify(case: Case, rc: int | None, output: str, wrote_outside: list[str]) -> str:
    """hang, traceback, silent accept, unclear, clear (refuse cases), accepted / refused (accept cases);
    '+ wrote outside' when a file appeared outside the data folders."""
    if rc is None:
        verdict = "hang"
    elif case.expect == "accept":
        verdict = "accepted" if rc == 0 else "refused"
    elif rc == 0:
        verdict = "silent accept"
    else:
        low = output.lower()
        verdict = "clear" if all(n.lower() in low for n in case.needles) else "unclear"
    if rc is not None and "Traceback (most recent call last)" in output:
        verdict = "traceback" + (f" ({verdict} message)" if verdict in ("clear", "unclear") else "")
    return verdict + (" + wrote outside" if wrote_outside else "")


def outside(before: set[str], after: set[str], ok: bool) -> list[str]:
    """New paths outside the data folders: only data/raw, data/manifest and metrics/ may appear, and only
    on success (data/ itself is where the atomic output is staged). Paths are relative to the case's w/ folder."""
    allowed = ("proj/data/raw/", "proj/data/raw:", "proj/data/manifest/", "proj/data/manifest:", "proj/metrics/",
               "proj/metrics:") if ok else ()
    return sorted(p for p in after - before if p != "proj/data:" and not p.startswith(allowed))


def cli_argv(case: Case, s: Setup) -> list[str] | None:
    if case.cli is None:
        return None
    args = [a.replace("CORR", str(s.data.get("corrections", ""))) for a in case.cli]
    return ["validate", str(s.src), "--jobs", "1", *args]


# `fat validate` as a process, in this layout (fat.tools.cli) or the older flat one (fat.cli)
_CLI_MAIN = ("import sys\ntry:\n    from fat.tools.cli import main\nexcept ImportError:\n    from fat.cli import main\n"
             "sys.exit(main())")


def _cli():
    """The `fat` command's module, in this layout or the older flat one (to run the cases on older code)."""
    try:
        from fat.tools import cli
    except ImportError:
        from fat import cli
    import importlib

    for mod in ("fat.data.prepare", "fat.prepare"):
        try:
            importlib.import_module(mod)
            break
        except ImportError:
            continue
    return cli


def run_subprocess(case: Case, tmp: Path, code: Path, timeout: float = 60) -> dict[str, str]:
    """How the case ends in `fat validate` and `stages/prepare.py` run with the code at `code`."""
    env = {**os.environ, "PYTHONPATH": str(code), "FAT_LOG": "WARNING", "CI": "1", "DVC_NO_ANALYTICS": "1"}
    out = {}
    s = setup(case, tmp)
    argv = cli_argv(case, s)
    runs = {"prepare": [sys.executable, str(code / "stages" / "prepare.py")]}
    if argv is not None:
        runs["validate"] = [sys.executable, "-c", _CLI_MAIN, *argv]
    for what, cmd in runs.items():
        before = tree(s.tmp / "w")
        try:
            proc = subprocess.run(cmd, cwd=s.proj, env=env, capture_output=True, text=True, timeout=timeout)
            rc, text = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired:
            rc, text = None, ""
        out[what] = classify(case, rc, text, outside(before, tree(s.tmp / "w"), rc == 0))
        out[what + "_msg"] = text.strip().splitlines()[-1] if text.strip() else ""
    shutil.rmtree(tmp / "w", ignore_errors=True)
    return out


def _forked(fn: Callable[[], int | None], timeout: float, log: Path) -> tuple[int | None, str]:
    """Run `fn` in a forked child (the parent has imported the code once), its output to `log`:
    (exit status, or None when killed after `timeout` seconds; the output). An uncaught exception
    prints its traceback, as the interpreter would."""
    import signal
    import time
    import traceback

    pid = os.fork()
    if pid == 0:  # child
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        try:
            rc = fn() or 0
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (print(e.code, file=sys.stderr) or 1)
        except BaseException:
            traceback.print_exc()
            rc = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), log.read_text(errors="replace")
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None, log.read_text(errors="replace")
        time.sleep(0.05)


def run_forked(case: Case, tmp: Path, code: Path, timeout: float = 60) -> dict[str, str]:
    """How the case ends in `fat validate` and `stages/prepare.py`, each run in a forked child of a
    process that imported the code at `code` once."""
    import runpy

    cli = _cli()
    out = {}
    s = setup(case, tmp)
    argv = cli_argv(case, s)

    def stage():
        os.chdir(s.proj)
        sys.argv = [str(code / "stages" / "prepare.py")]
        runpy.run_path(sys.argv[0], run_name="__main__")

    runs = {"prepare": stage}
    if argv is not None:
        runs["validate"] = lambda: (os.chdir(s.proj), cli.main(argv))[1]
    for what, fn in runs.items():
        before = tree(s.tmp / "w")
        rc, text = _forked(fn, timeout, tmp / f"{what}.log")
        out[what] = classify(case, rc, text, outside(before, tree(s.tmp / "w"), rc == 0))
        out[what + "_msg"] = text.strip().splitlines()[-1] if text.strip() else ""
    shutil.rmtree(tmp / "w", ignore_errors=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Run every hostile case against a checkout's code; print a table.")
    ap.add_argument("--code", type=Path, default=ROOT,
                    help="checkout whose fat/ and stages/ to run (default: this one)")
    ap.add_argument("--tmp", type=Path, required=True, help="scratch directory (emptied per case)")
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--messages", action="store_true", help="also print each run's last output line")
    args = ap.parse_args(argv)
    code = args.code.resolve()
    sys.path.insert(0, str(code))
    os.environ.update({"FAT_LOG": "WARNING", "CI": "1", "DVC_NO_ANALYTICS": "1"})
    _cli()  # imported once (with the stage's modules); every case runs in a fork
    root_user = hasattr(os, "geteuid") and os.geteuid() == 0
    print("| case | expect | validate | prepare |\n|---|---|---|---|")
    for case in CASES:
        if case.needs_non_root and root_user:
            print(f"| {case.name} | {case.expect} | skipped (root) | skipped (root) |")
            continue
        args.tmp.mkdir(parents=True, exist_ok=True)
        r = run_forked(case, args.tmp, code, args.timeout)
        print(f"| {case.name} | {case.expect} | {r.get('validate', '-')} | {r['prepare']} |", flush=True)
        if args.messages:
            for k in ("validate_msg", "prepare_msg"):
                if r.get(k):
                    print(f"|   {k}: {r[k][:300]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
