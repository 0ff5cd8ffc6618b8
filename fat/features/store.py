"""The packed, memory-mappable feature store: the on-disk format, its reader and its writer.

A store is a directory with
  mels.npy   one array (total_frames, n_mels), every clip's frames back to back (time-major, so a
             clip and any crop of it are contiguous on disk), float16 or float32;
  index.csv  fname, offset, length (frames), duration (s) — one row per clip, in CSV order;
  meta.json  the feature parameters that produced it.
It is written sequentially (never held in RAM whole) and renamed into place when complete.
Reading it needs numpy and pandas only: training and prediction import this module, not the
log-mel computation.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

_HEADER_LEN = 256  # bytes reserved for the .npy header so the array can be streamed after it


def npy_header(shape, dtype) -> bytes:
    d = {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": tuple(shape)}
    body = repr(d).encode("latin1")
    pad = _HEADER_LEN - 10 - len(body) - 1
    if pad < 0:
        raise ValueError("npy header does not fit the reserved space")
    return b"\x93NUMPY\x01\x00" + (_HEADER_LEN - 10).to_bytes(2, "little") + body + b" " * pad + b"\n"



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

    def __reduce__(self):  # a pickled store (DataLoader workers under spawn) reopens the memory map, never copies it
        return (FeatureStore.open, (self.root,))

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

