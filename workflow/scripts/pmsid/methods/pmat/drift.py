"""PMAT Module 2: interest-drift-triggered updates (docs/METHOD.md section 4, Properties 2 and 3).

A user's interest is tracked twice, long-term (the whole history so far) and
short-term (the last W interactions). When the two part, the user's semantic
IDs should follow, but smoothly: a monotone gate turns the drift into an
update rate, nothing moves below a threshold, and the rate is capped.

    drift_t   = KL(p_short || p_long)                      interest drift
    lambda_t  = g(drift_t)                                 gate, 0 for drift <= theta
    h_{t+1}   = (1 - lambda_t) h_t + lambda_t h_new        update rule (theorem 2)
    bound:      ||h_{t+1} - h_t|| <= lambda_max ||h_new - h_t||
    L_cons    = lam ||h_{t+1} - h_t||^2 + (1 - lam) L_contrastive(h_{t+1}, interest)   (theorem 3)

Design
------
**Updates act on the weights, and so on every item at once.** The personalized
fused feature of item i for user u is linear in the user's modality weights:

    h_i^u = sum_m alpha_{u,m} f_m(i)

so moving the weights, ``alpha_{t+1} = (1 - lambda) alpha_t + lambda alpha_new``,
moves every item's feature by exactly the thesis rule,
``h_i^{t+1} = (1 - lambda) h_i^t + lambda h_i^new`` with
``h_i^new = sum_m alpha_new_m f_m(i)``. One (M,) vector per user is updated
instead of N (d,) vectors, which is what makes updates scale to a catalogue.
``alpha_new`` is the weight vector the preference network gives for the
short-term window (``weights_fn(window_items) -> (M,)``, supplied by the
caller); it is only computed when the gate fires.

**Interest distributions are over coarse codes.** Item i's coarse code is the
level-0 token of its ID in the user's *current* ID table (the table of the
user's prototype). ``p_long`` is the code histogram of the whole history so
far, ``p_short`` that of its last W items, both smoothed (see
:func:`interest_distribution`). A user who keeps buying from the same coarse
regions has drift near 0; one whose last W items land in codes rare in the
long history has a large drift. Histories of at most W items have
``p_short = p_long`` and drift 0.

**The gate** (:class:`DriftGate`) is
``g(d) = lambda_max * (1 - exp(-sharpness * (d - theta)))`` for ``d > theta``
and 0 otherwise: monotone non-decreasing, continuous at theta, never above
lambda_max. Property 2 of docs/METHOD.md section 4 states the bound with
``lambda_max = g(theta)`` for drifts below theta; with this gate that case is
"no movement at all" (``g(theta) = 0``), and above theta the bound holds with
the gate's cap ``lambda_max`` because ``||h_{t+1} - h_t|| = lambda
||h_new - h_t||`` and ``lambda <= lambda_max``. :func:`replay_updates`
checks the bound numerically on actual fused features at every update (an
event where the gate stays shut leaves every h_i^u unchanged).

**Re-quantization = re-assignment to a prototype.** Items are quantized per
preference prototype (``methods/pmat/prototypes.py``: P prototypes with
weights (P, M), one ID table (P, N, L+1) each). After an update the user's
new weights are re-assigned to the nearest prototype (Euclidean, the k-means
rule; pass ``assign_fn`` for another rule) and the user's IDs become that
prototype's table. ID churn of an update is the fraction of catalogue items
whose full ID tuple differs between the old and the new table (0 when the
prototype did not change); ``future_churn`` is the same fraction over the
user's own items still to come (the held-out target of the event and the
later ones).

**User interest** for the consistency loss (theorem 3) is the mean fused
feature of the short-term window under the user's weights
(:func:`short_term_interest`): the point in feature space the recent items
surround. The contrastive term pulls ``h_{t+1}`` towards it.

Replay protocol (:func:`replay_updates`)
----------------------------------------
For each user with sequence ``s`` (train items, then valid, then test), the
held-out positions ``p = len(s) + split_start, ..., len(s) - 1`` are visited
in time order (``split_start = -2``: the valid item, then the test item).
At position p, *before* the item ``s[p]`` is revealed:

1. the history so far is ``s[:p]`` (training items plus the held-out items
   already replayed); drift is computed from it under the current table;
2. ``lambda = gate(drift)``; if ``drift > theta`` the weights are updated
   towards ``weights_fn(s[:p][-W:])`` and re-assigned to a prototype;
3. the event is recorded; the state after it is the one that would rank
   ``s[p]``.

So the state after the last event (returned as ``alphas`` / ``assignment``)
is the one in force when the test item is predicted: it has seen the valid
item, never the test item. ``event_alphas`` gives the state after every event
(the valid-split ranking uses the one at the valid position).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from pmsid.data.sequences import Sequences

log = logging.getLogger(__name__)

# Default additive smoothing (on frequencies, see interest_distribution): small
# enough that a code seen once in a window of 5 keeps ~all of its mass.
DEFAULT_SMOOTHING = 1e-2

# Tolerances for "is alpha on the simplex" and for theorem 2's float check.
SIMPLEX_ATOL = 1e-5
BOUND_ATOL = 1e-9
BOUND_RTOL = 1e-9


# --- interest and drift -------------------------------------------------------


def interest_distribution(coarse_codes: np.ndarray, n_codes: int, smoothing: float = DEFAULT_SMOOTHING) -> np.ndarray:
    """Smoothed distribution (n_codes,) of a set of coarse codes.

    ``p(k) = (freq(k) + smoothing / n_codes) / (1 + smoothing)``, with
    ``freq(k)`` the fraction of ``coarse_codes`` equal to k. The smoothing is
    added to frequencies rather than counts on purpose: two histories of
    different lengths then give the same mass to a code neither contains, so
    such codes add exactly 0 to KL(short || long). (Laplace smoothing on
    counts gives a short window more mass on every unseen code than a long
    history, and a short window would look drifted just for being short.)
    An empty set gives the uniform distribution.
    """
    codes = np.asarray(coarse_codes, dtype=np.int64).reshape(-1)
    if n_codes < 1:
        raise ValueError(f"n_codes must be >= 1, got {n_codes}")
    if not smoothing > 0:
        raise ValueError(f"smoothing must be > 0 (it keeps KL finite), got {smoothing}")
    if len(codes) and (codes.min() < 0 or codes.max() >= n_codes):
        raise ValueError(
            f"coarse codes must lie in [0, {n_codes}); got range [{codes.min()}, {codes.max()}]: "
            "pass n_codes = the level-0 codebook size"
        )
    if not len(codes):
        return np.full(n_codes, 1.0 / n_codes)
    freq = np.bincount(codes, minlength=n_codes) / len(codes)
    return (freq + smoothing / n_codes) / (1.0 + smoothing)


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) = sum_k p(k) log(p(k) / q(k)), in nats; terms with p(k) = 0 are 0.

    Both must be distributions of the same length; ``q`` must be positive
    wherever ``p`` is (smoothing guarantees it).
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.shape != q.shape or p.ndim != 1:
        raise ValueError(f"p and q must be 1-D of the same length, got {p.shape} and {q.shape}")
    for name, dist in (("p", p), ("q", q)):
        if (dist < 0).any() or not math.isclose(dist.sum(), 1.0, abs_tol=1e-6):
            raise ValueError(f"{name} must be a probability distribution (non-negative, sum 1); sum is {dist.sum()}")
    support = p > 0
    if (q[support] <= 0).any():
        raise ValueError("q is 0 where p is positive: KL is infinite; smooth q (interest_distribution does)")
    # Clip at 0: rounding can make a KL of two identical vectors -1e-17.
    return max(0.0, float(np.sum(p[support] * np.log(p[support] / q[support]))))


def drift_score(
    history_coarse_codes: np.ndarray, window: int, n_codes: int, smoothing: float = DEFAULT_SMOOTHING
) -> float:
    """Interest drift KL(p_short || p_long) of a chronological history of coarse codes.

    ``p_long`` is the distribution of the whole history, ``p_short`` of its
    last ``window`` items; a history of at most ``window`` items has drift 0.
    """
    if window < 1:
        raise ValueError(f"window W must be >= 1, got {window}")
    codes = np.asarray(history_coarse_codes, dtype=np.int64).reshape(-1)
    p_long = interest_distribution(codes, n_codes, smoothing)
    p_short = interest_distribution(codes[-window:], n_codes, smoothing)
    return kl_divergence(p_short, p_long)


# --- gate and update rule -----------------------------------------------------


@dataclass(frozen=True)
class DriftGate:
    """Monotone update gate lambda = g(drift) (theorem 2).

    ``g(d) = lambda_max * (1 - exp(-sharpness * (d - theta)))`` for
    ``d > theta``, else 0. Non-decreasing in d, continuous at theta (g = 0
    there), below lambda_max everywhere; ``sharpness`` sets how fast the rate
    approaches its cap (63% of it at ``d = theta + 1 / sharpness``).
    """

    theta: float
    lambda_max: float
    sharpness: float = 1.0

    def __post_init__(self):
        if not (math.isfinite(self.theta) and self.theta >= 0):
            raise ValueError(f"theta must be a finite drift threshold >= 0 (KL is >= 0), got {self.theta}")
        if not 0 < self.lambda_max <= 1:
            raise ValueError(
                f"lambda_max must be in (0, 1] (the update is a convex combination), got {self.lambda_max}"
            )
        if not (math.isfinite(self.sharpness) and self.sharpness > 0):
            raise ValueError(f"sharpness must be a finite number > 0, got {self.sharpness}")

    def fires(self, drift):
        """True where an update happens: drift strictly above theta."""
        return np.asarray(drift, dtype=np.float64) > self.theta

    def __call__(self, drift):
        """lambda for a drift (float) or an array of drifts (same shape)."""
        d = np.asarray(drift, dtype=np.float64)
        if np.isnan(d).any():
            raise ValueError("drift is NaN; check the interest distributions it came from")
        excess = np.maximum(d - self.theta, 0.0)
        # -expm1(-x) = 1 - exp(-x) without cancellation for small x, so lambda > 0 just above theta.
        lam = np.where(d > self.theta, self.lambda_max * -np.expm1(-self.sharpness * excess), 0.0)
        lam = np.minimum(lam, self.lambda_max)
        return float(lam) if lam.ndim == 0 else lam


def update(h_t: np.ndarray, h_new: np.ndarray, lam) -> np.ndarray:
    """Update rule h_{t+1} = (1 - lam) h_t + lam h_new (theorem 2).

    ``h_t``, ``h_new``: (d,) or (B, d); ``lam``: a scalar or one value per row
    (B,). Works as well on modality weights (M,) / (U, M).
    """
    h_t = np.asarray(h_t, dtype=np.float64)
    h_new = np.asarray(h_new, dtype=np.float64)
    if h_t.shape != h_new.shape:
        raise ValueError(f"h_t and h_new must have the same shape, got {h_t.shape} and {h_new.shape}")
    lam = np.asarray(lam, dtype=np.float64)
    if (lam < 0).any() or (lam > 1).any() or np.isnan(lam).any():
        raise ValueError(f"lam must lie in [0, 1]; got range [{lam.min()}, {lam.max()}]")
    if lam.ndim == 1 and h_t.ndim == 2:
        lam = lam[:, None]  # (B,) -> (B, 1): one rate per row
    return (1.0 - lam) * h_t + lam * h_new


def theorem2_holds(
    h_t: np.ndarray, h_new: np.ndarray, h_next: np.ndarray, lambda_max: float, atol: float = BOUND_ATOL
) -> bool:
    """Whether ||h_{t+1} - h_t|| <= lambda_max ||h_new - h_t|| holds (every row of a batch).

    ``atol`` (plus a relative 1e-9) absorbs float rounding.
    """
    h_t, h_new, h_next = (np.atleast_2d(np.asarray(a, dtype=np.float64)) for a in (h_t, h_new, h_next))
    step = np.linalg.norm(h_next - h_t, axis=-1)
    bound = lambda_max * np.linalg.norm(h_new - h_t, axis=-1)
    return bool(np.all(step <= bound * (1.0 + BOUND_RTOL) + atol))


# --- fused features and the consistency loss ----------------------------------


def fused_features(features: list[np.ndarray], alpha: np.ndarray, items: np.ndarray | None = None) -> np.ndarray:
    """h_i^u = sum_m alpha_m f_m(i) for ``items`` (all items when None): (n, d)."""
    alpha = np.asarray(alpha, dtype=np.float64)
    if len(features) != len(alpha):
        raise ValueError(f"got {len(features)} modality feature matrices for {len(alpha)} weights")
    rows = slice(None) if items is None else np.asarray(items, dtype=np.int64)
    return sum(a * np.asarray(f[rows], dtype=np.float64) for a, f in zip(alpha, features))


def short_term_interest(features: list[np.ndarray], alpha: np.ndarray, history: np.ndarray, window: int) -> np.ndarray:
    """The user-interest vector of theorem 3: mean fused feature of the last ``window`` items (d,)."""
    recent = np.asarray(history, dtype=np.int64)[-window:]
    if not len(recent):
        raise ValueError("short_term_interest needs at least one history item")
    return fused_features(features, alpha, recent).mean(axis=0)


def consistency_loss(
    h_next: torch.Tensor,
    h_t: torch.Tensor,
    interest: torch.Tensor,
    lam,
    temperature: float = 0.1,
    negatives: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_cons = lam ||h_{t+1} - h_t||^2 + (1 - lam) InfoNCE(h_{t+1}, interest) (theorem 3), batch mean.

    Shapes: ``h_next``, ``h_t``, ``interest`` (B, d) or (d,); ``lam`` a float
    or a (B,) tensor in [0, 1]; ``negatives`` (K, d) shared by the batch,
    (B, K, d) per row, or None for in-batch negatives (row b's positive is
    ``interest[b]``, the other rows' interests are its negatives; needs
    B >= 2). InfoNCE (docs/METHOD.md section 5) uses cosine similarity over
    ``temperature``:
    ``-log exp(s+ / tau) / (exp(s+ / tau) + sum_k exp(s_k- / tau))``.

    ``h_t`` is the previous state and is detached: the first term anchors the
    new state to the old one and never moves the old one.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if h_next.dim() == 1:
        h_next, h_t, interest = h_next[None], h_t[None], interest[None]
    if h_next.shape != h_t.shape or h_next.shape != interest.shape:
        raise ValueError(
            f"h_next, h_t and interest must share a shape (B, d); got {tuple(h_next.shape)}, "
            f"{tuple(h_t.shape)}, {tuple(interest.shape)}"
        )
    lam = torch.as_tensor(lam, dtype=h_next.dtype, device=h_next.device)
    if (lam < 0).any() or (lam > 1).any():
        raise ValueError("lam must lie in [0, 1]")

    stability = (h_next - h_t.detach()).pow(2).sum(-1)  # (B,)

    z = F.normalize(h_next, dim=-1)  # (B, d)
    pos = F.normalize(interest, dim=-1)  # (B, d)
    if negatives is None:
        if len(z) < 2:
            raise ValueError("in-batch negatives need a batch of >= 2 rows; pass negatives explicitly")
        logits = z @ pos.T / temperature  # (B, B), the diagonal holds the positives
        target = torch.arange(len(z), device=z.device)
    else:
        neg = F.normalize(negatives, dim=-1)
        if neg.dim() == 2:  # (K, d) shared
            neg_logits = z @ neg.T  # (B, K)
        elif neg.dim() == 3 and len(neg) == len(z):  # (B, K, d)
            neg_logits = torch.einsum("bd,bkd->bk", z, neg)
        else:
            raise ValueError(f"negatives must be (K, d) or (B={len(z)}, K, d), got {tuple(negatives.shape)}")
        pos_logits = (z * pos).sum(-1, keepdim=True)  # (B, 1)
        logits = torch.cat([pos_logits, neg_logits], dim=1) / temperature  # positive in column 0
        target = torch.zeros(len(z), dtype=torch.long, device=z.device)
    contrastive = F.cross_entropy(logits, target, reduction="none")  # (B,)

    return (lam * stability + (1 - lam) * contrastive).mean()


# --- replay over held-out interactions ----------------------------------------


@dataclass
class ReplayResult:
    """What :func:`replay_updates` returns.

    - ``events``: one row per (user, held-out position), see EVENT_COLUMNS;
    - ``summary``: aggregate figures (JSON-ready; None where undefined);
    - ``alphas`` (U, M), ``assignment`` (U,): each user's state after the
      last event, the one that ranks the test item;
    - ``event_alphas`` (E, M): the weights after each event, row-aligned with
      ``events`` (the state that ranks the event's own held-out item).
    """

    events: pd.DataFrame
    summary: dict
    alphas: np.ndarray
    assignment: np.ndarray
    event_alphas: np.ndarray


EVENT_COLUMNS = [
    "user",  # user_idx
    "position",  # index in the user's full sequence of the held-out item this event precedes
    "n_history",  # items before it (the history the drift is computed from)
    "drift",  # KL(p_short || p_long) under the user's table before the event
    "lam",  # gate(drift); 0 when not fired
    "fired",  # drift > theta
    "old_prototype",
    "new_prototype",
    "churn",  # fraction of catalogue items whose full ID changed for this user
    "future_churn",  # same, over the user's items from ``position`` on
    "alpha_step",  # ||alpha_{t+1} - alpha_t||_2
    "h_step_max",  # max over checked items of ||h_{t+1} - h_t||
    "bound_ratio_max",  # max over checked items of ||h_{t+1} - h_t|| / ||h_new - h_t|| (NaN if no update)
    "bound_violation",  # theorem 2's bound fails on some checked item
]


def check_window(window: int, history_cap: int) -> None:
    """The short-term window must fit in the history a model sees."""
    if not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"pmat.window (W) must be an integer >= 1, got {window!r}")
    if window > history_cap:
        raise ValueError(
            f"pmat.window (W={window}) exceeds protocol.history_cap ({history_cap}): the short-term window "
            f"must fit in the history the model sees; set pmat.window <= {history_cap} or raise protocol.history_cap"
        )


def nearest_prototype(alpha: np.ndarray, prototype_weights: np.ndarray) -> int:
    """Index of the prototype whose weights are closest to ``alpha`` (Euclidean; ties to the lowest)."""
    return int(np.argmin(((prototype_weights - alpha) ** 2).sum(axis=1)))


def _check_simplex(alpha: np.ndarray, what: str, fix: str) -> None:
    if (
        not np.isfinite(alpha).all()
        or (alpha < -SIMPLEX_ATOL).any()
        or not np.allclose(alpha.sum(-1), 1.0, atol=SIMPLEX_ATOL)
    ):
        raise ValueError(f"{what} must lie on the simplex (finite, >= 0, summing to 1); got {alpha!r}. {fix}")


def _check_inputs(seqs, split_start, tables, prototype_weights, assignment, alphas, features):
    if tables.ndim != 3 or not np.issubdtype(tables.dtype, np.integer):
        raise ValueError(f"tables must be an integer (P, N, L+1) array of IDs, got {tables.dtype} {tables.shape}")
    n_protos, n_items, _ = tables.shape
    if prototype_weights.ndim != 2 or len(prototype_weights) != n_protos:
        raise ValueError(f"prototype_weights must be (P={n_protos}, M), got {prototype_weights.shape}")
    n_modalities = prototype_weights.shape[1]
    if alphas.shape != (seqs.n_users, n_modalities):
        raise ValueError(f"alphas must be (U={seqs.n_users}, M={n_modalities}), got {alphas.shape}")
    _check_simplex(alphas, "alphas", "Pass the attention module's per-user weights.")
    if assignment.shape != (seqs.n_users,) or assignment.min() < 0 or assignment.max() >= n_protos:
        raise ValueError(
            f"assignment must be (U={seqs.n_users},) prototype indices in [0, {n_protos}); got {assignment}"
        )
    if len(features) != n_modalities:
        raise ValueError(f"got {len(features)} modality feature matrices for M={n_modalities} weights")
    for m, f in enumerate(features):
        if f.ndim != 2 or len(f) != n_items or f.shape != features[0].shape:
            raise ValueError(f"features[{m}] must be (N={n_items}, d) like features[0], got {f.shape}")
    if not isinstance(split_start, (int, np.integer)) or split_start >= 0:
        raise ValueError(
            f"split_start must be a negative offset from the sequence end (-2: valid, test), got {split_start!r}"
        )
    shortest = min(len(s) for s in seqs.items)
    if -split_start >= shortest:
        raise ValueError(
            f"split_start={split_start} leaves no history for a user with {shortest} interactions; "
            f"use split_start >= {-(shortest - 1)}"
        )
    top = max(int(s.max()) for s in seqs.items)
    if top >= n_items:
        raise ValueError(f"sequences reference item {top} but the ID tables cover {n_items} items")


def replay_updates(
    seqs: Sequences,
    *,
    split_start: int = -2,
    tables: np.ndarray,
    prototype_weights: np.ndarray,
    assignment: np.ndarray,
    alphas: np.ndarray,
    weights_fn: Callable[[np.ndarray], np.ndarray],
    features: list[np.ndarray],
    window: int,
    gate: DriftGate,
    history_cap: int,
    n_codes: int | None = None,
    smoothing: float = DEFAULT_SMOOTHING,
    n_check_items: int = 256,
    seed: int | None = 0,
    assign_fn: Callable[[np.ndarray], int] | None = None,
) -> ReplayResult:
    """Replay every user's held-out interactions in time order with drift-triggered updates.

    Arguments (shapes: U users, N items, M modalities, P prototypes):

    - ``seqs``: chronological sequences (train, valid, test);
    - ``split_start``: first held-out position as an offset from each
      sequence's end (-2: the valid item, then the test item);
    - ``tables`` (P, N, L+1) int: one ID table per prototype; column 0 holds
      the coarse (level-0) codes the interest distributions use;
    - ``prototype_weights`` (P, M); ``assignment`` (U,); ``alphas`` (U, M):
      the prototypes and each user's starting prototype and weights;
    - ``weights_fn(window_items (<= W,) int) -> (M,)``: the preference
      network's weights for a short-term window, on the simplex;
    - ``features``: M matrices (N, d) of projected, L2-normalized f_m;
    - ``window`` (W, config ``pmat.window``) <= ``history_cap``;
    - ``gate``: the :class:`DriftGate`;
    - ``n_codes``: level-0 codebook size (default: max code + 1);
    - ``n_check_items``: catalogue items (a fixed seeded sample) on whose
      fused features theorem 2's bound is checked at every update;
    - ``assign_fn(alpha (M,)) -> int``: re-assignment rule (default:
      nearest prototype weights).

    The protocol is in the module docstring. Returns a :class:`ReplayResult`.
    """
    check_window(window, history_cap)
    tables = np.asarray(tables)
    prototype_weights = np.asarray(prototype_weights, dtype=np.float64)
    assignment = np.asarray(assignment, dtype=np.int64).copy()
    alphas = np.asarray(alphas, dtype=np.float64).copy()
    _check_inputs(seqs, split_start, tables, prototype_weights, assignment, alphas, features)
    n_protos, n_items, _ = tables.shape
    n_modalities = prototype_weights.shape[1]
    if n_codes is None:
        n_codes = int(tables[..., 0].max()) + 1
    if assign_fn is None:
        assign_fn = functools.partial(nearest_prototype, prototype_weights=prototype_weights)

    # Theorem 2 is checked on actual fused features of a fixed item sample of
    # S items, kept as one (M, S * d) matrix so that h = alpha @ it is one product.
    rng = np.random.default_rng(seed)
    n_check = min(n_check_items, n_items)
    check_items = np.sort(rng.choice(n_items, size=n_check, replace=False))
    stacked = np.stack([np.asarray(f[check_items], dtype=np.float64).reshape(-1) for f in features])

    def fused(alpha):  # (M,) -> (S, d)
        return (alpha @ stacked).reshape(n_check, -1)

    # Churn between two tables is a property of the pair: computed once, on demand.
    churn_cache: dict[tuple[int, int], float] = {}

    def table_churn(p: int, q: int) -> float:
        if p == q:
            return 0.0
        key = (min(p, q), max(p, q))
        if key not in churn_cache:
            churn_cache[key] = float(np.any(tables[p] != tables[q], axis=1).mean())
        return churn_cache[key]

    rows, event_alphas = [], []
    for u, seq in enumerate(seqs.items):
        seq = np.asarray(seq, dtype=np.int64)
        for pos in range(len(seq) + split_start, len(seq)):
            history = seq[:pos]
            proto_old = int(assignment[u])
            drift = drift_score(tables[proto_old][history, 0], window, n_codes, smoothing)
            fired = bool(gate.fires(drift))
            lam = gate(drift) if fired else 0.0
            alpha_t = alphas[u]
            if fired:
                alpha_new = np.asarray(weights_fn(history[-window:]), dtype=np.float64)
                if alpha_new.shape != (n_modalities,):
                    raise ValueError(f"weights_fn returned shape {alpha_new.shape}; it must return (M={n_modalities},)")
                _check_simplex(
                    alpha_new, "weights_fn's output", "It must return the attention weights (softmax) of the window."
                )
                alpha_next = update(alpha_t, alpha_new, lam)
                proto_new = int(assign_fn(alpha_next))
                # Theorem 2 on the fused features the weights produce, not on the weights.
                h_t, h_new, h_next = fused(alpha_t), fused(alpha_new), fused(alpha_next)
                step = np.linalg.norm(h_next - h_t, axis=-1)  # (S,)
                gap = np.linalg.norm(h_new - h_t, axis=-1)
                moved = gap > 0  # items whose fused feature the candidate weights move at all
                ratio = float(np.max(step[moved] / gap[moved])) if moved.any() else math.nan
                step_max = float(step.max())
                violation = not theorem2_holds(h_t, h_new, h_next, gate.lambda_max)
            else:
                # No update: the state stays, h_{t+1} = h_t for every item, and the bound holds (0 <= anything).
                alpha_next, proto_new = alpha_t, proto_old
                ratio, step_max, violation = math.nan, 0.0, False
            future = seq[pos:]
            changed_future = (
                np.any(tables[proto_old][future] != tables[proto_new][future], axis=1).mean()
                if proto_new != proto_old
                else 0.0
            )
            rows.append(
                {
                    "user": u,
                    "position": pos,
                    "n_history": len(history),
                    "drift": drift,
                    "lam": lam,
                    "fired": fired,
                    "old_prototype": proto_old,
                    "new_prototype": proto_new,
                    "churn": table_churn(proto_old, proto_new),
                    "future_churn": float(changed_future),
                    "alpha_step": float(np.linalg.norm(alpha_next - alpha_t)),
                    "h_step_max": step_max,
                    "bound_ratio_max": ratio,
                    "bound_violation": violation,
                }
            )
            alphas[u] = alpha_next
            assignment[u] = proto_new
            event_alphas.append(alpha_next.copy())

    events = pd.DataFrame(rows, columns=EVENT_COLUMNS)
    summary = summarize(events, seqs.n_users)
    summary.update(
        window=int(window),
        theta=gate.theta,
        lambda_max=gate.lambda_max,
        sharpness=gate.sharpness,
        n_codes=int(n_codes),
        n_prototypes=int(n_protos),
        n_check_items=int(n_check),
    )
    log.info(
        "drift replay: %d events, %d fired (%.1f%%), %d theorem-2 bound violations, %d users changed prototype",
        summary["n_events"],
        summary["n_fired"],
        100 * summary["fire_rate"],
        summary["n_bound_violations"],
        summary["n_users_prototype_changed"],
    )
    return ReplayResult(events, summary, alphas, assignment, np.asarray(event_alphas).reshape(-1, n_modalities))


def summarize(events: pd.DataFrame, n_users: int) -> dict:
    """Aggregate figures of a replay; means over fired updates are None when nothing fired."""
    fired = events[events["fired"]]

    def mean_or_none(col):
        return float(fired[col].mean()) if len(fired) else None

    switched = events["new_prototype"] != events["old_prototype"]
    return {
        "n_users": int(n_users),
        "n_events": int(len(events)),
        "n_fired": int(len(fired)),
        "fire_rate": float(len(fired) / len(events)) if len(events) else 0.0,
        "mean_drift": float(events["drift"].mean()) if len(events) else None,
        "mean_lambda_fired": mean_or_none("lam"),
        "mean_churn_per_update": mean_or_none("churn"),
        "mean_future_churn_per_update": mean_or_none("future_churn"),
        "n_prototype_changes": int(switched.sum()),
        "n_users_prototype_changed": int(events.loc[switched, "user"].nunique()),
        "max_bound_ratio": float(fired["bound_ratio_max"].max()) if fired["bound_ratio_max"].notna().any() else None,
        "n_bound_violations": int(events["bound_violation"].sum()),
    }
