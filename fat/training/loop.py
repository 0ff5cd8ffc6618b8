"""Training: random crops straight from the memory-mapped store, SpecAugment + mixup on the device,
BCE loss, Adam with a one-cycle schedule, per-epoch validation, deterministic for fixed seeds.

Throughput: a batch is gathered in one call (`CropDataset.batch`: crops are sliced from the memory
map into one array, no per-sample tensors or collation); the batch sampler carries the epoch, so
DataLoader workers (`train.num_workers`) persist across epochs and still crop each epoch afresh;
the model runs channels-last; on CUDA, batches are pinned and copied asynchronously, the step runs
under autocast (bf16 where supported, else fp16 with loss scaling), `train.compile` wraps the model
in torch.compile, and nothing reads a value back from the device before the end of an epoch.
"""
from __future__ import annotations

import logging
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as td
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler

from fat import metrics
from fat.training import augment, dist
from fat.training.checkpoint import Checkpointer
from fat.features.store import FeatureStore
from fat.log import progress
from fat.evaluation.predict import predict_windows

log = logging.getLogger("fat.train")


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

    def _crop_into(self, out: np.ndarray, i: int, epoch: int) -> None:
        rng = np.random.default_rng([self.seed, epoch, i])
        r = int(self.rows[i])
        n = int(self.store.lengths[r])
        start = augment.random_start(rng, n, self.length)
        if n >= self.length:
            off = int(self.store.offsets[r]) + start
            out[...] = self.store.mels[off : off + self.length].T  # float16 -> float32 in the copy
        else:
            out[...] = augment.fit_length(self.store.clip(r), self.length, start)

    def batch(self, epoch: int, items) -> tuple[torch.Tensor, torch.Tensor]:
        """Crops of `items` in `epoch` as one (B, n_mels, length) float32 tensor, and their targets."""
        items = np.asarray(items, dtype=np.int64)
        x = np.empty((len(items), self.store.n_mels, self.length), np.float32)
        for b, i in enumerate(items):
            self._crop_into(x[b], int(i), epoch)
        return torch.from_numpy(x), torch.from_numpy(self.targets[items])

    def __getitem__(self, i):
        x = np.empty((self.store.n_mels, self.length), np.float32)
        self._crop_into(x, int(i), self.epoch)
        return torch.from_numpy(x), torch.from_numpy(self.targets[i])


def crop_batch(data, epoch: int, items) -> tuple[torch.Tensor, torch.Tensor]:
    """`data.batch(epoch, items)` for a CropDataset or a ConcatDataset of them."""
    if hasattr(data, "batch"):
        return data.batch(epoch, items)
    items = np.asarray(items, dtype=np.int64)
    part = np.searchsorted(data.cumulative_sizes, items, side="right")
    starts = np.concatenate([[0], data.cumulative_sizes[:-1]])
    xs, ys = [None] * len(items), [None] * len(items)
    for p in np.unique(part):
        pos = np.flatnonzero(part == p)
        x, y = crop_batch(data.datasets[p], epoch, items[pos] - starts[p])
        for j, k in enumerate(pos):
            xs[k], ys[k] = x[j], y[j]
    return torch.stack(xs), torch.stack(ys)


class _Batches(Dataset):
    """Map-style view whose keys are whole batches, (epoch, items): the DataLoader runs without
    automatic batching and a worker builds a batch in one call."""

    def __init__(self, data):
        self.data = data

    def __getitem__(self, key):
        return crop_batch(self.data, *key)


