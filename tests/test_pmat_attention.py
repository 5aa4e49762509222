"""PMAT Module 1: modality weights on the simplex, fusion, the next-item InfoNCE,
and the central claim: weights learned from behaviour follow the modality that
actually predicts a user's next item."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from pmsid.data.sequences import PAD, Sequences
from pmsid.methods.pmat.attention import (
    AttentionBundle,
    ModalityProjector,
    UserModalityAttention,
    fuse,
    fuse_np,
    fused_cosine,
    histories_weights,
    next_item_infonce,
    project_features,
    resolve_cfg,
    train_modality_attention,
    user_weights,
)

torch.set_num_threads(1)


def random_attention(n_modalities: int, d: int, seed: int = 0) -> UserModalityAttention:
    """An attention network with a random (not zero) last layer, so alpha is not trivially uniform."""
    torch.manual_seed(seed)
    net = UserModalityAttention(n_modalities, d)
    torch.nn.init.normal_(net.scorer[-1].weight, std=1.0)
    torch.nn.init.normal_(net.query, std=1.0)
    return net


def unit(shape) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(*shape), dim=-1)


# ---- simplex, masking, fusion ---------------------------------------------------


@pytest.mark.parametrize("n_modalities", [2, 3, 5])
def test_alpha_is_on_the_simplex_with_padded_histories(n_modalities):
    d, batch, cap = 8, 6, 5
    net = random_attention(n_modalities, d)
    hist = unit((batch, cap, n_modalities, d))
    lengths = torch.tensor([5, 4, 2, 1, 0, 3])  # partly padded, one fully padded row
    mask = torch.arange(cap)[None, :] >= cap - lengths[:, None]  # left padding, recent last
    alpha, q = net(hist, mask)
    assert alpha.shape == (batch, n_modalities) and q.shape == (batch, d)
    assert torch.isfinite(alpha).all() and torch.isfinite(q).all()
    assert (alpha >= 0).all()
    assert torch.allclose(alpha.sum(dim=1), torch.ones(batch, dtype=alpha.dtype), atol=1e-6)
    assert alpha.std(dim=0).max() > 1e-3  # the random network does personalize


def test_padding_does_not_change_the_weights():
    # The same two items with and without PAD in front give the same alpha and q,
    # whatever garbage sits in the padded rows.
    d, n_modalities = 8, 3
    net = random_attention(n_modalities, d, seed=1)
    items = unit((1, 2, n_modalities, d))
    padded = torch.cat([100 * torch.randn(1, 3, n_modalities, d), items], dim=1)
    mask_short = torch.ones(1, 2, dtype=torch.bool)
    mask_padded = torch.tensor([[False, False, False, True, True]])
    a1, q1 = net(items, mask_short)
    a2, q2 = net(padded, mask_padded)
    assert torch.allclose(a1, a2, atol=1e-6) and torch.allclose(q1, q2, atol=1e-6)


def test_untrained_attention_is_global_fusion():
    # The scorer's last layer starts at zero: uniform weights until training moves them.
    net = UserModalityAttention(3, 8)
    alpha, _ = net(unit((4, 5, 3, 8)), torch.ones(4, 5, dtype=torch.bool))
    assert torch.allclose(alpha, torch.full((4, 3), 1 / 3))


def test_fuse_is_the_weighted_sum_by_hand():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0]])  # (M = 3, d = 2)
    alpha = torch.tensor([0.5, 0.25, 0.25])
    # 0.5 * (1, 0) + 0.25 * (0, 1) + 0.25 * (3, 4) = (1.25, 1.25)
    assert torch.allclose(fuse(f, alpha), torch.tensor([1.25, 1.25]))
    # Batched: users (B, M) against items (N, M, d) -> (B, N, d).
    items = torch.randn(4, 3, 2)
    alphas = torch.softmax(torch.randn(2, 3), dim=-1)
    out = fuse(items[None], alphas[:, None])
    assert out.shape == (2, 4, 2)
    assert torch.allclose(
        out[1, 2], alphas[1, 0] * items[2, 0] + alphas[1, 1] * items[2, 1] + alphas[1, 2] * items[2, 2]
    )
    # The numpy twin is the same equation.
    feats = [items[:, m].numpy() for m in range(3)]
    assert np.allclose(fuse_np(feats, alphas[1].numpy()), out[1].numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="one per modality"):
        fuse_np(feats, np.array([0.5, 0.5]))


def test_fused_cosine_matches_the_explicit_fusion():
    q, alpha, items = torch.randn(3, 8), torch.softmax(torch.randn(3, 4), dim=-1), unit((5, 4, 8))
    explicit = torch.nn.functional.normalize(fuse(items[None], alpha[:, None]), dim=-1)  # (B, N, d)
    expected = torch.einsum("bd,bnd->bn", torch.nn.functional.normalize(q, dim=-1), explicit)
    assert torch.allclose(fused_cosine(q, alpha, items), expected, atol=1e-6)


def test_projector_output_is_unit_norm_and_pca_keeps_neighbours():
    rng = np.random.default_rng(0)
    # Two clusters far apart in 12 dims plus an offset shared by every item.
    x = np.r_[rng.normal(0, 1, (20, 12)) + 6, rng.normal(0, 1, (20, 12)) - 6] + 50.0
    proj = ModalityProjector([12, 5], d=4).init_pca([x.astype(np.float32), rng.normal(size=(40, 5)).astype(np.float32)])
    f = proj([torch.as_tensor(x, dtype=torch.float32), torch.randn(40, 5)])
    assert f.shape == (40, 2, 4)
    assert torch.allclose(f.norm(dim=-1), torch.ones(40, 2), atol=1e-5)
    sim = f[:, 0] @ f[:, 0].T
    same = torch.zeros(40, 40, dtype=torch.bool)
    same[:20, :20] = same[20:, 20:] = True
    assert sim[same].mean() > 0.8 and sim[~same].mean() < -0.5  # centring removed the shared offset


# ---- the behavioural loss ----------------------------------------------------------


def test_infonce_gradients_reach_the_attention_and_both_sides_of_alpha():
    d, n_modalities, batch = 8, 3, 6
    net = random_attention(n_modalities, d, seed=2)
    hist = unit((batch, 4, n_modalities, d))
    mask = torch.ones(batch, 4, dtype=torch.bool)
    mask[0, :2] = False
    targets = unit((batch, n_modalities, d))
    alpha, q = net(hist, mask)
    loss = next_item_infonce(q, alpha, targets, temperature=0.1)
    loss.backward()
    for name, p in net.named_parameters():
        if name.startswith("modality_emb") or name.startswith("scorer") or name == "query":
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"
    # alpha acts on the target side too: with q fixed, the loss still moves with alpha.
    a = torch.softmax(torch.randn(batch, n_modalities), dim=-1).requires_grad_()
    next_item_infonce(q.detach(), a, targets, 0.1).backward()
    assert a.grad.abs().sum() > 0


def test_infonce_prefers_the_true_target_and_masks_repeated_targets():
    # q equal to its own target's fused feature: a near-zero loss at a low temperature.
    targets = unit((4, 2, 8))
    alpha = torch.full((4, 2), 0.5)
    q = fuse(targets, alpha)
    assert next_item_infonce(q, alpha, targets, temperature=0.01) < 1e-3
    # Two rows with the same target item: neither counts as the other's negative.
    dup = torch.cat([targets[:1], targets[:1]])
    a2, q2 = alpha[:2], fuse(dup, alpha[:2])
    unmasked = next_item_infonce(q2, a2, dup, 0.1)
    masked = next_item_infonce(q2, a2, dup, 0.1, targets=torch.tensor([7, 7]))
    assert unmasked > 0.6 and masked < 1e-6


# ---- training ------------------------------------------------------------------------


def planted_dataset(
    n_users: int, seed: int, n_items: int = 240, n_clusters: int = 8, length: int = 12, noise: float = 0.25
):
    """Two independent feature spaces with ``n_clusters`` clusters each.

    Item i sits in cluster ``c0(i)`` of modality 0 and, independently, in
    cluster ``c1(i)`` of modality 1. A group-0 user draws every item of its
    sequence from one favourite cluster of modality 0 (its modality-1 clusters
    are then random); a group-1 user from one favourite cluster of modality 1.
    A ``noise`` fraction of the items is drawn from the whole catalogue
    instead. So a user's next item is predictable from modality 0 for group 0
    and from modality 1 for group 1, and from nothing else. Features are
    fixed (seed 123); users follow ``seed``.
    """
    item_rng = np.random.default_rng(123)
    dims = (16, 24)
    clusters = [item_rng.integers(0, n_clusters, n_items) for _ in dims]
    centres = [item_rng.normal(0, 1, (n_clusters, dim)) for dim in dims]
    features = [
        (2.0 * c[cl] + item_rng.normal(0, 1, (n_items, dim))).astype(np.float32)
        for c, cl, dim in zip(centres, clusters, dims)
    ]
    rng = np.random.default_rng(seed)
    group = rng.permutation(np.arange(n_users) % 2)
    seqs = []
    for u in range(n_users):
        members = np.flatnonzero(clusters[group[u]] == rng.integers(n_clusters))
        n_noise = rng.binomial(length, noise)
        picked = rng.choice(members, size=min(length - n_noise, len(members)), replace=False)
        others = rng.choice(np.setdiff1d(np.arange(n_items), picked), size=n_noise, replace=False)
        seqs.append(rng.permutation(np.r_[picked, others]))
    return features, Sequences(seqs, n_items), group


FAST = {"d": 16, "hidden": 16, "epochs": 12, "batch_size": 128, "patience": 3, "progress": False}


def test_learned_weights_follow_the_predictive_modality():
    """The central claim: trained on behaviour only, alpha_0 separates the two groups of users.

    Judged on new users the network never trained on (alpha is a function of
    the history, so it must generalize), against the planted group.
    """
    features, seqs, _ = planted_dataset(n_users=240, seed=0)
    bundle, log = train_modality_attention(features, seqs, FAST, seed=0, device="cpu")
    assert log["valid_infonce"].iloc[-1] < log["valid_infonce"].iloc[0]

    _, new_users, group = planted_dataset(n_users=200, seed=1)
    alpha = user_weights(bundle, features, new_users, "test")
    assert np.allclose(alpha.sum(axis=1), 1.0, atol=1e-6) and (alpha >= 0).all()
    alpha0, is_group0 = alpha[:, 0], group == 0
    rho = spearmanr(alpha0, is_group0).statistic
    accuracy = ((alpha0 > np.median(alpha0)) == is_group0).mean()
    assert rho > 0.5, f"Spearman(alpha_0, planted group) = {rho:.3f}"
    assert accuracy > 0.8, f"accuracy = {accuracy:.3f}"
    # Not a one-sided drift: the two groups' weights lie on opposite sides of 1/2.
    assert alpha0[is_group0].mean() > 0.5 > alpha0[~is_group0].mean()


def test_same_seed_same_weights_other_seed_different():
    features, seqs, _ = planted_dataset(n_users=60, seed=0, length=6)
    cfg = {**FAST, "epochs": 2}
    a = user_weights(train_modality_attention(features, seqs, cfg, seed=3, device="cpu")[0], features, seqs, "valid")
    b = user_weights(train_modality_attention(features, seqs, cfg, seed=3, device="cpu")[0], features, seqs, "valid")
    c = user_weights(train_modality_attention(features, seqs, cfg, seed=4, device="cpu")[0], features, seqs, "valid")
    assert np.array_equal(a, b)
    assert not np.allclose(a, c, atol=1e-6)


def test_outputs_for_the_tokenizer():
    features, seqs, _ = planted_dataset(n_users=40, seed=0, length=6)
    bundle, _ = train_modality_attention(features, seqs, {**FAST, "epochs": 1}, seed=0, device="cpu")
    proj = project_features(bundle, features)
    assert len(proj) == 2 and all(p.shape == (240, 16) and p.dtype == np.float32 for p in proj)
    assert np.allclose(np.linalg.norm(proj[0], axis=1), 1.0, atol=1e-5)
    # "valid" reads the training items, "test" adds the valid item.
    valid, test = user_weights(bundle, features, seqs, "valid"), user_weights(bundle, features, seqs, "test")
    assert valid.shape == test.shape == (40, 2)
    manual = histories_weights(bundle, features, np.array([np.r_[[PAD] * 16, seqs.items[0][:-1]]]))
    assert np.allclose(test[0], manual[0]) and not np.allclose(valid[0], test[0])
    assert np.array_equal(user_weights(bundle, features, seqs, "train"), valid)
    # The bundle survives a save / load round trip.
    reloaded = AttentionBundle.from_state(bundle.state())
    assert np.array_equal(user_weights(reloaded, features, seqs, "test"), test)
    with pytest.raises(ValueError, match="split"):
        user_weights(bundle, features, seqs, "holdout")


def test_nan_feature_fails_naming_the_modality():
    features, seqs, _ = planted_dataset(n_users=20, seed=0, length=6)
    features[1][5, 3] = np.nan
    with pytest.raises(ValueError, match="modality 1.*non-finite"):
        train_modality_attention(features, seqs, FAST, seed=0, device="cpu")


def test_config_rejects_unknown_keys_and_needs_two_modalities():
    with pytest.raises(ValueError, match="learning_rate"):
        resolve_cfg({"learning_rate": 1e-3})
    assert resolve_cfg({"d": 8})["d"] == 8
    features, seqs, _ = planted_dataset(n_users=20, seed=0, length=6)
    with pytest.raises(ValueError, match="M >= 2"):
        train_modality_attention(features[:1], seqs, FAST, seed=0, device="cpu")


# ---- lambda1 L_cons (theorem 3) in the training --------------------------------------


def trained_state(cfg: dict, seed: int = 0) -> dict:
    features, seqs, _ = planted_dataset(n_users=60, seed=0, length=8)
    bundle, _ = train_modality_attention(features, seqs, {**FAST, "epochs": 2, **cfg}, seed=seed, device="cpu")
    return {**bundle.state()["projector"], **bundle.state()["attention"]}


def test_lambda1_zero_is_the_plain_infonce_training(monkeypatch):
    from pmsid.methods.pmat import attention as att

    plain = trained_state({"lambda1": 0.0})

    def boom(*args, **kwargs):
        raise AssertionError("L_cons computed with lambda1 = 0")

    # lambda1 = 0 never touches the consistency term, so nothing (not even the
    # order of floating-point operations) differs from the InfoNCE-only training.
    monkeypatch.setattr(att, "_consistency_term", boom)
    again = trained_state({"lambda1": 0.0})
    assert all(torch.equal(plain[k], again[k]) for k in plain)
    with pytest.raises(AssertionError, match="lambda1 = 0"):
        trained_state({"lambda1": 0.1})
    with pytest.raises(ValueError, match="lambda1"):
        resolve_cfg({"lambda1": -0.1})
    assert resolve_cfg({})["lambda1"] == 0.1  # the schema's default


def test_lambda1_positive_changes_the_trained_parameters():
    plain, cons = trained_state({"lambda1": 0.0}), trained_state({"lambda1": 0.5})
    changed = [k for k in plain if not torch.allclose(plain[k], cons[k])]
    assert any(k.startswith("scorer") for k in changed), changed
    assert any(k.startswith("proj") for k in changed), changed


def test_consistency_term_is_theorem_3_on_a_simulated_update():
    from pmsid.methods.pmat import drift
    from pmsid.methods.pmat.attention import _consistency_term

    d, n_modalities, batch, cap, window, lam = 8, 2, 5, 6, 3, 0.4
    net = random_attention(n_modalities, d, seed=4)
    feats = unit((batch, cap, n_modalities, d))
    mask = torch.ones(batch, cap, dtype=torch.bool)
    mask[0, :4] = False  # a two-item prefix: the window is partly padding
    mask[1, :2] = False
    alpha_long, _ = net(feats, mask)
    cfg = {"window": window, "lambda_max": lam, "cons_temperature": 0.2}
    got = _consistency_term(net, feats, mask, alpha_long, cfg)

    h_next, h_t, interest = [], [], []
    for b in range(batch):
        real = feats[b, mask[b]].detach().numpy()  # (n, M, d), oldest first
        f = [real[:, m] for m in range(n_modalities)]
        recent = torch.as_tensor(real[-window:])[None]
        a_new = net(recent, torch.ones(1, len(recent[0]), dtype=torch.bool))[0][0].detach().numpy()
        a_long = alpha_long[b].detach().numpy()
        a_next = (1 - lam) * a_long + lam * a_new
        h_t.append(drift.fused_features(f, a_long).mean(axis=0))
        h_next.append(drift.fused_features(f, a_next).mean(axis=0))
        interest.append(drift.short_term_interest(f, a_next, np.arange(len(real)), window))
    expected = drift.consistency_loss(
        *(torch.as_tensor(np.stack(x)) for x in (h_next, h_t, interest)), lam, temperature=0.2
    )
    assert torch.allclose(got.double(), expected, atol=1e-5)
    got.backward()
    assert net.scorer[-1].weight.grad.abs().sum() > 0  # L_cons trains the preference network


# ---- the shared-axes failure and planted recovery --------------------------------------


def test_pca_blocks_keep_modalities_apart_shared_axes_collide():
    """The cause of the reviewer's failure: with every modality's PCA on the same
    coordinates, each modality's dominant structure lands on the same axes, so an
    item's two projected features (and any image and text vectors) overlap
    systematically; the default "blocks" layout gives each modality its own
    d // M coordinates, so at init they are exactly orthogonal, and within a
    modality the neighbourhoods are still those of the centred raw features."""
    rng = np.random.default_rng(0)
    n, clusters = 200, rng.integers(0, 4, 200)
    # Both modalities dominated by a few cluster directions (like colour / kind).
    x = [(6.0 * rng.normal(size=(4, dim))[clusters] + rng.normal(size=(n, dim))).astype(np.float32) for dim in (30, 50)]
    raw = [torch.as_tensor(v) for v in x]
    blocks = ModalityProjector([30, 50], d=16).init_pca(x)(raw)
    shared = ModalityProjector([30, 50], d=16).init_pca(x, layout="shared")(raw)
    assert torch.allclose(blocks[:, 0] @ blocks[:, 1].T, torch.zeros(n, n), atol=1e-5)
    assert (shared[:, 0] * shared[:, 1]).sum(-1).abs().mean() > 0.3
    for f in (blocks, shared):  # within a modality, same-cluster items stay nearest
        sim = f[:, 1] @ f[:, 1].T
        sim.fill_diagonal_(-2)
        assert (clusters[sim.argmax(dim=1).numpy()] == clusters).mean() > 0.95
    with pytest.raises(ValueError, match="layout"):
        ModalityProjector([30, 50], d=16).init_pca(x, layout="diagonal")


def test_recovers_a_planted_design_with_stand_in_features(tmp_path):
    """Recovery on the planted generator's "unequal" design (4 colours vs 24 kinds,
    30% image-led, pure preferences): the real sequences of
    pmsid.data.planted, with Gaussian stand-in features (cluster centre per
    attribute value plus noise) instead of the slow image and text encoders."""
    import gzip
    import json

    import pandas as pd

    from pmsid.data.planted import generate_planted

    paths = generate_planted(tmp_path, "unequal", seed=0, n_users=400, n_items=360)
    items, truth = pd.read_parquet(paths["truth_items"]), pd.read_parquet(paths["truth_users"])
    with gzip.open(paths["reviews"], "rt") as f:
        reviews = pd.DataFrame([json.loads(line) for line in f]).sort_values(["reviewerID", "unixReviewTime"])
    index = {a: i for i, a in enumerate(items["item_id"])}
    groups = reviews.groupby("reviewerID", sort=True)["asin"]
    seqs = Sequences([g.map(index).to_numpy(np.int64) for _, g in groups], len(items))
    image_led = (truth.set_index("user_id").loc[list(groups.groups), "preference"] == "image").to_numpy()

    rng = np.random.default_rng(123)

    def stand_in(columns, scales, dim):
        x = rng.normal(size=(len(items), dim)) + 5.0  # an offset shared by every item, as real features have
        for column, scale in zip(columns, scales):
            codes = items[column].astype("category").cat.codes.to_numpy()
            x += scale * rng.normal(size=(codes.max() + 1, dim))[codes]
        return x.astype(np.float32)

    features = [
        stand_in(["kind", "brand"], [3.0, 1.0], 48),
        stand_in(["colour", "shape", "texture"], [3.0, 1.5, 1.5], 64),
    ]
    cfg = {"d": 32, "hidden": 16, "epochs": 12, "patience": 3, "progress": False}
    bundle, _ = train_modality_attention(features, seqs, cfg, seed=0, device="cpu")
    w = user_weights(bundle, features, seqs, "train")[:, 1]
    ranks = pd.Series(w).rank().to_numpy()
    n1, n0 = image_led.sum(), (~image_led).sum()
    auc = (ranks[image_led].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)
    assert auc > 0.95, f"AUC {auc:.3f}"
    assert w[image_led].mean() > 0.5 > w[~image_led].mean()
    assert w.max() - w.min() > 0.5  # not collapsed onto one modality
