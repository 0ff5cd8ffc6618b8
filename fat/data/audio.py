"""Reading audio, the one wav reader of the pipeline: `info` reads a file's header (sample rate,
channels, sample format, length), `load` its samples — by default any wav soundfile reads (any
sample rate, bit depth, channel count) becomes a mono float32 signal at the requested rate; with
options, the file's own channels or rate, and NaN/inf samples kept for a validator to report —
and `blocks` the samples as stored, a bounded block at a time (what validation scans).
Problems raise :class:`AudioError` naming the file."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from fat.errors import DataError


class AudioError(DataError):
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


@dataclass(frozen=True)
class WavInfo:
    """A sound file's header facts."""

    sample_rate: int
    channels: int
    subtype: str  # sample format, e.g. PCM_16, FLOAT
    frames: int

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


def info(path: str | Path) -> WavInfo:
    """The header of `path` (checked for truncation first); AudioError when it cannot be read."""
    path = Path(path)
    try:
        check_wav_complete(path)
        i = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise AudioError(f"{path}: unreadable audio ({e})") from e
    return WavInfo(int(i.samplerate), int(i.channels), str(i.subtype), int(i.frames))


def load(path: str | Path, sr: int | None = None, *, mono: bool = True, finite: bool = True) -> np.ndarray:
    """Read `path` as float32, average channels to mono and resample to `sr` Hz (soxr, high
    quality). `sr` None keeps the file's rate; `mono` False returns the samples as stored,
    (samples, channels) at the file's rate; `finite` False lets NaN/inf samples through (for
    validation, which reports them)."""
    if not mono and sr is not None:
        raise ValueError("audio.load: mono=False reads at the file's own rate; pass sr=None")
    path = Path(path)
    try:
        check_wav_complete(path)
        y, file_sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise AudioError(f"{path}: unreadable audio ({e})") from e
    if y.shape[0] == 0:
        raise AudioError(f"{path}: contains no samples")
    if finite and not np.isfinite(y).all():
        raise AudioError(f"{path}: contains NaN or infinite samples")
    if not mono:
        return y
    sr = file_sr if sr is None else sr
    y = y.mean(axis=1) if y.shape[1] > 1 else y[:, 0]
    if file_sr != sr:
        y = soxr.resample(y, file_sr, sr, quality="HQ").astype(np.float32, copy=False)
    return np.ascontiguousarray(y)


def blocks(path: str | Path, blocksize: int = 1 << 18, dtype: str = "float64") -> Iterator[np.ndarray]:
    """The samples of `path` as stored, (frames, channels) arrays of at most `blocksize` frames, so
    memory stays bounded whatever the file's rate, length and channel count. float64 by default:
    float wavs beyond the float32 range stay finite. NaN/inf samples pass through (the caller
    reports them); AudioError when the file cannot be read (truncation is checked first)."""
    path = Path(path)
    try:
        check_wav_complete(path)
        yield from sf.blocks(str(path), blocksize=blocksize, dtype=dtype, always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise AudioError(f"{path}: unreadable audio ({e})") from e
