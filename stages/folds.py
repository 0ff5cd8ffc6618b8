"""Stage `folds`: multilabel-stratified K-fold assignment of the curated set -> data/folds.csv."""
import argparse

from fat import log, params
from fat.data import folds
from fat.io import write_csv


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--raw", default="data/raw")
    ap.add_argument("--out", default="data/folds.csv")
    args = ap.parse_args()
    logger = log.stage("folds")
    p = params.load()
    df = folds.curated_folds(args.raw, int(p["cv"]["n_folds"]), seed=int(p["seed"]))
    write_csv(args.out, df)
    log.done(logger, "wrote %s: fold sizes %s", args.out, df["fold"].value_counts().sort_index().tolist())


if __name__ == "__main__":
    main()
