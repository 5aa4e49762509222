"""SASRec: causal self-attention over item embeddings (Kang & McAuley, ICDM 2018).

The ID-based baseline of docs/METHOD.md section 7, in its strong setting: trained
with cross-entropy over the whole catalogue (not the paper's one sampled
negative), which is what makes it "often beat TIGER". A history of item
embeddings plus positional embeddings goes through pre-LayerNorm causal
Transformer blocks; the state at the last (most recent) position scores every
item by a dot product with the item embedding table:

    score(u, i) = h_u . e_i,    L = CE(softmax_i score(u, i), target)

Histories are left-padded (``PAD = -1``, most recent item last, see
``pmsid.data.sequences``), so the last position is always a real item.

Two training losses, one ranking rule:

- :meth:`SASRec.sequence_loss` (the paper's recipe): causal windows from
  ``pmsid.data.sequences.training_windows``; the state at every position ``j``
  predicts the item after input ``j``, and the cross-entropy is averaged over
  all real (non-PAD) target positions of the batch. One forward pass trains
  ``cap`` targets per window.
- :meth:`SASRec.loss`: one left-padded history per target, scored at the last
  position only (``training_samples``); ``cap`` times the attention work for
  the same targets.

Either way the causal mask guarantees position ``j`` depends only on inputs
``0 .. j``, and ranking (:meth:`SASRec.scores`) reads the last position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SASRec(nn.Module):
    """Self-attentive sequential recommender over ``n_items`` items."""

    def __init__(
        self,
        n_items: int,
        history_cap: int,
        d_model: int = 64,
        n_heads: int = 2,
        n_layers: int = 2,
        d_ff: int = 256,
        dropout: float = 0.2,
    ):
        super().__init__()
        self.n_items = n_items
        self.n_heads = n_heads
        self.d_model = d_model
        # Row n_items is the padding embedding (kept at zero, never scored).
        self.item_emb = nn.Embedding(n_items + 1, d_model, padding_idx=n_items)
        self.pos_emb = nn.Embedding(history_cap, d_model)
        self.drop = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, d_ff, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, n_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False)
        self.apply(_init_weights)

    def _attention_mask(self, pad: torch.Tensor) -> torch.Tensor:
        """Per-sample mask ``(N * heads, L, L)``, True = blocked: causal, and no attention to padding.

        A padding position may still attend to itself, so no row of the
        softmax is empty (an all-blocked row gives NaN). Real positions never
        see padding, so whatever the padding rows compute cannot leak.
        """
        n, length = pad.shape
        causal = torch.ones(length, length, dtype=torch.bool, device=pad.device).triu(1)  # (L, L)
        eye = torch.eye(length, dtype=torch.bool, device=pad.device)
        blocked = causal | (pad[:, None, :] & ~eye)  # (N, L, L)
        return blocked.repeat_interleave(self.n_heads, dim=0)

    def states(self, history: torch.Tensor) -> torch.Tensor:
        """States ``(N, L, d)`` at every position of left-padded histories ``(N, L)``.

        The state at position ``j`` depends only on ``history[:, :j + 1]``
        (causal mask), so it is the user state after the ``j``-th input.
        """
        pad = history < 0
        items = torch.where(pad, self.n_items, history)
        length = history.shape[1]
        pos = torch.arange(length, device=history.device)
        # sqrt(d) scaling as in the SASRec paper: item embeddings dominate positions early on.
        x = self.item_emb(items) * self.d_model**0.5 + self.pos_emb(pos)  # (N, L, d)
        x = self.drop(x)
        return self.blocks(x, mask=self._attention_mask(pad))  # (N, L, d)

    def hidden(self, history: torch.Tensor) -> torch.Tensor:
        """User states ``(N, d)`` from left-padded histories ``(N, L)``: the output at the last position."""
        return self.states(history)[:, -1]

    def scores(self, history: torch.Tensor) -> torch.Tensor:
        """Scores ``(N, n_items)`` of every item for each history (higher is better)."""
        return self.hidden(history) @ self.item_emb.weight[: self.n_items].T

    def loss(self, history: torch.Tensor, target_items: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over the whole catalogue for targets ``(N,)`` (last position only)."""
        return F.cross_entropy(self.scores(history).float(), target_items)

    def sequence_loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over the whole catalogue at every real target position.

        ``inputs, targets (N, L)`` are causal windows (``targets[:, j]`` follows
        ``inputs[:, j]``; ``PAD = -1`` marks positions without a target). The
        mean is over the batch's target positions, not its windows, so within a
        batch a target in a short (padded) window weighs as much as any other.
        """
        real = targets >= 0  # (N, L)
        # Score only the positions that have a target: padding would cost a
        # full catalogue of logits each and contribute nothing.
        h = self.states(inputs)[real]  # (M, d)
        logits = h @ self.item_emb.weight[: self.n_items].T  # (M, n_items)
        return F.cross_entropy(logits.float(), targets[real])


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()


def sasrec_defaults() -> dict:
    """Every key of a SASRec cfg with its default (the schema's ``sasrec``
    plus the run keys; see ``pmsid.defaults``)."""
    from pmsid.defaults import run_defaults, section_defaults

    return {**run_defaults(), **section_defaults("sasrec")}


def build_sasrec(n_items: int, cfg: dict) -> SASRec:
    """A SASRec over ``n_items`` items with the architecture of ``cfg``."""
    return SASRec(
        n_items,
        history_cap=cfg["history_cap"],
        d_model=cfg["d_model"],
        n_heads=cfg["n_heads"],
        n_layers=cfg["n_layers"],
        d_ff=cfg["d_ff"],
        dropout=cfg["dropout"],
    )
