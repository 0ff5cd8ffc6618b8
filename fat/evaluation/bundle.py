"""The ensemble's model bundle: what `fat predict` and `fat export` need to score new audio.

The `ensemble` stage writes `data/models/ensemble/`:

  card.json              the model card of the ensemble: classes, the front end (sample rate,
                         log-mel settings, the feature store's storage dtype), how each member
                         predicts (windows of its crop length, TTA settings and seeds), how the
                         folds are averaged, and the fitted combination of the kept members
                         (method, weights / stacker / the guard's single member), with its scores;
  <family>/fold<k>.pt    every member's fold models (byte copies of data/models/<family>/fold<k>/model.pt,
                         taken from the copies predict@<family> leaves in data/preds/<family>/fold<k>/);
  <family>/card.json     the card of that family alone (its folds averaged the same way).

Each directory with a card.json is self-contained: `dvc artifacts get REPO ensemble -o DIR` (the
artifacts of dvc.yaml) gives everything `fat predict --model DIR` needs, without the repository.
This module reads and writes cards only (no torch), so the `ensemble` stage stays light.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from fat.io import atomic_path
from fat.layout import Layout, tta_seeds
from fat.params import Params

CARD = "card.json"
FORMAT = "fat-model-card/1"


def settings(p: Params) -> dict:
    """The part of a card that comes from params.yaml, as plain values: the sections that set the
    front end (`audio`, `features`), the members' prediction (`tta`, `augment`'s mask sizes for
    the masked views, when `ensemble.use_tta` is on) and the fold averaging (`ensemble.fold_agg`)."""
    return {
        "audio": p.audio.as_dict(),
        "features": p.features.as_dict(),
        "tta": p.tta.as_dict() if p.ensemble.use_tta else None,
        "augment": p.augment.as_dict(),
        "fold_agg": p.ensemble.fold_agg,
    }


def _members(family: str, folds: list[int], seed: int, prefix: str) -> list[dict]:
    return [{"fold": int(k), "file": f"{prefix}fold{k}.pt", "seed": tta_seeds(seed, k)[1]} for k in folds]


def family_card(family: str, p: Params, classes: list[str], scores: dict | None = None, prefix: str = "") -> dict:
    """The card of one family: its fold models averaged (`ensemble.fold_agg`), nothing combined."""
    folds, seed = list(p.cv.folds), p.seed
    return {"format": FORMAT, "name": family, "classes": list(classes), **settings(p),
            "members": {family: _members(family, folds, seed, prefix)},
            "kept": [family], "combiner": {"method": "mean", "guard": False, "single": None, "weights": None,
                                           "stack": None},
            "scores": scores or {}}


def ensemble_card(p: Params, classes: list[str], result: dict) -> dict:
    """The card of the ensemble the stage built (`result`: fat.ensemble.run's metrics, with the
    fitted `combiner` state): every member's folds listed, the kept ones combined."""
    folds, seed = list(p.cv.folds), p.seed
    members = list(result["members"])
    scores = {k: result[k] for k in ("lwlrap", "test_lwlrap") if k in result}
    return {"format": FORMAT, "name": "ensemble", "classes": list(classes), **settings(p),
            "members": {m: _members(m, folds, seed, f"{m}/") for m in members},
            "kept": list(result["kept"]), "combiner": result["combiner"], "final": result["final"],
            "scores": {"oof_lwlrap" if k == "lwlrap" else k: v for k, v in scores.items()}}


def write(p: Params, classes: list[str], result: dict, layout: Layout = Layout()) -> Path:
    """Write the bundle (cards + copies of every member's fold models) atomically; returns its path."""
    folds = list(p.cv.folds)
    with atomic_path(layout.bundle) as tmp:
        tmp.mkdir(parents=True)
        for fam in result["members"]:
            (tmp / fam).mkdir()
            for k in folds:
                src = layout.preds(fam, k) / "model.pt"
                if not src.is_file():
                    raise FileNotFoundError(f"{src}: missing; run predict@{fam} (it copies member {fam}@{k}'s model)")
                shutil.copyfile(src, tmp / fam / f"fold{k}.pt")
            info = result["members"][fam]
            fam_scores = {k: info[k] for k in ("oof_lwlrap", "test_lwlrap") if k in info}
            _dump(tmp / fam / CARD, family_card(fam, p, classes, fam_scores))
        _dump(tmp / CARD, ensemble_card(p, classes, result))
    return layout.bundle


def _dump(path: Path, card: dict) -> None:
    path.write_text(json.dumps(card, indent=2) + "\n")


def read(directory: str | Path) -> dict:
    """A bundle directory's card, checked: every model file it lists exists."""
    directory = Path(directory)
    path = directory / CARD
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing; {directory} is not a model bundle") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a model card ({e})") from None
    if card.get("format") != FORMAT:
        raise ValueError(f"{path}: format {card.get('format')!r}, expected {FORMAT!r}")
    for fam in card["kept"]:
        if fam not in card["members"]:
            raise ValueError(f"{path}: kept member {fam!r} is not among the members {sorted(card['members'])}")
        for m in card["members"][fam]:
            if not (directory / m["file"]).is_file():
                raise FileNotFoundError(f"{directory / m['file']}: missing (listed in {path})")
    return card
