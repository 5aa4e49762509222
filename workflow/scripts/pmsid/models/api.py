"""Entry points the workflow calls: train and evaluate TIGER and SASRec.

TIGER trains on every prefix of every training sequence
(``pmsid.data.sequences.training_samples``); SASRec by default predicts every
training target in causal windows (``training_windows``, ``train_mode``
below), the same targets at a fraction of the cost. Both select the epoch with
the best validation NDCG@10 and rank the whole catalogue at evaluation
(THESIS.md section 2): TIGER by trie-constrained beam search (returns ``beam_size``
items), SASRec by scoring every item. With ``exclude_history`` the user's
earlier items (all of them, not only the last ``history_cap``) are removed from
the ranking: masked in the trie for TIGER, set to -inf for SASRec.

Personalized IDs (PMAT): TIGER also takes ``codes (P, n_items, D)``, one ID
table per user-preference prototype, and ``user_tables`` giving the table each
user decodes under. A user's history and targets are tokenized in the user's
table, in training and in ranking, and beam search maps the IDs it generates
back to items through that table (``pmsid.models.beam.beam_search_tables``).
Evaluation may place a user under another table than training did (PMAT's
drift updates), per split. ``codes (n_items, D)`` is the single table, P = 1.

Hyperparameters come as a plain ``cfg`` dict; omitted keys take the defaults
below, unknown keys fail naming the key. Measured on ml-100k-sized data (943
users, 1,349 items, 96,458 training prefixes, 4-token IDs) on a 2-core CPU,
one epoch takes about 2.7 s for SASRec with ``train_mode="sequence"`` (5,262
windows) and 34 s with ``"prefix"``, 215 s for TIGER with
``encoder_tokens="flat"`` and 51 s with ``"item"``; on an H100 about 5 s
(SASRec, prefix mode), 16 s and 11 s. Beam search at beam 20 costs about
1.4 ms per user on that CPU.

Training resumes from ``checkpoint_path`` when it holds a checkpoint of the
same run (same cfg apart from ``progress``, seed, data and model code); a
finished run's checkpoint makes a rerun only reload its best state.

TIGER cfg (``TIGER_DEFAULTS``):
    d_model 64, n_heads 4, n_encoder_layers 2, n_decoder_layers 2, d_ff 256,
    dropout 0.1: the Transformer (TIGER itself uses 4 + 4 layers, d_model 128).
    encoder_tokens "flat": the encoder reads history_cap x D ID tokens, as
        TIGER does; "item" sums each history item's D token embeddings into
        one encoder token (about 4x faster on CPU at D = 4; see
        ``TigerGenerator.encode``).
    beam_size 20: beam width of the validation ranking (>= 10 for NDCG@10).
    eval_batch_size 256: users per beam-search batch.
SASRec cfg (``SASREC_DEFAULTS``):
    d_model 64, n_heads 2, n_layers 2, d_ff 256, dropout 0.2.
    train_mode "sequence": one row per causal window of ``history_cap``
        positions, cross-entropy at every target position
        (``SASRec.sequence_loss``, the SASRec paper's recipe); "prefix": one
        row per training prefix, cross-entropy at the last position only
        (``SASRec.loss``). Same targets; a batch holds ``batch_size`` rows
        either way, so "sequence" takes about ``history_cap`` times fewer
        steps per epoch.
    eval_batch_size 1024: users per full-catalogue scoring batch.
Both:
    history_cap 20: most recent items a model sees (the protocol's cap).
    exclude_history False: the protocol switch, applied to validation ranking
        (set it as in evaluation so model selection sees the same protocol).
    ks [1, 5, 10, 20]: the evaluation cut-offs; accepted for checking that
        TIGER's beam_size >= max(ks).
    lr 1e-3, weight_decay (TIGER 0.01, SASRec 0.0), batch_size 256,
    max_epochs (TIGER 12, SASRec 40), patience (TIGER 3, SASRec 5),
    warmup_steps 100, schedule "cosine" | "linear", grad_clip 1.0,
    bf16 True (CUDA only), progress True (tqdm bars): see
    ``pmsid.train.loop.LoopConfig``.
    deterministic False: ask torch for deterministic kernels.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pmsid.data import contracts, sequences
from pmsid.data.sequences import Sequences, eval_samples, pad_left, training_samples, training_windows
from pmsid.evaluate.metrics import mean_metrics, rank_of_target
from pmsid.models import beam, generator, sasrec
from pmsid.models.beam import Trie, beam_search_tables
from pmsid.models.generator import TigerGenerator
from pmsid.models.sasrec import SASRec
from pmsid.train import loop
from pmsid.train.loop import LoopConfig, config_hash, train_loop
from pmsid.train.utils import atomic_save, resolve_device, seed_everything

log = logging.getLogger(__name__)

SPLITS = ("valid", "test")

_COMMON_DEFAULTS = {
    "history_cap": 20,
    "exclude_history": False,
    "ks": [1, 5, 10, 20],
    "lr": 1e-3,
    "batch_size": 256,
    "warmup_steps": 100,
    "schedule": "cosine",
    "grad_clip": 1.0,
    "bf16": True,
    "progress": True,
    "deterministic": False,
}
TIGER_DEFAULTS = {
    **_COMMON_DEFAULTS,
    "d_model": 64,
    "n_heads": 4,
    "n_encoder_layers": 2,
    "n_decoder_layers": 2,
    "d_ff": 256,
    "dropout": 0.1,
    "encoder_tokens": "flat",
    "weight_decay": 0.01,
    "max_epochs": 12,
    "patience": 3,
    "beam_size": 20,
    "eval_batch_size": 256,
}
SASREC_DEFAULTS = {
    **_COMMON_DEFAULTS,
    "d_model": 64,
    "n_heads": 2,
    "n_layers": 2,
    "d_ff": 256,
    "dropout": 0.2,
    "train_mode": "sequence",
    "weight_decay": 0.0,
    "max_epochs": 40,
    "patience": 5,
    "eval_batch_size": 1024,
}


def with_defaults(cfg: dict | None, defaults: dict, model: str) -> dict:
    """``cfg`` over ``defaults``; an unknown key fails, naming it and the known ones."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(defaults))
    if unknown:
        raise ValueError(f"{model} cfg: unknown key(s) {unknown}; known keys are {sorted(defaults)}")
    return {**defaults, **cfg}


