"""Content digests of `data/raw`, one small file per consumer, written by `prepare` beside it
(`data/manifest/`). They exist for DVC: a stage that reads part of `data/raw` depends on the digest
of that part instead of on the directory, so DVC examines the thousands of wavs once per run (as
prepare's output) rather than once for every stage that reads them.

- `<split>.json` (curated, noisy, test): that split's labels CSV (or null when absent, e.g.
  unlabelled test clips), `sample_submission.csv` (the vocabulary, and the test fnames) and an MD5
  over its audio folder (every file's name and content MD5, in name order).
- `tables.json`: MD5 of every CSV in `data/raw` (null when absent) — what scoring reads.

A digest changes exactly when the content it covers changes, so identical regenerated data leaves
the downstream stages cached, as a directory dependency would."""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fat.data import tables as data
from fat.io import atomic_path
from fat.log import progress

CHUNK = 1 << 20


def file_md5(path: str | Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def _md5_or_none(path: Path) -> str | None:
    return file_md5(path) if path.exists() else None


def folder_digest(folder: Path, n_jobs: int = 0) -> tuple[int, str]:
    """(number of files, MD5 over `name md5` lines of every file in `folder`, by name)."""
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    workers = n_jobs or os.cpu_count() or 1
    with ThreadPoolExecutor(workers) as pool:  # hashlib releases the GIL on large buffers
        sums = list(progress(pool.map(file_md5, [folder / n for n in names]), total=len(names),
                             desc=f"digest {folder.name}"))
    h = hashlib.md5()
    for name, s in zip(names, sums):
        h.update(f"{name} {s}\n".encode())
    return len(names), h.hexdigest()


def build(raw_dir: str | Path, n_jobs: int = 0) -> dict[str, dict]:
    """The manifest files' contents, by file name."""
    raw = Path(raw_dir)
    sub = _md5_or_none(raw / data.SAMPLE_SUBMISSION)
    if sub is None:
        raise FileNotFoundError(f"{raw / data.SAMPLE_SUBMISSION}: missing; prepare always writes it")
    out = {}
    for split, (csv_name, folder) in data.SPLITS.items():
        if not (raw / folder).is_dir():
            raise FileNotFoundError(f"{raw / folder}: missing audio folder of split {split}")
        n, digest = folder_digest(raw / folder, n_jobs)
        out[f"{split}.json"] = {"split": split, csv_name: _md5_or_none(raw / csv_name),
                                data.SAMPLE_SUBMISSION: sub, "audio_files": n, "audio_md5": digest}
    names = [csv for csv, _ in data.SPLITS.values()] + [data.SAMPLE_SUBMISSION]
    out["tables.json"] = {name: _md5_or_none(raw / name) for name in names}
    return out


def write(raw_dir: str | Path, out_dir: str | Path, n_jobs: int = 0) -> dict[str, dict]:
    """Write the manifest of `raw_dir` into `out_dir` (replaced atomically). Returns its contents."""
    contents = build(raw_dir, n_jobs)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for name, obj in contents.items():
            (tmp / name).write_text(json.dumps(obj, indent=2) + "\n")
    return contents
