"""PMAT personalized IDs: fusion, preference prototypes, shared codebooks, ID map, ID quality."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import spearmanr as scipy_spearman

from pmsid.methods.pmat.id_quality import (
    _mantel_p_value,
    personalization_discrimination,
    semantic_consistency,
    semantic_consistency_frame,
    table_id_quality,
    table_uniqueness,
    user_personalization,
)
from pmsid.methods.pmat.prototypes import (
    PersonalizedIdMap,
    PersonalizedTokenizer,
    _repair_empty,
    assign_prototypes,
    cluster_prototypes,
    fuse_weighted,
    global_fusion_ids,
)
from pmsid.quantize.rq_kmeans import add_dedup_level


def unit_features(n_items=300, dim=8, n_modalities=2, seed=0):
    """M random L2-normalized (n_items, dim) feature matrices."""
    rng = np.random.default_rng(seed)
    feats = [rng.standard_normal((n_items, dim)) for _ in range(n_modalities)]
    return [f / np.linalg.norm(f, axis=1, keepdims=True) for f in feats]


# --- fusion ------------------------------------------------------------------------------


def test_fuse_weighted_is_the_weighted_sum_by_hand():
    text = np.array([[1.0, 0.0], [0.0, 1.0]])
    image = np.array([[0.0, 1.0], [0.6, 0.8]])
    fused = fuse_weighted([text, image], np.array([0.75, 0.25]))
    np.testing.assert_allclose(fused, [[0.75, 0.25], [0.15, 0.95]])


def test_fuse_weighted_rejects_bad_inputs_naming_them():
    feats = unit_features(n_items=5, dim=3)
    with pytest.raises(ValueError, match="weights must sum to 1"):
        fuse_weighted(feats, [0.5, 0.6])
    with pytest.raises(ValueError, match="weights has a negative weight"):
        fuse_weighted(feats, [1.5, -0.5])
    with pytest.raises(ValueError, match=r"weights must have shape \(2,\)"):
        fuse_weighted(feats, [1.0])
    with pytest.raises(ValueError, match="weights has non-finite"):
        fuse_weighted(feats, [np.nan, 1.0])
    with pytest.raises(ValueError, match=r"features\[1\] has shape \(5, 4\)"):
        fuse_weighted([feats[0], np.ones((5, 4))], [0.5, 0.5])
    with pytest.raises(ValueError, match="non-finite"):
        fuse_weighted([feats[0], np.full((5, 3), np.inf)], [0.5, 0.5])


# --- P = 1 is global fusion ---------------------------------------------------------------


@pytest.mark.parametrize(
    "weights, n_modalities, max_fit_rows",
    [([0.5, 0.5], 2, None), ([0.8, 0.2], 2, None), ([0.5, 0.3, 0.2], 3, None), ([0.7, 0.3], 2, 150)],
    ids=["uniform", "skewed", "three-modalities", "subsampled-fit"],
)
def test_one_prototype_reproduces_global_fusion_bit_for_bit(weights, n_modalities, max_fit_rows):
    feats = unit_features(n_modalities=n_modalities, seed=1)
    w = np.array(weights)
    tokenizer = PersonalizedTokenizer(levels=2, codes=8, seed=3, n_init=2, max_fit_rows=max_fit_rows)
    ids = tokenizer.fit_encode(feats, w[None, :])
    global_ids, quantizer = global_fusion_ids(
        feats, w, levels=2, codes=8, seed=3, n_init=2, max_fit_rows=max_fit_rows, return_quantizer=True
    )
    assert ids.shape == (1, 300, 3)
    assert np.array_equal(ids[0], global_ids)
    for mine, theirs in zip(tokenizer.quantizer.centroids, quantizer.centroids):
        assert np.array_equal(mine, theirs)
    assert tokenizer.n_fit_rows == (300 if max_fit_rows is None else max_fit_rows)


def test_prototype_tables_are_unique_and_personalized():
    feats = unit_features(seed=2)
    prototypes = np.array([[0.9, 0.1], [0.5, 0.5], [0.1, 0.9]])
    ids = PersonalizedTokenizer(levels=2, codes=4, seed=0, n_init=1).fit_encode(feats, prototypes)
    assert ids.shape == (3, 300, 3)
    for table in ids:
        assert len(np.unique(table, axis=0)) == len(table)  # unique within every table
        assert len(np.unique(table[:, :-1], axis=0)) < len(table)  # 16 prefixes: the dedup token was needed
    # The same item carries different IDs under different prototypes.
    assert (ids[0] != ids[2]).any(axis=1).mean() > 0.2
    frame = table_uniqueness(ids)
    assert (frame.loc[frame.metric == "uniqueness", "value"] == 1.0).all()


def test_subsampled_fit_is_deterministic_and_covers_every_table():
    feats = unit_features(seed=4)
    prototypes = np.array([[0.9, 0.1], [0.1, 0.9]])
    a = PersonalizedTokenizer(2, 8, seed=5, n_init=1, max_fit_rows=200)
    b = PersonalizedTokenizer(2, 8, seed=5, n_init=1, max_fit_rows=200)
    assert np.array_equal(a.fit_encode(feats, prototypes), b.fit_encode(feats, prototypes))
    assert a.n_fit_rows == 200  # 100 items per table, every item still encoded
    with pytest.raises(ValueError, match="max_fit_rows"):
        PersonalizedTokenizer(2, 8, max_fit_rows=4)
    three = np.array([[0.9, 0.1], [0.5, 0.5], [0.1, 0.9]])
    with pytest.raises(ValueError, match="max_fit_rows = 8 leaves 6 fit rows"):
        PersonalizedTokenizer(2, 8, max_fit_rows=8).fit(feats, three)


def test_tokenizer_rejects_bad_prototype_weights():
    feats = unit_features(n_items=20)
    tokenizer = PersonalizedTokenizer(levels=1, codes=2, n_init=1)
    with pytest.raises(ValueError, match="prototype_weights must sum to 1"):
        tokenizer.fit(feats, np.array([[0.5, 0.5], [0.9, 0.3]]))
    with pytest.raises(ValueError, match=r"prototype_weights must be \(P, 2\)"):
        tokenizer.fit(feats, np.array([[0.2, 0.3, 0.5]]))
    with pytest.raises(ValueError, match=r"features\[1\]"):
        tokenizer.fit([feats[0], feats[1][:10]], np.array([[0.5, 0.5]]))


# --- prototypes --------------------------------------------------------------------------


def three_preference_groups(seed=0):
    """120 users around three clear modality preferences: text-, balanced-, image-leaning."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.9, 0.1], [0.5, 0.5], [0.15, 0.85]])
    group = rng.integers(0, 3, size=120)
    text = np.clip(centres[group, 0] + 0.02 * rng.standard_normal(120), 0, 1)
    return np.stack([text, 1 - text], axis=1), group


