"""Where the pipeline keeps its files (the layout of ARCHITECTURE.md), relative to the project root."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def member_seed(seed: int, fold: int) -> int:
    """Fold k of every family starts from the same seed, so families are compared paired."""
    return int(seed) * 100 + int(fold)


def tta_seeds(seed: int, fold: int) -> tuple[int, int]:
    """Seeds of member k's masked TTA views: (its out-of-fold clips, the test split and new audio)."""
    base = member_seed(seed, fold)
    return base, base + 1


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

    def pseudo_scores(self, fold: int) -> Path:
        """pseudo@k's probabilities for every noisy clip (the fold-k fine-tuned model's plain windows)."""
        return self.pseudo(fold) / "scores.csv"

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
    def bundle(self) -> Path:
        """The ensemble's model bundle: model card + the members' fold models (`fat predict`'s default)."""
        return self.root / "data/models/ensemble"

    @property
    def submission(self) -> Path:
        return self.root / "data/submission.csv"
