"""Stage `pretrain`: train the CNN on the whole noisy set (its own labels); score it on the curated set.
Runs under torchrun as it is; with params dist.nproc_per_node > 1 it relaunches itself under torchrun."""
import argparse
import sys

from fat import log, params
from fat.training import dist, members
from fat.io import write_json


def main():
    argparse.ArgumentParser(description=__doc__).parse_args()
    log.stage("pretrain")  # fat.training.members logs the end with the figures
    p = params.load()
    dist.relaunch(int(p["dist"]["nproc_per_node"]), __file__, sys.argv[1:])
    result = members.train_pretrain(p)
    if result is not None:  # rank 0 (or the only process) writes
        write_json("metrics/pretrain.json", result)
    dist.teardown()


if __name__ == "__main__":
    main()
