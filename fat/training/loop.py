"""Training: random crops straight from the memory-mapped store, SpecAugment + mixup on the device,
BCE loss, Adam with a one-cycle schedule, per-epoch validation, deterministic for fixed seeds.

Options (params; each off by default but the step floor): random-resized crops (`train.stretch`:
each crop is read from a window up to 1 + stretch times longer or shorter and resampled to the
crop length), a mixup schedule (`mixup.until`: mixing only in the first share of the epochs),
label-union mixing (`mixup.concat_p`, see `augment.concat_mix`), label smoothing
(`train.label_smoothing`), a floor on the schedule's length in optimiser steps
(`train.min_steps`, on by default: a small training set gets more epochs, so that it sees as many
batches as a larger one), weight averaging
(`train.ema_decay`: an exponential moving average of the weights and BatchNorm statistics, which
replaces the trained weights after the last epoch) and AdamW (`train.optimizer`).

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
from fat.evaluation.predict import predict_windows
from fat.features.store import FeatureStore
from fat.log import progress
from fat.params import Augment, Mixup, Train
from fat.training import augment, dist, noisy
from fat.training.checkpoint import Checkpointer

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


class CropDataset(Dataset):
    """Random fixed-length crops of store rows `rows` with float targets (hard or soft labels).
    The crop of item i in epoch e depends only on (seed, e, i): identical with any worker count."""

    def __init__(self, store: FeatureStore, rows, targets: np.ndarray, length: int, seed: int, stretch: float = 0.0):
        if len(rows) != len(targets):
            raise ValueError(f"{len(rows)} rows but {len(targets)} target rows")
        self.store, self.rows, self.length, self.seed = store, np.asarray(rows), int(length), int(seed)
        self.stretch = float(stretch)
        augment.stretch_window(self.length, self.stretch, np.random.default_rng(0))  # validates stretch
        self.targets = np.asarray(targets, dtype=np.float32)
        self.epoch = 0

    def __len__(self):
        return len(self.rows)

    def _crop_into(self, out: np.ndarray, i: int, epoch: int) -> None:
        rng = np.random.default_rng([self.seed, epoch, i])
        r = int(self.rows[i])
        n = int(self.store.lengths[r])
        if self.stretch > 0:  # random-resized crop: a window of another length, resampled
            w = augment.stretch_window(self.length, self.stretch, rng)
            start = augment.random_start(rng, n, w)
            out[...] = augment.resize_time(augment.fit_length(self.store.clip(r), w, start).astype(np.float32),
                                           self.length)
            return
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


class TrainLoop:
    """The optimisation of one model: loader, Adam + one-cycle schedule, augmentation, AMP on CUDA,
    DistributedDataParallel when `world` > 1 (each rank trains on its share of every batch).
    `run_epoch(e)` trains epoch e and adds to `wait_s` (time blocked waiting for a batch) and
    `total_s` (the epoch's wall time), so `wait_s / total_s` is data loading's share.
    `state()` / `restore(state)` carry everything that determines the rest of the run."""

    def __init__(self, model, data, *, train: Train, mixup: Mixup, augment: Augment, seed: int, device,
                 rank: int = 0, world: int = 1, extra: noisy.Parts | None = None):
        if len(data) == 0:
            raise ValueError("no training data: the dataset is empty")
        self.model, self.data, self.device = model, data, torch.device(device)
        self.rank, self.world = int(rank), int(world)
        self.epochs = train.epochs
        # the noisy-set methods (fat.training.noisy) draw part of each batch from `extra`
        self.noisy = (noisy.NoisyStep(model, extra, train=train, seed=seed, device=self.device, world=world)
                      if extra is not None else None)
        self.batch_size = min(train.batch_size if self.noisy is None else self.noisy.curated_batch, len(data))
        self.loader = make_loader(data, self.batch_size, seed=seed, device=self.device,
                                  num_workers=train.num_workers, rank=rank, world=world)
        if len(self.loader) == 0:
            raise ValueError("no training data")
        # small training sets: more epochs, so that the schedule has at least train.min_steps steps
        self.epochs = max(self.epochs, -(-train.min_steps // len(self.loader)))
        opt_cls = torch.optim.AdamW if train.optimizer == "adamw" else torch.optim.Adam
        params = model.parameters() if self.noisy is None else [*model.parameters(), *self.noisy.parameters()]
        self.opt = opt_cls(params, lr=train.lr, weight_decay=train.weight_decay)
        self.sched = torch.optim.lr_scheduler.OneCycleLR(
            self.opt, max_lr=train.lr, total_steps=self.epochs * len(self.loader), pct_start=train.warmup)
        if self.noisy is not None:
            self.noisy.total_steps = self.epochs * len(self.loader)
        self.rng = np.random.default_rng([seed, 7] if world == 1 else [seed, 7, rank])
        self.mixup_alpha = mixup.alpha
        self.mix_epochs = int(np.ceil(mixup.until * self.epochs))  # mixing (mixup, concat) in epochs < this
        self.concat_p = mixup.concat_p
        self.smoothing = train.label_smoothing
        decay = train.ema_decay
        self.ema = (torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(decay), use_buffers=True)
            if decay > 0 else None)
        self.p_mask = augment.p
        self.mask_kw = augment.masks()
        self.loss_fn = torch.nn.BCEWithLogitsLoss()
        cuda = self.device.type == "cuda"
        amp_dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16
        self.autocast = torch.autocast("cuda", dtype=amp_dtype) if cuda else nullcontext()
        self.scaler = torch.amp.GradScaler("cuda", enabled=cuda and amp_dtype == torch.float16)
        net = model
        if world > 1:
            net = DistributedDataParallel(model, device_ids=[self.device.index] if cuda else None)
        self.forward = torch.compile(net) if cuda and train.compile else net
        self.wait_s = self.total_s = 0.0

    def run_epoch(self, epoch: int) -> dict:
        self.data.epoch = epoch
        self.loader.sampler.epoch = epoch
        self.model.train()
        t0 = time.perf_counter()
        wait = 0.0
        total = torch.zeros((), device=self.device)
        batches = iter(self.loader)
        if self.noisy is not None:
            self.noisy.start_epoch(epoch)
        while True:
            t = time.perf_counter()
            batch = next(batches, None)
            wait += time.perf_counter() - t
            if batch is None:
                break
            x, y = (v.to(self.device, non_blocking=True) for v in batch)
            if self.noisy is not None:
                loss = self.noisy.loss(self, x, y)
            else:
                if self.p_mask > 0 and self.rng.uniform() < self.p_mask:
                    x = augment.spec_augment(x, self.rng, **self.mask_kw)
                if epoch < self.mix_epochs:
                    x, y = augment.concat_mix(x, y, self.concat_p, self.rng)
                    x, y = augment.mixup(x, y, self.mixup_alpha, self.rng)
                if self.smoothing > 0:
                    y = y * (1 - self.smoothing) + 0.5 * self.smoothing
                with self.autocast:
                    loss = self.loss_fn(self.forward(x).float(), y)
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
            self.sched.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            total += loss.detach()
        if self.ema is not None and epoch + 1 == self.epochs:  # the averaged weights are the result
            self.model.load_state_dict(self.ema.module.state_dict())
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
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "ema": None if self.ema is None else self.ema.state_dict(),
                **({} if self.noisy is None else {"noisy": self.noisy.state_dict()})}

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.rng.bit_generator.state = state["numpy_rng"]
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        if self.noisy is not None:
            self.noisy.load_state_dict(state["noisy"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])


def fit(model, data: CropDataset, *, train: Train, mixup: Mixup, augment: Augment, seed: int,
        device, validate=None, desc: str = "train", on_epoch=None,
        checkpoint: Checkpointer | None = None, extra: noisy.Parts | None = None) -> list[dict]:
    """Train `model` in place for `train.epochs` epochs (more if
    `train.min_steps` asks for them: `len(history)` is the count trained). `validate(model) -> dict` is called
    every `eval_every` epochs (and after the last); `on_epoch(record)` (e.g. fat.training.track's DVCLive
    logger) after each epoch's record is complete, on rank 0 only; the history of epoch records is
    returned.

    Under torchrun (fat.training.dist) the model is wrapped in DistributedDataParallel and each rank trains on
    its share of every batch (the batches are the single-process ones), the training loss is
    averaged over ranks, and rank 0 validates and shares the figures.
    With `checkpoint`, the full training state is saved after every epoch (rank 0) and a matching
    checkpoint is resumed from, giving the same result as an uninterrupted run (the resumed epochs'
    records are replayed to `on_epoch`). `extra` (fat.training.noisy.Parts): noisy-set parts of
    every batch, as `train`'s noisy-set settings say."""
    eval_every = train.eval_every
    world, rank = (td.get_world_size(), td.get_rank()) if dist.active() else (1, 0)
    seed_everything(seed)
    model.to(device)
    loop = TrainLoop(model, data, train=train, mixup=mixup, augment=augment, seed=seed, device=device, rank=rank,
                     world=world, extra=extra)
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