def _check_choice(cfg: dict, key: str, choices: tuple[str, ...], model: str) -> None:
    """Fail naming ``key`` when ``cfg[key]`` is not one of ``choices``."""
    if cfg[key] not in choices:
        raise ValueError(f"{model} cfg: {key} must be one of {list(choices)}, got {cfg[key]!r}")


# ---------------------------------------------------------------------- training
def train_tiger(
    seqs: Sequences,
    codes: np.ndarray,
    cfg: dict,
    model_path: str | os.PathLike,
    log_path: str | os.PathLike,
    checkpoint_path: str | os.PathLike,
    seed: int | None,
    device: str = "auto",
    user_tables: np.ndarray | None = None,
) -> pd.DataFrame:
    """Train the TIGER-style generator on semantic IDs ``codes (n_items, D)`` or ``(P, n_items, D)``.

    ``user_tables (U,)``: the ID table (in ``[0, P)``) each user's training
    prefixes and validation ranking use; required when ``P > 1``, all zeros
    when omitted with one table. Saves ``{"kind", "state_dict", "cfg",
    "codes" (P, n_items, D), "user_tables" (U,), "n_items", "best_epoch",
    "best_valid_ndcg10"}`` to ``model_path`` and the per-epoch log (contract
    TRAIN_LOG) to ``log_path``; returns the log. A non-finite loss raises
    ``NonFiniteLossError`` and no model file is left.
    """
    cfg = with_defaults(cfg, TIGER_DEFAULTS, "tiger")
    codes = _check_codes(codes, seqs.n_items)
    user_tables = _check_user_tables(user_tables, seqs.n_users, len(codes))
    if cfg["beam_size"] < max(cfg["ks"]):
        raise ValueError(f"tiger cfg: beam_size {cfg['beam_size']} < max(ks) {max(cfg['ks'])}; raise beam_size")
    dev = _start(model_path, seed, cfg, device)
    model = _build_tiger(codes, cfg).to(dev)
    tries = _build_tries(codes, model.level_sizes, dev)
    log.info("tiger: users per ID table %s", np.bincount(user_tables, minlength=len(codes)).tolist())
    _, hist, targets = eval_samples(seqs, "valid", cfg["history_cap"])
    exclude = history_items(seqs, "valid") if cfg["exclude_history"] else None

    def validate(m: TigerGenerator) -> float:
        result = beam_search_tables(m, tries, hist, user_tables, cfg["beam_size"], exclude, cfg["eval_batch_size"])
        return mean_metrics(ranks_in_list(result.items, targets), [10])["NDCG@10"]

    run_key = _run_key("tiger", cfg, seed, seqs, codes, user_tables)
    result = _fit(model, seqs, cfg, validate, checkpoint_path, run_key, seed, "tiger", user_tables=user_tables)
    payload = {
        "kind": "tiger",
        "cfg": cfg,
        "codes": torch.from_numpy(codes),
        "user_tables": torch.from_numpy(user_tables),
        "n_items": seqs.n_items,
    }
    return _finish(model, result, payload, model_path, log_path)


