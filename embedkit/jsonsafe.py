"""The one JSON cleaner: every record, summary and study file goes through `jsonable` so that what
is written is standard JSON (no NaN, no numpy types) and reads back the same everywhere."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


def jsonable(x):
    """numpy scalars/arrays to Python, NaN/inf to None, tuples and sets (sorted) to lists, dict keys
    to str, paths to str."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in (sorted(x) if isinstance(x, (set, frozenset)) else x)]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Path):
        return str(x)
    return x


def write_json(path, obj, indent: int | None = 2) -> Path:
    """`obj` through `jsonable`, written as standard JSON (allow_nan=False guards the promise)."""
    path = Path(path)
    path.write_text(json.dumps(jsonable(obj), indent=indent, allow_nan=False) + "\n")
    return path