def test_cluster_prototypes_recovers_groups_on_the_simplex():
    alphas, group = three_preference_groups()
    prototypes, assignment = cluster_prototypes(alphas, 3, seed=0)
    np.testing.assert_allclose(prototypes.sum(axis=1), 1.0, atol=1e-12)
    assert (prototypes >= 0).all()
    # Sorted by the weight of modality 0: prototype 0 is the image-leaning one.
    assert list(np.argsort(prototypes[:, 0])) == [0, 1, 2]
    np.testing.assert_array_equal(assignment, 2 - group)
    np.testing.assert_array_equal(assignment, assign_prototypes(alphas, prototypes))
    for p in range(3):
        np.testing.assert_allclose(prototypes[p], alphas[assignment == p].mean(axis=0))


def test_cluster_prototypes_is_deterministic_per_seed_and_one_prototype_is_the_mean():
    alphas = np.random.default_rng(1).dirichlet([1.0, 1.0, 1.0], size=400)
    first = cluster_prototypes(alphas, 5, seed=7)
    again = cluster_prototypes(alphas, 5, seed=7)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert np.bincount(first[1], minlength=5).min() > 0
    prototype, assignment = cluster_prototypes(alphas, 1, seed=0)
    np.testing.assert_allclose(prototype[0], alphas.mean(axis=0))
    assert (assignment == 0).all()


