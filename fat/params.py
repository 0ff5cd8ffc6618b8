"""The configuration: `params.yaml` read once into typed, frozen sections, and presets applied to it.

Every knob has one section class below; its field defaults are the defaults (the values
`params.yaml` ships with), so a section or key left out of `params.yaml` means the default (one
exception: a `data` section must name its `source`).
:func:`load` reads the file (as edited by `fat preset` or `dvc exp run -S key=value`), converts
every value to its field's type and checks its range, and refuses unknown sections and keys, each
error naming the key. Stages pass each part of the library the section it needs, e.g.
`fit(..., train=p.train_for("pretrain"), augment=p.augment)`.

A family section (`baseline`, `pretrain`, `finetune`, `retrain`) may override any `train` setting
(epochs, lr, …) for that family; `baseline` also has its `folds` (which members to train: none by
default), `retrain` its own `init` and `stages`. Presets (`fat/presets/*.yaml`)
are partial params files merged over the current one by :func:`apply_preset`, preserving comments.
"""
from __future__ import annotations

import copy
import dataclasses
import io
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fat.errors import DataError

PRESETS_DIR = Path(__file__).with_name("presets")
FOLD_FAMILIES = ("baseline", "finetune", "retrain")  # the families with one member per fold
ENSEMBLE_FAMILIES = ("finetune", "retrain")  # the default ensemble members: the fold families every run trains;
# `baseline` is opt-in: `baseline.folds` trains its members, and listed in `ensemble.members` it is predicted too
MODEL_CHANNELS = ("mel", "delta", "delta2", "mfcc")
BAD_AUDIO_POLICIES = ("error", "skip")
MODEL_INPUT_NORMS = ("global", "band", "clip")
MODEL_HEADS = ("meanmax", "attention")
OPTIMIZERS = ("adam", "adamw")
NOISY_LOSSES = ("bce", "lsoft")
NOISY_PREFIXES = ("noisy_", "lsoft_", "relabelled_", "mixmatch_")  # the Train keys of fat/training/noisy.py
NOISY_FAMILIES = ("retrain",)  # the families whose stage reads the noisy set and pseudo@k (fat/training/noisy.py)
PSEUDO_SELECT = ("confidence", "lwlrap")
LABEL_ISSUE_SPLITS = ("curated", "noisy")
CLEANLAB_FILTERS = ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given")


class ParamsError(DataError):
    """A params value of the wrong type or out of range, or an unknown key; the message names it,
    one problem a line. A user's input problem like bad data (hence a DataError): `fat` commands
    and the `prepare` stage print it and exit non-zero without a traceback."""


def knob(default, rule: str = "", ok: Callable[[Any], bool] | None = None, choices: tuple | None = None):
    """A field with its default and its check: `ok(value)` must hold (else the message says the
    value `must be {rule}`), or the value must be one of `choices`."""
    if isinstance(default, (list, dict)):
        raise TypeError("mutable defaults: use a tuple")
    return field(default=default, metadata={"rule": rule, "ok": ok, "choices": choices})


def _between(lo, hi):
    return lambda v: lo <= v <= hi


