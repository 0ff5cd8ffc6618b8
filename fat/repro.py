"""Strict reproducibility for CPU stages: the same outputs, for the same params, on every run on
one CPU model and on CPUs at or above one instruction-set level that share its cache sizes, with any
number of cores.

torch, oneDNN, oneMKL and numpy each pick their kernels at run time from the CPU's instruction sets,
and results differ in the last bits between those kernels (a sum is reassociated to the vector
width, a product fused, an exponential approximated another way); through training, last bits
become other weights and other metrics. torch's thread count changes the reduction order too.
With `repro.strict` (params.yaml), a stage calls `configure()` first thing, before anything imports
numpy or torch (these read the settings once, when they load), and it:

- caps every library at the level `repro.isa` names (`LEVELS`): ONEDNN_MAX_CPU_ISA (oneDNN's
  convolutions), ATEN_CPU_CAPABILITY (torch's own vectorised ops), MKL_ENABLE_INSTRUCTIONS and
  MKL_CBWR (oneMKL; its CNR branch), NPY_DISABLE_CPU_FEATURES (numpy's dispatched loops), and
  ONEDNN_DEFAULT_FPMATH_MODE=STRICT (no implicit bf16/tf32 down-conversion on CPUs that have it).
  A cap already in the environment that is lower is kept (it is how a smaller CPU is emulated);
- fixes torch's intra-op threads to `repro.threads` (not the machine's core count) and its
  inter-op threads to 1;
- turns on torch's deterministic-algorithms flag (and sets CUBLAS_WORKSPACE_CONFIG, which it needs
  on CUDA). Not through `torch.use_deterministic_algorithms`: that function also imports
  `torch._inductor.config` to set inductor's copy of the flag, and with it `torch._dynamo`, which
  costs every stage that never compiles (prediction, pseudo-labels, label issues) about 1.5 s of
  imports. `configure()` sets the same two things without the import: torch's flag through the
  call that function makes, and inductor's through TORCHINDUCTOR_DETERMINISTIC=1, which
  `torch._inductor.config` reads when something does load it (`train.compile`).

`configure()` returns what it set; `describe()` renders it for the log. Without `repro.strict`,
only the thread count is fixed. What this does not cover (docs/reproducibility.md): a CPU below the
level (it runs the lower kernels, so other bits), a CPU with other L1/L2 cache sizes (oneDNN sizes
its convolution blocks from them, so an Intel Xeon and an AMD EPYC sum in other orders), another
torch/oneDNN/oneMKL version, GPUs.
"""
from __future__ import annotations

import os
from pathlib import Path

import yaml

# Capability order of each library's names for its instruction-set caps, lowest first.
_ONEDNN = ["SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
           "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_1_512_AMX", "AVX512_CORE_AMX",
           "AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2", "ALL"]
_ATEN = ["default", "avx2", "avx512"]
_MKL = ["SSE4_2", "AVX", "AVX2", "AVX512", "AVX512_E1", "AVX512_E2", "AVX512_E3", "AVX512_E4", "AVX512_E5"]
# numpy 2.x dispatch targets above its x86-64-v2 baseline (unknown names are ignored with a warning).
_NPY_ABOVE_V2 = ["X86_V3", "X86_V4", "AVX512_ICL", "AVX512_SPR"]
_NPY_ABOVE_V3 = ["X86_V4", "AVX512_ICL", "AVX512_SPR"]

LEVELS = {
    # x86-64-v3: every x86-64 CPU since Intel Haswell (2013) and AMD Excavator (2015).
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "MKL_CBWR": "COMPATIBLE", "NPY_DISABLE_CPU_FEATURES": " ".join(_NPY_ABOVE_V3)},
    # x86-64-v2: SSE4.2 (the oldest level numpy 2 and torch wheels run on), about half the speed.
    "sse4.2": {"ONEDNN_MAX_CPU_ISA": "SSE41", "ATEN_CPU_CAPABILITY": "default",
               "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "MKL_CBWR": "COMPATIBLE",
               "NPY_DISABLE_CPU_FEATURES": " ".join(_NPY_ABOVE_V2)},
}
_ORDERS = {"ONEDNN_MAX_CPU_ISA": _ONEDNN, "ATEN_CPU_CAPABILITY": _ATEN, "MKL_ENABLE_INSTRUCTIONS": _MKL}

