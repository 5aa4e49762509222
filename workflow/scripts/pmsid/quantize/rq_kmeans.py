"""RQ-KMeans semantic IDs (docs/METHOD.md section 3).

An item's semantic ID is a short tuple of tokens. Residual k-means builds it
coarse to fine: level 0 clusters the fused item features, every later level
clusters what the previous levels left unexplained (the residual), and one
extra dedup token (TIGER) separates items that still share all L tokens.

    r_0 = x                                   fused item features (Fusion eq.)
    c_l = argmin_k || r_l - C_l[k] ||^2       token at level l = 0..L-1
    r_{l+1} = r_l - C_l[c_l]                  residual passed to level l+1
    x_hat = sum_l C_l[c_l]                    reconstruction

    ID = (c_0, ..., c_{L-1}, d)               d = dedup token, 0 for the first
                                              item with a given prefix, 1 for
                                              the second, ... (by item index)

GRID found RQ-KMeans beats RQ-VAE as a tokenizer, and it needs no training
loop: scikit-learn's KMeans learns each codebook.
"""

from __future__ import annotations

import logging
import os
import time
import warnings

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import pairwise_distances_argmin

from pmsid.data.contracts import ID_QUALITY, check_finite, read_features, write_semantic_ids, write_table
from pmsid.quantize.quality import id_quality

log = logging.getLogger(__name__)

# Several k-means++ restarts per level make the codebook depend less on the
# seed; scikit-learn's classic default. Tokenizing ~10^4 items stays seconds.
DEFAULT_N_INIT = 10


def fuse_modalities(matrices: list[np.ndarray], weights: list[float] | None = None) -> np.ndarray:
    """Fuse per-modality item features into one matrix (global fusion).

    Fusion equation, for item i and modalities m = 1..M with weights w_m:

        x_i = concat_m( sqrt(w_m) * e_{i,m} / ||e_{i,m}||_2 ),   sum_m w_m = 1

    Each modality is L2-normalized first so that no encoder dominates by its
    scale or dimension; the sqrt makes the weights act on squared distances
    and inner products: <x_i, x_j> = sum_m w_m cos(e_{i,m}, e_{j,m}), and
    every fused row has unit norm. ``weights=None`` gives every modality
    1 / M; given weights must be non-negative and are rescaled to sum to 1.
    A row that is all zeros (an encoder's placeholder for a missing input)
    stays zero in its block instead of becoming NaN.

    Returns a float64 matrix of shape (n_items, sum_m dim_m).
    """
    if not matrices:
        raise ValueError("fuse_modalities needs at least one feature matrix; got none")
    n_items = len(matrices[0])
    for m, mat in enumerate(matrices):
        if mat.ndim != 2 or len(mat) != n_items:
            raise ValueError(
                f"modality {m}: expected an ({n_items}, dim) matrix like modality 0, got {mat.shape}; "
                "every modality must list the same items in the same order"
            )
    if weights is None:
        weights = [1.0] * len(matrices)
    w = np.asarray(weights, dtype=np.float64)
    if len(w) != len(matrices):
        raise ValueError(f"got {len(w)} fusion weight(s) for {len(matrices)} modalities; give one weight per modality")
    if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"fusion weights must be finite, non-negative and not all zero; got {list(weights)}")
    w = w / w.sum()

    blocks = []
    for m, (mat, w_m) in enumerate(zip(matrices, w)):
        mat = np.asarray(mat, dtype=np.float64)
        check_finite(mat, f"fuse_modalities (modality {m})")
        norms = np.linalg.norm(mat, axis=1, keepdims=True)
        n_zero = int((norms == 0).sum())
        if n_zero:
            log.warning("modality %d: %d all-zero row(s) stay zero after normalization", m, n_zero)
        blocks.append(np.sqrt(w_m) * mat / np.where(norms == 0, 1.0, norms))
    return np.concatenate(blocks, axis=1)


