"""Stage `pretrain`: train the CNN on the whole noisy set (its own labels); score it on the curated set.
Runs under torchrun as it is; with params dist.nproc_per_node > 1 it relaunches itself under torchrun."""
from fat import repro

REPRO = repro.configure()  # first: numpy and torch read their CPU settings once, when they load

import argparse  # noqa: E402
import sys  # noqa: E402

from fat import log, params  # noqa: E402
from fat.io import write_json  # noqa: E402
from fat.layout import Layout  # noqa: E402
from fat.training import dist, members  # noqa: E402

LAYOUT = Layout()


def main():
    argparse.ArgumentParser(description=__doc__).parse_args()
    logger = log.stage("pretrain")  # fat.training.members logs the end with the figures
    logger.info(repro.describe(REPRO))
    p = params.load()
    dist.relaunch(p.dist.nproc_per_node, __file__, sys.argv[1:])
    result = members.train_pretrain(p)
    if result is not None:  # rank 0 (or the only process) writes
        write_json(LAYOUT.metrics("pretrain"), result)
    dist.teardown()


if __name__ == "__main__":
    main()