def train_sasrec(
    seqs: Sequences,
    cfg: dict,
    model_path: str | os.PathLike,
    log_path: str | os.PathLike,
    checkpoint_path: str | os.PathLike,
    seed: int | None,
    device: str = "auto",
) -> pd.DataFrame:
    """Train SASRec with cross-entropy over the whole catalogue, per ``cfg["train_mode"]``.

    In "sequence" mode the train log's ``loss`` is the mean of the batch
    losses weighted by windows per batch (the loop weights by rows), close to
    but not exactly the mean over target positions. Saves ``{"kind", "state_dict", "cfg", "n_items", "best_epoch",
    "best_valid_ndcg10"}`` to ``model_path`` and the log to ``log_path``;
    returns the log. A non-finite loss raises and leaves no model file.
    """
    cfg = with_defaults(cfg, SASREC_DEFAULTS, "sasrec")
    _check_choice(cfg, "train_mode", ("sequence", "prefix"), "sasrec")
    dev = _start(model_path, seed, cfg, device)
    model = _build_sasrec(seqs.n_items, cfg).to(dev)
    _, hist, targets = eval_samples(seqs, "valid", cfg["history_cap"])
    exclude = history_items(seqs, "valid") if cfg["exclude_history"] else None

    def validate(m: SASRec) -> float:
        ranks = _sasrec_ranks(m, hist, targets, exclude, cfg["eval_batch_size"])
        return mean_metrics(ranks, [10])["NDCG@10"]

    run_key = _run_key("sasrec", cfg, seed, seqs)
    result = _fit(model, seqs, cfg, validate, checkpoint_path, run_key, seed, "sasrec", cfg["train_mode"])
    payload = {"kind": "sasrec", "cfg": cfg, "n_items": seqs.n_items}
    return _finish(model, result, payload, model_path, log_path)


def _start(model_path, seed, cfg, device) -> torch.device:
    """Common set-up: no stale model output, seeds, device."""
    # A failed job must leave no model: remove any earlier one before training.
    Path(model_path).unlink(missing_ok=True)
    seed_everything(seed, deterministic=cfg["deterministic"])
    dev = resolve_device(device)
    log.info("device %s, torch threads %d", dev, torch.get_num_threads())
    return dev


def _fit(model, seqs, cfg, validate, checkpoint_path, run_key, seed, name, mode="prefix", user_tables=None):
    """Run the shared loop on the training targets of ``seqs``.

    ``mode`` "prefix": one row per training prefix, ``model.loss(history,
    target)``, or ``model.loss(history, target, table)`` with each row's user's
    ID table when ``user_tables (U,)`` is given (TIGER); "sequence": one row
    per causal window (``pmsid.data.sequences.training_windows``),
    ``model.sequence_loss(inputs, targets)``. The loop shuffles and batches
    rows, so either way the batch order depends only on ``(seed, epoch)`` and
    resuming stays exact.
    """
    n_params = sum(p.numel() for p in model.parameters())
    if mode == "sequence":
        _, inputs, targets = training_windows(seqs, cfg["history_cap"])
        n_targets = int((targets >= 0).sum())
        log.info("%s: %d training windows holding %d targets, %d parameters", name, len(targets), n_targets, n_params)
        loss_fn = _window_loss
    else:
        users, inputs, targets = training_samples(seqs, cfg["history_cap"])
        log.info("%s: %d training samples, %d parameters", name, len(targets), n_params)
        loss_fn = _prefix_loss
    data = (torch.from_numpy(inputs), torch.from_numpy(targets))
    if user_tables is not None:
        if mode != "prefix":
            raise ValueError(f"user_tables needs mode 'prefix', got {mode!r}")
        data += (torch.from_numpy(user_tables[users]),)  # (S,) table of each row's user
    return train_loop(
        model,
        loss_fn,
        data,
        validate,
        LoopConfig.from_cfg(cfg),
        checkpoint_path,
        config_hash(run_key),
        seed,
        name,
    )


def _prefix_loss(model, batch):
    return model.loss(*batch)


