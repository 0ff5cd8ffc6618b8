"""Training curves with DVCLive.

Every training stage logs, per epoch, the train loss and — on the epochs it validates — the
validation loss and lwlrap into a DVCLive directory (`Layout.curves`: metrics/train/<family>/fold<k>,
metrics/train/pretrain). DVCLive writes one TSV per curve under `<dir>/plots/metrics/` (x = `step`,
the 1-based epoch) and the last values to `<dir>/metrics.json`. Both are declared in dvc.yaml by
hand with `cache: false` (hence `dvcyaml=False`), so `dvc plots show` / `dvc plots diff` draw the
curves of every stage and fold and git carries them across commits.
"""
from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path
from typing import Callable, Iterator

# epoch-record keys (fat.train.fit) logged as DVCLive metrics of the same name: one TSV each,
# plots/metrics/<name>.tsv with columns step (the epoch) and <name>, which is the plot's y label
CURVES = ("train_loss", "val_loss", "val_lwlrap")


@contextlib.contextmanager
def curves(directory: str | Path, enabled: bool = True) -> Iterator[Callable[[dict], None] | None]:
    """Yield an `on_epoch(record)` callback for `fat.train.fit` that logs the record's curves
    with DVCLive into `directory` (emptied of earlier DVCLive files first). Not `enabled` (ranks
    other than 0 under torchrun): yield None and touch nothing."""
    if not enabled:
        yield None
        return
    from dvclive import Live

    logging.getLogger("dvclive").setLevel(logging.WARNING)  # no "Logging to experiment …" chatter
    with Live(dir=str(directory), resume=False, report=None, save_dvc_exp=False, dvcyaml=False) as live:

        def on_epoch(record: dict) -> None:
            live.step = int(record["epoch"])
            for name in CURVES:
                value = record.get(name)
                if value is not None and math.isfinite(value):  # NaN lwlrap (no positives) is not a point
                    live.log_metric(name, float(value))
            live.next_step()

        yield on_epoch
