"""`fat export`: the trained ensemble (or one family) as one self-contained module, waveform in,
class probabilities out, in TorchScript and ONNX, with the class list beside it.

The module takes a mono float32 waveform of any length at the card's `audio.sample_rate` and
returns one probability per class. Inside it:

- the log-mel front end of `fat.features.logmel` (centred STFT with zero padding, periodic Hann window,
  librosa's mel filterbank, dB with amin 1e-10), with the DFT as a float64 matrix product, and the
  values rounded to the feature store's dtype (float16 by default) as the models saw them in training;
- each fold model scores the clip's windows of its crop length as `fat.evaluation.predict` does (non-overlapping,
  the last one aligned to the end, short clips tiled) and averages the window probabilities;
- the folds are averaged (`ensemble.fold_agg`) and the families combined as the card says (mean,
  fitted weights, the stacker, or the guard's single member).

TTA is left out: its masked views are random, so the module is the *plain-window* ensemble; its
reference is the pipeline's plain predictions (data/models/<family>/fold<k>/test.csv) combined the
same way. Written files (in `--out`): `tagger.pt` (TorchScript: `torch.jit.load`), `tagger.onnx`
(input `waveform` [samples], output `probs` [classes]; needs the `export` extra: onnx, onnxscript),
`classes.txt` (one class per line, the output order) and `export.json` (what the module expects,
and its agreement with the eager module on a test signal).
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from fat.io import atomic_path

log = logging.getLogger(__name__)

ONNX_PACKAGES = ("onnx", "onnxscript")  # what torch.onnx.export (the torch.export-based exporter) imports


def missing_onnx_packages() -> list[str]:
    import importlib.util

    return [p for p in ONNX_PACKAGES if importlib.util.find_spec(p) is None]


def test_signal(sr: int, seconds: float = 3.3, seed: int = 0):
    """A chirp in noise: every band carries energy, so every part of the module is exercised."""
    t = np.arange(int(sr * seconds)) / sr
    rng = np.random.default_rng(seed)
    y = 0.3 * np.sin(2 * np.pi * (100 + 0.4 * sr * t / seconds) * t) + 0.05 * rng.standard_normal(len(t))
    import torch

    return torch.from_numpy(y.astype(np.float32))


def export(model_dir: Path, out: Path, formats=("torchscript", "onnx"),
           params_path: Path = Path("params.yaml")) -> dict:
    """Write the module(s) and classes into `out`; returns the export.json contents."""
    import warnings

    import torch

    from fat.inference.predictor import Predictor
    from fat.inference.tagger import build

    for noisy in ("onnx_ir", "onnxscript", "torch.onnx", "torch.export", "torch._dynamo"):  # their INFO lines
        logging.getLogger(noisy).setLevel(logging.WARNING)  # are per-pass details, not progress
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")  # TorchScript's notice
    predictor = Predictor.open(model_dir, params_path, device="cpu")
    bad = [f for f in formats if f not in ("torchscript", "onnx")]
    if bad:
        raise ValueError(f"unknown export format {bad[0]!r}; choose torchscript and/or onnx")
    if "onnx" in formats and missing_onnx_packages():
        raise ValueError(f"ONNX export needs the packages {', '.join(missing_onnx_packages())} "
                         "(pip install -e '.[export]')")
    sr = int(predictor.kw["sr"])
    eager = build(predictor)
    probe = test_signal(sr)
    with torch.no_grad():
        want = eager(probe).numpy()
    info = {"model": str(model_dir), "name": predictor.card.get("name"), "sample_rate": sr,
            "input": "waveform: float32 [samples], mono, at sample_rate, any length",
            "output": "probs: float32 [classes], in the order of classes.txt",
            "classes": len(predictor.classes), "kept": predictor.kept, "fold_agg": predictor.fold_agg,
            "combiner": predictor.card["combiner"],
            "features": dict(predictor.kw) | {"dtype": predictor.dtype},
            "tta": "not included (random masked views): the plain-window ensemble", "files": {}, "check": {}}
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "classes.txt") as tmp:
        tmp.write_text("\n".join(predictor.classes) + "\n")
    if "torchscript" in formats:
        scripted = torch.jit.script(build(predictor, trace=True))
        with atomic_path(out / "tagger.pt") as tmp:
            scripted.save(str(tmp))
        got = torch.jit.load(str(out / "tagger.pt"))(probe).detach().numpy()
        info["files"]["torchscript"] = "tagger.pt"
        info["check"]["torchscript_max_abs_diff"] = float(np.abs(got - want).max())
    if "onnx" in formats:
        with atomic_path(out / "tagger.onnx") as tmp:
            onnx_export(eager, probe, tmp)
        info["files"]["onnx"] = "tagger.onnx"
        try:
            got = run_onnx(out / "tagger.onnx", probe.numpy())
            info["check"]["onnx_max_abs_diff"] = float(np.abs(got - want).max())
        except ImportError:
            info["check"]["onnx_max_abs_diff"] = None  # onnxruntime not installed: not run here
    info["check"]["signal"] = f"chirp in noise, {len(probe) / sr:.1f} s"
    with atomic_path(out / "export.json") as tmp:
        tmp.write_text(json.dumps(info, indent=2) + "\n")
    return info


def onnx_export(module, example, path: Path) -> None:
    """torch.onnx.export with the torch.export-based exporter, the waveform length dynamic."""
    import torch

    samples = torch.export.Dim("samples", min=2, max=2**31 - 1)
    program = torch.onnx.export(module, (example,), dynamo=True, input_names=["waveform"], output_names=["probs"],
                                dynamic_shapes={"waveform": {0: samples}}, verbose=False)
    program.save(str(path))


def run_onnx(path: Path, waveform: np.ndarray) -> np.ndarray:
    """Probabilities from ONNX Runtime (CPU)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["probs"], {"waveform": np.ascontiguousarray(waveform, dtype=np.float32)})[0]


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="the ensemble (or one family) as one TorchScript / ONNX module: waveform in, "
                                      "class probabilities out, log-mel front end included",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=Path("data/models/ensemble"),
                   help="model bundle or family directory, as for `fat predict` (default: %(default)s)")
    p.add_argument("-o", "--out", type=Path, default=Path("export"), help="output directory (default: %(default)s)")
    p.add_argument("--format", dest="formats", action="append", choices=["torchscript", "onnx"], default=None,
                   help="torchscript and/or onnx (repeat the option; default: both)")
    p.add_argument("--params", type=Path, default=Path("params.yaml"),
                   help="params file for a pipeline family directory (default: %(default)s)")
    p.set_defaults(func=main)


def main(args) -> int:
    info = export(args.model, args.out, tuple(args.formats or ("torchscript", "onnx")), args.params)
    for fmt, name in info["files"].items():
        diff = info["check"].get(f"{fmt}_max_abs_diff")
        print(f"{args.out / name}: {fmt}" + ("" if diff is None else f", max |p - eager| {diff:.2e} on a test signal"))
    print(f"{args.out / 'classes.txt'}: the {info['classes']} output classes; "
          f"input: mono float32 waveform at {info['sample_rate']} Hz")
    return 0
