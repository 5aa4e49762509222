"""The one training loop every neural model uses (docs/METHOD.md section 3, "Training recipe").

AdamW; learning rate warmed up linearly for ``warmup_steps`` and then decayed
(cosine or linear) to zero at the last step of ``max_epochs``; gradient
clipping; bf16 autocast on CUDA only; the non-finite-loss guard on every
step; validation NDCG@10 after every epoch, early stopping with
``patience`` and the best state kept.

Checkpoints. After every epoch a checkpoint (model, optimizer, scheduler,
epoch, step, best metric and state, patience counter, log rows, config hash,
RNG states) is written atomically to ``checkpoint_path``, which the caller
places outside the job's declared outputs (Snakemake deletes those when a job
fails). A run that finds a checkpoint with the same config hash resumes from
it (and logs where from). The batch order of epoch ``e`` depends only on
``(seed, e)`` and the RNG states are restored, so on a deterministic CPU run
a resumed run ends exactly where an uninterrupted one does.

Preemption. While the loop runs, SIGTERM (what SLURM sends before it kills or
requeues a job) and SIGINT set a flag (:mod:`pmsid.train.preemption`). At the
next optimizer-step boundary the loop writes the checkpoint with its position
inside the epoch (batches done, the partial loss sum and row count), logs
"SIGTERM at epoch e step s (batch b of the epoch): checkpoint written to ...,
exiting to be requeued" and raises :class:`~pmsid.train.preemption.Preempted`
(a ``SystemExit`` with code 143), so the job fails and its retry resumes: it
skips the batches of that epoch's order already done and continues, ending
with the same state and log, bit for bit on a deterministic CPU run, as a run
never interrupted. A kill without a signal first (SIGKILL) loses at most the
epoch under way. The previous signal handlers are restored when the loop
returns or raises; outside the main thread no handler is installed.

Several processes (DDP). Under torchrun with ``WORLD_SIZE`` > 1
(:mod:`pmsid.train.ddp`) every rank runs this loop on the same data and the
model is wrapped in ``torch.nn.parallel.DistributedDataParallel`` (DDP's
forward computes ``loss_fn(model, batch)``, so its gradients are all-reduced,
averaged over the ranks). ``batch_size`` stays the global batch: every rank
computes the same epoch order and takes the rows ``rank::world`` of each
batch, each rank's loss weighted by its share of the batch's rows, so the
steps, the schedule and (up to float reduction order) the updates are those of
one process with the same ``batch_size``; a rank left without a row of a short
last batch computes a zero-weighted loss on one row. That holds for a loss
that is a mean over rows; a loss over the batch as a whole (in-batch
negatives of a contrastive loss, SASRec's mean over the target positions of
its windows) sees the rank's rows only, close to the one-process loss but not
equal. The loss log and the non-finite guard use the loss of the whole batch
(one all-reduce per step, which also carries the stop flag, so every rank
stops at the same step). Each rank reseeds torch per epoch and position, so
dropout masks differ across ranks. Validation runs on rank 0 only; the metric
is broadcast, so every rank takes the same best-state and early-stopping
decisions, and only rank 0 writes the checkpoint, the others waiting for it.
Every rank reads the checkpoint when it resumes; the run's hash does not
depend on the number of processes, so a checkpoint of one process resumes on
several and back.
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
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from pmsid.runtime import atomic_save, rng_state, set_rng_state
from pmsid.train import ddp
from pmsid.train.preemption import Preempted, StopSignals
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
    validation NDCG@10 (called in eval mode, under no_grad; on rank 0 only
    under DDP). ``run_hash`` identifies the run (see :func:`config_hash`); a
    checkpoint with another hash is ignored and overwritten. ``name`` appears
    in logs and errors. Raises :class:`~pmsid.train.preemption.Preempted`
    after a SIGTERM or SIGINT, once the checkpoint is written.
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
    # in_epoch: the position inside the epoch under way when a signal stopped the run, else None.
    state.update({"bad_epochs": 0, "rows": [], "done": False, "in_epoch": None})
    if seed is None:  # still fix the batch order of this run, so it can resume
        seed = int(torch.randint(0, 2**31 - 1, (1,)))
    state["shuffle_seed"] = seed
    group = ddp.context(device)
    saver = _Saver(checkpoint_path, run_hash, model, optimizer, scheduler, state, group, device, name)
    with StopSignals() as stop:
        resumed_from = _resume(checkpoint_path, run_hash, name, model, optimizer, scheduler, state)
        data = tuple(t.to(device) for t in train_data)
        step_loss = _step_loss(model, loss_fn, group, device)
        while not state["done"] and state["epoch"] < cfg.max_epochs:
            epoch = state["epoch"] + 1
            started = time.perf_counter()
            mean_loss, stopped = _train_epoch(
                model, step_loss, data, optimizer, scheduler, cfg, state, epoch, autocast, name, group, stop
            )
            if stopped:
                part = state["in_epoch"]
                saver.preempt(stop, f"epoch {epoch} step {state['step']} (batch {part['batches']} of the epoch)")
            model.eval()
            metric = math.nan
            if group.is_main:
                with torch.no_grad():
                    metric = float(validate(model))
            if group.distributed:  # the others wait here for rank 0's validation
                metric = _broadcast(metric, device)
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
            saver.save()
            # A signal during validation: the epoch's checkpoint is written, stop before the next one.
            more = not state["done"] and epoch < cfg.max_epochs
            if more and _agree(stop.requested, group, device):
                saver.preempt(stop, f"epoch {epoch} step {state['step']} (end of the epoch)", save=False)

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


def _train_epoch(model, step_loss, data, optimizer, scheduler, cfg, state, epoch, autocast, name, group, stop):
    """One pass over ``data`` (its first ``cfg.max_samples_per_epoch`` rows) in the
    order fixed by ``(shuffle_seed, epoch)``; returns ``(mean loss, stopped)``.

    Continues a part-done epoch from ``state["in_epoch"]``. When ``stop`` is
    requested (on any rank) it returns after the step under way with
    ``stopped`` True and the position in ``state["in_epoch"]``.
    """
    model.train()
    device = data[0].device
    # A generator of its own, seeded per epoch: the order never depends on how
    # many random numbers earlier epochs drew, which is what makes resuming exact.
    gen = torch.Generator().manual_seed(state["shuffle_seed"] * 100_003 + epoch)
    order = torch.randperm(len(data[0]), generator=gen)[: cfg.epoch_rows(len(data[0]))].to(device)
    starts = range(0, len(order), cfg.batch_size)
    done, total, count = 0, 0.0, 0
    part = state["in_epoch"]
    if part is not None and part["epoch"] == epoch:
        done, total, count = part["batches"], part["total"], part["count"]
    if group.distributed:
        # Every rank starts from the same seed: dropout masks would repeat across ranks.
        torch.manual_seed(_rank_seed(state["shuffle_seed"], epoch, done, group.rank))
    bar = tqdm(
        starts[done:],
        initial=done,
        total=len(starts),
        desc=f"{name} epoch {epoch}",
        disable=not cfg.progress or not group.is_main,
        leave=False,
        mininterval=2.0,
    )
    for start in bar:
        idx = order[start : start + cfg.batch_size]
        rows, n_rows = _shard(idx, group)
        batch = tuple(t[rows] for t in data)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = step_loss(batch)
        state["step"] += 1
        if group.distributed:
            # The whole batch's loss sum, and whether any rank got a signal.
            batch_sum, votes = _all_reduce([loss.item() * n_rows, float(stop.requested)], device)
            check_loss(torch.tensor(batch_sum / len(idx)), state["step"], name)
            stopping = votes > 0
            # DDP averages the ranks' gradients: weight each rank by its share of
            # the rows, so the update is that of the batch's mean loss (1.0 when
            # the shards are equal).
            loss = loss * (n_rows * group.world / len(idx))
        else:
            check_loss(loss, state["step"], name)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        if group.distributed:
            total += batch_sum
        else:
            total += loss.item() * len(idx)
            stopping = stop.requested
        count += len(idx)
        done += 1
        bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
        if stopping:
            state["in_epoch"] = {"epoch": epoch, "batches": done, "total": total, "count": count}
            bar.close()
            return total / count, True
    bar.close()
    state["in_epoch"] = None
    return total / count, False


class _LossModule(nn.Module):
    """``loss_fn(model, batch)`` as a module's forward: DDP all-reduces the
    gradients of what its wrapped module's forward computes, and the models'
    losses are methods other than ``forward``."""

    def __init__(self, model: nn.Module, loss_fn: Callable):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, *batch: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.model, batch)


def _step_loss(model, loss_fn, group, device) -> Callable[[tuple[torch.Tensor, ...]], torch.Tensor]:
    """The function of a batch that computes the training loss: plain, or through DDP."""
    if not group.distributed:
        return lambda batch: loss_fn(model, batch)
    wrapped = DistributedDataParallel(
        _LossModule(model, loss_fn),
        device_ids=[device.index] if device.type == "cuda" else None,
        # Some parameters sit out some steps (MCRL's heads on alternate steps,
        # a row-less table token): DDP must not wait for their gradients.
        find_unused_parameters=True,
    )
    return lambda batch: wrapped(*batch)


def _shard(idx: torch.Tensor, group: ddp.Context) -> tuple[torch.Tensor, int]:
    """This rank's rows of one batch ``idx`` and how many of them count.

    One process: the whole batch. Several: rows ``rank::world``; a rank left
    without one (a last batch shorter than the world) gets the batch's first
    row with count 0, so it still runs the forward and backward DDP needs.
    """
    if not group.distributed:
        return idx, len(idx)
    rows = idx[group.rank :: group.world]
    if len(rows) == 0:
        return idx[:1], 0
    return rows, len(rows)


def _rank_seed(seed: int, epoch: int, batches_done: int, rank: int) -> int:
    """The torch seed of one rank from a position in the run (DDP only)."""
    key = f"{seed}/{epoch}/{batches_done}/{rank}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1


def _all_reduce(values: list[float], device: torch.device) -> list[float]:
    """The sums of ``values`` over the ranks (also a barrier)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def _broadcast(value: float, device: torch.device) -> float:
    """Rank 0's ``value`` on every rank."""
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.broadcast(tensor, src=0)
    return float(tensor.item())


