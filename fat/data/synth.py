"""The embedded default dataset: a deterministic, offline, FAT2019-like generator.

Each class is a small signal model (plucked strings, bells, chirps, engines, speech-like formants…)
with random pitch, tempo, duration and timbre inside the class. Clips mix one to three classes.
The *curated* split is clean and correctly labelled; the *noisy* split comes from a shifted
distribution (background noise at a lower SNR, band-limited "microphones", longer clips, a skewed
class balance) with wrong, missing and extra labels; the *test* split looks like curated and its
labels go to `test_labels.csv`. Every clip is seeded from (seed, split, index), so the output does
not depend on the number of worker processes.

The result is written in the FAT2019 layout (see ARCHITECTURE.md) as 16-bit PCM wavs.
"""
from __future__ import annotations

import hashlib
import multiprocessing as mp
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from scipy import signal
from fat.log import progress

SPLITS = ("curated", "noisy", "test")
_SPLIT_ID = {s: i for i, s in enumerate(SPLITS)}


# ----------------------------------------------------------------------------- building blocks
def _t(n, sr):
    return np.arange(n) / sr


def _noise(rng, n):
    return rng.standard_normal(n)


def _band(x, sr, lo=None, hi=None, order=4):
    """Butterworth low/high/band-pass (zero-phase not needed: these are synthetic sources)."""
    nyq = sr / 2
    if lo and hi:
        sos = signal.butter(order, [lo / nyq, min(hi / nyq, 0.99)], "bandpass", output="sos")
    elif lo:
        sos = signal.butter(order, lo / nyq, "highpass", output="sos")
    elif hi:
        sos = signal.butter(order, min(hi / nyq, 0.99), "lowpass", output="sos")
    else:
        return x
    return signal.sosfilt(sos, x)


def _resonate(x, sr, freq, bw):
    """Two-pole resonator at `freq` Hz with bandwidth `bw` Hz."""
    r = np.exp(-np.pi * bw / sr)
    a = [1.0, -2 * r * np.cos(2 * np.pi * freq / sr), r * r]
    return signal.lfilter([1 - r], a, x)


def _decay(n, sr, tau):
    return np.exp(-_t(n, sr) / tau)


def _place(rng, n, sr, times, kernel, amp_jitter=0.3):
    """Sum copies of `kernel` starting at `times` (s) into a length-n signal (FFT convolution)."""
    imp = np.zeros(n)
    idx = (np.asarray(times) * sr).astype(int)
    idx = idx[(idx >= 0) & (idx < n)]
    imp[idx] = 1.0 + amp_jitter * rng.uniform(-1, 1, len(idx))
    return signal.fftconvolve(imp, kernel)[:n]


def _regular(rng, dur, period, jitter=0.05, start=None):
    start = rng.uniform(0, 0.5 * min(period, dur)) if start is None else start
    times = np.arange(start, dur, period)
    return np.clip(times + rng.normal(0, jitter * period, len(times)), 0, dur)


def _harmonics(t, f0, amps):
    """Harmonic series on a (possibly time-varying) fundamental `f0` (Hz, scalar or per sample)."""
    dt = t[1] - t[0] if len(t) > 1 else 1.0
    phase = 2 * np.pi * np.cumsum(np.broadcast_to(f0, t.shape)) * dt
    out = np.zeros_like(t)
    for h, a in enumerate(amps, start=1):
        if a:
            out += a * np.sin(h * phase)
    return out


# ----------------------------------------------------------------------------- class models
# Each model: (rng, n samples, sr) -> float64 signal of length n (any scale; normalised later).
def bass_drum(rng, n, sr):
    f0, tau = rng.uniform(45, 80), rng.uniform(0.08, 0.25)
    k = int(0.6 * sr)
    tk = _t(k, sr)
    freq = f0 * (1 + 2.5 * np.exp(-tk / 0.03))
    kernel = np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.exp(-tk / tau)
    return _place(rng, n, sr, _regular(rng, n / sr, 1 / rng.uniform(1.5, 3.5)), kernel)


