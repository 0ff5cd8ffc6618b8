"""Stage `prepare`: bring data.source (the embedded generator, or a directory in the Kaggle or
FSDKaggle2019 layout) into data/raw, validated; quarantined files go to the quarantine report.
Also writes data/manifest/: the content digests the downstream stages depend on (fat/data/manifest.py)."""
import argparse
import sys

from fat import log, params
from fat.data import manifest, prepare
from fat.errors import DataError
from fat.io import write_csv, write_json
from fat.layout import Layout

LAYOUT = Layout()


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(LAYOUT.raw))
    ap.add_argument("--manifest", default=str(LAYOUT.manifest),
                    help="digests of data/raw for DVC (fat/data/manifest.py)")
    ap.add_argument("--metrics", default=str(LAYOUT.metrics("prepare")))
    ap.add_argument("--quarantine", default=str(LAYOUT.metrics_file("quarantine.csv")),
                    help="report of the audio files left out under data.on_bad_audio: skip")
    args = ap.parse_args()
    logger = log.stage("prepare")
    p = params.load()
    stats, bad = prepare.prepare(p.data, p.synth, seed=p.seed, out_dir=args.out)
    manifest.write(args.out, args.manifest, n_jobs=p.data.n_jobs)
    write_json(args.metrics, stats)
    write_csv(args.quarantine, bad)
    if len(bad):
        logger.warning("quarantined %d audio files (data.on_bad_audio: skip); reasons in %s", len(bad), args.quarantine)
    log.done(logger, "wrote %s: %s", args.out, {k: v for k, v in stats.items() if k.endswith("clips")})


if __name__ == "__main__":
    try:
        main()
    except DataError as e:  # the data's problem, not the code's: the message, no traceback
        sys.exit(f"prepare: error: {e}")
