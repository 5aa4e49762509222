"""Optional reduction of extracted features to fewer dimensions (stage ``reduce_features``).

LLaMA-7B text features are 4096-d; the quantizers and PMAT's projections
work on far fewer. Two methods:

- ``pca``: scikit-learn PCA (centred, not whitened), fitted on all items;
  the metadata records the share of the variance kept.
- ``random``: a fixed Gaussian random projection (scikit-learn's
  GaussianRandomProjection, entries N(0, 1/dim)), which keeps pairwise
  distances approximately (Johnson-Lindenstrauss) without fitting anything.

Both are deterministic for a given ``seed``.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from pmsid.data.contracts import read_features, read_metadata, write_features

log = logging.getLogger("pmsid.features.reduce")

METHODS = ("pca", "random")


def reduce_matrix(matrix: np.ndarray, dim: int, method: str = "pca", seed: int = 0) -> tuple[np.ndarray, dict]:
    """(n, d) -> (n, dim) float32, plus what the method reports (explained variance for PCA)."""
    n, d = matrix.shape
    if method not in METHODS:
        raise ValueError(f"reduce_features: unknown method '{method}'; choose one of {METHODS}")
    if not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"reduce_features: dim must be a positive integer, got {dim!r}")
    if dim > d or dim > n:
        raise ValueError(
            f"reduce_features: cannot reduce to dim {dim}: the input has dim {d} and {n} items, and the "
            f"output dim must be at most both; lower features.reduce.dim to <= {min(d, n)}"
        )
    if method == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=dim, whiten=False, random_state=seed)
        out = pca.fit_transform(matrix)  # float32 in, float32 out: no 2x copy of a large matrix
        info = {
            "explained_variance": float(pca.explained_variance_ratio_.sum()),
            "explained_variance_ratio": [float(v) for v in pca.explained_variance_ratio_],
        }
    else:
        from sklearn.random_projection import GaussianRandomProjection

        out = GaussianRandomProjection(n_components=dim, random_state=seed).fit_transform(matrix)
        info = {}
    return out.astype(np.float32), info


def reduce_features(
    in_path: str | os.PathLike, out_path: str | os.PathLike, dim: int, method: str = "pca", seed: int = 0
) -> None:
    """Reduce the feature file ``in_path`` to ``dim`` dimensions and write ``out_path``.

    The output keeps the item rows; its metadata holds the source file's
    metadata under ``source`` and adds ``method``, ``dim``, ``seed`` and, for
    PCA, ``explained_variance`` (the share of the total variance kept) and the
    per-component ratios.
    """
    item_idx, matrix = read_features(in_path)
    source = read_metadata(in_path)
    out, info = reduce_matrix(matrix, dim, method, seed)
    log.info(
        "reduced %s: %d items, dim %d -> %d by %s%s",
        in_path,
        len(matrix),
        matrix.shape[1],
        dim,
        method,
        f", {info['explained_variance']:.1%} of the variance kept" if "explained_variance" in info else "",
    )
    write_features(
        out_path,
        item_idx,
        out,
        stage="reduce_features",
        metadata={
            "source": source,
            "source_path": str(in_path),
            "method": method,
            "dim": int(dim),
            "seed": seed,
            "n_items": int(len(out)),
            **info,
        },
    )
