"""Stage `predict@{family}` (one per family of `ensemble.members`): test-time-augmented OOF and test
predictions of each fold member of a family, then the family's scores (metrics/<family>.json)."""
from fat import repro

REPRO = repro.configure()  # first: numpy and torch read their CPU settings once, when they load

import argparse  # noqa: E402

from fat import log, params  # noqa: E402
from fat.evaluation import scoring, tta  # noqa: E402
from fat.io import write_json  # noqa: E402
from fat.layout import Layout  # noqa: E402
from fat.params import FOLD_FAMILIES  # noqa: E402

LAYOUT = Layout()


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("family", choices=FOLD_FAMILIES)
    args = ap.parse_args()
    logger = log.stage(f"predict@{args.family}")
    logger.info(repro.describe(REPRO))
    p = params.load()
    result = tta.predict_family(args.family, p.cv.folds, p.tta, p.augment, p.seed)
    write_json(LAYOUT.metrics(f"tta/{args.family}"), result)
    scores = scoring.score_family(args.family, list(p.cv.folds))  # what the headline and the ensemble report
    write_json(LAYOUT.metrics(args.family), scores)
    log.done(logger, "%s; OOF lwlrap %s (TTA %s), test %s",
             "; ".join(f"{k}: OOF lwlrap plain {v['oof_lwlrap_plain']}, TTA {v['oof_lwlrap_tta']}"
                       for k, v in result["folds"].items()),
             scores["oof_lwlrap"], scores["oof_lwlrap_tta"], scores.get("test_lwlrap", "-"))


if __name__ == "__main__":
    main()
