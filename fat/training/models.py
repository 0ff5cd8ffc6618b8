"""The CNN on log-mel crops, with an input front end that adds channels (deltas, MFCC).

Input: (batch, n_mels, frames) log-mel dB. The front end stacks the requested channels
(`mel`, `delta`, `delta2`, `mfcc`), normalises them with a BatchNorm, and a VGG-like stack of
conv blocks (3x3 conv + BN + ReLU, twice, then 2x2 average pooling; the default first block has one
conv, see below) feeds a head that averages over
frequency, takes mean + max over time, and maps to one logit per class. Any crop of at least
2**n_blocks frames (and as many mel bands) works.

Options (params `model.*`):
  first_block_convs  1: the first block (full resolution) has one 3x3 conv instead of two. That
              block holds a fifth of the multiply-adds but, at width 16 on a 2-core CPU, about 40 %
              of a training step's time (its activations are the largest: BatchNorm, ReLU and their
              gradients are memory-bound there); one conv cuts a step by about a seventh (13-14 %).
  input_norm  `global`: one BatchNorm statistic per input channel; `band`: one per input channel
              and mel band (per-frequency normalisation, statistics of the training data only);
              `clip`: each crop's per-band time mean is subtracted first (per-clip normalisation),
              then the global BatchNorm.
  head        `meanmax`: mean + max over time -> MLP; `attention` (the default): attention pooling over time
              (per-class softmax weights over the frames, applied to per-frame class logits),
              with the mean + max MLP's logits added, so it starts as an extension of the plain head.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.fft
import torch
from torch import nn

from fat.io import atomic_path
from fat.params import MODEL_CHANNELS as CHANNELS
from fat.params import MODEL_HEADS as HEADS
from fat.params import MODEL_INPUT_NORMS as INPUT_NORMS
from fat.params import Model


def savgol_derivative(width: int, order: int) -> np.ndarray:
    """scipy.signal.savgol_coeffs(width, polyorder=order, deriv=order, use="dot"): the least-squares
    `order`-th derivative filter (librosa.feature.delta's kernel). In numpy, so that building a model
    does not import scipy.signal (~0.5 s in every stage)."""
    x = np.arange(width) - width // 2
    return np.linalg.pinv(np.vander(x, order + 1, increasing=True).astype(np.float64))[order] * math.factorial(order)


class FrontEnd(nn.Module):
    """Builds the input channels from a log-mel batch. Deltas follow librosa.feature.delta
    (Savitzky-Golay derivative, width 9) with edge replication at the borders; `mfcc` is the
    orthonormal DCT-II over mel bands (librosa.feature.mfcc with n_mfcc = n_mels)."""

    def __init__(self, channels, n_mels: int, delta_width: int = 9, input_norm: str = "global"):
        super().__init__()
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"model.input_norm must be one of {INPUT_NORMS}, got {input_norm!r}")
        self.input_norm = input_norm
        bad = [c for c in channels if c not in CHANNELS]
        if bad or not channels:
            raise ValueError(f"model.channels must be a non-empty subset of {CHANNELS}, got {channels}")
        self.channels = list(channels)
        self.pad = delta_width // 2
        for order in (1, 2):
            k = savgol_derivative(delta_width, order)
            self.register_buffer(f"delta{order}", torch.tensor(k, dtype=torch.float32).view(1, 1, -1))
        dct = scipy.fft.dct(np.eye(n_mels), type=2, norm="ortho", axis=0)
        self.register_buffer("dct", torch.tensor(dct, dtype=torch.float32))
        n = len(self.channels)
        self.norm = nn.BatchNorm1d(n * n_mels) if input_norm == "band" else nn.BatchNorm2d(n)

    def _delta(self, x, order):
        b, f, t = x.shape
        y = nn.functional.pad(x.reshape(b * f, 1, t), (self.pad, self.pad), mode="replicate")
        return nn.functional.conv1d(y, getattr(self, f"delta{order}")).view(b, f, t)

    def forward(self, x):  # x: (B, F, T)
        if self.input_norm == "clip":
            x = x - x.mean(dim=2, keepdim=True)
        out = []
        for c in self.channels:
            if c == "mel":
                out.append(x)
            elif c == "delta":
                out.append(self._delta(x, 1))
            elif c == "delta2":
                out.append(self._delta(x, 2))
            else:
                out.append(torch.einsum("kf,bft->bkt", self.dct, x))
        h = torch.stack(out, dim=1)  # (B, C, F, T)
        if self.input_norm == "band":
            b, c, f, t = h.shape
            return self.norm(h.reshape(b, c * f, t)).view(b, c, f, t)
        return self.norm(h)


def _block(cin, cout, convs: int = 2):
    layers = []
    for i in range(convs):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                   nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.AvgPool2d(2))


class AttentionPool(nn.Module):
    """Attention pooling over time: per frame, class logits `cla` and attention scores `att`;
    the clip logit of class c is sum_t softmax_t(att_c) * cla_c(t)."""

    def __init__(self, width: int, n_classes: int, dropout: float):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.att = nn.Conv1d(width, n_classes, 1)
        self.cla = nn.Conv1d(width, n_classes, 1)

    def forward(self, h):  # h: (B, C, T')
        h = self.drop(h)
        w = torch.softmax(self.att(h), dim=2)
        return (w * self.cla(h)).sum(dim=2)


class AudioCNN(nn.Module):
    def __init__(self, n_classes: int, n_mels: int, channels=("mel",), base_channels: int = 16,
                 n_blocks: int = 4, dropout: float = 0.3, input_norm: str = "global", head: str = "meanmax",
                 first_block_convs: int = 2):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"model.head must be one of {HEADS}, got {head!r}")
        self.front = FrontEnd(channels, n_mels, input_norm=input_norm)
        widths = [base_channels * 2**i for i in range(n_blocks)]
        cins = [len(self.front.channels)] + widths[:-1]
        convs = [first_block_convs] + [2] * (n_blocks - 1)
        self.features = nn.Sequential(*[_block(a, b, n) for a, b, n in zip(cins, widths, convs)])
        self.head = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(2 * widths[-1], widths[-1]), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(widths[-1], n_classes),
        )
        self.attention = AttentionPool(widths[-1], n_classes, dropout) if head == "attention" else None

    def frames(self, x):
        return self.features(self.front(x)).mean(dim=2)  # (B, C, T')

    def embed(self, x):
        h = self.frames(x)
        return torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1)

    def forward(self, x):
        h = self.frames(x)
        logits = self.head(torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1))
        if self.attention is not None:
            logits = logits + self.attention(h)
        return logits


def build(cfg: Model, n_classes: int, n_mels: int) -> AudioCNN:
    """The model, channels-last: the conv stack runs about 1.6x faster that way on CPU (oneDNN)
    and uses tensor cores better on CUDA."""
    model = AudioCNN(n_classes=n_classes, n_mels=n_mels, channels=cfg.channels, base_channels=cfg.base_channels,
                     n_blocks=cfg.n_blocks, dropout=cfg.dropout, input_norm=cfg.input_norm, head=cfg.head,
                     first_block_convs=cfg.first_block_convs)
    return model.to(memory_format=torch.channels_last)


def save(path, model: AudioCNN, cfg: Model, classes, n_mels: int, extra: dict | None = None) -> None:
    """Checkpoint with everything needed to rebuild the model (written atomically); the model
    section is stored as plain values, so loading needs no fat classes."""
    with atomic_path(path) as tmp:
        torch.save({"state_dict": model.state_dict(), "model_cfg": cfg.as_dict(), "classes": list(classes),
                    "n_mels": n_mels, **(extra or {})}, tmp)


def unpickling_problem(e: Exception) -> str:
    """The line of torch's weights-only refusal that says what it met (e.g. "Unsupported global:
    GLOBAL os.system …"), without its advice on how to load the file unsafely."""
    import re

    text = str(e)
    m = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    if m:
        return m.group(1).split(". Please")[0].strip()
    return text.strip().splitlines()[0] if text.strip() else type(e).__name__


def read_checkpoint(path, map_location="cpu") -> dict:
    """A saved model's contents, read with `torch.load(weights_only=True)`: tensors and plain
    Python values only. A file that would run code when unpickled (a crafted or foreign pickle, e.g.
    one pulled from a shared remote) is refused with an error naming it; nothing in it runs."""
    import pickle

    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        why = unpickling_problem(e)
        if "Unsupported global" in why:
            raise ValueError(f"{path}: refused to load: it is not a plain weights file (tensors and plain values "
                             f"only), and loading it could run code ({why})") from None
        raise ValueError(f"{path}: not a readable model file ({why})") from None
    except (RuntimeError, EOFError) as e:
        raise ValueError(f"{path}: not a readable model file ({e})") from None
    if not isinstance(ckpt, dict) or not {"state_dict", "model_cfg", "classes", "n_mels"} <= set(ckpt):
        raise ValueError(f"{path}: not a fat model file (expected state_dict, model_cfg, classes, n_mels)")
    return ckpt


def load(path, map_location="cpu", classes=None) -> tuple[AudioCNN, dict]:
    """Rebuild a saved model; with `classes`, the checkpoint must predict exactly that vocabulary."""
    ckpt = read_checkpoint(path, map_location)
    if classes is not None and list(ckpt["classes"]) != list(classes):
        raise ValueError(f"{path}: the model was trained on other classes than the current vocabulary "
                         f"({len(ckpt['classes'])} vs {len(classes)} classes); retrain it")
    # saved before these keys existed: two convs everywhere, the mean + max head alone
    cfg = {"first_block_convs": 2, "head": "meanmax", **ckpt["model_cfg"]}
    model = build(Model.build(cfg, f"{path}: model"), len(ckpt["classes"]), ckpt["n_mels"])
    model.load_state_dict(ckpt["state_dict"])
    return model, ckpt


def load_backbone(model: AudioCNN, path) -> None:
    """Initialise everything but the last classifier layer from a checkpoint (transfer)."""
    ckpt = read_checkpoint(path)
    own = model.state_dict()
    shared = {k: v for k, v in ckpt["state_dict"].items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in shared and not k.startswith(("head.4.", "attention.att.", "attention.cla."))]
    if missing:
        raise ValueError(f"{path}: checkpoint does not match the model architecture (missing {missing[:3]})")
    model.load_state_dict(shared, strict=False)
