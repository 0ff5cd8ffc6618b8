"""Stage `{baseline,finetune,retrain}@k`: train fold k of a model family, write model + plain OOF/test predictions.
Runs under torchrun as it is; with params dist.nproc_per_node > 1 it relaunches itself under torchrun."""
import argparse
import sys

from fat import log, params
from fat.training import dist, members
from fat.io import write_json


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("family", choices=members.FOLD_FAMILIES)
    ap.add_argument("fold", type=int)
    args = ap.parse_args()
    log.stage(f"{args.family}@{args.fold}")  # fat.training.members logs the end with the figures
    p = params.load()
    dist.relaunch(int(p["dist"]["nproc_per_node"]), __file__, sys.argv[1:])
    result = members.train_member(args.family, args.fold, p)
    if result is not None:  # rank 0 (or the only process) writes
        write_json(f"metrics/{args.family}/fold{args.fold}.json", result)
    dist.teardown()


if __name__ == "__main__":
    main()
