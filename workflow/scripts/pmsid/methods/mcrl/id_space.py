"""How well the ID space separates items: alignment, uniformity and a t-SNE map (docs/METHOD.md section 5).

MCRL's contrastive losses should pull the ID representations of items with
the same pseudo-label together and spread all items over the sphere. This
module measures both on the trained generator, so every ablation
(``mcrl_none`` included) is scored the same way.

The representation
------------------
An item's ID representation in table ``p`` is the sum of the embeddings of its
``D`` ID tokens, ``tok_emb(offsets + codes[p, i]).sum(level)``, shape
``(d_model,)``, then L2-normalized. It is the *unprojected* sum: MCRL's
:class:`pmsid.methods.mcrl.losses.IdRepresentation` adds a learned projection
that only the ablations with an MCRL loss own, while every generator has
``tok_emb``, so all models are compared on the same footing.

The measures (Wang & Isola 2020, "Understanding Contrastive Representation
Learning through Alignment and Uniformity on the Hypersphere", ICML), on
L2-normalized vectors ``z (N, d)``:

    alignment(z, y) = mean_{i != j, y_i = y_j} ||z_i - z_j||^2          (positives = same pseudo-label)
    mean_pair_distance(z) = mean_{i != j} ||z_i - z_j||^2
    uniformity(z, t) = log mean_{i != j} exp(-t ||z_i - z_j||^2)

Lower alignment means same-label items sit closer; lower uniformity means the
points are spread more evenly. ``alignment / mean_pair_distance`` (the
*alignment ratio*) is about 1 when labels say nothing about position and
below 1 when they cluster, and unlike raw alignment it does not reward
collapsing the whole space.

The pair means are exact in ``O(N d)``: for any vectors,
``sum_{i,j in S} ||z_i - z_j||^2 = 2 |S| sum_{i in S} ||z_i||^2 - 2 ||sum_{i in S} z_i||^2``
(diagonal terms are 0), so per-label sums replace the ``N x N`` distance
matrix. Uniformity has no such shortcut; it runs over row chunks of a seeded
subset.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.manifold import TSNE

REPRESENTATION = "sum of ID-token embeddings, L2-normalized, mean over the P tables"


# ------------------------------------------------------------------ inputs
def _as_unit(z, name: str = "z") -> torch.Tensor:
    """``z (N, d)`` (tensor or array) as float64 rows of unit length; a zero row stays zero."""
    z = torch.as_tensor(np.asarray(z) if not torch.is_tensor(z) else z.detach().cpu())
    if z.ndim != 2 or z.is_complex() or z.dtype == torch.bool:
        raise ValueError(f"{name} must be a real (N, d) matrix, got {z.dtype} of shape {tuple(z.shape)}")
    if not torch.isfinite(z.double()).all():
        raise ValueError(f"{name} holds NaN or inf values; the ID representations must be finite")
    return F.normalize(z.double(), dim=1)


def _as_labels(labels, n: int, name: str = "labels") -> np.ndarray:
    """``labels`` as an int64 array ``(n,)``; ValueError naming ``name`` otherwise."""
    arr = labels.detach().cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels)
    if arr.shape != (n,) or arr.dtype.kind not in "iu":
        raise ValueError(
            f"{name} must be an integer array of shape ({n},) (one pseudo-label per item), got {arr.dtype} {arr.shape}"
        )
    return arr.astype(np.int64)


def _check_seed(seed) -> None:
    if seed is not None and not isinstance(seed, Integral):
        raise ValueError(f"seed must be an int or None, got {seed!r}")


def _check_max_items(max_items, least: int) -> None:
    if not (isinstance(max_items, Integral) and max_items >= least):
        raise ValueError(f"max_items must be an integer >= {least}, got {max_items!r}")


def _subset(n: int, max_items: int, seed) -> np.ndarray:
    """Sorted int64 row indices: all ``n`` rows, or a seeded random ``max_items`` of them."""
    if n <= max_items:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=max_items, replace=False)).astype(np.int64)


def _pair_sum(sq_norm_sum: torch.Tensor, vec_sum: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``sum_{i,j in S} ||z_i - z_j||^2`` per set S from its size, sum of squared norms and vector sum.

    Rounding can leave a tiny negative value for a set of identical points;
    clamped to 0 because the true value cannot be negative.
    """
    return (2 * count * sq_norm_sum - 2 * (vec_sum**2).sum(dim=-1)).clamp(min=0)