def _agree(flag: bool, group: ddp.Context, device: torch.device) -> bool:
    """Whether ``flag`` holds on any rank."""
    if not group.distributed:
        return flag
    return _all_reduce([float(flag)], device)[0] > 0


@dataclass
class _Saver:
    """Writes the checkpoint (rank 0 only; the others wait) and stops a signalled run."""

    path: str | os.PathLike
    run_hash: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    state: dict
    group: ddp.Context
    device: torch.device
    name: str

    def save(self) -> None:
        if self.group.is_main:
            _save(self.path, self.run_hash, self.model, self.optimizer, self.scheduler, self.state)

    def preempt(self, stop: StopSignals, where: str, save: bool = True) -> None:
        """Write the checkpoint (unless written), log why and raise :class:`Preempted`."""
        if save:
            self.save()
        if self.group.distributed:
            _all_reduce([0.0], self.device)  # every rank leaves once the checkpoint is written
        signal_name = stop.received.name if stop.requested else "a signal to another rank"
        message = f"{self.name}: {signal_name} at {where}: checkpoint written to {self.path}, exiting to be requeued"
        log.warning(message)
        raise Preempted(message)


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
    part = state["in_epoch"]
    inside = f", inside epoch {part['epoch']} after its batch {part['batches']}" if part is not None else ""
    log.info("%s: resuming from epoch %d (step %d)%s of %s", name, state["epoch"], state["step"], inside, path)
    return state["epoch"]
