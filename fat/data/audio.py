"""Loading audio: any wav soundfile reads (any sample rate, bit depth, channel count) becomes a
mono float32 signal at the requested rate. Problems raise :class:`AudioError` naming the file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr


class AudioError(ValueError):
    """A file that cannot be turned into usable audio; the message names the file and the problem."""


def check_wav_complete(path: Path) -> None:
    """Raise AudioError when a RIFF/WAVE file's data chunk declares more bytes than the file holds
    (a truncated download or copy; libsndfile would silently read the shorter remainder)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return  # not a plain RIFF wav: left to libsndfile
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk = f.read(8)
            cid, csize = chunk[:4], int.from_bytes(chunk[4:8], "little")
            if cid == b"data":
                if csize != 0xFFFFFFFF and pos + 8 + csize > size:
                    raise AudioError(f"{path}: truncated: the data chunk declares {csize} bytes "
                                     f"but only {size - pos - 8} are present")
                return
            pos += 8 + csize + (csize & 1)


def load(path: str | Path, sr: int) -> np.ndarray:
    """Read `path`, average channels to mono and resample to `sr` Hz (soxr, high quality)."""
    path = Path(path)
    try:
        check_wav_complete(path)
        y, file_sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise AudioError(f"{path}: unreadable audio ({e})") from e
    if y.shape[0] == 0:
        raise AudioError(f"{path}: contains no samples")
    if not np.isfinite(y).all():
        raise AudioError(f"{path}: contains NaN or infinite samples")
    y = y.mean(axis=1) if y.shape[1] > 1 else y[:, 0]
    if file_sr != sr:
        y = soxr.resample(y, file_sr, sr, quality="HQ").astype(np.float32, copy=False)
    return np.ascontiguousarray(y)