def bell(rng, n, sr):
    f0 = rng.uniform(300, 1200)
    ratios = np.array([1.0, 2.0, 2.76, 5.4, 8.93]) * rng.uniform(0.98, 1.02, 5)
    k = min(n, int(2.5 * sr))
    tk = _t(k, sr)
    kernel = sum(
        a * np.sin(2 * np.pi * f0 * r * tk) * np.exp(-tk / (rng.uniform(0.6, 1.8) / r**0.5))
        for r, a in zip(ratios, [1.0, 0.6, 0.5, 0.3, 0.2])
        if f0 * r < sr / 2
    )
    times = np.sort(rng.uniform(0, max(n / sr - 0.2, 0.01), rng.integers(1, 4)))
    times[0] = rng.uniform(0, 0.05)
    return _place(rng, n, sr, times, kernel, 0.2)


def bird_chirp(rng, n, sr):
    f1, f2 = rng.uniform(2000, 3500), rng.uniform(4000, 7000)
    clen = rng.uniform(0.04, 0.12)
    k = int(clen * sr)
    tk = _t(k, sr)
    freq = f1 + (f2 - f1) * (tk / clen) ** rng.uniform(0.5, 2)
    kernel = np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.hanning(k)
    times = []
    t0 = rng.uniform(0, 0.2)
    while t0 < n / sr:
        burst = rng.integers(3, 9)
        rate = rng.uniform(7, 15)
        times.extend(t0 + np.arange(burst) / rate)
        t0 += burst / rate + rng.uniform(0.2, 0.8)
    return _place(rng, n, sr, times, kernel, 0.3)


def buzz(rng, n, sr):
    t = _t(n, sr)
    f0 = rng.uniform(150, 400) * (1 + 0.03 * np.sin(2 * np.pi * rng.uniform(0.2, 1) * t))
    x = _harmonics(t, f0, [1 / h for h in range(1, 15)])
    am = 1 + 0.6 * np.sin(2 * np.pi * rng.uniform(15, 40) * t)
    return x * am


def clock_tick(rng, n, sr):
    k = int(0.03 * sr)
    tk = _t(k, sr)
    fc = rng.uniform(2000, 5000)
    kernel = np.sin(2 * np.pi * fc * tk) * np.exp(-tk / 0.004)
    return _place(rng, n, sr, _regular(rng, n / sr, rng.uniform(0.4, 1.0), 0.01), kernel, 0.1)


def dog_bark(rng, n, sr):
    blen = rng.uniform(0.12, 0.3)
    k = int(blen * sr)
    tk = _t(k, sr)
    f0 = rng.uniform(350, 800) * (1 - 0.35 * tk / blen)
    env = np.sin(np.pi * tk / blen) ** 0.5
    kernel = (_harmonics(tk, f0, [1, 0.7, 0.5, 0.3, 0.2]) + 0.4 * _band(_noise(rng, k), sr, 500, 3000)) * env
    times = rng.uniform(0, 0.05) + np.concatenate([[0], np.cumsum(rng.uniform(0.25, 0.7, rng.integers(0, 4)))])
    return _place(rng, n, sr, times, kernel, 0.2)


def engine(rng, n, sr):
    t = _t(n, sr)
    rpm = rng.uniform(20, 60) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.05, 0.3) * t))
    x = _harmonics(t, rpm, [rng.uniform(0.3, 1) / h**0.7 for h in range(1, 30)])
    return _band(x, sr, hi=rng.uniform(800, 2000)) + 0.3 * _band(_noise(rng, n), sr, hi=300)


def footsteps(rng, n, sr):
    k = int(0.08 * sr)
    kernel = _band(_noise(rng, k), sr, 60, rng.uniform(400, 1200)) * _decay(k, sr, 0.02)
    kernel = kernel + 0.6 * np.roll(kernel, int(0.03 * sr))
    return _place(rng, n, sr, _regular(rng, n / sr, rng.uniform(0.4, 0.7), 0.05), kernel)


def hi_hat(rng, n, sr):
    k = int(0.15 * sr)
    kernel = _band(_noise(rng, k), sr, lo=rng.uniform(6000, 9000)) * _decay(k, sr, rng.uniform(0.02, 0.08))
    return _place(rng, n, sr, _regular(rng, n / sr, 1 / rng.uniform(4, 8), 0.02), kernel)