class RQKMeans:
    """Residual k-means quantizer: ``levels`` codebooks of ``codes`` centroids.

    ``fit`` learns ``centroids[l]`` (K_l, dim) on the level-l residuals;
    ``encode`` maps rows to (N, levels) int64 tokens; ``decode`` sums the
    chosen centroids. K_l equals ``codes`` unless the residuals at level l
    have fewer distinct rows, in which case it is clipped (and logged): a
    k-means with more clusters than points has no answer.

    Level l's k-means is seeded with ``seed + l``, so a model with more levels
    shares its first levels with a model with fewer, and the reconstruction
    error can only fall as levels are added.
    """

    def __init__(
        self, levels: int, codes: int, seed: int | None = 0, n_init: int = DEFAULT_N_INIT, max_iter: int = 300
    ):
        if levels < 1:
            raise ValueError(f"RQKMeans needs levels >= 1; got {levels}")
        if codes < 2:
            raise ValueError(f"RQKMeans needs codes >= 2 per codebook (1 code carries no information); got {codes}")
        if n_init < 1:
            raise ValueError(f"n_init must be >= 1; got {n_init}")
        self.levels = levels
        self.codes = codes
        self.seed = seed
        self.n_init = n_init
        self.max_iter = max_iter
        self.centroids: list[np.ndarray] = []  # one (K_l, dim) float64 array per level
        self.level_errors: list[float] = []  # training reconstruction error after each level

    def fit(self, X: np.ndarray) -> RQKMeans:
        """Learn one codebook per level on the residuals of ``X`` (N, dim)."""
        residual = np.array(X, dtype=np.float64)  # a copy: updated in place below
        if residual.ndim != 2 or len(residual) == 0:
            raise ValueError(f"RQKMeans.fit expects a non-empty (n_items, dim) matrix, got shape {residual.shape}")
        check_finite(residual, "RQKMeans.fit")
        self.centroids, self.level_errors = [], []
        for level in range(self.levels):
            n_distinct = len(np.unique(residual, axis=0))
            k = min(self.codes, n_distinct)
            if k < self.codes:
                log.warning(
                    "level %d: only %d distinct residual row(s) for %d codes; clipping the codebook to %d",
                    level,
                    n_distinct,
                    self.codes,
                    k,
                )
            kmeans = KMeans(
                n_clusters=k,
                n_init=self.n_init,
                max_iter=self.max_iter,
                random_state=None if self.seed is None else self.seed + level,
            )
            with warnings.catch_warnings():
                # Near-identical rows can still leave fewer clusters than k; the
                # codebook is then only partly used, which quality.py reports.
                warnings.simplefilter("ignore", ConvergenceWarning)
                kmeans.fit(residual)
            centroids = kmeans.cluster_centers_.astype(np.float64)
            # Assign with the same rule as encode(), so fit and encode agree.
            tokens = pairwise_distances_argmin(residual, centroids)
            residual -= centroids[tokens]
            self.centroids.append(centroids)
            self.level_errors.append(float((residual**2).sum(axis=1).mean()))
            log.info(
                "level %d: %d codes, %d used, reconstruction error %.4f",
                level,
                k,
                len(np.unique(tokens)),
                self.level_errors[-1],
            )
        return self

    def _check_fitted(self) -> None:
        if not self.centroids:
            raise RuntimeError("RQKMeans is not fitted; call fit(X) first")

    def encode(self, X: np.ndarray) -> np.ndarray:
        """Tokens (N, levels) int64: the nearest centroid of each level's residual.

        Ties go to the lowest code index, so encoding is deterministic.
        """
        self._check_fitted()
        residual = np.array(X, dtype=np.float64)
        dim = self.centroids[0].shape[1]
        if residual.ndim != 2 or residual.shape[1] != dim:
            raise ValueError(f"RQKMeans.encode expects (n_items, {dim}) like the fitted data, got {residual.shape}")
        tokens = np.empty((len(residual), self.levels), dtype=np.int64)
        for level, centroids in enumerate(self.centroids):
            tokens[:, level] = pairwise_distances_argmin(residual, centroids)
            residual -= centroids[tokens[:, level]]
        return tokens

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Reconstruction (N, dim): the sum of each level's chosen centroid.

        A dedup column (levels + 1 tokens) is ignored: it is not a codebook.
        """
        self._check_fitted()
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[1] not in (self.levels, self.levels + 1):
            raise ValueError(f"RQKMeans.decode expects (n_items, {self.levels}) tokens, got {codes.shape}")
        out = np.zeros((len(codes), self.centroids[0].shape[1]))
        for level, centroids in enumerate(self.centroids):
            if codes[:, level].min(initial=0) < 0 or codes[:, level].max(initial=0) >= len(centroids):
                raise ValueError(f"level {level}: tokens must lie in 0..{len(centroids) - 1}")
            out += centroids[codes[:, level]]
        return out

    def reconstruction_error(self, X: np.ndarray) -> float:
        """Mean over items of the squared error ||x - x_hat||^2.

        With fused features (unit-norm rows) this is also the fraction of
        each item's squared norm that the ID fails to explain.
        """
        X = np.asarray(X, dtype=np.float64)
        return float(((X - self.decode(self.encode(X))) ** 2).sum(axis=1).mean())


def add_dedup_level(codes: np.ndarray) -> np.ndarray:
    """Append TIGER's dedup token: (N, L) -> (N, L + 1).

    Items sharing the same L-token prefix get 0, 1, 2, ... in row order (row
    order is item index order in the pipeline), so every full ID is unique
    and the result does not depend on any random state. An item whose prefix
    is unique gets 0. The largest dedup token is the largest collision group
    size minus 1; the generator's vocabulary must cover it.
    """
    codes = np.asarray(codes, dtype=np.int64)
    if codes.ndim != 2 or codes.shape[1] < 1:
        raise ValueError(f"add_dedup_level expects an (n_items, levels) token matrix, got shape {codes.shape}")
    frame = pd.DataFrame(codes)
    # cumcount numbers the rows of each group in order of appearance.
    dedup = frame.groupby(list(frame.columns), sort=False).cumcount().to_numpy(dtype=np.int64)
    return np.concatenate([codes, dedup[:, None]], axis=1)


def _read_aligned_features(feature_paths: list[str]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Read every feature file and check they list the same items."""
    if not feature_paths:
        raise ValueError("tokenize needs at least one feature file; got none")
    item_idx, matrices = None, []
    for path in feature_paths:
        idx, matrix = read_features(path)
        if len(np.unique(idx)) != len(idx):
            raise ValueError(f"{path}: item_idx repeats items; a feature file has one row per item")
        if item_idx is None:
            item_idx = idx
        elif not np.array_equal(idx, item_idx):
            only_here = np.setdiff1d(idx, item_idx)
            only_first = np.setdiff1d(item_idx, idx)
            raise ValueError(
                f"{path} lists {len(idx)} items, {feature_paths[0]} lists {len(item_idx)}: "
                f"{len(only_here)} only in the former (first {only_here[:5].tolist()}), "
                f"{len(only_first)} only in the latter (first {only_first[:5].tolist()}); "
                "every modality needs one row per item, so rerun the feature stage on the same items.parquet"
            )
        matrices.append(matrix)
    return item_idx, matrices


