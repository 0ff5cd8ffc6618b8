"""Batched float64 real FFTs of overlapping frames, read in place from a signal buffer.

`FrameRfft(n_fft, hop, batch, signal, out)` transforms `batch` frames of `n_fft` samples that
start `hop` samples apart in the float64 buffer `signal` and writes their one-sided spectra into
the complex128 buffer `out` (batch, n_fft // 2 + 1), frame by frame.

On builds of torch that carry Intel oneMKL and export its DFTI functions (the x86-64 Linux wheels
do), the transform is an MKL DFTI descriptor configured once for that geometry (strided input,
batch count, single thread) and reused for every call. `torch.fft.rfft` is the same MKL code,
but it creates and commits a new descriptor on every call (torch caches FFT plans for cuFFT
only); for the short batches that keep a spectrogram in the CPU cache, that set-up costs about
as much as the transform itself (here ~30 us a call against ~70 us for 16 frames of 2048). Where torch has no MKL (e.g.
aarch64 or macOS wheels), or the library cannot be loaded, `torch.fft.rfft` on a strided view
does the same work.
"""
from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

import numpy as np
import torch

# Values from oneMKL's public mkl_dfti.h (enum DFTI_CONFIG_PARAM / DFTI_CONFIG_VALUE).
_NUMBER_OF_TRANSFORMS = 7
_CONJUGATE_EVEN_STORAGE = 10
_PLACEMENT = 11
_INPUT_STRIDES = 12
_OUTPUT_STRIDES = 13
_INPUT_DISTANCE = 14
_OUTPUT_DISTANCE = 15
_PACKED_FORMAT = 21
_THREAD_LIMIT = 27
_REAL = 33
_COMPLEX_COMPLEX = 39
_NOT_INPLACE = 44
_CCE_FORMAT = 57

_LONG = ctypes.c_long  # MKL_LONG
_HANDLE = ctypes.c_void_p


@functools.cache
def _mkl():
    """torch's own oneMKL DFTI entry points, or None when this torch build has none."""
    if os.environ.get("FAT_FFT") == "torch":  # force the fallback (tests, comparisons)
        return None
    names = {"nt": "torch_cpu.dll", "posix": "libtorch_cpu.so"}
    path = Path(torch.__file__).parent / "lib" / names.get(os.name, "")
    try:
        lib = ctypes.CDLL(str(path))
        create, commit = lib.DftiCreateDescriptor_d_1d, lib.DftiCommitDescriptor
        forward, free, message, set_value = (lib.DftiComputeForward, lib.DftiFreeDescriptor,
                                             lib.DftiErrorMessage, lib.DftiSetValue)
    except (OSError, AttributeError):  # no such library, or a build without MKL
        return None
    create.argtypes, create.restype = [ctypes.POINTER(_HANDLE), ctypes.c_int, _LONG], _LONG
    commit.argtypes, commit.restype = [_HANDLE], _LONG
    forward.argtypes, forward.restype = [_HANDLE, ctypes.c_void_p, ctypes.c_void_p], _LONG
    free.argtypes, free.restype = [ctypes.POINTER(_HANDLE)], _LONG
    message.argtypes, message.restype = [_LONG], ctypes.c_char_p
    set_value.restype = _LONG  # variadic: arguments are passed with explicit ctypes types
    return lib


def backend() -> str:
    """'mkl' (a reused DFTI descriptor) or 'torch' (torch.fft.rfft per call)."""
    return "mkl" if _mkl() is not None else "torch"


class FrameRfft:
    """rfft of `batch` frames of `n_fft` samples, `hop` samples apart (see the module doc), from
    the float64 buffer `signal` into the complex128 buffer `out` (batch, n_fft // 2 + 1). Both
    buffers are bound once, so a call costs no more than the transform."""

    def __init__(self, n_fft: int, hop: int, batch: int, signal: np.ndarray, out: np.ndarray):
        if n_fft < 1 or hop < 1 or batch < 1:
            raise ValueError(f"FrameRfft needs positive sizes, got n_fft={n_fft}, hop={hop}, batch={batch}")
        self.n_fft, self.hop, self.batch, self.n_bins = n_fft, hop, batch, n_fft // 2 + 1
        self.span = (batch - 1) * hop + n_fft  # samples one call reads
        if signal.dtype != np.float64 or signal.ndim != 1 or not signal.flags.c_contiguous:
            raise ValueError("FrameRfft reads a C-contiguous 1-D float64 signal buffer")
        if out.dtype != np.complex128 or not out.flags.c_contiguous or out.shape != (batch, self.n_bins):
            raise ValueError(f"FrameRfft writes a C-contiguous complex128 buffer of shape {(batch, self.n_bins)}")
        self.signal, self.out = signal, out
        self._last = len(signal) - self.span  # the largest valid start
        self._lib = _mkl()
        self._handle = None
        if self._lib is None:
            self._frames = torch.from_numpy(signal)
            self._out = torch.from_numpy(out)
            return
        self._signal_at, self._out_at = signal.ctypes.data, out.ctypes.data
        self._handle = _HANDLE()
        self._check(self._lib.DftiCreateDescriptor_d_1d(ctypes.byref(self._handle), _REAL, n_fft))
        for param, value in (
            (_PLACEMENT, ctypes.c_int(_NOT_INPLACE)),
            (_CONJUGATE_EVEN_STORAGE, ctypes.c_int(_COMPLEX_COMPLEX)),
            (_PACKED_FORMAT, ctypes.c_int(_CCE_FORMAT)),
            (_NUMBER_OF_TRANSFORMS, _LONG(batch)),
            (_INPUT_DISTANCE, _LONG(hop)),
            (_OUTPUT_DISTANCE, _LONG(self.n_bins)),
            (_INPUT_STRIDES, (_LONG * 2)(0, 1)),
            (_OUTPUT_STRIDES, (_LONG * 2)(0, 1)),
            (_THREAD_LIMIT, ctypes.c_int(1)),  # callers parallelise over clips with threads
        ):
            self._check(self._lib.DftiSetValue(self._handle, ctypes.c_int(param), value))
        self._check(self._lib.DftiCommitDescriptor(self._handle))
        self._forward = self._lib.DftiComputeForward

    def _check(self, status: int) -> None:
        if status != 0:
            text = self._lib.DftiErrorMessage(status).decode(errors="replace")
            raise RuntimeError(f"MKL DFTI (n_fft={self.n_fft}, hop={self.hop}, batch={self.batch}): {text}; "
                               "set FAT_FFT=torch to use torch.fft instead")

    def __call__(self, start: int) -> np.ndarray:
        """Transform the frames that begin at signal[start], signal[start + hop], …; returns `out`."""
        if not 0 <= start <= self._last:
            raise ValueError(f"FrameRfft: frames {start}..{start + self.span} run past a signal of {len(self.signal)} samples")
        if self._handle is not None:
            status = self._forward(self._handle, self._signal_at + 8 * start, self._out_at)
            if status:
                self._check(status)
        else:
            frames = self._frames.as_strided((self.batch, self.n_fft), (self.hop, 1), start)
            torch.fft.rfft(frames, dim=1, out=self._out)
        return self.out

    def __del__(self):
        if getattr(self, "_handle", None) is not None and self._lib is not None:
            self._lib.DftiFreeDescriptor(ctypes.byref(self._handle))
            self._handle = None
