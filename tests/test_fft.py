"""Unit tests for fat/features/fft.py: batched float64 rfft of overlapping frames (pocketfft, MKL or torch)."""
from __future__ import annotations

import numpy as np
import pytest

from fat.features import fft


@pytest.fixture(params=list(fft.BACKENDS))
def backend(request, monkeypatch):
    """Each test runs on every backend (MKL where this torch build carries it)."""
    if request.param == "mkl" and fft._mkl() is None:
        pytest.skip("this torch build has no oneMKL DFTI functions")
    monkeypatch.setenv("FAT_FFT", request.param)
    assert fft.backend() == request.param
    return request.param


@pytest.mark.parametrize("n_fft,hop,batch", [(2048, 512, 16), (1024, 512, 16), (1025, 300, 5), (2, 1, 3)])
def test_frames_equal_numpy_rfft(backend, n_fft, hop, batch):
    rng = np.random.default_rng(n_fft)
    signal = rng.standard_normal((batch - 1) * hop + n_fft + 3 * hop)
    out = np.full((batch, n_fft // 2 + 1), np.nan, np.complex128)
    rfft = fft.FrameRfft(n_fft, hop, batch, signal, out)
    for start in (0, hop, 3 * hop):
        got = rfft(start)
        assert got is out
        frames = np.lib.stride_tricks.as_strided(signal[start:], (batch, n_fft), (8 * hop, 8))
        np.testing.assert_allclose(got, np.fft.rfft(frames, axis=1), rtol=0, atol=1e-10 * n_fft)


def test_default_backend_is_pocketfft(monkeypatch):
    """The default must be the FFT without run-time CPU dispatch (the feature store's bits depend on it)."""
    monkeypatch.delenv("FAT_FFT", raising=False)
    assert fft.backend() == "numpy"
    monkeypatch.setenv("FAT_FFT", "")
    assert fft.backend() == "numpy"


def test_backend_rejects_unknown_names(monkeypatch):
    monkeypatch.setenv("FAT_FFT", "fftw")
    with pytest.raises(ValueError, match="FAT_FFT='fftw': expected one of numpy, mkl, torch"):
        fft.backend()


def test_pocketfft_frames_equal_the_rfft_of_each_frame_bit_for_bit(monkeypatch):
    """The default backend is numpy.fft itself: a frame transformed in a batch, read in place, has
    exactly the bits of that frame transformed alone."""
    monkeypatch.setenv("FAT_FFT", "numpy")
    signal = np.random.default_rng(7).standard_normal(1024 + 15 * 512)
    out = np.empty((16, 513), np.complex128)
    got = fft.FrameRfft(1024, 512, 16, signal, out)(0)
    for i in (0, 5, 15):
        assert got[i].tobytes() == np.fft.rfft(signal[i * 512 : i * 512 + 1024].copy()).tobytes()


def test_transforms_in_threads_are_independent(backend):
    from concurrent.futures import ThreadPoolExecutor

    def run(seed):
        signal = np.random.default_rng(seed).standard_normal(4096 + 15 * 256)
        out = np.empty((16, 2049), np.complex128)
        rfft = fft.FrameRfft(4096, 256, 16, signal, out)
        res = [rfft(0).copy() for _ in range(20)]
        frames = np.lib.stride_tricks.as_strided(signal, (16, 4096), (8 * 256, 8))
        return all(np.allclose(r, np.fft.rfft(frames, axis=1), atol=1e-8) for r in res)

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(run, range(8)))


def test_rejects_reads_past_the_signal(backend):
    signal = np.zeros(2048 + 15 * 512)
    rfft = fft.FrameRfft(2048, 512, 16, signal, np.empty((16, 1025), np.complex128))
    rfft(0)
    with pytest.raises(ValueError, match="run past a signal of 9728 samples"):
        rfft(1)
    with pytest.raises(ValueError, match="run past"):
        rfft(-1)


@pytest.mark.parametrize("signal,out,match", [
    (np.zeros(4000, np.float32), np.empty((4, 257), np.complex128), "float64 signal"),
    (np.zeros((2, 4000)), np.empty((4, 257), np.complex128), "1-D float64"),
    (np.zeros(4000), np.empty((4, 256), np.complex128), r"shape \(4, 257\)"),
    (np.zeros(4000), np.empty((4, 257), np.complex64), "complex128"),
    (np.zeros(4000), np.empty((257, 4), np.complex128).T, "C-contiguous complex128"),
])
def test_rejects_bad_buffers(backend, signal, out, match):
    with pytest.raises(ValueError, match=match):
        fft.FrameRfft(512, 128, 4, signal, out)


def test_rejects_bad_sizes():
    with pytest.raises(ValueError, match="positive sizes"):
        fft.FrameRfft(512, 0, 4, np.zeros(4000), np.empty((4, 257), np.complex128))
