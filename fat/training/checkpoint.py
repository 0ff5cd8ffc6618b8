"""Training checkpoints that make a killed stage resume where it stopped.

`fit` saves model, optimiser, scheduler, AMP scaler, every RNG state, the epoch and the history
after each epoch, atomically, and reads it back with `torch.load(weights_only=True)` (tensors and
plain values only: a crafted file is refused, never run). The checkpoint carries a fingerprint of
everything that determines
the run (params, the input files' hashes); a checkpoint whose fingerprint differs — left by an
older version of the experiment — is ignored, never resumed. On success the checkpoint is deleted.
Checkpoints live under `data/checkpoints/`, which no stage declares as an output, so DVC leaves
them in place between runs."""
from __future__ import annotations

import hashlib
import json
import logging
import pickle
from pathlib import Path

import torch

from fat.io import atomic_path

log = logging.getLogger(__name__)


def file_digest(path: str | Path) -> str:
    """md5 of a file, or of a directory's files (names and contents), for fingerprints."""
    path = Path(path)
    h = hashlib.md5()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def fingerprint(**parts) -> str:
    """A stable hash of JSON-serialisable parts (params sections, file digests, names)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Checkpointer:
    """Save / load / clear the checkpoint of one training run."""

    def __init__(self, path: str | Path, fingerprint: str):
        self.path, self.fingerprint = Path(path), str(fingerprint)

    def load(self) -> dict | None:
        """The saved state, or None when there is none or it belongs to another run."""
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:  # weights_only refuses anything but tensors and plain values
            from fat.training.models import unpickling_problem

            why = unpickling_problem(e)
            if "Unsupported global" in why:
                log.warning("%s: checkpoint refused and ignored: it is not a plain weights file, and loading it "
                            "could run code (%s)", self.path, why)
            else:
                log.warning("%s: unreadable checkpoint ignored (%s)", self.path, why)
            return None
        except (EOFError, RuntimeError, OSError) as e:  # reported, then ignored:
            # a checkpoint only saves time; a truncated or foreign file must not stop the stage
            log.warning("%s: unreadable checkpoint ignored (%s)", self.path, e)
            return None
        if state.get("fingerprint") != self.fingerprint:
            log.warning("%s: checkpoint of a different run (fingerprint %s, expected %s) ignored",
                        self.path, state.get("fingerprint"), self.fingerprint)
            return None
        log.info("%s: resuming after epoch %d", self.path, state["epoch"])
        return state

    def save(self, state: dict) -> None:
        with atomic_path(self.path) as tmp:
            torch.save({**state, "fingerprint": self.fingerprint}, tmp)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def for_run(name: str, params: dict, inputs: list, path: str | Path) -> Checkpointer:
    """The checkpoint at `path` of training run `name`, fingerprinted by the params and the
    contents of its input files."""
    digests = {str(p): file_digest(p) for p in inputs}
    return Checkpointer(path, fingerprint(name=name, params=params, inputs=digests))
