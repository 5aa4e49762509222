"""ID-quality measures of PMAT's personalized IDs (docs/METHOD.md section 4).

Personalized IDs come as P tables ``ids`` (P, N, D) over the same N items
(one per preference prototype, see prototypes.py), D = L codebook levels +
one dedup token. Three measures:

- uniqueness per table (every ID must name one item within its table);
- semantic consistency: are items that share an ID prefix more alike than
  random pairs?
- personalization discrimination: how far apart one item's IDs are across
  tables, and whether that distance grows with the distance of the tables'
  weights (Property 1 of docs/METHOD.md section 4), across prototype pairs
  (:func:`personalization_discrimination`) and across user pairs, each user
  reading items under its own table (:func:`user_personalization`).

Figures come back in the long form of ``contracts.ID_QUALITY`` (metric,
level, value; level -1 = the whole ID, level l = the prefix c_0..c_l), with a
``table`` column where a figure is per table. ID_QUALITY forbids nulls, so a
figure that is undefined (NaN) is left out of a frame and its reason given
in the accompanying dict.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
from scipy.stats import rankdata, spearmanr

from pmsid.quantize.quality import WHOLE_ID, id_quality

# Exact Mantel test (every permutation of the prototypes) up to this many tables: 7! = 5040.
MANTEL_EXACT_MAX_P = 7


def _check_ids(ids: np.ndarray, name: str = "ids", ndim: int = 3) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != ndim or 0 in ids.shape or not np.issubdtype(ids.dtype, np.integer):
        shape = "(P, n_items, id_length)" if ndim == 3 else "(n_items, id_length)"
        raise ValueError(f"{name} must be a non-empty integer {shape} array; got {ids.dtype} {ids.shape}")
    return ids.astype(np.int64)


def _frame(rows: list[tuple], columns: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=columns)
    types = {"level": np.int32, "value": np.float64}
    if "table" in columns:
        types["table"] = np.int32
    return frame.astype(types)


# --- uniqueness ---------------------------------------------------------------------


def table_uniqueness(ids: np.ndarray) -> pd.DataFrame:
    """Uniqueness of every ID table: columns table, metric, level, value.

    For each table p (level -1): ``uniqueness`` = distinct full IDs / N
    (1.0 when the dedup token did its job; the generator needs it),
    ``uniqueness_before_dedup`` = distinct codebook-token IDs (without the
    last, dedup token) / N.
    """
    ids = _check_ids(ids)
    n_items = ids.shape[1]
    rows = []
    for p, table in enumerate(ids):
        rows.append((p, "uniqueness", WHOLE_ID, len(np.unique(table, axis=0)) / n_items))
        rows.append((p, "uniqueness_before_dedup", WHOLE_ID, len(np.unique(table[:, :-1], axis=0)) / n_items))
    return _frame(rows, ["table", "metric", "level", "value"])


def table_id_quality(ids: np.ndarray, codebook_size: int) -> pd.DataFrame:
    """quantize.quality.id_quality of every table (collisions, utilization, entropy, ...).

    Columns table, metric, level, value; the codebook tokens are
    ``ids[..., :-1]`` (the last token is the dedup token).
    """
    ids = _check_ids(ids)
    frames = []
    for p, table in enumerate(ids):
        frame = id_quality(table[:, :-1], table, codebook_size)
        frames.append(frame.assign(table=np.int32(p))[["table", "metric", "level", "value"]])
    return pd.concat(frames, ignore_index=True)


# --- semantic consistency -------------------------------------------------------------


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm; a zero row stays zero (its cosine with anything counts as 0)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


def semantic_consistency(
    ids_table: np.ndarray,
    fused: np.ndarray,
    prefix_len: int,
    n_random_pairs: int | None = 100_000,
    seed: int | None = 0,
) -> dict:
    """Similarity of items that share an ID prefix vs random pairs (docs/METHOD.md section 4).

    With x_i the fused feature of item i (the table's h_i^u), cos(i, j) the
    cosine similarity, and G_g the groups of items whose first ``prefix_len``
    tokens agree:

        shared = mean over unordered pairs {i, j} within a group of cos(i, j)
               = sum_g (||S_g||^2 - sum_{i in g} ||x_i/||x_i|| ||^2) / sum_g n_g (n_g - 1),
                 S_g = sum_{i in g} x_i / ||x_i||

    computed exactly in O(N d) from the group sums, so a large group costs
    no more than a small one (every pair counts once; large groups weigh
    more). ``random`` is the mean cosine of ``n_random_pairs`` uniformly
    drawn pairs i != j (``numpy.random.default_rng(seed)``), or, with
    ``n_random_pairs=None``, the exact mean over all N (N - 1) ordered pairs
    by the same identity with one group. ``ratio = shared / random`` (> 1:
    IDs group similar items) is defined only when random > 0 (cosines of
    centred features average near 0 and a ratio would mean nothing);
    ``gap = shared - random`` always is. Returns a dict with shared,
    random, ratio, gap, n_shared_pairs, prefix_len and ``reason`` (why a
    figure is NaN, else None).
    """
    ids_table = _check_ids(ids_table, "ids_table", ndim=2)
    fused = np.asarray(fused, dtype=np.float64)
    n_items, id_length = ids_table.shape
    if fused.ndim != 2 or len(fused) != n_items:
        raise ValueError(f"fused must be ({n_items}, d), one row per item of ids_table; got {fused.shape}")
    if not np.isfinite(fused).all():
        raise ValueError("fused has non-finite entries")
    if not 1 <= prefix_len <= id_length:
        raise ValueError(f"prefix_len must lie in 1..{id_length} (the ID length); got {prefix_len}")
    if n_items < 2:
        raise ValueError("semantic_consistency needs at least 2 items")
    x = _unit_rows(fused)
    nonzero = (np.linalg.norm(x, axis=1) > 0).astype(np.float64)

    _, group = np.unique(ids_table[:, :prefix_len], axis=0, return_inverse=True)
    group = group.reshape(-1)
    n_groups = group.max() + 1
    sums = np.zeros((n_groups, x.shape[1]))
    np.add.at(sums, group, x)  # S_g, (G, d)
    sizes = np.bincount(group, minlength=n_groups).astype(np.float64)
    self_sim = np.bincount(group, weights=nonzero, minlength=n_groups)  # sum_i ||x_i||^2 per group
    ordered_pairs = float((sizes * (sizes - 1)).sum())
    reason = None
    if ordered_pairs == 0:
        shared = math.nan
        reason = f"no two items share a prefix of length {prefix_len}"
    else:
        shared = float(((sums**2).sum(axis=1) - self_sim).sum() / ordered_pairs)

    if n_random_pairs is None:
        total = x.sum(axis=0)
        random = float((total @ total - nonzero.sum()) / (n_items * (n_items - 1)))
    else:
        if n_random_pairs < 1:
            raise ValueError(f"n_random_pairs must be >= 1 or None (exact); got {n_random_pairs}")
        rng = np.random.default_rng(seed)
        i = rng.integers(n_items, size=n_random_pairs)
        j = rng.integers(n_items - 1, size=n_random_pairs)
        j += j >= i  # uniform over j != i
        random = float(np.einsum("nd,nd->n", x[i], x[j]).mean())

    if random > 0:
        ratio = shared / random
    else:
        ratio = math.nan
        reason = reason or f"random-pair cosine {random:.4g} <= 0: the ratio is undefined, read the gap"
    return {
        "prefix_len": prefix_len,
        "shared": shared,
        "random": random,
        "ratio": ratio,
        "gap": shared - random,
        "n_shared_pairs": int(ordered_pairs // 2),
        "reason": reason,
    }


def semantic_consistency_frame(
    ids_table: np.ndarray, fused: np.ndarray, n_random_pairs: int | None = 100_000, seed: int | None = 0
) -> pd.DataFrame:
    """:func:`semantic_consistency` at every codebook level, in ID_QUALITY form.

    Level l is the prefix c_0..c_l (prefix_len = l + 1, l = 0..L-1; the
    dedup token is left out: full IDs are unique, no pair shares one).
    Metrics ``semantic_consistency_shared``, ``_random``, ``_gap`` and
    ``_ratio``; undefined (NaN) figures are left out.
    """
    ids_table = _check_ids(ids_table, "ids_table", ndim=2)
    rows = []
    for level in range(ids_table.shape[1] - 1):
        result = semantic_consistency(ids_table, fused, level + 1, n_random_pairs, seed)
        for key in ("shared", "random", "gap", "ratio"):
            if np.isfinite(result[key]):
                rows.append((f"semantic_consistency_{key}", level, result[key]))
    return _frame(rows, ["metric", "level", "value"])


# --- personalization discrimination (Theorem 1) -----------------------------------------


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho as the Pearson correlation of average ranks (scipy's definition)."""
    rx, ry = rankdata(x) - (len(x) + 1) / 2, rankdata(y) - (len(y) + 1) / 2
    return float(rx @ ry / math.sqrt((rx @ rx) * (ry @ ry)))


def _mantel_p_value(id_dist: np.ndarray, weight_dist: np.ndarray, rho: float, n_permutations: int, seed) -> float:
    """One-sided Mantel test: P(rho under a random relabelling of prototypes >= rho).

    The pairs (p, q) share prototypes, so they are not independent and
    scipy's p-value is optimistic; permuting which prototype holds which ID
    table keeps that dependence. Exact (every permutation, the identity
    included) for P <= MANTEL_EXACT_MAX_P, else ``n_permutations`` random
    ones with the usual +1 correction.
    """
    n = len(id_dist)
    upper = np.triu_indices(n, k=1)
    w = weight_dist[upper]
    if n <= MANTEL_EXACT_MAX_P:
        perms = itertools.permutations(range(n))
        count = total = 0
        for perm in perms:
            perm = np.asarray(perm)
            count += _spearman(id_dist[np.ix_(perm, perm)][upper], w) >= rho - 1e-12
            total += 1
        return count / total
    rng = np.random.default_rng(seed)
    count = 0
    for _ in range(n_permutations):
        perm = rng.permutation(n)
        count += _spearman(id_dist[np.ix_(perm, perm)][upper], w) >= rho - 1e-12
    return (count + 1) / (n_permutations + 1)


def personalization_discrimination(
    ids: np.ndarray, prototype_weights: np.ndarray, n_permutations: int = 9999, seed: int | None = 0
) -> dict:
    """Distance between one item's IDs across prototypes, and Theorem 1's claim.

    For every prototype pair p < q, over the N items (D = L + 1 tokens,
    the last the dedup token):

        id_distance(p, q)      = mean_i (1/L) sum_{l<L} [ID_i^p[l] != ID_i^q[l]]   (normalized Hamming)
        id_distance_with_dedup = the same over all D tokens
        prefix_distance(p, q)  = mean_i (L - common prefix length of ID_i^p, ID_i^q) / L
        items_changed(p, q)    = fraction of items whose L codebook tokens differ
        weight_distance(p, q)  = || w_p - w_q ||_2

    ``id_distance`` leaves the dedup token out: it numbers items within a
    collision group in index order, so it says nothing about the item's
    features and would blur the comparison; the variant with it is
    reported next to it. Property 1 (docs/METHOD.md section 4): ID distance grows with
    weight distance. Tested by Spearman's rho between id_distance and
    weight_distance across the P (P - 1) / 2 pairs, with scipy's one-sided
    p-value (alternative "greater", as the claim is directional; it treats
    pairs as independent, which they are not) and a one-sided Mantel
    permutation p-value (:func:`_mantel_p_value`), which is the valid one.

    Returns a dict: ``pairs`` (DataFrame p, q, weight_distance, id_distance,
    id_distance_with_dedup, prefix_distance, items_changed), ``spearman_rho``,
    ``p_value``, ``mantel_p_value``, ``n_pairs``, ``reason`` (why rho is
    NaN: P < 3 leaves fewer than 3 pairs, or one distance is constant
    across pairs; else None) and ``quality``, the finite figures in ID_QUALITY form (level -1):
    personalization_id_distance_mean, personalization_spearman_rho,
    personalization_spearman_p, personalization_mantel_p.
    """
    ids = _check_ids(ids)
    weights = np.asarray(prototype_weights, dtype=np.float64)
    n_tables, n_items, id_length = ids.shape
    if weights.ndim != 2 or len(weights) != n_tables:
        raise ValueError(
            f"prototype_weights must be (P, M) with P = {n_tables}, one row per ID table in ids; got {weights.shape}"
        )
    if id_length < 2:
        raise ValueError(f"ids need at least one codebook token before the dedup token; id_length is {id_length}")
    levels = id_length - 1

    rows = []
    for p, q in itertools.combinations(range(n_tables), 2):
        differ = ids[p] != ids[q]  # (N, D)
        agree_prefix = np.cumprod(~differ[:, :levels], axis=1).sum(axis=1)  # common prefix length
        rows.append(
            (
                p,
                q,
                float(np.linalg.norm(weights[p] - weights[q])),
                float(differ[:, :levels].mean()),
                float(differ.mean()),
                float(((levels - agree_prefix) / levels).mean()),
                float(differ[:, :levels].any(axis=1).mean()),
            )
        )
    pairs = pd.DataFrame(
        rows,
        columns=[
            "p",
            "q",
            "weight_distance",
            "id_distance",
            "id_distance_with_dedup",
            "prefix_distance",
            "items_changed",
        ],
    ).astype({"p": np.int32, "q": np.int32})

    rho = p_value = mantel = math.nan
    reason = None
    if n_tables < 3:
        reason = f"P = {n_tables} gives {len(pairs)} prototype pair(s); a rank correlation needs P >= 3 (3 pairs)"
    elif np.ptp(pairs["weight_distance"]) == 0 or np.ptp(pairs["id_distance"]) == 0:
        constant = "weight_distance" if np.ptp(pairs["weight_distance"]) == 0 else "id_distance"
        reason = f"{constant} is the same for every prototype pair; a rank correlation is undefined"
    else:
        result = spearmanr(pairs["id_distance"], pairs["weight_distance"], alternative="greater")
        rho, p_value = float(result.statistic), float(result.pvalue)
        id_dist = np.zeros((n_tables, n_tables))
        weight_dist = np.zeros((n_tables, n_tables))
        id_dist[pairs["p"], pairs["q"]] = id_dist[pairs["q"], pairs["p"]] = pairs["id_distance"]
        weight_dist[pairs["p"], pairs["q"]] = weight_dist[pairs["q"], pairs["p"]] = pairs["weight_distance"]
        mantel = _mantel_p_value(id_dist, weight_dist, rho, n_permutations, seed)

    figures = {
        "personalization_id_distance_mean": float(pairs["id_distance"].mean()) if len(pairs) else math.nan,
        "personalization_spearman_rho": rho,
        "personalization_spearman_p": p_value,
        "personalization_mantel_p": mantel,
    }
    quality = _frame([(k, WHOLE_ID, v) for k, v in figures.items() if np.isfinite(v)], ["metric", "level", "value"])
    return {
        "pairs": pairs,
        "spearman_rho": rho,
        "p_value": p_value,
        "mantel_p_value": mantel,
        "n_pairs": len(pairs),
        "reason": reason,
        "quality": quality,
    }


def user_personalization(
    ids: np.ndarray,
    user_tables: np.ndarray,
    user_weights: np.ndarray,
    n_permutations: int = 999,
    seed: int | None = 0,
) -> dict:
    """Theorem 1 at the user level: across user pairs, ID distance against modality-weight distance.

    User u reads every item under its table ``t_u = user_tables[u]`` (its ID
    of item i is ``ids[t_u, i]``) and has its own modality weights
    ``alpha_u = user_weights[u]``. For every user pair u < v:

        id_distance(u, v)     = mean_i (1/L) sum_{l<L} [ID_i^{t_u}[l] != ID_i^{t_v}[l]]   (0 when t_u = t_v)
        weight_distance(u, v) = || alpha_u - alpha_v ||_2

    (dedup token left out, as in :func:`personalization_discrimination`).
    Across prototype pairs that claim rests on P (P - 1) / 2 points (6 for
    P = 4); across the U (U - 1) / 2 user pairs it is tested on every user's
    own weights, including how users of one table differ. Spearman's rho
    between the two distances, with a one-sided Mantel permutation p-value
    (:func:`_user_mantel_p_value`: pairs share users, so they are not
    independent and no pairwise test is valid). Memory and time grow as
    U^2; pass a sample of users for a large catalogue of users.

    Returns a dict: ``spearman_rho``, ``mantel_p_value``, ``n_users``,
    ``n_pairs``, ``reason`` (why rho is NaN: fewer than 3 users, or one
    distance is the same for every pair, e.g. all users in one table; else
    None) and ``quality``, the finite figures in ID_QUALITY form (level -1):
    personalization_user_spearman_rho, personalization_user_mantel_p.
    """
    ids = _check_ids(ids)
    n_tables, _, id_length = ids.shape
    tables = np.asarray(user_tables)
    weights = np.asarray(user_weights, dtype=np.float64)
    if tables.ndim != 1 or not np.issubdtype(tables.dtype, np.integer) or not np.isin(tables, range(n_tables)).all():
        raise ValueError(
            f"user_tables must be a (U,) integer array of table indices in [0, {n_tables}) (the tables of ids); "
            f"got {tables.dtype} {tables.shape}"
        )
    if weights.ndim != 2 or len(weights) != len(tables) or not np.isfinite(weights).all():
        raise ValueError(
            f"user_weights must be a finite (U, M) array with U = {len(tables)}, one row per user of user_tables; "
            f"got {weights.shape}"
        )
    if id_length < 2:
        raise ValueError(f"ids need at least one codebook token before the dedup token; id_length is {id_length}")
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be >= 1; got {n_permutations}")
    levels = id_length - 1
    table_distance = np.zeros((n_tables, n_tables))
    for p, q in itertools.combinations(range(n_tables), 2):
        table_distance[p, q] = table_distance[q, p] = float((ids[p, :, :levels] != ids[q, :, :levels]).mean())
    n_users = len(tables)
    u, v = np.triu_indices(n_users, k=1)
    id_distance = table_distance[tables[u], tables[v]]
    weight_distance = np.linalg.norm(weights[u] - weights[v], axis=1)

    rho = mantel = math.nan
    reason = None
    if n_users < 3:
        reason = f"{n_users} user(s) give {len(u)} pair(s); a rank correlation needs at least 3 users"
    elif np.ptp(weight_distance) == 0 or np.ptp(id_distance) == 0:
        constant = "weight_distance" if np.ptp(weight_distance) == 0 else "id_distance"
        reason = f"{constant} is the same for every user pair; a rank correlation is undefined"
    else:
        rho = _spearman(id_distance, weight_distance)
        mantel = _user_mantel_p_value(tables, n_tables, id_distance, weight_distance, rho, n_permutations, seed)
    figures = {"personalization_user_spearman_rho": rho, "personalization_user_mantel_p": mantel}
    quality = _frame([(k, WHOLE_ID, x) for k, x in figures.items() if np.isfinite(x)], ["metric", "level", "value"])
    return {
        "spearman_rho": rho,
        "mantel_p_value": mantel,
        "n_users": n_users,
        "n_pairs": len(u),
        "reason": reason,
        "quality": quality,
    }


def _user_mantel_p_value(
    tables: np.ndarray,
    n_tables: int,
    id_distance: np.ndarray,
    weight_distance: np.ndarray,
    rho: float,
    n_permutations: int,
    seed,
) -> float:
    """One-sided Mantel test over user pairs: P(rho after relabelling which user holds which table >= rho).

    ``id_distance`` and ``weight_distance`` are over the pairs
    ``np.triu_indices(U, 1)``. The same test as :func:`_mantel_p_value` on
    the users' (U, U) matrices with ``n_permutations`` random
    relabellings, without ranking U^2 / 2 distances per relabelling: every
    pair of one table pair (p, q) has the same ID distance, hence the same
    average rank ``R[p, q]``, and a relabelling only moves pairs between
    table pairs, so the multiset of ranks (and the norm of rho) stays. With
    ``W`` the (U, U) centred ranks of the weight distances and ``E`` the
    (U, P) one-hot tables after relabelling, the numerator of rho is
    ``sum_{u<v} W[u, v] R[t_u, t_v] = (1/2) sum_{p,q} R[p, q] (E^T W E)[p, q]``.
    """
    n_users = len(tables)
    u, v = np.triu_indices(n_users, k=1)
    id_rank = rankdata(id_distance) - (len(id_distance) + 1) / 2
    weight_rank = rankdata(weight_distance) - (len(weight_distance) + 1) / 2
    norm = math.sqrt((id_rank @ id_rank) * (weight_rank @ weight_rank))
    pair_rank = np.zeros((n_tables, n_tables))  # R: the rank of every user pair of tables (p, q)
    pair_rank[tables[u], tables[v]] = pair_rank[tables[v], tables[u]] = id_rank
    w = np.zeros((n_users, n_users))
    w[u, v] = w[v, u] = weight_rank
    one_hot = np.eye(n_tables)
    rng = np.random.default_rng(seed)
    count = 0
    for _ in range(n_permutations):
        e = one_hot[tables[rng.permutation(n_users)]]  # (U, P)
        count += 0.5 * (pair_rank * (e.T @ w @ e)).sum() / norm >= rho - 1e-12
    return (count + 1) / (n_permutations + 1)
