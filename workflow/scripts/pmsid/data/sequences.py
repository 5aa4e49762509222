"""User sequences under the leave-one-out protocol (THESIS.md section 2).

The split interactions table says, per user, which item is the validation
target (second-to-last) and which is the test target (last). Models see
histories as left-padded index arrays: ``PAD = -1`` fills the left, the most
recent item is in the last column, and at most ``history_cap`` items are kept.

- training samples: every prefix of every training sequence, i.e. for a user
  with training items ``t0 .. tn`` the pairs ``(t0 -> t1), (t0 t1 -> t2), ...``;
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
    def from_interactions(cls, interactions: pd.DataFrame, n_items: int) -> "Sequences":
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
