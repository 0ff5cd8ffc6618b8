"""The `fat` command: helpers around the DVC pipeline (which itself runs with `dvc repro`)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import pandas as pd

DESCRIPTION = """\
fat: a reproducible FAT2019-style audio tagging pipeline, run by DVC.

The pipeline itself runs with `dvc repro` (all stages) or `dvc exp run -S key=value`
(a variant). These subcommands help around it."""

EXIT_CODES = """\
exit status (every command):
  0  success
  1  the command ran and found problems (fat validate: the directory has problems, each listed)
  2  error: bad arguments, or an input that cannot be used (a missing or invalid file, a params
     value out of range, a failed download); the message on stderr names it"""


def _preset(args) -> int:
    from fat import params
    from fat.tools import lock

    if args.list or not args.name:
        for name in params.preset_names():
            first = (params.PRESETS_DIR / f"{name}.yaml").read_text().splitlines()[0].lstrip("# ")
            print(f"{name:10s} {first}")
        return 0
    params.apply_preset(args.name, args.params)
    print(f"applied preset {args.name!r} to {args.params}; run `dvc repro` to rebuild what it changes")
    root = Path(args.params).resolve().parent
    if (root / "dvc.yaml").exists() and (root / "dvc.lock").exists():
        _report_pruned(root, lock.prune(root))
    return 0


def _report_pruned(root: Path, removed: list[str]) -> None:
    if removed:
        print(f"{root / 'dvc.lock'}: removed {len(removed)} entries of stages the pipeline no longer defines: "
              + ", ".join(removed))


def _prune_lock(args) -> int:
    from fat.tools import lock

    removed = lock.prune(args.repo)
    _report_pruned(args.repo, removed)
    if not removed:
        print(f"{args.repo / 'dvc.lock'}: every entry is a stage of the pipeline; nothing to remove")
    return 0


VALIDATE_FLAGS = {"data.max_seconds": "--max-seconds", "data.min_peak_dbfs": "--min-peak-dbfs",
                  "data.n_jobs": "--jobs", "data.corrections": "--corrections"}


def _flag_named(problem: str) -> str:
    """A data-params problem as `fat validate` says it: 'params.yaml: data.max_seconds must …' ->
    '--max-seconds (data.max_seconds) must …'."""
    problem = problem.removeprefix("params.yaml: ")
    key = problem.split(" ", 1)[0]
    return f"{VALIDATE_FLAGS[key]} ({key}){problem[len(key):]}" if key in VALIDATE_FLAGS else problem


def _validate(args) -> int:
    from fat import params
    from fat.data import corrections, prepare
    from fat.errors import DataError

    try:  # the checks of params.yaml's data section, named by flag
        cfg = params.Data(max_seconds=args.max_seconds, min_peak_dbfs=args.min_peak_dbfs, n_jobs=args.jobs,
                          corrections=args.corrections)
    except params.ParamsError as e:
        raise DataError(*(_flag_named(p) for p in e.problems)) from None
    path = corrections.resolve(cfg.corrections)
    problems = prepare.validate_layout(args.directory, max_seconds=cfg.max_seconds, min_peak_dbfs=cfg.min_peak_dbfs,
                                       n_jobs=cfg.n_jobs, corrections=None if path is None else corrections.read(path))
    for p in problems:
        print(p)
    verdict = "OK: a valid Kaggle or FSDKaggle2019 layout" if not problems else f"{len(problems)} problem(s)"
    print(f"{args.directory}: {verdict}")
    return 1 if problems else 0


def _score(args) -> int:
    from fat import metrics
    from fat.data import tables as data
    from fat.io import load_predictions

    fnames, probs = load_predictions(args.predictions)
    cols = list(pd.read_csv(args.predictions, nrows=0).columns[1:])
    truth = data.read_labels(args.labels, cols).set_index("fname")
    missing = [f for f in fnames if f not in truth.index]
    if missing:
        raise ValueError(f"{args.labels}: no labels for {len(missing)} predicted clips, e.g. {missing[:3]}")
    y = data.multi_hot(truth.loc[fnames, "labels"], cols)
    keep = y.sum(axis=1) > 0
    out = {"lwlrap": round(metrics.lwlrap(y[keep], probs[keep]), 6), "clips": int(keep.sum())}
    print(json.dumps(out))
    return 0


def _label_check(args) -> int:
    from fat.errors import DataError
    from fat.evaluation import label_issues

    issues = label_issues.read_issues(args.issues)
    prov = label_issues.read_provenance(args.provenance)
    splits = ("train_curated", "train_noisy")
    if args.split:  # one split's suggestions against that split's clips (the two are scored by different models)
        if "split" not in issues.columns:
            raise DataError(f"{args.issues}: no split column, so --split {args.split} cannot select rows "
                            f"(the label_issues stage writes one)")
        issues = issues[issues["split"] == args.split].reset_index(drop=True)
        splits = (f"train_{args.split}",)
    out = label_issues.evaluate(issues, prov, args.top, issues_path=str(args.issues), splits=splits)
    print(json.dumps(out))
    return 0


def _synth(args) -> int:
    from fat import params
    from fat.data import prepare

    if args.out.exists():
        raise ValueError(f"{args.out}: already exists; choose a new directory")
    p = params.load(args.params)
    data = dataclasses.replace(p.data, source="synthetic", n_jobs=args.jobs)
    stats, _ = prepare.prepare(data, p.synth, seed=p.seed if args.seed is None else args.seed, out_dir=args.out)
    print(json.dumps({k: v for k, v in stats.items() if k.endswith("clips")}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fat", description=DESCRIPTION, epilog=EXIT_CODES,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("preset", help="merge a params preset (tiny, fat2019) into params.yaml, keeping comments")
    p.add_argument("name", nargs="?", help="preset name; omit (or --list) to list them")
    p.add_argument("--list", action="store_true", help="list the presets")
    p.add_argument("--params", default="params.yaml", help="params file to update (default: %(default)s)")
    p.set_defaults(func=_preset)

    p = sub.add_parser("prune-lock", help="remove dvc.lock entries of stages the pipeline no longer defines "
                                          "(e.g. folds 3-4 after going back from 5 folds to 3): DVC keeps them, "
                                          "and rereads and rewrites them after every stage")
    p.add_argument("--repo", type=Path, default=Path("."), help="project root (default: the current directory)")
    p.set_defaults(func=_prune_lock)

    p = sub.add_parser("validate", help="check a data directory (Kaggle or FSDKaggle2019 layout): tables and "
                                        "every audio file; prints every problem, each naming its file")
    p.add_argument("directory", type=Path)
    p.add_argument("--max-seconds", type=float, default=60.0, help="longer clips are problems (default: %(default)s)")
    p.add_argument("--min-peak-dbfs", type=float, default=-80.0,
                   help="clips whose peak is at or below this are silent (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=0, help="worker processes (0 = all cores)")
    p.add_argument("--corrections", default=None,
                   help="also check a corrections file against the tables: a shipped name (e.g. fat2019_curated) "
                        "or a path, as data.corrections")
    p.set_defaults(func=_validate)

    p = sub.add_parser("score", help="lwlrap of a Kaggle-format predictions CSV against a fname,labels CSV")
    p.add_argument("predictions", type=Path, help="fname + one probability column per class")
    p.add_argument("labels", type=Path, help="fname,labels (comma-joined)")
    p.set_defaults(func=_score)

    p = sub.add_parser("label-check", help="precision and recall of the top-N label-issue suggestions "
                                           "(metrics/label_issues.csv) against a provenance CSV of true labels")
    p.add_argument("issues", type=Path, help="the label_issues stage's table (fname,action,labels,...), best first")
    p.add_argument("provenance", type=Path, help="split,fname,true_labels,given_labels per clip (e.g. the "
                                                 "real-audio dev set's provenance.csv)")
    p.add_argument("--top", type=int, nargs="+", default=[10, 25, 50, 100], help="N values (default: %(default)s)")
    p.add_argument("--split", choices=["curated", "noisy"], help="score only this split's suggestions, against "
                                                                  "its own clips (default: both, in one ranking)")
    p.set_defaults(func=_label_check)

    p = sub.add_parser("synth", help="write the embedded synthetic dataset (FAT2019 layout) to a directory")
    p.add_argument("out", type=Path, help="output directory (must not exist)")
    p.add_argument("--params", default="params.yaml", help="params file with the synth section (default: %(default)s)")
    p.add_argument("--seed", type=int, default=None, help="override the params seed")
    p.add_argument("--jobs", type=int, default=0, help="worker processes (0 = all cores)")
    p.set_defaults(func=_synth)

    from fat.inference import export, predictor  # commands that live in their own modules
    from fat.tools import bench, checkrepro, fetch, offline_plots, prreport

    bench.add_parser(sub)
    checkrepro.add_parser(sub)
    export.add_parser(sub)
    fetch.add_parser(sub)
    predictor.add_parser(sub)
    prreport.add_parser(sub)
    offline_plots.add_parser(sub)
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not getattr(args, "func", None):
        ap.print_help()
        return 0
    from fat import log

    log.setup("fat")
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as e:
        print(f"fat {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