# ---------------------------------------------------------------- measures
def alignment(z, labels) -> float:
    """Mean squared distance between the L2-normalized rows of same-label items (Wang & Isola 2020).

    ``z (N, d)``: item representations (normalized here). ``labels (N,)``:
    integer pseudo-labels; items sharing a label are the positives. The mean
    runs over all pairs ``i != j`` with ``labels_i == labels_j``, each pair
    weighted equally (ordered or unordered pairs give the same mean), so a
    large cluster weighs more than a small one, as in the paper's
    expectation over positive pairs. Exact, in ``O(N d)`` through per-label
    sums (see the module docstring). Returns a float in ``[0, 4]``, or NaN
    when no label has two items (there is no positive pair).
    """
    z = _as_unit(z)
    y = _as_labels(labels, len(z))
    _, inverse = np.unique(y, return_inverse=True)
    inverse = torch.from_numpy(inverse.reshape(-1))
    n_labels = int(inverse.max()) + 1 if len(inverse) else 0
    count = torch.zeros(n_labels, dtype=torch.float64).index_add_(0, inverse, torch.ones(len(z), dtype=torch.float64))
    vec_sum = torch.zeros(n_labels, z.shape[1], dtype=torch.float64).index_add_(0, inverse, z)  # (C, d)
    sq_sum = torch.zeros(n_labels, dtype=torch.float64).index_add_(0, inverse, (z**2).sum(dim=1))  # (C,)
    pairs = float((count * (count - 1)).sum())  # ordered pairs i != j
    if pairs == 0:
        return float("nan")
    return float(_pair_sum(sq_sum, vec_sum, count).sum()) / pairs


def mean_pair_distance(z) -> float:
    """Mean squared distance over all pairs ``i != j`` of the L2-normalized rows of ``z (N, d)``.

    The alignment of a labelling that puts every item in one class: the
    baseline :func:`alignment` is divided by, since a space that collapses
    shrinks every distance, not only same-label ones. Exact, ``O(N d)``.
    Needs ``N >= 2``; 2.0 for points in general position on a
    high-dimensional sphere, 0.0 when all rows point the same way.
    """
    z = _as_unit(z)
    n = len(z)
    if n < 2:
        raise ValueError(f"z must have at least 2 rows to form a pair, got {n}")
    total = _pair_sum((z**2).sum(), z.sum(dim=0), torch.tensor(float(n), dtype=torch.float64))
    return float(total) / (n * (n - 1))


def uniformity(z, t: float = 2.0, max_items: int = 5000, seed: int | None = 0, chunk: int = 1024) -> float:
    """Wang & Isola's uniformity ``log mean_{i != j} exp(-t ||z_i - z_j||^2)`` of the normalized rows of ``z``.

    ``z (N, d)``. ``t > 0`` is the kernel's sharpness (the paper uses 2).
    When ``N > max_items``, the measure runs on a random subset of
    ``max_items`` rows drawn with ``seed`` (an unbiased estimate; exact
    otherwise), because the pairwise kernel is quadratic. Rows are processed
    ``chunk`` at a time, so memory is ``O(chunk * N)``, and the mean of
    exponentials is a logsumexp, which stays finite where ``exp(-t d)``
    would underflow. Returns a float in ``[-4 t, 0]``; lower is more uniform.
    """
    if not (isinstance(t, Real) and t > 0):
        raise ValueError(f"t must be a positive number, got {t!r}")
    _check_max_items(max_items, 2)
    _check_seed(seed)
    if not (isinstance(chunk, Integral) and chunk >= 1):
        raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")
    z = _as_unit(z)
    if len(z) < 2:
        raise ValueError(f"z must have at least 2 rows to form a pair, got {len(z)}")
    z = z[torch.from_numpy(_subset(len(z), max_items, seed))]
    n = len(z)
    sq = (z**2).sum(dim=1)  # (n,)
    parts = []
    for start in range(0, n, chunk):
        rows = z[start : start + chunk]  # (c, d)
        dist = (sq[start : start + chunk, None] + sq[None, :] - 2 * rows @ z.T).clamp(min=0)  # (c, n)
        logits = -float(t) * dist
        own = torch.arange(len(rows))
        logits[own, own + start] = float("-inf")  # leave out i == j
        parts.append(torch.logsumexp(logits.flatten(), dim=0))
    return float(torch.logsumexp(torch.stack(parts), dim=0)) - math.log(n * (n - 1))


def tsne(z, seed: int | None = 0, perplexity: float = 30.0, max_items: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """A 2-D t-SNE map of the L2-normalized rows of ``z (N, d)``.

    Runs scikit-learn's :class:`~sklearn.manifold.TSNE` (PCA init,
    ``random_state=seed``) on all rows when ``N <= max_items``, otherwise on
    a seeded random subset of ``max_items`` rows (t-SNE is quadratic-ish and a
    plot of more points is unreadable anyway). ``perplexity`` is clipped to
    ``(n - 1) / 3`` so tiny inputs still run (t-SNE needs about three times
    the perplexity in neighbours). Needs ``N >= 2``.

    Returns ``idx`` int64 ``(n,)``, the sorted rows of ``z`` mapped, and
    ``xy`` float32 ``(n, 2)``, their coordinates.
    """
    if not (isinstance(perplexity, Real) and perplexity > 0):
        raise ValueError(f"perplexity must be a positive number, got {perplexity!r}")
    _check_max_items(max_items, 2)
    _check_seed(seed)
    z = _as_unit(z)
    if len(z) < 2:
        raise ValueError(f"z must have at least 2 rows for a t-SNE map, got {len(z)}")
    idx = _subset(len(z), max_items, seed)
    n = len(idx)
    perplexity = min(float(perplexity), (n - 1) / 3)
    model = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed)
    xy = model.fit_transform(z[torch.from_numpy(idx)].numpy())
    return idx, np.asarray(xy, dtype=np.float32)


