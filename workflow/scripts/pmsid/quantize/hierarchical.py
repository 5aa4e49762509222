"""Hierarchical k-means IDs for HDNAG (docs/METHOD.md section 6).

Every item gets a three-token ID ``(g, f, e)``:

- ``g`` the **coarse** cluster, one of ``coarse_size`` k-means clusters of
  the fused item features (broad semantics, cheap to retrieve by);
- ``f`` the **fine** cluster, one of ``fine_size`` clusters *nested* in the
  coarse ones: coarse cluster ``c`` holding ``n_c`` of the ``N`` items is
  split by its own k-means into ``k_c`` fine clusters, ``k_c`` proportional
  to ``n_c`` (at least one each, largest remainders first, ``sum_c k_c =
  fine_size``, never more than the cluster's distinct rows), and the fine
  clusters are numbered globally, coarse cluster by coarse cluster, so ``f``
  alone determines ``g`` (``parent[f] = g``);
- ``e`` the dedup token (as TIGER's): items sharing a fine cluster get 0, 1,
  2, ... in item order, so every full ID is unique.

Because fine clusters nest in coarse ones, a distribution over fine
clusters can be summed onto the coarse clusters (``parent``), which is what
HDNAG's alignment loss compares with the coarse distribution.

The features are fused exactly as the RQ-KMeans tokenizer fuses them
(:func:`pmsid.quantize.rq_kmeans.fuse_modalities`), so the two tokenizers
quantize the same vectors.
"""

from __future__ import annotations

import logging
import os
import time
import warnings

import numpy as np
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning

from pmsid.data.contracts import ID_QUALITY, check_finite, write_semantic_ids, write_table
from pmsid.quantize.quality import WHOLE_ID, id_quality
from pmsid.quantize.rq_kmeans import _read_aligned_features, add_dedup_level, fuse_modalities

log = logging.getLogger(__name__)

DEFAULT_N_INIT = 10


def fine_allocation(sizes: np.ndarray, fine_size: int, distinct: np.ndarray | None = None) -> np.ndarray:
    """Fine clusters per coarse cluster: proportional to ``sizes``, each at least one.

    ``sizes (C,)`` items per coarse cluster (all >= 1), ``fine_size >= C``
    the total; ``distinct (C,)`` caps each share at the cluster's number of
    distinct rows (a k-means cannot make more clusters than that), and the
    total then falls short of ``fine_size`` by what the caps removed.
    Largest remainder rounding; ties to the lower cluster index.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if sizes.ndim != 1 or len(sizes) == 0 or (sizes < 1).any():
        raise ValueError(f"sizes must be a non-empty vector of positive cluster sizes, got {sizes}")
    if fine_size < len(sizes):
        raise ValueError(f"fine_size ({fine_size}) must be >= the number of coarse clusters ({len(sizes)})")
    cap = sizes if distinct is None else np.minimum(sizes, np.asarray(distinct, dtype=np.int64))
    # One each, then the remaining fine_size - C shared in proportion to size.
    share = (fine_size - len(sizes)) * sizes / sizes.sum()
    alloc = 1 + np.floor(share).astype(np.int64)
    left = fine_size - int(alloc.sum())
    order = np.lexsort((np.arange(len(sizes)), -(share - np.floor(share))))
    alloc[order[:left]] += 1
    return np.minimum(alloc, cap)


class HierarchicalKMeans:
    """Coarse k-means, then a k-means inside every coarse cluster (module docstring).

    After :meth:`fit`: ``coarse_centroids (C, dim)``, ``fine_centroids (F,
    dim)``, ``parent (F,)`` (the coarse cluster of each fine cluster),
    ``coarse_labels_ (N,)`` and ``fine_labels_ (N,)`` of the fitted rows.
    ``C`` may fall below ``coarse_size`` (and ``F`` below ``fine_size``) when
    the data have fewer distinct rows; the quality table reports utilization
    against the configured sizes.
    """

    def __init__(self, coarse_size: int, fine_size: int, seed: int | None = 0, n_init: int = DEFAULT_N_INIT):
        if coarse_size < 2:
            raise ValueError(f"coarse_size must be >= 2 (one coarse cluster retrieves everything); got {coarse_size}")
        if fine_size < coarse_size:
            raise ValueError(
                f"fine_size ({fine_size}) must be >= coarse_size ({coarse_size}): every coarse cluster "
                "holds at least one fine cluster"
            )
        if n_init < 1:
            raise ValueError(f"n_init must be >= 1; got {n_init}")
        self.coarse_size, self.fine_size = coarse_size, fine_size
        self.seed, self.n_init = seed, n_init

    def _kmeans(self, X: np.ndarray, k: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
        """Labels and centroids of a k-means with ``k`` clusters (seed ``seed + offset``)."""
        if k == 1:
            return np.zeros(len(X), np.int64), X.mean(axis=0, keepdims=True)
        km = KMeans(n_clusters=k, n_init=self.n_init, random_state=None if self.seed is None else self.seed + offset)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # near-identical rows: fewer clusters used
            labels = km.fit_predict(X)
        return labels.astype(np.int64), km.cluster_centers_.astype(np.float64)

    def fit(self, X: np.ndarray) -> HierarchicalKMeans:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or len(X) == 0:
            raise ValueError(f"HierarchicalKMeans.fit expects a non-empty (n_items, dim) matrix, got {X.shape}")
        check_finite(X, "HierarchicalKMeans.fit")
        n_distinct = len(np.unique(X, axis=0))
        k = min(self.coarse_size, n_distinct)
        if k < self.coarse_size:
            log.warning("only %d distinct rows for %d coarse clusters; clipping to %d", n_distinct, self.coarse_size, k)
        coarse, self.coarse_centroids = self._kmeans(X, k, 0)
        # Renumber coarse clusters densely (k-means may leave one empty).
        used, coarse = np.unique(coarse, return_inverse=True)
        self.coarse_centroids = self.coarse_centroids[used]
        sizes = np.bincount(coarse)
        distinct = [len(np.unique(X[coarse == c], axis=0)) for c in range(len(sizes))]
        alloc = fine_allocation(sizes, max(self.fine_size, len(sizes)), distinct)
        fine = np.empty(len(X), np.int64)
        centroids, parent = [], []
        for c in range(len(sizes)):
            rows = np.flatnonzero(coarse == c)
            labels, cents = self._kmeans(X[rows], int(alloc[c]), 1 + c)
            used, labels = np.unique(labels, return_inverse=True)
            fine[rows] = len(parent) + labels
            centroids.append(cents[used])
            parent.extend([c] * len(used))
        self.fine_centroids = np.concatenate(centroids)
        self.parent = np.asarray(parent, np.int64)
        self.coarse_labels_, self.fine_labels_ = coarse, fine
        return self

    def codes(self) -> np.ndarray:
        """The fitted items' IDs ``(N, 3)``: coarse, fine, dedup."""
        tokens = np.stack([self.coarse_labels_, self.fine_labels_], axis=1)
        return add_dedup_level(tokens)