# Environments that emulate a smaller CPU on a bigger one (tests, `fat check-repro --emulate`).
EMULATE = {
    "native": {},
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "NPY_DISABLE_CPU_FEATURES": " ".join(_NPY_ABOVE_V3), "NUMBA_CPU_NAME": "haswell",
             "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F,-AVX512DQ,-AVX512BW,-AVX512VL,-AVX512CD"},
    "sse4.2": {"ONEDNN_MAX_CPU_ISA": "SSE41", "ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
               "NPY_DISABLE_CPU_FEATURES": " ".join(_NPY_ABOVE_V2), "NUMBA_CPU_NAME": "nehalem",
               "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F,-AVX512DQ,-AVX512BW,-AVX512VL,-AVX512CD,-AVX2,-FMA,-AVX"},
}

def settings(params_path: str | Path = "params.yaml") -> dict:
    """The `repro` section of params.yaml (the schema's `params.Repro`: defaults and checks), as a dict.
    Only this section is read: the rest of the file is checked by `params.load` in the stage."""
    from fat.params import Repro  # numpy-free, so it may load before numpy does

    path = Path(params_path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: params file not found (run from the project root)")
    doc = yaml.safe_load(path.read_text()) or {}
    return Repro.build(doc.get("repro"), "repro").as_dict()


def _capped(name: str, pinned: str, current: str | None) -> str:
    """The lower of the pinned level and one already in the environment."""
    if not current:
        return pinned
    if name == "NPY_DISABLE_CPU_FEATURES":  # a set of disabled features: disable both
        words = current.replace(",", " ").split()
        return " ".join(words + [w for w in pinned.split() if w not in words])
    order = _ORDERS.get(name)
    if order is None:  # MKL_CBWR: the pinned branch
        return pinned
    key = {v.lower(): i for i, v in enumerate(order)}
    have = key.get(current.strip().lower())
    return current if have is not None and have < key[pinned.lower()] else pinned


def environment(cfg: dict, env: dict | None = None) -> dict:
    """The variables `configure` sets for `cfg`, given the current environment `env`."""
    env = os.environ if env is None else env
    threads = str(cfg["threads"])
    out = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    if cfg["strict"]:
        for name, pinned in LEVELS[cfg["isa"]].items():
            out[name] = _capped(name, pinned, env.get(name))
        out["ONEDNN_DEFAULT_FPMATH_MODE"] = "STRICT"
        out["TORCHINDUCTOR_DETERMINISTIC"] = "1"  # inductor's deterministic mode, read when it loads
        out["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    return out


def configure(params_path: str | Path = "params.yaml") -> dict:
    """Apply the `repro` settings to this process; call it before anything imports numpy or torch.
    Returns the settings with the variables set (`env`)."""
    import sys

    cfg = settings(params_path)
    late = [m for m in ("numpy", "torch") if m in sys.modules]
    if late:
        raise RuntimeError(f"fat.repro.configure() must run before {' and '.join(late)} is imported "
                           "(they read their CPU settings once, when they load)")
    env = environment(cfg)
    os.environ.update(env)
    import torch

    torch.set_num_threads(cfg["threads"])
    torch.set_num_interop_threads(1)
    if cfg["strict"]:
        # torch.use_deterministic_algorithms(True) minus its import of torch._inductor (module docstring)
        torch._C._set_deterministic_algorithms(True, warn_only=False)
    return {**cfg, "env": env}


def describe(applied: dict) -> str:
    env = applied["env"]
    if not applied["strict"]:
        return f"repro: {applied['threads']} torch threads (strict mode off)"
    caps = ", ".join(f"{k}={env[k]}" for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_CBWR"))
    return f"repro: strict, {applied['threads']} torch threads, ISA capped at {applied['isa']} ({caps})"
