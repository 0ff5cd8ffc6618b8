"""Unit tests for fat/features/fft.py: batched float64 rfft of overlapping frames (MKL descriptor or torch)."""
from __future__ import annotations

import numpy as np
import pytest

from fat.features import fft


@pytest.fixture(params=["default", "torch"])
def backend(request, monkeypatch):
    """Each test runs on the backend this torch build gives (MKL on x86-64 Linux) and on the
    torch.fft fallback."""
    if request.param == "torch":
        monkeypatch.setenv("FAT_FFT", "torch")
    fft._mkl.cache_clear()
    yield fft.backend()
    fft._mkl.cache_clear()


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


def test_backend_is_mkl_where_torch_has_it():
    """x86-64 Linux wheels of torch carry oneMKL; the reused descriptor must be in use there."""
    import platform
    import sys

    fft._mkl.cache_clear()
    if sys.platform == "linux" and platform.machine() == "x86_64":
        assert fft.backend() == "mkl"
    else:
        assert fft.backend() in ("mkl", "torch")


def test_descriptors_in_threads_are_independent(backend):
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
