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


MASK_KEYS = ("freq_masks", "freq_frac", "time_masks", "time_frac")


def mask_settings(augment_cfg: dict) -> dict:
    """The `augment` section's mask sizes (what TTA's masked views use)."""
    return {k: augment_cfg[k] for k in MASK_KEYS}


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
