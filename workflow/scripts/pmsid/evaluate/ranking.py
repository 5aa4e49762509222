"""One evaluation for every method: top-K lists in, ranks and metrics out.

A method's ``rank`` returns, per split, a :class:`Ranking`: the top-K items
of every user, best first. :func:`evaluate_rankings` turns the lists into the
three files of an evaluation (``ranking``, ``per_user``, ``metrics``), the
same way for every method, so that the metrics can be recomputed from
``ranking.parquet`` alone.

Tie rule, for every score-based method: items are ordered by score,
descending, and equal scores by item index, ascending (:func:`top_k`);
items scored -inf (excluded) are dropped. The ranks that training's
validation computes from full scores
(:func:`pmsid.evaluate.metrics.rank_of_target`) follow the same rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pmsid.data.sequences import Sequences, eval_samples, pad_left
from pmsid.evaluate.metrics import mean_metrics

SPLITS = ("valid", "test")
MIN_LIST = 20  # every ranking holds at least this many items, whatever the cut-offs


@dataclass
class Ranking:
    """The top-K lists of one split.

    ``users (U,)`` the users in the order of the rows; ``items (U, K)`` item
    indices, best first, ``-1`` where a method returned fewer than K items;
    ``scores (U, K)`` the scores behind the order, or None; ``extra`` metrics
    the method measured on the way (for example the beam search's invalid-ID
    rate), written beside the ranking metrics.
    """

    users: np.ndarray
    items: np.ndarray
    scores: np.ndarray | None = None
    extra: dict = field(default_factory=dict)


def list_length(ks: list[int]) -> int:
    """K of the top-K lists: the largest cut-off, and at least ``MIN_LIST``."""
    return max(max(ks), MIN_LIST)


def history_items(seqs: Sequences, split: str) -> np.ndarray:
    """Every item before the ``split`` target per user, ``(U, H)`` padded with ``PAD``."""
    cut = -2 if split == "valid" else -1
    longest = max(len(seq) for seq in seqs.items) + cut
    return np.stack([pad_left(seq[:cut], longest) for seq in seqs.items])


def ranks_in_list(items: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based position of ``targets[u]`` in ``items[u]`` (a top list), NaN when absent."""
    hit = items == targets[:, None]  # (U, K)
    return np.where(hit.any(axis=1), hit.argmax(axis=1) + 1.0, np.nan)


def mask_items(scores, items):
    """Torch ``scores (N, n_items)`` with the items of ``items (N, H)`` (PAD = -1 ignored) set to -inf."""
    import torch

    n_items = scores.shape[1]
    padded = torch.cat([scores, scores.new_zeros(len(scores), 1)], dim=1)  # spare column for PAD
    padded.scatter_(1, torch.where(items >= 0, items, n_items), float("-inf"))
    return padded[:, :n_items]


def top_k(scores, k: int):
    """The ``k`` best items of each row of torch ``scores (N, n_items)``: ``(items, scores)``.

    The tie rule of every score-based method: higher score first, then lower
    item index (a stable sort). Items scored -inf (excluded) come last and are
    cut from the list, padded with item -1 and score -inf.
    """
    import torch

    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    values = torch.gather(scores, 1, order)
    order = torch.where(torch.isneginf(values), torch.full_like(order, -1), order)
    if order.shape[1] < k:  # a catalogue smaller than k
        pad = k - order.shape[1]
        order = torch.cat([order, order.new_full((len(order), pad), -1)], dim=1)
        values = torch.cat([values, values.new_full((len(values), pad), float("-inf"))], dim=1)
    return order, values


def fit_length(items: np.ndarray, scores: np.ndarray | None, k: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Lists cut or padded to exactly ``k`` items (item -1, score -inf), so
    that every method's ranking.parquet holds lists of one length."""
    items = np.asarray(items, np.int64)
    if scores is not None:
        scores = np.asarray(scores, np.float32)
    if items.shape[1] >= k:
        return items[:, :k], None if scores is None else scores[:, :k]
    pad = k - items.shape[1]
    items = np.pad(items, ((0, 0), (0, pad)), constant_values=-1)
    if scores is not None:
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    return items, scores


def rank_by_scores(
    seqs: Sequences, score_batch, k: int, exclude_history: bool, batch: int = 1024
) -> dict[str, Ranking]:
    """Rankings of a method that scores every item: ``score_batch(split, users)``
    returns torch scores ``(len(users), n_items)``; the user's history is set
    to -inf when excluded, and :func:`top_k` makes the lists."""
    import torch

    rankings = {}
    for split in SPLITS:
        users = np.arange(seqs.n_users)
        exclude = history_items(seqs, split) if exclude_history else None
        items, scores = [], []
        for start in range(0, len(users), batch):
            s = score_batch(split, users[start : start + batch])
            if exclude is not None:
                s = mask_items(s, torch.from_numpy(exclude[start : start + batch]).to(s.device))
            top, values = top_k(s, k)
            items.append(top.cpu().numpy())
            scores.append(values.float().cpu().numpy())
        rankings[split] = Ranking(users=users, items=np.concatenate(items), scores=np.concatenate(scores))
    return rankings


def evaluate_rankings(
    seqs: Sequences, rankings: dict[str, Ranking], ks: list[int], history_cap: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``(ranking, per_user, metrics)`` frames of one evaluation.

    Each list is cut or padded to K = :func:`list_length` items. Each split's
    targets come from ``seqs`` (the held-out item per user); the rank of a
    target is its 1-based position in the user's list (null when absent),
    and every metric is :func:`pmsid.evaluate.metrics.mean_metrics` of those
    ranks, plus the method's ``extra`` measures and ``n_users``.
    """
    k = list_length(ks)
    ranking, per_user, rows = [], [], []
    for split in SPLITS:
        if split not in rankings:
            raise ValueError(f"evaluate_rankings: no ranking for split {split!r}; got {sorted(rankings)}")
        result = rankings[split]
        users, _, targets = eval_samples(seqs, split, history_cap)
        if not np.array_equal(result.users, users):
            raise ValueError(f"{split}: the ranking's users differ from the split's {len(users)} users")
        items, scores = fit_length(result.items, result.scores, k)
        ranks = ranks_in_list(items, targets)
        ranking.append(
            pd.DataFrame(
                {
                    "user_idx": users.astype(np.int32),
                    "split": split,
                    "target_item": targets.astype(np.int32),
                    "items": list(items.astype(np.int32)),
                    "scores": [None] * len(users) if scores is None else list(scores),
                }
            )
        )
        per_user.append(
            pd.DataFrame(
                {
                    "user_idx": users.astype(np.int32),
                    "split": split,
                    "target_item": targets.astype(np.int32),
                    # NaN (not in the returned list) becomes a null rank.
                    "rank": pd.array(ranks, dtype="Float64").astype("Int32"),
                }
            )
        )
        values = {**mean_metrics(ranks, ks), **result.extra, "n_users": float(len(users))}
        rows += [{"split": split, "metric": k, "value": float(v)} for k, v in values.items()]
    return (
        pd.concat(ranking, ignore_index=True),
        pd.concat(per_user, ignore_index=True),
        pd.DataFrame(rows),
    )