def _window_loss(model, batch):
    return model.sequence_loss(*batch)


def _finish(model, result, payload, model_path, log_path) -> pd.DataFrame:
    """Save the best state and the train log."""
    model.load_state_dict(result.best_state)
    payload.update(state_dict=result.best_state, best_epoch=result.best_epoch, best_valid_ndcg10=result.best_metric)
    contracts.write_table(result.log, log_path, contracts.TRAIN_LOG)
    atomic_save(payload, model_path)
    log.info("saved %s (best epoch %d, valid NDCG@10 %.4f)", model_path, result.best_epoch, result.best_metric)
    return result.log


def _run_key(
    kind: str,
    cfg: dict,
    seed: int | None,
    seqs: Sequences,
    codes: np.ndarray | None = None,
    user_tables: np.ndarray | None = None,
) -> dict:
    """What identifies a training run, for the checkpoint's config hash.

    The data and the model code are hashed too, so a checkpoint never resumes
    on other interactions, other IDs, other users' ID tables, or an edited
    architecture.
    """
    data = hashlib.sha256(np.int64(seqs.n_items).tobytes())
    for seq in seqs.items:
        data.update(np.asarray(seq, np.int64).tobytes())
        data.update(b"|")
    for array in (codes, user_tables):
        if array is not None:
            # The shape too: the same bytes can be tables of another shape.
            data.update(np.asarray(array.shape, np.int64).tobytes())
            data.update(np.ascontiguousarray(array, np.int64).tobytes())
        data.update(b"|")
    code = hashlib.sha256()
    # sequences builds the training rows (prefixes, windows), so it is model code too.
    for module in (generator, sasrec, beam, loop, sequences):
        code.update(Path(module.__file__).read_bytes())
    science = {k: v for k, v in cfg.items() if k != "progress"}
    return {"kind": kind, "cfg": science, "seed": seed, "data": data.hexdigest(), "code": code.hexdigest()}


def _check_codes(codes: np.ndarray, n_items: int) -> np.ndarray:
    """``codes (n_items, D)`` or ``(P, n_items, D)`` as an int64 ``(P, n_items, D)`` array."""
    codes = np.asarray(codes, dtype=np.int64)
    if codes.ndim == 2:
        codes = codes[None]
    if codes.ndim != 3 or codes.shape[1] != n_items or codes.shape[0] == 0:
        raise ValueError(
            f"codes must be (n_items={n_items}, D) or (P, n_items={n_items}, D) with P >= 1; got shape {codes.shape}"
        )
    return codes


def _check_user_tables(user_tables: np.ndarray | None, n_users: int, n_tables: int) -> np.ndarray:
    """Each user's ID table as an int64 ``(n_users,)`` array in ``[0, n_tables)``; zeros for None with one table."""
    if user_tables is None:
        if n_tables > 1:
            raise ValueError(
                f"user_tables is required with codes of {n_tables} ID tables: pass each user's table index, "
                f"shape ({n_users},)"
            )
        return np.zeros(n_users, np.int64)
    tables = np.asarray(user_tables)
    if tables.shape != (n_users,) or not np.issubdtype(tables.dtype, np.integer):
        raise ValueError(
            f"user_tables must be an integer array with one entry per user, shape ({n_users},); "
            f"got {tables.dtype} {tables.shape}"
        )
    if n_users and not (tables.min() >= 0 and tables.max() < n_tables):
        raise ValueError(
            f"user_tables must be in [0, {n_tables}) (codes hold {n_tables} ID tables); "
            f"got {tables.min()}..{tables.max()}"
        )
    return tables.astype(np.int64)


def _split_user_tables(user_tables, n_users: int, n_tables: int) -> dict[str, np.ndarray]:
    """The ID table of each user at each split: ``{"valid": (U,), "test": (U,)}``.

    ``user_tables`` is None, one ``(U,)`` array for both splits, or a dict
    with exactly the keys of ``SPLITS``.
    """
    if isinstance(user_tables, dict):
        if set(user_tables) != set(SPLITS):
            raise ValueError(f"user_tables as a dict must have the keys {list(SPLITS)}; got {sorted(user_tables)}")
        return {split: _check_user_tables(user_tables[split], n_users, n_tables) for split in SPLITS}
    tables = _check_user_tables(user_tables, n_users, n_tables)
    return {split: tables for split in SPLITS}


