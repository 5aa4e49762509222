"""PMAT personalized semantic IDs through preference prototypes (docs/METHOD.md section 4).

Module 1 of PMAT gives every user u modality weights alpha_u on the simplex
over the M modalities, and every item i per-modality features f_m(i),
projected to a shared dimension d and L2-normalized. The personalized fused
feature (Personalized fusion eq.) is

    h_i^u = sum_m alpha_{u,m} f_m(i)                                   (N, d) per user

quantized with shared residual codebooks into ID_i^u, so the same item can
carry different IDs for different users. One ID table per user would cost
U x N IDs (160k users x 60k items on the largest dataset), so users are
grouped (the thesis's "workable scale design"):

    1. cluster the users' weight vectors into P preference prototypes w_p
       (k-means on alpha, :func:`cluster_prototypes`);
    2. fuse every item under every prototype, H_p = sum_m w_{p,m} f_m    (P, N, d);
    3. fit ONE residual codebook stack (RQ-KMeans, quantize/rq_kmeans.py)
       on the stacked rows of all P tables, so the tokens of different
       tables live in the same code space and their distance means
       something (Theorem 1 compares them);
    4. encode each table with the shared codebooks and append TIGER's
       dedup token within each table: every ID is unique in its table,
       the same ID may name different items in different tables;
    5. a user decodes under the trie of its prototype's table
       (:class:`PersonalizedIdMap` maps generated IDs back to items).

P = 1 is global fusion (FusID / MMQ style, the main ablation): with one
prototype w the stacked rows are exactly sum_m w_m f_m, and the IDs equal
:func:`global_fusion_ids` bit for bit (tests/test_pmat_prototypes.py).

Two fusions (``fusion``):

- ``"sum"``: the thesis's equation above, a weighted *sum* of the projected
  features in the shared space of the preference network;
- ``"concat"``: the fusion of the TIGER baseline
  (:func:`pmsid.quantize.rq_kmeans.fuse_modalities`) with the prototype's
  weights, ``h_i^p = concat_m(sqrt(w_{p,m}) x_m(i) / ||x_m(i)||)`` over the
  raw (extracted) features ``x_m``: squared distances become
  ``sum_m w_{p,m} ||x_m(i)/|x_m(i)| - x_m(j)/|x_m(j)|||^2``, a per-prototype
  weighting of each modality's own distances. A sum of two modalities'
  vectors in one space can land two items that differ in both on the same
  point; concatenation keeps each modality's block apart.

Both move the fused point continuously with the weights (the premise of
Theorem 1). With ``"concat"`` and equal weights, P = 1 is exactly the TIGER
baseline's fusion, so the global-fusion ablation is never weaker than the
baseline's tokenizer by construction of its input.
"""

from __future__ import annotations

import logging

import numpy as np
from sklearn.cluster import KMeans

from pmsid.data.contracts import check_finite
from pmsid.quantize.rq_kmeans import DEFAULT_N_INIT, RQKMeans, add_dedup_level, fuse_modalities

log = logging.getLogger(__name__)

SIMPLEX_TOL = 1e-6  # how far a weight vector's sum may stray from 1
FUSIONS = ("sum", "concat")  # see the module docstring


# --- fusion ---------------------------------------------------------------------


def _check_simplex(weights: np.ndarray, name: str) -> None:
    """Raise unless every row of ``weights`` is finite, non-negative and sums to 1."""
    if not np.isfinite(weights).all():
        raise ValueError(f"{name} has non-finite entries; modality weights must be finite")
    if (weights < 0).any():
        bad = np.argwhere(weights < 0)[0]
        raise ValueError(
            f"{name} has a negative weight {weights[tuple(bad)]} at {tuple(bad.tolist())}; "
            "modality weights must lie on the simplex (non-negative, summing to 1), e.g. a softmax output"
        )
    sums = weights.sum(axis=-1)
    off = np.abs(sums - 1.0) > SIMPLEX_TOL
    if off.any():
        first = np.flatnonzero(off.reshape(-1))[0]
        raise ValueError(
            f"{name} must sum to 1 (within {SIMPLEX_TOL}) over the modalities; "
            f"found a sum of {sums.reshape(-1)[first]!r} (entry {first}); divide by the sum first"
        )


