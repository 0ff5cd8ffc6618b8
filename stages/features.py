"""Stage `features@{split}`: log-mel every clip of a split into a packed, memory-mappable store."""
import argparse

from fat import data, features, log, params


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("split", choices=sorted(data.SPLITS))
    ap.add_argument("--raw", default="data/raw")
    ap.add_argument("--out", default="data/features/{split}")
    args = ap.parse_args()
    logger = log.setup(f"features@{args.split}")
    p = params.load()
    table = data.split_table(args.raw, args.split)
    folder = data.audio_dir(args.raw, args.split)
    kw = features.feature_kwargs(p["audio"], p["features"])
    out = args.out.format(split=args.split)
    meta = features.build_store([folder / f for f in table["fname"]], table["fname"].tolist(), out, kw,
                                dtype=p["features"]["dtype"], n_jobs=int(p["data"].get("n_jobs", 0)),
                                desc=f"log-mel {args.split}")
    logger.info("wrote %s: %d clips, %d frames", out, meta["clips"], meta["frames"])


if __name__ == "__main__":
    main()
