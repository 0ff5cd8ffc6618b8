"""Stage `ensemble`: correlation-filtered combination of the families -> data/submission.csv + metrics."""
import argparse

from fat import ensemble, log, params
from fat.io import write_csv, write_json


def main():
    argparse.ArgumentParser(description=__doc__).parse_args()
    logger = log.setup("ensemble")
    p = params.load()
    result, submission, per_class = ensemble.run(p)
    write_csv("data/submission.csv", submission, float_format="%.6g")
    write_json("metrics/ensemble.json", result)
    write_csv("metrics/ensemble_per_class.csv", per_class)
    logger.info("kept %s, dropped %s: OOF lwlrap %.4f%s", result["kept"], list(result["dropped"]), result["lwlrap"],
                f", test lwlrap {result['test_lwlrap']:.4f}" if "test_lwlrap" in result else "")


if __name__ == "__main__":
    main()
