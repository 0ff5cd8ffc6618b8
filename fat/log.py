"""Logging for stages and the CLI: one line per event on stderr, `FAT_LOG` sets the level.
A stage logs one line when it starts (`stage`) and one when it ends with its key figures (`done`);
progress bars are for people at a terminal and stay quiet in CI and in DVC's captured logs."""
from __future__ import annotations

import logging
import os
import sys
import time

_STARTED: dict[str, float] = {}


def setup(name: str) -> logging.Logger:
    logging.basicConfig(level=os.environ.get("FAT_LOG", "INFO").upper(),
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    return logging.getLogger(name)


def stage(name: str) -> logging.Logger:
    """Set up logging for DVC stage `name` and log its start."""
    logger = setup(name)
    _STARTED[name] = time.perf_counter()
    logger.info("start")
    return logger


def done(logger: logging.Logger, fmt: str = "", *args) -> None:
    """Log the end of a stage started with `stage`: elapsed time, then its key figures."""
    elapsed = time.perf_counter() - _STARTED.get(logger.name, time.perf_counter())
    logger.info("done in %.1f s" + (f": {fmt}" if fmt else ""), elapsed, *args)


def progress(iterable=None, **kwargs):
    """A tqdm progress bar that stays quiet when stderr is not a terminal (DVC logs) or under CI."""
    from tqdm.auto import tqdm

    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        kwargs["disable"] = True
    kwargs.setdefault("disable", None)  # None: disabled on non-TTY
    kwargs.setdefault("mininterval", 1.0)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
