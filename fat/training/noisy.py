"""Learning from the noisy set inside a fold member's batches: joint training with a noisy head, a
noise-robust loss, the relabelled noisy subset at a fixed share of each batch, and MixMatch with the
noisy clips as unlabelled data. Params of the `retrain` family (`train.noisy_*`,
`train.relabelled_share`, `train.mixmatch_*`, set under `retrain:`); all off by default, and then
this module is not used at all (the training path is the plain one).

Batch composition (per optimiser step, `train.batch_size` = B):
  relabelled  round(B * relabelled_share) pseudo@k clips (fat.training.pseudo: labelled by the fold-k
              fine-tuned model); with a share > 0 the pseudo clips are drawn at that share instead
              of being appended to the curated clips;
  raw noisy   B * noisy_share noisy clips with their own labels (rounded stochastically per step, so
              a share of 1 % gives one clip every few steps and 1 % on average);
  curated     the rest, B - round(B * (relabelled_share + noisy_share)): the loader's batches, so an
              epoch is one pass over the curated (fold-k training) clips.
Each part is drawn without replacement in a fresh order per epoch (wrapping around when a part is
smaller than its share of the epoch), all from seeded generators: fixed params give the same batches.

Methods:
  noisy_head  the raw noisy clips train a second output head on the shared backbone (joint training,
              4th/5th place FAT2019); the curated head is the model's own (`AudioCNN.head`), the one
              validated, saved, predicted and exported; the noisy head exists during training only.
              It starts as a copy of the curated head (after the backbone's initialisation).
  noisy_loss  `lsoft` (1st place FAT2019; soft bootstrapping, Reed et al. 2015) on every noisy-set
              row (raw and relabelled): BCE against beta * y + (1 - beta) * sigmoid(logit), the
              prediction detached, so with beta < 1 the model's own belief discounts labels it
              disagrees with; `bce` is the plain loss.
  mixmatch    (Berthelot et al. 2019, arXiv 1905.02249, multi-label form) unlabelled clips from the
              noisy set, their labels unused: ceil(C / K) clips per step (C = the curated-head
              rows), K augmented views each (another random crop + SpecAugment masks); the guess is
              the views' mean sigmoid output (model in eval mode, no gradient), sharpened per class
              (q^(1/T) / (q^(1/T) + (1 - q)^(1/T))); labelled and unlabelled rows are mixed together
              (mixup with lambda' = max(lambda, 1 - lambda) ~ Beta(alpha, alpha), partners drawn from
              both); loss = BCE(labelled) + w * ramp * MSE(sigmoid, guess)(unlabelled), the ramp rising
              linearly from 0 to 1 over the first `mixmatch_rampup` share of the steps. MixMatch's
              mixing replaces `mixup.*` for the rows it mixes.

Leak-freeness: the noisy set is disjoint from the curated set; its own labels come with the data,
not from any model; pseudo@k labels come from finetune@k, which never trained on fold k's clips;
MixMatch's guesses come from the model being trained on fold k's training data. Nothing fold k
validates on enters any of these.
"""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fat.params import Train
from fat.training import augment

log = logging.getLogger(__name__)

CURATED, RELABELLED, RAW = 0, 1, 2  # the source of a batch row


def active(train: Train) -> bool:
    """Whether any of this module's methods is on in `train` (a family's merged settings)."""
    return train.noisy_share > 0 or train.relabelled_share > 0 or train.mixmatch_weight > 0