def _check_features(features: list[np.ndarray]) -> list[np.ndarray]:
    """Validate per-modality features (M matrices, all (N, d)); return them as float64."""
    if isinstance(features, np.ndarray) and features.ndim == 3:
        features = list(features)
    if not isinstance(features, (list, tuple)) or len(features) == 0:
        raise ValueError("features must be a non-empty list of per-modality (n_items, d) matrices")
    out = []
    for m, mat in enumerate(features):
        mat = np.asarray(mat, dtype=np.float64)
        if mat.ndim != 2 or len(mat) == 0:
            raise ValueError(f"features[{m}] must be a non-empty (n_items, d) matrix, got shape {mat.shape}")
        if out and mat.shape != out[0].shape:
            raise ValueError(
                f"features[{m}] has shape {mat.shape}, features[0] has {out[0].shape}; every modality must be "
                "projected to the same shared d and list the same items in the same order"
            )
        check_finite(mat, f"PMAT fusion (features[{m}])")
        out.append(mat)
    for m, mat in enumerate(out):
        norms = np.linalg.norm(mat, axis=1)
        if np.abs(norms - 1.0).max() > 1e-3:
            # Not fatal (a zero row for a missing image is legitimate), but worth a line in the log.
            log.warning(
                "features[%d] rows are not unit-norm (norms %.3g..%.3g); PMAT expects L2-normalized f_m",
                m,
                norms.min(),
                norms.max(),
            )
    return out


