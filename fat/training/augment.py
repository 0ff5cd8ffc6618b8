"""Augmentations: random crops with tiling of short clips, batched mixup and SpecAugment-style
time/frequency masking, both applied on the device to a whole batch."""
from __future__ import annotations

import numpy as np
import torch


def fit_length(x: np.ndarray, length: int, start: int = 0) -> np.ndarray:
    """Crop or tile (n_mels, n) to (n_mels, length). Clips no longer than `length` are repeated
    end to end from `start` (a phase within the clip), longer ones cropped at `start`."""
    n = x.shape[1]
    if n == 0:
        raise ValueError("cannot crop a clip with no frames")
    if 0 <= start <= n - length:
        return x[:, start : start + length]
    if n > length or start < 0:
        raise ValueError(f"crop start {start} out of range for a clip of {n} frames and crop {length}")
    reps = -(-(length + start) // n)
    return np.tile(x, (1, reps))[:, start : start + length]


def random_start(rng: np.random.Generator, n: int, length: int) -> int:
    """Uniform crop start for a clip of n frames (a tiling phase when the clip is shorter)."""
    return int(rng.integers(0, n - length + 1)) if n >= length else int(rng.integers(0, n))


def to_device(a: np.ndarray, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A host array on `device` without waiting for the device: on CUDA the array is staged in pinned
    memory and copied asynchronously (a plain copy from pageable memory synchronises the stream)."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    if dtype is not None:
        t = t.to(dtype)
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def mixup(x: torch.Tensor, y: torch.Tensor, alpha: float, rng: np.random.Generator):
    """Blend every sample with a random partner: lam ~ Beta(alpha, alpha) per sample, applied to
    inputs and targets alike. alpha 0 returns the batch unchanged; a negative one is an error."""
    if alpha < 0:
        raise ValueError(f"mixup alpha must be >= 0 (0 disables mixup), got {alpha}")
    if alpha == 0 or len(x) < 2:
        return x, y
    lam = to_device(rng.beta(alpha, alpha, size=len(x)), x.device, x.dtype)
    perm = to_device(rng.permutation(len(x)), x.device)
    lx = lam.view(-1, *([1] * (x.dim() - 1)))
    ly = lam.view(-1, *([1] * (y.dim() - 1))).to(y.dtype)
    return lx * x + (1 - lx) * x[perm], ly * y + (1 - ly) * y[perm]


def spec_augment(x: torch.Tensor, rng: np.random.Generator, freq_masks: int = 2, freq_frac: float = 0.15,
                 time_masks: int = 2, time_frac: float = 0.2) -> torch.Tensor:
    """Mask `freq_masks` bands of up to `freq_frac` of the mel bins and `time_masks` spans of up
    to `time_frac` of the frames in each sample of (B, F, T), filling with the sample's mean."""
    b, f, t = x.shape
    fill = x.mean(dim=(1, 2), keepdim=True)
    keep = torch.ones_like(x, dtype=torch.bool)
    for n_masks, frac, size, dim in ((freq_masks, freq_frac, f, 1), (time_masks, time_frac, t, 2)):
        width = rng.integers(0, int(frac * size) + 1, size=(n_masks, b))
        start = rng.integers(0, size, size=(n_masks, b))
        pos = torch.arange(size, device=x.device)
        bounds = to_device(np.stack([start, start + width]), x.device)  # (2, n_masks, B), one copy
        for s_t, e_t in zip(bounds[0], bounds[1]):
            hit = (pos >= s_t.view(b, 1)) & (pos < e_t.view(b, 1))  # (B, size)
            keep &= ~(hit.view(b, size, 1) if dim == 1 else hit.view(b, 1, size))
    return torch.where(keep, x, fill)


def concat_mix(x: torch.Tensor, y: torch.Tensor, p: float, rng: np.random.Generator):
    """Label-union mixing ("sigmoid concat"): with probability `p` per sample, the crop's frames
    from a random cut point on (between a quarter and three quarters of the crop) are replaced by
    the same frames of a random partner's crop, and the target becomes the union (element-wise max)
    of both targets. p 0 returns the batch unchanged."""
    if not 0 <= p <= 1:
        raise ValueError(f"mixup.concat_p must be between 0 and 1, got {p}")
    if p == 0 or len(x) < 2:
        return x, y
    b, t = len(x), x.shape[-1]
    hit = rng.uniform(size=b) < p
    cut = rng.integers(t // 4, max(t // 4 + 1, 3 * t // 4 + 1), size=b)
    perm = rng.permutation(b)
    cut_t = to_device(np.where(hit, cut, t), x.device)  # t: nothing replaced
    late = torch.arange(t, device=x.device).view(1, t) >= cut_t.view(b, 1)  # (B, T)
    x = torch.where(late.view(b, *([1] * (x.dim() - 2)), t), x[to_device(perm, x.device)], x)
    hit_t = to_device(hit, x.device).view(b, *([1] * (y.dim() - 1)))
    y = torch.where(hit_t, torch.maximum(y, y[to_device(perm, y.device)]), y)
    return x, y


def stretch_window(length: int, stretch: float, rng: np.random.Generator) -> int:
    """The source window of a random-resized crop: `length` frames times a factor drawn
    log-uniformly from [1/(1+stretch), 1+stretch] (at least 1 frame). stretch 0 is `length`."""
    if stretch < 0:
        raise ValueError(f"train.stretch must be >= 0 (0 disables random-resized crops), got {stretch}")
    if stretch == 0:
        return length
    f = np.exp(rng.uniform(-np.log1p(stretch), np.log1p(stretch)))
    return max(1, int(round(length * f)))


def resize_time(x: np.ndarray, length: int) -> np.ndarray:
    """(n_mels, n) resampled to (n_mels, length) along time by linear interpolation (a time stretch)."""
    n = x.shape[1]
    if n == length:
        return x
    pos = (np.arange(length) + 0.5) * (n / length) - 0.5
    lo = np.clip(np.floor(pos).astype(np.int64), 0, n - 1)
    hi = np.minimum(lo + 1, n - 1)
    w = np.clip(pos - lo, 0.0, 1.0).astype(np.float32)
    return x[:, lo] * (1 - w) + x[:, hi] * w
