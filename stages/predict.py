"""Stage `predict@{family}-{k}`: test-time-augmented OOF and test predictions of one member."""
import argparse

from fat import log, params
from fat.evaluation import tta
from fat.layout import FOLD_FAMILIES
from fat.io import write_json


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("family", choices=FOLD_FAMILIES)
    ap.add_argument("fold", type=int)
    args = ap.parse_args()
    logger = log.stage(f"predict@{args.family}-{args.fold}")
    p = params.load()
    result = tta.predict_member(args.family, args.fold, p)
    write_json(f"metrics/tta/{args.family}-fold{args.fold}.json", result)
    log.done(logger, "%s", result)


if __name__ == "__main__":
    main()
