"""Stage `ensemble`: correlation-filtered combination of the families -> data/submission.csv, the model
bundle data/models/ensemble (model card + fold models, what `fat predict` uses) and the headline
metrics file metrics/summary.json (what `dvc exp show` and `dvc metrics diff` lead with)."""
import argparse

import pandas as pd

from fat import log, params
from fat.data import tables as data
from fat.evaluation import bundle, ensemble, plots, summary
from fat.io import write_csv, write_json


def main():
    argparse.ArgumentParser(description=__doc__).parse_args()
    logger = log.stage("ensemble")
    p = params.load()
    result, submission, per_class = ensemble.run(p)
    folds = result.pop("folds")  # OOF lwlrap per member and fold: a table and a figure, not more metrics
    bundle.write(p, data.vocabulary("data/raw"), result)
    result.pop("combiner")  # unrounded, in the model card
    write_csv("data/submission.csv", submission, float_format="%.6g")
    write_json("metrics/ensemble.json", result)
    write_json("metrics/summary.json", summary.headline(result))
    write_csv("metrics/ensemble_per_class.csv", per_class)
    scores = {m: v["oof_lwlrap"] for m, v in result["members"].items()}
    plots.save_png(plots.correlation_heatmap(result["correlation"], scores, result["kept"], result["dropped"],
                                             result["max_corr"]), "metrics/ensemble_correlation.png")
    write_csv("metrics/ensemble_folds.csv", pd.DataFrame.from_dict(folds, orient="index").rename_axis("fold").reset_index())
    plots.save_png(plots.fold_bars(folds), "metrics/ensemble_folds.png")
    log.done(logger, "kept %s, dropped %s: OOF lwlrap %.4f%s", result["kept"], list(result["dropped"]), result["lwlrap"],
             f", test lwlrap {result['test_lwlrap']:.4f}" if "test_lwlrap" in result else "")


if __name__ == "__main__":
    main()
