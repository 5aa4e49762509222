"""k-means pseudo-labels: determinism, planted clusters, clipping, the written file."""

import logging

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score
from threadpoolctl import threadpool_limits

from pmsid.data.contracts import PSEUDOLABELS, read_metadata, read_table, write_features
from pmsid.quantize.kmeans import kmeans_labels, pseudolabels_for


@pytest.fixture(autouse=True)
def one_thread():
    with threadpool_limits(limits=1):
        yield


def planted(n_clusters=6, per_cluster=40, dim=32, seed=0):
    """Tight clusters around orthogonal directions: far apart in angle, as the L2-normalized k-means sees them."""
    rng = np.random.default_rng(seed)
    directions = np.linalg.qr(rng.normal(size=(dim, dim)))[0][:n_clusters]  # orthonormal rows
    truth = np.repeat(np.arange(n_clusters), per_cluster)
    scale = rng.uniform(0.5, 5.0, size=(len(truth), 1))  # the norm must not matter
    matrix = scale * (directions[truth] + 0.05 * rng.normal(size=(len(truth), dim)))
    order = rng.permutation(len(truth))
    return matrix[order].astype(np.float32), truth[order]


def test_same_seed_same_labels():
    matrix = np.random.default_rng(1).normal(size=(300, 16)).astype(np.float32)
    a = kmeans_labels(matrix, 8, seed=7)
    b = kmeans_labels(matrix, 8, seed=7)
    assert a.dtype == np.int32 and a.shape == (300,)
    np.testing.assert_array_equal(a, b)
    assert len(np.unique(a)) == 8


def test_recovers_planted_clusters():
    matrix, truth = planted()
    labels = kmeans_labels(matrix, 6, seed=0)
    assert adjusted_rand_score(truth, labels) == 1.0


def test_clusters_by_direction_not_norm():
    # Two directions, each at very different norms: unnormalized k-means with
    # K=2 splits off the largest rows; on unit rows the split is by direction.
    base = np.array([[1.0, 0.0], [0.0, 1.0]])
    matrix = np.vstack([base * s for s in (0.1, 0.2, 10.0, 20.0)])
    labels = kmeans_labels(matrix, 2, seed=0)
    assert adjusted_rand_score(np.tile([0, 1], 4), labels) == 1.0


def test_n_clusters_clipped_to_distinct_rows(caplog):
    # 3 distinct directions; [1, 0] and [2, 0] are the same row once normalized.
    matrix = np.array([[1, 0], [2, 0], [0, 1], [0, 3], [1, 1], [1, 1]], dtype=np.float32)
    with caplog.at_level(logging.WARNING, logger="pmsid.quantize.kmeans"):
        labels = kmeans_labels(matrix, 10, seed=0)
    assert "clipped to 3" in caplog.text
    assert len(np.unique(labels)) == 3
    assert labels[0] == labels[1] and labels[2] == labels[3] and labels[4] == labels[5]


def test_bad_n_clusters_fails():
    with pytest.raises(ValueError, match="n_clusters must be >= 1"):
        kmeans_labels(np.ones((4, 2)), 0, seed=0)


def test_pseudolabels_file(tmp_path):
    matrix, truth = planted(n_clusters=4, per_cluster=10)
    features = tmp_path / "text.parquet"
    write_features(features, np.arange(len(matrix)), matrix, stage="text_features")
    out = tmp_path / "pseudo" / "text.parquet"
    pseudolabels_for(features, out, n_clusters=4, seed=3)

    df = read_table(out, PSEUDOLABELS)
    assert df["item_idx"].tolist() == list(range(40))
    assert adjusted_rand_score(truth, df["label"]) == 1.0
    meta = read_metadata(out)
    assert meta["n_clusters"] == 4 and meta["seed"] == 3
    assert (meta["cluster_size_min"], meta["cluster_size_median"], meta["cluster_size_max"]) == (10, 10.0, 10)
    # inertia: squared distances of the unit rows to their cluster means
    unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    expected = sum(((unit[truth == c] - unit[truth == c].mean(0)) ** 2).sum() for c in range(4))
    assert meta["inertia"] == pytest.approx(expected, rel=1e-3)
