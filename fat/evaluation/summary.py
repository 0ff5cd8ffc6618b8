"""The headline metrics file, metrics/summary.json: the figures people compare.

It is the pipeline's only DVC metrics file, so `dvc exp show` and `dvc metrics diff` (and the
pull-request report built on it) lead with it and show nothing else: the ensemble's nested-CV OOF
and test lwlrap and its kept members, each family's OOF and test lwlrap (plain and with TTA), and
the pretrained model's lwlrap on the curated set. The descriptive figures (clip counts, formats,
durations, per-fold, per-class and pseudo-label tables, timings) stay in their own files under
metrics/, declared as outputs with `cache: false`: git carries them and `dvc plots` draws them,
but they do not crowd the comparison tables.
"""
from __future__ import annotations

import json

from fat.layout import Layout

FAMILY_KEYS = ("oof_lwlrap", "oof_lwlrap_tta", "test_lwlrap", "test_lwlrap_tta")


def _read(path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing; the headline needs it (run the stage that writes it)") from None


def headline(ensemble_result: dict, family_scores: dict[str, dict], layout: Layout = Layout()) -> dict:
    """metrics/summary.json from the ensemble stage's result and each member family's scores (as
    fat.evaluation.scoring.score_family gives them), in `family_scores`' order."""
    out = {"ensemble": {k: ensemble_result[k] for k in ("lwlrap", "test_lwlrap") if k in ensemble_result}}
    out["ensemble"] = {("oof_lwlrap" if k == "lwlrap" else k): v for k, v in out["ensemble"].items()}
    out["ensemble"]["kept"] = ", ".join(ensemble_result["kept"])
    for fam, scores in family_scores.items():
        out[fam] = {k: scores[k] for k in FAMILY_KEYS if k in scores}
    pre = _read(layout.metrics("pretrain"))
    out["pretrain"] = {"curated_lwlrap": pre["curated_lwlrap"]}
    return out