def test_cluster_prototypes_rejects_bad_inputs_naming_them():
    alphas = np.array([[0.2, 0.8], [0.2, 0.8], [0.6, 0.4], [0.6, 0.4]])
    with pytest.raises(ValueError, match="P = 3 prototypes exceed the 2 distinct"):
        cluster_prototypes(alphas, 3)
    with pytest.raises(ValueError, match="P .* must be an integer >= 1"):
        cluster_prototypes(alphas, 0)
    with pytest.raises(ValueError, match="alphas must sum to 1"):
        cluster_prototypes(alphas * 2, 2)
    with pytest.raises(ValueError, match="alphas must be a non-empty"):
        cluster_prototypes(alphas[0], 1)


def test_repair_fills_an_empty_prototype_from_a_spread_cluster():
    # Prototype 0 holds two identical users but sits stale far from them; moving one of
    # them would empty it. The repair must take the outlier of the spread cluster 1.
    alphas = np.array([[0.1, 0.9], [0.1, 0.9], [0.5, 0.5], [0.9, 0.1], [0.8, 0.2]])
    prototypes = np.array([[0.5, 0.5], [0.7, 0.3], [0.3, 0.7]])
    assignment = np.array([0, 0, 1, 1, 1])  # prototype 2 is empty
    fixed_prototypes, fixed = _repair_empty(alphas, prototypes, assignment)
    np.testing.assert_array_equal(fixed, [0, 0, 2, 1, 1])
    np.testing.assert_allclose(fixed_prototypes[1:], [[0.85, 0.15], [0.5, 0.5]])
    np.testing.assert_allclose(fixed_prototypes.sum(axis=1), 1.0)


# --- ID map ----------------------------------------------------------------------------


def random_tables(n_tables=3, n_items=200, levels=2, codes=5, seed=0):
    """Random tokens (small codebooks, so collisions) made unique per table by the dedup token."""
    rng = np.random.default_rng(seed)
    return np.stack([add_dedup_level(rng.integers(0, codes, size=(n_items, levels))) for _ in range(n_tables)])


def test_id_map_round_trip_for_every_user_and_item():
    ids = random_tables()
    assignment = np.random.default_rng(1).integers(0, 3, size=40)
    id_map = PersonalizedIdMap(ids, assignment)
    users, items = np.repeat(np.arange(40), 200), np.tile(np.arange(200), 40)
    id_rows = id_map.ids_of(users, items)
    np.testing.assert_array_equal(id_rows, ids[assignment[users], items])
    np.testing.assert_array_equal(id_map.items_of(users, id_rows), items)
    # Scalar versions agree, and the table is the prototype's.
    assert id_map.item_of(5, id_map.id_of(5, 17)) == 17
    np.testing.assert_array_equal(id_map.table_of(5), ids[assignment[5]])


def test_id_map_is_per_user_and_rejects_unknown_ids():
    ids = random_tables()
    id_map = PersonalizedIdMap(ids, np.array([0, 1, 2]))
    # One ID names different items for users under different prototypes.
    some_id = tuple(ids[0, 0])
    assert id_map.item_of(0, some_id) == 0
    other = id_map.item_of(1, some_id)
    assert other == -1 or other == int(np.flatnonzero((ids[1] == ids[0, 0]).all(axis=1))[0])
    assert any(id_map.item_of(1, tuple(ids[0, i])) != i for i in range(200))
    assert any(id_map.id_of(0, i) != id_map.id_of(1, i) for i in range(200))
    # Tokens out of any table's range, or IDs no item has, map to -1.
    assert id_map.item_of(0, (99, 0, 0)) == -1
    assert id_map.item_of(0, (-1, 0, 0)) == -1
    assert id_map.item_of(0, (0, 0, 10**6)) == -1
    taken = {tuple(row) for row in ids[0]}
    dedup_range = range(ids[:, :, -1].max() + 1)  # in range of the map's keys
    free = next(c for c in itertools.product(range(5), range(5), dedup_range) if c not in taken)
    assert id_map.item_of(0, free) == -1  # every token in range, yet no item has this ID
    with pytest.raises(ValueError, match="id_rows must be"):
        id_map.item_of(0, (0, 0))
    with pytest.raises(ValueError, match="user indices"):
        id_map.id_of(3, 0)
    with pytest.raises(ValueError, match="not unique within table"):
        PersonalizedIdMap(ids[:, :, :-1], np.array([0]))
    with pytest.raises(ValueError, match="assignment must hold prototypes 0..2"):
        PersonalizedIdMap(ids, np.array([0, 3]))


