"""Stage `pretrain`: train the CNN on the whole noisy set (its own labels); score it on the curated set."""
import argparse

from fat import family, log, params
from fat.io import write_json


def main():
    argparse.ArgumentParser(description=__doc__).parse_args()
    log.stage("pretrain")  # fat.family logs the end with the figures
    p = params.load()
    write_json("metrics/pretrain.json", family.train_pretrain(p))


if __name__ == "__main__":
    main()
