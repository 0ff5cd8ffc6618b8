"""Building a feature store from audio: every clip of a split loaded (`fat.data.audio`), turned
into log-mel frames (`fat.features.logmel`) and streamed into a store (`fat.features.store`).

`build_store` loads and transforms clips in threads (the kernel, the FFT, reading and resampling
release the GIL), so all cores are used without spawning processes.
"""
from __future__ import annotations

import contextlib
import itertools
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from fat.data import audio
from fat.data import tables as data
from fat.device import pick_device
from fat.features.logmel import log_mel_frames
from fat.features.store import StoreWriter
from fat.io import atomic_path
from fat.log import progress
from fat.params import Audio, Features


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

    with atomic_path(out_dir) as tmp, _single_threaded_torch(n_jobs > 1):
        with StoreWriter(tmp, kw["n_mels"], dtype) as store:
            pool = ThreadPoolExecutor(n_jobs)
            try:
                todo = iter(paths)
                pending = deque(pool.submit(clip_features, p) for p in itertools.islice(todo, 2 * n_jobs))
                for fname in progress(fnames, desc=desc):
                    m, dur = pending.popleft().result()
                    pending.extend(pool.submit(clip_features, p) for p in itertools.islice(todo, 1))
                    store.add(fname, m, round(dur, 4))
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
            meta = store.close(kw)
    return meta


def build_split(raw_dir: str | Path, split: str, out_dir: str | Path, audio_cfg: Audio, features: Features,
                n_jobs: int = 0) -> dict:
    """The store of one split of a FAT2019-layout directory, clips in its CSV's order."""
    table = data.split_table(raw_dir, split)
    folder = data.audio_dir(raw_dir, split)
    return build_store([folder / f for f in table["fname"]], table["fname"].tolist(), out_dir,
                       features.log_mel_kwargs(audio_cfg), dtype=features.dtype, n_jobs=n_jobs,
                       desc=f"log-mel {split}")