class EpochBatchSampler(Sampler):
    """Shuffled batches of indices, dropping the last incomplete one, tagged with the epoch
    (set `epoch` before iterating). The order of epoch e depends only on (seed, e). Under DDP,
    rank r of `world` takes items r, r + world, … of every batch: together the ranks train on
    exactly the single-process batches."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        if batch_size < world:
            raise ValueError(f"batch_size {batch_size} is smaller than the {world} processes sharing each batch")
        self.n, self.batch_size, self.seed, self.epoch = int(n), int(batch_size), int(seed), 0
        self.rank, self.world = int(rank), int(world)

    def __len__(self):
        return self.n // self.batch_size

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).numpy()
        for b in range(len(self)):
            yield self.epoch, order[b * self.batch_size : (b + 1) * self.batch_size][self.rank :: self.world]


def make_loader(data, batch_size: int, *, seed: int, device, num_workers: int = 0, rank: int = 0,
                world: int = 1) -> DataLoader:
    """Batches of crops for training: persistent workers when num_workers > 0, pinned memory on CUDA."""
    workers = int(num_workers)
    return DataLoader(_Batches(data), batch_size=None,
                      sampler=EpochBatchSampler(len(data), batch_size, seed, rank=rank, world=world),
                      num_workers=workers, persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
                      pin_memory=torch.device(device).type == "cuda",
                      generator=torch.Generator().manual_seed(seed))  # its own RNG: the global one (dropout) is
    # left alone, so persistent workers (one loader iterator) and in-process loading train identically


def evaluate(model, store, rows, targets, length, *, device, batch_size=64) -> dict:
    """Plain (non-overlapping window) prediction on `rows`: probabilities, BCE loss, lwlrap."""
    probs, logits = predict_windows(model, store, rows, length, length, device=device, batch_size=batch_size)
    t = torch.as_tensor(targets, dtype=torch.float64)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(torch.as_tensor(logits), t).item()
    hard = (np.asarray(targets) >= 0.5).astype(np.float32)
    score = metrics.lwlrap(hard, probs) if hard.sum() else float("nan")
    return {"probs": probs, "loss": loss, "lwlrap": score}


def check_settings(train_cfg: dict, mixup_alpha: float, augment_cfg: dict, sections: dict | None = None) -> None:
    """Out-of-range training params (a typo in `dvc exp run -S …`) stop the stage with the key
    named, instead of training something else than asked (a negative mixup.alpha would silently
    mean "no mixup"). `sections` names the section a train key came from when a family overrode it."""
    sections = sections or {}

    def bad(key, value, rule):
        section, _, name = key.partition(".")
        if section == "train":
            section = sections.get(name, section)
        raise ValueError(f"params.yaml: {section}.{name} must be {rule}, got {value!r}")

    def whole(key, value, least):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            bad(key, value, f"a whole number >= {least}")
        n = num(key, value)
        if n != int(n) or n < least:
            bad(key, value, f"a whole number >= {least}")

    def num(key, value):
        try:
            value = float(value)
        except (TypeError, ValueError):
            bad(key, value, "a number")
        if not np.isfinite(value):
            bad(key, value, "finite")
        return value

    if num("mixup.alpha", mixup_alpha) < 0:
        bad("mixup.alpha", mixup_alpha, ">= 0 (0 disables mixup)")
    for key in ("epochs", "batch_size"):
        whole(f"train.{key}", train_cfg[key], 1)
    if num("train.lr", train_cfg["lr"]) <= 0:
        bad("train.lr", train_cfg["lr"], "> 0")
    if num("train.weight_decay", train_cfg.get("weight_decay", 0.0)) < 0:
        bad("train.weight_decay", train_cfg.get("weight_decay"), ">= 0")
    if not 0 < num("train.warmup", train_cfg.get("warmup", 0.2)) < 1:
        bad("train.warmup", train_cfg.get("warmup"), "between 0 and 1 (exclusive)")
    for key in ("p", "freq_frac", "time_frac"):
        if key in augment_cfg and not 0 <= num(f"augment.{key}", augment_cfg[key]) <= 1:
            bad(f"augment.{key}", augment_cfg[key], "between 0 and 1")
    for key in ("freq_masks", "time_masks"):
        if key in augment_cfg:
            whole(f"augment.{key}", augment_cfg[key], 0)


class TrainLoop:
    """The optimisation of one model: loader, Adam + one-cycle schedule, augmentation, AMP on CUDA,
    DistributedDataParallel when `world` > 1 (each rank trains on its share of every batch).
    `run_epoch(e)` trains epoch e and adds to `wait_s` (time blocked waiting for a batch) and
    `total_s` (the epoch's wall time), so `wait_s / total_s` is data loading's share.
    `state()` / `restore(state)` carry everything that determines the rest of the run."""

    def __init__(self, model, data, *, train_cfg: dict, mixup_alpha: float, augment_cfg: dict, seed: int, device,
                 rank: int = 0, world: int = 1):
        if len(data) == 0:
            raise ValueError("no training data: the dataset is empty")
        check_settings(train_cfg, mixup_alpha, augment_cfg)
        self.model, self.data, self.device = model, data, torch.device(device)
        self.rank, self.world = int(rank), int(world)
        self.epochs = int(train_cfg["epochs"])
        self.batch_size = min(int(train_cfg["batch_size"]), len(data))  # global: shared by the ranks
        self.loader = make_loader(data, self.batch_size, seed=seed, device=self.device,
                                  num_workers=int(train_cfg.get("num_workers", 0)), rank=rank, world=world)
        if len(self.loader) == 0:
            raise ValueError("no training data")
        self.opt = torch.optim.Adam(model.parameters(), lr=float(train_cfg["lr"]),
                                    weight_decay=float(train_cfg.get("weight_decay", 0.0)))
        self.sched = torch.optim.lr_scheduler.OneCycleLR(
            self.opt, max_lr=float(train_cfg["lr"]), total_steps=self.epochs * len(self.loader),
            pct_start=float(train_cfg.get("warmup", 0.2)))
        self.rng = np.random.default_rng([seed, 7] if world == 1 else [seed, 7, rank])
        self.mixup_alpha = float(mixup_alpha)
        self.p_mask = float(augment_cfg.get("p", 0.0))
        self.mask_kw = {k: augment_cfg[k] for k in ("freq_masks", "freq_frac", "time_masks", "time_frac")}
        self.loss_fn = torch.nn.BCEWithLogitsLoss()
        cuda = self.device.type == "cuda"
        amp_dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16
        self.autocast = torch.autocast("cuda", dtype=amp_dtype) if cuda else nullcontext()
        self.scaler = torch.amp.GradScaler("cuda", enabled=cuda and amp_dtype == torch.float16)
        net = model
        if world > 1:
            net = DistributedDataParallel(model, device_ids=[self.device.index] if cuda else None)
        self.forward = torch.compile(net) if cuda and train_cfg.get("compile", False) else net
        self.wait_s = self.total_s = 0.0

    def run_epoch(self, epoch: int) -> dict:
        self.data.epoch = epoch
        self.loader.sampler.epoch = epoch
        self.model.train()
        t0 = time.perf_counter()
        wait = 0.0
        total = torch.zeros((), device=self.device)
        batches = iter(self.loader)
        while True:
            t = time.perf_counter()
            batch = next(batches, None)
            wait += time.perf_counter() - t
            if batch is None:
                break
            x, y = (v.to(self.device, non_blocking=True) for v in batch)
            if self.p_mask > 0 and self.rng.uniform() < self.p_mask:
                x = augment.spec_augment(x, self.rng, **self.mask_kw)
            x, y = augment.mixup(x, y, self.mixup_alpha, self.rng)
            with self.autocast:
                loss = self.loss_fn(self.forward(x).float(), y)
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
            self.sched.step()
            total += loss.detach()
        n_steps = len(self.loader)
        train_loss = float(dist.mean(total).item() / n_steps)  # the epoch's one read-back from the device
        elapsed = time.perf_counter() - t0
        self.wait_s += wait
        self.total_s += elapsed
        return {"epoch": epoch + 1, "train_loss": train_loss,
                "samples_per_s": round(n_steps * self.batch_size / elapsed, 1)}

    @property
    def data_share(self) -> float:
        return self.wait_s / self.total_s if self.total_s else float("nan")

    def state(self) -> dict:
        """Model, optimiser, schedule, loss scaler and RNG states (the batch order depends only on
        (seed, epoch), so the loader has none)."""
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(),
                "numpy_rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])


def fit(model, data: CropDataset, *, train_cfg: dict, mixup_alpha: float, augment_cfg: dict, seed: int,
        device, validate=None, desc: str = "train", on_epoch=None,
        checkpoint: Checkpointer | None = None) -> list[dict]:
    """Train `model` in place for `train_cfg['epochs']` epochs. `validate(model) -> dict` is called
    every `eval_every` epochs (and after the last); `on_epoch(record)` (e.g. fat.training.track's DVCLive
    logger) after each epoch's record is complete, on rank 0 only; the history of epoch records is
    returned.

    Under torchrun (fat.training.dist) the model is wrapped in DistributedDataParallel and each rank trains on
    its share of every batch (the batches are the single-process ones), the training loss is
    averaged over ranks, and rank 0 validates and shares the figures.
    With `checkpoint`, the full training state is saved after every epoch (rank 0) and a matching
    checkpoint is resumed from, giving the same result as an uninterrupted run (the resumed epochs'
    records are replayed to `on_epoch`)."""
    eval_every = int(train_cfg.get("eval_every", 1))
    world, rank = (td.get_world_size(), td.get_rank()) if dist.active() else (1, 0)
    seed_everything(seed)
    model.to(device)
    loop = TrainLoop(model, data, train_cfg=train_cfg, mixup_alpha=mixup_alpha, augment_cfg=augment_cfg,
                     seed=seed, device=device, rank=rank, world=world)
    history: list[dict] = []
    start = 0
    state = checkpoint.load() if checkpoint is not None else None
    if state is not None:
        loop.restore(state)
        start, history = int(state["epoch"]), list(state["history"])
        for rec in history if on_epoch is not None and rank == 0 else ():
            on_epoch(rec)
    bar = progress(range(start, loop.epochs), desc=desc, initial=start, total=loop.epochs)
    for epoch in bar:
        rec = loop.run_epoch(epoch)
        if validate is not None and ((epoch + 1) % eval_every == 0 or epoch + 1 == loop.epochs):
            v = validate(model) if rank == 0 else None
            v = dist.broadcast(None if v is None else {"loss": v["loss"], "lwlrap": v["lwlrap"]})
            rec.update({"val_loss": v["loss"], "val_lwlrap": v["lwlrap"]})
        history.append(rec)
        if checkpoint is not None and rank == 0:
            checkpoint.save({"epoch": epoch + 1, "history": history, **loop.state()})
        if on_epoch is not None and rank == 0:
            on_epoch(rec)
        bar.set_postfix({k: round(v, 4) for k, v in rec.items() if k in ("train_loss", "val_lwlrap")})
        log.debug("%s epoch %d: %s", desc, epoch + 1, {k: v for k, v in rec.items() if k != "epoch"})
    log.debug("%s: data loading %.1f%% of training time", desc, 100 * loop.data_share)
    return history