def _build_tries(codes: np.ndarray, level_sizes: list[int], device: torch.device) -> list[Trie]:
    """One trie per ID table of ``codes (P, n_items, D)``, padded to the model's ``level_sizes``."""
    tries = []
    for p, table in enumerate(codes):
        try:
            tries.append(Trie(table, level_sizes).to(device))
        except ValueError as err:
            raise ValueError(f"codes, ID table {p}: {err}") from err
    return tries


def _build_tiger(codes: np.ndarray, cfg: dict) -> TigerGenerator:
    return TigerGenerator(
        torch.as_tensor(codes),
        history_cap=cfg["history_cap"],
        d_model=cfg["d_model"],
        n_heads=cfg["n_heads"],
        n_encoder_layers=cfg["n_encoder_layers"],
        n_decoder_layers=cfg["n_decoder_layers"],
        d_ff=cfg["d_ff"],
        dropout=cfg["dropout"],
        encoder_tokens=cfg["encoder_tokens"],
    )


def _build_sasrec(n_items: int, cfg: dict) -> SASRec:
    return SASRec(
        n_items,
        history_cap=cfg["history_cap"],
        d_model=cfg["d_model"],
        n_heads=cfg["n_heads"],
        n_layers=cfg["n_layers"],
        d_ff=cfg["d_ff"],
        dropout=cfg["dropout"],
    )


# ---------------------------------------------------------------------- ranking
def history_items(seqs: Sequences, split: str) -> np.ndarray:
    """Every item before the ``split`` target per user, ``(U, H)`` padded with ``PAD``."""
    cut = -2 if split == "valid" else -1
    longest = max(len(seq) for seq in seqs.items) + cut
    return np.stack([pad_left(seq[:cut], longest) for seq in seqs.items])


