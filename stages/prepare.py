"""Stage `prepare`: bring data.source (the embedded generator, or a directory in the Kaggle or
FSDKaggle2019 layout) into data/raw, validated; quarantined files go to the quarantine report."""
import argparse

from fat import log, params
from fat.data import prepare
from fat.io import write_csv, write_json


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="data/raw")
    ap.add_argument("--metrics", default="metrics/prepare.json")
    ap.add_argument("--quarantine", default="metrics/quarantine.csv",
                    help="report of the audio files left out under data.on_bad_audio: skip")
    args = ap.parse_args()
    logger = log.stage("prepare")
    p = params.load()
    cfg = p["data"]
    stats, bad = prepare.prepare(str(cfg["source"]), args.out, p["synth"], seed=int(p["seed"]),
                                 n_jobs=int(cfg.get("n_jobs", 0)), cfg=cfg)
    write_json(args.metrics, stats)
    write_csv(args.quarantine, bad)
    if len(bad):
        logger.warning("quarantined %d audio files (data.on_bad_audio: skip); reasons in %s", len(bad), args.quarantine)
    log.done(logger, "wrote %s: %s", args.out, {k: v for k, v in stats.items() if k.endswith("clips")})


if __name__ == "__main__":
    main()