# --- ID quality ------------------------------------------------------------------------


def test_table_uniqueness_hand_computed():
    ids = np.array([[[0, 0, 0], [0, 0, 1], [1, 0, 0]], [[0, 0, 0], [0, 0, 0], [1, 1, 0]]])
    frame = table_uniqueness(ids)
    got = {(t, m): v for t, m, _, v in frame.itertuples(index=False)}
    assert got == {
        (0, "uniqueness"): 1.0,
        (0, "uniqueness_before_dedup"): pytest.approx(2 / 3),
        (1, "uniqueness"): pytest.approx(2 / 3),
        (1, "uniqueness_before_dedup"): pytest.approx(2 / 3),
    }
    quality = table_id_quality(ids, codebook_size=2)
    assert set(quality.table) == {0, 1} and "collision_rate" in set(quality.metric)


def test_semantic_consistency_matches_brute_force_pairs():
    rng = np.random.default_rng(0)
    fused = rng.standard_normal((12, 4)) + 0.5
    fused[3] = 0.0  # a zero row counts as cosine 0
    ids = add_dedup_level(rng.integers(0, 3, size=(12, 2)))
    unit = fused / np.maximum(np.linalg.norm(fused, axis=1, keepdims=True), 1e-300)
    cos = unit @ unit.T
    shared = [cos[i, j] for i, j in itertools.combinations(range(12), 2) if ids[i, 0] == ids[j, 0]]
    every = [cos[i, j] for i, j in itertools.combinations(range(12), 2)]
    result = semantic_consistency(ids, fused, prefix_len=1, n_random_pairs=None)
    assert result["shared"] == pytest.approx(np.mean(shared))
    assert result["random"] == pytest.approx(np.mean(every))
    assert result["n_shared_pairs"] == len(shared)
    assert result["ratio"] == pytest.approx(np.mean(shared) / np.mean(every))
    sampled = semantic_consistency(ids, fused, prefix_len=1, n_random_pairs=50_000, seed=0)
    assert sampled["random"] == pytest.approx(np.mean(every), abs=0.02)


def clustered_items(n_items=600, n_clusters=6, dim=16, seed=0):
    """Items around 6 clearly separated directions in the positive orthant (random cosine > 0)."""
    rng = np.random.default_rng(seed)
    centres = np.abs(rng.standard_normal((n_clusters, dim))) + np.eye(n_clusters, dim) * 4
    label = rng.integers(0, n_clusters, size=n_items)
    return centres[label] + 0.1 * rng.standard_normal((n_items, dim)), label


def test_semantic_consistency_is_high_on_clustered_ids_and_one_on_random_codes():
    fused, _ = clustered_items()
    ids = global_fusion_ids([fused / np.linalg.norm(fused, axis=1, keepdims=True)], [1.0], 2, 6, seed=0, n_init=2)
    good = semantic_consistency(ids, fused, prefix_len=1, n_random_pairs=None)
    assert good["random"] > 0 and good["ratio"] > 1.5
    random_ids = add_dedup_level(np.random.default_rng(1).integers(0, 6, size=(600, 2)))
    chance = semantic_consistency(random_ids, fused, prefix_len=1, n_random_pairs=None)
    assert chance["ratio"] == pytest.approx(1.0, abs=0.05)
    frame = semantic_consistency_frame(ids, fused, n_random_pairs=None)
    assert set(frame.level) == {0, 1}
    assert frame.loc[(frame.metric == "semantic_consistency_ratio") & (frame.level == 0), "value"].item() == (
        pytest.approx(good["ratio"])
    )


