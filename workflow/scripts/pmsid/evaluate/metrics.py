"""Ranking metrics for one held-out target per user (docs/METHOD.md section 2).

Everything derives from the 1-based rank of the target in the model's
ranking (``NaN`` or ``0`` when the target is not in the returned list):

- ``Recall@K`` (= HR@K for a single target): 1 if rank <= K;
- ``NDCG@K``: 1 / log2(rank + 1) if rank <= K (the ideal DCG is 1);
- ``MRR@K``: 1 / rank if rank <= K. Beam search returns only the top
  top-K list of every method holds K = max(max(ks), 20) items, so MRR is
  truncated at the largest K for every model.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def rank_of_target(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based rank of ``targets[u]`` in row ``u`` of ``scores`` (higher is better).

    Ties are broken pessimistically (an item tied with the target counts as
    ranked above it), so a constant model gets no free credit.
    """
    target_scores = scores[np.arange(len(targets)), targets]
    # Counts the target itself, so the best possible rank is 1.
    return (scores >= target_scores[:, None]).sum(axis=1)


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
