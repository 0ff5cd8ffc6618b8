"""Stage `label_issues`: rank the curated and noisy clips whose given labels the fine-tuned fold
models disagree with; write the suggestions in the `data.corrections` format."""
from fat import repro

REPRO = repro.configure()  # first: numpy and torch read their CPU settings once, when they load

from fat import log, params  # noqa: E402
from fat.evaluation import label_issues  # noqa: E402
from fat.evaluation.plots import save_png  # noqa: E402
from fat.io import write_csv, write_json  # noqa: E402
from fat.layout import Layout  # noqa: E402

LAYOUT = Layout()


def main():
    logger = log.stage("label_issues")
    logger.info(repro.describe(REPRO))
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