def tokenize(
    feature_paths: list[str],
    out_ids: str | os.PathLike,
    out_quality: str | os.PathLike,
    levels: int,
    codes: int,
    seed: int | None,
    weights: list[float] | None = None,
    n_init: int = DEFAULT_N_INIT,
) -> None:
    """The ``rqkmeans_ids`` stage: features -> RQ-KMeans semantic IDs.

    Reads each modality's features (all must list the same items), fuses
    them (Fusion eq.), fits ``levels`` x ``codes`` residual k-means, appends
    the dedup token and writes ``out_ids`` (ids contract, with levels, codes,
    seed, reconstruction error and max dedup index as metadata) and
    ``out_quality`` (ID_QUALITY contract, see :func:`id_quality`). The
    workflow passes the run's seed: one tokenizer per seed.
    """
    start = time.perf_counter()
    item_idx, matrices = _read_aligned_features(feature_paths)
    fused = fuse_modalities(matrices, weights)
    log.info(
        "fused %d modalities (%s) into %d items x %d dims",
        len(matrices),
        ", ".join(os.path.basename(str(p)) for p in feature_paths),
        *fused.shape,
    )

    model = RQKMeans(levels, codes, seed=seed, n_init=n_init).fit(fused)
    tokens = model.encode(fused)
    ids = add_dedup_level(tokens)
    quality = id_quality(tokens, ids, codes)
    figures = {(m, lvl): v for m, lvl, v in quality.itertuples(index=False)}
    if figures[("uniqueness", -1)] != 1.0:
        # add_dedup_level guarantees this; reaching here is a bug, not bad data.
        raise RuntimeError("semantic IDs are not unique after the dedup token; this is a bug in add_dedup_level")

    error = model.level_errors[-1]
    max_dedup = int(ids[:, -1].max())
    metadata = {
        "tokenizer": "rqkmeans",
        "levels": levels,
        "codes": codes,
        "codebook_sizes": [len(c) for c in model.centroids],
        "seed": seed,
        "n_init": n_init,
        "modalities": [os.path.basename(str(p)) for p in feature_paths],
        "weights": weights,
        "reconstruction_error": error,
        "level_errors": model.level_errors,
        "max_dedup_index": max_dedup,
    }
    write_semantic_ids(out_ids, item_idx, ids, metadata)
    write_table(quality, out_quality, ID_QUALITY)
    log.info(
        "%d items -> %d x %d IDs in %.1fs: collision rate %.4f, uniqueness before dedup %.4f, "
        "max dedup index %d, reconstruction error %.4f, utilization per level %s",
        len(ids),
        levels,
        codes,
        time.perf_counter() - start,
        figures[("collision_rate", -1)],
        figures[("uniqueness_before_dedup", -1)],
        max_dedup,
        error,
        [round(figures[("utilization", lvl)], 3) for lvl in range(levels)],
    )
