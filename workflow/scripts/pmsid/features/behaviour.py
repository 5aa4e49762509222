"""Behaviour features: item embeddings from training-split co-occurrence.

PMAT needs M >= 2 modalities per item (docs/METHOD.md section 4), and MovieLens
has text only (section 2.2). This module derives a second modality from
behaviour, and names it ``behaviour`` everywhere (file, stage, metadata), so
no table mistakes it for content:

1. :func:`cooccurrence_matrix`: item-item co-occurrence counts within a
   sliding window over each user's chronological *training* sequence;
2. PPMI (positive pointwise mutual information) of those counts;
3. truncated SVD of the PPMI matrix (scipy ARPACK, see
   :func:`truncated_svd`), embeddings ``U * sqrt(S)`` (the
   symmetric split of the singular values that Levy, Goldberg & Dagan 2015,
   "Improving distributional similarity with lessons learned from word
   embeddings", found to work better than ``U * S``).

Leakage. Only rows with ``split == "train"`` of interactions.parquet are
read; the validation and test items of every user (the second-to-last and
last, docs/METHOD.md section 2) never enter the counts, so the features are
bit-for-bit the same whatever those held-out items are. The tests check this.

Items without any training co-occurrence (their only interactions are
held-out ones, or they were a user's only training item) have an all-zero
PPMI row and hence a zero embedding. A zero vector has no direction, which
breaks cosine-based code downstream (L2 normalization in the tokenizer,
cosine pseudo-labels), so such items get the mean embedding of the other
items, and their number is logged and recorded in the file's metadata.

Seeds. Nothing here is random: ARPACK's start vector is drawn from
:data:`START_SEED`, and the solution it converges to does not depend on it
(any start vector gives the same features to ~1e-12, column signs fixed;
tests/test_behaviour.py). So the stage runs once per dataset, every run
seed shares its file, and the config has no seed for it.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.linalg import svds
from sklearn.utils.extmath import svd_flip

from pmsid.data.contracts import INTERACTIONS, ITEMS, read_table, write_features

log = logging.getLogger("pmsid.features.behaviour")

STAGE = "behaviour_features"
MODALITY = "behaviour"
SOURCE = "training-split co-occurrence, PPMI + truncated SVD"
START_SEED = 0  # ARPACK's start vector (the features do not depend on it)


def _training_sequences(interactions_df: pd.DataFrame, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Training rows only, in (user, chronological) order.

    Returns ``(users (T,), items (T,))`` int64, sorted by ``user_idx`` then
    ``position`` (the protocol's chronological index within a user).
    """
    cols = ["user_idx", "item_idx", "position", "split"]
    missing = [c for c in cols if c not in interactions_df.columns]
    if missing:
        raise ValueError(
            f"{STAGE}: interactions lack column(s) {missing}; found {list(interactions_df.columns)} "
            "(expected the INTERACTIONS contract of results/data/{{dataset}}/interactions.parquet)"
        )
    if n_items < 1:
        raise ValueError(f"{STAGE}: n_items must be >= 1, got {n_items}")
    # The one line that keeps valid/test interactions out of the item features.
    train = interactions_df.loc[interactions_df["split"] == "train", ["user_idx", "item_idx", "position"]]
    train = train.sort_values(["user_idx", "position"], kind="stable")
    users = train["user_idx"].to_numpy(np.int64)
    items = train["item_idx"].to_numpy(np.int64)
    if len(items) and (items.min() < 0 or items.max() >= n_items):
        raise ValueError(
            f"{STAGE}: training item_idx range [{items.min()}, {items.max()}] exceeds the catalogue "
            f"0..{n_items - 1}; are interactions.parquet and items.parquet from the same dataset?"
        )
    return users, items


def cooccurrence_matrix(interactions_df: pd.DataFrame, n_items: int, window: int) -> sp.csr_matrix:
    """Item-item co-occurrence counts from the training split; ``(n_items, n_items)`` CSR, float64.

    Each user's training items are taken in chronological order (by
    ``position``); every pair of items at most ``window`` positions apart
    (offsets ``1 .. window``) adds one to both ``C[a, b]`` and ``C[b, a]``.
    So ``window = 1`` counts consecutive items only, and a ``window`` at
    least the longest training sequence counts every pair in a user's
    history. The diagonal is zero (an item does not co-occur with itself,
    even if a user consumed it twice). Rows with ``split != "train"`` are
    ignored, so validation and test items never enter the counts.

    ``window`` comes from the config (``features.behaviour.window``); it
    trades local, sequential signal (small) against long-range taste (large).
    """
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"{STAGE}: window must be an integer >= 1 (positions apart), got {window!r}")
    users, items = _training_sequences(interactions_df, n_items)
    rows, cols = [], []
    # Pairs at offset d: the item at i and the one at i + d, when both belong
    # to the same user. One vectorized pass per offset, O(T * window) in all.
    for d in range(1, int(window) + 1):
        if d >= len(items):
            break
        same_user = users[:-d] == users[d:]
        a, b = items[:-d][same_user], items[d:][same_user]
        keep = a != b  # zero diagonal
        rows.append(a[keep])
        cols.append(b[keep])
    a = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    b = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    data = np.ones(2 * len(a), dtype=np.float64)
    # coo -> csr sums duplicate (row, col) entries: those are the counts.
    counts = sp.coo_matrix((data, (np.concatenate([a, b]), np.concatenate([b, a]))), shape=(n_items, n_items))
    counts = counts.tocsr()
    counts.sum_duplicates()
    return counts


