"""Log-mel features and the packed, memory-mappable feature store.

A store is a directory with
  mels.npy   one array (total_frames, n_mels), every clip's frames back to back (time-major, so a
             clip and any crop of it are contiguous on disk), float16 or float32;
  index.csv  fname, offset, length (frames), duration (s) — one row per clip, in CSV order;
  meta.json  the feature parameters that produced it.
It is written sequentially (never held in RAM whole) and renamed into place when complete.
"""
from __future__ import annotations

import json
import multiprocessing as mp
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import pandas as pd
from fat.log import progress

from fat import audio, data
from fat.io import atomic_path

_HEADER_LEN = 256  # bytes reserved for the .npy header so the array can be streamed after it


def log_mel(y, sr, *, n_fft, hop_length, n_mels, fmin, fmax) -> np.ndarray:
    """Power mel spectrogram in dB (ref 1.0, amin 1e-10, no top_db): float32 (n_mels, frames)."""
    mel = librosa.feature.melspectrogram(
        y=np.asarray(y), sr=sr, n_fft=n_fft, hop_length=hop_length,
        n_mels=n_mels, fmin=fmin, fmax=fmax, power=2.0,
    )
    return librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None).astype(np.float32)


def feature_kwargs(audio_cfg: dict, feat_cfg: dict) -> dict:
    sr = int(audio_cfg["sample_rate"])
    fmax = feat_cfg.get("fmax") or sr / 2
    return dict(
        sr=sr, n_fft=int(feat_cfg["n_fft"]), hop_length=int(feat_cfg["hop_length"]),
        n_mels=int(feat_cfg["n_mels"]), fmin=float(feat_cfg["fmin"]), fmax=float(fmax),
    )


def _clip_features(args):
    path, kw = args
    y = audio.load(path, kw["sr"])
    return log_mel(y, **kw).T, len(y) / kw["sr"]


def _npy_header(shape, dtype) -> bytes:
    d = {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": tuple(shape)}
    body = repr(d).encode("latin1")
    pad = _HEADER_LEN - 10 - len(body) - 1
    if pad < 0:
        raise ValueError("npy header does not fit the reserved space")
    return b"\x93NUMPY\x01\x00" + (_HEADER_LEN - 10).to_bytes(2, "little") + body + b" " * pad + b"\n"


def build_store(paths: list[Path], fnames: list[str], out_dir: str | Path, kw: dict,
                dtype: str = "float16", n_jobs: int = 0, desc: str = "log-mel") -> dict:
    """Compute log-mels for `paths` and write a store into `out_dir` atomically."""
    if len(paths) != len(fnames):
        raise ValueError("paths and fnames differ in length")
    dtype = np.dtype(dtype)
    n_jobs = n_jobs or mp.cpu_count()
    offsets, lengths, durations = [], [], []
    total = 0
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        with open(tmp / "mels.npy", "wb") as f:
            f.write(b"\0" * _HEADER_LEN)
            jobs = [(p, kw) for p in paths]
            if n_jobs > 1 and len(jobs) > 1:
                pool = mp.get_context("spawn").Pool(n_jobs)
                it = pool.imap(_clip_features, jobs, chunksize=8)
            else:
                pool, it = None, map(_clip_features, jobs)
            try:
                for m, dur in progress(it, total=len(jobs), desc=desc):
                    f.write(np.ascontiguousarray(m, dtype=dtype).tobytes())
                    offsets.append(total)
                    lengths.append(m.shape[0])
                    durations.append(round(dur, 4))
                    total += m.shape[0]
            finally:
                if pool is not None:
                    pool.terminate()
            f.seek(0)
            f.write(_npy_header((total, kw["n_mels"]), dtype))
        pd.DataFrame({"fname": fnames, "offset": offsets, "length": lengths, "duration": durations}).to_csv(
            tmp / "index.csv", index=False
        )
        meta = {**kw, "dtype": dtype.name, "clips": len(fnames), "frames": total}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def build_split(raw_dir: str | Path, split: str, out_dir: str | Path, params: dict) -> dict:
    """The store of one split of a FAT2019-layout directory, clips in its CSV's order."""
    table = data.split_table(raw_dir, split)
    folder = data.audio_dir(raw_dir, split)
    kw = feature_kwargs(params["audio"], params["features"])
    return build_store([folder / f for f in table["fname"]], table["fname"].tolist(), out_dir, kw,
                       dtype=params["features"]["dtype"], n_jobs=int(params["data"].get("n_jobs", 0)),
                       desc=f"log-mel {split}")


@dataclass
class FeatureStore:
    """Read side of a store: memory-mapped frames plus the index. `clip(i)` is (n_mels, frames)."""

    root: Path
    mels: np.ndarray
    index: pd.DataFrame
    meta: dict

    @classmethod
    def open(cls, root: str | Path) -> "FeatureStore":
        root = Path(root)
        for name in ("mels.npy", "index.csv", "meta.json"):
            if not (root / name).exists():
                raise FileNotFoundError(f"{root / name}: missing; is {root} a feature store?")
        mels = np.load(root / "mels.npy", mmap_mode="r")
        index = pd.read_csv(root / "index.csv", dtype={"fname": str})
        meta = json.loads((root / "meta.json").read_text())
        end = int((index["offset"] + index["length"]).max()) if len(index) else 0
        if end > mels.shape[0]:
            raise ValueError(f"{root}: index points past the end of mels.npy ({end} > {mels.shape[0]})")
        return cls(root, mels, index, meta)

    def __post_init__(self):
        self.offsets = self.index["offset"].to_numpy(dtype=np.int64)
        self.lengths = self.index["length"].to_numpy(dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def n_mels(self) -> int:
        return int(self.mels.shape[1])

    @property
    def fnames(self) -> list[str]:
        return self.index["fname"].tolist()

    def position(self, fnames) -> np.ndarray:
        """Row numbers of `fnames` in this store; unknown names raise naming the store."""
        pos = pd.Series(np.arange(len(self.index)), index=self.index["fname"])
        missing = [f for f in fnames if f not in pos.index]
        if missing:
            raise KeyError(f"{self.root}: {len(missing)} clips not in the feature store, e.g. {missing[:3]}")
        return pos.loc[list(fnames)].to_numpy()

    def clip(self, i: int, start: int = 0, length: int | None = None) -> np.ndarray:
        off, n = int(self.offsets[i]), int(self.lengths[i])
        length = n - start if length is None else min(length, n - start)
        return np.asarray(self.mels[off + start : off + start + length], dtype=np.float32).T