def knock(rng, n, sr):
    k = int(0.12 * sr)
    tk = _t(k, sr)
    f = rng.uniform(150, 400)
    kernel = np.sin(2 * np.pi * f * tk) * np.exp(-tk / 0.02) + 0.3 * _noise(rng, k) * np.exp(-tk / 0.003)
    times = []
    t0 = rng.uniform(0, 0.2)
    while t0 < n / sr:
        times.extend(t0 + np.arange(rng.integers(2, 6)) / rng.uniform(5, 8))
        t0 = times[-1] + rng.uniform(0.6, 1.5)
    return _place(rng, n, sr, times, kernel, 0.2)


def organ(rng, n, sr):
    t = _t(n, sr)
    root = 110 * 2 ** (rng.integers(0, 24) / 12)
    notes = root * 2 ** (np.array([0, rng.choice([3, 4]), 7])[: rng.integers(2, 4)] / 12)
    stops = [1, 0.8, 0.5, 0.4, 0, 0.25, 0, 0.2]
    x = sum(_harmonics(t, f, stops) for f in notes)
    att = np.minimum(1, t / 0.05) * np.minimum(1, (t[-1] - t) / 0.05 + 1e-3)
    return x * att


def plucked_string(rng, n, sr):
    k = min(n, int(rng.uniform(0.6, 1.5) * sr))
    tk = _t(k, sr)
    f0 = 82 * 2 ** (rng.integers(0, 30) / 12)
    kernel = sum(
        (1 / h) * np.sin(2 * np.pi * f0 * h * tk) * np.exp(-tk * (2 + 1.5 * h) * rng.uniform(0.7, 1.3))
        for h in range(1, 12)
        if f0 * h < sr / 2
    )
    times = np.concatenate([[rng.uniform(0, 0.05)], rng.uniform(0, n / sr, int(n / sr * rng.uniform(0.5, 3)))])
    return _place(rng, n, sr, times, kernel, 0.3)


def rain(rng, n, sr):
    rate = rng.uniform(200, 1000)
    times = rng.uniform(0, n / sr, int(rate * n / sr))
    k = int(0.005 * sr)
    tk = _t(k, sr)
    drop = np.sin(2 * np.pi * rng.uniform(2000, 6000) * tk) * np.exp(-tk / 0.0015)
    drops = _place(rng, n, sr, times, drop, 0.8)
    return drops + 0.3 * _band(_noise(rng, n), sr, lo=rng.uniform(1500, 4000))


def siren(rng, n, sr):
    t = _t(n, sr)
    lo, hi = rng.uniform(500, 800), rng.uniform(1000, 1600)
    period = rng.uniform(1, 4)
    f = lo + (hi - lo) * (0.5 + 0.5 * np.sin(2 * np.pi * t / period + rng.uniform(0, 6.3)))
    return _harmonics(t, f, [1, 0.3, 0.1])


def speech(rng, n, sr):
    t = _t(n, sr)
    f0 = rng.uniform(90, 250) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.3, 1) * t))
    phase = np.cumsum(f0) / sr
    pulses = (np.diff(np.floor(phase), prepend=0) > 0).astype(float)
    src = signal.lfilter([1], [1, -0.95], pulses) + 0.05 * _noise(rng, n)
    vowels = np.array([[730, 1090, 2440], [270, 2290, 3010], [300, 870, 2240], [530, 1840, 2480], [570, 840, 2410]])
    out = np.zeros(n)
    syl = int(sr / rng.uniform(3.5, 5.5))
    for s in range(0, n, syl):
        seg = src[s : s + syl]
        f1, f2, f3 = vowels[rng.integers(0, 5)] * rng.uniform(0.9, 1.15)
        y = _resonate(seg, sr, f1, 80) + 0.6 * _resonate(seg, sr, f2, 100) + 0.3 * _resonate(seg, sr, f3, 150)
        out[s : s + len(seg)] = y * np.hanning(len(seg)) ** 0.5
    pause = np.ones(n)
    for p in rng.uniform(0, n / sr, int(n / sr / 1.5)):
        pause[int(p * sr) : int((p + rng.uniform(0.1, 0.3)) * sr)] = 0
    return out * pause


