"""The TIGER-style generator under semantic-ID tables (docs/METHOD.md section 3).

One implementation for every method that trains or ranks the generator:
``tiger`` (one RQ-KMeans table), PMAT's ``pmat_global`` / ``pmat_static`` /
``pmat_full`` (each user in its prototype's table) and, for ranking, MCRL's
ablations. The tables come from the job's inputs (``ids``, and
``assignment`` for personalized tables; ``pmsid.data.loaders.load_id_tables``).
Ranking is trie-constrained beam search: every returned list is a list of
valid items, best beam first; the beam's invalid-ID rate and wall time are
measured on the way. The constrained rate is 0 by construction (an
invariant the tests check), so the test split is also decoded without the
trie (:func:`unconstrained_measures`): that search's invalid-ID rate and
accuracy say whether the model itself has learnt which IDs exist.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from pmsid.data.loaders import load_id_tables, load_sequences
from pmsid.data.sequences import eval_samples
from pmsid.evaluate.metrics import user_metrics
from pmsid.evaluate.ranking import SPLITS, Ranking, history_items, ranks_in_list
from pmsid.models.beam import Trie, beam_search_tables
from pmsid.models.generator import TigerGenerator
from pmsid.runtime import resolve_device, seed_everything
from pmsid.train import recipes

log = logging.getLogger(__name__)


def generator_cfg(job) -> dict:
    """The generator's cfg: the ``tiger`` section plus the protocol keys it
    validates under, and the method's ``table_token`` option (its design)."""
    return {
        **job.cfg,
        "history_cap": job.protocol["history_cap"],
        "exclude_history": job.protocol["exclude_history"],
        "ks": job.evaluation["ks"],
        "deterministic": job.deterministic,
        "beam_size": job.evaluation["beam_size"],
        "table_token": bool(job.options.get("table_token", False)),
    }


def train(job) -> None:
    """Train the generator under the job's ID tables: each training prefix in
    its own table when the job has ``prefix_tables`` (PMAT), else in its
    user's training-time table."""
    seed_everything(job.seed, job.deterministic)
    seqs = load_sequences(job.inputs["interactions"], job.inputs["catalogue"])
    codes, tables = load_id_tables(job.inputs, seqs)
    log.info("%s: %d users, %d items, seed %d", job.method, seqs.n_users, seqs.n_items, job.seed)
    recipes.train_tiger(
        seqs,
        codes,
        generator_cfg(job),
        job.outputs["model"],
        job.outputs["log"],
        job.checkpoint,
        job.seed,
        job.device,
        user_tables=None if tables is None else tables["train"],
        prefix_tables=None if tables is None else tables.get("prefix"),
    )


def rank(job) -> dict[str, Ranking]:
    """Beam search under the job's tables: the top ``beam_size`` valid items per user and split."""
    codes, tables = load_id_tables(job.inputs, job.seqs)
    user_tables = None if tables is None else {split: tables[split] for split in SPLITS}
    return rank_generator(
        job.model,
        job.seqs,
        codes,
        beam_size=job.evaluation["beam_size"],
        ks=job.evaluation["ks"],
        exclude_history=job.exclude_history,
        device=job.device,
        user_tables=user_tables,
    )


