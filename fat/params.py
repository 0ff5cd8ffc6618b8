"""Reading `params.yaml` and applying presets to it.

Every knob lives in `params.yaml`; stages read it with :func:`load`. Presets (`fat/presets/*.yaml`)
are partial params files merged over the current one by :func:`apply_preset`, preserving comments.
"""
from __future__ import annotations

import copy
import io
from pathlib import Path

import yaml

from fat.io import atomic_path

PRESETS_DIR = Path(__file__).with_name("presets")


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