def telephone_ring(rng, n, sr):
    t = _t(n, sr)
    f1 = rng.uniform(400, 500)
    tone = np.sin(2 * np.pi * f1 * t) + np.sin(2 * np.pi * f1 * rng.uniform(1.08, 1.2) * t)
    on, off = rng.uniform(0.4, 1.0), rng.uniform(0.3, 1.0)
    gate = ((t + rng.uniform(0, on)) % (on + off)) < on
    return tone * gate * (1 + 0.5 * np.sign(np.sin(2 * np.pi * 20 * t)))


def water_stream(rng, n, sr):
    bed = _band(_noise(rng, n), sr, rng.uniform(200, 500), rng.uniform(2000, 4000))
    k = int(0.02 * sr)
    tk = _t(k, sr)
    f = rng.uniform(500, 1500)
    bubble = np.sin(2 * np.pi * np.cumsum(f * (1 + 2 * tk / 0.02)) / sr) * np.hanning(k)
    times = rng.uniform(0, n / sr, int(rng.uniform(20, 60) * n / sr))
    return bed + 2 * _place(rng, n, sr, times, bubble, 0.5)


def whistle(rng, n, sr):
    t = _t(n, sr)
    notes = 1000 * 2 ** (rng.integers(0, 18, max(1, int(n / sr * 3))) / 12)
    f = notes[np.minimum((t * 3).astype(int), len(notes) - 1)]
    f = f * (1 + rng.uniform(0.01, 0.04) * np.sin(2 * np.pi * rng.uniform(4, 7) * t))
    return np.sin(2 * np.pi * np.cumsum(f) / sr) + 0.05 * _band(_noise(rng, n), sr, 800, 4000)


def wind(rng, n, sr):
    t = _t(n, sr)
    gust = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.1, 0.5) * t + rng.uniform(0, 6.3))
    return _band(_noise(rng, n), sr, hi=rng.uniform(300, 900), order=2) * gust


def zipper(rng, n, sr):
    times = []
    t0 = rng.uniform(0, 0.2)
    while t0 < n / sr:
        zlen = rng.uniform(0.3, 1.0)
        r0, r1 = rng.uniform(40, 80), rng.uniform(150, 300)
        tt = np.linspace(0, zlen, 400)
        rate = r0 + (r1 - r0) * tt / zlen
        times.extend(t0 + np.interp(np.arange(0, np.trapezoid(rate, tt)), np.cumsum(rate) * (tt[1] - tt[0]), tt))
        t0 += zlen + rng.uniform(0.3, 1.0)
    k = int(0.004 * sr)
    kernel = _band(_noise(rng, k + 64), sr, lo=3000)[64:] * _decay(k, sr, 0.001)
    return _place(rng, n, sr, times, kernel, 0.4)


CLASS_MODELS = {
    "Bass_drum": bass_drum,
    "Bell": bell,
    "Bird_chirp": bird_chirp,
    "Buzz": buzz,
    "Clock_tick": clock_tick,
    "Dog_bark": dog_bark,
    "Engine": engine,
    "Footsteps": footsteps,
    "Hi_hat": hi_hat,
    "Knock": knock,
    "Organ": organ,
    "Plucked_string": plucked_string,
    "Rain": rain,
    "Siren": siren,
    "Speech": speech,
    "Telephone_ring": telephone_ring,
    "Water_stream": water_stream,
    "Whistle": whistle,
    "Wind": wind,
    "Zipper": zipper,
}


def class_names(n_classes: int) -> list[str]:
    names = sorted(CLASS_MODELS)
    if not 2 <= n_classes <= len(names):
        raise ValueError(f"synth.n_classes must be between 2 and {len(names)}, got {n_classes}")
    return names[:n_classes]


