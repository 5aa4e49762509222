"""MCRL's ID-space measures: alignment, mean pair distance, uniformity, t-SNE, and the workflow summary."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pmsid.methods.mcrl.id_space import (
    alignment,
    item_representations,
    mean_pair_distance,
    summarize,
    tsne,
    tsne_frame,
    uniformity,
)
from pmsid.models.generator import TigerGenerator


def _unit(z):
    z = np.asarray(z, dtype=np.float64)
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def _brute_alignment(z, labels):
    z = _unit(z)
    dists = [
        ((z[i] - z[j]) ** 2).sum() for i in range(len(z)) for j in range(len(z)) if i != j and labels[i] == labels[j]
    ]
    return float(np.mean(dists)) if dists else float("nan")


def _brute_mean_pair_distance(z):
    z = _unit(z)
    return float(np.mean([((z[i] - z[j]) ** 2).sum() for i in range(len(z)) for j in range(len(z)) if i != j]))


def _brute_uniformity(z, t):
    z = _unit(z)
    vals = [math.exp(-t * ((z[i] - z[j]) ** 2).sum()) for i in range(len(z)) for j in range(len(z)) if i != j]
    return math.log(np.mean(vals))


def _clusters(n_clusters, per_cluster, d, spread, seed=0):
    """``n_clusters`` random centres with ``per_cluster`` points each at Gaussian noise ``spread``; and labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, d))
    labels = np.repeat(np.arange(n_clusters), per_cluster)
    return centres[labels] + spread * rng.normal(size=(len(labels), d)), labels


def _tiny_generator(codes, d_model=8, seed=0):
    torch.manual_seed(seed)
    return TigerGenerator(
        torch.as_tensor(codes), history_cap=3, d_model=d_model, n_heads=2, n_encoder_layers=1,
        n_decoder_layers=1, d_ff=16, dropout=0.0,
    )  # fmt: skip


def _two_table_codes(n_items=12, seed=0):
    """Codes (P=2, n_items, D=3): two different ID tables over levels of sizes 3, 4 and a dedup level."""
    rng = np.random.default_rng(seed)
    tables = []
    for _ in range(2):
        c = np.stack([rng.integers(0, 3, n_items), rng.integers(0, 4, n_items), rng.integers(0, 2, n_items)], 1)
        tables.append(c)
    codes = np.stack(tables)
    codes[0, 0] = (2, 3, 1)  # every code of every level is used, so K_j is known
    return torch.as_tensor(codes, dtype=torch.long)