class Section:
    """Base of the section classes: every instance is converted and checked on construction
    (direct or from a params mapping), so a section object always holds valid values."""

    SECTION: typing.ClassVar[str] = ""  # the section's name in messages

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        problems = []
        for f in dataclasses.fields(self):
            tp = hints[f.name]
            is_section = isinstance(tp, type) and issubclass(tp, Section)
            if "rule" in f.metadata or is_section:
                try:
                    value = _convert(getattr(self, f.name), tp, f"{self.SECTION}.{f.name}", f.metadata)
                except ParamsError as e:
                    problems += e.problems
                    continue
                object.__setattr__(self, f.name, value)
        if problems:
            raise ParamsError(*problems)

    @classmethod
    def build(cls, mapping, where: str, owners: dict[str, str] | None = None):
        """The section from a params mapping. `where` is the section's name in messages; `owners`
        names another section for keys that came from it (a family's `train` overrides)."""
        if mapping is None:
            mapping = {}
        if not isinstance(mapping, dict):
            raise ParamsError(f"params.yaml: {where} must be a mapping of settings, got {mapping!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(mapping) - set(fields))
        if unknown:
            raise ParamsError(f"params.yaml: {where}.{unknown[0]} is not a setting; {where} has {sorted(fields)}")
        hints = typing.get_type_hints(cls)
        values, problems = {}, []
        for name, value in mapping.items():
            key = f"{(owners or {}).get(name, where)}.{name}"
            try:
                values[name] = _convert(value, hints[name], key, fields[name].metadata)
            except ParamsError as e:  # every bad key of the section at once
                problems += e.problems
        if problems:
            raise ParamsError(*problems)
        return cls(**values)

    def as_dict(self) -> dict:
        """Plain YAML-like values: lists for tuples, dicts for sections (key order as declared)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _plain(v):
    if isinstance(v, Section):
        return v.as_dict()
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    if isinstance(v, types.MappingProxyType):
        return dict(v)
    return v


def _bad(key: str, value, rule: str) -> ParamsError:
    return ParamsError(f"params.yaml: {key} must be {rule}, got {value!r}")


def _convert(value, tp, key: str, meta) -> Any:
    """`value` as type `tp` (int, float, bool, str, X | None, tuple[X, ...], a Section), checked."""
    rule, ok, choices = meta.get("rule", ""), meta.get("ok"), meta.get("choices")
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if isinstance(tp, type) and issubclass(tp, Section):
        return value if isinstance(value, tp) else tp.build(value, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _bad(key, value, f"a list{' of ' + rule if rule else ''}")
        if ok is not None and len(value) == 0 and not ok(()):
            raise _bad(key, value, rule)
        item = args[0]
        if len(args) == 2 and args[1] is Ellipsis or len(args) == 1:
            items = [_convert_scalar(v, item, key, rule, choices, f"{key}[{i}]") for i, v in enumerate(value)]
        else:
            if len(value) != len(args):
                raise _bad(key, value, f"a list of {len(args)} values")
            items = [_convert_scalar(v, a, key, rule, None, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        out = tuple(items)
        if ok is not None and not ok(out):
            raise _bad(key, value, rule)
        return out
    out = _convert_scalar(value, tp, key, rule, choices, key)
    if ok is not None and not ok(out):
        raise _bad(key, value, f"a whole number {rule}" if tp is int else rule)
    return out


def _convert_scalar(value, tp, key: str, rule: str, choices, name: str):
    if tp is bool:
        if not isinstance(value, bool):
            raise _bad(name, value, "true or false")
        return value
    if tp is int:
        whole = f"a whole number{' ' + rule if rule else ''}"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
            raise _bad(name, value, whole)
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad(name, value, "a number")
        if not math.isfinite(value):
            raise _bad(name, value, "finite")
        return float(value)
    if tp is str:
        if choices is not None and value not in choices:
            raise _bad(name, value, f"one of {list(choices)}")
        if not isinstance(value, str):
            raise _bad(name, value, "a string")
        return value
    raise TypeError(f"{key}: unsupported field type {tp}")


# ----------------------------------------------------------------------------- the sections
@dataclass(frozen=True)
class Data(Section):
    """Where the data comes from and how `prepare` and `fat validate` treat it. A `data` section
    must name its `source` (left out, the pipeline would silently train on the synthetic data);
    a params file without a `data` section at all means the defaults."""

    SECTION: typing.ClassVar[str] = "data"

    # `synthetic` (embedded generator) or a directory in the FAT2019 layout
    source: str = knob("synthetic", "`synthetic` or the path of a data directory, not empty", lambda v: bool(v.strip()))
    n_jobs: int = knob(0, ">= 0 (0 = all cores)", lambda v: v >= 0)
    on_bad_audio: str = knob("error", choices=BAD_AUDIO_POLICIES)
    corrections: str | None = knob(None)  # null or "" (none), a shipped corrections file's name, or a path
    max_seconds: float = knob(60.0, "> 0", lambda v: v > 0)
    min_peak_dbfs: float = knob(-80.0, "<= 0", lambda v: v <= 0)

    @classmethod
    def build(cls, mapping, where: str, owners=None):
        missing = []
        if isinstance(mapping, dict) and "source" not in mapping:
            missing = [f"params.yaml: {where}.source: missing; expected `synthetic` or the path of a data directory"]
        try:
            section = super().build(mapping, where, owners)
        except ParamsError as e:
            raise ParamsError(*e.problems, *missing) from None
        if missing:
            raise ParamsError(*missing)
        return section


def _probabilities(v) -> bool:
    return len(v) > 0 and all(p >= 0 for p in v) and abs(sum(v) - 1) < 1e-6


@dataclass(frozen=True)
class SynthSplit(Section):
    SECTION: typing.ClassVar[str] = "synth split"

    n_clips: int = knob(1, ">= 1", lambda v: v >= 1)
    duration: tuple[float, float] = knob((0.3, 8.0), "seconds, 0 < min <= max", lambda v: 0 < v[0] <= v[1])
    label_counts_p: tuple[float, ...] = knob((0.75, 0.2, 0.05), "probabilities summing to 1", _probabilities)
    long_share: float = knob(0.0, "between 0 and 1", _between(0, 1))
    class_skew: float = knob(0.0, ">= 0", lambda v: v >= 0)
    snr_db: tuple[float, float] | None = knob(None, "dB, min <= max", lambda v: v[0] <= v[1])
    label_noise: float = knob(0.0, "between 0 and 1", _between(0, 1))


@dataclass(frozen=True)
class Synth(Section):
    SECTION: typing.ClassVar[str] = "synth"

    sample_rate: int = knob(44100, ">= 1000", lambda v: v >= 1000)
    n_classes: int = knob(20, ">= 2", lambda v: v >= 2)
    curated: SynthSplit = SynthSplit(n_clips=800, duration=(0.3, 8.0), label_counts_p=(0.75, 0.2, 0.05))
    noisy: SynthSplit = SynthSplit(n_clips=1500, duration=(1.0, 10.0), long_share=0.4,
                                   label_counts_p=(0.75, 0.2, 0.05), class_skew=0.8, snr_db=(0.0, 15.0),
                                   label_noise=0.35)
    test: SynthSplit = SynthSplit(n_clips=600, duration=(0.3, 8.0), label_counts_p=(0.65, 0.27, 0.08))

    @classmethod
    def _with_split_defaults(cls, mapping: dict) -> dict:
        """A split given partly keeps the defaults of its other keys (as `fat preset` merges them)."""
        mapping = dict(mapping)
        for split in ("curated", "noisy", "test"):
            if isinstance(mapping.get(split), dict):
                mapping[split] = {**getattr(cls, split).as_dict(), **mapping[split]}
        return mapping

    def __post_init__(self):
        splits = {s: getattr(self, s) for s in ("curated", "noisy", "test")}
        for split, value in self._with_split_defaults(splits).items():
            object.__setattr__(self, split, value)
        super().__post_init__()

    @classmethod
    def build(cls, mapping, where: str, owners=None):
        return super().build(cls._with_split_defaults(mapping or {}) if isinstance(mapping, dict) else mapping,
                             where, owners)


@dataclass(frozen=True)
class Report(Section):
    SECTION: typing.ClassVar[str] = "report"

    silence_dbfs: float = knob(-60.0, "<= 0", lambda v: v <= 0)
    short_s: float = knob(0.5, ">= 0", lambda v: v >= 0)


@dataclass(frozen=True)
class Audio(Section):
    SECTION: typing.ClassVar[str] = "audio"

    sample_rate: int = knob(22050, ">= 1000", lambda v: v >= 1000)


@dataclass(frozen=True)
class Features(Section):
    SECTION: typing.ClassVar[str] = "features"

    n_fft: int = knob(1024, ">= 2", lambda v: v >= 2)
    hop_length: int = knob(512, ">= 1", lambda v: v >= 1)
    n_mels: int = knob(64, ">= 1", lambda v: v >= 1)
    fmin: float = knob(20.0, ">= 0", lambda v: v >= 0)
    fmax: float | None = knob(None, "> 0 (null = sample_rate / 2)", lambda v: v > 0)
    top_db: float | None = knob(80.0, ">= 0 (null = no floor)", lambda v: v >= 0)
    dtype: str = knob("float16", choices=("float16", "float32"))

    def log_mel_kwargs(self, audio: Audio) -> dict:
        """The keyword arguments of `fat.features.logmel.log_mel` (also a store's meta.json)."""
        sr = audio.sample_rate
        kw = dict(sr=sr, n_fft=self.n_fft, hop_length=self.hop_length, n_mels=self.n_mels, fmin=self.fmin,
                  fmax=float(self.fmax or sr / 2))
        if self.top_db is not None:  # absent = no floor, as stores written without it
            kw["top_db"] = float(self.top_db)
        return kw


@dataclass(frozen=True)
class CV(Section):
    SECTION: typing.ClassVar[str] = "cv"

    n_folds: int = knob(3, ">= 2", lambda v: v >= 2)
    folds: tuple[int, ...] = knob((0, 1, 2))  # must be list(range(n_folds)): DVC's foreach needs the list
    # a column of train_curated.csv naming related clips (e.g. a recording id): each group stays in one fold
    group_column: str | None = knob(None, "a column name of train_curated.csv (null: clip-level folds)",
                                    lambda v: bool(v.strip()))


@dataclass(frozen=True)
class Model(Section):
    SECTION: typing.ClassVar[str] = "model"

    channels: tuple[str, ...] = knob(("mel",), f"a non-empty list of {list(MODEL_CHANNELS)}", lambda v: len(v) > 0,
                                     choices=MODEL_CHANNELS)
    base_channels: int = knob(16, ">= 1", lambda v: v >= 1)
    n_blocks: int = knob(4, ">= 1", lambda v: v >= 1)
    dropout: float = knob(0.3, "between 0 and 1 (exclusive of 1)", lambda v: 0 <= v < 1)
    input_norm: str = knob("global", choices=MODEL_INPUT_NORMS)  # BatchNorm per channel, per mel band, or per clip
    head: str = knob("attention", choices=MODEL_HEADS)  # attention pooling over time added to the mean + max MLP
    first_block_convs: int = knob(1, "1 or 2", lambda v: v in (1, 2))  # 3x3 convs of the full-resolution block


@dataclass(frozen=True)
class Train(Section):
    SECTION: typing.ClassVar[str] = "train"

    crop_frames: int = knob(80, ">= 1", lambda v: v >= 1)
    batch_size: int = knob(16, ">= 1", lambda v: v >= 1)
    epochs: int = knob(16, ">= 1", lambda v: v >= 1)
    lr: float = knob(0.002, "> 0", lambda v: v > 0)
    weight_decay: float = knob(0.0001, ">= 0", lambda v: v >= 0)
    warmup: float = knob(0.2, "between 0 and 1 (exclusive)", lambda v: 0 < v < 1)
    num_workers: int = knob(0, ">= 0", lambda v: v >= 0)
    compile: bool = knob(False)
    eval_every: int = knob(4, ">= 1", lambda v: v >= 1)
    optimizer: str = knob("adam", choices=OPTIMIZERS)
    min_steps: int = knob(512, ">= 0 (0 = epochs as set)", lambda v: v >= 0)  # a floor on the optimiser steps
    stretch: float = knob(0.0, ">= 0 (0 disables random-resized crops)", lambda v: v >= 0)
    label_smoothing: float = knob(0.1, "between 0 (off) and 1 (exclusive)", lambda v: 0 <= v < 1)
    ema_decay: float = knob(0.0, "between 0 (off) and 1 (exclusive)", lambda v: 0 <= v < 1)
    # the members' training seed (initial weights, crop and batch order, masks, mixup); null = the top-level
    # `seed`, which also makes the data and the folds: set this to vary the training alone
    seed: int | None = knob(None, ">= 0 (null: the top-level seed)", lambda v: v >= 0)
    # the noisy-set methods (fat/training/noisy.py), retrain family only; each off by default
    noisy_share: float = knob(0.0, "between 0 (off) and 1 (exclusive)", lambda v: 0 <= v < 1)
    noisy_head: bool = knob(False)  # the raw noisy clips train a second head (joint training)
    noisy_loss: str = knob("bce", choices=NOISY_LOSSES)  # the loss of noisy-set rows: bce or lsoft
    lsoft_beta: float = knob(0.7, "between 0 and 1", _between(0, 1))
    relabelled_share: float = knob(0.0, "between 0 (off) and 1 (exclusive)", lambda v: 0 <= v < 1)
    mixmatch_weight: float = knob(0.0, ">= 0 (0 = off)", lambda v: v >= 0)
    mixmatch_k: int = knob(2, ">= 1", lambda v: v >= 1)
    mixmatch_temperature: float = knob(0.5, "> 0", lambda v: v > 0)
    mixmatch_alpha: float = knob(0.75, "> 0", lambda v: v > 0)
    mixmatch_rampup: float = knob(0.4, "between 0 and 1", _between(0, 1))

    def __post_init__(self):
        super().__post_init__()
        problems = []
        if self.noisy_share + self.relabelled_share >= 1:
            problems.append(f"{self.SECTION}.noisy_share + relabelled_share must be below 1 (the rest of each batch "
                            f"is curated), got {self.noisy_share} + {self.relabelled_share}")
        if self.noisy_head and self.noisy_share == 0:
            problems.append(f"{self.SECTION}.noisy_head needs noisy_share > 0 (the share of raw noisy clips it "
                            f"trains on)")
        if self.noisy_loss != "bce" and self.noisy_share == 0 and self.relabelled_share == 0:
            problems.append(f"{self.SECTION}.noisy_loss {self.noisy_loss} needs noisy_share or relabelled_share > 0 "
                            f"(the noisy-set rows it applies to)")
        if self.mixmatch_weight > 0 and self.noisy_loss != "bce":
            problems.append(f"{self.SECTION}.mixmatch_weight > 0 needs noisy_loss bce (MixMatch mixes the noisy-set "
                            f"rows with the others)")
        if problems:
            raise ParamsError(*problems)

    def noisy_keys(self) -> list[str]:
        """The noisy-set settings that differ from their defaults (fat/training/noisy.py)."""
        return [f.name for f in dataclasses.fields(self)
                if f.name.startswith(NOISY_PREFIXES) and getattr(self, f.name) != f.default]


@dataclass(frozen=True)
class Repro(Section):
    """Reproducibility of the stages that run the model (applied by fat.repro before torch loads)."""

    SECTION: typing.ClassVar[str] = "repro"

    strict: bool = knob(True)
    isa: str = knob("avx2", choices=("avx2", "sse4.2"))
    threads: int = knob(2, ">= 1", lambda v: v >= 1)


@dataclass(frozen=True)
class Dist(Section):
    SECTION: typing.ClassVar[str] = "dist"

    nproc_per_node: int = knob(1, ">= 1", lambda v: v >= 1)


@dataclass(frozen=True)
class Mixup(Section):
    SECTION: typing.ClassVar[str] = "mixup"

    alpha: float = knob(0.0, ">= 0 (0 disables mixup)", lambda v: v >= 0)
    until: float = knob(1.0, "between 0 and 1", _between(0, 1))  # mixing only in this first share of the epochs
    concat_p: float = knob(0.0, "between 0 and 1", _between(0, 1))  # label-union mixing ("sigmoid concat")


@dataclass(frozen=True)
class Augment(Section):
    SECTION: typing.ClassVar[str] = "augment"

    p: float = knob(0.5, "between 0 and 1", _between(0, 1))
    freq_masks: int = knob(2, ">= 0", lambda v: v >= 0)
    freq_frac: float = knob(0.15, "between 0 and 1", _between(0, 1))
    time_masks: int = knob(2, ">= 0", lambda v: v >= 0)
    time_frac: float = knob(0.2, "between 0 and 1", _between(0, 1))

    def masks(self) -> dict:
        """The mask sizes (keyword arguments of `fat.training.augment.spec_augment`)."""
        return {"freq_masks": self.freq_masks, "freq_frac": self.freq_frac, "time_masks": self.time_masks,
                "time_frac": self.time_frac}


@dataclass(frozen=True)
class Family(Section):
    """A family's section: the `train` settings it overrides (`overrides`, read-only)."""

    overrides: types.MappingProxyType = field(default_factory=lambda: types.MappingProxyType({}))

    OWN_KEYS: typing.ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        object.__setattr__(self, "overrides", types.MappingProxyType(dict(self.overrides)))
        super().__post_init__()

    @classmethod
    def build(cls, mapping, where: str, owners=None):
        if mapping is None:
            mapping = {}
        if not isinstance(mapping, dict):
            raise ParamsError(f"params.yaml: {where} must be a mapping of settings, got {mapping!r}")
        train_keys = [f.name for f in dataclasses.fields(Train)]
        unknown = sorted(set(mapping) - set(train_keys) - set(cls.OWN_KEYS))
        if unknown:
            own = f" or set {list(cls.OWN_KEYS)}" if cls.OWN_KEYS else ""
            raise ParamsError(f"params.yaml: {where}.{unknown[0]} is not a setting; a family section may override "
                              f"{sorted(train_keys)}{own}")
        overrides = {k: v for k, v in mapping.items() if k in train_keys}
        Train.build(overrides, where)  # each override checked, named as this section's key
        own = Section.build.__func__(cls, {k: v for k, v in mapping.items() if k in cls.OWN_KEYS}, where)
        return dataclasses.replace(own, overrides=types.MappingProxyType(overrides))

    def as_dict(self) -> dict:
        own = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "overrides"}
        return {**dict(self.overrides), **own}


@dataclass(frozen=True)
class Baseline(Family):
    """baseline@k: curated train folds from scratch, for the folds listed in `folds` (none by default:
    the default run spends its time on the families it ensembles; the curated-only members are a
    reference for ablations, and an ensemble member when `ensemble.members` lists them)."""

    folds: tuple[int, ...] = knob((), "a list of distinct fold numbers", lambda v: len(set(v)) == len(v))
    OWN_KEYS: typing.ClassVar[tuple[str, ...]] = ("folds",)


@dataclass(frozen=True)
class Retrain(Family):
    """retrain@k: curated train folds + pseudo@k clips, from the pretrained weights or from scratch."""

    init: str = knob("pretrain", choices=("pretrain", "scratch"))
    stages: int = knob(1, ">= 1", lambda v: v >= 1)
    OWN_KEYS: typing.ClassVar[tuple[str, ...]] = ("init", "stages")


def _pretrain_default() -> Family:
    return Family(overrides=types.MappingProxyType({"epochs": 6, "lr": 0.002, "eval_every": 4}))


def _finetune_default() -> Family:
    """The shipped `finetune` section: 32 epochs, twice `train.epochs` (the embedded members were
    undertrained at 16 and 24; small sets reach `train.min_steps` first)."""
    return Family(overrides=types.MappingProxyType({"epochs": 32}))


def _retrain_default() -> Retrain:
    """The shipped `retrain` section: 10 epochs, and the noisy-set settings, which only it may set: a
    quarter of each batch raw noisy clips under L-soft (what measured best on real recordings and on
    the embedded data, README: the noisy-set methods), the rest off."""
    noisy = {f.name: f.default for f in dataclasses.fields(Train) if f.name.startswith(NOISY_PREFIXES)}
    noisy.update(noisy_share=0.25, noisy_loss="lsoft")
    return Retrain(overrides=types.MappingProxyType({"epochs": 10, **noisy}))


@dataclass(frozen=True)
class Pseudo(Section):
    SECTION: typing.ClassVar[str] = "pseudo"

    label_threshold: float = knob(0.5, "between 0 and 1", _between(0, 1))
    top_k: int = knob(2, ">= 1", lambda v: v >= 1)
    min_confidence: float = knob(0.3, "between 0 and 1", _between(0, 1))
    agree: bool = knob(True)
    targets: str = knob("hard", choices=("hard", "soft"))
    temperature: float = knob(0.5, "> 0", lambda v: v > 0)
    max_clips: int = knob(300, ">= 0 (0 = no cap)", lambda v: v >= 0)
    select: str = knob("confidence", choices=PSEUDO_SELECT)
    per_class_cap: int = knob(0, ">= 0 (0 = no cap)", lambda v: v >= 0)


@dataclass(frozen=True)
class LabelIssues(Section):
    SECTION: typing.ClassVar[str] = "label_issues"

    splits: tuple[str, ...] = knob(LABEL_ISSUE_SPLITS, f"a non-empty list of {list(LABEL_ISSUE_SPLITS)}",
                                   lambda v: len(v) > 0 and len(set(v)) == len(v), choices=LABEL_ISSUE_SPLITS)
    filter_by: str = knob("prune_by_noise_rate", choices=CLEANLAB_FILTERS)
    label_threshold: float = knob(0.5, "between 0 and 1", _between(0, 1))
    top_k: int = knob(2, ">= 1", lambda v: v >= 1)
    relabel_min_p: float = knob(0.5, "between 0 and 1", _between(0, 1))


@dataclass(frozen=True)
class Tta(Section):
    SECTION: typing.ClassVar[str] = "tta"

    beta: float = knob(0.4, "between 0 and 1", _between(0, 1))
    overlap_step: float = knob(0.5, "between 0 (exclusive) and 1", lambda v: 0 < v <= 1)
    shifts: tuple[float, ...] = knob((0.5,), "phases between 0 and 1", lambda v: all(0 <= s <= 1 for s in v))
    masked: int = knob(1, ">= 0", lambda v: v >= 0)


@dataclass(frozen=True)
class Ensemble(Section):
    SECTION: typing.ClassVar[str] = "ensemble"

    members: tuple[str, ...] = knob(ENSEMBLE_FAMILIES, f"a non-empty list of distinct {list(FOLD_FAMILIES)}",
                                    lambda v: len(v) > 0 and len(set(v)) == len(v), choices=FOLD_FAMILIES)
    use_tta: bool = knob(True)
    fold_agg: str = knob("mean", choices=("mean", "geomean"))
    max_corr: float = knob(0.97, "between -1 and 1", _between(-1, 1))
    method: str = knob("mean", choices=("mean", "weighted", "stack"))
    weight_step: float = knob(0.1, "between 0 (exclusive) and 1", lambda v: 0 < v <= 1)
    guard: bool = knob(True)


@dataclass(frozen=True)
class Params(Section):
    """All of params.yaml."""

    seed: int = knob(2019, ">= 0", lambda v: v >= 0)
    data: Data = Data()
    synth: Synth = Synth()
    report: Report = Report()
    audio: Audio = Audio()
    features: Features = Features()
    cv: CV = CV()
    model: Model = Model()
    train: Train = Train()
    repro: Repro = Repro()
    dist: Dist = Dist()
    mixup: Mixup = Mixup()
    augment: Augment = Augment()
    baseline: Baseline = Baseline()
    pretrain: Family = field(default_factory=_pretrain_default)
    finetune: Family = field(default_factory=_finetune_default)
    pseudo: Pseudo = Pseudo()
    retrain: Retrain = field(default_factory=_retrain_default)
    label_issues: LabelIssues = LabelIssues()
    tta: Tta = Tta()
    ensemble: Ensemble = Ensemble()

    @classmethod
    def build(cls, mapping, where: str = "params.yaml", owners=None):
        unknown = sorted(set(mapping) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ParamsError(f"{where}: unknown section {unknown[0]!r}; the sections are "
                              f"{[f.name for f in dataclasses.fields(cls)]}")
        values = {}
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name not in mapping:
                continue
            tp = hints[f.name]
            if isinstance(tp, type) and issubclass(tp, Section):
                values[f.name] = tp.build(mapping[f.name], f.name)
            else:
                values[f.name] = _convert(mapping[f.name], tp, f.name, f.metadata)
        return cls(**values)

    def __post_init__(self):
        super().__post_init__()
        check_folds(self.cv)
        extra = [k for k in self.baseline.folds if k not in self.cv.folds]
        if extra:
            raise ParamsError(f"params.yaml: baseline.folds has fold {extra[0]}, which cv.folds {list(self.cv.folds)} "
                              "does not (an empty list trains no baseline member)")
        if "baseline" in self.ensemble.members and sorted(self.baseline.folds) != list(self.cv.folds):
            raise ParamsError(f"params.yaml: ensemble.members lists baseline, so baseline.folds must train every fold "
                              f"{list(self.cv.folds)} (its out-of-fold predictions), got {list(self.baseline.folds)}")
        for family in ("baseline", "pretrain", "finetune", "retrain"):
            keys = self.train_for(family).noisy_keys()  # the merged settings are checked too
            if keys and family not in NOISY_FAMILIES:
                raise ParamsError(f"params.yaml: {family}: train.{keys[0]} is a setting of the {list(NOISY_FAMILIES)} "
                                  f"family only (its stage reads the noisy set and pseudo@k); set it under retrain:")

    def train_for(self, family: str) -> Train:
        """The `train` settings of `family`: the shared section with the family's overrides."""
        overrides = dict(getattr(self, family).overrides)
        return Train.build({**self.train.as_dict(), **overrides}, "train", owners=dict.fromkeys(overrides, family))

    def training_seed(self, family: str) -> int:
        """The seed `family`'s members train from: its `seed` setting (`train.seed` or the family's
        override), else the top-level `seed` that also makes the data and the folds."""
        own = self.train_for(family).seed
        return self.seed if own is None else own


def check_folds(cv: CV, path: str | Path = "params.yaml") -> None:
    """`cv.folds` exists only because DVC's `foreach` needs a list; it must match `cv.n_folds`."""
    if list(cv.folds) != list(range(cv.n_folds)):
        raise ParamsError(f"{path}: cv.folds must be {list(range(cv.n_folds))} to match cv.n_folds={cv.n_folds}, "
                          f"got {list(cv.folds)}")


def read(path: str | Path = "params.yaml") -> dict:
    """The raw mapping of a params file (no checks beyond its being a mapping)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: params file not found (run from the project root)")
    with path.open() as f:
        raw = yaml.safe_load(f)
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    return raw


def load(path: str | Path = "params.yaml") -> Params:
    """`params.yaml` as typed sections, every value checked (errors name the file and the key)."""
    raw = read(path)
    try:
        return Params.build(raw, str(path))
    except ParamsError as e:
        raise ParamsError(*(p.replace("params.yaml:", f"{path}:", 1) for p in e.problems)) from None


def merge_into(target: dict, override: dict) -> dict:
    """Deep-merge `override` into `target` in place (mappings merge, everything else replaces).
    Works on ruamel's comment-keeping maps too, which is how presets keep params.yaml's comments."""
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            merge_into(target[key], value)
        else:
            target[key] = value
    return target


def merge(base: dict, override: dict) -> dict:
    """Deep-merged copy of `base` with `override`; neither input is changed."""
    return merge_into(copy.deepcopy(base), copy.deepcopy(override))


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_preset(name: str) -> dict:
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.exists():
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(preset_names())}")
    with path.open() as f:
        return yaml.safe_load(f) or {}


def apply_preset(name: str, params_path: str | Path = "params.yaml") -> dict:
    """Merge preset `name` into `params_path` in place, keeping its comments and key order, and
    return the merged mapping. It is checked first: a preset that would make the params invalid
    leaves the file as it was."""
    from ruamel.yaml import YAML

    preset = load_preset(name)
    ry = YAML()
    ry.preserve_quotes = True
    params_path = Path(params_path)
    with params_path.open() as f:
        doc = ry.load(f)

    merge_into(doc, preset)

    buf = io.StringIO()
    ry.dump(doc, buf)
    merged = yaml.safe_load(buf.getvalue())
    Params.build(merged, str(params_path))
    from fat.io import atomic_path  # numpy-free at import: fat.repro reads params before numpy loads

    with atomic_path(params_path) as tmp:
        tmp.write_text(buf.getvalue())
    return merged
