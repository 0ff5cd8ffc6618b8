"""Clip-level prediction from fixed-length windows, and test-time augmentation (TTA).

A clip of any length is cut into windows of the training crop length (clips shorter than a window
are tiled); the model scores every window and the clip's probabilities are the mean over its
windows. `plain` uses non-overlapping windows. `tta` averages several *views* — overlapping
windows at shifted phases and SpecAugment-masked copies — and blends them with the plain
prediction: p = beta * plain + (1 - beta) * mean(views).
"""
from __future__ import annotations

import zlib

import numpy as np
import torch

from fat.features.store import FeatureStore
from fat.log import progress
from fat.params import Tta
from fat.training.augment import fit_length, spec_augment


def window_starts(n: int, length: int, step: int, offset: int = 0) -> list[int]:
    """Window starts covering a clip of n frames; the last window is aligned to the clip end."""
    if step <= 0:
        raise ValueError(f"window step must be positive, got {step}")
    if n <= length:  # one window, tiled from a phase inside the clip
        return [offset % n if n else 0]
    last = n - length
    starts = list(range(min(offset, last), last + 1, step))
    if starts[-1] != last:
        starts.append(last)
    return starts


@torch.no_grad()
def predict_windows(model, store: FeatureStore, rows, length: int, step: int, *, device, batch_size: int = 64,
                    offset: int = 0, mask_seed: tuple[int, ...] | None = None, mask_cfg: dict | None = None,
                    desc: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, logits) per clip, each the mean over the clip's windows. With `mask_seed`,
    each clip's windows are SpecAugment-masked with a generator seeded by (mask_seed, the clip's
    name): the same clip gets the same masks whatever it is batched with."""
    model.eval()
    rows = np.asarray(rows)
    n_classes = None
    probs_sum = logit_sum = None
    counts = np.zeros(len(rows))
    batch, owners = [], []

    def flush():
        nonlocal probs_sum, logit_sum, n_classes
        x = torch.from_numpy(np.stack(batch)).to(device)
        logits = model(x).float()
        p = torch.sigmoid(logits).cpu().numpy().astype(np.float64)
        lg = logits.cpu().numpy().astype(np.float64)
        if probs_sum is None:
            n_classes = p.shape[1]
            probs_sum = np.zeros((len(rows), n_classes))
            logit_sum = np.zeros((len(rows), n_classes))
        np.add.at(probs_sum, owners, p)
        np.add.at(logit_sum, owners, lg)
        batch.clear()
        owners.clear()

    for i, r in enumerate(progress(rows, desc=desc, disable=None if desc else True, leave=False)):
        n = int(store.lengths[r])
        clip = store.clip(r)
        windows = np.stack([fit_length(clip, length, s) for s in window_starts(n, length, step, offset)])
        if mask_seed is not None:
            rng = np.random.default_rng([*mask_seed, clip_key(store.index["fname"].iat[r])])
            windows = spec_augment(torch.from_numpy(windows), rng, **(mask_cfg or {})).numpy()
        for w in windows:
            batch.append(w)
            owners.append(i)
            counts[i] += 1
            if len(batch) == batch_size:
                flush()
    if batch:
        flush()
    if probs_sum is None:
        raise ValueError("no clips to predict")
    return probs_sum / counts[:, None], logit_sum / counts[:, None]


def clip_key(fname: str) -> int:
    """A stable number for a clip name (crc32 of its UTF-8 bytes): part of its mask seed."""
    return zlib.crc32(str(fname).encode("utf-8"))


def predict_plain(model, store, rows, length, *, device, batch_size=64, desc=None) -> np.ndarray:
    return predict_windows(model, store, rows, length, length, device=device, batch_size=batch_size, desc=desc)[0]


def tta_views(length: int, tta: Tta) -> list[dict]:
    """The augmented views: overlapping windows at `shifts` phases, then `masked` masked copies."""
    step = max(1, int(length * tta.overlap_step))
    views = [{"step": step, "offset": int(round(f * step)), "masked": False} for f in tta.shifts]
    views += [{"step": step, "offset": 0, "masked": True, "i": i} for i in range(tta.masked)]
    return views


def predict_tta(model, store, rows, length, tta: Tta, mask_cfg: dict, *, device, seed: int,
                batch_size=64, desc=None, plain: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(plain, tta) probabilities. Deterministic for a given seed. `plain`: the plain prediction
    of these rows when the caller has it already (a training stage wrote it), saving that pass."""
    if plain is None:
        plain = predict_plain(model, store, rows, length, device=device, batch_size=batch_size, desc=desc)
    elif np.shape(plain)[0] != len(rows):
        raise ValueError(f"plain predictions for {np.shape(plain)[0]} clips given for {len(rows)} rows")
    views = []
    for v in tta_views(length, tta):
        p, _ = predict_windows(model, store, rows, length, v["step"], device=device, batch_size=batch_size,
                               offset=v["offset"], mask_seed=(seed, v["i"]) if v["masked"] else None,
                               mask_cfg=mask_cfg if v["masked"] else None)
        views.append(p)
    beta = tta.beta
    if not views:
        return plain, plain
    return plain, beta * plain + (1 - beta) * np.mean(views, axis=0)
