"""PMAT Module 2: drift score, gate, update rule (theorem 2), consistency loss (theorem 3), replay."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import entropy

from pmsid.data.sequences import Sequences
from pmsid.methods.pmat.drift import (
    DriftGate,
    check_window,
    consistency_loss,
    drift_score,
    fused_features,
    interest_distribution,
    kl_divergence,
    replay_updates,
    theorem2_holds,
    update,
)

# --- interest distributions and KL --------------------------------------------


def test_interest_distribution_is_smoothed_frequencies():
    p = interest_distribution(np.array([0, 0, 1, 1]), n_codes=4, smoothing=0.1)
    np.testing.assert_allclose(p, (np.array([0.5, 0.5, 0.0, 0.0]) + 0.1 / 4) / 1.1)
    assert p.sum() == pytest.approx(1.0)


def test_interest_distribution_rejects_codes_outside_the_codebook():
    with pytest.raises(ValueError, match="n_codes"):
        interest_distribution(np.array([0, 5]), n_codes=4)


def test_kl_is_non_negative_zero_for_identical_and_matches_scipy():
    rng = np.random.default_rng(0)
    for _ in range(200):
        p, q = rng.dirichlet(np.ones(6)), rng.dirichlet(np.ones(6))
        kl = kl_divergence(p, q)
        assert kl >= 0
        assert kl == pytest.approx(entropy(p, q), rel=1e-9)
        assert kl_divergence(p, p) == 0.0


def test_kl_refuses_an_unsmoothed_zero_in_q():
    with pytest.raises(ValueError, match="smooth"):
        kl_divergence(np.array([0.5, 0.5]), np.array([1.0, 0.0]))


def test_drift_is_zero_for_a_stable_user_whatever_the_history_length():
    # Smoothing on frequencies: codes neither window nor history uses add nothing.
    for n in (5, 20, 200):
        assert drift_score(np.zeros(n, np.int64), window=5, n_codes=256) == 0.0


def test_drift_grows_when_the_recent_window_moves_to_new_codes():
    stable = np.array([0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1])
    moved = np.array([0, 1, 0, 1, 0, 1, 0, 1, 0, 3, 3, 3])
    d_stable = drift_score(stable, window=3, n_codes=4)
    d_moved = drift_score(moved, window=3, n_codes=4)
    assert d_stable < 0.1
    assert d_moved > 1.0  # about log(12 / 3): the window's code holds a quarter of the history
    assert d_moved > d_stable


def test_history_no_longer_than_the_window_has_no_drift():
    assert drift_score(np.array([3, 1, 2]), window=3, n_codes=4) == 0.0


# --- gate ---------------------------------------------------------------------


GATE = DriftGate(theta=0.3, lambda_max=0.6, sharpness=4.0)


def test_gate_is_monotone_on_a_grid_and_on_random_drifts():
    grid = np.linspace(0.0, 10.0, 10_001)
    assert (np.diff(GATE(grid)) >= 0).all()
    rng = np.random.default_rng(1)
    for _ in range(200):
        a, b = np.sort(rng.exponential(1.0, size=2))
        assert GATE(a) <= GATE(b)


def test_gate_never_fires_at_or_below_theta():
    below = np.concatenate([np.linspace(0.0, GATE.theta, 1001), [GATE.theta]])
    assert (GATE(below) == 0.0).all()
    assert not GATE.fires(below).any()
    assert GATE(GATE.theta) == 0.0


def test_gate_is_capped_and_continuous_at_theta():
    assert GATE(1e6) <= GATE.lambda_max and GATE(math.inf) == GATE.lambda_max
    rng = np.random.default_rng(2)
    assert (GATE(rng.exponential(5.0, size=10_000)) <= GATE.lambda_max).all()
    just_above = GATE(GATE.theta + 1e-9)
    assert 0.0 < just_above < 1e-7  # fires, but barely: no jump at theta
    assert GATE(GATE.theta + 1.0 / GATE.sharpness) == pytest.approx(GATE.lambda_max * (1 - math.exp(-1)))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"theta": -0.1, "lambda_max": 0.5}, "theta"),
        ({"theta": 0.1, "lambda_max": 0.0}, "lambda_max"),
        ({"theta": 0.1, "lambda_max": 1.5}, "lambda_max"),
        ({"theta": 0.1, "lambda_max": 0.5, "sharpness": 0.0}, "sharpness"),
    ],
)
def test_gate_rejects_bad_parameters_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DriftGate(**kwargs)


# --- update rule and theorem 2 ------------------------------------------------


def test_update_equals_the_formula_for_vectors_and_batches():
    rng = np.random.default_rng(3)
    h_t, h_new = rng.standard_normal(8), rng.standard_normal(8)
    np.testing.assert_allclose(update(h_t, h_new, 0.25), 0.75 * h_t + 0.25 * h_new)
    H_t, H_new, lam = rng.standard_normal((5, 8)), rng.standard_normal((5, 8)), rng.uniform(size=5)
    np.testing.assert_allclose(update(H_t, H_new, lam), (1 - lam)[:, None] * H_t + lam[:, None] * H_new)
    with pytest.raises(ValueError, match="lam"):
        update(h_t, h_new, 1.5)


def test_theorem2_bound_holds_on_random_inputs():
    rng = np.random.default_rng(4)
    violations = 0
    for _ in range(1000):
        gate = DriftGate(theta=rng.uniform(0, 1), lambda_max=rng.uniform(0.01, 1), sharpness=rng.uniform(0.1, 20))
        h_t, h_new = rng.standard_normal(16) * rng.uniform(0.1, 10), rng.standard_normal(16)
        lam = gate(rng.exponential(1.0))
        violations += not theorem2_holds(h_t, h_new, update(h_t, h_new, lam), gate.lambda_max)
    assert violations == 0


def test_theorem2_check_catches_an_overshooting_update():
    h_t, h_new = np.zeros(4), np.ones(4)
    assert not theorem2_holds(h_t, h_new, update(h_t, h_new, 0.9), lambda_max=0.6)


def test_updating_the_weights_updates_every_fused_feature_by_the_rule():
    rng = np.random.default_rng(5)
    features = [rng.standard_normal((30, 6)) for _ in range(3)]
    a_t, a_new = rng.dirichlet(np.ones(3)), rng.dirichlet(np.ones(3))
    via_weights = fused_features(features, update(a_t, a_new, 0.4))
    via_features = update(fused_features(features, a_t), fused_features(features, a_new), 0.4)
    np.testing.assert_allclose(via_weights, via_features, atol=1e-12)


# --- consistency loss (theorem 3) ---------------------------------------------


def _loss_inputs(seed=0, batch=4, dim=8, n_neg=5):
    g = torch.Generator().manual_seed(seed)
    h_next = torch.randn(batch, dim, generator=g, requires_grad=True)
    h_t = torch.randn(batch, dim, generator=g)
    interest = torch.randn(batch, dim, generator=g)
    negatives = torch.randn(n_neg, dim, generator=g)
    return h_next, h_t, interest, negatives


def _info_nce_by_hand(h_next, interest, negatives, tau):
    z, pos, neg = (F.normalize(x, dim=-1) for x in (h_next, interest, negatives))
    s_pos = (z * pos).sum(-1) / tau
    s_neg = z @ neg.T / tau
    return (-(s_pos - torch.logsumexp(torch.cat([s_pos[:, None], s_neg], 1), dim=1))).mean()


def test_consistency_loss_at_lam_one_is_the_squared_distance():
    h_next, h_t, interest, negatives = _loss_inputs()
    loss = consistency_loss(h_next, h_t, interest, lam=1.0, temperature=0.2, negatives=negatives)
    assert loss.item() == pytest.approx(((h_next - h_t) ** 2).sum(-1).mean().item(), rel=1e-6)


def test_consistency_loss_at_lam_zero_is_the_info_nce():
    h_next, h_t, interest, negatives = _loss_inputs()
    loss = consistency_loss(h_next, h_t, interest, lam=0.0, temperature=0.2, negatives=negatives)
    assert loss.item() == pytest.approx(_info_nce_by_hand(h_next, interest, negatives, 0.2).item(), rel=1e-6)


def test_consistency_loss_mixes_the_terms_and_supports_in_batch_negatives():
    h_next, h_t, interest, negatives = _loss_inputs()
    sq = ((h_next - h_t) ** 2).sum(-1).mean()
    nce = _info_nce_by_hand(h_next, interest, negatives, 0.5)
    loss = consistency_loss(h_next, h_t, interest, lam=0.3, temperature=0.5, negatives=negatives)
    assert loss.item() == pytest.approx((0.3 * sq + 0.7 * nce).item(), rel=1e-6)
    # In-batch: row b's negatives are the other rows' interests.
    z, pos = F.normalize(h_next, dim=-1), F.normalize(interest, dim=-1)
    expected = F.cross_entropy(z @ pos.T / 0.5, torch.arange(4))
    assert consistency_loss(h_next, h_t, interest, lam=0.0, temperature=0.5).item() == pytest.approx(expected.item())


def test_consistency_loss_gradient_flows_to_h_next_only():
    h_next, h_t, interest, negatives = _loss_inputs()
    h_t.requires_grad_(True)
    consistency_loss(h_next, h_t, interest, lam=0.5, negatives=negatives).backward()
    assert h_next.grad is not None and h_next.grad.abs().sum() > 0
    assert h_t.grad is None  # the previous state is an anchor, not a parameter


# --- replay on a built case ---------------------------------------------------
#
# 12 items; level-0 code of item i is i // 4 (codes 0, 1, 2). Two prototypes
# (modality weights [0.9, 0.1] and [0.1, 0.9]) whose tables agree on every
# item except 8..11 (same coarse code, other dedup token): churn 4 / 12.
# weights_fn answers "modality 1" for windows of items 8..11 and something
# close to prototype 0 otherwise.

W, CAP = 3, 20
PROTO_WEIGHTS = np.array([[0.9, 0.1], [0.1, 0.9]])


def _built_case():
    items = np.arange(12)
    table0 = np.stack([items // 4, items % 4, np.zeros(12, np.int64)], axis=1)
    table1 = table0.copy()
    table1[8:, 1] = (table1[8:, 1] + 1) % 4
    tables = np.stack([table0, table1])
    seqs = Sequences(
        items=[
            np.array([0, 1, 2, 3, 0, 1, 2, 3]),  # stable: code 0 throughout
            np.array([0, 1, 2, 3, 0, 1, 2, 3, 8, 9, 10, 11, 8]),  # last W before valid jump to code 2
            np.array([0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7, 4]),  # jumps to code 1, weights stay near prototype 0
        ],
        n_items=12,
    )
    rng = np.random.default_rng(6)
    features = [rng.standard_normal((12, 4)) for _ in range(2)]
    features = [f / np.linalg.norm(f, axis=1, keepdims=True) for f in features]

    def weights_fn(window_items):
        return np.array([0.0, 1.0]) if (np.asarray(window_items) >= 8).any() else np.array([0.8, 0.2])

    return (
        dict(
            tables=tables,
            prototype_weights=PROTO_WEIGHTS,
            assignment=np.zeros(3, np.int64),
            alphas=np.tile([0.9, 0.1], (3, 1)),
            weights_fn=weights_fn,
            features=features,
        ),
        seqs,
    )


def _replay(**overrides):
    kwargs, seqs = _built_case()
    kwargs.update(window=W, history_cap=CAP, gate=DriftGate(theta=0.5, lambda_max=1.0, sharpness=50.0))
    kwargs.update(overrides)
    return replay_updates(seqs, **kwargs)


def test_replay_visits_valid_then_test_before_each_is_revealed():
    events = _replay().events
    assert list(zip(events["user"], events["position"], events["n_history"])) == [
        (0, 6, 6), (0, 7, 7), (1, 11, 11), (1, 12, 12), (2, 11, 11), (2, 12, 12),
    ]  # fmt: skip


def test_replay_stable_user_never_fires():
    events = _replay().events
    stable = events[events["user"] == 0]
    assert (stable["drift"] == 0).all() and not stable["fired"].any() and (stable["lam"] == 0).all()
    assert (stable["churn"] == 0).all() and (stable["alpha_step"] == 0).all()


def test_replay_jumping_user_fires_and_switches_prototype_with_hand_computed_churn():
    result = _replay()
    first = result.events[result.events["user"] == 1].iloc[0]
    codes = np.array([0, 1, 2, 3, 0, 1, 2, 3, 8, 9, 10]) // 4
    assert first["drift"] == pytest.approx(drift_score(codes, W, n_codes=3))
    assert first["fired"] and first["lam"] > 0.99
    assert (first["old_prototype"], first["new_prototype"]) == (0, 1)
    assert first["churn"] == pytest.approx(4 / 12)  # items 8..11 change their dedup token
    assert first["future_churn"] == 1.0  # the valid (11) and test (8) items both changed
    second = result.events[result.events["user"] == 1].iloc[1]
    assert second["fired"] and second["old_prototype"] == second["new_prototype"] == 1 and second["churn"] == 0
    assert result.assignment[1] == 1
    np.testing.assert_allclose(result.alphas[1], [0.0, 1.0], atol=1e-6)


def test_replay_churn_is_zero_when_the_prototype_stays():
    events = _replay().events
    user2 = events[events["user"] == 2]
    assert user2["fired"].all()
    assert (user2["new_prototype"] == 0).all() and (user2["churn"] == 0).all() and (user2["future_churn"] == 0).all()
    assert (user2["alpha_step"] > 0).any()  # the weights moved, the IDs did not


def test_replay_summary_and_theorem2_check():
    result = _replay(gate=DriftGate(theta=0.5, lambda_max=0.7, sharpness=2.0))
    s = result.summary
    assert (s["n_events"], s["n_fired"]) == (6, 4)
    assert s["fire_rate"] == pytest.approx(4 / 6)
    assert s["n_bound_violations"] == 0 and not result.events["bound_violation"].any()
    fired = result.events[result.events["fired"]]
    # ||h_{t+1} - h_t|| = lambda ||h_new - h_t|| on every checked item, so the worst ratio is lambda itself.
    np.testing.assert_allclose(fired["bound_ratio_max"], fired["lam"], rtol=1e-9)
    assert s["mean_lambda_fired"] == pytest.approx(fired["lam"].mean())
    assert result.event_alphas.shape == (6, 2)
    np.testing.assert_allclose(result.event_alphas[[1, 3, 5]], result.alphas)


def test_replay_leaves_the_inputs_untouched():
    kwargs, seqs = _built_case()
    alphas, assignment = kwargs["alphas"].copy(), kwargs["assignment"].copy()
    replay_updates(seqs, **kwargs, window=W, history_cap=CAP, gate=DriftGate(theta=0.5, lambda_max=1.0))
    np.testing.assert_array_equal(kwargs["alphas"], alphas)
    np.testing.assert_array_equal(kwargs["assignment"], assignment)


def test_window_larger_than_the_history_cap_fails_naming_the_key():
    with pytest.raises(ValueError, match=r"pmat\.window.*history_cap"):
        check_window(25, 20)
    with pytest.raises(ValueError, match=r"pmat\.window \(W=21\)"):
        _replay(window=21)


def test_replay_rejects_weights_off_the_simplex():
    with pytest.raises(ValueError, match="weights_fn"):
        _replay(weights_fn=lambda items: np.array([2.0, 1.0]))
