"""Ranking metrics for one held-out target per user (docs/METHOD.md section 2).

Everything derives from the 1-based rank of the target in the model's
ranking (``NaN`` or ``0`` when the target is not in the returned list):

- ``Recall@K`` (= HR@K for a single target): 1 if rank <= K;
- ``NDCG@K``: 1 / log2(rank + 1) if rank <= K (the ideal DCG is 1);
- ``MRR@K``: 1 / rank if rank <= K, for the largest cut-off K = max(ks)
  only. Beam search returns only ``beam_size >= max(ks)`` items, so MRR is
  truncated at max(ks) for every model alike.

One tie rule for every score-based ranking, the one of
:func:`pmsid.evaluate.ranking.top_k`: higher score first, equal scores by
item index, ascending; items scored -inf (excluded) are not ranked at all.
:func:`rank_of_target` follows it, so a rank computed from full scores
(SASRec's validation during training) is the rank the evaluation of the
same scores gives.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def rank_of_target(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based rank of ``targets[u]`` in row ``u`` of ``scores (U, n_items)`` (higher is better).

    The tie rule of :func:`pmsid.evaluate.ranking.top_k`: an item ranks above
    the target when its score is higher, or equal and its item index lower.
    An item scored -inf never ranks above a finite target, and a target
    scored -inf (excluded) has no rank: NaN, as it is absent from the
    evaluation's lists. Returns float64 ``(U,)``.
    """
    rows = np.arange(len(targets))
    target_scores = scores[rows, targets][:, None]
    lower_index = np.arange(scores.shape[1])[None, :] < targets[:, None]
    above = (scores > target_scores) | ((scores == target_scores) & lower_index)
    ranks = 1.0 + above.sum(axis=1)
    return np.where(np.isneginf(target_scores[:, 0]), np.nan, ranks)


def user_metrics(ranks: np.ndarray, ks: list[int]) -> pd.DataFrame:
    """Per-user metric values, one column per metric name."""
    r = np.asarray(ranks, dtype=np.float64)
    r = np.where(np.isfinite(r) & (r > 0), r, np.inf)
    cols = {}
    for k in ks:
        hit = r <= k
        cols[f"Recall@{k}"] = hit.astype(np.float64)
        cols[f"NDCG@{k}"] = np.where(hit, 1.0 / np.log2(np.minimum(r, k) + 1.0), 0.0)
    kmax = max(ks)
    cols[f"MRR@{kmax}"] = np.where(r <= kmax, 1.0 / np.minimum(r, kmax), 0.0)
    return pd.DataFrame(cols)


def mean_metrics(ranks: np.ndarray, ks: list[int]) -> dict[str, float]:
    """Mean of :func:`user_metrics` over users."""
    return user_metrics(ranks, ks).mean().to_dict()
