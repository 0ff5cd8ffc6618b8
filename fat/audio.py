"""Loading audio: any wav soundfile reads (any sample rate, bit depth, channel count) becomes a
mono float32 signal at the requested rate. Problems raise :class:`AudioError` naming the file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr


class AudioError(ValueError):
    """A file that cannot be turned into usable audio; the message names the file and the problem."""


def load(path: str | Path, sr: int) -> np.ndarray:
    """Read `path`, average channels to mono and resample to `sr` Hz (soxr, high quality)."""
    path = Path(path)
    try:
        y, file_sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        raise AudioError(f"{path}: unreadable audio ({e})") from e
    if y.shape[0] == 0:
        raise AudioError(f"{path}: contains no samples")
    if not np.isfinite(y).all():
        raise AudioError(f"{path}: contains NaN or infinite samples")
    y = y.mean(axis=1) if y.shape[1] > 1 else y[:, 0]
    if file_sr != sr:
        y = soxr.resample(y, file_sr, sr, quality="HQ").astype(np.float32, copy=False)
    return np.ascontiguousarray(y)
