"""Reading `params.yaml` and applying presets to it.

Every knob lives in `params.yaml`; stages read it with :func:`load`. Presets (`fat/presets/*.yaml`)
are partial params files merged over the current one by :func:`apply_preset`, preserving comments.
"""
from __future__ import annotations

import copy
import io
import math
from pathlib import Path

import yaml

from fat.errors import DataError
from fat.io import atomic_path

PRESETS_DIR = Path(__file__).with_name("presets")
BAD_AUDIO_POLICIES = ("error", "skip")


def load(path: str | Path = "params.yaml") -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: params file not found (run from the project root)")
    with path.open() as f:
        params = yaml.safe_load(f)
    if not isinstance(params, dict):
        raise ValueError(f"{path}: expected a mapping of sections, got {type(params).__name__}")
    check_folds(params, path)
    return params


def check_folds(params: dict, path: str | Path = "params.yaml") -> None:
    """`cv.folds` exists only because DVC's `foreach` needs a list; it must match `cv.n_folds`."""
    cv = params.get("cv", {})
    n = cv.get("n_folds")
    folds = cv.get("folds")
    if n is None or folds is None:
        return
    if list(folds) != list(range(int(n))):
        raise ValueError(
            f"{path}: cv.folds must be {list(range(int(n)))} to match cv.n_folds={n}, got {folds}"
        )


def check_number(name: str, value, *, low: float | None = None, high: float | None = None,
                 integer: bool = False) -> str | None:
    """The problem with a numeric setting (wrong type, NaN, infinite, out of range), or None."""
    kind = "an integer" if integer else "a finite number"
    bounds = (f" > {low:g}" if low is not None and not integer else f" >= {low:g}" if low is not None else "") + \
             (f" <= {high:g}" if high is not None else "")
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or (isinstance(value, float) and not math.isfinite(value)):
        return f"{name}: expected {kind}{bounds}, got {value!r} ({type(value).__name__})"
    if (low is not None and (value < low if integer else value <= low)) or (high is not None and value > high):
        return f"{name}: expected {kind}{bounds}, got {value!r}"
    return None


def check_data(section, path: str | Path | None = None) -> dict:
    """The `data` section checked: every key `prepare` reads has the right type and range. Raises
    DataError naming the params file and each bad key (NaN, strings where numbers belong, an empty
    source). Returns a copy."""
    where = f"{path}: " if path else ""
    if not isinstance(section, dict):
        raise DataError(f"{where}data: expected a mapping of data settings (source, on_bad_audio, …), got {section!r}")
    problems = []
    source = section.get("source", ...)
    if source is ...:
        problems.append("data.source: missing; expected `synthetic` or the path of a data directory")
    elif not isinstance(source, str) or not source.strip():
        what = "empty" if isinstance(source, str) else f"{source!r} ({type(source).__name__})"
        problems.append(f"data.source: expected `synthetic` or the path of a data directory, got {what}")
    policy = section.get("on_bad_audio", "error")
    if policy not in BAD_AUDIO_POLICIES or not isinstance(policy, str):
        problems.append(f"data.on_bad_audio: {policy!r} is not one of {list(BAD_AUDIO_POLICIES)}")
    corr = section.get("corrections")
    if corr is not None and not isinstance(corr, str):
        problems.append(f"data.corrections: expected null, the name of a shipped corrections file or a path, "
                        f"got {corr!r} ({type(corr).__name__})")
    for problem in (check_number("data.max_seconds", section.get("max_seconds", 60.0), low=0),
                    check_number("data.min_peak_dbfs", section.get("min_peak_dbfs", -80.0), high=0),
                    check_number("data.n_jobs", section.get("n_jobs", 0), low=0, integer=True)):
        if problem:
            problems.append(problem)
    if problems:
        raise DataError(*(where + p for p in problems))
    return dict(section)


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
    """Merge preset `name` into `params_path` in place, keeping its comments and key order."""
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
    check_folds(merged, params_path)
    with atomic_path(params_path) as tmp:
        tmp.write_text(buf.getvalue())
    return merged
