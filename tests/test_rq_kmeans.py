"""RQ-KMeans semantic IDs: fusion, quantizer, dedup token, ID quality, ids contract."""

from __future__ import annotations

import logging
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pmsid.data.contracts import (
    ID_QUALITY,
    read_metadata,
    read_semantic_ids,
    read_table,
    write_features,
    write_semantic_ids,
)
from pmsid.quantize.quality import id_quality
from pmsid.quantize.rq_kmeans import RQKMeans, add_dedup_level, fuse_modalities, tokenize


def quality_dict(frame):
    return {(m, lvl): v for m, lvl, v in frame.itertuples(index=False)}


def blobs(centers, labels, scale=1e-3, seed=0):
    """Points ``centers[labels]`` plus tiny noise: clusters k-means cannot miss."""
    rng = np.random.default_rng(seed)
    centers = np.asarray(centers, dtype=np.float64)
    return centers[labels] + scale * rng.standard_normal((len(labels), centers.shape[1]))


# --- fusion -------------------------------------------------------------------


def test_fuse_modalities_matches_the_equation_by_hand():
    text = np.array([[3.0, 4.0], [1.0, 0.0]])
    image = np.array([[0.0, 2.0, 0.0], [0.0, 0.0, 5.0]])
    # weights 3:1 are rescaled to 0.75 / 0.25; blocks scale by their square roots.
    fused = fuse_modalities([text, image], weights=[3.0, 1.0])
    a, b = math.sqrt(0.75), math.sqrt(0.25)
    expected = np.array(
        [
            [a * 0.6, a * 0.8, 0.0, b * 1.0, 0.0],
            [a * 1.0, 0.0, 0.0, 0.0, b * 1.0],
        ]
    )
    np.testing.assert_allclose(fused, expected)
    # Unit-norm rows; the inner product is the weighted sum of cosines: 0.75 * 0.6 + 0.25 * 0.
    np.testing.assert_allclose(np.linalg.norm(fused, axis=1), 1.0)
    assert fused[0] @ fused[1] == pytest.approx(0.75 * 0.6)

    equal = fuse_modalities([text, image])  # default: 1/2 each
    np.testing.assert_allclose(equal[0], math.sqrt(0.5) * np.array([0.6, 0.8, 0.0, 1.0, 0.0]))


def test_fuse_modalities_keeps_zero_rows_and_rejects_bad_input():
    fused = fuse_modalities([np.array([[0.0, 0.0], [2.0, 0.0]]), np.array([[1.0], [1.0]])])
    np.testing.assert_allclose(fused[0], [0.0, 0.0, math.sqrt(0.5)])
    with pytest.raises(ValueError, match="same items"):
        fuse_modalities([np.ones((3, 2)), np.ones((4, 2))])
    with pytest.raises(ValueError, match="non-negative"):
        fuse_modalities([np.ones((3, 2)), np.ones((3, 2))], weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="one weight per modality"):
        fuse_modalities([np.ones((3, 2))], weights=[0.5, 0.5])
    with pytest.raises(ValueError, match="non-finite"):
        fuse_modalities([np.array([[np.nan, 1.0]])])


# --- ID quality on hand-made codes ----------------------------------------------


def test_id_quality_hand_computed():
    before = np.array([[0, 0], [0, 0], [0, 1], [1, 1]])
    full = add_dedup_level(before)
    np.testing.assert_array_equal(full[:, -1], [0, 1, 0, 0])
    q = quality_dict(id_quality(before, full, codebook_size=2))
    assert q[("collision_rate", -1)] == 0.5  # items 0 and 1 share (0, 0)
    assert q[("uniqueness_before_dedup", -1)] == 0.75
    assert q[("uniqueness", -1)] == 1.0
    assert q[("max_dedup_index", -1)] == 1.0
    assert q[("utilization", 0)] == 1.0 and q[("utilization", 1)] == 1.0
    # level 0 usage 3:1 -> H = -(3/4 ln 3/4 + 1/4 ln 1/4), over ln 2
    assert q[("normalized_entropy", 0)] == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(2))
    assert q[("normalized_entropy", 1)] == pytest.approx(1.0)  # 2:2
    assert q[("prefix_utilization", 0)] == 1.0  # 2 prefixes of min(4, 2)
    assert q[("prefix_utilization", 1)] == 0.75  # 3 prefixes of min(4, 4)
    with pytest.raises(ValueError, match="does not start with"):
        id_quality(before, add_dedup_level(before[::-1]), codebook_size=2)


# --- the quantizer on data built to collide --------------------------------------