# ----------------------------------------------------------------------------- clips
@dataclass(frozen=True)
class SplitSpec:
    split: str
    n_clips: int
    duration: tuple[float, float]  # seconds, min and max
    long_share: float  # share of clips at the maximum duration (FAT2019 noisy: mostly 15 s)
    label_counts_p: tuple[float, ...]  # P(1 label), P(2 labels), P(3 labels)
    class_skew: float  # 0: balanced primary labels; >0: Zipf-like imbalance
    snr_db: tuple[float, float] | None  # background noise SNR range; None: clean
    label_noise: float  # share of clips whose labels are corrupted


def split_specs(cfg: dict) -> list[SplitSpec]:
    def spec(split, c):
        return SplitSpec(
            split=split,
            n_clips=int(c["n_clips"]),
            duration=tuple(c["duration"]),
            long_share=float(c.get("long_share", 0.0)),
            label_counts_p=tuple(c["label_counts_p"]),
            class_skew=float(c.get("class_skew", 0.0)),
            snr_db=tuple(c["snr_db"]) if c.get("snr_db") else None,
            label_noise=float(c.get("label_noise", 0.0)),
        )

    return [spec(s, cfg[s]) for s in SPLITS]


def clip_fname(seed: int, split: str, i: int) -> str:
    return hashlib.sha1(f"fat-synth/{seed}/{split}/{i}".encode()).hexdigest()[:8] + ".wav"


def _class_probs(n_classes: int, skew: float, seed: int) -> np.ndarray:
    if skew <= 0:
        return np.full(n_classes, 1 / n_classes)
    order = np.random.default_rng([seed, 99]).permutation(n_classes)
    w = 1.0 / (1 + order) ** skew
    return w / w.sum()


