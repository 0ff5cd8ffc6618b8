"""Log-mel features and the packed, memory-mappable feature store.

`log_mel` is numerically the librosa definition (power mel spectrogram of a centred, zero-padded,
periodic-Hann STFT, in dB with ref 1.0, amin 1e-10, no top_db) computed faster:

- frames are transformed 16 at a time straight from the signal (no framed copy), in float64 like
  librosa: a float32 FFT is not enough for the contract, since its rounding noise (about 1e-7 of
  a frame's energy) shows in any band 60 dB below the frame's loudest one (pure tones are off by up
  to ~1 dB). `fat.fft` runs them through one MKL descriptor per thread, configured once, instead
  of torch.fft's set-up on every call;
- the Hann window is applied in the frequency domain (X[k]/2 - (X[k-1] + X[k+1])/4, exact for the
  periodic Hann window), so the FFT reads the overlapping frames in place;
- the mel filterbank (librosa's own) is sparse: each band is a short run of bins, so a compiled
  kernel (numba) takes one dot product per band over just that run, while the block's spectra are
  still in cache, instead of a dense (n_mels x bins) product.
On CUDA the same definition runs in torch on the GPU. `build_store` loads and transforms clips in
threads (the kernel, the FFT, reading and resampling release the GIL), so all cores are used
without spawning processes.

A store is a directory with
  mels.npy   one array (total_frames, n_mels), every clip's frames back to back (time-major, so a
             clip and any crop of it are contiguous on disk), float16 or float32;
  index.csv  fname, offset, length (frames), duration (s) — one row per clip, in CSV order;
  meta.json  the feature parameters that produced it.
It is written sequentially (never held in RAM whole) and renamed into place when complete.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from fat import audio, data, fft
from fat.io import atomic_path
from fat.log import progress

_HEADER_LEN = 256  # bytes reserved for the .npy header so the array can be streamed after it
_AMIN = 1e-10  # power floor of power_to_db (-100 dB)
_BLOCK = 16  # frames per FFT call: their spectra (262 KB at n_fft 2048) stay in cache for the kernel
_CHUNK_BLOCKS = 8  # blocks per stretch of the signal copied to float64 at once (128 frames)
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}  # lets the band sums vectorise; no inf/nan shortcuts


class MelBank(NamedTuple):
    """librosa's mel filterbank (float32, n_mels x bins) and its nonzero runs over an interleaved
    row of squared (real, imaginary) parts: band m sums `row[start[m]:stop[m]]` weighted by
    `weights[offset[m]:offset[m+1]]` (float64, each bin's weight twice)."""

    dense: np.ndarray
    start: np.ndarray
    stop: np.ndarray
    offset: np.ndarray
    weights: np.ndarray


@functools.lru_cache(maxsize=32)
def mel_bank(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> MelBank:
    import librosa  # the definition of the filterbank (slaney scale and norm, float32)

    dense = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    lo = np.zeros(n_mels, np.int64)
    hi = np.zeros(n_mels, np.int64)
    for m, row in enumerate(dense):
        nz = np.flatnonzero(row)
        if len(nz):  # an empty band (too many mels for n_fft) stays at the -100 dB floor, as in librosa
            lo[m], hi[m] = nz[0], nz[-1] + 1
    offset = np.concatenate([[0], np.cumsum(2 * (hi - lo))]).astype(np.int64)
    weights = np.concatenate([dense[m, lo[m] : hi[m]] for m in range(n_mels)] + [np.zeros(0, np.float32)])
    weights = np.repeat(weights.astype(np.float64), 2)
    start, stop = 2 * lo, 2 * hi
    for arr in (dense, start, stop, offset, weights):
        arr.setflags(write=False)
    return MelBank(dense, start, stop, offset, weights)


def _hann_mel_power(spec, n_valid, n_fft, start, stop, offset, weights, sq, out):
    """spec (frames, 2 * bins) float64: the rfft of *unwindowed* frames, each bin a (real,
    imaginary) pair. Writes the mel power of the periodic-Hann-windowed frames into
    out[:n_valid] (frames, n_mels; any strides).

    The window is the frequency-domain stencil Z[k] = X[k]/2 - (X[k-1] + X[k+1])/4 (exact for the
    periodic Hann window). It acts on real and imaginary parts alike, so on the interleaved row it
    is one contiguous stencil with offsets of two; its squares go into sq (2 * bins,) float64, and
    each band is a dot product of its weights (each bin's twice) with a contiguous run of sq.
    Indices are offsets into slices, never `i - 2`: numba's negative-index handling would
    otherwise keep these loops from vectorising."""
    n2 = spec.shape[1]
    mirror = n_fft - n2 // 2  # X[n_bins] is the conjugate of X[mirror] (real input)
    last = n2 - 2  # the last bin's real part
    n = n2 - 4
    inner = sq[2 : n + 2]
    for j in range(n_valid):
        x = spec[j]
        before, here, after = x[0:n], x[2 : n + 2], x[4 : n + 4]
        for i in range(n):
            z = 0.5 * here[i] - 0.25 * (before[i] + after[i])
            inner[i] = z * z
        re = 0.5 * (x[0] - x[2])  # bin 0: X[-1] = conj(X[1]), so the imaginary parts cancel
        im = 0.5 * x[1]
        sq[0], sq[1] = re * re, im * im
        re = 0.5 * x[last] - 0.25 * (x[last - 2] + x[2 * mirror])
        im = 0.5 * x[last + 1] - 0.25 * (x[last - 1] - x[2 * mirror + 1])
        sq[last], sq[last + 1] = re * re, im * im
        for m in range(start.shape[0]):
            run, w = sq[start[m] : stop[m]], weights[offset[m] : offset[m + 1]]
            acc = 0.0
            for i in range(run.shape[0]):
                acc += w[i] * run[i]
            out[j, m] = acc


@functools.cache
def _kernel():
    """`_hann_mel_power` compiled (once per machine: numba caches it next to this file); numba is
    imported only here, so modules that merely read stores do not pay for it."""
    import numba

    options = dict(nogil=True, boundscheck=False, fastmath=_FASTMATH)
    try:
        return numba.njit(cache=True, **options)(_hann_mel_power)
    except RuntimeError:  # no writable cache location (read-only install, no home): compile per process
        return numba.njit(**options)(_hann_mel_power)


class _Workspace(threading.local):
    """Per-thread buffers and FFT plan, reused across clips (fresh multi-megabyte buffers per clip
    cost page faults that show on short clips)."""

    def __init__(self):
        self.key = None

    def get(self, n_fft: int, hop_length: int):
        if self.key != (n_fft, hop_length):
            n_bins, frames = n_fft // 2 + 1, _BLOCK * _CHUNK_BLOCKS
            self.signal = np.zeros((frames - 1) * hop_length + n_fft)  # float64 stretch of the padded signal
            self.spec = np.zeros((_BLOCK, n_bins), np.complex128)
            self.rfft = fft.FrameRfft(n_fft, hop_length, _BLOCK, self.signal, self.spec)
            self.sq = np.zeros(2 * n_bins)
            self.key = (n_fft, hop_length)
        return self


_workspace = _Workspace()


def _check_signal(y) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"log_mel expects a mono signal (1-D array), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.floating):
        raise ValueError(f"log_mel expects floating-point samples, got {y.dtype}")
    if len(y) == 0:
        raise ValueError("log_mel got an empty signal")
    if not np.isfinite(y).all():
        raise ValueError("log_mel got NaN or infinite samples")
    return y


def n_frames(n_samples: int, n_fft: int, hop_length: int) -> int:
    """Frames of a centred STFT (n_fft // 2 zeros padded at both ends), as librosa counts them."""
    return 1 + (n_samples + 2 * (n_fft // 2) - n_fft) // hop_length


def _to_db(mel):
    """power_to_db(ref=1.0, amin=1e-10, top_db=None), in place."""
    np.maximum(mel, _AMIN, out=mel)
    np.log10(mel, out=mel)
    mel *= 10.0
    return mel


def _mel_frames_cpu(y: np.ndarray, bank: MelBank, n_fft: int, hop_length: int, out: np.ndarray) -> np.ndarray:
    """The mel power (before dB) of every frame into `out` (frames, n_mels), which may be a
    transposed view."""
    pad, n = n_fft // 2, len(y)
    total = out.shape[0]
    ws = _workspace.get(n_fft, hop_length)
    sig, span = ws.signal, len(ws.signal)
    spec = ws.spec.view(np.float64)  # (frames, 2 * bins): (real, imaginary) pairs
    kernel = _kernel()
    step = _BLOCK * _CHUNK_BLOCKS
    for first in range(0, total, step):
        nf = min(step, total - first)
        g0 = first * hop_length - pad  # first sample of this chunk in the unpadded signal
        a, b = max(g0, 0), min(g0 + span, n)
        sig[: a - g0] = 0.0
        sig[a - g0 : b - g0] = y[a:b]
        sig[b - g0 :] = 0.0
        for f0 in range(0, nf, _BLOCK):  # FFT a block, then reduce it while it is still in cache
            ws.rfft(f0 * hop_length)
            kernel(spec, min(_BLOCK, nf - f0), n_fft, bank.start, bank.stop, bank.offset, bank.weights, ws.sq,
                   out[first + f0 : first + f0 + _BLOCK])
    return out


def _mel_frames_torch(y: np.ndarray, bank: MelBank, n_fft: int, hop_length: int, device) -> np.ndarray:
    """The same definition in plain torch ops, for CUDA (float64 FFT, time-domain window, dense mel)."""
    x = torch.from_numpy(np.ascontiguousarray(y)).to(device=device, dtype=torch.float64)
    x = torch.nn.functional.pad(x, (n_fft // 2, n_fft // 2))
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64, device=device)
    weights = torch.from_numpy(bank.dense.T.copy()).to(device)
    frames = x.unfold(0, n_fft, hop_length)
    out = []
    for s in range(0, len(frames), 4096):  # bounded memory for long clips
        spec = torch.fft.rfft(frames[s : s + 4096] * window, dim=1)
        power = (spec.real.square() + spec.imag.square()).float()
        out.append(power @ weights)
    return _to_db(torch.cat(out).cpu().numpy())


def _log_mel(y, sr, n_fft, hop_length, n_mels, fmin, fmax, device, frames_major: bool) -> np.ndarray:
    y = _check_signal(y)
    if n_fft < 2 or hop_length < 1:
        raise ValueError(f"log_mel needs n_fft >= 2 and hop_length >= 1, got {n_fft} and {hop_length}")
    fmax = float(sr) / 2 if fmax is None else fmax  # librosa's default
    bank = mel_bank(int(sr), int(n_fft), int(n_mels), float(fmin), float(fmax))
    if device is not None and torch.device(device).type != "cpu":
        mel = _mel_frames_torch(y, bank, int(n_fft), int(hop_length), device)
        return mel if frames_major else np.ascontiguousarray(mel.T)
    total = n_frames(len(y), int(n_fft), int(hop_length))
    # The kernel writes either layout directly (no transposed copy afterwards).
    shape = (total, len(bank.dense))
    mel = np.empty(shape if frames_major else shape[::-1], np.float32)
    _mel_frames_cpu(y, bank, int(n_fft), int(hop_length), mel if frames_major else mel.T)
    return _to_db(mel)


def log_mel_frames(y, sr, *, n_fft, hop_length, n_mels, fmin, fmax, device=None) -> np.ndarray:
    """`log_mel` transposed: float32 (frames, n_mels), the feature store's layout. `device`:
    None or CPU for the compiled CPU path, a CUDA device for the torch path."""
    return _log_mel(y, sr, n_fft, hop_length, n_mels, fmin, fmax, device, frames_major=True)


def log_mel(y, sr, *, n_fft, hop_length, n_mels, fmin, fmax, device=None) -> np.ndarray:
    """Power mel spectrogram in dB (ref 1.0, amin 1e-10, no top_db): float32 (n_mels, frames),
    equal within 1e-3 dB to librosa.power_to_db(librosa.feature.melspectrogram(power=2.0))."""
    return _log_mel(y, sr, n_fft, hop_length, n_mels, fmin, fmax, device, frames_major=False)


def librosa_log_mel(y, sr, *, n_fft, hop_length, n_mels, fmin, fmax) -> np.ndarray:
    """The reference definition, straight from librosa (used by tests and `fat bench`)."""
    import librosa

    mel = librosa.feature.melspectrogram(y=np.asarray(y), sr=sr, n_fft=n_fft, hop_length=hop_length,
                                         n_mels=n_mels, fmin=fmin, fmax=fmax, power=2.0)
    return librosa.power_to_db(mel, ref=1.0, amin=_AMIN, top_db=None).astype(np.float32)


def feature_kwargs(audio_cfg: dict, feat_cfg: dict) -> dict:
    sr = int(audio_cfg["sample_rate"])
    fmax = feat_cfg.get("fmax") or sr / 2
    return dict(
        sr=sr, n_fft=int(feat_cfg["n_fft"]), hop_length=int(feat_cfg["hop_length"]),
        n_mels=int(feat_cfg["n_mels"]), fmin=float(feat_cfg["fmin"]), fmax=float(fmax),
    )


def npy_header(shape, dtype) -> bytes:
    d = {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": tuple(shape)}
    body = repr(d).encode("latin1")
    pad = _HEADER_LEN - 10 - len(body) - 1
    if pad < 0:
        raise ValueError("npy header does not fit the reserved space")
    return b"\x93NUMPY\x01\x00" + (_HEADER_LEN - 10).to_bytes(2, "little") + body + b" " * pad + b"\n"


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
    device = default_device() if device is None else torch.device(device)

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