def test_duplicated_rows_collide_and_dedup_makes_ids_unique():
    points = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    # p0 three times, p1 twice, p2 and p3 once; item order decides the dedup tokens.
    which = np.array([0, 1, 0, 2, 1, 0, 3])
    X = points[which]
    model = RQKMeans(levels=1, codes=4, seed=0, n_init=2).fit(X)
    tokens = model.encode(X)
    full = add_dedup_level(tokens)

    # Same point, same ID; different points, different IDs.
    for i in range(len(X)):
        for j in range(len(X)):
            assert (tokens[i, 0] == tokens[j, 0]) == (which[i] == which[j])
    np.testing.assert_array_equal(full[:, -1], [0, 0, 1, 0, 1, 2, 0])
    assert model.reconstruction_error(X) == pytest.approx(0.0, abs=1e-12)

    q = quality_dict(id_quality(tokens, full, codebook_size=4))
    assert q[("collision_rate", -1)] == pytest.approx(5 / 7)
    assert q[("uniqueness_before_dedup", -1)] == pytest.approx(4 / 7)
    assert q[("uniqueness", -1)] == 1.0
    assert q[("max_dedup_index", -1)] == 2.0
    assert q[("utilization", 0)] == 1.0
    p = np.array([3, 2, 1, 1]) / 7
    assert q[("normalized_entropy", 0)] == pytest.approx(-(p * np.log(p)).sum() / math.log(4))


