"""HDNAG: hierarchical IDs, the two-level non-autoregressive generator and two-stage retrieval."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pmsid.data.contracts import ID_QUALITY, read_metadata, read_semantic_ids, read_table, write_features
from pmsid.evaluate.ranking import mask_items, top_k
from pmsid.models.hdnag import HdnagGenerator, InvertedIndex, exhaustive_topk, two_stage_topk
from pmsid.quantize.hierarchical import HierarchicalKMeans, fine_allocation, tokenize_hierarchical


def clustered(n: int = 240, dim: int = 12, centres: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=(centres, dim)) * 3
    return mu[rng.integers(0, centres, n)] + rng.normal(size=(n, dim))


@pytest.fixture(scope="module")
def fitted():
    return HierarchicalKMeans(coarse_size=6, fine_size=30, seed=0, n_init=2).fit(clustered())


@pytest.fixture(scope="module")
def model(fitted):
    torch.manual_seed(0)
    m = HdnagGenerator(torch.from_numpy(fitted.codes()), torch.from_numpy(fitted.parent), history_cap=8,
                       d_model=16, n_heads=2, n_encoder_layers=1, n_decoder_layers=1, d_ff=32)  # fmt: skip
    return m.eval()


def histories(n_users: int, n_items: int, cap: int = 8, seed: int = 1) -> torch.Tensor:
    h = torch.from_numpy(np.random.default_rng(seed).integers(0, n_items, size=(n_users, cap)))
    h[:, :3] = -1  # left padding
    return h


# ------------------------------------------------------------------ IDs
def test_fine_allocation_is_proportional_positive_and_sums_to_the_fine_size():
    alloc = fine_allocation(np.array([50, 30, 15, 5]), 20)
    assert alloc.sum() == 20 and (alloc >= 1).all()
    assert alloc.tolist() == sorted(alloc.tolist(), reverse=True)  # larger clusters get more
    # A cluster with 2 distinct rows cannot hold more than 2 fine clusters.
    assert fine_allocation(np.array([50, 30]), 20, distinct=np.array([50, 2]))[1] == 2
    with pytest.raises(ValueError, match="fine_size"):
        fine_allocation(np.array([3, 3, 3]), 2)


def test_fine_clusters_nest_in_coarse_ones_and_full_ids_are_unique(fitted):
    codes = fitted.codes()
    assert codes.shape == (240, 3)
    assert np.array_equal(fitted.parent[codes[:, 1]], codes[:, 0])  # f alone determines g
    assert len(np.unique(codes, axis=0)) == len(codes)
    assert len(fitted.parent) == 30 and set(codes[:, 0]) == set(range(6))
    # The fine level is a finer partition: lower quantization error than the coarse one.
    X = clustered()
    coarse_err = ((X - fitted.coarse_centroids[fitted.coarse_labels_]) ** 2).sum(1).mean()
    fine_err = ((X - fitted.fine_centroids[fitted.fine_labels_]) ** 2).sum(1).mean()
    assert fine_err < coarse_err


def test_tokenizer_stage_writes_ids_parents_and_per_level_quality(tmp_path):
    X = clustered(seed=2)
    paths = [str(tmp_path / "text.parquet"), str(tmp_path / "image.parquet")]
    write_features(paths[0], np.arange(len(X)), X[:, :6].astype(np.float32), "test")
    write_features(paths[1], np.arange(len(X)), X[:, 6:].astype(np.float32), "test")
    tokenize_hierarchical(paths, tmp_path / "ids.parquet", tmp_path / "q.parquet", 4, 16, seed=0, n_init=1)
    _, codes = read_semantic_ids(tmp_path / "ids.parquet")
    meta = read_metadata(tmp_path / "ids.parquet")
    assert meta["tokenizer"] == "hkmeans" and np.array_equal(np.asarray(meta["parent"])[codes[:, 1]], codes[:, 0])
    quality = read_table(tmp_path / "q.parquet", ID_QUALITY).set_index(["metric", "level"])["value"]
    # Utilization is against each level's own codebook: 4 coarse, 16 fine.
    assert quality[("utilization", 0)] == len(np.unique(codes[:, 0])) / 4
    assert quality[("utilization", 1)] == len(np.unique(codes[:, 1])) / 16
    assert quality[("uniqueness", -1)] == 1.0


# ------------------------------------------------------------- retrieval
def test_inverted_index_returns_exactly_the_items_under_the_chosen_coarse_ids(fitted):
    codes = torch.from_numpy(fitted.codes())
    index = InvertedIndex(codes[:, 0], 6)
    for g in range(6):
        assert set(index.lookup(g).tolist()) == set(torch.nonzero(codes[:, 0] == g).flatten().tolist())
    top = torch.tensor([[2, 0], [5, 1], [3, 4]])
    cand = index.candidates(top)
    for row, chosen in zip(cand, top):
        items = row[row >= 0]
        expected = torch.cat([index.lookup(int(g)) for g in chosen])
        assert torch.equal(items, expected)  # best coarse ID first, nothing else, nothing twice
    capped = index.candidates(top, budget=7)
    assert capped.shape[1] == 7 and torch.equal(capped, cand[:, :7])


def test_two_stage_retrieval_returns_valid_items_under_the_top_coarse_ids(model):
    index = InvertedIndex(model.codes[:, 0], model.n_coarse)
    with torch.no_grad():
        log_probs = model.log_probs(histories(9, model.n_items))
    items, scores, n = two_stage_topk(model, index, log_probs, k=10, coarse_candidates=2, budget=25)
    top2 = torch.sort(log_probs[0], dim=1, descending=True, stable=True).indices[:, :2]
    for row, allowed in zip(items, top2):
        valid = row[row >= 0]
        assert ((valid >= 0) & (valid < model.n_items)).all()
        assert torch.isin(model.codes[valid, 0], allowed).all()
        assert len(set(valid.tolist())) == len(valid)
    assert (n <= 25).all()
    assert (scores[:, :-1] >= scores[:, 1:]).all()  # best first


@pytest.mark.parametrize("with_exclusion", [False, True])
def test_two_stage_retrieval_with_the_whole_catalogue_equals_exhaustive_scoring(model, with_exclusion):
    index = InvertedIndex(model.codes[:, 0], model.n_coarse)
    hist = histories(13, model.n_items, seed=3)
    exclude = hist if with_exclusion else None
    with torch.no_grad():
        log_probs = model.log_probs(hist)
    ref_items, ref_scores = exhaustive_topk(model, log_probs, 40, exclude)
    items, scores, n = two_stage_topk(model, index, log_probs, 40, model.n_coarse, None, exclude)
    assert torch.equal(items, ref_items) and torch.equal(scores, ref_scores)
    assert (n == model.n_items).all()
    # And the reference follows the evaluation's own top-k rule.
    full = model.item_scores(log_probs)
    same = top_k(full if exclude is None else mask_items(full, exclude), 40)
    assert torch.equal(ref_items, same[0]) and torch.equal(ref_scores, same[1])
    if with_exclusion:
        for row, h in zip(items, hist):
            assert not set(row.tolist()) & set(h[h >= 0].tolist())


def test_ties_go_to_the_lower_item_index_as_in_every_ranking(model):
    index = InvertedIndex(model.codes[:, 0], model.n_coarse)
    flat = tuple(torch.zeros(1, size) for size in (model.n_coarse, model.n_fine, model.n_dedup))
    items, _, _ = two_stage_topk(model, index, flat, 5, model.n_coarse)
    assert items.tolist() == [[0, 1, 2, 3, 4]]


# ------------------------------------------------------------ generator
def test_alignment_loss_is_zero_when_fine_agrees_with_coarse_and_positive_otherwise(model):
    fine = torch.randn(4, model.n_fine)
    p_fine = torch.softmax(fine, dim=-1)
    marginal = torch.zeros(4, model.n_coarse).index_add_(1, model.parent, p_fine)
    agreeing = model.alignment(marginal.log(), fine)
    assert torch.allclose(agreeing, torch.zeros(4), atol=1e-6)
    other = model.alignment(torch.randn(4, model.n_coarse), fine)
    assert (other > 1e-4).all()


def count_decoder_calls(model) -> list:
    calls = []
    handle = model.decoder.register_forward_hook(lambda *args: calls.append(1))
    return calls, handle


@pytest.mark.parametrize(("levels", "passes"), [("two", 2), ("single", 1)])
def test_non_autoregressive_decoding_makes_a_fixed_number_of_decoder_passes_per_batch(fitted, levels, passes):
    m = HdnagGenerator(torch.from_numpy(fitted.codes()), torch.from_numpy(fitted.parent), 8, d_model=16,
                       n_heads=2, n_encoder_layers=1, n_decoder_layers=1, d_ff=32, levels=levels).eval()  # fmt: skip
    calls, handle = count_decoder_calls(m)
    with torch.no_grad():
        for n_users in (1, 7, 50):
            calls.clear()
            m.log_probs(histories(n_users, m.n_items))
            assert len(calls) == passes
    handle.remove()


def test_fine_prediction_depends_on_the_coarse_prediction_only_with_two_levels(fitted):
    """Two levels: changing the coarse head changes the fine distribution; single level: it cannot."""
    for levels, coupled in (("two", True), ("single", False)):
        torch.manual_seed(0)
        m = HdnagGenerator(torch.from_numpy(fitted.codes()), torch.from_numpy(fitted.parent), 8, d_model=16,
                           n_heads=2, n_encoder_layers=1, n_decoder_layers=1, d_ff=32, levels=levels).eval()  # fmt: skip
        hist = histories(5, m.n_items)
        with torch.no_grad():
            before = m.log_probs(hist)[1]
            m.coarse_head.weight.mul_(50)
            after = m.log_probs(hist)[1]
        assert (not torch.allclose(before, after)) == coupled


def test_training_steps_lower_the_loss_and_mu_adds_the_alignment(model, fitted):
    torch.manual_seed(0)
    m = HdnagGenerator(torch.from_numpy(fitted.codes()), torch.from_numpy(fitted.parent), 8, d_model=16,
                       n_heads=2, n_encoder_layers=1, n_decoder_layers=1, d_ff=32, dropout=0.0)  # fmt: skip
    hist, targets = histories(64, m.n_items, seed=5), torch.arange(64)
    with torch.no_grad():
        coarse, fine, _ = m(hist)
        gap = m.loss(hist, targets, mu=2.0) - m.loss(hist, targets, mu=0.0)
        assert torch.allclose(gap, 2.0 * m.alignment(coarse, fine).mean(), atol=1e-5)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        loss = m.loss(hist, targets, mu=1.0)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * first


def test_codes_whose_fine_cluster_leaves_its_coarse_cluster_are_refused(fitted):
    codes = fitted.codes().copy()
    codes[0, 0] = (codes[0, 0] + 1) % 6
    with pytest.raises(ValueError, match="not inside its coarse cluster"):
        HdnagGenerator(torch.from_numpy(codes), torch.from_numpy(fitted.parent), 8)
