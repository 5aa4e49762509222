"""Causal training windows against the per-prefix training samples they replace."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from pmsid.data.sequences import PAD, Sequences, training_positions, training_samples, training_windows

P = PAD


def with_eval_items(train_items):
    """A full sequence: the training items plus a valid and a test item (never training targets)."""
    return np.r_[np.asarray(train_items, np.int64), 900, 901]


def visible(inputs_row, j):
    """The real items a causal model sees when predicting position ``j``: inputs 0..j without PAD."""
    row = inputs_row[: j + 1]
    return row[row != PAD]


def test_windows_written_out_by_hand():
    # User 0: 7 training items t0..t6 = 10..16, 6 targets, cap 3 -> exactly two full windows.
    # User 1: 8 training items 20..27, 7 targets -> a padded first window holding one target.
    # User 2: 2 training items -> one target. User 3: 1 training item -> no target, no window.
    seqs = Sequences(
        [
            with_eval_items(range(10, 17)),
            with_eval_items(range(20, 28)),
            with_eval_items([30, 31]),
            with_eval_items([40]),
        ],
        n_items=1000,
    )
    users, inputs, targets = training_windows(seqs, cap=3)
    expected_users = [0, 0, 1, 1, 1, 2]
    expected_inputs = [
        [10, 11, 12],
        [13, 14, 15],  # starts with the last target of the window before
        [P, P, 20],
        [21, 22, 23],
        [24, 25, 26],
        [P, P, 30],
    ]
    expected_targets = [
        [11, 12, 13],
        [14, 15, 16],
        [P, P, 21],
        [22, 23, 24],
        [25, 26, 27],
        [P, P, 31],
    ]
    np.testing.assert_array_equal(users, expected_users)
    np.testing.assert_array_equal(inputs, expected_inputs)
    np.testing.assert_array_equal(targets, expected_targets)
    assert inputs.dtype == targets.dtype == users.dtype == np.int64


def test_no_training_target_gives_empty_arrays_of_the_right_shape():
    users, inputs, targets = training_windows(Sequences([with_eval_items([5])], n_items=10), cap=4)
    assert users.shape == (0,) and inputs.shape == (0, 4) and targets.shape == (0, 4)


def random_sequences(seed, n_users=40, repeats=False):
    """Users of 1..60 training items; with ``repeats`` items recur within a user."""
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(n_users):
        n = int(rng.integers(1, 61))
        train = rng.integers(0, 15, n) if repeats else rng.permutation(200)[:n]
        items.append(with_eval_items(train))
    return Sequences(items, n_items=1000)


@pytest.mark.parametrize("cap", [1, 3, 20])
@pytest.mark.parametrize("repeats", [False, True])
def test_every_prefix_target_appears_exactly_once(cap, repeats):
    seqs = random_sequences(seed=cap, repeats=repeats)
    s_users, _, s_targets = training_samples(seqs, cap)
    w_users, w_inputs, w_targets = training_windows(seqs, cap)
    real = w_targets != PAD
    from_windows = Counter(zip(np.repeat(w_users, real.sum(axis=1)).tolist(), w_targets[real].tolist()))
    assert from_windows == Counter(zip(s_users.tolist(), s_targets.tolist()))
    # Padding only on the left, the same in inputs and targets, and never in a window's last position.
    assert np.array_equal(w_inputs != PAD, real)
    assert np.all(np.diff(real.astype(int), axis=1) >= 0)
    assert np.all(real[:, -1])
    # As few windows as possible: ceil(targets / cap) per user.
    n_targets = np.array([max(len(s) - 3, 0) for s in seqs.items])
    assert len(w_users) == int(np.sum(-(-n_targets // cap)))


@pytest.mark.parametrize("cap", [1, 3, 20])
def test_histories_match_the_prefix_samples(cap):
    """Last position: exactly the per-prefix history. Elsewhere: its most recent part, from within the window."""
    seqs = random_sequences(seed=100 + cap)  # items unique per user, so (user, target) names one prefix
    s_users, s_hists, s_targets = training_samples(seqs, cap)
    prefix_history = {(u, t): h[h != PAD] for u, h, t in zip(s_users.tolist(), s_hists, s_targets.tolist())}
    w_users, w_inputs, w_targets = training_windows(seqs, cap)
    shorter = 0
    for u, inputs, targets in zip(w_users.tolist(), w_inputs, w_targets):
        last = cap - 1
        np.testing.assert_array_equal(visible(inputs, last), prefix_history[(u, int(targets[last]))])
        # Right-aligned exactly as pad_left places the prefix history, so positions match too.
        np.testing.assert_array_equal(inputs, s_hists[(s_users == u) & (s_targets == targets[last])][0])
        for j in np.flatnonzero(targets != PAD):
            seen, full = visible(inputs, j), prefix_history[(u, int(targets[j]))]
            assert len(seen) == min(len(full), j + 1)
            np.testing.assert_array_equal(seen, full[len(full) - len(seen) :])
            shorter += len(seen) < len(full)
    if cap > 1:
        assert shorter > 0  # the documented difference does occur on this data


def test_training_positions_name_the_target_of_every_prefix_row():
    seqs = Sequences([np.array([5, 6, 7, 8, 9, 1]), np.array([2, 3, 4]), np.array([0, 1, 2, 3])], n_items=10)
    users, hist, targets = training_samples(seqs, cap=3)
    pos_users, positions = training_positions(seqs)
    np.testing.assert_array_equal(pos_users, users)
    np.testing.assert_array_equal(positions, [1, 2, 3, 1])
    np.testing.assert_array_equal([seqs.items[u][p] for u, p in zip(users, positions)], targets)
