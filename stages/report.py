"""Stage `report`: know your data — class counts, labels per clip, durations, audio formats,
silent/short clips and the noisy-vs-curated label shift of data/raw, as metrics + figures."""
import argparse

from fat import log, params
from fat.data import report
from fat.evaluation import plots
from fat.io import write_csv, write_json


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--raw", default="data/raw")
    ap.add_argument("--out", default="metrics/report")
    args = ap.parse_args()
    logger = log.stage("report")
    p = params.load()
    rep = report.build(args.raw, p["report"], n_jobs=int(p["data"].get("n_jobs", 0)))
    write_json(f"{args.out}.json", rep["metrics"])
    write_csv(f"{args.out}/class_counts.csv", rep["class_counts"])
    write_csv(f"{args.out}/flagged_clips.csv", rep["flagged"])
    for name, fig in report.figures(rep, float(p["report"]["short_s"])).items():
        plots.save_png(fig, f"{args.out}/{name}.png")
    m = rep["metrics"]
    log.done(logger, "%s; %d silent, %d short clips; noisy vs curated label shift TV %.3f",
             ", ".join(f"{s} {v['clips']} clips {v['hours']} h" for s, v in m["splits"].items()),
             sum(v["silent_clips"] for v in m["splits"].values()), sum(v["short_clips"] for v in m["splits"].values()),
             m["noisy_vs_curated"]["total_variation"])


if __name__ == "__main__":
    main()
