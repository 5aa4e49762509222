"""Trie-constrained beam search: validity, exactness against brute force, history exclusion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pmsid.models.beam import Trie, beam_search, brute_force_topk
from pmsid.models.generator import TigerGenerator, group_causal_mask

torch.set_num_threads(1)


def random_codes(n_items, level_sizes, seed):
    """Unique random IDs plus a dedup token; skewed so that some prefixes have few completions."""
    rng = np.random.default_rng(seed)
    # Squaring uniform draws piles items onto low codes: dense and sparse subtrees.
    raw = np.stack([(rng.random(4 * n_items) ** 2 * k).astype(np.int64) for k in level_sizes], axis=1)
    codes = np.zeros((0, len(level_sizes) + 1), np.int64)
    seen = {}
    for row in raw:
        dup = seen.get(tuple(row), 0)
        seen[tuple(row)] = dup + 1
        codes = np.vstack([codes, np.r_[row, dup]])
        if len(codes) == n_items:
            break
    assert len(np.unique(codes, axis=0)) == n_items
    return codes


def random_model(codes, cap, seed, scale=0.3):
    """An untrained generator with weights large enough to give peaked, history-dependent scores."""
    torch.manual_seed(seed)
    model = TigerGenerator(
        torch.from_numpy(codes), cap, d_model=32, n_heads=2, n_encoder_layers=1, n_decoder_layers=1, d_ff=64
    )
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                p.normal_(0.0, scale)
    return model.eval()


def random_histories(n_users, n_items, cap, seed):
    rng = np.random.default_rng(seed)
    hist = rng.integers(0, n_items, size=(n_users, cap))
    lengths = rng.integers(1, cap + 1, size=n_users)
    hist[np.arange(cap)[None, :] < (cap - lengths)[:, None]] = -1  # left padding
    return hist


def test_trie_tables_reproduce_every_id():
    codes = random_codes(40, [3, 5, 4], seed=0)
    trie = Trie(codes)
    for item, row in enumerate(codes):
        node = 0
        for depth, code in enumerate(row):
            node = int(trie.child[depth][node, code])
            assert node >= 0
        assert node == item  # the last level leads to the item itself
    # Every child entry is a real continuation, and there are no others.
    n_edges = sum(int((c >= 0).sum()) for c in trie.child)
    n_prefixes = sum(len(np.unique(codes[:, : e + 1], axis=0)) for e in range(codes.shape[1]))
    assert n_edges == n_prefixes
    assert int(trie.n_leaves[0][0]) == len(codes)


def test_trie_rejects_duplicate_ids():
    codes = np.array([[0, 1, 0], [0, 1, 0], [1, 0, 0]])
    with pytest.raises(ValueError, match="duplicate"):
        Trie(codes)


def test_group_causal_mask_blocks_other_groups_and_the_future():
    mask = group_causal_mask(2, 3)
    allowed = ~mask
    assert allowed[1, 0] and allowed[1, 1] and not allowed[1, 2]  # causal inside group 0
    assert not allowed[3, 2] and allowed[4, 3]  # group 1 never sees group 0


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("beam", [3, 8, 60])
def test_beam_search_never_emits_an_invalid_id(seed, beam):
    codes = random_codes(45, [3, 6, 5], seed=seed)
    model = random_model(codes, cap=6, seed=seed)
    hist = random_histories(17, len(codes), cap=6, seed=seed)
    result = beam_search(model, Trie(codes), hist, beam, batch_size=5)
    assert result.n_invalid == 0
    assert result.items.shape == (17, beam)
    expected = min(beam, len(codes))
    for row, scores in zip(result.items, result.scores):
        found = row[row >= 0]
        assert len(found) == expected  # the beam is filled whenever enough IDs exist
        assert (row[expected:] == -1).all() and np.isneginf(scores[expected:]).all()
        assert len(np.unique(found)) == len(found)  # a complete ID maps to one item, once
        assert (found < len(codes)).all()
        assert (np.diff(scores[:expected]) <= 1e-6).all()  # best first


def test_prefixes_with_fewer_completions_than_the_beam():
    # Level-0 code 0 has one completion, code 1 has four; beam 3 must still fill up.
    codes = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 2, 0], [1, 2, 1]])
    model = random_model(codes, cap=3, seed=3)
    hist = random_histories(9, len(codes), cap=3, seed=3)
    result = beam_search(model, Trie(codes), hist, beam_size=3)
    assert result.n_invalid == 0
    assert ((result.items >= 0).sum(axis=1) == 3).all()
    wide = beam_search(model, Trie(codes), hist, beam_size=7)
    assert ((wide.items >= 0).sum(axis=1) == 5).all()  # only 5 items exist: 2 slots stay -1
    assert (wide.items[:, 5:] == -1).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_beam_equals_brute_force_when_the_beam_covers_the_trie(seed):
    codes = random_codes(14, [2, 3, 3], seed=seed)
    model = random_model(codes, cap=4, seed=seed, scale=0.5)
    hist = random_histories(6, len(codes), cap=4, seed=seed)
    beam = len(codes)  # every prefix at every depth fits in the beam: search is exact
    got = beam_search(model, Trie(codes), hist, beam)
    want = brute_force_topk(model, codes, hist, beam)
    np.testing.assert_array_equal(got.items, want.items)
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-4, atol=1e-4)
    # Users get different rankings: the history matters, so the check is not trivial.
    assert len({tuple(row) for row in got.items}) > 1


def test_exclude_history_removes_history_items_and_matches_brute_force():
    codes = random_codes(14, [2, 3, 3], seed=4)
    model = random_model(codes, cap=4, seed=4, scale=0.5)
    hist = random_histories(6, len(codes), cap=4, seed=4)
    exclude = hist  # the history items, PAD = -1 ignored
    beam = len(codes)
    got = beam_search(model, Trie(codes), hist, beam, exclude_items=exclude)
    want = brute_force_topk(model, codes, hist, beam, exclude_items=exclude)
    np.testing.assert_array_equal(got.items, want.items)
    for row, ex in zip(got.items, exclude):
        ex = set(ex[ex >= 0].tolist())
        assert not ex & set(row.tolist())
        assert (row >= 0).sum() == len(codes) - len(ex)  # every other item is still ranked


def test_exclusion_prunes_whole_subtrees_without_losing_beam_slots():
    codes = random_codes(40, [3, 5, 4], seed=5)
    model = random_model(codes, cap=5, seed=5)
    hist = random_histories(8, len(codes), cap=5, seed=5)
    beam = 10
    plain = beam_search(model, Trie(codes), hist, beam)
    # Exclude every item under each user's best level-0 code.
    top_code = codes[plain.items[:, 0], 0]
    exclude = np.full((len(hist), len(codes)), -1)
    for u, c in enumerate(top_code):
        members = np.flatnonzero(codes[:, 0] == c)
        exclude[u, : len(members)] = members
    got = beam_search(model, Trie(codes), hist, beam, exclude_items=exclude)
    assert got.n_invalid == 0
    for u in range(len(hist)):
        row = got.items[u]
        assert (row >= 0).all()  # 10 slots filled although the best subtree is gone
        assert not (codes[row, 0] == top_code[u]).any()
