"""Behaviour features: training-split co-occurrence -> PPMI -> truncated SVD."""

import logging

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pmsid.data.contracts import INTERACTIONS, ITEMS, read_features, read_metadata, write_table
from pmsid.features.behaviour import (
    behaviour_embeddings,
    cooccurrence_matrix,
    extract_behaviour_features,
    ppmi,
)


def interactions_from(sequences):
    """Contract-shaped interactions from full per-user sequences (last = test, second-to-last = valid)."""
    rows = []
    for u, seq in enumerate(sequences):
        n = len(seq)
        for p, item in enumerate(seq):
            split = "test" if p == n - 1 else "valid" if p == n - 2 else "train"
            rows.append((u, item, 1000 * u + p, p, split))
    df = pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp", "position", "split"])
    return df.astype({"user_idx": np.int32, "item_idx": np.int32, "timestamp": np.int64, "position": np.int32})


def random_sequences(n_users, n_items, length, seed):
    rng = np.random.default_rng(seed)
    return [rng.choice(n_items, size=length, replace=False).tolist() for _ in range(n_users)]


def cosine(matrix):
    unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    return unit @ unit.T


def test_window_counts_hand_checked():
    # user 0 trains on 0 1 2 3 (valid 4, test 5); user 1 on 2 0 2 (valid 5, test 4).
    df = interactions_from([[0, 1, 2, 3, 4, 5], [2, 0, 2, 5, 4]])
    counts = cooccurrence_matrix(df, n_items=6, window=2).toarray()
    expected = np.zeros((6, 6))
    # user 0, offset 1: (0,1) (1,2) (2,3); offset 2: (0,2) (1,3); (0,3) is 3 apart.
    # user 1, offset 1: (2,0) (0,2); offset 2: (2,2) is the diagonal, dropped.
    # Nothing crosses from user 0's last item 3 to user 1's items, and the
    # held-out items 4 and 5 never appear.
    for a, b, c in [(0, 1, 1), (1, 2, 1), (2, 3, 1), (0, 2, 3), (1, 3, 1)]:
        expected[a, b] = expected[b, a] = c
    np.testing.assert_array_equal(counts, expected)

    consecutive = cooccurrence_matrix(df, n_items=6, window=1).toarray()
    expected1 = np.zeros((6, 6))
    for a, b, c in [(0, 1, 1), (1, 2, 1), (2, 3, 1), (0, 2, 2)]:
        expected1[a, b] = expected1[b, a] = c
    np.testing.assert_array_equal(consecutive, expected1)


def test_window_must_be_positive():
    df = interactions_from([[0, 1, 2, 3]])
    with pytest.raises(ValueError, match="window must be an integer >= 1"):
        cooccurrence_matrix(df, n_items=4, window=0)


def test_ppmi_hand_checked():
    # Pairs 0-1 and 2-3 co-occur 4 times, 0-2 once. Row sums 5 4 5 4, total 18.
    counts = np.zeros((4, 4))
    for a, b, c in [(0, 1, 4), (2, 3, 4), (0, 2, 1)]:
        counts[a, b] = counts[b, a] = c
    got = ppmi(sp.csr_matrix(counts)).toarray()
    expected = np.zeros((4, 4))
    expected[0, 1] = expected[1, 0] = expected[2, 3] = expected[3, 2] = np.log(4 * 18 / (5 * 4))
    # 0-2: log(1 * 18 / (5 * 5)) < 0, clipped to 0.
    np.testing.assert_allclose(got, expected)


def test_embeddings_match_a_dense_svd():
    # U * sqrt(S) is unique up to rotations within tied singular values, so
    # compare the Gram matrices with the rank-dim one of an exact dense SVD.
    n_items, dim = 30, 6
    df = interactions_from(random_sequences(n_users=50, n_items=n_items, length=9, seed=7))
    u, s, _ = np.linalg.svd(ppmi(cooccurrence_matrix(df, n_items, window=2)).toarray())
    ref = u[:, :dim] * np.sqrt(s[:dim])
    emb = behaviour_embeddings(df, n_items, dim=dim, window=2, seed=0).astype(np.float64)
    np.testing.assert_allclose(emb @ emb.T, ref @ ref.T, atol=1e-4 * s[0])


def test_heldout_items_do_not_leak():
    n_items = 40
    seqs = random_sequences(n_users=60, n_items=n_items, length=12, seed=1)
    base = interactions_from(seqs)
    emb = behaviour_embeddings(base, n_items, dim=8, window=3, seed=0)

    # Every user's valid and test items (and their timestamps) replaced.
    rng = np.random.default_rng(2)
    changed = base.copy()
    heldout = changed["split"] != "train"
    changed.loc[heldout, "item_idx"] = rng.integers(0, n_items, heldout.sum()).astype(np.int32)
    changed.loc[heldout, "timestamp"] += 7
    assert not changed["item_idx"].equals(base["item_idx"])
    np.testing.assert_array_equal(behaviour_embeddings(changed, n_items, dim=8, window=3, seed=0), emb)

    # One training item replaced: the features must move.
    train_row = base.index[base["split"] == "train"][5]
    moved = base.copy()
    moved.loc[train_row, "item_idx"] = (moved.loc[train_row, "item_idx"] + 1) % n_items
    assert not np.array_equal(behaviour_embeddings(moved, n_items, dim=8, window=3, seed=0), emb)


