"""TIGER and SASRec end to end: learning, seeds, the non-finite-loss guard, resuming."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch

from pmsid.data import contracts
from pmsid.data.sequences import Sequences
from pmsid.models import api
from pmsid.train import loop
from pmsid.train.utils import NonFiniteLossError

torch.set_num_threads(1)

N_ITEMS = 12
KS = [1, 5, 10]
TINY = {"d_model": 32, "n_heads": 2, "d_ff": 64, "batch_size": 32, "warmup_steps": 10, "lr": 3e-3}
TINY.update({"progress": False, "ks": KS, "history_cap": 6})
TIGER_CFG = {**TINY, "n_encoder_layers": 1, "n_decoder_layers": 1, "dropout": 0.1, "beam_size": 12}
SASREC_CFG = {**TINY, "n_layers": 1, "dropout": 0.1}


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
        per_user, metrics = api.evaluate_tiger(paths["model.pt"], seqs, grid_codes(), KS, 12, False, "cpu")
    else:
        cfg = {**SASREC_CFG, **overrides}
        log = api.train_sasrec(seqs, cfg, *paths.values(), seed, device="cpu")
        per_user, metrics = api.evaluate_sasrec(paths["model.pt"], seqs, KS, False, "cpu")
    return log, per_user, metrics, paths


def metric(metrics, split, name):
    return float(metrics.set_index(["split", "metric"]).loc[(split, name), "value"])


def timing_free(metrics):
    """Metrics without the wall-clock rows, which differ between any two runs."""
    return metrics[metrics["metric"] != "beam_seconds_per_user"].reset_index(drop=True)


@pytest.mark.parametrize("kind", ["tiger", "sasrec"])
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


@pytest.mark.parametrize("kind", ["tiger", "sasrec"])
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


@pytest.mark.parametrize("kind", ["tiger", "sasrec"])
def test_non_finite_loss_stops_naming_the_step_and_leaves_no_model(kind, tmp_path):
    model_path = tmp_path / "bad_model.pt"
    model_path.write_text("a stale model from an earlier run")
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss .* at step \d+"):
        train(kind, tmp_path, tag="bad", lr=1e30, max_epochs=2)
    assert not model_path.exists()
    assert not (tmp_path / "bad_log.parquet").exists()


class Killed(Exception):
    """Stands in for SIGKILL right after a checkpoint hits the disk."""


@pytest.mark.parametrize("kind", ["tiger", "sasrec"])
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
