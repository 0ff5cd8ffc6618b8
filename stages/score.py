"""Stage `score@family`: per-fold and overall out-of-fold lwlrap of a family (+ test lwlrap)."""
import argparse

from fat import log, params
from fat.evaluation import scoring
from fat.layout import FOLD_FAMILIES
from fat.io import write_json


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("family", choices=FOLD_FAMILIES)
    args = ap.parse_args()
    logger = log.stage(f"score@{args.family}")
    p = params.load()
    result = scoring.score_family(args.family, list(p["cv"]["folds"]))
    write_json(f"metrics/{args.family}.json", result)
    log.done(logger, "OOF lwlrap %s (TTA %s), test %s", result["oof_lwlrap"], result["oof_lwlrap_tta"], result.get("test_lwlrap", "-"))


if __name__ == "__main__":
    main()
