"""Building a feature store from audio: every clip of a split loaded (`fat.data.audio`), turned
into log-mel frames (`fat.features.logmel`) and streamed into a store (`fat.features.store`).

`build_store` loads and transforms clips in threads (the kernel, the FFT, reading and resampling
release the GIL), so all cores are used without spawning processes.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fat.data import audio
from fat.data import tables as data
from fat.device import pick_device
from fat.features.logmel import log_mel_frames
from fat.features.store import _HEADER_LEN, npy_header
from fat.io import atomic_path
from fat.log import progress


def feature_kwargs(audio_cfg: dict, feat_cfg: dict) -> dict:
    sr = int(audio_cfg["sample_rate"])
    fmax = feat_cfg.get("fmax") or sr / 2
    return dict(
        sr=sr, n_fft=int(feat_cfg["n_fft"]), hop_length=int(feat_cfg["hop_length"]),
        n_mels=int(feat_cfg["n_mels"]), fmin=float(feat_cfg["fmin"]), fmax=float(fmax),
    )



@contextlib.contextmanager
def _single_threaded_torch(enabled: bool):
    """Worker threads each run their own FFTs: keep torch from adding its own threads on top."""
    before = torch.get_num_threads()
    if enabled:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)

def clip_frames(path, kw: dict, dtype="float16", device=None) -> tuple[np.ndarray, float]:
    """One audio file as the feature store holds it: (log-mel frames (frames, n_mels) in the storage
    `dtype`, duration in seconds). `build_store` and `fat predict` both compute clips with this."""
    y = audio.load(path, kw["sr"])
    frames = log_mel_frames(y, device=device, **kw)
    return np.ascontiguousarray(frames, dtype=np.dtype(dtype)), len(y) / kw["sr"]


def build_store(paths: list[Path], fnames: list[str], out_dir: str | Path, kw: dict,
                dtype: str = "float16", n_jobs: int = 0, desc: str = "log-mel", device=None) -> dict:
    """Compute log-mels for `paths` and write a store into `out_dir` atomically. `n_jobs` threads
    (0 = all cores) load and transform clips, a bounded window of them in flight; the store is
    the same for any `n_jobs`. `device`: where log-mels are computed (default: CUDA if present)."""
    if len(paths) != len(fnames):
        raise ValueError("paths and fnames differ in length")
    dtype = np.dtype(dtype)
    n_jobs = max(1, min(n_jobs or os.cpu_count() or 1, len(paths) or 1))
    device = pick_device() if device is None else torch.device(device)

    def clip_features(path):
        return clip_frames(path, kw, dtype, device)

    offsets, lengths, durations = [], [], []
    total = 0
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        with open(tmp / "mels.npy", "wb") as f, _single_threaded_torch(n_jobs > 1):
            f.write(b"\0" * _HEADER_LEN)
            pool = ThreadPoolExecutor(n_jobs)
            try:
                todo = iter(paths)
                pending = deque(pool.submit(clip_features, p) for p in itertools.islice(todo, 2 * n_jobs))
                for _ in progress(range(len(paths)), desc=desc):
                    m, dur = pending.popleft().result()
                    pending.extend(pool.submit(clip_features, p) for p in itertools.islice(todo, 1))
                    f.write(m.tobytes())
                    offsets.append(total)
                    lengths.append(m.shape[0])
                    durations.append(round(dur, 4))
                    total += m.shape[0]
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
            f.seek(0)
            f.write(npy_header((total, kw["n_mels"]), dtype))
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
