"""Stage `label_issues`: rank the curated and noisy clips whose given labels the fine-tuned fold
models disagree with (their OOF predictions and pseudo@k's scores of the noisy set: no model runs
here); write the suggestions in the `data.corrections` format."""
from fat import log, params
from fat.evaluation import label_issues
from fat.evaluation.plots import save_png
from fat.io import write_csv, write_json
from fat.layout import Layout

LAYOUT = Layout()


def main():
    logger = log.stage("label_issues")
    p = params.load()
    table, summary, fig = label_issues.build(p.label_issues, list(p.cv.folds), LAYOUT)
    write_csv(LAYOUT.metrics_file("label_issues.csv"), table)
    write_json(LAYOUT.metrics("label_issues"), summary)
    save_png(fig, LAYOUT.metrics_file("label_issues.png"))
    log.done(logger, "%d suggestions (%s) -> %s", summary["suggested"],
             ", ".join(f"{s} {summary[s]['suggested']} of {summary['examined'][s]}" for s in summary["examined"]),
             LAYOUT.metrics_file("label_issues.csv"))


if __name__ == "__main__":
    main()