# ----------------------------------------------------------------- alignment
LAYOUTS = {
    "two_classes": np.array([0, 1] * 10),
    "uneven": np.array([0] * 11 + [1] * 5 + [2] * 2 + [3, 4]),
    "with_singletons": np.array([7, 7, 7, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]),
    "one_class": np.zeros(20, dtype=np.int64),
    "negative_and_large": np.array([-1, 10**9] * 10),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_alignment_and_mean_pair_distance_equal_brute_force(layout):
    labels = LAYOUTS[layout]
    z = np.random.default_rng(1).normal(size=(len(labels), 5))
    assert alignment(z, labels) == pytest.approx(_brute_alignment(z, labels), rel=1e-9, abs=1e-12)
    assert mean_pair_distance(z) == pytest.approx(_brute_mean_pair_distance(z), rel=1e-9)
    # Torch input and an unnormalized scale give the same numbers: z is normalized inside.
    assert alignment(torch.as_tensor(3.0 * z, dtype=torch.float32), torch.as_tensor(labels)) == pytest.approx(
        _brute_alignment(z, labels), rel=1e-5
    )


def test_alignment_is_nan_when_no_label_has_two_items():
    z = np.random.default_rng(0).normal(size=(6, 4))
    assert math.isnan(alignment(z, np.arange(6)))
    assert math.isnan(_brute_alignment(z, np.arange(6)))


def test_alignment_is_zero_when_each_label_coincides():
    z, labels = _clusters(4, 5, d=6, spread=0.0)
    assert alignment(z, labels) == pytest.approx(0.0, abs=1e-12)
    assert mean_pair_distance(z) > 0.5


def test_alignment_ratio_separates_clustered_from_random_labels():
    z, labels = _clusters(5, 40, d=16, spread=0.1)
    assert alignment(z, labels) / mean_pair_distance(z) < 0.1
    rng = np.random.default_rng(3)
    noise = rng.normal(size=(400, 16))
    random_labels = rng.integers(0, 5, size=400)
    assert alignment(noise, random_labels) / mean_pair_distance(noise) == pytest.approx(1.0, abs=0.05)


def test_alignment_rejects_bad_labels():
    z = np.ones((4, 3))
    with pytest.raises(ValueError, match=r"labels must be an integer array of shape \(4,\)"):
        alignment(z, np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="integer"):
        alignment(z, np.zeros(4))
    with pytest.raises(ValueError, match=r"z must be a real \(N, d\) matrix"):
        alignment(np.ones(4), np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match="at least 2 rows"):
        mean_pair_distance(np.ones((1, 3)))


# ---------------------------------------------------------------- uniformity
@pytest.mark.parametrize("t", [0.5, 2.0, 50.0])
def test_uniformity_equals_brute_force_across_chunks(t):
    z = np.random.default_rng(2).normal(size=(23, 4))
    expected = _brute_uniformity(z, t)
    for chunk in (1, 5, 23, 100):
        assert uniformity(z, t=t, chunk=chunk) == pytest.approx(expected, rel=1e-9)


def test_uniformity_stays_finite_where_exp_underflows():
    # Antipodal points: every kernel value is exp(-t * 4), 0.0 in float64 for t = 200.
    z = np.array([[1.0, 0.0], [-1.0, 0.0]])
    assert uniformity(z, t=200.0) == pytest.approx(-800.0)


def test_uniformity_subset_is_seeded():
    z = np.random.default_rng(4).normal(size=(300, 8))
    a = uniformity(z, max_items=50, seed=7)
    assert uniformity(z, max_items=50, seed=7) == a
    assert uniformity(z, max_items=50, seed=8) != a
    # The subset is a sample of the same rows: a close estimate of the full value.
    assert a == pytest.approx(uniformity(z), abs=0.1)


def test_uniformity_is_lower_for_spread_points():
    spread = np.random.default_rng(5).normal(size=(200, 8))
    clustered, _ = _clusters(3, 67, d=8, spread=0.05, seed=5)
    assert uniformity(spread) < uniformity(clustered) - 0.5


def test_uniformity_rejects_bad_arguments():
    z = np.ones((4, 3))
    with pytest.raises(ValueError, match="t must be a positive number"):
        uniformity(z, t=0)
    with pytest.raises(ValueError, match="max_items must be an integer >= 2"):
        uniformity(z, max_items=1)


# ---------------------------------------------------------- representations
@pytest.mark.parametrize("table", [0, 1])
def test_item_representations_sum_the_id_token_embeddings(table):
    codes = _two_table_codes()
    gen = _tiny_generator(codes)
    assert gen.level_sizes == [3, 4, 2]
    offsets = [0, 3, 7]  # first token of each level
    weight = gen.tok_emb.weight.detach()
    expected = torch.stack(
        [sum(weight[offsets[j] + int(codes[table, i, j])] for j in range(3)) for i in range(codes.shape[1])]
    )
    rep = item_representations(gen, table)
    assert rep.shape == (12, 8) and rep.dtype == torch.float32 and rep.device.type == "cpu"
    assert not rep.requires_grad
    torch.testing.assert_close(rep, expected)


def test_item_representations_rejects_a_bad_table():
    gen = _tiny_generator(_two_table_codes())
    with pytest.raises(ValueError, match=r"table must be an int in \[0, 2\)"):
        item_representations(gen, 2)
    with pytest.raises(ValueError, match="lacks"):
        item_representations(torch.nn.Linear(2, 2))


# ------------------------------------------------------------------- summary
def test_summarize_averages_over_tables():
    codes = _two_table_codes(n_items=30, seed=1)
    gen = _tiny_generator(codes, d_model=8, seed=1)
    rng = np.random.default_rng(0)
    labels = {"text": rng.integers(0, 4, 30), "image": rng.integers(0, 3, 30).astype(np.int32)}
    out = summarize(gen, labels, max_items=20, seed=3)
    assert set(out) == {
        "n_items", "n_tables", "modalities", "alignment", "mean_pair_distance", "alignment_ratio", "uniformity",
        "representation",
    }  # fmt: skip
    assert out["n_items"] == 30 and out["n_tables"] == 2 and out["modalities"] == ["text", "image"]
    json.dumps(out)  # plain Python values
    z = [item_representations(gen, p) for p in range(2)]
    for m in labels:
        assert math.isfinite(out["alignment"][m])
        assert out["alignment"][m] == pytest.approx(np.mean([alignment(zp, labels[m]) for zp in z]))
        assert out["alignment_ratio"][m] == pytest.approx(out["alignment"][m] / out["mean_pair_distance"])
    assert out["mean_pair_distance"] == pytest.approx(np.mean([mean_pair_distance(zp) for zp in z]))
    assert out["uniformity"] == pytest.approx(np.mean([uniformity(zp, max_items=20, seed=3) for zp in z]))
    # The two tables differ, so the average is not just table 0.
    assert mean_pair_distance(z[0]) != pytest.approx(mean_pair_distance(z[1]))


def test_summarize_names_the_modality_with_a_wrong_label_shape():
    gen = _tiny_generator(_two_table_codes())
    labels = {"text": np.zeros(12, dtype=np.int64), "image": np.zeros(11, dtype=np.int64)}
    with pytest.raises(ValueError, match=r"labels\['image'\] must be an integer array of shape \(12,\)"):
        summarize(gen, labels)
    with pytest.raises(ValueError, match=r"labels\['text'\]"):
        summarize(gen, {"text": np.zeros(12)})


# --------------------------------------------------------------------- t-SNE
def test_tsne_frame_columns_dtypes_and_determinism():
    codes = _two_table_codes(n_items=25, seed=2)
    gen = _tiny_generator(codes, seed=2)
    rng = np.random.default_rng(1)
    labels = {"text": rng.integers(0, 4, 25), "image": rng.integers(0, 3, 25)}
    frame = tsne_frame(gen, labels, table=1, seed=0, perplexity=5.0)
    assert list(frame.columns) == ["item_idx", "x", "y", "label_text", "label_image"]
    assert [str(t) for t in frame.dtypes] == ["int32", "float32", "float32", "int32", "int32"]
    np.testing.assert_array_equal(frame["item_idx"], np.arange(25))
    np.testing.assert_array_equal(frame["label_image"], labels["image"])
    assert np.isfinite(frame[["x", "y"]].to_numpy()).all()
    again = tsne_frame(gen, labels, table=1, seed=0, perplexity=5.0)
    np.testing.assert_array_equal(frame.to_numpy(), again.to_numpy())


def test_tsne_subsets_with_a_seed_and_runs_on_tiny_inputs():
    z = np.random.default_rng(6).normal(size=(40, 5))
    idx, xy = tsne(z, seed=1, max_items=15)
    assert idx.dtype == np.int64 and xy.dtype == np.float32 and xy.shape == (15, 2)
    assert len(set(idx)) == 15 and (np.diff(idx) > 0).all()
    np.testing.assert_array_equal(tsne(z, seed=1, max_items=15)[0], idx)
    idx, xy = tsne(z[:4], seed=0)  # default perplexity 30 is clipped to 1
    np.testing.assert_array_equal(idx, np.arange(4))
    assert xy.shape == (4, 2)
