"""Training recipes of the neural models: TIGER's generator over semantic IDs
and SASRec, each on the shared loop (``pmsid.train.loop``).

TIGER trains on every prefix of every training sequence
(``pmsid.data.sequences.training_samples``); SASRec by default predicts every
training target in causal windows (``training_windows``, ``train_mode``
below), the same targets at a fraction of the cost. Both select the epoch with
the best validation NDCG@10, ranked under the evaluation's protocol: TIGER by
trie-constrained beam search, SASRec by scoring every item. With
``exclude_history`` the user's earlier items (all of them, not only the last
``history_cap``) are removed from the validation ranking.

Personalized IDs (PMAT): TIGER also takes ``codes (P, n_items, D)``, one ID
table per user-preference prototype, and ``user_tables`` giving the table each
user's training prefixes are tokenized in. ``codes (n_items, D)`` is the
single table, P = 1.

Hyperparameters come as a plain ``cfg`` dict; omitted keys take the defaults
of the config schema (``pmsid.models.generator.tiger_defaults``,
``pmsid.models.sasrec.sasrec_defaults``), unknown keys fail naming the key.
Measured on ml-100k-sized data (943 users, 1,349 items, 96,458 training
prefixes, 4-token IDs) on a 2-core CPU, one epoch takes about 2.7 s for SASRec
with ``train_mode="sequence"`` (5,262 windows) and 34 s with ``"prefix"``,
215 s for TIGER with ``encoder_tokens="flat"`` and 51 s with ``"item"``.

Training resumes from ``checkpoint_path`` when it holds a checkpoint of the
same run (same cfg apart from ``progress``, seed, data and model code); a
finished run's checkpoint makes a rerun only reload its best state.

The keys (their defaults and valid values are in the config schema's
``tiger`` and ``sasrec`` sections, the one place that states them):
the Transformer sizes; TIGER's ``encoder_tokens`` ("flat": the encoder reads
``history_cap x D`` ID tokens, as TIGER does; "item": one summed token per
history item, about 4x faster on a CPU at D = 4) and ``beam_size`` (the
validation beam); SASRec's ``train_mode`` ("sequence": cross-entropy at every
position of causal windows, the SASRec paper's recipe; "prefix": one row per
training prefix, as the generator trains); ``eval_batch_size``; the loop's
``lr``, ``weight_decay``, ``batch_size``, ``max_epochs``, ``patience``,
``warmup_steps``, ``schedule``, ``grad_clip`` (``pmsid.train.loop.LoopConfig``);
and the run keys ``history_cap``, ``exclude_history`` (validation ranks under
the evaluation's protocol), ``ks``, ``bf16`` (CUDA only), ``progress``,
``deterministic`` (``pmsid.defaults.run_defaults``).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pmsid.data import contracts, sequences
from pmsid.data.sequences import Sequences, eval_samples, training_samples, training_windows
from pmsid.evaluate.metrics import mean_metrics, rank_of_target
from pmsid.evaluate.ranking import SPLITS, history_items, mask_items, ranks_in_list
from pmsid.models import beam, generator, sasrec
from pmsid.models.beam import Trie, beam_search_tables
from pmsid.models.generator import TigerGenerator, build_tiger, tiger_defaults
from pmsid.models.sasrec import SASRec, build_sasrec, sasrec_defaults
from pmsid.runtime import atomic_save, resolve_device, seed_everything
from pmsid.train import loop
from pmsid.train.loop import LoopConfig, config_hash, train_loop

log = logging.getLogger(__name__)

TIGER_DEFAULTS = tiger_defaults()
SASREC_DEFAULTS = sasrec_defaults()


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
    prefix_tables: np.ndarray | None = None,
) -> pd.DataFrame:
    """Train the TIGER-style generator on semantic IDs ``codes (n_items, D)`` or ``(P, n_items, D)``.

    ``user_tables (U,)``: the ID table (in ``[0, P)``) each user's validation
    ranking uses, and each user's training prefixes unless
    ``prefix_tables`` is given; required when ``P > 1``, all zeros when
    omitted with one table. ``prefix_tables (S,)``: the table of each
    training prefix, in the row order of ``training_samples`` (PMAT chooses
    it from the items before the prefix's target). Saves ``{"kind", "state_dict", "cfg",
    "codes" (P, n_items, D), "user_tables" (U,), "n_items", "best_epoch",
    "best_valid_ndcg10"}`` to ``model_path`` and the per-epoch log (contract
    TRAIN_LOG) to ``log_path``; returns the log. A non-finite loss raises
    ``NonFiniteLossError`` and no model file is left.
    """
    cfg = with_defaults(cfg, TIGER_DEFAULTS, "tiger")
    codes = check_codes(codes, seqs.n_items)
    user_tables = check_user_tables(user_tables, seqs.n_users, len(codes))
    prefix_tables = check_prefix_tables(prefix_tables, seqs, len(codes))
    if cfg["beam_size"] < max(cfg["ks"]):
        raise ValueError(f"tiger cfg: beam_size {cfg['beam_size']} < max(ks) {max(cfg['ks'])}; raise beam_size")
    dev = start(model_path, seed, cfg, device)
    model = build_tiger(codes, cfg).to(dev)
    tries = build_tries(codes, model.level_sizes, dev)
    log.info("tiger: users per ID table %s", np.bincount(user_tables, minlength=len(codes)).tolist())
    _, hist, targets = eval_samples(seqs, "valid", cfg["history_cap"])
    exclude = history_items(seqs, "valid") if cfg["exclude_history"] else None

    def validate(m: TigerGenerator) -> float:
        result = beam_search_tables(m, tries, hist, user_tables, cfg["beam_size"], exclude, cfg["eval_batch_size"])
        return mean_metrics(ranks_in_list(result.items, targets), [10])["NDCG@10"]

    run_key = training_key("tiger", cfg, seed, seqs, codes, user_tables, prefix_tables)
    result = fit(
        model, seqs, cfg, validate, checkpoint_path, run_key, seed, "tiger",
        user_tables=user_tables, prefix_tables=prefix_tables,
    )  # fmt: skip
    payload = {
        "kind": "tiger",
        "cfg": cfg,
        "codes": torch.from_numpy(codes),
        "user_tables": torch.from_numpy(user_tables),
        "n_items": seqs.n_items,
    }
    return finish(model, result, payload, model_path, log_path)


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
    dev = start(model_path, seed, cfg, device)
    model = build_sasrec(seqs.n_items, cfg).to(dev)
    _, hist, targets = eval_samples(seqs, "valid", cfg["history_cap"])
    exclude = history_items(seqs, "valid") if cfg["exclude_history"] else None

    def validate(m: SASRec) -> float:
        ranks = _sasrec_ranks(m, hist, targets, exclude, cfg["eval_batch_size"])
        return mean_metrics(ranks, [10])["NDCG@10"]

    run_key = training_key("sasrec", cfg, seed, seqs)
    result = fit(model, seqs, cfg, validate, checkpoint_path, run_key, seed, "sasrec", cfg["train_mode"])
    payload = {"kind": "sasrec", "cfg": cfg, "n_items": seqs.n_items}
    return finish(model, result, payload, model_path, log_path)


def start(model_path, seed, cfg, device) -> torch.device:
    """Common set-up: no stale model output, seeds, device."""
    # A failed job must leave no model: remove any earlier one before training.
    Path(model_path).unlink(missing_ok=True)
    seed_everything(seed, deterministic=cfg["deterministic"])
    dev = resolve_device(device)
    log.info("device %s, torch threads %d", dev, torch.get_num_threads())
    return dev


def fit(
    model, seqs, cfg, validate, checkpoint_path, run_key, seed, name, mode="prefix", user_tables=None,
    prefix_tables=None, loss=None,
):  # fmt: skip
    """Run the shared loop on the training targets of ``seqs``.

    ``mode`` "prefix": one row per training prefix, ``model.loss(history,
    target)``, or ``model.loss(history, target, table)`` with each row's ID
    table when ``prefix_tables (S,)`` (one per row) or ``user_tables (U,)``
    (the row's user's) is given (TIGER); "sequence": one row
    per causal window (``pmsid.data.sequences.training_windows``),
    ``model.sequence_loss(inputs, targets)``. ``loss(model, batch)``, when
    given, replaces either (HDNAG passes its alignment weight so). The loop
    shuffles and batches rows, so either way the batch order depends only on ``(seed, epoch)`` and
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
    if user_tables is not None or prefix_tables is not None:
        if mode != "prefix":
            raise ValueError(f"ID tables per row need mode 'prefix', got {mode!r}")
        rows = prefix_tables if prefix_tables is not None else user_tables[users]
        data += (torch.from_numpy(rows),)  # (S,) the ID table of each row
    return train_loop(
        model,
        loss or loss_fn,
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


def finish(model, result, payload, model_path, log_path) -> pd.DataFrame:
    """Save the best state and the train log."""
    model.load_state_dict(result.best_state)
    payload.update(state_dict=result.best_state, best_epoch=result.best_epoch, best_valid_ndcg10=result.best_metric)
    contracts.write_table(result.log, log_path, contracts.TRAIN_LOG, metadata=result.budget)
    atomic_save(payload, model_path)
    log.info("saved %s (best epoch %d, valid NDCG@10 %.4f)", model_path, result.best_epoch, result.best_metric)
    return result.log


def training_key(
    kind: str,
    cfg: dict,
    seed: int | None,
    seqs: Sequences,
    codes: np.ndarray | None = None,
    user_tables: np.ndarray | None = None,
    prefix_tables: np.ndarray | None = None,
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
    for array in (codes, user_tables, prefix_tables):
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


def check_codes(codes: np.ndarray, n_items: int) -> np.ndarray:
    """``codes (n_items, D)`` or ``(P, n_items, D)`` as an int64 ``(P, n_items, D)`` array."""
    codes = np.asarray(codes, dtype=np.int64)
    if codes.ndim == 2:
        codes = codes[None]
    if codes.ndim != 3 or codes.shape[1] != n_items or codes.shape[0] == 0:
        raise ValueError(
            f"codes must be (n_items={n_items}, D) or (P, n_items={n_items}, D) with P >= 1; got shape {codes.shape}"
        )
    return codes


def check_user_tables(user_tables: np.ndarray | None, n_users: int, n_tables: int) -> np.ndarray:
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


def check_prefix_tables(prefix_tables: np.ndarray | None, seqs: Sequences, n_tables: int) -> np.ndarray | None:
    """Each training prefix's ID table as int64 ``(S,)`` in ``[0, n_tables)``, or None."""
    if prefix_tables is None:
        return None
    n_rows = len(sequences.training_positions(seqs)[0])  # rows of training_samples
    tables = np.asarray(prefix_tables)
    if tables.shape != (n_rows,) or not np.issubdtype(tables.dtype, np.integer):
        raise ValueError(
            f"prefix_tables must be an integer array with one entry per training prefix, shape ({n_rows},); "
            f"got {tables.dtype} {tables.shape}"
        )
    if n_rows and not (tables.min() >= 0 and tables.max() < n_tables):
        raise ValueError(f"prefix_tables must be in [0, {n_tables}); got {tables.min()}..{tables.max()}")
    return tables.astype(np.int64)


def split_user_tables(user_tables, n_users: int, n_tables: int) -> dict[str, np.ndarray]:
    """The ID table of each user at each split: ``{"valid": (U,), "test": (U,)}``.

    ``user_tables`` is None, one ``(U,)`` array for both splits, or a dict
    with exactly the keys of ``SPLITS``.
    """
    if isinstance(user_tables, dict):
        if set(user_tables) != set(SPLITS):
            raise ValueError(f"user_tables as a dict must have the keys {list(SPLITS)}; got {sorted(user_tables)}")
        return {split: check_user_tables(user_tables[split], n_users, n_tables) for split in SPLITS}
    tables = check_user_tables(user_tables, n_users, n_tables)
    return {split: tables for split in SPLITS}


def build_tries(codes: np.ndarray, level_sizes: list[int], device: torch.device) -> list[Trie]:
    """One trie per ID table of ``codes (P, n_items, D)``, padded to the model's ``level_sizes``."""
    tries = []
    for p, table in enumerate(codes):
        try:
            tries.append(Trie(table, level_sizes).to(device))
        except ValueError as err:
            raise ValueError(f"codes, ID table {p}: {err}") from err
    return tries


# ---------------------------------------------------------------------- ranking
@torch.no_grad()
def _sasrec_ranks(model: SASRec, hist, targets, exclude, batch_size: int) -> np.ndarray:
    """Full-catalogue rank of each target under the evaluation's tie rule
    (:func:`pmsid.evaluate.metrics.rank_of_target`; NaN when the target itself
    is excluded), so validation ranks equal the evaluation's."""
    device = next(model.parameters()).device
    model.eval()
    ranks = []
    for start in range(0, len(hist), batch_size):
        h = torch.from_numpy(hist[start : start + batch_size]).to(device)
        scores = model.scores(h).float()  # (N, n_items)
        if exclude is not None:
            ex = torch.from_numpy(exclude[start : start + batch_size]).to(device)
            scores = mask_items(scores, ex)  # an excluded target is scored -inf: NaN rank
        ranks.append(rank_of_target(scores.cpu().numpy(), targets[start : start + batch_size]))
    return np.concatenate(ranks)


# ------------------------------------------------------------------- loading
def load_model(model_path: str | os.PathLike, kind: str) -> dict:
    """The saved payload of a trained model, checked to be of ``kind``."""
    saved = torch.load(model_path, map_location="cpu", weights_only=True)
    if saved.get("kind") != kind:
        raise ValueError(f"{model_path}: holds a {saved.get('kind')!r} model, expected {kind!r}")
    return saved


def load_generator(model_path: str | os.PathLike, codes: np.ndarray | None = None) -> TigerGenerator:
    """The generator of a TIGER-style model file (TIGER, PMAT, MCRL), on the CPU in eval mode.

    With ``codes`` (the tables it is about to rank under) the saved tables
    must be the same, or the model would decode IDs it was never trained on.
    """
    return generator_from(load_model(model_path, "tiger"), codes, model_path)


def generator_from(saved: dict, codes: np.ndarray | None, model_path: str | os.PathLike) -> TigerGenerator:
    """The generator of a loaded TIGER-style payload (see :func:`load_generator`)."""
    cfg = {**TIGER_DEFAULTS, **saved["cfg"]}
    state = dict(saved["state_dict"])
    if state["codes"].ndim == 2:  # models saved before personalized IDs hold one (n_items, D) table
        state["codes"] = state["codes"][None]
    saved_codes = saved["codes"].numpy()
    saved_codes = saved_codes[None] if saved_codes.ndim == 2 else saved_codes
    if codes is not None and not np.array_equal(codes, saved_codes):
        raise ValueError(f"{model_path}: the semantic IDs differ from the ones the model was trained on; retrain it")
    model = build_tiger(saved_codes, cfg)
    model.load_state_dict(state)
    return model.eval()


def load_sasrec(model_path: str | os.PathLike) -> SASRec:
    """The SASRec of a model file, on the CPU in eval mode."""
    saved = load_model(model_path, "sasrec")
    model = build_sasrec(saved["n_items"], {**SASREC_DEFAULTS, **saved["cfg"]})
    model.load_state_dict(saved["state_dict"])
    return model.eval()