def test_more_items_than_ids_collide_in_groups_of_five():
    # 20 items in 4 tight clusters at the corners of a wide rectangle; 2 levels of
    # 2 codes give at most 4 IDs: level 0 splits left/right, level 1 top/bottom.
    corners = [[0.0, 0.0], [10.0, 0.0], [0.0, 1.0], [10.0, 1.0]]
    cluster = np.arange(20) % 4
    X = blobs(corners, cluster)
    model = RQKMeans(levels=2, codes=2, seed=0, n_init=2).fit(X)
    tokens = model.encode(X)
    full = add_dedup_level(tokens)

    for c in range(4):
        ids = {tuple(t) for t in tokens[cluster == c]}
        assert len(ids) == 1  # one ID per cluster ...
    assert len({tuple(t) for t in tokens}) == 4  # ... and four different ones
    # Items are interleaved, so item i is the (i // 4)-th member of its cluster.
    np.testing.assert_array_equal(full[:, -1], np.arange(20) // 4)

    q = quality_dict(id_quality(tokens, full, codebook_size=2))
    assert q[("collision_rate", -1)] == 1.0
    assert q[("uniqueness_before_dedup", -1)] == 0.2
    assert q[("uniqueness", -1)] == 1.0
    assert q[("max_dedup_index", -1)] == 4.0
    assert q[("prefix_utilization", 0)] == 1.0 and q[("prefix_utilization", 1)] == 1.0


def test_separated_clusters_use_every_code_with_hand_computed_entropy():
    # Cluster sizes 8, 4, 2, 2 -> usage 1/2, 1/4, 1/8, 1/8: H = 1.75 bits, log2 K = 2 bits.
    labels = np.repeat([0, 1, 2, 3], [8, 4, 2, 2])
    X = blobs(np.eye(4) * 10, labels)
    model = RQKMeans(levels=1, codes=4, seed=3, n_init=2).fit(X)
    tokens = model.encode(X)
    q = quality_dict(id_quality(tokens, add_dedup_level(tokens), codebook_size=4))
    assert q[("utilization", 0)] == 1.0
    assert q[("normalized_entropy", 0)] == pytest.approx(1.75 / 2)


def test_codebook_is_clipped_to_the_distinct_rows(caplog):
    X = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    with caplog.at_level(logging.WARNING, logger="pmsid.quantize.rq_kmeans"):
        model = RQKMeans(levels=2, codes=8, seed=0, n_init=1).fit(X)
    # Level 0: 3 distinct rows; level 1: every residual is zero, 1 distinct row.
    assert [len(c) for c in model.centroids] == [3, 1]
    assert "clipping the codebook to 3" in caplog.text
    assert "clipping the codebook to 1" in caplog.text


# --- determinism and reconstruction -------------------------------------------------


def test_encode_is_deterministic_for_a_seed():
    X = np.random.default_rng(0).standard_normal((200, 16))
    a = RQKMeans(levels=3, codes=8, seed=7, n_init=1).fit(X)
    b = RQKMeans(levels=3, codes=8, seed=7, n_init=1).fit(X)
    codes = a.encode(X)
    assert codes.shape == (200, 3) and codes.dtype == np.int64
    np.testing.assert_array_equal(codes, a.encode(X))
    np.testing.assert_array_equal(codes, b.encode(X))
    for ca, cb in zip(a.centroids, b.centroids):
        np.testing.assert_array_equal(ca, cb)
    # The codes index the codebooks they were drawn from.
    np.testing.assert_allclose(a.decode(codes), sum(c[codes[:, lvl]] for lvl, c in enumerate(a.centroids)))


def test_reconstruction_error_decreases_with_more_levels():
    X = np.random.default_rng(1).standard_normal((300, 16))
    errors = []
    for levels in (1, 2, 3):
        model = RQKMeans(levels=levels, codes=8, seed=0, n_init=1).fit(X)
        errors.append(model.reconstruction_error(X))
        assert errors[-1] == pytest.approx(model.level_errors[-1])  # encode agrees with fit
    total = (X**2).sum(axis=1).mean()
    assert total > errors[0] > errors[1] > errors[2]


# --- the ids contract and the stage ----------------------------------------------------


def test_ids_file_round_trips(tmp_path):
    path = tmp_path / "ids.parquet"
    item_idx = np.array([2, 0, 1])
    codes = np.array([[1, 3, 0], [1, 3, 1], [0, 2, 0]])
    write_semantic_ids(path, item_idx, codes, {"levels": 2, "codes": 4, "seed": 0})
    got_idx, got_codes = read_semantic_ids(path)
    assert got_idx.dtype == np.int32 and got_codes.dtype == np.int64
    np.testing.assert_array_equal(got_idx, [0, 1, 2])
    np.testing.assert_array_equal(got_codes, codes[[1, 2, 0]])
    schema = pq.read_schema(path)
    assert schema.field("codes").type == pa.list_(pa.int32(), 3)
    assert read_metadata(path) == {"id_length": 3, "levels": 2, "codes": 4, "seed": 0}


def test_ids_file_with_wrong_schema_fails_naming_the_column(tmp_path):
    path = tmp_path / "ids.parquet"
    # codes as a variable-length list of int64 instead of a fixed-size list of int32.
    pq.write_table(
        pa.table({"item_idx": pa.array([0, 1], pa.int32()), "codes": pa.array([[0, 0], [0, 1]], pa.list_(pa.int64()))}),
        path,
    )
    with pytest.raises(ValueError, match="column 'codes'"):
        read_semantic_ids(path)
    # item_idx as int64.
    codes = pa.FixedSizeListArray.from_arrays(pa.array([0, 0, 0, 1], pa.int32()), 2)
    pq.write_table(pa.table({"item_idx": pa.array([0, 1], pa.int64()), "codes": codes}), path)
    with pytest.raises(ValueError, match="item_idx"):
        read_semantic_ids(path)
    # A missing column.
    pq.write_table(pa.table({"item_idx": pa.array([0, 1], pa.int32())}), path)
    with pytest.raises(ValueError, match="codes"):
        read_semantic_ids(path)
    # IDs that still collide are refused on write.
    with pytest.raises(ValueError, match="column 'codes' has 1 duplicated full ID"):
        write_semantic_ids(path, np.array([0, 1]), np.array([[1, 0], [1, 0]]))


def test_tokenize_writes_unique_ids_and_quality(tmp_path):
    rng = np.random.default_rng(0)
    n = 60
    order = rng.permutation(n)  # feature files need not be sorted
    text, image = tmp_path / "text.parquet", tmp_path / "image.parquet"
    write_features(text, order, rng.standard_normal((n, 12)), stage="test")
    write_features(image, order, rng.standard_normal((n, 8)), stage="test")
    ids_path, quality_path = tmp_path / "ids.parquet", tmp_path / "quality.parquet"
    tokenize([str(text), str(image)], ids_path, quality_path, levels=2, codes=4, seed=0, n_init=1)

    item_idx, codes = read_semantic_ids(ids_path)
    np.testing.assert_array_equal(item_idx, np.arange(n))
    assert codes.shape == (n, 3)
    assert len({tuple(c) for c in codes}) == n
    meta = read_metadata(ids_path)
    assert (meta["levels"], meta["codes"], meta["seed"]) == (2, 4, 0)
    assert meta["max_dedup_index"] == codes[:, -1].max()
    assert meta["reconstruction_error"] > 0
    q = quality_dict(read_table(quality_path, ID_QUALITY))
    assert q[("uniqueness", -1)] == 1.0
    assert q[("max_dedup_index", -1)] == meta["max_dedup_index"]
    assert {lvl for m, lvl in q if m == "utilization"} == {0, 1}


def test_each_run_seed_fits_its_own_tokenizer(tmp_path):
    """The workflow tokenizes once per run seed: the same seed gives the same
    files byte for byte, another seed other codebooks (so a TIGER-style
    model's std over seeds includes the tokenizer's)."""
    rng = np.random.default_rng(1)
    features = tmp_path / "text.parquet"
    write_features(features, np.arange(200), rng.standard_normal((200, 16)), stage="test")
    files = {}
    for run, seed in [("a", 0), ("b", 0), ("c", 1)]:
        files[run] = tmp_path / f"{run}_ids.parquet", tmp_path / f"{run}_quality.parquet"
        tokenize([str(features)], *files[run], levels=2, codes=8, seed=seed, n_init=1)
    for a, b in zip(files["a"], files["b"]):
        assert a.read_bytes() == b.read_bytes(), a.name
    assert read_metadata(files["c"][0])["seed"] == 1
    assert not np.array_equal(read_semantic_ids(files["a"][0])[1], read_semantic_ids(files["c"][0])[1])


def test_tokenize_fails_when_modalities_list_different_items(tmp_path):
    rng = np.random.default_rng(0)
    text, image = tmp_path / "text.parquet", tmp_path / "image.parquet"
    write_features(text, np.arange(10), rng.standard_normal((10, 4)), stage="test")
    write_features(image, np.arange(1, 11), rng.standard_normal((10, 4)), stage="test")
    with pytest.raises(ValueError, match=r"1 only in the former \(first \[10\]\)"):
        tokenize([str(text), str(image)], tmp_path / "ids.parquet", tmp_path / "q.parquet", levels=2, codes=4, seed=0)
