"""Log-mel features: `log_mel` is numerically the librosa definition (power mel spectrogram of a
centred, zero-padded, periodic-Hann STFT, in dB with ref 1.0, amin 1e-10, no top_db) computed faster:

- frames are transformed 16 at a time straight from the signal (no framed copy), in float64 like
  librosa: a float32 FFT is not enough for the contract, since its rounding noise (about 1e-7 of
  a frame's energy) shows in any band 60 dB below the frame's loudest one (pure tones are off by up
  to ~1 dB). `fat.features.fft` runs them through one MKL descriptor per thread, configured once,
  instead of torch.fft's set-up on every call;
- the Hann window is applied in the frequency domain (X[k]/2 - (X[k-1] + X[k+1])/4, exact for the
  periodic Hann window), so the FFT reads the overlapping frames in place;
- the mel filterbank (librosa's own) is sparse: each band is a short run of bins, so a compiled
  kernel (numba) takes one dot product per band over just that run, while the block's spectra are
  still in cache, instead of a dense (n_mels x bins) product.
On CUDA the same definition runs in torch on the GPU. The computation is thread-safe (per-thread
buffers; the kernel and the FFT release the GIL): `fat.features.extract` runs it in threads.
"""
from __future__ import annotations

import functools
import threading
from typing import NamedTuple

import numpy as np
import torch

from fat.features import fft

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
