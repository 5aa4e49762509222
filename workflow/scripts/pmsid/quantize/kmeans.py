"""k-means pseudo-labels per modality (docs/METHOD.md section 3: K = 512 per modality, as in MACRec).

Items in the same cluster of a modality's features count as positives for
the contrastive losses. Rows are L2-normalized first, so clusters group
items by the direction of their embedding (cosine similarity), the geometry
sentence and image encoders are trained for.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.preprocessing import normalize

from pmsid.data.contracts import PSEUDOLABELS, read_features, write_table

log = logging.getLogger("pmsid.quantize.kmeans")

# k-means++ restarts; the run with the lowest inertia wins. A few restarts
# cost little next to encoding and make the labels less dependent on one init.
DEFAULT_N_INIT = 3


def _fit(matrix: np.ndarray, n_clusters: int, seed: int | None, n_init: int) -> tuple[np.ndarray, float, int]:
    """k-means on L2-normalized rows; returns ``(labels, inertia, clusters used)``."""
    matrix = np.asarray(matrix, dtype=np.float32)
    if matrix.ndim != 2 or len(matrix) == 0:
        raise ValueError(f"k-means needs a non-empty (n_items, dim) matrix, got shape {matrix.shape}")
    if n_clusters < 1:
        raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
    # All-zero rows (e.g. items without an image under the 'zeros' policy) stay
    # zero: sklearn's normalize leaves them as they are, and they form one point.
    unit = normalize(matrix, norm="l2")
    n_distinct = len(np.unique(unit, axis=0))
    k = n_clusters
    if k > n_distinct:
        log.warning(
            "n_clusters %d exceeds the %d distinct (normalized) feature rows; clipped to %d",
            n_clusters,
            n_distinct,
            n_distinct,
        )
        k = n_distinct
    km = KMeans(n_clusters=k, n_init=n_init, random_state=seed)
    labels = km.fit_predict(unit)
    return labels.astype(np.int32), float(km.inertia_), k


def kmeans_labels(matrix: np.ndarray, n_clusters: int, seed: int | None, n_init: int = DEFAULT_N_INIT) -> np.ndarray:
    """Cluster the rows of ``matrix`` ``(n_items, dim)``; returns int32 labels ``(n_items,)``.

    scikit-learn KMeans (k-means++ init, ``n_init`` restarts) on the
    L2-normalized rows, deterministic for a given ``seed``. When
    ``n_clusters`` exceeds the number of distinct rows it is clipped to that
    number, with a warning.
    """
    labels, _, _ = _fit(matrix, n_clusters, seed, n_init)
    return labels


def pseudolabels_for(
    feature_path: str | os.PathLike,
    out_path: str | os.PathLike,
    n_clusters: int,
    seed: int | None,
    n_init: int = DEFAULT_N_INIT,
) -> None:
    """Cluster one modality's feature file and write its pseudo-labels (contract PSEUDOLABELS).

    The metadata records the requested and used number of clusters, the
    seed (the run's seed in the workflow: one clustering per seed), the
    inertia and the cluster sizes (min / median / max), so a degenerate
    clustering shows in the file itself.
    """
    item_idx, matrix = read_features(feature_path)
    labels, inertia, k = _fit(matrix, n_clusters, seed, n_init)
    sizes = np.bincount(labels, minlength=k)
    log.info(
        "%s: %d items in %d clusters (asked %d), inertia %.4g, cluster size min %d / median %g / max %d",
        feature_path,
        len(labels),
        k,
        n_clusters,
        inertia,
        sizes.min(),
        np.median(sizes),
        sizes.max(),
    )
    write_table(
        pd.DataFrame({"item_idx": item_idx.astype(np.int32), "label": labels}),
        out_path,
        PSEUDOLABELS,
        metadata={
            "n_clusters": int(k),
            "n_clusters_requested": int(n_clusters),
            "seed": seed,
            "n_init": int(n_init),
            "inertia": inertia,
            "cluster_size_min": int(sizes.min()),
            "cluster_size_median": float(np.median(sizes)),
            "cluster_size_max": int(sizes.max()),
        },
    )
