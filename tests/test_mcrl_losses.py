"""MCRL losses (docs/METHOD.md section 5): InfoNCE, L_user, L_intra, L_inter, ID representation, weighted sum."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pmsid.methods.mcrl.losses import (
    LOSS_NAMES,
    ContentViews,
    IdRepresentation,
    ModalityViews,
    info_nce,
    inter_modal_loss,
    intra_modal_loss,
    intra_modal_loss_multi,
    mcrl_loss,
    standardize,
    user_preference_loss,
)
from pmsid.models.generator import TigerGenerator

TAU = 0.5


def _randn(*shape, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).requires_grad_(requires_grad)


def _aligned_minimum(batch, tau, n_pos=1, n_zero=None):
    """-log(e^{1/tau} / (n_pos e^{1/tau} + n_zero e^0)): every positive at cosine 1, every other key at 0."""
    n_zero = batch - n_pos if n_zero is None else n_zero
    return -math.log(math.exp(1 / tau) / (n_pos * math.exp(1 / tau) + n_zero))


# Derangement: no row keeps its own vector.
SHIFT = [1, 2, 3, 4, 5, 0]


# --- info_nce -------------------------------------------------------------------


def test_info_nce_with_one_positive_is_cross_entropy():
    q, k = _randn(6, 8, seed=1), _randn(9, 8, seed=2)
    target = torch.tensor([0, 3, 3, 8, 5, 1])
    positives = F.one_hot(target, 9).bool()
    logits = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).T / 0.2
    assert info_nce(q, k, positives, 0.2).item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-5)


def test_info_nce_multi_positive_matches_a_hand_computation():
    # Unit vectors in 2-D at known angles: cosines are exact.
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    k = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-3.0, 0.0]])
    positives = torch.tensor([[True, True, False], [False, True, True]])
    tau = 0.5
    # query 0: cosines (1, 0, -1); query 1: (0, 1, 0)
    s0, s1 = [1 / tau, 0.0, -1 / tau], [0.0, 1 / tau, 0.0]
    z0, z1 = sum(math.exp(s) for s in s0), sum(math.exp(s) for s in s1)
    loss0 = ((-s0[0] + math.log(z0)) + (-s0[1] + math.log(z0))) / 2
    loss1 = ((-s1[1] + math.log(z1)) + (-s1[2] + math.log(z1))) / 2
    assert info_nce(q, k, positives, tau).item() == pytest.approx((loss0 + loss1) / 2, rel=1e-6)


def test_info_nce_exclude_removes_keys_from_the_denominator_and_the_positives():
    z = _randn(4, 5, seed=3)
    tau = 0.3
    positives = torch.tensor(
        [
            [False, True, False, False],
            [True, False, False, True],
            [False, False, False, True],
            [False, True, True, False],
        ]
    )
    eye = torch.eye(4, dtype=torch.bool)
    sim = (F.normalize(z, dim=-1) @ F.normalize(z, dim=-1).T / tau).tolist()
    expected = []
    for i in range(4):
        log_z = math.log(sum(math.exp(sim[i][j]) for j in range(4) if j != i))
        expected.append(sum(-sim[i][j] + log_z for j in range(4) if positives[i, j]) / positives[i].sum().item())
    got = info_nce(z, z, positives, tau, exclude=eye)
    assert got.item() == pytest.approx(sum(expected) / 4, rel=1e-5)
    # Without exclude the self-similarity is in the denominator: a different value.
    assert info_nce(z, z, positives, tau).item() != pytest.approx(got.item(), rel=1e-3)
    # Marking the excluded self-pairs as positives changes nothing.
    assert info_nce(z, z, positives | eye, tau, exclude=eye).item() == pytest.approx(got.item(), rel=1e-6)


def test_info_nce_skips_queries_without_positives():
    q, k = _randn(5, 4, seed=4), _randn(6, 4, seed=5)
    positives = torch.zeros(5, 6, dtype=torch.bool)
    positives[0, 2] = positives[3, 1] = positives[3, 4] = True
    full = info_nce(q, k, positives, TAU)
    only = info_nce(q[[0, 3]], k, positives[[0, 3]], TAU)
    assert full.item() == pytest.approx(only.item(), rel=1e-6)
    # Counting the skipped queries as zeros would have divided by 5, not 2.
    assert full.item() != pytest.approx(only.item() * 2 / 5, rel=1e-3)


def test_info_nce_without_any_positive_is_an_attached_zero_with_zero_gradient():
    q, k = _randn(3, 4, seed=6, requires_grad=True), _randn(3, 4, seed=7, requires_grad=True)
    # A fully excluded row must not leak NaN into the gradient either.
    exclude = torch.tensor([[True, True, True], [False, False, False], [True, False, False]])
    loss = info_nce(q, k, torch.zeros(3, 3, dtype=torch.bool), TAU, exclude=exclude)
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.equal(q.grad, torch.zeros_like(q)) and torch.equal(k.grad, torch.zeros_like(k))


def test_info_nce_gradient_is_finite_with_a_fully_excluded_row():
    q, k = _randn(3, 4, seed=8, requires_grad=True), _randn(3, 4, seed=9, requires_grad=True)
    exclude = torch.tensor([[True, True, True], [False, False, False], [True, False, False]])
    positives = torch.tensor([[False, False, False], [True, False, False], [False, True, False]])
    info_nce(q, k, positives, TAU, exclude=exclude).backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()
    assert q.grad[0].abs().sum() == 0  # the skipped query gets nothing
    assert q.grad[1].abs().sum() > 0


def test_info_nce_is_minimal_for_aligned_orthonormal_vectors():
    batch = 6
    e = torch.eye(batch)
    eye = torch.eye(batch, dtype=torch.bool)
    aligned = info_nce(e, e, eye, TAU).item()
    assert aligned == pytest.approx(_aligned_minimum(batch, TAU), rel=1e-6)
    assert info_nce(e, e[SHIFT], eye, TAU).item() > aligned + 1


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(queries=torch.zeros(3)), "queries"),
        (dict(keys=torch.zeros(4, 5)), "keys"),
        (dict(positives=torch.zeros(3, 3, dtype=torch.bool)), "positives"),
        (dict(positives=torch.zeros(3, 4)), "positives"),
        (dict(exclude=torch.zeros(4, 3, dtype=torch.bool)), "exclude"),
    ],
)
def test_info_nce_rejects_bad_shapes_naming_the_argument(bad, match):
    args = dict(queries=torch.zeros(3, 2), keys=torch.zeros(4, 2), positives=torch.ones(3, 4, dtype=torch.bool))
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        info_nce(temperature=TAU, **args)


@pytest.mark.parametrize("tau", [0, -0.1, float("nan"), float("inf"), None])
def test_bad_temperature_fails_naming_temperature(tau):
    z = _randn(4, 3)
    eye = torch.eye(4, dtype=torch.bool)
    labels = torch.tensor([0, 0, 1, 1])
    calls = [
        lambda: info_nce(z, z, eye, tau),
        lambda: user_preference_loss(z, z, tau),
        lambda: intra_modal_loss(z, labels, tau),
        lambda: intra_modal_loss_multi({"text": z}, {"text": labels}, tau),
        lambda: inter_modal_loss({"text": z, "image": z}, tau),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="temperature"):
            call()


# --- L_user ---------------------------------------------------------------------


def test_user_loss_is_minimal_when_each_user_matches_its_item():
    e = torch.eye(6)
    aligned = user_preference_loss(e, e, TAU).item()
    assert aligned == pytest.approx(_aligned_minimum(6, TAU), rel=1e-6)
    assert user_preference_loss(e, e[SHIFT], TAU).item() > aligned + 1


def test_user_loss_counts_same_group_items_as_positives():
    e = torch.eye(4)
    groups = torch.tensor([0, 0, 1, 1])
    # Same-group items aligned: users and items of group 0 at e0, of group 1 at e1.
    together = e[[0, 0, 1, 1]]
    # Same-group items pushed apart: every item (and its user) on its own axis.
    apart = e[[0, 2, 1, 3]]
    with_groups_together = user_preference_loss(together, together, TAU, groups).item()
    with_groups_apart = user_preference_loss(apart, apart, TAU, groups).item()
    assert with_groups_together < with_groups_apart
    # Analytic values: together, both positives at 1, two negatives at 0;
    # apart, positives at 1 and 0, three others at 0 in the denominator.
    assert with_groups_together == pytest.approx(_aligned_minimum(4, TAU, n_pos=2), rel=1e-6)
    log_z = math.log(math.exp(1 / TAU) + 3)
    assert with_groups_apart == pytest.approx(((-1 / TAU + log_z) + log_z) / 2, rel=1e-6)
    # Without groups the order flips: the other same-group item is a negative.
    assert user_preference_loss(together, together, TAU).item() > user_preference_loss(apart, apart, TAU).item()


def test_user_loss_with_distinct_groups_is_the_plain_loss():
    u, i = _randn(5, 4, seed=10), _randn(5, 4, seed=11)
    plain = user_preference_loss(u, i, TAU)
    assert user_preference_loss(u, i, TAU, torch.arange(5)).item() == pytest.approx(plain.item(), rel=1e-6)
    logits = F.normalize(u, dim=-1) @ F.normalize(i, dim=-1).T / TAU
    assert plain.item() == pytest.approx(F.cross_entropy(logits, torch.arange(5)).item(), rel=1e-5)


def test_user_loss_validates_its_inputs():
    z = _randn(4, 3)
    with pytest.raises(ValueError, match="item_repr"):
        user_preference_loss(z, z[:3], TAU)
    with pytest.raises(ValueError, match="groups"):
        user_preference_loss(z, z, TAU, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="groups"):
        user_preference_loss(z, z, TAU, torch.zeros(4))
    with pytest.raises(ValueError, match="B >= 2"):
        user_preference_loss(z[:1], z[:1], TAU)


# --- L_intra --------------------------------------------------------------------


def _intra_by_loop(views, labels, tau):
    sim = (F.normalize(views, dim=-1) @ F.normalize(views, dim=-1).T / tau).tolist()
    labels = labels.tolist()
    n = len(labels)
    per_item = []
    for i in range(n):
        pos = [j for j in range(n) if j != i and labels[j] == labels[i]]
        if not pos:
            continue
        log_z = math.log(sum(math.exp(sim[i][j]) for j in range(n) if j != i))
        per_item.append(sum(-sim[i][j] + log_z for j in pos) / len(pos))
    return sum(per_item) / len(per_item)


def test_intra_loss_positives_are_exactly_the_same_label_pairs():
    views = _randn(10, 6, seed=12)
    labels = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 4, 5])  # labels 1, 3 and 5 have a single member
    assert intra_modal_loss(views, labels, TAU).item() == pytest.approx(_intra_by_loop(views, labels, TAU), rel=1e-5)


def test_intra_loss_skips_single_member_labels():
    views = _randn(4, 3, seed=13, requires_grad=True)
    loss = intra_modal_loss(views, torch.tensor([7, 1, 4, 2]), TAU)
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.equal(views.grad, torch.zeros_like(views))


def test_intra_loss_is_minimal_when_same_label_items_coincide():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    views = torch.eye(3)[labels]
    aligned = intra_modal_loss(views, labels, TAU).item()
    # Positive at cosine 1, self excluded, four other items at 0.
    assert aligned == pytest.approx(_aligned_minimum(6, TAU, n_pos=1, n_zero=4), rel=1e-6)
    assert intra_modal_loss(views, torch.tensor([0, 1, 2, 0, 1, 2]), TAU).item() > aligned + 1


def test_intra_loss_multi_averages_modalities_and_requires_matching_keys():
    text, image = _randn(6, 4, seed=14), _randn(6, 4, seed=15)
    lt, li = torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 1, 0, 1, 0, 1])
    got = intra_modal_loss_multi({"text": text, "image": image}, {"text": lt, "image": li}, TAU)
    expected = (intra_modal_loss(text, lt, TAU) + intra_modal_loss(image, li, TAU)) / 2
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match="'image'"):
        intra_modal_loss_multi({"text": text, "image": image}, {"text": lt}, TAU)
    with pytest.raises(ValueError, match="'audio'"):
        intra_modal_loss_multi({"text": text}, {"text": lt, "audio": li}, TAU)


# --- L_inter --------------------------------------------------------------------


def test_inter_loss_is_symmetric_and_averages_both_directions():
    x, y = _randn(5, 4, seed=16), _randn(5, 4, seed=17)
    got = inter_modal_loss({"text": x, "image": y}, TAU)
    assert inter_modal_loss({"image": y, "text": x}, TAU).item() == pytest.approx(got.item(), rel=1e-6)
    logits = F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T / TAU
    target = torch.arange(5)
    x_to_y, y_to_x = F.cross_entropy(logits, target).item(), F.cross_entropy(logits.T, target).item()
    assert x_to_y != pytest.approx(y_to_x, rel=1e-3)  # so one direction alone would fail below
    assert got.item() == pytest.approx((x_to_y + y_to_x) / 2, rel=1e-5)


def test_inter_loss_of_aligned_orthonormal_views_is_the_closed_form_and_a_shift_costs():
    e = torch.eye(6)
    aligned = inter_modal_loss({"text": e, "image": e}, TAU).item()
    assert aligned == pytest.approx(_aligned_minimum(6, TAU), rel=1e-6)
    assert inter_modal_loss({"text": e, "image": e[SHIFT]}, TAU).item() > aligned + 1


def _simplex(batch, dim, seed=0):
    """``batch`` unit vectors in ``dim >= batch`` dimensions at pairwise cosine -1/(batch - 1), randomly rotated."""
    vertices = torch.eye(batch) - 1.0 / batch
    vertices = torch.cat([vertices, torch.zeros(batch, dim - batch)], dim=1)
    rotation, _ = torch.linalg.qr(_randn(dim, dim, seed=seed))
    return F.normalize(vertices @ rotation, dim=1)


def _perturbations(z, names, seed):
    """Views of ``z`` under perturbations that break either alignment across views or the simplex."""
    batch, dim = z.shape
    for k, scale in enumerate((0.05, 0.2, 1.0)):
        noise = {m: _randn(batch, dim, seed=seed + 10 * k + i) * scale for i, m in enumerate(names)}
        yield {**{m: z for m in names}, names[1]: z + noise[names[1]]}  # one view moved
        yield {m: z + noise[m] for m in names}  # every view moved independently
        yield {m: z + noise[names[0]] for m in names}  # still aligned, no longer a simplex
    g = torch.Generator().manual_seed(seed)
    for _ in range(3):
        perm = torch.randperm(batch, generator=g)
        if not torch.equal(perm, torch.arange(batch)):
            yield {**{m: z for m in names}, names[-1]: z[perm]}  # one view's rows permuted
    yield {m: torch.eye(batch, dim) for m in names}  # aligned but orthonormal


@pytest.mark.parametrize("names", [["text", "image"], ["id", "text", "image"]])
def test_inter_loss_is_minimal_when_each_items_views_coincide(names):
    """Invariant of the loss: its minimum is every item's views equal, the items spread as a regular simplex.

    (The symmetric InfoNCE is minimized by aligned views forming a simplex
    when d >= B - 1.) The value there is the closed form below, and each
    perturbation of a set, of one view, of all, or of the simplex, gives a
    higher loss; rescaling a view's rows (cosine is scale-free) does not.
    """
    batch, tau = 6, TAU
    z = _simplex(batch, 8)
    best = inter_modal_loss({m: z for m in names}, tau).item()
    closed = -1 / tau + math.log(math.exp(1 / tau) + (batch - 1) * math.exp(-1 / (tau * (batch - 1))))
    assert best == pytest.approx(closed, rel=1e-5)
    perturbed = [inter_modal_loss(v, tau).item() for v in _perturbations(z, names, seed=40)]
    assert len(perturbed) >= 10
    assert min(perturbed) > best + 1e-4
    scaled = {**{m: z for m in names}, names[0]: z * torch.linspace(0.5, 3.0, batch)[:, None]}
    assert inter_modal_loss(scaled, tau).item() == pytest.approx(best, rel=1e-5)


def test_inter_loss_with_items_counts_rows_of_the_same_item_as_positives():
    x, y = _randn(5, 4, seed=22), _randn(5, 4, seed=23)
    eye = torch.eye(5, dtype=torch.bool)
    # All items distinct: the plain loss.
    plain = inter_modal_loss({"text": x, "image": y}, TAU)
    assert inter_modal_loss({"text": x, "image": y}, TAU, items=torch.tensor([4, 0, 1, 2, 3])).item() == pytest.approx(
        plain.item(), rel=1e-6
    )
    # Rows 1 and 3 hold one item: each is a positive of the other.
    items = torch.tensor([7, 2, 5, 2, 9])
    same = items[:, None] == items[None, :]
    assert not torch.equal(same, eye)
    want = (info_nce(x, y, same, TAU) + info_nce(y, x, same, TAU)) / 2
    assert inter_modal_loss({"text": x, "image": y}, TAU, items=items).item() == pytest.approx(want.item(), rel=1e-6)
    with pytest.raises(ValueError, match="items must"):
        inter_modal_loss({"text": x, "image": y}, TAU, items=torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0]))


def test_inter_loss_averages_over_the_three_pairs_of_three_modalities():
    v = {"text": _randn(5, 4, seed=18), "image": _randn(5, 4, seed=19), "audio": _randn(5, 4, seed=20)}
    pairs = [("text", "image"), ("text", "audio"), ("image", "audio")]
    pair_losses = [inter_modal_loss({m: v[m], n: v[n]}, TAU).item() for m, n in pairs]
    assert inter_modal_loss(v, TAU).item() == pytest.approx(sum(pair_losses) / 3, rel=1e-6)


def test_inter_loss_needs_two_modalities_and_matching_shapes():
    with pytest.raises(ValueError, match="views.*at least two modalities"):
        inter_modal_loss({"text": _randn(4, 3)}, TAU)
    with pytest.raises(ValueError, match=r"views\['image'\]"):
        inter_modal_loss({"text": _randn(4, 3), "image": _randn(3, 3)}, TAU)


# --- ID representation and views ------------------------------------------------


def _tiny_generator():
    torch.manual_seed(0)
    # P = 2 tables over 6 items, D = 3 (two levels and the dedup token).
    codes = torch.tensor(
        [
            [[0, 0, 0], [0, 1, 0], [1, 0, 0], [1, 1, 0], [2, 0, 0], [2, 0, 1]],
            [[2, 1, 0], [0, 0, 0], [1, 1, 0], [0, 1, 0], [1, 0, 0], [2, 2, 1]],
        ]
    )
    return TigerGenerator(codes, history_cap=4, d_model=16, n_heads=2, n_encoder_layers=1, n_decoder_layers=1, d_ff=32)


def test_id_representation_is_the_projected_sum_of_the_generators_token_embeddings():
    gen = _tiny_generator()
    rep = IdRepresentation.from_generator(gen, d_out=8)
    assert rep.tok_emb is gen.tok_emb  # shared, not copied
    items, table = torch.tensor([[0, 5], [3, 3], [1, 4]]), torch.tensor([1, 0, 1])
    tokens = gen.item_codes(items, table) + gen.offsets  # (3, 2, D)
    assert torch.equal(rep.item_tokens(items, table), tokens)
    expected = rep.proj(gen.tok_emb.weight[tokens].sum(dim=-2))
    out = rep(items, table)
    assert out.shape == (3, 2, 8)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(
        rep(items, 1), rep.proj(gen.tok_emb.weight[gen.item_codes(items, 1) + gen.offsets].sum(-2))
    )
    with pytest.raises(ValueError, match="table"):
        rep(items, 2)
    with pytest.raises(ValueError, match="items"):
        rep(torch.tensor([6]))


def test_gradients_reach_exactly_the_token_embeddings_of_the_batch_items():
    gen = _tiny_generator()
    rep = IdRepresentation.from_generator(gen, d_out=8)
    heads = ModalityViews(["text", "image"], d_in=8, d_view=4, hidden=8)
    items, table = torch.tensor([0, 2, 3]), torch.tensor([0, 1, 0])
    e = rep(items, table)  # (3, 8)
    users = _randn(3, 8, seed=21)
    loss = user_preference_loss(users, e, TAU) + inter_modal_loss(heads(e), TAU)
    loss.backward()
    used = set((gen.item_codes(items, table) + gen.offsets).flatten().tolist())
    touched = set(torch.nonzero(gen.tok_emb.weight.grad.abs().sum(dim=1)).flatten().tolist())
    assert touched == used
    assert len(used) < gen.tok_emb.num_embeddings  # some rows must stay zero for the check to mean anything


def test_standardize_centres_and_scales_every_column():
    x = torch.cat([_randn(50, 3, seed=24) * 0.05, 10 + 30 * _randn(50, 2, seed=25).abs(), torch.full((50, 1), 7.0)], 1)
    z = standardize(x)
    assert z.dtype == torch.float32 and z.shape == x.shape
    torch.testing.assert_close(z.mean(dim=0), torch.zeros(6), atol=1e-6, rtol=0)
    torch.testing.assert_close(z[:, :5].std(dim=0, unbiased=False), torch.ones(5), atol=1e-5, rtol=0)
    assert torch.equal(z[:, 5], torch.zeros(50))  # a constant column carries nothing
    # Per column, so invariant to the order of the items.
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(standardize(x[perm]), z[perm])


def test_content_views_encode_each_modalitys_own_standardized_features():
    features = {"text": _randn(7, 12, seed=26) * 0.05, "image": 5 + _randn(7, 20, seed=27).abs() * 40}
    content = ContentViews(features, d_view=8, hidden=None)
    assert content.modalities == ["text", "image"]
    assert content.encoders["text"].in_features == 12 and content.encoders["image"].in_features == 20
    items = torch.tensor([3, 0, 3, 6])
    out = content(items)
    assert set(out) == {"text", "image"} and all(v.shape == (4, 8) for v in out.values())
    for m in features:
        torch.testing.assert_close(out[m], content.encoders[m](standardize(features[m])[items]))
    # The features are data: buffers that follow .to() but stay out of the state dict.
    assert {name for name, _ in content.named_buffers()} == {"features_text", "features_image"}
    assert not any(key.startswith("features_") for key in content.state_dict())
    mlp = ContentViews(features, d_view=8, hidden=16)
    assert isinstance(mlp.encoders["image"], torch.nn.Sequential) and mlp(items)["image"].shape == (4, 8)


@pytest.mark.parametrize(
    ("features", "match"),
    [
        ({}, "modalities must be distinct names"),
        ({"text": torch.zeros(5, 3, dtype=torch.long)}, r"features\['text'\] must be a non-empty floating"),
        ({"text": torch.zeros(5)}, r"features\['text'\] must be"),
        ({"text": torch.full((5, 3), float("nan"))}, r"features\['text'\] holds NaN"),
        ({"text": torch.zeros(5, 3), "image": torch.zeros(4, 3)}, r"features\['image'\] has 4 rows"),
    ],
)
def test_content_views_reject_bad_features_naming_them(features, match):
    with pytest.raises(ValueError, match=match):
        ContentViews(features, d_view=4)


def test_content_views_reject_items_out_of_range():
    content = ContentViews({"text": _randn(5, 3, seed=28)}, d_view=4)
    with pytest.raises(ValueError, match=r"items must be item indices in \[0, 5\)"):
        content(torch.tensor([0, 5]))


def test_modality_views_give_one_head_per_modality():
    views = ModalityViews(("text", "image"), d_in=8, d_view=5)
    out = views(_randn(3, 8))
    assert list(out) == ["text", "image"] and all(v.shape == (3, 5) for v in out.values())
    assert not torch.allclose(out["text"], out["image"])  # separate heads
    with pytest.raises(ValueError, match="modalities"):
        ModalityViews(["text", "text"], 8, 5)
    with pytest.raises(ValueError, match="d_view"):
        ModalityViews(["text"], 8, 0)


# --- weighted sum ---------------------------------------------------------------


def test_mcrl_loss_is_the_weighted_sum_with_missing_terms_zero():
    comps = {"user": torch.tensor(0.7), "intra": torch.tensor(1.3), "inter": torch.tensor(2.9)}
    assert LOSS_NAMES == ("user", "intra", "inter")
    assert mcrl_loss(comps, 0.5, 2.0, 0.25).item() == pytest.approx(0.5 * (0.7 + 2.0 * 1.3 + 0.25 * 2.9), rel=1e-6)
    assert mcrl_loss({"intra": comps["intra"]}, 0.5, 2.0, 0.25).item() == pytest.approx(0.5 * 2.0 * 1.3, rel=1e-6)
    with pytest.raises(ValueError, match="'users'"):
        mcrl_loss({"users": comps["user"]}, 1.0, 1.0, 1.0)


@pytest.mark.parametrize(
    "weights, present",
    [((0.0, 1.0, 1.0), ("user", "intra", "inter")), ((1.0, 0.0, 0.0), ("intra", "inter"))],
)
def test_mcrl_loss_with_zero_weights_is_exactly_zero_and_adds_no_gradient(weights, present):
    w = _randn(4, seed=22, requires_grad=True)
    build = {"user": lambda: (w**3).sum(), "intra": lambda: w.exp().sum(), "inter": lambda: (w * float("nan")).sum()}
    l_id = (w**2).sum()
    (grad_alone,) = torch.autograd.grad(l_id, w, retain_graph=True)
    extra = mcrl_loss({name: build[name]() for name in present}, *weights)
    assert extra.item() == 0.0  # exact, even with a NaN component weighted by 0
    (grad_with,) = torch.autograd.grad(l_id + extra, w)
    assert torch.equal(grad_with, grad_alone)


@pytest.mark.parametrize(
    "name, weights", [("lambda2", (-1.0, 1.0, 1.0)), ("a", (1.0, -0.5, 1.0)), ("b", (1.0, 1.0, -2.0))]
)
def test_mcrl_loss_rejects_negative_weights_naming_them(name, weights):
    with pytest.raises(ValueError, match=f"weight {name} must"):
        mcrl_loss({"user": torch.tensor(1.0)}, *weights)