def test_same_seed_same_embeddings():
    n_items = 50
    df = interactions_from(random_sequences(n_users=80, n_items=n_items, length=10, seed=3))
    a = behaviour_embeddings(df, n_items, dim=16, window=4, seed=0)
    b = behaviour_embeddings(df.sample(frac=1.0, random_state=9), n_items, dim=16, window=4, seed=0)
    assert a.dtype == np.float32 and a.shape == (n_items, 16)
    np.testing.assert_array_equal(a, b)  # row order of the table does not matter either


@pytest.mark.parametrize("window, dim", [(4, 16), (2, 40)])
def test_the_embeddings_do_not_depend_on_the_seed(window, dim):
    """Why the stage runs once per dataset and has no seed key: the seed only
    draws ARPACK's start vector, and every start vector converges to the same
    features (column signs fixed), to far below float32 resolution."""
    n_items = 60
    df = interactions_from(random_sequences(n_users=90, n_items=n_items, length=12, seed=8))
    first = behaviour_embeddings(df, n_items, dim=dim, window=window).astype(np.float64)
    for seed in (1, 7, 2**31 - 1, None):
        other = behaviour_embeddings(df, n_items, dim=dim, window=window, seed=seed).astype(np.float64)
        np.testing.assert_allclose(other, first, rtol=0, atol=1e-10, err_msg=f"seed {seed}")


def test_groups_consumed_together_embed_together():
    # Items 0..14 and 15..29: every user consumes from one group only.
    rng = np.random.default_rng(4)
    groups = [np.arange(0, 15), np.arange(15, 30)]
    seqs = [rng.choice(groups[u % 2], size=8, replace=False).tolist() for u in range(120)]
    emb = behaviour_embeddings(interactions_from(seqs), 30, dim=8, window=3, seed=0)
    sim = cosine(emb)
    same = np.equal.outer(np.arange(30) < 15, np.arange(30) < 15)
    off_diag = ~np.eye(30, dtype=bool)
    within = sim[same & off_diag].mean()
    across = sim[~same].mean()
    assert within > across + 0.3, (within, across)


def test_dim_clipped_to_items_minus_one(caplog):
    df = interactions_from([[0, 1, 2, 3, 4, 0, 1], [4, 3, 2, 1, 0, 2, 3]])
    with caplog.at_level(logging.WARNING, logger="pmsid.features.behaviour"):
        emb = behaviour_embeddings(df, n_items=5, dim=10, window=2, seed=0)
    assert emb.shape == (5, 4)
    assert "clipped to 4" in caplog.text


def test_items_without_training_cooccurrence_get_the_mean(caplog):
    # Item 9 appears only as a held-out item: no training co-occurrence.
    n_items = 10
    seqs = [s + [9, 9 if u % 2 else 0] for u, s in enumerate(random_sequences(30, 9, 6, seed=5))]
    with caplog.at_level(logging.WARNING, logger="pmsid.features.behaviour"):
        emb = behaviour_embeddings(interactions_from(seqs), n_items, dim=4, window=2, seed=0)
    assert "1 item(s) have no training co-occurrence" in caplog.text
    np.testing.assert_allclose(emb[9], emb[:9].mean(axis=0, dtype=np.float64), rtol=1e-5, atol=1e-7)
    assert np.linalg.norm(emb[9]) > 0


def test_feature_file_round_trips_with_metadata(tmp_path):
    n_items = 12
    seqs = [s + [11, 0] for s in random_sequences(40, 11, 7, seed=6)]  # item 11 only held out
    df = interactions_from(seqs)
    items = pd.DataFrame(
        {
            "item_idx": np.arange(n_items, dtype=np.int32),
            "item_id": [f"m{i}" for i in range(n_items)],
            "text": [f"movie {i}" for i in range(n_items)],
            "image_url": [None] * n_items,
        }
    )
    write_table(df, tmp_path / "interactions.parquet", INTERACTIONS)
    write_table(items, tmp_path / "items.parquet", ITEMS)
    out = tmp_path / "behaviour.parquet"
    extract_behaviour_features(tmp_path / "interactions.parquet", tmp_path / "items.parquet", out, dim=6, window=3)

    item_idx, matrix = read_features(out)
    np.testing.assert_array_equal(item_idx, np.arange(n_items))
    np.testing.assert_array_equal(matrix, behaviour_embeddings(df, n_items, dim=6, window=3))
    meta = read_metadata(out)
    assert meta["stage"] == "behaviour_features"
    assert meta["modality"] == "behaviour"
    assert meta["source"] == "training-split co-occurrence, PPMI + truncated SVD"
    assert (meta["dim"], meta["window"]) == (6, 3) and "seed" not in meta  # deterministic: no seed
    assert meta["n_items_without_training_cooccurrence"] == 1
