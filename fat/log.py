"""Logging for stages and the CLI: one line per event on stderr, `FAT_LOG` sets the level."""
from __future__ import annotations

import logging
import os
import sys


def setup(name: str) -> logging.Logger:
    logging.basicConfig(level=os.environ.get("FAT_LOG", "INFO").upper(),
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    return logging.getLogger(name)


def progress(iterable=None, **kwargs):
    """A tqdm progress bar that stays quiet when stderr is not a terminal (CI, DVC logs)."""
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", None)  # None: disabled on non-TTY
    kwargs.setdefault("mininterval", 1.0)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
