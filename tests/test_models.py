"""TIGER and SASRec end to end: learning, seeds, the non-finite-loss guard, resuming.

SASRec runs in both training modes: "sasrec" is the default ``train_mode``
"sequence" (causal windows), "sasrec-prefix" the per-prefix mode.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch

from pmsid.data import contracts
from pmsid.data.sequences import Sequences
from pmsid.models.sasrec import SASRec
from pmsid.train import loop
from pmsid.train import recipes as api
from pmsid.train.utils import NonFiniteLossError

from conftest import evaluate_sasrec, evaluate_tiger

torch.set_num_threads(1)

N_ITEMS = 12
KS = [1, 5, 10]
TINY = {"d_model": 32, "n_heads": 2, "d_ff": 64, "batch_size": 32, "warmup_steps": 10, "lr": 3e-3}
TINY.update({"progress": False, "ks": KS, "history_cap": 6})
TIGER_CFG = {**TINY, "n_encoder_layers": 1, "n_decoder_layers": 1, "dropout": 0.1, "beam_size": 12}
SASREC_CFG = {**TINY, "n_layers": 1, "dropout": 0.1}
KINDS = ["tiger", "sasrec", "sasrec-prefix"]


def cyclic_sequences(n_users=30):
    """User u walks the catalogue in a cycle from item u: the next item is always (last + 1) mod N."""
    items = [np.array([(u + t) % N_ITEMS for t in range(8 + u % 4)]) for u in range(n_users)]
    return Sequences(items, N_ITEMS)


def grid_codes():
    """3-token IDs (2 levels + dedup) for the 12 items."""
    return np.array([[i // 4, i % 4, 0] for i in range(N_ITEMS)])


def train(kind, tmp_path, seed=0, tag="run", **overrides):
    """Train and evaluate one model; returns (train log, per-user ranks, metrics) and the paths."""
    seqs = cyclic_sequences()
    paths = {name: tmp_path / f"{tag}_{name}" for name in ("model.pt", "log.parquet", "ckpt.pt")}
    if kind == "tiger":
        cfg = {**TIGER_CFG, **overrides}
        log = api.train_tiger(seqs, grid_codes(), cfg, *paths.values(), seed, device="cpu")
        per_user, metrics = evaluate_tiger(paths["model.pt"], seqs, grid_codes(), KS, 12, False, "cpu")
    else:
        mode = {"train_mode": "prefix"} if kind == "sasrec-prefix" else {}
        cfg = {**SASREC_CFG, **mode, **overrides}
        log = api.train_sasrec(seqs, cfg, *paths.values(), seed, device="cpu")
        per_user, metrics = evaluate_sasrec(paths["model.pt"], seqs, KS, False, "cpu")
    return log, per_user, metrics, paths


def metric(metrics, split, name):
    return float(metrics.set_index(["split", "metric"]).loc[(split, name), "value"])


def timing_free(metrics):
    """Metrics without the wall-clock rows, which differ between any two runs."""
    return metrics[metrics["metric"] != "beam_seconds_per_user"].reset_index(drop=True)


@pytest.mark.parametrize("kind", KINDS)
def test_model_learns_the_cycle_and_writes_valid_outputs(kind, tmp_path):
    log, per_user, metrics, paths = train(kind, tmp_path, max_epochs=12, patience=12)
    # Random ranking gives Recall@1 = 1/12; the rule "next = last + 1" gives 1.
    assert metric(metrics, "test", "Recall@1") >= 0.8
    assert metric(metrics, "valid", "NDCG@10") >= 0.8
    assert log["loss"].iloc[-1] < log["loss"].iloc[0]
    # Outputs honour their contracts (write_table checks and raises otherwise).
    contracts.write_table(per_user, paths["log.parquet"].with_name("per_user.parquet"), contracts.PER_USER)
    contracts.write_table(metrics, paths["log.parquet"].with_name("metrics.parquet"), contracts.METRICS)
    contracts.read_table(paths["log.parquet"], contracts.TRAIN_LOG)
    assert len(per_user) == 2 * 30 and metric(metrics, "test", "n_users") == 30
    if kind == "tiger":
        assert metric(metrics, "test", "invalid_id_rate") == 0.0
        assert metric(metrics, "test", "beam_seconds_per_user") > 0
    # The saved model is the best validation epoch.
    saved = torch.load(paths["model.pt"], weights_only=True)
    assert saved["best_valid_ndcg10"] == pytest.approx(log["valid_ndcg10"].max())


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_metrics_other_seed_different(kind, tmp_path):
    run = dict(max_epochs=2, patience=2)
    log_a, users_a, metrics_a, _ = train(kind, tmp_path, seed=0, tag="a", **run)
    log_b, users_b, metrics_b, _ = train(kind, tmp_path, seed=0, tag="b", **run)
    log_c, _, metrics_c, _ = train(kind, tmp_path, seed=1, tag="c", **run)
    pd.testing.assert_frame_equal(log_a, log_b)
    pd.testing.assert_frame_equal(users_a, users_b)
    pd.testing.assert_frame_equal(timing_free(metrics_a), timing_free(metrics_b))
    assert not np.allclose(log_a["loss"], log_c["loss"])
    assert not timing_free(metrics_a).equals(timing_free(metrics_c))


@pytest.mark.parametrize("kind", KINDS)
def test_non_finite_loss_stops_naming_the_step_and_leaves_no_model(kind, tmp_path):
    model_path = tmp_path / "bad_model.pt"
    model_path.write_text("a stale model from an earlier run")
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss .* at step \d+"):
        train(kind, tmp_path, tag="bad", lr=1e30, max_epochs=2)
    assert not model_path.exists()
    assert not (tmp_path / "bad_log.parquet").exists()


class Killed(Exception):
    """Stands in for SIGKILL right after a checkpoint hits the disk."""


@pytest.mark.parametrize("kind", KINDS)
def test_interrupted_then_resumed_run_equals_an_uninterrupted_one(kind, tmp_path, monkeypatch, caplog):
    run = dict(max_epochs=4, patience=4, deterministic=True)
    log_full, users_full, metrics_full, _ = train(kind, tmp_path, tag="full", **run)

    real_save = loop.atomic_save

    def save_then_die(obj, path):
        real_save(obj, path)
        if obj["state"]["epoch"] == 2:
            raise Killed

    monkeypatch.setattr(loop, "atomic_save", save_then_die)
    with pytest.raises(Killed):
        train(kind, tmp_path, tag="cut", **run)
    assert not (tmp_path / "cut_model.pt").exists()
    monkeypatch.setattr(loop, "atomic_save", real_save)

    with caplog.at_level(logging.INFO, logger="pmsid"):
        log_cut, users_cut, metrics_cut, _ = train(kind, tmp_path, tag="cut", **run)
    assert "resuming from epoch 2" in caplog.text
    pd.testing.assert_frame_equal(log_full, log_cut)
    pd.testing.assert_frame_equal(users_full, users_cut)
    pd.testing.assert_frame_equal(timing_free(metrics_full), timing_free(metrics_cut))


def test_checkpoint_of_another_config_is_not_resumed(tmp_path, caplog):
    train("sasrec", tmp_path, tag="x", max_epochs=1)
    with caplog.at_level(logging.INFO, logger="pmsid"):
        log, _, _, _ = train("sasrec", tmp_path, tag="x", max_epochs=2, patience=2)
    assert "another configuration" in caplog.text
    assert "resuming" not in caplog.text
    assert log["epoch"].tolist() == [1, 2]


def test_unknown_cfg_key_fails_naming_it(tmp_path):
    with pytest.raises(ValueError, match="n_layer"):
        train("sasrec", tmp_path, n_layer=3)


def test_unknown_train_mode_fails_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match="train_mode"):
        train("sasrec", tmp_path, train_mode="windows")


def test_default_train_mode_is_sequence():
    assert api.SASREC_DEFAULTS["train_mode"] == "sequence"


def tiny_sasrec(seed=0, n_items=N_ITEMS, cap=6):
    torch.manual_seed(seed)
    model = SASRec(n_items, history_cap=cap, d_model=16, n_heads=2, n_layers=2, d_ff=32, dropout=0.0)
    return model.eval()


@torch.no_grad()
def test_causal_mask_position_sees_only_earlier_inputs():
    model = tiny_sasrec()
    gen = torch.Generator().manual_seed(0)
    inputs = torch.randint(0, N_ITEMS, (4, 6), generator=gen)
    inputs[1, :2] = -1  # left padding, as in a user's first window
    base = model.states(inputs)
    for k in range(6):
        changed = inputs.clone()
        changed[:, k] = (changed[:, k].clamp(min=0) + 5) % N_ITEMS  # another real item at position k
        out = model.states(changed)
        # Positions before k cannot see input k...
        torch.testing.assert_close(out[:, :k], base[:, :k], rtol=0, atol=1e-6)
        # ...and position k does (so the check above is not vacuous).
        assert (out[:, k] - base[:, k]).abs().amax(dim=1).min() > 1e-4


@torch.no_grad()
def test_sequence_loss_at_the_last_position_equals_the_prefix_loss():
    """A window whose only target is its last position is one per-prefix sample."""
    model = tiny_sasrec()
    gen = torch.Generator().manual_seed(1)
    inputs = torch.randint(0, N_ITEMS, (5, 6), generator=gen)
    inputs[0, :3] = -1
    last = torch.randint(0, N_ITEMS, (5,), generator=gen)
    targets = torch.full_like(inputs, -1)
    targets[:, -1] = last
    torch.testing.assert_close(model.sequence_loss(inputs, targets), model.loss(inputs, last))


@torch.no_grad()
def test_sequence_loss_is_the_mean_over_target_positions():
    model = tiny_sasrec()
    gen = torch.Generator().manual_seed(2)
    inputs = torch.randint(0, N_ITEMS, (3, 6), generator=gen)
    targets = torch.randint(0, N_ITEMS, (3, 6), generator=gen)
    inputs[2, :4], targets[2, :4] = -1, -1  # a padded window: 2 targets of 14
    states = model.states(inputs)
    per_position = []
    for n, j in zip(*torch.nonzero(targets >= 0, as_tuple=True)):
        logits = states[n, j] @ model.item_emb.weight[:N_ITEMS].T
        per_position.append(torch.nn.functional.cross_entropy(logits[None], targets[n, j][None]))
    assert len(per_position) == 14
    torch.testing.assert_close(model.sequence_loss(inputs, targets), torch.stack(per_position).mean())