def lsoft_loss(logits: torch.Tensor, targets: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-element L-soft: BCE(logits, beta * y + (1 - beta) * sigmoid(logits)), the bootstrapped
    target detached (no gradient flows through the model's own prediction). beta 1 is plain BCE."""
    with torch.no_grad():
        soft = beta * targets + (1 - beta) * torch.sigmoid(logits)
    return nn.functional.binary_cross_entropy_with_logits(logits, soft, reduction="none")


def sharpen(q: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-class binary sharpening of probabilities: q^(1/T) / (q^(1/T) + (1 - q)^(1/T))."""
    if temperature <= 0:
        raise ValueError(f"train.mixmatch_temperature must be > 0, got {temperature}")
    a, b = q.pow(1 / temperature), (1 - q).pow(1 / temperature)
    return a / (a + b)


def ramp(step: int, total_steps: int, share: float) -> float:
    """Linear ramp-up of the unlabelled loss weight: 0 at step 0, 1 from `share` of the steps on."""
    if share <= 0:
        return 1.0
    return min(1.0, step / (share * total_steps))


def curated_heads(model, noisy_head: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(curated logits, noisy logits) from one backbone pass: the curated ones exactly as
    `AudioCNN.forward` computes them, the noisy head on the same mean + max embedding."""
    h = model.frames(x)
    z = torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1)
    cur = model.head(z)
    if model.attention is not None:
        cur = cur + model.attention(h)
    return cur, noisy_head(z)


@dataclass
class Parts:
    """The extra sources of a member's batches (CropDatasets over the noisy store): `raw` (noisy
    clips with their own labels), `relabelled` (pseudo@k clips), `views` (K CropDatasets over the
    noisy clips with different crop seeds: MixMatch's augmented views)."""

    raw: object = None
    relabelled: object = None
    views: list = field(default_factory=list)


def parts_for(train: Train, noisy_store, noisy_rows, noisy_y: np.ndarray, relabelled, seed: int) -> Parts:
    """The Parts `train` asks for: `relabelled` (the pseudo@k CropDataset or None) is kept when
    `relabelled_share` > 0; the raw noisy part and MixMatch's views come from `noisy_store`."""
    from fat.training.loop import CropDataset

    parts = Parts()
    if train.relabelled_share > 0:
        if relabelled is None:
            log.warning("train.relabelled_share %.2f: no pseudo-labelled clips for this fold, so none are drawn",
                        train.relabelled_share)
        parts.relabelled = relabelled
    if train.noisy_share > 0:
        parts.raw = CropDataset(noisy_store, noisy_rows, noisy_y, train.crop_frames, seed + 2, stretch=train.stretch)
    if train.mixmatch_weight > 0:
        unlabelled = np.zeros((len(noisy_rows), noisy_y.shape[1]), np.float32)  # the labels are not used
        parts.views = [CropDataset(noisy_store, noisy_rows, unlabelled, train.crop_frames, seed + 1000 + k,
                                   stretch=train.stretch) for k in range(train.mixmatch_k)]
    return parts


class _Draws:
    """Items of one part for successive steps of an epoch: a fresh seeded order per epoch (and per
    wrap-around), consumed without replacement."""

    def __init__(self, n: int, seed: int, part: int):
        self.n, self.seed, self.part = int(n), int(seed), int(part)

    def start(self, epoch: int) -> None:
        self.epoch, self.wrap, self.pos = epoch, 0, 0
        self.order = self._order()

    def _order(self):
        return np.random.default_rng([self.seed, 13, self.part, self.epoch, self.wrap]).permutation(self.n)

    def take(self, k: int) -> np.ndarray:
        out = []
        while k > 0:
            if self.pos == self.n:
                self.wrap, self.pos = self.wrap + 1, 0
                self.order = self._order()
            m = min(k, self.n - self.pos)
            out.append(self.order[self.pos : self.pos + m])
            self.pos, k = self.pos + m, k - m
        return np.concatenate(out) if out else np.zeros(0, np.int64)


class NoisyStep:
    """The loss of one training step with the extra parts, for `fat.training.loop.TrainLoop`
    (which calls `start_epoch(e)` and then `loss(loop, x, y)` per curated batch)."""

    def __init__(self, model, parts: Parts, *, train: Train, seed: int, device, world: int = 1):
        if world > 1:
            raise ValueError("the noisy-set methods (train.noisy_share, relabelled_share, mixmatch_weight) "
                             "run in one process only; set dist.nproc_per_node 1")
        b = train.batch_size
        self.n_rel = round(b * train.relabelled_share) if parts.relabelled is not None else 0
        self.raw_mean = b * train.noisy_share if parts.raw is not None else 0.0
        self.curated_batch = b - self.n_rel - round(self.raw_mean)
        if self.curated_batch < 1:
            raise ValueError(f"train.relabelled_share {train.relabelled_share} + noisy_share {train.noisy_share} "
                             f"leave no curated clip in a batch of {b}")
        self.parts, self.seed, self.device = parts, int(seed), torch.device(device)
        self.loss_kind, self.beta = train.noisy_loss, train.lsoft_beta
        self.use_head = train.noisy_head and parts.raw is not None
        self.head = copy.deepcopy(model.head).to(self.device) if self.use_head else None
        self.mm_weight, self.k = train.mixmatch_weight, train.mixmatch_k
        self.temperature, self.mm_alpha, self.rampup = (train.mixmatch_temperature, train.mixmatch_alpha,
                                                        train.mixmatch_rampup)
        self.draws = {name: _Draws(len(getattr(parts, name)), seed, i) for i, name in enumerate(("relabelled", "raw"))
                      if getattr(parts, name) is not None}
        if parts.views:
            self.draws["views"] = _Draws(len(parts.views[0]), seed, 2)
        self.total_steps = 1  # set by the loop once its schedule is known
        self.step = 0
        self.drawn = {"curated": 0, "relabelled": 0, "raw": 0, "unlabelled": 0}  # rows drawn so far (all epochs)

    def parameters(self):
        return [] if self.head is None else list(self.head.parameters())

    def state_dict(self) -> dict:
        return {"head": None if self.head is None else self.head.state_dict(), "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        if self.head is not None:
            self.head.load_state_dict(state["head"])
        self.step = int(state["step"])

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.counts_rng = np.random.default_rng([self.seed, 17, epoch])
        for d in self.draws.values():
            d.start(epoch)

    def _n_raw(self) -> int:
        """Stochastic rounding of B * noisy_share: its mean over steps is the share."""
        whole = math.floor(self.raw_mean)
        return whole + int(self.counts_rng.uniform() < self.raw_mean - whole)

    def _get(self, name: str, k: int):
        items = self.draws[name].take(k)
        x, y = getattr(self.parts, name).batch(self.epoch, items)
        return x.to(self.device), y.to(self.device)

    def compose(self, x: torch.Tensor, y: torch.Tensor):
        """The step's rows: curated (the loader's batch), relabelled and raw noisy, with each row's source."""
        xs, ys, src = [x], [y], [torch.full((len(x),), CURATED)]
        for name, k, tag in (("relabelled", self.n_rel, RELABELLED), ("raw", self._n_raw(), RAW)):
            if name in self.draws and k > 0:
                xp, yp = self._get(name, k)
                xs.append(xp)
                ys.append(yp)
                src.append(torch.full((k,), tag))
                self.drawn[name] += k
        self.drawn["curated"] += len(x)
        return torch.cat(xs), torch.cat(ys), torch.cat(src).to(self.device)

    def _row_loss(self, logits, y, noisy_rows):
        """Per-row loss: BCE, or L-soft on the noisy-set rows when `noisy_loss` is lsoft."""
        bce = nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
        if self.loss_kind == "lsoft" and noisy_rows.any():
            bce = torch.where(noisy_rows.view(-1, 1), lsoft_loss(logits, y, self.beta), bce)
        return bce.mean(dim=1)

    def _forward(self, loop, x):
        if self.head is None:
            return loop.forward(x).float(), None
        cur, noisy = curated_heads(loop.model, self.head, x)
        return cur.float(), noisy.float()

    def loss(self, loop, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y, src = self.compose(x, y)
        if loop.p_mask > 0 and loop.rng.uniform() < loop.p_mask:
            x = augment.spec_augment(x, loop.rng, **loop.mask_kw)
        to_noisy_head = (src == RAW) if self.head is not None else torch.zeros_like(src, dtype=torch.bool)
        if self.mm_weight > 0:
            out = self._mixmatch(loop, x, y, src, to_noisy_head)
        else:
            if self.epoch < loop.mix_epochs:  # mixing within each source, so a row keeps its loss
                for tag in (CURATED, RELABELLED, RAW):
                    rows = torch.nonzero(src == tag).flatten()
                    if len(rows) > 1:
                        xm, ym = augment.concat_mix(x[rows], y[rows], loop.concat_p, loop.rng)
                        x[rows], y[rows] = augment.mixup(xm, ym, loop.mixup_alpha, loop.rng)
            if loop.smoothing > 0:
                y = y * (1 - loop.smoothing) + 0.5 * loop.smoothing
            with loop.autocast:
                cur, noisy = self._forward(loop, x)
            row = self._row_loss(cur, y, src != CURATED)
            if noisy is not None:
                row = torch.where(to_noisy_head, self._row_loss(noisy, y, src != CURATED), row)
            out = row.mean()
        self.step += 1
        return out

    def _mixmatch(self, loop, x, y, src, to_noisy_head):
        lab = torch.nonzero(~to_noisy_head).flatten()
        head_rows = torch.nonzero(to_noisy_head).flatten()
        xl, yl = x[lab], y[lab]
        n_u = -(-len(lab) // self.k)
        items = self.draws["views"].take(n_u)
        self.drawn["unlabelled"] += n_u
        views = []
        for part in self.parts.views:
            xv, _ = part.batch(self.epoch, items)
            xv = xv.to(self.device)
            if loop.p_mask > 0:
                xv = augment.spec_augment(xv, loop.rng, **loop.mask_kw)
            views.append(xv)
        with torch.no_grad():
            loop.model.eval()
            q = torch.stack([torch.sigmoid(loop.model(v).float()) for v in views]).mean(dim=0)
            loop.model.train()
        guess = sharpen(q, self.temperature)
        if loop.smoothing > 0:
            yl = yl * (1 - loop.smoothing) + 0.5 * loop.smoothing
        all_x = torch.cat([xl, *views])
        all_y = torch.cat([yl, guess.repeat(self.k, 1)])
        lam = loop.rng.beta(self.mm_alpha, self.mm_alpha, size=len(all_x))
        lam = np.maximum(lam, 1 - lam)
        perm = augment.to_device(loop.rng.permutation(len(all_x)), self.device)
        lx = augment.to_device(lam, self.device, all_x.dtype).view(-1, 1, 1)
        ly = lx.view(-1, 1)
        mixed_x = lx * all_x + (1 - lx) * all_x[perm]
        mixed_y = ly * all_y + (1 - ly) * all_y[perm]
        n_l = len(lab)
        batch = torch.cat([mixed_x, x[head_rows]])
        with loop.autocast:
            cur, noisy = self._forward(loop, batch)
        l_x = self._row_loss(cur[:n_l], mixed_y[:n_l], src[lab] != CURATED)
        l_u = (torch.sigmoid(cur[n_l : len(mixed_x)]) - mixed_y[n_l:]).pow(2).mean()
        labelled = l_x.sum()
        if len(head_rows):
            yh = y[head_rows] * (1 - loop.smoothing) + 0.5 * loop.smoothing if loop.smoothing > 0 else y[head_rows]
            labelled = labelled + self._row_loss(noisy[len(mixed_x):], yh, src[head_rows] != CURATED).sum()
        w = self.mm_weight * ramp(self.step, self.total_steps, self.rampup)
        return labelled / (n_l + len(head_rows)) + w * l_u
