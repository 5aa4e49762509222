"""Training utilities shared by every neural model: seeds, devices,
atomic checkpoints, and the non-finite-loss guard (STYLE.md 12, 13;
RELIABILITY.md 10, 15)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch


def seed_everything(seed: int | None, deterministic: bool = False) -> None:
    """Seed random, numpy and torch. ``seed=None`` leaves them unseeded.

    ``deterministic`` asks torch for deterministic kernels (slower on GPU).
    """
    if seed is not None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available, else CPU; otherwise ``torch.device(name)``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj: object, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file, then rename: the file is never partial."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class NonFiniteLossError(RuntimeError):
    """Raised when a training loss becomes NaN or inf."""


def check_loss(loss: torch.Tensor, step: int, model_name: str) -> None:
    """Stop training at once when ``loss`` is not finite, naming the step."""
    if not torch.isfinite(loss).all():
        raise NonFiniteLossError(
            f"{model_name}: non-finite loss ({loss.item()}) at step {step}; training stopped. "
            "Lower the learning rate or check the input features for NaN/inf."
        )
