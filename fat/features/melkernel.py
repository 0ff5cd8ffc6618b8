"""The compiled log-mel kernel of `fat.features` (numba), written so that its result does not
depend on the CPU it runs on.

Every operation is one IEEE 754 double operation (+, -, *, /, compare) in an order the source
fixes, and each is correctly rounded, so the same input gives the same bits whatever instruction
set numba targets (`NUMBA_CPU_NAME`, the host's AVX-512 or AVX2 or plain SSE2):

- no `fastmath`: reassociation would let LLVM sum a band in as many partial sums as the vector is
  wide (4 with AVX2, 8 with AVX-512), and contraction would fuse products into FMAs where the CPU
  has them. The band sums instead run over the frames of a block at once, the frames being the
  vector lanes: each frame's sum keeps its sequential order and the loop still vectorises;
- the logarithm is computed here, from the exponent bits (exact) and a fixed polynomial: every
  library log picks its code by CPU (numpy's AVX2 and AVX-512 loops, glibc's FMA variants, torch's SLEEF
  vectors) and differs between glibc versions, and float16 storage makes a difference in the last
  bit of a float32 show whenever it falls on a rounding boundary. The polynomial is fdlibm's
  `__ieee754_log` (within 2 ulp of numpy's log10 in dB, tests/test_repro.py), far inside the 1e-3 dB the
  features promise.

numba is imported here only, so modules that merely read feature stores do not pay for it.
"""
from __future__ import annotations

import numba
import numpy as np

# fdlibm e_log.c: ln2 split in two, and the minimax coefficients of (log(1+f) - f + f*f/2) / s
# in s = f / (2 + f) for |s| < 0.1716 (1 + f in [sqrt(2)/2, sqrt(2)]).
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_LG1 = 6.666666666666735130e-01
_LG2 = 3.999999999940941908e-01
_LG3 = 2.857142874366239149e-01
_LG4 = 2.222219843214978396e-01
_LG5 = 1.818357216161805012e-01
_LG6 = 1.531383769920937332e-01
_LG7 = 1.479819860511658591e-01
_SQRT2 = 1.41421356237309504880
_DB_PER_LN = 4.3429448190325182765  # 10 / ln(10): dB = 10 log10(p) = _DB_PER_LN * ln(p)


_EXP_MASK = 0x7FF0000000000000
_ONE_BITS = 0x3FF0000000000000  # the exponent field of 1.0


def _to_db(vals, amin, scratch):
    """vals (n,) float64, positive and finite, in place: 10 log10(max(vals, amin)). log(x) =
    k ln2 + log(1 + f), with x = 2**k (1 + f), 1 + f in [sqrt(2)/2, sqrt(2)): k and 1 + f straight
    from the bits (exact; the floor keeps every value normal), then fdlibm's polynomial in
    s = f / (2 + f). Each loop is branch-free over contiguous arrays, so it vectorises, each lane
    doing the same operations. `scratch` (n,) int64."""
    n = vals.shape[0]
    for q in range(n):
        v = vals[q]
        vals[q] = v if v > amin else amin
    bits = vals.view(np.int64)
    for q in range(n):
        k = ((bits[q] & _EXP_MASK) >> 52) - 1023
        scratch[q] = bits[q] - (k << 52)  # the bits of x / 2**k, in [1, 2): exact
        bits[q] = k
    mant = scratch.view(np.float64)
    for q in range(n):
        m = mant[q]
        big = m > _SQRT2
        m = m * 0.5 if big else m  # exact
        kf = np.float64(bits[q] + 1 if big else bits[q])
        f = m - 1.0  # exact (Sterbenz)
        s = f / (2.0 + f)
        z = s * s
        w = z * z
        r = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7))) + w * (_LG2 + w * (_LG4 + w * _LG6))
        hfsq = 0.5 * f * f
        vals[q] = _DB_PER_LN * (kf * _LN2_HI - ((hfsq - (s * (hfsq + r) + kf * _LN2_LO)) - f))


def _hann_mel_db(spec, n_valid, n_fft, start, stop, offset, weights, amin, sq, power, bands, scratch, out):
    """spec (frames, 2 * bins) float64: the rfft of *unwindowed* frames, each bin a (real,
    imaginary) pair. Writes the mel power in dB (power_to_db, ref 1.0, floor `amin`) of the
    periodic-Hann-windowed frames into out[:n_valid] (frames, n_mels; any strides).

    The window is the frequency-domain stencil Z[k] = X[k]/2 - (X[k-1] + X[k+1])/4 (exact for the
    periodic Hann window). It acts on real and imaginary parts alike, so on the interleaved row it
    is one contiguous stencil with offsets of two; its squares go into sq (2 * bins,), and the bin
    powers |Z[k]|^2 into `power` (bins, frames), bin-major, so that each band's dot product of its
    weights with its run of bins is summed bin by bin, in that order, for all frames of the block
    at once: the frames are the vector lanes and each frame's sum keeps its sequential order (no
    reassociation needed to vectorise). The sums go into `bands` (n_mels, frames) and `_to_db`
    takes their dB (`scratch`: n_mels * frames int64). Indices are offsets into slices, never
    `i - 2`: numba's negative-index handling would otherwise keep these loops from vectorising."""
    n2 = spec.shape[1]
    n_bins = n2 // 2
    mirror = n_fft - n_bins  # X[n_bins] is the conjugate of X[mirror] (real input)
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
        for i in range(n_bins):
            power[i, j] = sq[2 * i] + sq[2 * i + 1]
    for m in range(start.shape[0]):
        acc = bands[m]
        acc[:] = 0.0
        for i in range(stop[m] - start[m]):
            w = weights[offset[m] + i]
            row = power[start[m] + i]
            for j in range(n_valid):
                acc[j] += w * row[j]
    flat = bands.reshape(-1)
    _to_db(flat, amin, scratch)
    for m in range(start.shape[0]):
        for j in range(n_valid):
            out[j, m] = bands[m, j]


_OPTIONS = dict(nogil=True, boundscheck=False, fastmath=False, error_model="numpy")


_to_db = numba.njit(**_OPTIONS)(_to_db)


def compile_kernel():
    """`_hann_mel_db` compiled; numba caches it next to this file (once per machine and CPU)."""
    try:
        return numba.njit(cache=True, **_OPTIONS)(_hann_mel_db)
    except RuntimeError:  # no writable cache location (read-only install, no home): compile per process
        return numba.njit(**_OPTIONS)(_hann_mel_db)