def tokenize_hierarchical(
    feature_paths: list[str],
    out_ids: str | os.PathLike,
    out_quality: str | os.PathLike,
    coarse_size: int,
    fine_size: int,
    seed: int | None,
    weights: list[float] | None = None,
    n_init: int = DEFAULT_N_INIT,
) -> None:
    """The ``hkmeans_ids`` stage: features -> ``(coarse, fine, dedup)`` IDs and their quality.

    Writes ``out_ids`` (the ids contract; metadata: sizes, seed, each fine
    cluster's ``parent``, the reconstruction error of each level) and
    ``out_quality`` (ID_QUALITY: collisions of the ``(coarse, fine)`` ID,
    and utilization and entropy of level 0 against ``coarse_size`` and of
    level 1 against ``fine_size``).
    """
    start = time.perf_counter()
    item_idx, matrices = _read_aligned_features(feature_paths)
    fused = fuse_modalities(matrices, weights)
    model = HierarchicalKMeans(coarse_size, fine_size, seed=seed, n_init=n_init).fit(fused)
    ids = model.codes()
    quality = id_quality(ids[:, :2], ids, [coarse_size, fine_size])
    figures = {(m, lvl): v for m, lvl, v in quality.itertuples(index=False)}
    errors = [
        float(((fused - model.coarse_centroids[model.coarse_labels_]) ** 2).sum(axis=1).mean()),
        float(((fused - model.fine_centroids[model.fine_labels_]) ** 2).sum(axis=1).mean()),
    ]
    metadata = {
        "tokenizer": "hkmeans",
        "coarse_size": coarse_size,
        "fine_size": fine_size,
        "coarse_clusters": len(model.coarse_centroids),
        "fine_clusters": len(model.parent),
        "parent": model.parent.tolist(),
        "seed": seed,
        "n_init": n_init,
        "modalities": [os.path.basename(str(p)) for p in feature_paths],
        "weights": weights,
        "level_errors": errors,
        "max_dedup_index": int(ids[:, -1].max()),
    }
    write_semantic_ids(out_ids, item_idx, ids, metadata)
    write_table(quality, out_quality, ID_QUALITY)
    log.info(
        "%d items -> %d coarse / %d fine clusters in %.1f s: collision rate %.4f, max dedup index %d, "
        "utilization coarse %.3f fine %.3f, reconstruction error coarse %.4f fine %.4f",
        len(ids),
        len(model.coarse_centroids),
        len(model.parent),
        time.perf_counter() - start,
        figures[("collision_rate", WHOLE_ID)],
        int(ids[:, -1].max()),
        figures[("utilization", 0)],
        figures[("utilization", 1)],
        *errors,
    )
