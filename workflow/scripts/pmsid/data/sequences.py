"""User sequences under the leave-one-out protocol (docs/METHOD.md section 2).

The split interactions table says, per user, which item is the validation
target (second-to-last) and which is the test target (last). Models see
histories as left-padded index arrays: ``PAD = -1`` fills the left, the most
recent item is in the last column, and at most ``history_cap`` items are kept.

- training samples: every prefix of every training sequence, i.e. for a user
  with training items ``t0 .. tn`` the pairs ``(t0 -> t1), (t0 t1 -> t2), ...``;
- training windows: the same targets ``t1 .. tn`` packed into windows of
  ``cap`` positions, one target per position, for models that predict at
  every position of a causal sequence in one pass (see
  :func:`training_windows`);
- validation: history = all training items, target = the valid item;
- test: history = training items + the valid item, target = the test item.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

PAD = -1


@dataclass
class Sequences:
    """Chronological item sequences per user (index ``u`` = user_idx ``u``)."""

    items: list[np.ndarray]  # full sequence per user, train + valid + test, in time order
    n_items: int

    @property
    def n_users(self) -> int:
        return len(self.items)

    @classmethod
    def from_interactions(cls, interactions: pd.DataFrame, n_items: int) -> Sequences:
        df = interactions.sort_values(["user_idx", "position"])
        n_users = int(df["user_idx"].max()) + 1
        if df["user_idx"].nunique() != n_users:
            raise ValueError("interactions: user_idx must be dense 0..U-1")
        grouped = df.groupby("user_idx", sort=True)["item_idx"].apply(lambda s: s.to_numpy(np.int64))
        for u, seq in zip(grouped.index, grouped.values):
            if len(seq) < 3:
                raise ValueError(f"interactions: user_idx {u} has {len(seq)} interactions; leave-one-out needs >= 3")
        return cls(items=list(grouped.values), n_items=n_items)

    def train_items(self, user: int) -> np.ndarray:
        return self.items[user][:-2]


def pad_left(seq: np.ndarray, cap: int) -> np.ndarray:
    """The last ``cap`` items of ``seq``, left-padded with ``PAD`` to length ``cap``."""
    seq = np.asarray(seq[-cap:], dtype=np.int64)
    out = np.full(cap, PAD, dtype=np.int64)
    if len(seq):
        out[cap - len(seq) :] = seq
    return out


def training_samples(seqs: Sequences, cap: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every prefix of every training sequence.

    Returns ``(users (S,), histories (S, cap), targets (S,))``.
    """
    users, hists, targets = [], [], []
    for u, seq in enumerate(seqs.items):
        train = seq[:-2]
        for t in range(1, len(train)):
            users.append(u)
            hists.append(pad_left(train[:t], cap))
            targets.append(train[t])
    return np.asarray(users, np.int64), np.stack(hists), np.asarray(targets, np.int64)


def training_positions(seqs: Sequences) -> tuple[np.ndarray, np.ndarray]:
    """``(users (S,), positions (S,))`` of the rows of :func:`training_samples`:
    row s predicts item ``positions[s]`` of user ``users[s]``'s sequence from
    the items before it."""
    users, positions = [], []
    for u, seq in enumerate(seqs.items):
        n = max(len(seq) - 2 - 1, 0)  # training prefixes of this user
        users.append(np.full(n, u, np.int64))
        positions.append(np.arange(1, n + 1, dtype=np.int64))
    if not users:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(users), np.concatenate(positions)


def training_windows(seqs: Sequences, cap: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every training target once, packed into causal windows of ``cap`` positions.

    Returns ``(users (W,), inputs (W, cap), targets (W, cap))``. In a window,
    ``targets[w, j]`` is the item that follows ``inputs[w, j]``; a model with
    causal attention predicts ``targets[w, j]`` from ``inputs[w, :j + 1]``.
    Windows are left-padded with ``PAD`` in both arrays (``PAD`` target = no
    target), so the last position of every window is a real target.

    A user's training items ``t0 .. tn`` are cut from the end into consecutive
    chunks of ``cap + 1`` items that overlap by one item: the last window has
    inputs ``t[n-cap] .. t[n-1]`` and targets ``t[n-cap+1] .. t[n]``, the one
    before it ends with target ``t[n-cap]`` (the first input of the last one),
    and so on; only the earliest window can be short (padded). For
    ``t0 .. t6`` and ``cap = 3``::

        inputs  [t0 t1 t2]  targets [t1 t2 t3]
        inputs  [t3 t4 t5]  targets [t4 t5 t6]

    Equivalence with :func:`training_samples`: every target ``t1 .. tn``
    appears exactly once, as there, and the last position of each window sees
    exactly the per-prefix history of its target (the ``cap`` most recent
    items, right-aligned as ``pad_left`` places them). The one difference:
    the other positions see only the items before them *within the window*,
    so a target at position ``j`` of a window after the first has ``j + 1``
    past items where its per-prefix sample has ``cap``. (Cutting from the end
    keeps the most recent ``cap`` items whole in the last window, which is the
    history the model ranks from at evaluation.) Users with one training item
    have no target and give no window, as in :func:`training_samples`.
    """
    users, inputs, targets = [], [], []
    for u, seq in enumerate(seqs.items):
        train = np.asarray(seq[:-2], dtype=np.int64)
        chunks = []
        # ``end`` is one past the last target of a window; stepping back by
        # ``cap`` makes the next (earlier) window's last target the first
        # input of this one.
        for end in range(len(train), 1, -cap):
            chunk = train[max(0, end - cap - 1) : end]  # <= cap + 1 items
            chunks.append(chunk)
        for chunk in reversed(chunks):  # chronological order within a user
            users.append(u)
            inputs.append(pad_left(chunk[:-1], cap))
            targets.append(pad_left(chunk[1:], cap))
    if not users:
        empty = np.zeros((0, cap), np.int64)
        return np.zeros(0, np.int64), empty, empty.copy()
    return np.asarray(users, np.int64), np.stack(inputs), np.stack(targets)


def eval_samples(seqs: Sequences, split: str, cap: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Histories and targets for ``split`` ("valid" or "test"), one row per user.

    Returns ``(users (U,), histories (U, cap), targets (U,))``.
    """
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    cut = -2 if split == "valid" else -1
    users = np.arange(seqs.n_users, dtype=np.int64)
    hists = np.stack([pad_left(seq[:cut], cap) for seq in seqs.items])
    targets = np.asarray([seq[cut] for seq in seqs.items], np.int64)
    return users, hists, targets
