"""`fat predict PATH…`: tag audio files with the trained ensemble, as the pipeline scores its test split.

Every file (any format and sample rate `fat.data.audio` reads) becomes log-mel frames through the same
function as the feature stores (`fat.features.extract.clip_frames`, rounded to the store's dtype), then
each kept member's fold models predict it with the pipeline's own code (`fat.evaluation.predict`: windows of
the crop length, TTA with the test split's seeds), the folds are averaged and the members combined
as the `ensemble` stage fitted them (`fat.evaluation.ensemble`: fold averaging, `Combiner`). The settings all
come from a model card (`fat.evaluation.bundle`), so `fat predict data/raw/test` reproduces
data/submission.csv and works in any directory that holds a bundle.

Files that cannot be read are named on stderr, counted, and left out; the rest are still tagged
(exit status 1 when any file failed, 2 when none could be tagged).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from fat.data.audio import AudioError
from fat.evaluation import bundle
from fat.evaluation.ensemble import Combiner, aggregate_folds
from fat.io import atomic_path, save_predictions
from fat.log import progress
from fat.params import Audio, Augment, Features, ParamsError, Tta

if TYPE_CHECKING:  # torch and the model code load when a predictor is built, not with the `fat` command
    import torch

    from fat.features.store import FeatureStore

log = logging.getLogger(__name__)

CHUNK = 64  # files featurised and scored together (bounded memory for any number of files)


def audio_extensions() -> set[str]:
    """Extensions of the formats libsndfile (hence `fat.data.audio.load`) reads here: wav, flac, ogg, mp3, …
    (headerless RAW is left out: it cannot be read without being told its layout)."""
    import soundfile as sf

    exts = {f".{k.lower()}" for k in sf.available_formats() if k != "RAW"}
    extra = {".aiff": [".aif"], ".ogg": [".oga", ".opus"], ".au": [".snd"]}
    return exts | {e for k, v in extra.items() if k in exts for e in v}


def find_audio(paths: list[str | Path]) -> list[tuple[Path, str]]:
    """(file, fname) of every audio file named or found (recursively, sorted) in the directories.
    fname is the file's path relative to the directory given (its name for files given directly),
    as Kaggle names clips; two files with the same fname are an error naming both."""
    exts = audio_extensions()
    found: list[tuple[Path, str]] = []
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in exts)
            if not files:
                log.warning("%s: no audio files (%s) in this directory", p, ", ".join(sorted(exts)))
            found += [(f, f.relative_to(p).as_posix()) for f in files]
        elif p.is_file():
            found.append((p, p.name))
        else:
            raise FileNotFoundError(f"{p}: no such file or directory")
    seen: dict[str, Path] = {}
    for f, name in found:
        if name in seen:
            raise ValueError(f"{seen[name]} and {f}: both would be clip {name!r}; tag them in separate runs")
        seen[name] = f
    return found


@dataclass
class Member:
    model: torch.nn.Module
    crop: int
    seed: int


class Predictor:
    """The models and settings of one model card, applied to feature stores."""

    def __init__(self, card: dict, root: Path, device=None):
        import torch

        from fat.device import pick_device
        from fat.training import models

        self.card, self.root = card, Path(root)
        self.classes = list(card["classes"])
        try:  # the card's sections, typed and checked as params.yaml's are
            audio = Audio.build(card["audio"], "audio")
            # a card written before features.top_db existed describes stores without a floor
            features = Features.build({"top_db": None, **card["features"]}, "features")
            self.tta = None if card["tta"] is None else Tta.build(card["tta"], "tta")
            augment = Augment.build(card["augment"], "augment")
        except ParamsError as e:
            raise ValueError(f"{self.root / bundle.CARD}: {str(e).removeprefix('params.yaml: ')}") from None
        self.kw = features.log_mel_kwargs(audio)
        self.dtype = features.dtype
        self.mask = augment.masks() if self.tta else None
        self.fold_agg = card["fold_agg"]
        self.kept = list(card["kept"])
        self.combiner = Combiner.from_state(card["combiner"])
        self.device = pick_device() if device is None else torch.device(device)
        self.members: dict[str, list[Member]] = {}
        for fam in self.kept:
            self.members[fam] = []
            for m in card["members"][fam]:
                model, ckpt = models.load(self.root / m["file"], classes=self.classes)
                model.to(self.device).eval()
                self.members[fam].append(Member(model, int(ckpt["crop_frames"]), int(m["seed"])))

    @classmethod
    def open(cls, model_dir: str | Path, params_path: str | Path = "params.yaml", device=None) -> Predictor:
        """A bundle directory (it has a card.json: the ensemble, or one family of it), or one family's
        directory of the pipeline (data/models/<family>, fold<k>/model.pt inside), whose settings
        are then those of `params_path`, as the pipeline's predict stage uses them."""
        from fat.training import models

        model_dir = Path(model_dir)
        if (model_dir / bundle.CARD).exists():
            return cls(bundle.read(model_dir), model_dir, device)
        if not model_dir.is_dir():
            raise FileNotFoundError(f"{model_dir}: no such model directory (run `dvc repro` or `dvc pull` first)")
        if not any(model_dir.glob("fold*/model.pt")):
            raise FileNotFoundError(f"{model_dir}: neither a model bundle (no {bundle.CARD}) nor a family directory "
                                    "of the pipeline (fold<k>/model.pt)")
        from fat import params as params_mod

        p = params_mod.load(params_path)
        folds = list(p.cv.folds)
        files = [model_dir / f"fold{k}" / "model.pt" for k in folds]
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{missing[0]}: missing; {params_path} has folds {folds}, so {model_dir} needs "
                                    f"fold{folds[0]}/model.pt … fold{folds[-1]}/model.pt")
        classes = models.read_checkpoint(files[0])["classes"]
        card = bundle.family_card(model_dir.name, p, classes)
        for m in card["members"][model_dir.name]:
            m["file"] = f"fold{m['fold']}/model.pt"
        return cls(card, model_dir, device)

    def featurize(self, files: list[tuple[Path, str]],
                  jobs: int = 0) -> tuple[FeatureStore | None, list[tuple[Path, str]]]:
        """An in-memory feature store of the readable files (in order) and the (file, problem) of the rest."""
        import torch

        from fat.features.extract import clip_frames
        from fat.features.store import FeatureStore

        def one(path):
            try:
                return clip_frames(path, self.kw, self.dtype, self.device), None
            except (AudioError, ValueError) as e:  # unreadable, empty, NaN samples …: named and counted
                return None, str(e) if str(path) in str(e) else f"{path}: {e}"

        with ThreadPoolExecutor(max(1, jobs or torch.get_num_threads())) as pool:
            results = list(pool.map(one, [f for f, _ in files]))
        frames, names, durations, failed = [], [], [], []
        for (path, name), (got, problem) in zip(files, results):
            if got is None:
                failed.append((path, problem))
                continue
            frames.append(got[0])
            names.append(name)
            durations.append(got[1])
        if not frames:
            return None, failed
        lengths = np.array([len(f) for f in frames], dtype=np.int64)
        index = pd.DataFrame({"fname": names, "offset": np.concatenate([[0], np.cumsum(lengths)[:-1]]),
                              "length": lengths, "duration": durations})
        store = FeatureStore(Path(f"<{len(names)} files>"), np.concatenate(frames), index,
                             {**self.kw, "dtype": self.dtype})
        return store, failed

    def family_probs(self, family: str, store: FeatureStore) -> np.ndarray:
        """One member's probabilities: its fold models (with TTA when the card says so), averaged."""
        from fat.evaluation.predict import predict_plain, predict_tta

        rows = np.arange(len(store))
        preds = []
        for m in self.members[family]:
            if self.tta:
                preds.append(predict_tta(m.model, store, rows, m.crop, self.tta, self.mask, device=self.device,
                                         seed=m.seed)[1])
            else:
                preds.append(predict_plain(m.model, store, rows, m.crop, device=self.device))
        return aggregate_folds(preds, self.fold_agg)

    def predict(self, store: FeatureStore) -> np.ndarray:
        """(clips, classes) probabilities of the card's combination."""
        return self.combiner([self.family_probs(fam, store) for fam in self.kept])


