"""MostPop, a floor of every table: rank items by their number of training
interactions, the same list for every user (docs/METHOD.md section 7).

Counts come from the training split only, so validation and test items are
never counted. Ties (items with equal counts) go to the lower item index.
"""

from __future__ import annotations

import numpy as np
import torch

from pmsid.data import contracts
from pmsid.data.loaders import load_sequences
from pmsid.data.sequences import Sequences
from pmsid.evaluate.ranking import Ranking, rank_by_scores
from pmsid.runtime import atomic_save


def popularity(seqs: Sequences) -> np.ndarray:
    """Training interactions per item, ``(n_items,)``."""
    train = [seqs.train_items(u) for u in range(seqs.n_users)]
    items = np.concatenate(train) if train else np.zeros(0, np.int64)
    return np.bincount(items, minlength=seqs.n_items).astype(np.int64)


def train(job) -> None:
    """Count every item's training interactions; no epochs, so the train log has no rows."""
    seqs = load_sequences(job.inputs["interactions"], job.inputs["catalogue"])
    counts = popularity(seqs)
    atomic_save({"kind": "mostpop", "counts": torch.from_numpy(counts), "n_items": seqs.n_items}, job.outputs["model"])
    contracts.write_table(contracts.empty_frame(contracts.TRAIN_LOG), job.outputs["log"], contracts.TRAIN_LOG)


def rank(job) -> dict[str, Ranking]:
    """The ``job.k`` most popular items, less the user's history when excluded."""
    saved = torch.load(job.model, map_location="cpu", weights_only=True)
    if saved.get("kind") != "mostpop" or saved["n_items"] != job.seqs.n_items:
        raise ValueError(f"{job.model}: not a MostPop model of this dataset's {job.seqs.n_items} items; retrain it")
    counts = saved["counts"].double()
    return rank_by_scores(job.seqs, lambda split, users: counts.expand(len(users), -1), job.k, job.exclude_history)
