"""Stage `pseudo@k`: pseudo-label the noisy set with the fold-k fine-tuned model only (leak-free)."""
import argparse

from fat import log, params
from fat.training import pseudo
from fat.io import write_csv, write_json


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("fold", type=int)
    args = ap.parse_args()
    logger = log.stage(f"pseudo@{args.fold}")
    p = params.load()
    rep = pseudo.label_fold(args.fold, p)
    write_json(f"metrics/pseudo/fold{args.fold}.json", {k: v for k, v in rep.items() if k != "per_class"})
    write_csv(f"metrics/pseudo/fold{args.fold}_per_class.csv", pseudo.per_class_table(rep))  # a DVC plot
    log.done(logger, "kept %d of %d noisy clips (%.1f %%)", rep["kept"], rep["noisy_clips"], 100 * rep["kept_share"])


if __name__ == "__main__":
    main()
