"""Stage `features@{split}`: log-mel every clip of a split into a packed, memory-mappable store."""
import argparse

from fat import log, params
from fat.data import tables
from fat.features import extract


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("split", choices=sorted(tables.SPLITS))
    ap.add_argument("--raw", default="data/raw")
    ap.add_argument("--out", default="data/features/{split}")
    args = ap.parse_args()
    logger = log.stage(f"features@{args.split}")
    p = params.load()
    out = args.out.format(split=args.split)
    meta = extract.build_split(args.raw, args.split, out, p)
    log.done(logger, "wrote %s: %d clips, %d frames", out, meta["clips"], meta["frames"])


if __name__ == "__main__":
    main()
