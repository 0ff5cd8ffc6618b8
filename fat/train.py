"""Training: random crops straight from the memory-mapped store, SpecAugment + mixup on the device,
BCE loss, Adam with a one-cycle schedule, per-epoch validation, deterministic for fixed seeds."""
from __future__ import annotations

import logging
import time

import numpy as np
import torch
import torch.distributed as td
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from fat import augment, dist, metrics
from fat.checkpoint import Checkpointer
from fat.log import progress
from fat.features import FeatureStore
from fat.predict import predict_windows

log = logging.getLogger("fat.train")


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


class CropDataset(Dataset):
    """Random fixed-length crops of store rows `rows` with float targets (hard or soft labels).
    The crop of item i in epoch e depends only on (seed, e, i): identical with any worker count."""

    def __init__(self, store: FeatureStore, rows, targets: np.ndarray, length: int, seed: int):
        if len(rows) != len(targets):
            raise ValueError(f"{len(rows)} rows but {len(targets)} target rows")
        self.store, self.rows, self.length, self.seed = store, np.asarray(rows), int(length), int(seed)
        self.targets = np.asarray(targets, dtype=np.float32)
        self.epoch = 0

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        rng = np.random.default_rng([self.seed, self.epoch, i])
        r = int(self.rows[i])
        n = int(self.store.lengths[r])
        start = augment.random_start(rng, n, self.length)
        if n >= self.length:
            x = self.store.clip(r, start, self.length)
        else:
            x = augment.fit_length(self.store.clip(r), self.length, start)
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(self.targets[i])


def evaluate(model, store, rows, targets, length, *, device, batch_size=64) -> dict:
    """Plain (non-overlapping window) prediction on `rows`: probabilities, BCE loss, lwlrap."""
    probs, logits = predict_windows(model, store, rows, length, length, device=device, batch_size=batch_size)
    t = torch.as_tensor(targets, dtype=torch.float64)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(torch.as_tensor(logits), t).item()
    hard = (np.asarray(targets) >= 0.5).astype(np.float32)
    score = metrics.lwlrap(hard, probs) if hard.sum() else float("nan")
    return {"probs": probs, "loss": loss, "lwlrap": score}


def fit(model, data: CropDataset, *, train_cfg: dict, mixup_alpha: float, augment_cfg: dict, seed: int,
        device, validate=None, desc: str = "train", on_epoch=None,
        checkpoint: Checkpointer | None = None) -> list[dict]:
    """Train `model` in place for `train_cfg['epochs']` epochs. `validate(model) -> dict` is called
    every `eval_every` epochs (and after the last); `on_epoch(record)` (e.g. fat.track's DVCLive
    logger) after each epoch's record is complete, on rank 0 only; the history of epoch records is
    returned.

    Under torchrun (fat.dist) the model is wrapped in DistributedDataParallel, each rank trains on
    its shard of every epoch with batch_size / world clips (the global batch stays the same), the
    training loss is averaged over ranks, and rank 0 validates and shares the figures.
    With `checkpoint`, the full training state is saved after every epoch (rank 0) and a matching
    checkpoint is resumed from, giving the same result as an uninterrupted run (the resumed epochs'
    records are replayed to `on_epoch`)."""
    epochs = int(train_cfg["epochs"])
    world, rank = (td.get_world_size(), td.get_rank()) if dist.active() else (1, 0)
    bs = max(1, min(int(train_cfg["batch_size"]), len(data)) // world)
    eval_every = int(train_cfg.get("eval_every", 1))
    seed_everything(seed)
    model.to(device)
    net = model
    if world > 1:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    gen = torch.Generator().manual_seed(seed)
    workers = int(train_cfg.get("num_workers", 0))
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=seed,
                                 drop_last=True) if world > 1 else None
    loader = DataLoader(data, batch_size=bs, shuffle=sampler is None, sampler=sampler, drop_last=True,
                        generator=gen, num_workers=workers,
                        pin_memory=device.type == "cuda")  # workers are re-created each epoch so they see data.epoch
    opt = torch.optim.Adam(model.parameters(), lr=float(train_cfg["lr"]),
                           weight_decay=float(train_cfg.get("weight_decay", 0.0)))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=float(train_cfg["lr"]), total_steps=epochs * len(loader),
                                                pct_start=float(train_cfg.get("warmup", 0.2)))
    rng = np.random.default_rng([seed, 7] if world == 1 else [seed, 7, rank])
    p_mask = float(augment_cfg.get("p", 0.0))
    mask_kw = {k: augment_cfg[k] for k in ("freq_masks", "freq_frac", "time_masks", "time_frac")}
    loss_fn = torch.nn.BCEWithLogitsLoss()
    history: list[dict] = []
    start = 0
    state = checkpoint.load() if checkpoint is not None else None
    if state is not None:
        start, history = _restore(state, model, opt, sched, rng, gen)
        for rec in history if on_epoch is not None and rank == 0 else ():
            on_epoch(rec)
    bar = progress(range(start, epochs), desc=desc, initial=start, total=epochs)
    for epoch in bar:
        data.epoch = epoch
        if sampler is not None:
            sampler.set_epoch(epoch)
        net.train()
        t0 = time.perf_counter()
        total = torch.zeros((), device=device)
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if p_mask > 0 and rng.uniform() < p_mask:
                x = augment.spec_augment(x, rng, **mask_kw)
            x, y = augment.mixup(x, y, mixup_alpha, rng)
            loss = loss_fn(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach()
        rec = {"epoch": epoch + 1, "train_loss": float(dist.mean(total).item() / len(loader)),
               "samples_per_s": round(world * len(loader) * bs / (time.perf_counter() - t0), 1)}
        if validate is not None and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs):
            v = validate(model) if rank == 0 else None
            v = dist.broadcast(None if v is None else {"loss": v["loss"], "lwlrap": v["lwlrap"]})
            rec.update({"val_loss": v["loss"], "val_lwlrap": v["lwlrap"]})
        history.append(rec)
        if checkpoint is not None and rank == 0:
            checkpoint.save(_state(epoch + 1, history, model, opt, sched, rng, gen))
        if on_epoch is not None and rank == 0:
            on_epoch(rec)
        bar.set_postfix({k: round(v, 4) for k, v in rec.items() if k in ("train_loss", "val_lwlrap")})
        log.debug("%s epoch %d: %s", desc, epoch + 1, {k: v for k, v in rec.items() if k != "epoch"})
    return history


def _state(epoch, history, model, opt, sched, rng, gen) -> dict:
    """Everything that determines the rest of a run, after `epoch` epochs."""
    return {"epoch": epoch, "history": history, "model": model.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "numpy_rng": rng.bit_generator.state, "loader_rng": gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _restore(state, model, opt, sched, rng, gen) -> tuple[int, list[dict]]:
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    rng.bit_generator.state = state["numpy_rng"]
    gen.set_state(state["loader_rng"])
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return int(state["epoch"]), list(state["history"])
