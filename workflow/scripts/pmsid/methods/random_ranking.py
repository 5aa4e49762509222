"""Random, a floor of every table: a uniformly random order of the
catalogue per user and split, drawn from the run's seed (docs/METHOD.md
section 7). Its expected Recall@K is K / n_items (less with history
exclusion, which shrinks the catalogue per user)."""

from __future__ import annotations

import numpy as np
import torch

from pmsid.data import contracts
from pmsid.data.loaders import load_sequences
from pmsid.evaluate.ranking import SPLITS, Ranking, rank_by_scores
from pmsid.runtime import atomic_save


def train(job) -> None:
    """Nothing to learn: the model file records the seed the ranking draws from."""
    seqs = load_sequences(job.inputs["interactions"], job.inputs["catalogue"])
    atomic_save({"kind": "random", "seed": int(job.seed), "n_items": seqs.n_items}, job.outputs["model"])
    contracts.write_table(contracts.empty_frame(contracts.TRAIN_LOG), job.outputs["log"], contracts.TRAIN_LOG)


def rank(job) -> dict[str, Ranking]:
    """``job.k`` items per user by uniform random scores, one generator per split, seeded.

    Batches are drawn in user order from the split's generator, so the lists
    do not depend on anything but the seed and the data.
    """
    saved = torch.load(job.model, map_location="cpu", weights_only=True)
    if saved.get("kind") != "random" or saved["n_items"] != job.seqs.n_items:
        raise ValueError(f"{job.model}: not a Random model of this dataset's {job.seqs.n_items} items; retrain it")
    generators = {split: np.random.default_rng([saved["seed"], i]) for i, split in enumerate(SPLITS)}

    def scores(split, users):  # (n, n_items); ties have probability 0
        return torch.from_numpy(generators[split].random((len(users), job.seqs.n_items)))

    return rank_by_scores(job.seqs, scores, job.k, job.exclude_history)
