"""The shared training loop: the per-epoch sample cap (max_samples_per_epoch), resuming mid-epoch."""

from __future__ import annotations

import signal

import pytest
import torch
from torch import nn

from pmsid.train.loop import LoopConfig, train_loop
from pmsid.train.preemption import Preempted, StopSignals


def _run(tmp_path, cap, epochs=3, n=100, batch=8):
    """Train a linear model; record the rows every step sees."""
    torch.manual_seed(0)
    model = nn.Linear(1, 1)
    seen = []

    def loss_fn(m, batch_rows):
        (x,) = batch_rows
        seen.append(x[:, 0].long().tolist())
        return (m(x) ** 2).mean()

    data = (torch.arange(n, dtype=torch.float32)[:, None],)
    cfg = LoopConfig(batch_size=batch, max_epochs=epochs, patience=epochs, warmup_steps=0, progress=False,
                     max_samples_per_epoch=cap)  # fmt: skip
    result = train_loop(model, loss_fn, data, lambda m: 0.0, cfg, tmp_path / f"c{cap}.pt", "h", seed=1, name="t")
    return seen, result


def test_each_epoch_draws_its_own_capped_subset(tmp_path):
    seen, result = _run(tmp_path, cap=20)
    steps = 3  # ceil(20 / 8) per epoch
    assert list(result.log["step"]) == [steps, 2 * steps, 3 * steps]
    epochs = [sum(seen[e * steps : (e + 1) * steps], []) for e in range(3)]
    assert all(len(rows) == 20 and len(set(rows)) == 20 for rows in epochs)  # without replacement
    assert len({tuple(sorted(rows)) for rows in epochs}) == 3  # a new draw each epoch


def test_no_cap_or_a_cap_above_the_rows_is_every_row(tmp_path):
    for cap in (None, 1000):
        seen, result = _run(tmp_path, cap=cap, epochs=1)
        assert sorted(sum(seen, [])) == list(range(100)), cap
        assert result.log["step"].iloc[-1] == 13


def test_the_cap_is_checked():
    with pytest.raises(ValueError, match="max_samples_per_epoch must be null or >= 1"):
        LoopConfig.from_cfg({"max_samples_per_epoch": 0})


def test_a_run_stopped_mid_epoch_trains_on_the_rows_it_had_not_seen_when_resumed(tmp_path):
    """SIGTERM at step 5 of 13 per epoch: the checkpoint holds the position, and the
    resumed run sees exactly the rows the uninterrupted run sees from step 6 on."""
    whole, whole_result = _run(tmp_path / "whole", cap=None, epochs=2)
    seen = []

    def loss_fn(m, batch_rows):
        (x,) = batch_rows
        seen.append(x[:, 0].long().tolist())
        if len(seen) == 5:
            assert isinstance(getattr(signal.getsignal(signal.SIGTERM), "__self__", None), StopSignals)
            signal.raise_signal(signal.SIGTERM)
        return (m(x) ** 2).mean()

    def run():
        torch.manual_seed(0)
        model = nn.Linear(1, 1)
        data = (torch.arange(100, dtype=torch.float32)[:, None],)
        cfg = LoopConfig(batch_size=8, max_epochs=2, patience=2, warmup_steps=0, progress=False)
        return train_loop(model, loss_fn, data, lambda m: 0.0, cfg, tmp_path / "stopped.pt", "h", seed=1, name="t")

    with pytest.raises(Preempted):
        run()
    state = torch.load(tmp_path / "stopped.pt", weights_only=False)["state"]
    assert state["step"] == 5 and state["epoch"] == 0
    assert (state["in_epoch"]["epoch"], state["in_epoch"]["batches"], state["in_epoch"]["count"]) == (1, 5, 40)
    result = run()
    assert seen == whole  # steps 1-5 before the stop, 6-26 after it
    assert result.log.equals(whole_result.log)