def tag(predictor: Predictor, files: list[tuple[Path, str]], jobs: int = 0, chunk: int = CHUNK):
    """Tag `files` in chunks. Returns (fnames, probs, failed [(file, problem)], audio seconds)."""
    fnames, probs, failed, seconds = [], [], [], 0.0
    with progress(total=len(files), desc="fat predict", unit="file") as bar:
        for i in range(0, len(files), chunk):
            part = files[i : i + chunk]
            store, bad = predictor.featurize(part, jobs)
            for _, problem in bad:
                log.error("%s", problem)
            failed += bad
            if store is not None:
                probs.append(predictor.predict(store))
                fnames += store.fnames
                seconds += float(store.index["duration"].sum())
            bar.update(len(part))
    probs_arr = np.concatenate(probs) if probs else np.zeros((0, len(predictor.classes)))
    return fnames, probs_arr, failed, seconds


def top_labels(probs: np.ndarray, classes: list[str], k: int) -> list[list[tuple[str, float]]]:
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[(classes[j], float(row[j])) for j in idx] for row, idx in zip(probs, order)]


def write_output(out: Path, fnames, probs, classes, k: int, failed, files: dict[str, Path]) -> None:
    """CSV: Kaggle format (fname + one column per class). JSON: top-k labels and scores per file,
    and the files that failed."""
    suffix = out.suffix.lower()
    if suffix == ".csv":
        save_predictions(out, fnames, probs, classes)
    elif suffix == ".json":
        doc = {"classes": list(classes), "top_k": k,
               "files": [{"fname": f, "file": str(files[f]), "labels": [c for c, _ in top],
                          "scores": {c: round(s, 6) for c, s in top}}
                         for f, top in zip(fnames, top_labels(probs, classes, k))],
               "failed": [{"file": str(p), "problem": why} for p, why in failed]}
        with atomic_path(out) as tmp:
            tmp.write_text(json.dumps(doc, indent=2) + "\n")
    else:
        raise ValueError(f"{out}: output must end in .csv (Kaggle format) or .json (top-k labels per file)")


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="tag audio files or directories with the trained ensemble (or one family)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                   help="audio files, or directories searched recursively for them")
    p.add_argument("-o", "--out", type=Path, default=None,
                   help="write FILE.csv (Kaggle format: fname + one column per class) or FILE.json (top-k "
                        "labels and scores per file, and the files that failed); default: top-k per file on stdout")
    p.add_argument("--model", type=Path, default=Path("data/models/ensemble"),
                   help="a model bundle (default: %(default)s, the ensemble stage's; data/models/ensemble/<family> "
                        "for one family of it) or a pipeline family directory (data/models/<family>, settings "
                        "from --params)")
    p.add_argument("--params", type=Path, default=Path("params.yaml"),
                   help="params file for a pipeline family directory (default: %(default)s)")
    p.add_argument("-k", "--top-k", type=int, default=3, help="labels listed per file (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=0, help="threads reading and transforming audio (0 = all cores)")
    p.set_defaults(func=main)


def main(args) -> int:
    if args.top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {args.top_k}")
    if args.out is not None and args.out.suffix.lower() not in (".csv", ".json"):
        raise ValueError(f"{args.out}: output must end in .csv (Kaggle format) or .json (top-k labels per file)")
    files = find_audio(args.paths)
    if not files:
        raise ValueError(f"no audio files in {', '.join(map(str, args.paths))}")
    t0 = time.perf_counter()
    predictor = Predictor.open(args.model, args.params)
    fnames, probs, failed, seconds = tag(predictor, files, args.jobs)
    elapsed = time.perf_counter() - t0
    if failed:
        print(f"fat predict: {len(failed)} of {len(files)} files could not be read:", file=sys.stderr)
        for _, problem in failed:
            print(f"  {problem}", file=sys.stderr)
    if fnames:
        if args.out is None:
            for f, top in zip(fnames, top_labels(probs, predictor.classes, args.top_k)):
                print(f"{f}\t" + "  ".join(f"{c} {s:.3f}" for c, s in top))
        else:
            write_output(args.out, fnames, probs, predictor.classes, args.top_k, failed, {n: p for p, n in files})
    log.info("tagged %d files (%.1f s of audio) in %.1f s: %.1f audio-seconds per second; %d unreadable%s",
             len(fnames), seconds, elapsed, seconds / elapsed if elapsed else 0.0, len(failed),
             f"; wrote {args.out}" if args.out and fnames else "")
    if not fnames:
        return 2
    return 1 if failed else 0
