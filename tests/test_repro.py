"""Reproducibility across CPUs: the log-mel store has the same bytes under every instruction-set cap
(numpy's dispatch, numba's target, glibc's variants, MKL's), computed in fresh processes; the dB
routine of the kernel is accurate; `fat.repro` caps the libraries and threads as documented."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from fat import repro
from fat.features import melkernel

ROOT = Path(__file__).resolve().parents[1]

STORE_HASH = """
import hashlib, json, sys
from pathlib import Path
from fat.features import extract as features
paths = sorted(Path(sys.argv[1]).glob("*.wav"))
from fat.params import Audio, Features
kw = Features(n_fft=1024, hop_length=512, n_mels=64, fmin=20.0, fmax=None).log_mel_kwargs(
    Audio(sample_rate=22050))
out = {}
for dtype in ("float16", "float32"):
    meta = features.build_store(paths, [p.name for p in paths], Path(sys.argv[2]) / dtype, kw, dtype=dtype, n_jobs=2)
    out[dtype] = hashlib.sha256((Path(sys.argv[2]) / dtype / "mels.npy").read_bytes()).hexdigest()
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Eight 44.1 kHz clips (resampled on load, as in the pipeline): tones, chirps, noise bursts,
    a quiet one and a loud one, 0.2 to 3 s."""
    d = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(15)
    sr = 44100
    for i in range(8):
        n = int(sr * rng.uniform(0.2, 3.0))
        t = np.arange(n) / sr
        y = 0.3 * np.sin(2 * np.pi * rng.uniform(50, 15000) * t * (1 + rng.uniform(0, 2) * t))
        y += rng.standard_normal(n) * rng.choice([1e-4, 0.01, 0.2]) * (rng.random(n) < rng.uniform(0.1, 1))
        y *= 10 ** rng.uniform(-4, 0)
        sf.write(d / f"clip{i}.wav", np.clip(y, -1, 1).astype(np.float32), sr, subtype="FLOAT")
    return d


def store_hashes(clips: Path, out: Path, env: dict) -> dict:
    full = {**os.environ, "PYTHONPATH": str(ROOT), "FAT_LOG": "WARNING", **env}
    proc = subprocess.run([sys.executable, "-c", STORE_HASH, str(clips), str(out)], env=full,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_feature_store_has_the_same_bytes_under_every_instruction_set_cap(clips, tmp_path):
    """Each cap of fat.repro.EMULATE (numpy's dispatch, numba's target CPU, glibc's hwcaps, MKL's
    instruction sets) in its own process, plus the MKL FFT: float16 and float32 stores identical."""
    runs = {name: {**env, "NUMBA_CACHE_DIR": str(tmp_path / f"numba-{name}")} for name, env in repro.EMULATE.items()}
    runs["numba generic"] = {"NUMBA_CPU_NAME": "generic", "NUMBA_CACHE_DIR": str(tmp_path / "numba-generic")}
    hashes = {name: store_hashes(clips, tmp_path / name.replace(" ", "-"), env) for name, env in runs.items()}
    assert len({json.dumps(h, sort_keys=True) for h in hashes.values()}) == 1, hashes


def test_kernel_log_is_within_an_ulp_of_numpy():
    x = np.exp(np.random.default_rng(1).uniform(np.log(1e-10), np.log(1e12), 200_000))
    x = np.concatenate([x, [1e-10, 1.0, 2.0, 0.5, np.sqrt(2), np.nextafter(np.sqrt(2), 3), 1e300]])
    want = 10 * np.log10(x)
    got = x.copy()
    melkernel._to_db(got, 1e-10, np.empty(len(x), np.int64))
    ulps = np.abs(got - want) / np.spacing(np.maximum(np.abs(want), 1e-300))
    assert got[-6] == 0.0 and ulps.max() <= 2, ulps.max()
    assert np.mean(got.astype(np.float32) == want.astype(np.float32)) > 0.9999  # float32 outputs: rare 1-ulp ties


def test_kernel_log_applies_the_floor():
    x = np.array([0.0, 1e-300, 1e-11, 1e-10, 1e-9])
    melkernel._to_db(x, 1e-10, np.empty(len(x), np.int64))
    np.testing.assert_allclose(x, [-100, -100, -100, -100, -90], rtol=0, atol=1e-12)


def test_environment_caps_and_keeps_lower_caps():
    cfg = {"strict": True, "isa": "avx2", "threads": 3}
    env = repro.environment(cfg, {})
    assert env["ONEDNN_MAX_CPU_ISA"] == "AVX2" and env["ATEN_CPU_CAPABILITY"] == "avx2"
    assert env["MKL_CBWR"] == "COMPATIBLE" and env["ONEDNN_DEFAULT_FPMATH_MODE"] == "STRICT"
    assert env["OMP_NUM_THREADS"] == "3" and "X86_V4" in env["NPY_DISABLE_CPU_FEATURES"].split()
    higher = repro.environment(cfg, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX", "ATEN_CPU_CAPABILITY": "avx512"})
    assert higher["ONEDNN_MAX_CPU_ISA"] == "AVX2" and higher["ATEN_CPU_CAPABILITY"] == "avx2"
    lower = repro.environment(cfg, {"ONEDNN_MAX_CPU_ISA": "SSE41", "ATEN_CPU_CAPABILITY": "default",
                                    "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "NPY_DISABLE_CPU_FEATURES": "X86_V3"})
    assert lower["ONEDNN_MAX_CPU_ISA"] == "SSE41" and lower["ATEN_CPU_CAPABILITY"] == "default"
    assert lower["MKL_ENABLE_INSTRUCTIONS"] == "SSE4_2"
    assert set(lower["NPY_DISABLE_CPU_FEATURES"].split()) == {"X86_V3", "X86_V4", "AVX512_ICL", "AVX512_SPR"}
    loose = repro.environment({**cfg, "strict": False}, {})
    assert loose == {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3"}


@pytest.mark.parametrize("section,match", [
    ({"isa": "avx512"}, r"repro.isa must be one of \['avx2', 'sse4.2'\], got 'avx512'"),
    ({"threads": 0}, "repro.threads must be a whole number >= 1, got 0"),
    ({"threads": 2.5}, "repro.threads must be a whole number >= 1, got 2.5"),
    ({"strict": "yes"}, "repro.strict must be true or false, got 'yes'"),
    ({"thread": 2}, r"repro.thread is not a setting; repro has \['isa', 'strict', 'threads'\]"),
])
def test_settings_reject_bad_values(tmp_path, section, match):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"repro": section}))
    with pytest.raises(ValueError, match=match):
        repro.settings(path)


def test_params_yaml_has_the_schema_defaults():
    from fat.params import Repro

    assert repro.settings(ROOT / "params.yaml") == Repro().as_dict()


def configure_in_child(tmp_path, section: dict, before: str = "") -> subprocess.CompletedProcess:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"repro": section}))
    code = (f"{before}\nfrom fat import repro\napplied = repro.configure()\nimport json, os, torch\n"
            "print(json.dumps({'threads': torch.get_num_threads(), 'det': torch.are_deterministic_algorithms_enabled(),"
            " 'isa': os.environ.get('ONEDNN_MAX_CPU_ISA'), 'cap': torch.backends.cpu.get_cpu_capability(),"
            " 'describe': repro.describe(applied)}))")
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")}
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True)


def test_configure_sets_threads_caps_and_determinism_before_torch_loads(tmp_path):
    proc = configure_in_child(tmp_path, {"strict": True, "isa": "avx2", "threads": 1})
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["threads"] == 1 and got["det"] is True and got["isa"] == "AVX2"
    assert got["cap"] in ("AVX2", "DEFAULT")  # torch's own ops: never AVX-512 under the cap
    assert got["describe"].startswith("repro: strict, 1 torch threads, ISA capped at avx2")


def test_configure_makes_torch_and_inductor_deterministic_without_loading_the_compiler(tmp_path):
    """Strict mode turns on both of torch.use_deterministic_algorithms' flags (torch's and inductor's)
    without importing torch._dynamo, which a stage that never compiles would pay ~1.5 s for."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"repro": {"strict": True, "threads": 1}}))
    code = ("import sys\nfrom fat import repro\nrepro.configure()\nimport torch, json\n"
            "loaded = 'torch._dynamo' in sys.modules\n"
            "m = torch.nn.Conv2d(1, 2, 3)\nm(torch.randn(1, 1, 5, 5)).sum().backward()\n"
            "still = 'torch._dynamo' in sys.modules\n"
            "import torch._inductor.config as ic\n"
            "print(json.dumps({'loaded': loaded or still, 'det': torch.are_deterministic_algorithms_enabled(),"
            " 'warn_only': torch.is_deterministic_algorithms_warn_only_enabled(), 'inductor': ic.deterministic}))")
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_DETERMINISTIC"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"loaded": False, "det": True, "warn_only": False, "inductor": True}


def test_configure_without_strict_fixes_only_threads(tmp_path):
    proc = configure_in_child(tmp_path, {"strict": False, "threads": 2})
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["threads"] == 2 and got["det"] is False and got["isa"] is None


def test_configure_refuses_once_numpy_is_loaded(tmp_path):
    proc = configure_in_child(tmp_path, {"strict": True}, before="import numpy")
    assert proc.returncode != 0
    assert "fat.repro.configure() must run before numpy is imported" in proc.stderr


@pytest.mark.parametrize("stage", ["train", "pretrain", "pseudo", "predict"])
def test_model_stages_configure_before_any_other_import(stage):
    """The first statements of a stage that runs the model: import fat.repro, call configure()."""
    import ast

    tree = ast.parse((ROOT / "stages" / f"{stage}.py").read_text())
    body = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    first, second = body[0], body[1]
    assert isinstance(first, ast.ImportFrom) and first.module == "fat" and [a.name for a in first.names] == ["repro"]
    assert isinstance(second, ast.Assign) and ast.unparse(second.value) == "repro.configure()"