# -------------------------------------------------------------- generators
def item_representations(generator, table: int = 0) -> torch.Tensor:
    """Unprojected ID representations ``(n_items, d_model)`` of every item under ID table ``table``.

    ``generator`` is a :class:`pmsid.models.generator.TigerGenerator` (or any
    module with its ``tok_emb``, ``codes (P, n_items, D)`` and ``offsets (D,)``).
    Row ``i`` is ``sum_j tok_emb(offsets[j] + codes[table, i, j])``. Returned
    as float32 on the CPU, detached (computed under ``no_grad``): these are
    measurements, not part of a graph.
    """
    missing = [a for a in ("tok_emb", "codes", "offsets") if not hasattr(generator, a)]
    if missing:
        raise ValueError(
            f"generator must be a TigerGenerator (with tok_emb, codes, offsets); "
            f"{type(generator).__name__} lacks {missing}"
        )
    n_tables = generator.codes.shape[0]
    if not (isinstance(table, Integral) and 0 <= table < n_tables):
        raise ValueError(f"table must be an int in [0, {n_tables}), got {table!r}")
    with torch.no_grad():
        tokens = generator.codes[table] + generator.offsets  # (n_items, D)
        rep = generator.tok_emb(tokens).sum(dim=1)  # (n_items, d_model)
    return rep.float().cpu()


def _check_label_dict(labels, n_items: int) -> dict[str, np.ndarray]:
    if not isinstance(labels, dict):
        raise ValueError(f"labels must be a dict modality -> (n_items,) int array, got {type(labels).__name__}")
    return {m: _as_labels(y, n_items, f"labels[{m!r}]") for m, y in labels.items()}


def summarize(generator, labels: dict[str, np.ndarray], max_items: int = 5000, seed: int | None = 0) -> dict:
    """Alignment per modality, mean pair distance and uniformity of a generator's ID space, for the workflow.

    ``labels[m] (n_items,)``: the integer pseudo-labels of modality ``m``
    (MCRL's L_intra positives). Every measure is computed on each of the
    generator's ``P`` ID tables (:func:`item_representations`) and averaged
    over tables; ``alignment_ratio[m]`` is the averaged alignment over the
    averaged mean pair distance (NaN when that distance is 0). Uniformity
    uses ``t = 2`` on a subset of ``max_items`` items drawn with ``seed``
    (the same subset for every table). Alignment is NaN for a modality whose
    labels are all distinct. Values are plain floats; NaN is written by
    ``json.dump`` as ``NaN``.
    """
    _check_max_items(max_items, 2)
    _check_seed(seed)
    z0 = item_representations(generator, 0)
    n_items = len(z0)
    labels = _check_label_dict(labels, n_items)
    n_tables = int(generator.codes.shape[0])
    align = {m: [] for m in labels}
    mpd, unif = [], []
    for p in range(n_tables):
        z = z0 if p == 0 else item_representations(generator, p)
        for m, y in labels.items():
            align[m].append(alignment(z, y))
        mpd.append(mean_pair_distance(z))
        unif.append(uniformity(z, max_items=max_items, seed=seed))
    alignment_mean = {m: float(np.mean(v)) for m, v in align.items()}
    mpd_mean = float(np.mean(mpd))
    return {
        "n_items": int(n_items),
        "n_tables": n_tables,
        "modalities": list(labels),
        "alignment": alignment_mean,
        "mean_pair_distance": mpd_mean,
        "alignment_ratio": {m: a / mpd_mean if mpd_mean > 0 else float("nan") for m, a in alignment_mean.items()},
        "uniformity": float(np.mean(unif)),
        "representation": REPRESENTATION,
    }


def tsne_frame(
    generator,
    labels: dict[str, np.ndarray],
    table: int = 0,
    seed: int | None = 0,
    perplexity: float = 30.0,
    max_items: int = 2000,
) -> pd.DataFrame:
    """A t-SNE map of one ID table's representations, one row per mapped item, for the figure.

    Columns: ``item_idx`` int32, ``x``, ``y`` float32 and ``label_{m}`` int32
    for every modality of ``labels`` (``labels[m] (n_items,)``, in the dict's
    order), so a plot can colour the same map by each modality's
    pseudo-labels. Items are all of them when ``n_items <= max_items``,
    otherwise a seeded subset, sorted by index (see :func:`tsne`).
    """
    z = item_representations(generator, table)
    labels = _check_label_dict(labels, len(z))
    idx, xy = tsne(z, seed=seed, perplexity=perplexity, max_items=max_items)
    frame = pd.DataFrame({"item_idx": idx.astype(np.int32), "x": xy[:, 0], "y": xy[:, 1]})
    for m, y in labels.items():
        frame[f"label_{m}"] = y[idx].astype(np.int32)
    return frame
