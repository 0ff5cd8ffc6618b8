"""The exported module of `fat export` (see fat/inference/export.py): waveform in, class probabilities out.

`LogMel` is the front end of `fat.features.logmel` in plain torch ops (the DFT as a float64 matrix
product, so it exports to ONNX and TorchScript alike), `Windowed` one fold model scoring a clip's
windows as `fat.evaluation.predict.predict_plain` does, `Family` the fold average of `fat.evaluation.ensemble`, and
`Tagger` the whole: front end, families, combination.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fat.features.logmel import mel_bank


class LogMel(nn.Module):
    """(samples,) float32 waveform -> (n_mels, frames) log-mel dB, the feature store's values."""

    def __init__(self, sr: int, n_fft: int, hop_length: int, n_mels: int, fmin: float, fmax: float,
                 dtype: str = "float16", top_db: float | None = None):
        super().__init__()
        bins = n_fft // 2 + 1
        n = np.arange(n_fft)[:, None]
        k = np.arange(bins)[None, :]
        window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
        angle = 2 * np.pi * n * k / n_fft
        basis = np.concatenate([window[:, None] * np.cos(angle), -window[:, None] * np.sin(angle)], axis=1)
        self.register_buffer("basis", torch.from_numpy(basis))  # (n_fft, 2 * bins) float64
        mel = mel_bank(int(sr), int(n_fft), int(n_mels), float(fmin), float(fmax)).dense
        self.register_buffer("mel", torch.from_numpy(mel.T.astype(np.float64)))  # (bins, n_mels)
        self.register_buffer("offsets", torch.arange(n_fft, dtype=torch.int64))
        self.n_fft, self.hop, self.bins = int(n_fft), int(hop_length), bins
        self.top_db = None if top_db is None else float(top_db)
        self.round_to_half = np.dtype(dtype) == np.float16
        if np.dtype(dtype) not in (np.float16, np.float32):
            raise ValueError(f"features.dtype must be float16 or float32, got {dtype}")

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        pad = self.n_fft // 2
        x = nn.functional.pad(waveform.to(torch.float64).reshape(1, 1, -1), (pad, pad)).reshape(-1)
        n_frames = (x.shape[0] - self.n_fft) // self.hop + 1
        idx = torch.arange(n_frames, dtype=torch.int64).unsqueeze(1) * self.hop + self.offsets.unsqueeze(0)
        spec = x[idx] @ self.basis  # (frames, 2 * bins): real parts, then imaginary parts
        power = spec[:, : self.bins] * spec[:, : self.bins] + spec[:, self.bins :] * spec[:, self.bins :]
        mel = (power @ self.mel).to(torch.float32)
        db = 10.0 * torch.log10(torch.clamp(mel, min=1e-10))
        if self.top_db is not None:  # the clip's floor: its maximum minus top_db (float32, as the stores)
            db = torch.maximum(db, db.max() - self.top_db)
        if self.round_to_half:
            db = db.to(torch.float16).to(torch.float32)
        return db.transpose(0, 1)


class Windowed(nn.Module):
    """One fold model on a clip's log-mel (n_mels, frames): window probabilities averaged, as
    `fat.evaluation.predict.predict_plain` does (windows of `crop` frames, the last aligned to the end,
    clips shorter than a window tiled)."""

    def __init__(self, cnn: nn.Module, crop: int):
        super().__init__()
        self.cnn, self.crop = cnn, int(crop)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        n = mel.shape[1]
        length = self.crop
        i = torch.arange(n // length + 1, dtype=torch.int64)
        n_t = torch.full((1,), n, dtype=torch.int64)  # a tensor, not a size: exporters take tensor arithmetic
        last = torch.clamp(n_t - length, min=0)
        starts = torch.minimum(i * length, last)
        idx = torch.remainder(starts.unsqueeze(1) + torch.arange(length, dtype=torch.int64).unsqueeze(0), n_t)
        windows = mel[:, idx].permute(1, 0, 2)  # (windows, n_mels, crop)
        valid = ((i == 0) | ((i - 1) * length < n - length)).to(torch.float32).unsqueeze(1)
        probs = torch.sigmoid(self.cnn(windows))
        return (probs * valid).sum(dim=0) / valid.sum()


class Family(nn.Module):
    """A family's fold models, their probabilities averaged (`mean` or `geomean`, as fat.evaluation.ensemble)."""

    def __init__(self, folds: list[Windowed], how: str):
        super().__init__()
        if how not in ("mean", "geomean"):
            raise ValueError(f"ensemble.fold_agg must be 'mean' or 'geomean', got {how!r}")
        self.folds = nn.ModuleList(folds)
        self.geomean = how == "geomean"

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        ps = torch.stack([f(mel) for f in self.folds])
        if self.geomean:
            return torch.exp(torch.log(torch.clamp(ps, 1e-9, 1.0)).mean(dim=0))
        return ps.mean(dim=0)


class Tagger(nn.Module):
    """Waveform (samples,) -> probabilities (classes,): front end, families, combination."""

    def __init__(self, front: LogMel, families: list[Family], combiner: dict):
        super().__init__()
        self.front = front
        self.families = nn.ModuleList(families)
        single = combiner.get("single")
        method = combiner["method"]
        weights = [1.0 / len(families)] * len(families)
        coef, intercept, self.stack = [0.0] * len(families), 0.0, False
        if single is not None:
            weights = [1.0 if j == int(single) else 0.0 for j in range(len(families))]
        elif method == "weighted":
            weights = [float(w) for w in combiner["weights"]]
        elif method == "stack":
            coef = [float(c) for c in combiner["stack"]["coef"]]
            intercept, self.stack = float(combiner["stack"]["intercept"]), True
        elif method != "mean":
            raise ValueError(f"unknown combination method {method!r}")
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float64))
        self.register_buffer("coef", torch.tensor(coef, dtype=torch.float64))
        self.intercept = intercept

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        mel = self.front(waveform)
        ps = torch.stack([f(mel) for f in self.families]).to(torch.float64)  # (families, classes)
        if self.stack:
            p = torch.clamp(ps, 1e-6, 1 - 1e-6)
            z = (torch.log(p / (1 - p)) * self.coef.unsqueeze(1)).sum(dim=0) + self.intercept
            return torch.sigmoid(z).to(torch.float32)
        return (ps * self.weights.unsqueeze(1)).sum(dim=0).to(torch.float32)


def build(predictor, trace: bool = False) -> Tagger:
    """The eager module of a loaded predictor's card. With `trace`, every CNN is traced first (for
    TorchScript: the model code itself is not scriptable), on an example batch of its crop length."""
    kw = predictor.kw
    front = LogMel(kw["sr"], kw["n_fft"], kw["hop_length"], kw["n_mels"], kw["fmin"], kw["fmax"], predictor.dtype,
                   top_db=kw.get("top_db"))
    families = []
    for fam in predictor.kept:
        folds = []
        for m in predictor.members[fam]:
            cnn = m.model.cpu().eval().to(memory_format=torch.contiguous_format)
            if trace:
                with torch.no_grad():
                    cnn = torch.jit.trace(cnn, torch.zeros(2, kw["n_mels"], m.crop), check_trace=False)
            folds.append(Windowed(cnn, m.crop))
        families.append(Family(folds, predictor.fold_agg))
    return Tagger(front, families, predictor.card["combiner"]).eval()