def _background(rng, n, sr):
    """Pink-ish noise, mains hum and a distant rumble: the noisy set's recording conditions."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / sr)
    spec /= np.sqrt(np.maximum(f, 20.0))
    x = np.fft.irfft(spec, n)
    x /= x.std() + 1e-12
    t = _t(n, sr)
    hum = sum(np.sin(2 * np.pi * rng.choice([50, 60]) * h * t) / h for h in range(1, 5))
    return x + rng.uniform(0, 0.5) * hum


def _corrupt_labels(rng, labels: list[int], n_classes: int) -> tuple[list[int], list[int], str]:
    """Returns (audio_classes, observed_labels, kind). 'missing' adds an unlabelled sound."""
    others = [c for c in range(n_classes) if c not in labels]
    kind = rng.choice(["wrong", "missing", "extra"], p=[0.5, 0.25, 0.25])
    audio, observed = list(labels), list(labels)
    if kind == "wrong":
        observed[rng.integers(len(observed))] = int(rng.choice(others))
    elif kind == "extra":
        observed.append(int(rng.choice(others)))
    else:  # missing: a sound is present in the audio but not in the labels
        if len(observed) > 1:
            observed.pop(rng.integers(len(observed)))
        else:
            audio.append(int(rng.choice(others)))
    return audio, observed, str(kind)


def make_clip(spec: SplitSpec, i: int, seed: int, n_classes: int, sr: int):
    """Generate clip `i` of a split. Returns (audio float32, observed labels, true labels, noise kind)."""
    rng = np.random.default_rng([seed, _SPLIT_ID[spec.split], i])
    lo, hi = spec.duration
    if rng.uniform() < spec.long_share:
        dur = hi
    else:
        dur = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    n = max(int(dur * sr), int(0.3 * sr))
    n_labels = 1 + int(rng.choice(len(spec.label_counts_p), p=spec.label_counts_p))
    p = _class_probs(n_classes, spec.class_skew, seed)
    labels = [int(c) for c in rng.choice(n_classes, size=min(n_labels, n_classes), replace=False, p=p)]
    audio_classes, observed, kind = labels, labels, ""
    if spec.label_noise > 0 and rng.uniform() < spec.label_noise:
        audio_classes, observed, kind = _corrupt_labels(rng, labels, n_classes)

    names = class_names(n_classes)
    y = np.zeros(n)
    for c in audio_classes:
        span = n if len(audio_classes) == 1 else int(n * rng.uniform(0.6, 1.0))
        start = rng.integers(0, n - span + 1)
        s = CLASS_MODELS[names[c]](rng, span, sr)
        s = s / (np.sqrt(np.mean(s**2)) + 1e-9)
        fade = min(int(0.01 * sr), span // 4)
        if fade:
            ramp = np.linspace(0, 1, fade)
            s[:fade] *= ramp
            s[-fade:] *= ramp[::-1]
        y[start : start + span] += s * 10 ** (rng.uniform(-6, 0) / 20)
    if spec.snr_db is not None:
        bg = _background(rng, n, sr)
        snr = rng.uniform(*spec.snr_db)
        y = y + bg * np.sqrt(np.mean(y**2) + 1e-12) / 10 ** (snr / 20)
        if rng.uniform() < 0.5:  # a cheap microphone: band-limited channel
            y = _band(y, sr, lo=rng.uniform(80, 300), hi=rng.uniform(3000, 8000))
    y = y / (np.max(np.abs(y)) + 1e-9) * rng.uniform(0.3, 0.9)
    true = sorted(set(audio_classes))
    return y.astype(np.float32), sorted(set(observed)), true, kind


def _work(args):
    spec, i, seed, n_classes, sr, out_dir = args
    y, observed, true, kind = make_clip(spec, i, seed, n_classes, sr)
    fname = clip_fname(seed, spec.split, i)
    sf.write(out_dir / fname, y, sr, subtype="PCM_16")
    return fname, observed, true, kind, len(y) / sr


def generate(out_dir: str | Path, cfg: dict, seed: int, n_jobs: int = 0) -> dict:
    """Write the FAT2019 layout into `out_dir` (which must not exist yet). Returns summary stats."""
    out_dir = Path(out_dir)
    sr = int(cfg.get("sample_rate", 44100))
    n_classes = int(cfg["n_classes"])
    names = class_names(n_classes)
    folders = {"curated": "train_curated", "noisy": "train_noisy", "test": "test"}
    n_jobs = n_jobs or mp.cpu_count()
    stats: dict = {"n_classes": n_classes, "sample_rate": sr}
    rows = {}
    for spec in split_specs(cfg):
        d = out_dir / folders[spec.split]
        d.mkdir(parents=True, exist_ok=True)
        jobs = [(spec, i, seed, n_classes, sr, d) for i in range(spec.n_clips)]
        desc = f"synth {spec.split}"
        if n_jobs > 1:
            with mp.get_context("spawn").Pool(n_jobs) as pool:
                results = list(progress(pool.imap(_work, jobs, chunksize=4), total=len(jobs), desc=desc))
        else:
            results = [_work(j) for j in progress(jobs, desc=desc)]
        fnames = [r[0] for r in results]
        if len(set(fnames)) != len(fnames):
            raise RuntimeError(f"synthetic fname collision in split {spec.split}; change the seed")
        rows[spec.split] = results
        kinds = pd.Series([r[3] for r in results])
        stats[spec.split] = {
            "clips": len(results),
            "hours": round(sum(r[4] for r in results) / 3600, 3),
            "multi_label_share": round(float(np.mean([len(r[2]) > 1 for r in results])), 3),
            "label_noise_share": round(float((kinds != "").mean()), 3),
            "label_noise_kinds": {k: int(v) for k, v in kinds[kinds != ""].value_counts().items()},
        }

    def labels_df(results, idx):
        return pd.DataFrame({"fname": [r[0] for r in results], "labels": [",".join(names[c] for c in r[idx]) for r in results]})

    labels_df(rows["curated"], 1).to_csv(out_dir / "train_curated.csv", index=False)
    labels_df(rows["noisy"], 1).to_csv(out_dir / "train_noisy.csv", index=False)
    labels_df(rows["test"], 1).to_csv(out_dir / "test_labels.csv", index=False)
    sub = pd.DataFrame(0.0, index=range(len(rows["test"])), columns=names)
    sub.insert(0, "fname", [r[0] for r in rows["test"]])
    sub.to_csv(out_dir / "sample_submission.csv", index=False)
    return stats
