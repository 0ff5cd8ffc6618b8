"""Stage `{baseline,finetune,retrain}@k`: train fold k of a model family, write model + plain OOF/test predictions."""
import argparse

from fat import family, log, params
from fat.io import write_json


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("family", choices=family.FOLD_FAMILIES)
    ap.add_argument("fold", type=int)
    args = ap.parse_args()
    log.stage(f"{args.family}@{args.fold}")  # fat.family logs the end with the figures
    p = params.load()
    result = family.train_member(args.family, args.fold, p)
    write_json(f"metrics/{args.family}/fold{args.fold}.json", result)


if __name__ == "__main__":
    main()
