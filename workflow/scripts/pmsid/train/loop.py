"""The one training loop every neural model uses (docs/METHOD.md section 3, "Training recipe").

AdamW; learning rate warmed up linearly for ``warmup_steps`` and then decayed
(cosine or linear) to zero at the last step of ``max_epochs``; gradient
clipping; bf16 autocast on CUDA only; the non-finite-loss guard on every step
; validation NDCG@10 after every epoch, early stopping with
``patience`` and the best state kept.

After every epoch a checkpoint (model, optimizer, scheduler, epoch, step,
best metric and state, patience counter, log rows, config hash, RNG states)
is written atomically to ``checkpoint_path``, which the caller places outside
the job's declared outputs (Snakemake deletes those when a job fails). A run
that finds a checkpoint with the same config hash resumes after its last
finished epoch (a kill mid-epoch loses at most that epoch). The batch order
of epoch ``e`` depends only on ``(seed, e)`` and the RNG states are restored,
so on a deterministic CPU run a resumed run ends exactly where an
uninterrupted one does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from pmsid.runtime import atomic_save, rng_state, set_rng_state
from pmsid.train.utils import check_loss

log = logging.getLogger(__name__)


@dataclass
class LoopConfig:
    """Optimisation hyperparameters shared by every model."""

    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 256
    max_epochs: int = 10
    # Rows drawn (without replacement, a new draw each epoch) per epoch; None = all.
    max_samples_per_epoch: int | None = None
    patience: int = 3  # epochs without a validation NDCG@10 gain before stopping
    warmup_steps: int = 100
    schedule: str = "cosine"  # decay after warmup: "cosine" or "linear" (to 0 at the last step)
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    bf16: bool = True  # bf16 autocast; used on CUDA only
    progress: bool = True  # tqdm bar per epoch

    @classmethod
    def from_cfg(cls, cfg: dict) -> LoopConfig:
        """The loop's keys of a model's ``cfg`` (other keys are the model's business)."""
        names = {f.name for f in fields(cls)}
        out = cls(**{k: v for k, v in cfg.items() if k in names})
        if out.schedule not in ("cosine", "linear"):
            raise ValueError(f"schedule must be 'cosine' or 'linear', got {out.schedule!r}")
        if out.max_samples_per_epoch is not None and out.max_samples_per_epoch < 1:
            raise ValueError(f"max_samples_per_epoch must be null or >= 1, got {out.max_samples_per_epoch}")
        return out

    def epoch_rows(self, n: int) -> int:
        """Rows one epoch trains on, of ``n``."""
        return n if self.max_samples_per_epoch is None else min(n, self.max_samples_per_epoch)

    def steps_per_epoch(self, n: int) -> int:
        """Optimizer steps of one epoch over ``n`` rows."""
        return math.ceil(self.epoch_rows(n) / self.batch_size)


@dataclass
class TrainResult:
    best_state: dict  # state dict of the epoch with the best validation NDCG@10
    best_metric: float
    best_epoch: int
    log: pd.DataFrame  # one row per epoch, contract TRAIN_LOG
    resumed_from: int | None  # last finished epoch found in the checkpoint, or None
    # The budget and how it was used: max_epochs, patience, max_samples_per_epoch,
    # epochs_run, best_epoch, stopped_early (patience ran out before max_epochs).
    # Written as the train log's metadata, so the report can state it per run.
    budget: dict = field(default_factory=dict)


def config_hash(obj: object) -> str:
    """SHA-256 of a JSON-able description of a run (config, seed, data fingerprint)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """Multiplier of the base learning rate after ``step`` optimizer steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def train_loop(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, tuple[torch.Tensor, ...]], torch.Tensor],
    train_data: tuple[torch.Tensor, ...],
    validate: Callable[[nn.Module], float],
    cfg: LoopConfig,
    checkpoint_path: str | os.PathLike,
    run_hash: str,
    seed: int | None,
    name: str,
) -> TrainResult:
    """Train ``model`` on ``train_data`` (tensors sharing their first dimension).

    ``loss_fn(model, batch)`` returns the mean loss of a batch (a tuple of
    rows of ``train_data``, on the model's device); ``validate(model)`` returns
    validation NDCG@10 (called in eval mode, under no_grad). ``run_hash``
    identifies the run (see :func:`config_hash`); a checkpoint with another
    hash is ignored and overwritten. ``name`` appears in logs and errors.
    """
    device = next(model.parameters()).device
    # Subnormal floats (tiny Adam moments, underflowing softmax tails) run
    # ~10x slower on x86 CPUs: a TIGER step on ml-100k took 4.6 s with them and
    # 0.5 s flushed to zero. Process-wide; no effect on GPU kernels.
    torch.set_flush_denormal(True)
    total_steps = cfg.max_epochs * cfg.steps_per_epoch(len(train_data[0]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.warmup_steps, total_steps, cfg.schedule)
    )
    autocast = device.type == "cuda" and cfg.bf16

    state = {"epoch": 0, "step": 0, "best_metric": -math.inf, "best_epoch": 0, "best_state": None}
    state.update({"bad_epochs": 0, "rows": [], "done": False})
    if seed is None:  # still fix the batch order of this run, so it can resume
        seed = int(torch.randint(0, 2**31 - 1, (1,)))
    state["shuffle_seed"] = seed
    resumed_from = _resume(checkpoint_path, run_hash, name, model, optimizer, scheduler, state)

    data = tuple(t.to(device) for t in train_data)
    while not state["done"] and state["epoch"] < cfg.max_epochs:
        epoch = state["epoch"] + 1
        started = time.perf_counter()
        mean_loss = _train_epoch(model, loss_fn, data, optimizer, scheduler, cfg, state, epoch, autocast, name)
        model.eval()
        with torch.no_grad():
            metric = float(validate(model))
        model.train()
        # The first epoch always counts as best, so a NaN metric cannot leave no state.
        improved = state["best_state"] is None or metric > state["best_metric"]
        if improved:
            state["best_metric"], state["best_epoch"] = metric, epoch
            state["best_state"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            state["bad_epochs"] = 0
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch
        state["rows"].append({"epoch": epoch, "step": state["step"], "loss": mean_loss, "valid_ndcg10": metric})
        best = " (best)" if improved else ""
        log.info(
            f"{name} epoch {epoch}/{cfg.max_epochs} step {state['step']}: train loss {mean_loss:.4f}, "
            f"valid NDCG@10 {metric:.4f}{best}, {time.perf_counter() - started:.1f} s"
        )
        if state["bad_epochs"] >= cfg.patience:
            log.info("%s: early stop after epoch %d; best epoch %d", name, epoch, state["best_epoch"])
            state["done"] = True
        _save(checkpoint_path, run_hash, model, optimizer, scheduler, state)

    if state["best_state"] is None:
        raise ValueError(f"{name}: no epoch was trained; max_epochs is {cfg.max_epochs}, it must be >= 1")
    frame = pd.DataFrame(state["rows"], columns=["epoch", "step", "loss", "valid_ndcg10"])
    frame = frame.astype({"epoch": "int32", "step": "int64", "loss": "float64", "valid_ndcg10": "float64"})
    budget = {
        "max_epochs": cfg.max_epochs,
        "patience": cfg.patience,
        "max_samples_per_epoch": cfg.max_samples_per_epoch,
        "epochs_run": state["epoch"],
        "best_epoch": state["best_epoch"],
        "stopped_early": bool(state["done"]),
    }
    return TrainResult(state["best_state"], state["best_metric"], state["best_epoch"], frame, resumed_from, budget)


def _train_epoch(model, loss_fn, data, optimizer, scheduler, cfg, state, epoch, autocast, name) -> float:
    """One pass over ``data`` (its first ``cfg.max_samples_per_epoch`` rows) in the
    order fixed by ``(shuffle_seed, epoch)``; returns the mean loss."""
    model.train()
    device = data[0].device
    # A generator of its own, seeded per epoch: the order never depends on how
    # many random numbers earlier epochs drew, which is what makes resuming exact.
    gen = torch.Generator().manual_seed(state["shuffle_seed"] * 100_003 + epoch)
    order = torch.randperm(len(data[0]), generator=gen)[: cfg.epoch_rows(len(data[0]))].to(device)
    total, count = 0.0, 0
    bar = tqdm(
        range(0, len(order), cfg.batch_size),
        desc=f"{name} epoch {epoch}",
        disable=not cfg.progress,
        leave=False,
        mininterval=2.0,
    )
    for start in bar:
        idx = order[start : start + cfg.batch_size]
        batch = tuple(t[idx] for t in data)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(model, batch)
        state["step"] += 1
        check_loss(loss, state["step"], name)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        total += loss.item() * len(idx)
        count += len(idx)
        bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
    bar.close()
    return total / count


def _save(path, run_hash, model, optimizer, scheduler, state) -> None:
    atomic_save(
        {
            "config_hash": run_hash,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "state": state,
            "rng": rng_state(),
        },
        path,
    )


def _resume(path, run_hash, name, model, optimizer, scheduler, state) -> int | None:
    """Load a matching checkpoint into the given objects; returns its last epoch, or None."""
    path = Path(path)
    if not path.exists():
        return None
    # Our own file, holding numpy RNG state and Python objects: weights_only
    # loading would refuse it.
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if ckpt.get("config_hash") != run_hash:
        log.warning("%s: checkpoint %s belongs to another configuration; starting afresh", name, path)
        return None
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    state.update(ckpt["state"])
    set_rng_state(ckpt["rng"])
    log.info("%s: resuming from epoch %d (step %d) of %s", name, state["epoch"], state["step"], path)
    return state["epoch"]
