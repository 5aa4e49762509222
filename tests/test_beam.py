"""Beam search: validity, exactness against brute force, history exclusion; the unconstrained search."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from pmsid.models.beam import NEG_INF, Trie, beam_search, beam_search_tables, brute_force_topk
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


# --- unconstrained search ------------------------------------------------------------


def valid_mass_only(model, trie):
    """``model`` whose next-code distribution is renormalized over the codes some item's ID continues with.

    Such a model puts no probability on an invalid ID. Prefixes that are no
    item's prefix (dead beams, score -inf already) keep the raw log-probs, so
    no row is all -inf.
    """
    raw = model.next_logprobs

    def next_logprobs(memory, pad, prefix):
        node = _node_of(trie, prefix)  # (N, G)
        child = trie.child[prefix.shape[-1]][node.clamp(min=0)]  # (N, G, K)
        invalid = (child < 0) & (node >= 0)[..., None]
        return torch.log_softmax(raw(memory, pad, prefix).masked_fill(invalid, NEG_INF), dim=-1)

    model.next_logprobs = next_logprobs
    return model


def _node_of(trie, prefix):
    """Trie node of each prefix ``(..., t)``, -1 where no ID starts that way."""
    node = torch.zeros(prefix.shape[:-1], dtype=torch.long)
    for e in range(prefix.shape[-1]):
        node = torch.where(node >= 0, trie.child[e][node.clamp(min=0), prefix[..., e]], -1)
    return node


@pytest.mark.parametrize("seed", [0, 1])
def test_unconstrained_equals_constrained_when_all_mass_is_on_valid_ids(seed):
    codes = random_codes(14, [2, 3, 3], seed=seed)
    trie = Trie(codes)
    model = valid_mass_only(random_model(codes, cap=4, seed=seed, scale=0.5), trie)
    hist = random_histories(6, len(codes), cap=4, seed=seed)
    beam = len(codes)  # the beam covers the trie
    for exclude in (None, hist):
        constrained = beam_search(model, trie, hist, beam, exclude_items=exclude)
        free = beam_search(model, trie, hist, beam, exclude_items=exclude, constrained=False)
        assert free.n_invalid == 0
        np.testing.assert_array_equal(free.items, constrained.items)
        np.testing.assert_allclose(free.scores, constrained.scores, rtol=1e-5, atol=1e-5)
    assert len({tuple(row) for row in free.items}) > 1  # the history matters


# 2 levels x 4 codes: 16 code tuples, 5 of them items (each code used on both levels).
SPARSE_CODES = np.array([[0, 0], [0, 3], [1, 2], [2, 1], [3, 3]])


def brute_force_free_topk(model, codes, hist, beam, exclude=None, table=None):
    """Top-``beam`` over all code tuples by exact log-prob, mapped to items by a dict; excluded items dropped.

    Returns ``(items (U, beam), scores (U, beam), n_invalid)``, the reference
    for unconstrained beam search when the beam keeps every first-level code.
    """
    tuples = torch.tensor(list(itertools.product(*(range(k) for k in model.level_sizes))))  # (T, D)
    item_of = {tuple(row): i for i, row in enumerate(np.asarray(codes).tolist())}
    items = np.full((len(hist), beam), -1)
    scores = np.full((len(hist), beam), -np.inf, dtype=np.float32)
    n_invalid = 0
    with torch.no_grad():
        for u in range(len(hist)):
            memory, pad = model.encode(torch.as_tensor(hist[u : u + 1]), table)
            s = model.score_ids(memory.expand(len(tuples), -1, -1), pad.expand(len(tuples), -1), tuples).numpy()
            top = np.argsort(-s, kind="stable")[:beam]
            found = [(item_of.get(tuple(tuples[t].tolist()), -1), s[t]) for t in top]
            n_invalid += sum(item < 0 for item, _ in found)
            banned = set() if exclude is None else set(exclude[u][exclude[u] >= 0].tolist())
            kept = [(item, score) for item, score in found if item not in banned]
            items[u, : len(kept)] = [item for item, _ in kept]
            scores[u, : len(kept)] = [score for _, score in kept]
    return items, scores, n_invalid


@pytest.mark.parametrize("beam", [4, 7, 16])
def test_unconstrained_search_matches_brute_force_over_all_code_tuples(beam):
    # beam >= K_0 = 4 keeps every first-level code, so the search over 2 levels is exact.
    model = random_model(SPARSE_CODES, cap=3, seed=7, scale=0.5)
    hist = random_histories(12, len(SPARSE_CODES), cap=3, seed=7)
    exclude = hist[:, -1:]  # each user's last history item
    for ex in (None, exclude):
        got = beam_search(model, Trie(SPARSE_CODES), hist, beam, exclude_items=ex, constrained=False)
        items, scores, n_invalid = brute_force_free_topk(model, SPARSE_CODES, hist, beam, ex)
        np.testing.assert_array_equal(got.items, items)
        np.testing.assert_allclose(got.scores, scores, rtol=1e-4, atol=1e-4)
        assert got.n_invalid == n_invalid > 0
    if beam == 16:  # every tuple is a beam: 11 of 16 per user are no item's ID
        assert got.n_invalid == 11 * len(hist)
    invalid = (got.items == -1) & np.isfinite(got.scores)
    assert invalid.any() and (got.items[~invalid & np.isfinite(got.scores)] >= 0).all()


def two_table_case(n_users: int, seed: int):
    """Two tables over the same 5 items (one code tuple names different items in each), a model, its
    tries, histories, and users alternating between the tables."""
    codes = np.stack([SPARSE_CODES, SPARSE_CODES[[4, 3, 2, 1, 0]]])
    model = random_model(codes, cap=3, seed=seed, scale=0.5)
    tries = [Trie(table, level_sizes=model.level_sizes) for table in codes]
    hist = random_histories(n_users, len(SPARSE_CODES), cap=3, seed=seed)
    return codes, model, tries, hist, np.arange(n_users) % 2


def test_unconstrained_search_maps_ids_through_each_users_table():
    codes, model, tries, hist, user_tables = two_table_case(10, seed=8)
    got = beam_search_tables(model, tries, hist, user_tables, 6, constrained=False)
    n_invalid = 0
    for p in (0, 1):
        rows = user_tables == p
        items, _, bad = brute_force_free_topk(model, codes[p], hist[rows], 6, table=p)
        np.testing.assert_array_equal(got.items[rows], items)
        n_invalid += bad
    assert got.n_invalid == n_invalid > 0


def test_invariant_constrained_search_never_emits_an_invalid_id():
    """An invariant of the trie, not a finding: the same model emits invalid IDs once unconstrained."""
    _, model, tries, hist, user_tables = two_table_case(20, seed=9)
    for beam in (1, 3, 5, 16):
        constrained = beam_search_tables(model, tries, hist, user_tables, beam, exclude_items=hist)
        assert constrained.n_invalid == 0
        assert (constrained.items[np.isfinite(constrained.scores)] >= 0).all()
    free = beam_search_tables(model, tries, hist, user_tables, 16, constrained=False)
    assert free.n_invalid > 0