def test_semantic_consistency_undefined_ratio_gives_a_reason():
    ids = np.array([[0, 0], [1, 0], [2, 0]])
    result = semantic_consistency(ids, np.eye(3), prefix_len=1, n_random_pairs=None)
    assert math.isnan(result["shared"]) and "no two items share" in result["reason"]
    with pytest.raises(ValueError, match="prefix_len must lie in 1..2"):
        semantic_consistency(ids, np.eye(3), prefix_len=3)
    with pytest.raises(ValueError, match=r"fused must be \(3, d\)"):
        semantic_consistency(ids, np.eye(4), prefix_len=1)


def test_personalization_distances_hand_computed():
    # Two items, L = 2 codebook tokens + dedup; tables 0 and 1 differ in item 0's second and dedup token.
    ids = np.array([[[1, 2, 0], [3, 4, 0]], [[1, 5, 1], [3, 4, 0]]])
    result = personalization_discrimination(ids, np.array([[1.0, 0.0], [0.0, 1.0]]))
    row = result["pairs"].iloc[0]
    assert row["id_distance"] == pytest.approx(1 / 4)  # 1 of 2 tokens on item 0, 0 on item 1
    assert row["id_distance_with_dedup"] == pytest.approx(2 / 6)
    assert row["prefix_distance"] == pytest.approx(1 / 4)
    assert row["items_changed"] == pytest.approx(1 / 2)
    assert row["weight_distance"] == pytest.approx(math.sqrt(2))
    assert math.isnan(result["spearman_rho"]) and "P >= 3" in result["reason"]
    assert list(result["quality"].metric) == ["personalization_id_distance_mean"]


def test_id_distance_grows_with_weight_distance_theorem_1():
    feats = unit_features(n_items=400, seed=3)
    t = np.linspace(0.0, 1.0, 6)
    prototypes = np.stack([1 - t, t], axis=1)  # increasingly different from prototype 0
    ids = PersonalizedTokenizer(levels=2, codes=8, seed=0, n_init=1).fit_encode(feats, prototypes)
    result = personalization_discrimination(ids, prototypes)
    assert result["n_pairs"] == 15
    assert result["spearman_rho"] > 0.8 and result["p_value"] < 0.01
    assert result["mantel_p_value"] < 0.05  # exact over the 720 relabellings
    far = result["pairs"].query("p == 0 and q == 5")["id_distance"].item()
    near = result["pairs"].query("p == 0 and q == 1")["id_distance"].item()
    assert far > near
    assert set(result["quality"].metric) >= {"personalization_spearman_rho", "personalization_mantel_p"}


def planted_users(n_users=240, n_prototypes=4, seed=0):
    """Users with planted (image, text) weights, alpha_image uniform in [0, 1], their prototypes and tables."""
    alpha = np.random.default_rng(seed).random(n_users)
    weights = np.stack([alpha, 1 - alpha], axis=1)
    prototypes, assignment = cluster_prototypes(weights, n_prototypes, seed=seed)
    ids = PersonalizedTokenizer(levels=2, codes=8, seed=0, n_init=1).fit_encode(
        unit_features(n_items=400, seed=3), prototypes
    )
    return ids, assignment, weights


def test_id_distance_grows_with_weight_distance_theorem_1_across_users():
    # Theorem 1 over 240 * 239 / 2 = 28,680 user pairs, not the 6 pairs of 4 prototypes:
    # each user reads items under its own table and has its own planted weights.
    ids, assignment, weights = planted_users()
    result = user_personalization(ids, assignment, weights, n_permutations=999)
    assert result["n_users"] == 240 and result["n_pairs"] == 240 * 239 // 2
    assert result["reason"] is None
    assert result["spearman_rho"] > 0.8
    assert result["mantel_p_value"] == pytest.approx(1 / 1000)  # no relabelling of the users comes close
    assert set(result["quality"].metric) == {"personalization_user_spearman_rho", "personalization_user_mantel_p"}


def test_user_level_theorem_1_test_fails_when_tables_ignore_the_weights():
    # The same users and tables, but each user in a random table: the test must not find the claim.
    ids, assignment, weights = planted_users()
    shuffled = np.random.default_rng(5).permutation(assignment)
    result = user_personalization(ids, shuffled, weights, n_permutations=999)
    assert abs(result["spearman_rho"]) < 0.05
    assert result["mantel_p_value"] > 0.05