def ranks_in_list(items: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based position of ``targets[u]`` in ``items[u]`` (a top list), NaN when absent."""
    hit = items == targets[:, None]  # (U, B)
    return np.where(hit.any(axis=1), hit.argmax(axis=1) + 1.0, np.nan)


@torch.no_grad()
def _sasrec_ranks(model: SASRec, hist, targets, exclude, batch_size: int) -> np.ndarray:
    """Full-catalogue rank of each target (NaN when the target itself is excluded)."""
    device = next(model.parameters()).device
    model.eval()
    ranks = []
    for start in range(0, len(hist), batch_size):
        h = torch.from_numpy(hist[start : start + batch_size]).to(device)
        scores = model.scores(h).float()  # (N, n_items)
        if exclude is not None:
            ex = torch.from_numpy(exclude[start : start + batch_size]).to(device)
            scores = _mask_items(scores, ex)
        ranks.append(rank_of_target(scores.cpu().numpy(), targets[start : start + batch_size]).astype(np.float64))
    r = np.concatenate(ranks)
    if exclude is not None:
        excluded_target = (exclude == targets[:, None]).any(axis=1)
        r[excluded_target] = np.nan
    return r


def _mask_items(scores: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """``scores (N, n_items)`` with the items of ``items (N, H)`` (PAD = -1 ignored) set to -inf."""
    n_items = scores.shape[1]
    padded = torch.cat([scores, scores.new_zeros(len(scores), 1)], dim=1)  # spare column for PAD
    padded.scatter_(1, torch.where(items >= 0, items, n_items), float("-inf"))
    return padded[:, :n_items]


# ------------------------------------------------------------------- evaluation
def evaluate_tiger(
    model_path: str | os.PathLike,
    seqs: Sequences,
    codes: np.ndarray,
    ks: list[int],
    beam_size: int,
    exclude_history: bool,
    device: str = "auto",
    user_tables: np.ndarray | dict[str, np.ndarray] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rank valid and test targets by constrained beam search.

    ``codes`` must be the IDs the model was trained on, ``(n_items, D)`` or
    ``(P, n_items, D)``. ``user_tables``: the ID table each user decodes
    under, as one ``(U,)`` array for both splits or ``{"valid": (U,), "test":
    (U,)}`` (PMAT's drift updates move users between tables); it may differ
    from training's. Required when ``P > 1``, all zeros when omitted with one
    table.

    Returns ``(per_user, metrics)`` matching contracts PER_USER (rank null when
    the target is not among the ``beam_size`` items) and METRICS: Recall@K,
    NDCG@K, MRR@maxK, ``invalid_id_rate`` (finished beams that are not an
    item, over all beams), ``beam_seconds_per_user`` (wall clock) and
    ``n_users`` per split.
    """
    if beam_size < max(ks):
        raise ValueError(f"beam_size {beam_size} < max(ks) {max(ks)}: beam search returns only beam_size items")
    codes = _check_codes(codes, seqs.n_items)
    split_tables = _split_user_tables(user_tables, seqs.n_users, len(codes))
    dev = resolve_device(device)
    torch.set_flush_denormal(True)  # subnormals slow CPU kernels ~10x (see pmsid.train.loop)
    saved = _load(model_path, "tiger")
    cfg = {**TIGER_DEFAULTS, **saved["cfg"]}
    # Models saved before personalized IDs hold one (n_items, D) table.
    state = dict(saved["state_dict"])
    if state["codes"].ndim == 2:
        state["codes"] = state["codes"][None]
    saved_codes = saved["codes"].numpy()
    if not np.array_equal(codes, saved_codes[None] if saved_codes.ndim == 2 else saved_codes):
        raise ValueError(f"{model_path}: the semantic IDs differ from the ones the model was trained on; retrain it")
    model = _build_tiger(codes, cfg)
    model.load_state_dict(state)
    model.to(dev).eval()
    tries = _build_tries(codes, model.level_sizes, dev)
    per_user, rows = [], []
    for split in SPLITS:
        users, hist, targets = eval_samples(seqs, split, cfg["history_cap"])
        exclude = history_items(seqs, split) if exclude_history else None
        tables = split_tables[split]
        log.info("tiger %s: users per ID table %s", split, np.bincount(tables, minlength=len(codes)).tolist())
        _sync(dev)
        start = time.perf_counter()
        result = beam_search_tables(model, tries, hist, tables, beam_size, exclude, cfg["eval_batch_size"])
        _sync(dev)
        seconds = time.perf_counter() - start
        ranks = ranks_in_list(result.items, targets)
        extra = {
            "invalid_id_rate": result.n_invalid / result.items.size,
            "beam_seconds_per_user": seconds / len(users),
        }
        per_user.append(_per_user_frame(users, split, targets, ranks))
        rows += _metric_rows(split, ranks, ks, extra)
        log.info(
            "tiger %s: beam %d, %.2f ms per user, %d invalid IDs",
            split,
            beam_size,
            1e3 * seconds / len(users),
            result.n_invalid,
        )
    return pd.concat(per_user, ignore_index=True), pd.DataFrame(rows)


def evaluate_sasrec(
    model_path: str | os.PathLike,
    seqs: Sequences,
    ks: list[int],
    exclude_history: bool,
    device: str = "auto",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rank valid and test targets among all items by SASRec's scores.

    ``per_user`` holds the full-catalogue rank (pessimistic on ties; null when
    ``exclude_history`` removed the target itself); ``metrics`` as in
    :func:`evaluate_tiger` without the beam rows.
    """
    dev = resolve_device(device)
    torch.set_flush_denormal(True)  # subnormals slow CPU kernels ~10x (see pmsid.train.loop)
    saved = _load(model_path, "sasrec")
    cfg = {**SASREC_DEFAULTS, **saved["cfg"]}
    model = _build_sasrec(saved["n_items"], cfg)
    model.load_state_dict(saved["state_dict"])
    model.to(dev).eval()
    per_user, rows = [], []
    for split in SPLITS:
        users, hist, targets = eval_samples(seqs, split, cfg["history_cap"])
        exclude = history_items(seqs, split) if exclude_history else None
        ranks = _sasrec_ranks(model, hist, targets, exclude, cfg["eval_batch_size"])
        per_user.append(_per_user_frame(users, split, targets, ranks))
        rows += _metric_rows(split, ranks, ks, {})
    return pd.concat(per_user, ignore_index=True), pd.DataFrame(rows)


def _load(model_path, kind: str) -> dict:
    saved = torch.load(model_path, map_location="cpu", weights_only=True)
    if saved.get("kind") != kind:
        raise ValueError(f"{model_path}: holds a {saved.get('kind')!r} model, expected {kind!r}")
    return saved


def _per_user_frame(users, split, targets, ranks) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_idx": users.astype(np.int32),
            "split": split,
            "target_item": targets.astype(np.int32),
            # NaN (not in the returned list) becomes a null rank.
            "rank": pd.array(ranks, dtype="Float64").astype("Int32"),
        }
    )


def _metric_rows(split: str, ranks: np.ndarray, ks: list[int], extra: dict) -> list[dict]:
    values = {**mean_metrics(ranks, ks), **extra, "n_users": float(len(ranks))}
    return [{"split": split, "metric": k, "value": float(v)} for k, v in values.items()]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
