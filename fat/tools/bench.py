"""`fat bench`: speed and memory figures on inputs it generates itself (deterministic).

- log-mel: audio-seconds per second of `fat.features.log_mel` and of librosa on the same clips
  (FAT2019-like synthetic sounds at 44.1 kHz, n_fft 2048, hop 512, 128 mels), both single-threaded
  (torch and BLAS limited to one thread), timed interleaved clip by clip so that load from other
  processes hits both alike; their ratio; the largest dB difference; our throughput on all cores.
- training: samples per second of the training loop (`fat.train.TrainLoop`, the params' model,
  `train` settings and `features.n_mels`) on a generated memory-mapped store, and the share of the epoch spent waiting
  for data: the fastest of `--rounds` epochs after a warm-up epoch.
- memory: peak resident memory (VmHWM) of a separate process that opens a generated store of
  `--store-frames` frames x 128 mels (float16 by `features.dtype`) memory-mapped and runs training
  steps on crops spread over all of it. FAT2019's noisy set is about 18 million frames
  (`--store-frames 18000000`, a 4.6 GB file; the store is deleted afterwards).
- stage overhead: a training stage's wall time under `dvc repro` minus its own work, split
  into DVC's per-stage cost and the imports, in a throwaway DVC repository (fat/tools/overhead.py).
- predict (with `--predict-audio DIR`): audio-seconds per second of `fat predict` with the model of
  `--predict-model` (default: the ensemble's bundle) on the audio files in DIR — reading, resampling,
  log-mel and every kept member's fold models with TTA, as the command runs them (model loading excluded).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from fat.log import progress

if TYPE_CHECKING:
    from fat.params import Params

# torch, librosa and the training code load only when the command runs, not for `fat --help`

LOG_MEL = dict(sr=44100, n_fft=2048, hop_length=512, n_mels=128, fmin=0.0, fmax=22050.0)
N_CLASSES = 80  # FAT2019's vocabulary size, for the targets of the training figures


def bench_clips(audio_seconds: float, seed: int = 2019) -> list[np.ndarray]:
    """Synthetic FAT2019-like clips at 44.1 kHz until `audio_seconds` are reached: two noisy-like
    clips (1-15 s, mostly 15 s, background noise) for every curated-like one (0.3-30 s)."""
    from fat.data import synth

    noisy = synth.SplitSpec("noisy", 0, (1.0, 15.0), 0.6, (0.75, 0.2, 0.05), 0.0, (0.0, 15.0), 0.0)
    curated = synth.SplitSpec("curated", 0, (0.3, 30.0), 0.0, (0.75, 0.2, 0.05), 0.0, None, 0.0)
    clips, total, i = [], 0.0, 0
    while total < audio_seconds:
        spec = curated if i % 3 == 2 else noisy
        y = synth.make_clip(spec, i, seed, 20, LOG_MEL["sr"])[0]
        clips.append(y)
        total += len(y) / LOG_MEL["sr"]
        i += 1
    return clips


def bench_log_mel(audio_seconds: float = 300.0, rounds: int = 3) -> dict:
    """Single-threaded throughput of ours vs librosa on the same clips, interleaved, best round each."""
    import torch
    from threadpoolctl import threadpool_limits

    from fat.features import fft, logmel

    clips = bench_clips(audio_seconds)
    seconds = sum(len(y) for y in clips) / LOG_MEL["sr"]
    kw = {k: v for k, v in LOG_MEL.items() if k != "sr"}
    sr = LOG_MEL["sr"]
    threads = torch.get_num_threads()
    best = {"ours": np.inf, "librosa": np.inf}
    max_diff = 0.0
    try:
        torch.set_num_threads(1)
        with threadpool_limits(1):
            logmel.log_mel(clips[0], sr, **kw)  # compile / warm up both
            logmel.librosa_log_mel(clips[0], sr, **kw)
            for r in progress(range(rounds), desc="bench log-mel"):
                spent = {"ours": 0.0, "librosa": 0.0}
                for i, y in enumerate(clips):
                    order = ("ours", "librosa") if (r + i) % 2 == 0 else ("librosa", "ours")
                    out = {}
                    for name in order:
                        fn = logmel.log_mel if name == "ours" else logmel.librosa_log_mel
                        t = time.perf_counter()
                        out[name] = fn(y, sr, **kw)
                        spent[name] += time.perf_counter() - t
                    if r == 0:
                        max_diff = max(max_diff, float(np.abs(out["ours"] - out["librosa"]).max()))
                for name in best:
                    best[name] = min(best[name], spent[name])
        workers = os.cpu_count() or 1
        parallel = np.inf
        with ThreadPoolExecutor(workers) as pool:
            for _ in range(rounds):
                t = time.perf_counter()
                list(pool.map(lambda y: logmel.log_mel_frames(y, sr, **kw), clips))
                parallel = min(parallel, time.perf_counter() - t)
    finally:
        torch.set_num_threads(threads)
    return {
        **LOG_MEL, "clips": len(clips), "audio_seconds": round(seconds, 1), "rounds": rounds,
        "librosa_audio_s_per_s": round(seconds / best["librosa"], 1),
        "ours_audio_s_per_s": round(seconds / best["ours"], 1),
        "speedup_single_thread": round(best["librosa"] / best["ours"], 2),
        "max_abs_db_diff": max_diff,
        "ours_all_cores_audio_s_per_s": round(seconds / parallel, 1), "all_cores_threads": workers,
        "fft_backend": fft.backend(),
    }


def write_store(root: Path, n_frames: int, n_mels: int = 128, dtype: str = "float16", seed: int = 0,
                mean_clip_frames: int = 900) -> dict:
    """A deterministic store of `n_frames` frames written by fat.features.store's
    StoreWriter, sequentially (never held in memory). Clip lengths 86-1714 frames (1-20 s at
    44.1 kHz, hop 512), about `mean_clip_frames` on average like FAT2019's noisy set."""
    from fat.features.store import StoreWriter

    need = n_frames * n_mels * np.dtype(dtype).itemsize
    root.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root.parent).free
    if need > 0.95 * free:
        raise ValueError(f"{root.parent}: a store of {n_frames} frames needs {need / 1e9:.1f} GB, "
                         f"only {free / 1e9:.1f} GB free")
    rng = np.random.default_rng(seed)
    lengths, total = [], 0
    while total < n_frames:
        lengths.append(min(int(rng.integers(86, 2 * mean_clip_frames - 85)), n_frames - total))
        total += lengths[-1]
    block = (rng.normal(-40.0, 15.0, size=(1 << 16, n_mels))).astype(dtype)
    with StoreWriter(root, n_mels, dtype) as store:
        done = 0
        for _ in progress(range(-(-n_frames // len(block))), desc="bench store"):
            k = min(len(block), n_frames - done)
            store.append(np.roll(block, done // len(block), axis=1)[:k])
            done += k
        for i, n in enumerate(lengths):
            store.clip(f"{i:08d}.wav", n, round(n * 512 / 44100, 4))
        meta = store.close({**LOG_MEL, "n_mels": n_mels})
    return meta


def _training_setup(store_dir, p: Params, steps: int, epochs: int, seed: int = 0):
    from fat.device import pick_device
    from fat.features.store import FeatureStore
    from fat.training import loop as train
    from fat.training import models

    store = FeatureStore.open(store_dir)
    bs = p.train.batch_size
    rows = np.linspace(0, len(store) - 1, steps * bs).round().astype(np.int64)  # spread over the whole store
    targets = (np.random.default_rng(seed).random((len(rows), N_CLASSES)) < 1.5 / N_CLASSES).astype(np.float32)
    data = train.CropDataset(store, rows, targets, p.train.crop_frames, seed, stretch=p.train.stretch)
    device = pick_device()
    train.seed_everything(seed)
    model = models.build(p.model, N_CLASSES, store.n_mels).to(device)
    loop = train.TrainLoop(model, data, train=dataclasses.replace(p.train, epochs=epochs, min_steps=0),
                           mixup=p.mixup,
                           augment=p.augment, seed=seed, device=device)
    return loop, device


def bench_training(store_dir, p: Params, steps: int = 30, rounds: int = 3) -> dict:
    """Samples/s and data-loading share of the fastest of `rounds` epochs of `steps` steps, after a
    warm-up epoch (allocator, oneDNN primitives, worker start)."""
    import torch

    loop, device = _training_setup(store_dir, p, steps, epochs=1 + rounds)
    loop.run_epoch(0)
    best = None
    for epoch in range(1, 1 + rounds):
        wait0, total0 = loop.wait_s, loop.total_s
        rec = loop.run_epoch(epoch)
        if best is None or loop.total_s - total0 < best[2]:
            best = (rec, loop.wait_s - wait0, loop.total_s - total0)
    rec, wait, total = best
    return {"device": device.type, "torch_threads": torch.get_num_threads(), "steps": steps,
            "batch_size": loop.batch_size, "crop_frames": p.train.crop_frames,
            "num_workers": p.train.num_workers, "mixup_alpha": loop.mixup_alpha,
            "samples_per_s": rec["samples_per_s"], "step_ms": round(1000 * total / steps, 1),
            "data_loading_share": round(wait / total, 4)}


def peak_rss_gb() -> float:
    """This process's peak resident memory. Linux: VmHWM, which starts afresh at exec; ru_maxrss
    would also count the memory of the parent at the fork that started this process."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1e6, 3)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 3)  # kilobytes elsewhere


def _memory_child(args: dict) -> None:
    """Runs in a fresh interpreter: open the store, train `steps` steps, print peak RSS as JSON."""
    from fat import params as fat_params

    p = fat_params.load(args["params"])
    loop, _ = _training_setup(args["store"], p, int(args["steps"]), epochs=1)
    loop.run_epoch(0)
    out = {"peak_rss_gb": peak_rss_gb()}
    status = Path("/proc/self/status")  # Linux: how much of the resident memory is the memory map's file pages
    if status.exists():
        fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        for key, name in (("RssAnon", "rss_anon_gb"), ("RssFile", "rss_file_gb")):
            if key in fields:
                out[name] = round(int(fields[key].split()[0]) / 1e6, 3)
    print(json.dumps(out))


def bench_memory(store_dir, params_path, store_meta: dict, steps: int = 20) -> dict:
    code = "import json, sys; from fat.tools import bench; bench._memory_child(json.loads(sys.argv[1]))"
    args = json.dumps({"store": str(store_dir), "params": str(params_path), "steps": steps})
    run = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"memory benchmark process failed:\n{run.stderr[-3000:]}")
    child = json.loads(run.stdout.strip().splitlines()[-1])
    size = (Path(store_dir) / "mels.npy").stat().st_size
    return {"store_frames": store_meta["frames"], "store_clips": store_meta["clips"], "n_mels": store_meta["n_mels"],
            "dtype": store_meta["dtype"], "store_gb": round(size / 1e9, 3), "steps": steps, **child}


def write_dataset(root: Path, n_files: int, seed: int = 0) -> dict:
    """A Kaggle-layout directory of `n_files` short (0.3-1 s) 16-bit 44.1 kHz wavs, split like
    FAT2019 (17 % curated, 68 % noisy, 15 % test), 80 classes, for the validation figures."""
    import soundfile as sf

    from fat.data import sources
    from fat.data import tables as data

    rng = np.random.default_rng(seed)
    classes = [f"class_{i:02d}" for i in range(80)]
    sizes = {"curated": int(0.17 * n_files), "test": int(0.15 * n_files)}
    sizes["noisy"] = n_files - sizes["curated"] - sizes["test"]
    for split, (csv, folder) in data.SPLITS.items():
        (root / folder).mkdir(parents=True)
        rows = []
        for i in range(sizes[split]):
            fname = f"{split[0]}{i:06d}.wav"
            y = (0.1 * rng.standard_normal(int(44100 * rng.uniform(0.3, 1.0)))).astype(np.float32)
            sf.write(str(root / folder / fname), y, 44100, subtype="PCM_16")
            rows.append((fname, ",".join(rng.choice(classes, size=int(rng.integers(1, 3)), replace=False))))
        pd.DataFrame(rows, columns=["fname", "labels"]).to_csv(root / csv, index=False)
    test = pd.read_csv(root / data.SPLITS["test"][0])["fname"]
    sources.sample_submission(classes, test).to_csv(root / data.SAMPLE_SUBMISSION, index=False)
    return {"files": n_files, **{f"{k}_files": v for k, v in sizes.items()}}


def _validate_child(args: dict) -> None:
    """Runs in a fresh interpreter: validate the directory, print time, problems and peak RSS."""
    from fat.data import validate

    t0 = time.perf_counter()
    report = validate.validate(args["root"], n_jobs=int(args["jobs"]))
    seconds = time.perf_counter() - t0
    # the workers' ru_maxrss also counts this process's memory when they were forked: an upper bound
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6
    print(json.dumps({"seconds": round(seconds, 2), "problems": len(report.problems()),
                      "peak_rss_gb": peak_rss_gb(), "peak_rss_worker_gb": round(workers, 3)}))


def bench_validate(root: Path, n_files: int, jobs: int = 0) -> dict:
    """Wall time and peak memory of `fat validate` (tables + every wav) on a generated directory."""
    meta = write_dataset(root, n_files)
    code = "import json, sys; from fat.tools import bench; bench._validate_child(json.loads(sys.argv[1]))"
    run = subprocess.run([sys.executable, "-c", code, json.dumps({"root": str(root), "jobs": jobs})],
                         capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"validation benchmark process failed:\n{run.stderr[-3000:]}")
    child = json.loads(run.stdout.strip().splitlines()[-1])
    if child["problems"]:
        raise RuntimeError(f"the generated directory {root} has {child['problems']} problems")
    return {**meta, "jobs": jobs or os.cpu_count(), **child,
            "files_per_s": round(n_files / child["seconds"], 1)}


def bench_predict(model_dir: Path, audio: Path, jobs: int = 0) -> dict:
    """`fat predict`'s throughput: the files of `audio`, tagged by the model of `model_dir`."""
    import torch

    from fat.inference import predictor as infer

    files = infer.find_audio([audio])
    if not files:
        raise ValueError(f"{audio}: no audio files to time `fat predict` on")
    predictor = infer.Predictor.open(model_dir)
    infer.tag(predictor, files[:1], jobs)  # warm-up: the compiled log-mel kernel, oneDNN's first calls
    t0 = time.perf_counter()
    _, probs, failed, seconds = infer.tag(predictor, files, jobs)
    elapsed = time.perf_counter() - t0
    members = sum(len(m) for m in predictor.members.values())
    return {"model": str(model_dir), "audio": str(audio), "files": len(files), "unreadable": len(failed),
            "audio_seconds": round(seconds, 1), "seconds": round(elapsed, 2),
            "audio_s_per_s": round(seconds / elapsed, 1), "kept": predictor.kept, "fold_models": members,
            "tta_views": 0 if not predictor.tta else 1 + len(predictor.tta.shifts) + predictor.tta.masked,
            "torch_threads": torch.get_num_threads()}


def run(args) -> dict:
    import torch

    from fat import params as fat_params

    p = fat_params.load(args.params)
    dtype = p.features.dtype
    out: dict = {"machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                             "cuda": torch.cuda.is_available(), "torch": torch.__version__,
                             "python": platform.python_version()}}
    out["log_mel"] = bench_log_mel(args.audio_seconds, args.rounds)
    work = Path(tempfile.mkdtemp(prefix="fat-bench-", dir=args.workdir))
    try:
        small = write_store(work / "small", args.train_frames, p.features.n_mels, dtype)
        out["training"] = bench_training(work / "small", p, args.train_steps, args.rounds)
        meta = write_store(work / "large", args.store_frames, 128, dtype, seed=1)
        out["memory"] = bench_memory(work / "large", args.params, meta, args.memory_steps)
        out["training"].update(store_frames=small["frames"], n_mels=small["n_mels"])
        if args.validate_files:
            out["validate"] = bench_validate(work / "validate", args.validate_files)
        if args.overhead_files:
            from fat.tools import overhead

            out["stage_overhead"] = overhead.measure(work, args.overhead_files, args.rounds)
        if args.predict_audio:
            out["predict"] = bench_predict(args.predict_model, args.predict_audio)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def summary(res: dict) -> str:
    lm, tr, mem = res["log_mel"], res["training"], res["memory"]
    return "\n".join([
        f"log-mel ({lm['sr']} Hz, n_fft {lm['n_fft']}, hop {lm['hop_length']}, {lm['n_mels']} mels; "
        f"{lm['clips']} clips, {lm['audio_seconds']} s of audio), audio-seconds per second:",
        f"  librosa, 1 thread   {lm['librosa_audio_s_per_s']:>9.0f}",
        f"  fat, 1 thread       {lm['ours_audio_s_per_s']:>9.0f}   ({lm['speedup_single_thread']:.2f}x librosa, "
        f"max difference {lm['max_abs_db_diff']:.1e} dB; FFT: {lm['fft_backend']})",
        f"  fat, {lm['all_cores_threads']} threads      {lm['ours_all_cores_audio_s_per_s']:>9.0f}",
        f"training ({tr['device']}, {tr['torch_threads']} torch threads, "
        f"batch {tr['batch_size']} x {tr['n_mels']} mels x "
        f"{tr['crop_frames']} frames, {tr['num_workers']} loader workers): {tr['samples_per_s']:.0f} samples/s, "
        f"{tr['step_ms']} ms/step, data loading {100 * tr['data_loading_share']:.1f}% of step time",
        f"memory: {mem['steps']} training steps on a memory-mapped store of {mem['store_frames']:,} frames x "
        f"{mem['n_mels']} mels ({mem['dtype']}, {mem['store_gb']:.2f} GB): peak RSS {mem['peak_rss_gb']:.2f} GB",
    ] + ([f"validation (`fat validate`: tables + every wav) of {v['files']:,} generated short wavs: "
          f"{v['seconds']:.1f} s "
          f"({v['files_per_s']:.0f} files/s, {v['jobs']} workers), peak RSS {v['peak_rss_gb']:.2f} GB "
          f"(each worker at most {v['peak_rss_worker_gb']:.2f} GB)"] if (v := res.get("validate")) else [])
      + ([_overhead_summary(o)] if (o := res.get("stage_overhead")) else [])
      + ([f"fat predict ({pr['model']}: {', '.join(pr['kept'])}; {pr['fold_models']} fold models x {pr['tta_views']} "
          f"views) on {pr['files']} files of {pr['audio']} ({pr['audio_seconds']} s of audio): "
          f"{pr['audio_s_per_s']:.1f} audio-seconds per second, {pr['torch_threads']} torch threads"]
         if (pr := res.get("predict")) else []))


def _overhead_summary(o: dict) -> str:
    from fat.tools import overhead

    return overhead.summary(o)


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="speed and memory figures: log-mel vs librosa, training throughput, "
                                     "peak memory on a large memory-mapped store",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    p.add_argument("--params", default="params.yaml", help="params file (model, train, mixup, augment, "
                                                           "features.dtype; default: %(default)s)")
    p.add_argument("--audio-seconds", type=float, default=300.0,
                   help="audio for the log-mel figures (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="timing rounds (log-mel passes, training epochs), "
                                                          "the best one kept (default: %(default)s)")
    p.add_argument("--train-steps", type=int, default=30,
                   help="steps per training epoch timed, >= 10 (default: %(default)s)")
    p.add_argument("--train-frames", type=int, default=200_000,
                   help="frames of the training store (default: %(default)s)")
    p.add_argument("--store-frames", type=int, default=2_000_000,
                   help="frames of the memory benchmark's store; FAT2019's noisy set is ~18000000 "
                        "(default: %(default)s)")
    p.add_argument("--memory-steps", type=int, default=20,
                   help="training steps in the memory process, >= 10 (default: %(default)s)")
    p.add_argument("--validate-files", type=int, default=0,
                   help="also time `fat validate` on a generated directory of this many short wavs; "
                        "FAT2019 has ~29000 (default: 0, skipped)")
    p.add_argument("--overhead-files", type=int, default=3000,
                   help="files in the directory of the stage-overhead repository, like data/raw's wavs "
                        "(default: %(default)s; 0 skips the stage-overhead figures)")
    p.add_argument("--predict-audio", type=Path, default=None,
                   help="also time `fat predict` on the audio files of this directory, e.g. data/raw/test "
                        "(default: skipped)")
    p.add_argument("--predict-model", type=Path, default=Path("data/models/ensemble"),
                   help="the model `fat predict` is timed with (default: %(default)s)")
    p.add_argument("--workdir", default=None, help="where the generated stores go (default: the system temp dir)")
    p.set_defaults(func=main)


def main(args) -> int:
    for name in ("audio_seconds", "rounds", "train_frames", "store_frames"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    if args.validate_files < 0:
        raise ValueError("--validate-files must be 0 (skip) or positive")
    if args.overhead_files < 0:
        raise ValueError("--overhead-files must be 0 (skip) or positive")
    for name in ("train_steps", "memory_steps"):  # the one-cycle schedule needs a few steps per phase
        if getattr(args, name) < 10:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 10")
    from fat.io import write_json

    res = run(args)
    print(summary(res))
    print(json.dumps(res, indent=2))
    if args.json:
        write_json(args.json, res)
    return 0
