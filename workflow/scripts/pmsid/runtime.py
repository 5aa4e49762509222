"""Helpers every layer uses: seeds, devices, atomic saves, JSON.

The lowest layer of the package: it imports nothing of ``pmsid``, so data,
feature extraction, models, training and methods can all use it without
depending on each other.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np


def seed_everything(seed: int | None, deterministic: bool = False) -> None:
    """Seed random, numpy and torch. ``seed=None`` leaves them unseeded.

    ``deterministic`` asks torch for deterministic kernels (slower on GPU).
    """
    import torch

    if seed is not None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def resolve_device(name: str = "auto"):
    """``"auto"`` picks CUDA when available, else CPU; otherwise ``torch.device(name)``."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def rng_state() -> dict:
    """The state of every random generator a training run draws from."""
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the generators from :func:`rng_state`'s dict."""
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _temporary(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_save(obj: object, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file, then rename: the file is never partial."""
    import torch

    path = Path(path)
    tmp = _temporary(path)
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_json(obj: dict, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented JSON, atomically (temporary file, then rename)."""
    path = Path(path)
    tmp = _temporary(path)
    tmp.write_text(json.dumps(obj, indent=2, default=json_default) + "\n")
    os.replace(tmp, path)


def json_default(value):
    """JSON for numpy scalars (``json.dumps(default=...)``)."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value)}")
