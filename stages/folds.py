"""Stage `folds`: multilabel-stratified K-fold assignment of the curated set -> data/folds.csv."""
import argparse

from fat import log, params
from fat.data import folds
from fat.io import write_csv
from fat.layout import Layout

LAYOUT = Layout()


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--raw", default=str(LAYOUT.raw))
    ap.add_argument("--out", default=str(LAYOUT.folds))
    args = ap.parse_args()
    logger = log.stage("folds")
    p = params.load()
    df = folds.curated_folds(args.raw, p.cv.n_folds, seed=p.seed, group_column=p.cv.group_column)
    write_csv(args.out, df)
    log.done(logger, "wrote %s: fold sizes %s", args.out, df["fold"].value_counts().sort_index().tolist())


if __name__ == "__main__":
    main()