def rank_generator(
    model_path: str,
    seqs,
    codes: np.ndarray,
    beam_size: int,
    ks: list[int],
    exclude_history: bool,
    device: str = "auto",
    user_tables: np.ndarray | dict[str, np.ndarray] | None = None,
) -> dict[str, Ranking]:
    """Rank valid and test targets by constrained beam search with a saved generator.

    ``codes`` must be the IDs the model was trained on, ``(n_items, D)`` or
    ``(P, n_items, D)``. ``user_tables``: the ID table each user decodes
    under, one ``(U,)`` array for both splits or ``{"valid": (U,), "test":
    (U,)}`` (PMAT's drift updates move users between tables); required when
    ``P > 1``. Each split's :class:`Ranking` carries ``invalid_id_rate``
    (finished beams that are not an item, over all beams; 0 by construction)
    and ``beam_seconds_per_user`` (wall clock) as extra measures, the test
    split also those of :func:`unconstrained_measures`.
    """
    if beam_size < max(ks):
        raise ValueError(f"beam_size {beam_size} < max(ks) {max(ks)}: beam search returns only beam_size items")
    codes = recipes.check_codes(codes, seqs.n_items)
    split_tables = recipes.split_user_tables(user_tables, seqs.n_users, len(codes))
    dev = resolve_device(device)
    torch.set_flush_denormal(True)  # subnormals slow CPU kernels ~10x (see pmsid.train.loop)
    saved = recipes.load_model(model_path, "tiger")
    cfg = {**recipes.TIGER_DEFAULTS, **saved["cfg"]}
    model = recipes.generator_from(saved, codes, model_path).to(dev)
    tries = recipes.build_tries(codes, model.level_sizes, dev)
    rankings = {}
    for split in SPLITS:
        users, hist, targets = eval_samples(seqs, split, cfg["history_cap"])
        exclude = history_items(seqs, split) if exclude_history else None
        tables = split_tables[split]
        log.info("beam search %s: users per ID table %s", split, np.bincount(tables, minlength=len(codes)).tolist())
        _sync(dev)
        start = time.perf_counter()
        result = beam_search_tables(model, tries, hist, tables, beam_size, exclude, cfg["eval_batch_size"])
        _sync(dev)
        seconds = time.perf_counter() - start
        extra = {
            "invalid_id_rate": result.n_invalid / result.items.size,
            "beam_seconds_per_user": seconds / len(users),
        }
        log.info(
            "beam search %s: beam %d, %.2f ms per user, %d invalid IDs",
            split,
            beam_size,
            1e3 * seconds / len(users),
            result.n_invalid,
        )
        if split == "test":
            start = time.perf_counter()
            free = unconstrained_measures(
                model, tries, hist, tables, targets, beam_size, exclude, ks, cfg["eval_batch_size"]
            )
            _sync(dev)
            log.info(
                "unconstrained beam search test: %.2f ms per user, invalid-ID rate %.4f",
                1e3 * (time.perf_counter() - start) / len(users),
                free["unconstrained_invalid_id_rate"],
            )
            extra.update(free)
        rankings[split] = Ranking(users=users, items=np.asarray(result.items), extra=extra)
    return rankings


def unconstrained_measures(
    model: TigerGenerator,
    tries: list[Trie],
    hist: np.ndarray,
    user_tables: np.ndarray,
    targets: np.ndarray,
    beam_size: int,
    exclude: np.ndarray | None,
    ks: list[int],
    batch_size: int,
) -> dict[str, float]:
    """The same beam search without the trie, and what its lists are worth.

    Constrained search cannot emit an invalid ID, so its rate of 0 says
    nothing about the model; decoded with any code allowed at every level
    (``constrained=False``, same width and scores, each finished beam mapped
    to an item through the user's table ``tries[user_tables[u]]``), the
    model shows how often its best IDs name no item. Returns
    ``unconstrained_invalid_id_rate`` (invalid beams over all ``U x
    beam_size`` beams) and ``unconstrained_Recall@K`` / ``unconstrained_NDCG@K``
    for every K of ``ks``, from :func:`pmsid.evaluate.metrics.user_metrics`
    on the targets' ranks in the unconstrained lists, where an invalid beam
    keeps its slot (a miss) and an excluded item's beam is dropped.
    """
    result = beam_search_tables(model, tries, hist, user_tables, beam_size, exclude, batch_size, constrained=False)
    means = user_metrics(ranks_in_list(result.items, targets), ks).mean()
    names = [f"{name}@{k}" for k in ks for name in ("Recall", "NDCG")]
    return {
        "unconstrained_invalid_id_rate": result.n_invalid / result.items.size,
        **{f"unconstrained_{name}": float(means[name]) for name in names},
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
