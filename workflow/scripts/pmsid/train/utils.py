"""The non-finite-loss guard every training loop runs.

Seeds, devices and atomic saves live in :mod:`pmsid.runtime`, the layer below.
"""

from __future__ import annotations

import torch


class NonFiniteLossError(RuntimeError):
    """Raised when a training loss becomes NaN or inf."""


def check_loss(loss: torch.Tensor, step: int, model_name: str) -> None:
    """Stop training at once when ``loss`` is not finite, naming the step."""
    if not torch.isfinite(loss).all():
        raise NonFiniteLossError(
            f"{model_name}: non-finite loss ({loss.item()}) at step {step}; training stopped. "
            "Lower the learning rate or check the input features for NaN/inf."
        )
