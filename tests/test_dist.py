"""Beyond one process: fit() under torchrun with 2 gloo processes on CPU (gradients synchronised,
metrics reduced, close to the 1-process run), and a training process killed mid-run that resumes
from its checkpoint to exactly the uninterrupted result."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fat.training.checkpoint import Checkpointer
from test_train import band_problem

# A training run as its own process (what a stage is): fits the band problem, writes per-rank facts.
SCRIPT = r'''
import hashlib, json, sys, time
from pathlib import Path
import numpy as np, torch
from fat import log
from fat.training import dist, models
from fat.training import loop as train
from fat.training.checkpoint import Checkpointer
from fat.features.store import FeatureStore

store_dir, out, ckpt, pause, epochs = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
log.setup("run")
ctx = dist.setup(torch.device("cpu"))
torch.set_num_threads(1)
store = FeatureStore.open(store_dir)
targets = np.load(store_dir / "targets.npy")
rows = np.arange(len(store))
tr, va = rows[:40], rows[40:]
torch.manual_seed(0)
model = models.build({"base_channels": 4, "n_blocks": 2, "dropout": 0.1, "channels": ["mel"]}, 3, 12)
data = train.CropDataset(store, tr, targets[tr], 16, seed=1)

def validate(m):
    time.sleep(pause)  # gives a test the time to kill the process between epochs
    return train.evaluate(m, store, va, targets[va], 16, device=torch.device("cpu"))

cfg = {"epochs": epochs, "batch_size": 8, "lr": 0.01, "weight_decay": 0.0, "warmup": 0.2, "eval_every": 1}
aug = {"p": 0.5, "freq_masks": 1, "freq_frac": 0.1, "time_masks": 1, "time_frac": 0.1}
hist = train.fit(model, data, train_cfg=cfg, mixup_alpha=0.2, augment_cfg=aug, seed=1, device=ctx.device,
                 validate=validate, checkpoint=Checkpointer(ckpt, "test") if ckpt != "-" else None)
digest = hashlib.md5(b"".join(t.detach().numpy().tobytes() for t in model.parameters())).hexdigest()
full = hashlib.md5(b"".join(t.detach().numpy().tobytes() for t in model.state_dict().values())).hexdigest()
out.mkdir(parents=True, exist_ok=True)
(out / f"rank{ctx.rank}.json").write_text(json.dumps({"world": ctx.world, "digest": digest, "full": full,
    "history": [{k: v for k, v in r.items() if k != "samples_per_s"} for r in hist]}))
dist.teardown()
'''


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    _, targets = band_problem(root / "store", n_clips=60)
    np.save(root / "store" / "targets.npy", targets)
    (root / "run.py").write_text(SCRIPT)
    return root


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1", "FAT_LOG": "INFO"}


def _run(setup, out, *, nproc=1, ckpt="-", pause=0.0, epochs=6, wait=True):
    args = [str(setup / "store"), str(out), str(ckpt), str(pause), str(epochs)]
    cmd = [sys.executable, str(setup / "run.py"), *args]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *cmd[1:]]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if not wait:
        return proc
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-3000:]
    return output


def _facts(out: Path, rank=0) -> dict:
    return json.loads((out / f"rank{rank}.json").read_text())


def test_two_gloo_processes_train_in_sync_and_match_one_process(setup, tmp_path):
    _run(setup, tmp_path / "one", epochs=10)
    _run(setup, tmp_path / "two", nproc=2, ckpt=tmp_path / "ck.pt", epochs=10)
    one, r0, r1 = _facts(tmp_path / "one"), _facts(tmp_path / "two", 0), _facts(tmp_path / "two", 1)
    assert one["world"] == 1 and r0["world"] == r1["world"] == 2
    # parameters are identical on every rank (BatchNorm running statistics are per rank: DDP
    # broadcasts rank 0's at each forward, and rank 0's model is the one that is saved)
    assert r0["digest"] == r1["digest"], "ranks ended with different weights: gradients were not synchronised"
    assert r0["history"] == r1["history"], "every rank must report the same (reduced) figures"
    assert r0["digest"] != one["digest"]  # each rank really trained on its own half of every batch
    # the same problem learnt as well: the last three epochs' validation lwlrap on the tiny band
    # problem, well above chance (random scores give (1 + 1/2 + 1/3) / 3 = 0.61 for one label of 3)
    final_one, final_two = (np.mean([r["val_lwlrap"] for r in f["history"][-3:]]) for f in (one, r0))
    assert final_one > 0.7 and final_two > 0.7, (final_one, final_two)
    assert abs(final_one - final_two) < 0.1
    assert Checkpointer(tmp_path / "ck.pt", "test").load()["epoch"] == 10  # rank 0 wrote it


def test_killed_training_resumes_to_the_uninterrupted_result(setup, tmp_path):
    _run(setup, tmp_path / "straight", epochs=8)
    ckpt = tmp_path / "ck.pt"
    proc = _run(setup, tmp_path / "killed", ckpt=ckpt, pause=0.5, epochs=8, wait=False)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # kill it once at least two epochs are checkpointed
        state = Checkpointer(ckpt, "test").load() if ckpt.exists() else None
        if state is not None and state["epoch"] >= 2:
            break
        assert proc.poll() is None, "training ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = Checkpointer(ckpt, "test").load()["epoch"]
    assert proc.returncode == -signal.SIGKILL and 2 <= killed_at < 8
    assert not (tmp_path / "killed").exists()  # it never finished
    output = _run(setup, tmp_path / "killed", ckpt=ckpt, epochs=8)
    assert f"resuming after epoch {killed_at}" in output
    resumed, straight = _facts(tmp_path / "killed"), _facts(tmp_path / "straight")
    assert resumed["full"] == straight["full"]  # weights and BatchNorm statistics
    assert resumed["history"] == straight["history"]