def test_user_mantel_p_value_equals_the_mantel_test_on_the_user_matrices():
    # The shortcut over table pairs is the plain Mantel test on (U, U) matrices, relabelling for relabelling.
    ids = random_tables(n_tables=3, n_items=50)
    rng = np.random.default_rng(2)
    tables = rng.integers(0, 3, size=15)
    weights = rng.dirichlet([1.0, 1.0], size=15)
    result = user_personalization(ids, tables, weights, n_permutations=300, seed=4)
    levels = ids.shape[2] - 1
    id_dist = np.array([[(ids[a, :, :levels] != ids[b, :, :levels]).mean() for b in tables] for a in tables])
    weight_dist = np.linalg.norm(weights[:, None] - weights[None], axis=2)
    upper = np.triu_indices(15, k=1)
    rho = scipy_spearman(id_dist[upper], weight_dist[upper]).statistic
    assert result["spearman_rho"] == pytest.approx(rho)
    assert result["mantel_p_value"] == _mantel_p_value(id_dist, weight_dist, result["spearman_rho"], 300, seed=4)


def test_user_personalization_undefined_or_bad_inputs():
    ids = random_tables(n_tables=3)
    weights = np.random.default_rng(0).dirichlet([1.0, 1.0], size=10)
    one_table = user_personalization(ids, np.zeros(10, np.int64), weights)
    assert math.isnan(one_table["spearman_rho"]) and "id_distance is the same" in one_table["reason"]
    assert one_table["quality"].empty
    with pytest.raises(ValueError, match=r"user_tables must be a \(U,\) integer array of table indices in \[0, 3\)"):
        user_personalization(ids, np.full(10, 3), weights)
    with pytest.raises(ValueError, match="user_weights must be a finite"):
        user_personalization(ids, np.zeros(10, np.int64), weights[:9])


def test_personalization_discrimination_rejects_mismatched_weights():
    with pytest.raises(ValueError, match="prototype_weights must be"):
        personalization_discrimination(random_tables(n_tables=3), np.ones((2, 2)) / 2)


# --- concatenation fusion --------------------------------------------------------------------


def test_concat_fusion_with_one_uniform_prototype_is_the_tiger_baselines_tokenizer():
    from pmsid.quantize.rq_kmeans import RQKMeans, add_dedup_level, fuse_modalities

    rng = np.random.default_rng(6)
    raw = [rng.normal(size=(300, 12)), 5.0 * rng.normal(size=(300, 7))]  # other dims, other scales
    ids = PersonalizedTokenizer(levels=2, codes=8, seed=3, n_init=2, fusion="concat").fit_encode(raw, [[0.5, 0.5]])
    fused = fuse_modalities(raw)  # the baseline's fusion, equal weights
    expected = add_dedup_level(RQKMeans(2, 8, seed=3, n_init=2).fit(fused).encode(fused))
    np.testing.assert_array_equal(ids[0], expected)


def test_concat_fusion_weights_each_modalitys_own_distances():
    from pmsid.methods.pmat.prototypes import fuse

    rng = np.random.default_rng(7)
    raw = [rng.normal(size=(6, 4)), rng.normal(size=(6, 3))]
    unit = [x / np.linalg.norm(x, axis=1, keepdims=True) for x in raw]
    w = np.array([0.8, 0.2])
    h = fuse(raw, w, "concat")
    assert h.shape == (6, 7)
    d2 = ((h[:, None] - h[None]) ** 2).sum(-1)
    by_modality = sum(w_m * ((u[:, None] - u[None]) ** 2).sum(-1) for w_m, u in zip(w, unit))
    np.testing.assert_allclose(d2, by_modality, atol=1e-12)
    # Prototypes with other weights give other tables; an unknown fusion fails naming the key.
    tables = PersonalizedTokenizer(2, 3, seed=0, n_init=1, fusion="concat").fit_encode(raw, [[0.9, 0.1], [0.1, 0.9]])
    assert tables.shape == (2, 6, 3)
    with pytest.raises(ValueError, match="pmat.fusion"):
        PersonalizedTokenizer(2, 3, fusion="mean")
