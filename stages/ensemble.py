"""Stage `ensemble`: the correlation-filtered combination of the families of `ensemble.members`
(each scored by its predict stage in metrics/<family>.json) -> data/submission.csv, the model
bundle data/models/ensemble (model card + fold models, what `fat predict` uses) and the headline
metrics file metrics/summary.json (what `dvc exp show` and `dvc metrics diff` lead with)."""
import argparse

import pandas as pd

from fat import log, params
from fat.data import tables as data
from fat.evaluation import bundle, ensemble, plots, scoring, summary
from fat.io import write_csv, write_json
from fat.layout import Layout

LAYOUT = Layout()


def main():
    argparse.ArgumentParser(description=__doc__).parse_args()
    logger = log.stage("ensemble")
    p = params.load()
    result, submission, per_class = ensemble.run(p.ensemble, p.cv.folds, p.seed)
    folds = result.pop("folds")  # OOF lwlrap per member and fold: a table and a figure, not more metrics
    bundle.write(p, data.vocabulary(LAYOUT.raw), result, LAYOUT)
    result.pop("combiner")  # unrounded, in the model card
    write_csv(LAYOUT.submission, submission, float_format="%.6g")
    write_json(LAYOUT.metrics("ensemble"), result)
    # each member's scores as its predict stage wrote them to metrics/<family>.json, recomputed from
    # data/preds (what this stage depends on) rather than read from another stage's metrics file
    family_scores = {f: scoring.score_family(f, list(p.cv.folds), LAYOUT, from_preds=True) for f in p.ensemble.members}
    write_json(LAYOUT.metrics("summary"), summary.headline(result, family_scores, LAYOUT))
    write_csv(LAYOUT.metrics_file("ensemble_per_class.csv"), per_class)
    scores = {m: v["oof_lwlrap"] for m, v in result["members"].items()}
    plots.save_png(plots.correlation_heatmap(result["correlation"], scores, result["kept"], result["dropped"],
                                             result["max_corr"]), LAYOUT.metrics_file("ensemble_correlation.png"))
    fold_table = pd.DataFrame.from_dict(folds, orient="index").rename_axis("fold").reset_index()
    write_csv(LAYOUT.metrics_file("ensemble_folds.csv"), fold_table)
    plots.save_png(plots.fold_bars(folds), LAYOUT.metrics_file("ensemble_folds.png"))
    log.done(logger, "kept %s, dropped %s: OOF lwlrap %.4f%s", result["kept"], list(result["dropped"]),
             result["lwlrap"],
             f", test lwlrap {result['test_lwlrap']:.4f}" if "test_lwlrap" in result else "")


if __name__ == "__main__":
    main()