def ppmi(counts: sp.spmatrix) -> sp.csr_matrix:
    """Positive pointwise mutual information of a symmetric count matrix.

    ``PPMI[a, b] = max(0, log(C[a, b] * total / (C[a, :].sum() * C[:, b].sum())))``
    on the non-zero counts; zero counts stay zero (PMI of -inf, clipped).
    """
    counts = sp.csr_matrix(counts, dtype=np.float64)
    counts.eliminate_zeros()
    total = counts.sum()
    if total <= 0:
        return sp.csr_matrix(counts.shape, dtype=np.float64)
    row_sum = np.asarray(counts.sum(axis=1)).ravel()
    col_sum = np.asarray(counts.sum(axis=0)).ravel()
    coo = counts.tocoo()
    pmi = np.log(coo.data * total / (row_sum[coo.row] * col_sum[coo.col]))
    keep = pmi > 0
    out = sp.csr_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=counts.shape)
    return out


def truncated_svd(matrix: sp.spmatrix, dim: int, seed: int | None = START_SEED) -> tuple[np.ndarray, np.ndarray]:
    """The ``dim`` largest singular triplets of a sparse matrix; returns ``(U (n, dim), S (dim,))``.

    scipy's ARPACK ``svds``, converged to machine precision, not the
    randomized solver behind sklearn's TruncatedSVD: on MovieLens-100K's
    PPMI matrix the trailing singular values near dim 64 are close together
    (39.54, 39.47, 39.41, ...), and the randomized solver with its default 7
    power iterations leaves the subspace far from converged (the embeddings'
    Gram matrix off by 20%, and different per seed), while ARPACK matches a
    dense SVD to 1e-14 in the same time (0.2 s). The seed draws ARPACK's
    start vector, which the converged result does not depend on (beyond
    exactly tied singular values); signs are fixed with sklearn's
    ``svd_flip`` (largest entry of each column of U positive), so the output
    is the same for every seed.
    """
    rng = np.random.default_rng(seed)
    v0 = rng.uniform(-1.0, 1.0, size=min(matrix.shape))
    u, s, vt = svds(matrix.astype(np.float64), k=dim, v0=v0)
    order = np.argsort(-s, kind="stable")  # svds returns ascending singular values
    u, s, vt = u[:, order], s[order], vt[order]
    u, _ = svd_flip(u, vt, u_based_decision=True)
    return u, s


