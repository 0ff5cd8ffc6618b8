"""Where the pipeline keeps its files (the layout of ARCHITECTURE.md), relative to the project root."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    """Where the pipeline keeps things (relative to the project root)."""

    root: Path = Path(".")

    @property
    def raw(self) -> Path:
        return self.root / "data/raw"

    @property
    def manifest(self) -> Path:
        """Digests of data/raw per split (fat/data/manifest.py): what the stages after prepare depend on."""
        return self.root / "data/manifest"

    def features(self, split: str) -> Path:
        return self.root / "data/features" / split

    @property
    def folds(self) -> Path:
        return self.root / "data/folds.csv"

    @property
    def pretrain(self) -> Path:
        return self.root / "data/models/pretrain"

    def member(self, family: str, fold: int) -> Path:
        return self.root / "data/models" / family / f"fold{fold}"

    def pseudo(self, fold: int) -> Path:
        return self.root / "data/pseudo" / f"fold{fold}"

    def preds(self, family: str, fold: int) -> Path:
        return self.root / "data/preds" / family / f"fold{fold}"

    def checkpoint(self, name: str) -> Path:
        """Resume state of a training run; no stage declares it, so DVC keeps it between runs."""
        return self.root / "data/checkpoints" / f"{name}.pt"

    def curves(self, family: str, fold: int | None = None) -> Path:
        """DVCLive directory of a training stage's per-epoch curves (metrics/train/<family>[/fold<k>])."""
        base = self.root / "metrics/train" / family
        return base if fold is None else base / f"fold{fold}"

    def metrics(self, name: str) -> Path:
        """A metrics JSON: metrics/<name>.json (`name` may hold a folder: `pseudo/fold0`)."""
        return self.root / "metrics" / f"{name}.json"

    def metrics_file(self, name: str) -> Path:
        """Any other file DVC tracks under metrics/ (tables, plot data, figures): metrics/<name>."""
        return self.root / "metrics" / name

    @property
    def submission(self) -> Path:
        return self.root / "data/submission.csv"
