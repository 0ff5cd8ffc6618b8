"""Stage `{baseline,finetune,retrain}@k`: train fold k of a model family, write model + plain OOF/test predictions.
Runs under torchrun as it is; with params dist.nproc_per_node > 1 it relaunches itself under torchrun."""
from fat import repro

REPRO = repro.configure()  # first: numpy and torch read their CPU settings once, when they load

import argparse  # noqa: E402
import sys  # noqa: E402

from fat import log, params  # noqa: E402
from fat.io import write_json  # noqa: E402
from fat.layout import Layout  # noqa: E402
from fat.params import FOLD_FAMILIES  # noqa: E402
from fat.training import dist, members  # noqa: E402

LAYOUT = Layout()


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("family", choices=FOLD_FAMILIES)
    ap.add_argument("fold", type=int)
    args = ap.parse_args()
    logger = log.stage(f"{args.family}@{args.fold}")  # fat.training.members logs the end with the figures
    logger.info(repro.describe(REPRO))
    p = params.load()
    dist.relaunch(p.dist.nproc_per_node, __file__, sys.argv[1:])
    result = members.train_member(args.family, args.fold, p)
    if result is not None:  # rank 0 (or the only process) writes
        write_json(LAYOUT.metrics(f"{args.family}/fold{args.fold}"), result)
    dist.teardown()


if __name__ == "__main__":
    main()