def _embeddings_with_stats(
    interactions_df: pd.DataFrame, n_items: int, dim: int, window: int, seed: int | None
) -> tuple[np.ndarray, dict]:
    if n_items < 2:
        raise ValueError(f"{STAGE}: behaviour embeddings need at least 2 items, got n_items={n_items}")
    if dim < 1:
        raise ValueError(f"{STAGE}: dim must be >= 1, got {dim}")
    if dim > n_items - 1:
        log.warning(
            "behaviour dim %d exceeds n_items - 1 = %d (a rank bound of the %d x %d PPMI matrix); clipped to %d",
            dim,
            n_items - 1,
            n_items,
            n_items,
            n_items - 1,
        )
        dim = n_items - 1

    counts = cooccurrence_matrix(interactions_df, n_items, window)
    no_cooc = np.asarray(counts.sum(axis=1)).ravel() == 0
    if no_cooc.all():
        raise ValueError(
            f"{STAGE}: no two training items co-occur within window {window} for any user, so there is "
            "no behaviour signal; check that interactions.parquet has split == 'train' rows with users of "
            ">= 2 training items"
        )
    weights = ppmi(counts)
    # A row can have counts and still no positive PMI (every partner is more
    # popular than chance explains); its SVD row is zero too.
    empty = np.diff(weights.indptr) == 0

    u, s = truncated_svd(weights, dim, seed)
    emb = u * np.sqrt(np.clip(s, 0.0, None))[None, :]  # (n_items, dim); clip: ARPACK may give -0.0

    if empty.any():
        emb[empty] = emb[~empty].mean(axis=0)
    stats = {
        "dim": int(dim),
        "n_items_without_training_cooccurrence": int(no_cooc.sum()),
        "n_items_mean_filled": int(empty.sum()),
        "n_cooccurrence_pairs": int(counts.nnz // 2),
        "cooccurrence_total": float(counts.sum() / 2),
        "ppmi_nnz": int(weights.nnz),
        "top_singular_values": [float(x) for x in s[: min(5, len(s))]],
    }
    if empty.any():
        log.warning(
            "%d item(s) have no training co-occurrence within window %d (%d more have co-occurrences but no "
            "positive PMI); they get the mean behaviour embedding, not a zero vector",
            int(no_cooc.sum()),
            window,
            int(empty.sum() - no_cooc.sum()),
        )
    return emb.astype(np.float32), stats


def behaviour_embeddings(
    interactions_df: pd.DataFrame, n_items: int, dim: int, window: int, seed: int | None = START_SEED
) -> np.ndarray:
    """Behaviour embedding per item: PPMI + truncated SVD of training co-occurrence.

    Returns a float32 matrix ``(n_items, dim)``, row ``i`` = item_idx ``i``:
    ``U * sqrt(S)`` of the rank-``dim`` truncated SVD of the PPMI of
    :func:`cooccurrence_matrix` (training split only, pairs within
    ``window`` positions). ``seed`` draws ARPACK's start vector only:
    :func:`truncated_svd` converges to machine precision, so every seed
    (``None`` too: a fresh start vector) gives the same embeddings to ~1e-12,
    unless singular values tie exactly.

    ``dim`` is clipped to ``n_items - 1`` with a warning. Items with no
    training co-occurrence (all-zero PPMI row) get the mean embedding of the
    other items instead of a zero vector, with a warning giving their number.
    """
    emb, _ = _embeddings_with_stats(interactions_df, n_items, dim, window, seed)
    return emb


def extract_behaviour_features(
    interactions_path: str | os.PathLike,
    items_path: str | os.PathLike,
    out_path: str | os.PathLike,
    dim: int = 64,
    window: int = 5,
) -> None:
    """Write the behaviour feature file ``out_path`` (stage ``behaviour_features``).

    Reads interactions.parquet (INTERACTIONS contract) and items.parquet
    (ITEMS contract, for the catalogue size and its dense item_idx), builds
    :func:`behaviour_embeddings` from the training split, and writes one row
    per item with :func:`~pmsid.data.contracts.write_features`. The metadata
    says it is the ``behaviour`` modality, how it was made, and how many
    items had no training co-occurrence (mean-filled).
    """
    interactions = read_table(interactions_path, INTERACTIONS)
    items = read_table(items_path, ITEMS).sort_values("item_idx", kind="stable")
    item_idx = items["item_idx"].to_numpy()
    n_items = len(item_idx)
    if not np.array_equal(item_idx, np.arange(n_items)):
        raise ValueError(f"{STAGE}: {items_path}: item_idx must be dense 0..N-1 without duplicates (ITEMS contract)")
    splits = interactions["split"].value_counts().to_dict()

    start = time.perf_counter()
    matrix, stats = _embeddings_with_stats(interactions, n_items, dim, window, START_SEED)
    seconds = time.perf_counter() - start
    log.info(
        "behaviour features: %d items x %d dims from %d training interactions (ignored %d valid, %d test), "
        "window %d: %d co-occurring pairs, PPMI nnz %d, top singular values %s, "
        "%d item(s) without training co-occurrence (mean-filled: %d); %.2f s",
        n_items,
        stats["dim"],
        splits.get("train", 0),
        splits.get("valid", 0),
        splits.get("test", 0),
        window,
        stats["n_cooccurrence_pairs"],
        stats["ppmi_nnz"],
        [round(x, 2) for x in stats["top_singular_values"]],
        stats["n_items_without_training_cooccurrence"],
        stats["n_items_mean_filled"],
        seconds,
    )
    write_features(
        out_path,
        item_idx,
        matrix,
        stage=STAGE,
        metadata={
            "modality": MODALITY,
            "source": SOURCE,
            "dim": stats["dim"],
            "window": int(window),
            "n_items": int(n_items),
            "n_items_without_training_cooccurrence": stats["n_items_without_training_cooccurrence"],
            "n_items_mean_filled": stats["n_items_mean_filled"],
            "n_train_interactions": int(splits.get("train", 0)),
            "embedding": "U * sqrt(S)",
        },
    )