def _fuse(features: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """h = sum_m w_m f_m on validated float64 inputs, summed in modality order.

    Every path (global fusion, each prototype table) goes through this one
    function, so equal weights give bit-identical fused rows.
    """
    fused = weights[0] * features[0]
    for w_m, f_m in zip(weights[1:], features[1:]):
        fused += w_m * f_m
    return fused


def _check_weights(weights, n_modalities: int) -> np.ndarray:
    """One weight vector ``(M,)`` on the simplex, as float64; fails naming ``weights``."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n_modalities,):
        raise ValueError(f"weights must have shape ({n_modalities},), one per modality in features; got {w.shape}")
    _check_simplex(w, "weights")
    return w


def _check_fusion(fusion: str) -> None:
    if fusion not in FUSIONS:
        raise ValueError(f"PMAT fusion must be one of {list(FUSIONS)} (config pmat.fusion), got {fusion!r}")


def _check_items(features: list[np.ndarray]) -> list[np.ndarray]:
    """Per-modality raw features for ``"concat"``: M (N, D_m) matrices over the same N items, float64."""
    if not isinstance(features, (list, tuple)) or len(features) == 0:
        raise ValueError("features must be a non-empty list of per-modality (n_items, dim) matrices")
    out = [np.asarray(mat, dtype=np.float64) for mat in features]
    for m, mat in enumerate(out):
        if mat.ndim != 2 or len(mat) != len(out[0]) or len(mat) == 0:
            raise ValueError(
                f"features[{m}] has shape {mat.shape}; every modality must be a non-empty (n_items, dim) matrix "
                f"listing the same {len(out[0])} items in the same order"
            )
        check_finite(mat, f"PMAT fusion (features[{m}])")
    return out


def fuse(features: list[np.ndarray], weights: np.ndarray, fusion: str = "sum") -> np.ndarray:
    """One table's fused rows under ``weights (M,)``: :func:`fuse_weighted` for
    ``"sum"``, the sqrt-weighted concatenation of L2-normalized blocks for
    ``"concat"`` (see the module docstring). Float64 ``(N, d)`` or ``(N, sum_m D_m)``."""
    _check_fusion(fusion)
    if fusion == "sum":
        return fuse_weighted(features, weights)
    feats = _check_items(features)
    return fuse_modalities(feats, _check_weights(weights, len(feats)))


def fuse_weighted(features: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """Personalized fusion eq. (docs/METHOD.md section 4): h = sum_m w_m f_m.

    ``features``: M matrices f_m of shape (N, d), already projected to a shared
    d and L2-normalized. ``weights``: (M,) on the simplex (non-negative, sum 1
    within 1e-6), e.g. one user's alpha_u or one prototype's w_p. The weights
    are used as given, not renormalized. Returns float64 (N, d). Rows have
    norm <= 1 (a convex combination of unit vectors), equal to 1 only where
    the modalities agree.
    """
    feats = _check_features(features)
    return _fuse(feats, _check_weights(weights, len(feats)))


# --- preference prototypes ------------------------------------------------------------


def cluster_prototypes(
    alphas: np.ndarray, P: int, seed: int | None = 0, n_init: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster users' modality weights into P preference prototypes.

    k-means (scikit-learn, k-means++ with ``n_init`` restarts, ``random_state
    = seed``: the same seed gives the same prototypes and assignment) on the
    rows alpha_u of ``alphas`` (U, M):

        min_{w, a} sum_u || alpha_u - w_{a(u)} ||^2

    Returns ``prototype_weights`` (P, M), the cluster centres renormalized
    onto the simplex (a mean of simplex points is on the simplex; clipping at
    0 and dividing by the sum only removes rounding), sorted
    lexicographically by weight so the order does not depend on k-means'
    label permutation, and ``assignment`` (U,) int64, each user's prototype.
    P = 1 gives the mean weight vector.

    No prototype is ever empty: P may not exceed the number of distinct
    weight vectors (checked, naming P), so k-means++ seeds P distinct
    centres, Lloyd's iterations relocate any cluster that empties to a far
    point, and scikit-learn's final E-step makes ``assignment`` the
    nearest-centre labels. Should a cluster still end empty (possible in
    principle after that final E-step), :func:`_repair_empty` moves into it
    the user farthest from its cluster's mean among clusters of at least two
    distinct vectors, so the donor keeps a user; it is then the only case
    where a user is not assigned to its nearest prototype.
    """
    alphas = np.asarray(alphas, dtype=np.float64)
    if alphas.ndim != 2 or len(alphas) == 0 or alphas.shape[1] == 0:
        raise ValueError(f"alphas must be a non-empty (n_users, n_modalities) matrix, got shape {alphas.shape}")
    _check_simplex(alphas, "alphas")
    if isinstance(P, bool) or not isinstance(P, (int, np.integer)) or P < 1:
        raise ValueError(f"P (the number of prototypes) must be an integer >= 1; got {P!r}")
    n_distinct = len(np.unique(alphas, axis=0))
    if n_distinct < P:
        raise ValueError(
            f"P = {P} prototypes exceed the {n_distinct} distinct user weight vector(s) in alphas; "
            f"choose P <= {n_distinct} (k-means cannot fill more clusters than distinct points)"
        )
    kmeans = KMeans(n_clusters=int(P), n_init=n_init, random_state=seed).fit(alphas)
    prototypes = _to_simplex(kmeans.cluster_centers_)
    assignment = kmeans.labels_.astype(np.int64)
    prototypes, assignment = _repair_empty(alphas, prototypes, assignment)

    order = np.lexsort(prototypes.T[::-1])  # by modality 0, then 1, ...
    rank = np.empty(P, dtype=np.int64)
    rank[order] = np.arange(P)
    sizes = np.bincount(assignment, minlength=P)[order]
    log.info("%d users -> %d prototypes, sizes %s", len(alphas), P, sizes.tolist())
    return prototypes[order], rank[assignment]


def _to_simplex(weights: np.ndarray) -> np.ndarray:
    w = np.clip(weights, 0.0, None)
    return w / w.sum(axis=1, keepdims=True)


def _repair_empty(alphas: np.ndarray, prototypes: np.ndarray, assignment: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Give every empty prototype users (see :func:`cluster_prototypes`).

    Needs at least as many distinct rows of ``alphas`` as prototypes. While a
    prototype is empty, P - 1 or fewer clusters hold P or more distinct
    weight vectors, so some cluster holds two distinct ones. Among the users
    of such clusters, the one farthest from its cluster mean moves (with the
    users of identical weights in its cluster) into the empty prototype,
    which then sits at its weights; its donor keeps the other distinct
    vector, so the count of empty prototypes falls by one per round and the
    loop ends.
    """
    prototypes, assignment = prototypes.copy(), assignment.copy()
    n_prototypes = len(prototypes)
    while True:
        empty = np.flatnonzero(np.bincount(assignment, minlength=n_prototypes) == 0)
        if len(empty) == 0:
            return prototypes, assignment
        spread = [k for k in range(n_prototypes) if len(np.unique(alphas[assignment == k], axis=0)) > 1]
        for k in spread:
            prototypes[k] = _to_simplex(alphas[assignment == k].mean(axis=0, keepdims=True))[0]
        candidate = np.isin(assignment, spread)
        distance = np.where(candidate, np.linalg.norm(alphas - prototypes[assignment], axis=1), -1.0)
        far = int(np.argmax(distance))
        donor, target = assignment[far], empty[0]
        movers = (assignment == donor) & np.all(alphas == alphas[far], axis=1)
        assignment[movers] = target
        prototypes[target] = alphas[far]
        prototypes[donor] = _to_simplex(alphas[assignment == donor].mean(axis=0, keepdims=True))[0]
        log.warning("prototype %d was empty; moved %d user(s) into it from prototype %d", target, movers.sum(), donor)


def assign_prototypes(alphas: np.ndarray, prototype_weights: np.ndarray) -> np.ndarray:
    """Nearest prototype (Euclidean on the simplex) of each row of ``alphas`` (U, M) -> (U,).

    For users whose weights were not clustered, or changed (a drift update):
    they move to the prototype closest to their new alpha_u. Ties go to the
    lowest prototype index.
    """
    alphas = np.asarray(alphas, dtype=np.float64)
    prototypes = np.asarray(prototype_weights, dtype=np.float64)
    if prototypes.ndim != 2 or alphas.ndim != 2 or alphas.shape[1] != prototypes.shape[1]:
        raise ValueError(
            f"alphas {alphas.shape} and prototype_weights {prototypes.shape} must be (U, M) and (P, M) "
            "with the same number of modalities M"
        )
    _check_simplex(alphas, "alphas")
    distance = ((alphas[:, None, :] - prototypes[None, :, :]) ** 2).sum(axis=2)  # (U, P)
    return np.argmin(distance, axis=1).astype(np.int64)


# --- personalized tokenizer ----------------------------------------------------------------


def _fit_rows(n_tables: int, n_items: int, max_fit_rows: int | None, seed: int | None) -> np.ndarray | None:
    """Rows of the stacked (n_tables * n_items) matrix that fit the codebooks; None = all.

    The deterministic subsample: when n_tables * n_items > max_fit_rows,
    every table contributes the same quota max_fit_rows // n_tables of
    distinct items, drawn without replacement by
    ``numpy.random.default_rng(seed)`` independently per table (so every
    prototype, and together more distinct items, are represented), kept in
    item order. Global fusion is the one-table case of the same rule, so
    P = 1 stays identical to it with or without a subsample.
    """
    if max_fit_rows is None or n_tables * n_items <= max_fit_rows:
        return None
    quota = max_fit_rows // n_tables
    rng = np.random.default_rng(seed)
    rows = [p * n_items + np.sort(rng.choice(n_items, size=quota, replace=False)) for p in range(n_tables)]
    return np.concatenate(rows)


def _check_max_fit_rows(max_fit_rows: int | None, codes: int) -> None:
    if max_fit_rows is not None and (isinstance(max_fit_rows, bool) or max_fit_rows < codes):
        raise ValueError(
            f"max_fit_rows must be None (fit on every row) or >= codes = {codes} "
            f"(k-means needs at least one row per code); got {max_fit_rows!r}"
        )


class PersonalizedTokenizer:
    """Shared residual codebooks over P prototype tables (PMAT module 1).

    ``fit(features, prototype_weights)`` fuses the catalogue under every
    prototype (``fusion`` "sum": Personalized fusion eq., H_p = sum_m
    w_{p,m} f_m over the projected features; "concat": the sqrt-weighted
    concatenation over the raw features, see the module docstring) and fits one
    :class:`RQKMeans` (``levels`` x ``codes``, ``seed``, ``n_init``) on the
    stacked rows [H_0; ...; H_{P-1}] (P * N, d). With ``max_fit_rows`` set
    and P * N above it, the codebooks are fitted on a deterministic
    subsample of max_fit_rows // P items per table (:func:`_fit_rows`);
    encoding always covers every item of every table. ``encode`` returns
    ids (P, N, levels + 1): each table's RQ tokens followed by the dedup
    token, numbered within that table, so every ID is unique in its table.

    ``encode`` may take other prototype weights than ``fit`` (same M): a
    drift update re-quantizes moved prototypes with the shared codebooks.
    Memory: the fit rows (P * N * d float64 without a subsample), then one
    fused table (N, d) at a time while encoding.

    Cost (2 shared CPU cores, random features, N = 60,000, d = 64, M = 2,
    P = 8, 3 levels x 256 codes): all 480,000 rows with n_init = 1 took
    648 s and 1.3 GB; ``max_fit_rows = N`` with n_init = 10 took 132 s and
    0.4 GB, the same as global fusion's 137 s in the same session: PMAT
    then fits its codebooks on the budget of the baseline. ``max_fit_rows = N``
    is the recommended setting at that scale.
    """

    def __init__(
        self,
        levels: int,
        codes: int,
        seed: int | None = 0,
        n_init: int = DEFAULT_N_INIT,
        max_fit_rows: int | None = None,
        fusion: str = "sum",
    ):
        _check_max_fit_rows(max_fit_rows, codes)
        _check_fusion(fusion)
        self.fusion = fusion
        self.quantizer = RQKMeans(levels, codes, seed=seed, n_init=n_init)
        self.levels, self.codes, self.seed, self.n_init = levels, codes, seed, n_init
        self.max_fit_rows = max_fit_rows
        self.n_fit_rows: int | None = None  # rows the codebooks were fitted on

    def _fuse(self, features: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
        """One table's fused rows under ``weights (M,)`` by this tokenizer's fusion."""
        return _fuse(features, weights) if self.fusion == "sum" else fuse_modalities(features, weights)

    def _inputs(self, features: list[np.ndarray], prototype_weights: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        feats = _check_features(features) if self.fusion == "sum" else _check_items(features)
        w = np.asarray(prototype_weights, dtype=np.float64)
        if w.ndim != 2 or len(w) == 0 or w.shape[1] != len(feats):
            raise ValueError(
                f"prototype_weights must be (P, {len(feats)}), one row per prototype and one column per "
                f"modality in features; got shape {w.shape}"
            )
        _check_simplex(w, "prototype_weights")
        return feats, w

    def fit(self, features: list[np.ndarray], prototype_weights: np.ndarray) -> PersonalizedTokenizer:
        """Fit the shared codebooks on the fused rows of all P tables."""
        feats, w = self._inputs(features, prototype_weights)
        n_items = len(feats[0])
        rows = _fit_rows(len(w), n_items, self.max_fit_rows, self.seed)
        if rows is not None and len(rows) < self.codes:
            raise ValueError(
                f"max_fit_rows = {self.max_fit_rows} leaves {len(rows)} fit rows over {len(w)} prototypes, fewer "
                f"than codes = {self.codes}; raise max_fit_rows to at least {self.codes * len(w)}"
            )
        if rows is None:
            stacked = np.concatenate([self._fuse(feats, w_p) for w_p in w])  # (P * N, d)
        else:
            # Fuse only the sampled items of each table: memory O(max_fit_rows * d).
            table, item = np.divmod(rows, n_items)
            stacked = np.concatenate([self._fuse([f[item[table == p]] for f in feats], w_p) for p, w_p in enumerate(w)])
            log.info(
                "fitting codebooks on a subsample of %d of %d rows (%d per table)",
                len(stacked),
                len(w) * n_items,
                len(stacked) // len(w),
            )
        self.n_fit_rows = len(stacked)
        self.quantizer.fit(stacked)
        return self

    def encode(self, features: list[np.ndarray], prototype_weights: np.ndarray) -> np.ndarray:
        """IDs (P, N, levels + 1) int64: shared-codebook tokens + per-table dedup token."""
        feats, w = self._inputs(features, prototype_weights)
        return np.stack([add_dedup_level(self.quantizer.encode(self._fuse(feats, w_p))) for w_p in w])

    def fit_encode(self, features: list[np.ndarray], prototype_weights: np.ndarray) -> np.ndarray:
        """``fit`` then ``encode`` on the same inputs."""
        return self.fit(features, prototype_weights).encode(features, prototype_weights)


def global_fusion_ids(
    features: list[np.ndarray],
    weights: np.ndarray,
    levels: int,
    codes: int,
    seed: int | None = 0,
    n_init: int = DEFAULT_N_INIT,
    max_fit_rows: int | None = None,
    return_quantizer: bool = False,
    fusion: str = "sum",
) -> np.ndarray | tuple[np.ndarray, RQKMeans]:
    """Global-fusion semantic IDs (no personalization, the PMAT ablation): (N, levels + 1).

    RQ-KMeans on x = fuse(features, weights, fusion) (one weight vector for
    every user), encode, append the dedup token. ``max_fit_rows`` subsamples
    the fitting rows by the same rule as :class:`PersonalizedTokenizer`.
    With ``return_quantizer`` also returns the fitted :class:`RQKMeans`.
    """
    _check_max_fit_rows(max_fit_rows, codes)
    fused = fuse(features, weights, fusion)
    rows = _fit_rows(1, len(fused), max_fit_rows, seed)
    quantizer = RQKMeans(levels, codes, seed=seed, n_init=n_init).fit(fused if rows is None else fused[rows])
    ids = add_dedup_level(quantizer.encode(fused))
    return (ids, quantizer) if return_quantizer else ids


# --- ID <-> item per user ---------------------------------------------------------------------


class PersonalizedIdMap:
    """Which item a generated ID names for a given user, and back.

    ``ids`` (P, N, D): table p holds the ID of every item under prototype p,
    unique within the table (checked). ``assignment`` (U,): each user's
    prototype. A user's IDs are its prototype's table; the generator builds
    one trie per prototype from :meth:`table_of` / :attr:`tables` and decodes
    a user under ``tables[prototype_of(user)]``.

    Lookups are vectorized: every ID becomes one int64 key (mixed radix, one
    digit per position with base max token + 1 over all tables), each table
    keeps its keys sorted, and ``np.searchsorted`` finds the item. Tokens
    outside the range seen in the tables map to -1, never to a wrong item.
    """

    def __init__(self, ids: np.ndarray, assignment: np.ndarray):
        ids = np.asarray(ids)
        if ids.ndim != 3 or 0 in ids.shape or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(
                f"ids must be a non-empty integer (P, n_items, id_length) array; got {ids.dtype} {ids.shape}"
            )
        if ids.min() < 0:
            raise ValueError("ids must hold non-negative tokens")
        assignment = np.asarray(assignment)
        if assignment.ndim != 1 or not np.issubdtype(assignment.dtype, np.integer):
            raise ValueError(f"assignment must be a 1-D integer array (one prototype per user); got {assignment.shape}")
        if len(assignment) and (assignment.min() < 0 or assignment.max() >= len(ids)):
            raise ValueError(
                f"assignment must hold prototypes 0..{len(ids) - 1}; found {assignment.min()}..{assignment.max()}"
            )
        self.tables = ids.astype(np.int64)
        self.tables.setflags(write=False)
        self.assignment = assignment.astype(np.int64)
        self.assignment.setflags(write=False)

        self._radix = self.tables.max(axis=(0, 1)) + 1  # (D,)
        if int(np.prod([int(r) for r in self._radix], dtype=object)) >= 2**63:
            raise ValueError(
                f"IDs of length {len(self._radix)} with token ranges {self._radix.tolist()} do not fit a 64-bit key; "
                "use fewer levels or smaller codebooks"
            )
        self._place = np.cumprod(np.r_[self._radix[1:], 1][::-1])[::-1].astype(np.int64)  # (D,)
        keys = self.tables @ self._place  # (P, N)
        self._order = np.argsort(keys, axis=1, kind="stable")  # items sorted by key, per table
        self._sorted_keys = np.take_along_axis(keys, self._order, axis=1)
        dup = np.flatnonzero((np.diff(self._sorted_keys, axis=1) == 0).any(axis=1))
        if len(dup):
            raise ValueError(
                f"ids are not unique within table(s) {dup[:5].tolist()}; every ID table needs the dedup token "
                "(add_dedup_level), or a generated ID could name two items"
            )

    @property
    def n_prototypes(self) -> int:
        return self.tables.shape[0]

    @property
    def n_items(self) -> int:
        return self.tables.shape[1]

    @property
    def id_length(self) -> int:
        return self.tables.shape[2]

    @property
    def n_users(self) -> int:
        return len(self.assignment)

    def _users(self, users) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        if users.size and (users.min() < 0 or users.max() >= self.n_users):
            raise ValueError(f"user indices must lie in 0..{self.n_users - 1}; got {users.min()}..{users.max()}")
        return users

    def prototype_of(self, users) -> np.ndarray:
        """Prototype of each user: int or (B,) array like ``users``."""
        return self.assignment[self._users(users)]

    def table_of(self, user: int) -> np.ndarray:
        """The (N, D) ID table the user decodes under (read-only view)."""
        return self.tables[int(self.prototype_of(user))]

    def id_of(self, user: int, item: int) -> tuple[int, ...]:
        """The ID of ``item`` for ``user``."""
        return tuple(int(t) for t in self.ids_of([user], [item])[0])

    def ids_of(self, users, items) -> np.ndarray:
        """IDs (B, D) of ``items[b]`` for ``users[b]``."""
        users, items = self._users(users), np.asarray(items, dtype=np.int64)
        if users.shape != items.shape or users.ndim != 1:
            raise ValueError(f"users and items must be 1-D of equal length; got {users.shape} and {items.shape}")
        if items.size and (items.min() < 0 or items.max() >= self.n_items):
            raise ValueError(f"item indices must lie in 0..{self.n_items - 1}; got {items.min()}..{items.max()}")
        return self.tables[self.assignment[users], items]

    def item_of(self, user: int, id_tuple) -> int:
        """The item ``id_tuple`` names for ``user``, or -1 if it names none."""
        return int(self.items_of([user], np.asarray(id_tuple, dtype=np.int64)[None, :])[0])

    def items_of(self, users, id_rows) -> np.ndarray:
        """Items (B,) named by ``id_rows[b]`` (B, D) for ``users[b]``; -1 where no item has that ID."""
        users, id_rows = self._users(users), np.asarray(id_rows, dtype=np.int64)
        if id_rows.ndim != 2 or id_rows.shape != (len(users), self.id_length):
            raise ValueError(
                f"id_rows must be (len(users), id_length) = ({len(users)}, {self.id_length}); got {id_rows.shape}"
            )
        in_range = ((id_rows >= 0) & (id_rows < self._radix)).all(axis=1)
        keys = np.where(in_range, np.where(in_range[:, None], id_rows, 0) @ self._place, -1)
        table = self.assignment[users]
        items = np.full(len(keys), -1, dtype=np.int64)
        for p in np.unique(table[in_range]):  # one searchsorted per prototype table
            query = np.flatnonzero(in_range & (table == p))
            pos = np.minimum(np.searchsorted(self._sorted_keys[p], keys[query]), self.n_items - 1)
            hit = self._sorted_keys[p, pos] == keys[query]
            items[query[hit]] = self._order[p, pos[hit]]
        return items
