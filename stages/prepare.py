"""Stage `prepare`: bring data.source (the embedded generator or a FAT2019-layout directory) into data/raw."""
import argparse

from fat import log, params, prepare
from fat.io import write_json


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="data/raw")
    ap.add_argument("--metrics", default="metrics/prepare.json")
    args = ap.parse_args()
    logger = log.stage("prepare")
    p = params.load()
    stats = prepare.prepare(str(p["data"]["source"]), args.out, p["synth"], seed=int(p["seed"]),
                         n_jobs=int(p["data"].get("n_jobs", 0)))
    write_json(args.metrics, stats)
    log.done(logger, "wrote %s: %s", args.out, {k: v for k, v in stats.items() if k.endswith("clips")})


if __name__ == "__main__":
    main()
