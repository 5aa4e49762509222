"""The shared training loop's per-epoch sample cap (max_samples_per_epoch)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pmsid.train.loop import LoopConfig, train_loop


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
