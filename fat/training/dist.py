"""Distributed data parallel training with PyTorch's own engine (torchrun + DistributedDataParallel).

A training stage runs single-process by default. With `dist.nproc_per_node: N > 1` in params, the
stage re-launches itself under `torch.distributed.run` (torchrun) on this node; started by torchrun
directly (any `--nnodes`, rendezvous), it joins the process group torchrun describes in the
environment. The backend is NCCL on CUDA, gloo on CPU. Only rank 0 writes outputs (`is_main`)."""
from __future__ import annotations

import datetime
import logging
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as td

log = logging.getLogger("fat.dist")


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def under_torchrun() -> bool:
    """True inside a process torchrun started (it sets these variables for every worker)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))


def relaunch(nproc: int, script: str, argv: list[str]) -> None:
    """Replace this process by `torchrun --standalone --nproc-per-node=nproc script argv…` when
    nproc > 1 and we are not already under torchrun; return (doing nothing) otherwise."""
    if nproc <= 1 or under_torchrun():
        return
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", script, *argv]
    log.info("relaunching under torchrun: %s", " ".join(cmd[1:]))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, cmd)


def setup(device: torch.device) -> Context:
    """Join the process group torchrun described (or return the single-process context on
    `device`); under torchrun with CUDA each process takes the GPU of its local rank."""
    if not under_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return Context(device=device)
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        dev, backend = torch.device("cuda", local), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not td.is_initialized():
        td.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    log.info("rank %d/%d (local %d) on %s with %s", rank, world, local, dev, backend)
    return Context(rank=rank, world=world, local_rank=local, device=dev)


def active() -> bool:
    return td.is_available() and td.is_initialized() and td.get_world_size() > 1


def is_main() -> bool:
    """Whether this process writes outputs: always in a single process, rank 0 otherwise."""
    return not active() or td.get_rank() == 0


def mean(value: torch.Tensor) -> torch.Tensor:
    """All-reduced mean across ranks (the value itself in a single process)."""
    if not active():
        return value
    value = value.clone()
    td.all_reduce(value, op=td.ReduceOp.SUM)
    return value / td.get_world_size()


def broadcast(obj):
    """Rank 0's `obj` on every rank (picklable objects)."""
    if not active():
        return obj
    box = [obj]
    td.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if active():
        td.barrier()


def teardown() -> None:
    if td.is_available() and td.is_initialized():
        td.destroy_process_group()
