"""Stage `pseudo@k`: pseudo-label the noisy set with the fold-k fine-tuned model only (leak-free)."""
import argparse

from fat import log, params, pseudo
from fat.io import write_json


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("fold", type=int)
    args = ap.parse_args()
    logger = log.setup(f"pseudo@{args.fold}")
    p = params.load()
    rep = pseudo.label_fold(args.fold, p)
    write_json(f"metrics/pseudo/fold{args.fold}.json", {k: v for k, v in rep.items() if k != "per_class"})
    logger.info("kept %d of %d noisy clips", rep["kept"], rep["noisy_clips"])


if __name__ == "__main__":
    main()
