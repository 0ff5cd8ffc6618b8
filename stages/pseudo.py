"""Stage `pseudo@k`: pseudo-label the noisy set with the fold-k fine-tuned model only (leak-free)."""
from fat import repro

REPRO = repro.configure()  # first: numpy and torch read their CPU settings once, when they load

import argparse  # noqa: E402

from fat import log, params  # noqa: E402
from fat.io import write_csv, write_json  # noqa: E402
from fat.layout import Layout  # noqa: E402
from fat.training import pseudo  # noqa: E402

LAYOUT = Layout()


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("fold", type=int)
    args = ap.parse_args()
    logger = log.stage(f"pseudo@{args.fold}")
    logger.info(repro.describe(REPRO))
    p = params.load()
    rep = pseudo.label_fold(args.fold, p.pseudo)
    write_json(LAYOUT.metrics(f"pseudo/fold{args.fold}"), {k: v for k, v in rep.items() if k != "per_class"})
    write_csv(LAYOUT.metrics_file(f"pseudo/fold{args.fold}_per_class.csv"), pseudo.per_class_table(rep))  # a DVC plot
    log.done(logger, "kept %d of %d noisy clips (%.1f %%)", rep["kept"], rep["noisy_clips"], 100 * rep["kept_share"])


if __name__ == "__main__":
    main()
