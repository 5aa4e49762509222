"""HDNAG: two-level non-autoregressive generation over hierarchical IDs (docs/METHOD.md section 6).

Every item has a hierarchical ID ``(g, f, e)`` (``pmsid.quantize.hierarchical``):
coarse cluster ``g`` of ``C``, fine cluster ``f`` of ``F`` nested in it
(``parent[f] = g``), dedup token ``e`` of ``E``.

**Generation.** The encoder reads the history (one token per item: the sum
of its three token embeddings plus a position embedding). One Transformer
decoder then runs twice, each time on a fixed set of learned query tokens
cross-attending to the encoder memory, with no causal mask and nothing
generated token by token:

1. the coarse pass: one query, ``p(g | history)`` over the ``C`` coarse IDs;
2. the fine pass: two queries (fine cluster, dedup token), each plus the
   *soft* coarse prediction ``sum_g p(g | history) emb(g)``, giving
   ``p(f | coarse, history)`` over the ``F`` fine clusters and
   ``p(e | coarse, history)`` over the ``E`` dedup tokens.

So a batch of users costs one encoder pass and exactly two decoder passes,
whatever the catalogue; ``levels="single"`` is the single-level ablation:
one decoder pass with three queries, nothing conditioned on the coarse
prediction.

**Loss** (eq. 6.3): ``L = CE(g) + CE(f) + CE(e) + mu * L_align`` with the
hierarchical alignment ``L_align = KL(p_coarse || q)``, where ``q(g) =
sum_{f : parent[f] = g} p(f | ...)`` is the fine distribution summed onto
the coarse clusters: zero exactly when the fine prediction puts on every
coarse cluster the mass the coarse prediction does.

**Score of an item** ``i = (g, f, e)`` for a user: ``log p(g) + log p(f) +
log p(e)``, the same under both retrievals below.

**Retrieval.** :func:`exhaustive_topk` scores every item (``O(N)`` per
user, the reference). :func:`two_stage_topk` takes the user's top-``c``
coarse IDs, recalls their items through an :class:`InvertedIndex` (coarse
ID -> items, catalogue order inside a cluster), cuts the list at
``budget`` candidates, and ranks only those by the same score: its cost
per user is ``O(C + candidates)``, independent of the catalogue beyond the
candidate set. With ``c = C`` and no budget it returns exactly what the
exhaustive ranking does (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pmsid.models.generator import init_weights, transformer_stacks

LEVELS = ("two", "single")


class HdnagGenerator(nn.Module):
    """Encoder plus one shared non-autoregressive decoder over ``(coarse, fine, dedup)`` IDs.

    ``codes (n_items, 3)`` and ``parent (F,)`` are stored as buffers, so a
    saved model carries the IDs it was trained on.
    """

    def __init__(
        self,
        codes: torch.Tensor,
        parent: torch.Tensor,
        history_cap: int,
        d_model: int = 64,
        n_heads: int = 4,
        n_encoder_layers: int = 2,
        n_decoder_layers: int = 2,
        d_ff: int = 256,
        dropout: float = 0.1,
        levels: str = "two",
    ):
        super().__init__()
        if levels not in LEVELS:
            raise ValueError(f"levels must be one of {list(LEVELS)}, got {levels!r}")
        codes = torch.as_tensor(codes, dtype=torch.long)
        parent = torch.as_tensor(parent, dtype=torch.long)
        if codes.ndim != 2 or codes.shape[1] != 3 or (codes < 0).any():
            raise ValueError(
                f"codes must be a non-negative (n_items, 3) array (coarse, fine, dedup), got {codes.shape}"
            )
        if parent.ndim != 1 or len(parent) <= int(codes[:, 1].max()):
            raise ValueError(f"parent must give the coarse cluster of every fine cluster; got shape {parent.shape}")
        if not torch.equal(parent[codes[:, 1]], codes[:, 0]):
            raise ValueError("codes and parent disagree: an item's fine cluster is not inside its coarse cluster")
        self.levels = levels
        self.history_cap = history_cap
        self.n_items = len(codes)
        self.n_coarse = int(parent.max()) + 1
        self.n_fine = len(parent)
        self.n_dedup = int(codes[:, 2].max()) + 1
        self.register_buffer("codes", codes.clone())
        self.register_buffer("parent", parent.clone())

        self.coarse_emb = nn.Embedding(self.n_coarse, d_model)
        self.fine_emb = nn.Embedding(self.n_fine, d_model)
        self.dedup_emb = nn.Embedding(self.n_dedup, d_model)
        self.pos_emb = nn.Embedding(history_cap, d_model)
        # Query tokens: [coarse] for the coarse pass, [fine, dedup] for the fine
        # pass; the single-level ablation reads all three in one pass.
        self.queries = nn.Parameter(torch.randn(3, d_model) * 0.02)
        self.drop = nn.Dropout(dropout)
        # The TIGER-style generator's stacks: the two generators differ in how they decode, not in size.
        self.encoder, self.decoder = transformer_stacks(
            d_model, n_heads, d_ff, dropout, n_encoder_layers, n_decoder_layers
        )
        self.coarse_head = nn.Linear(d_model, self.n_coarse, bias=False)
        self.fine_head = nn.Linear(d_model, self.n_fine, bias=False)
        self.dedup_head = nn.Linear(d_model, self.n_dedup, bias=False)
        self.apply(init_weights)

    # ----------------------------------------------------------------- passes
    def encode(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory ``(N, cap, d)`` and padding mask ``(N, cap)`` of left-padded histories (``PAD = -1``)."""
        valid = history >= 0
        ids = self.codes[history.clamp(min=0)]  # (N, cap, 3)
        x = self.coarse_emb(ids[..., 0]) + self.fine_emb(ids[..., 1]) + self.dedup_emb(ids[..., 2])
        x = x + self.pos_emb(torch.arange(history.shape[1], device=history.device))
        x = x * valid[..., None]
        pad = ~valid
        empty = pad.all(dim=1)
        if empty.any():  # a row without history would attend to nothing (NaN)
            pad = pad.clone()
            pad[empty, -1] = False
        return self.encoder(self.drop(x), src_key_padding_mask=pad), pad

    def _decode(self, queries: torch.Tensor, memory: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """One non-autoregressive decoder pass: ``queries (N, Q, d)`` -> states ``(N, Q, d)``."""
        return self.decoder(self.drop(queries), memory, memory_key_padding_mask=pad)

    def forward(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits ``(coarse (N, C), fine (N, F), dedup (N, E))`` for histories ``(N, cap)``."""
        memory, pad = self.encode(history)
        n = len(history)
        if self.levels == "single":
            h = self._decode(self.queries.expand(n, 3, -1), memory, pad)
            return self.coarse_head(h[:, 0]), self.fine_head(h[:, 1]), self.dedup_head(h[:, 2])
        h_coarse = self._decode(self.queries[:1].expand(n, 1, -1), memory, pad)[:, 0]
        coarse = self.coarse_head(h_coarse)
        soft = F.softmax(coarse.float(), dim=-1).to(memory.dtype) @ self.coarse_emb.weight  # (N, d)
        h_fine = self._decode(self.queries[1:].expand(n, 2, -1) + soft[:, None], memory, pad)
        return coarse, self.fine_head(h_fine[:, 0]), self.dedup_head(h_fine[:, 1])

    def log_probs(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-softmax of each of :meth:`forward`'s three logits, in float32."""
        return tuple(F.log_softmax(x.float(), dim=-1) for x in self(history))

    # ------------------------------------------------------------------ loss
    def alignment(self, coarse_logits: torch.Tensor, fine_logits: torch.Tensor) -> torch.Tensor:
        """``L_align`` per row, ``(N,)``: KL(p_coarse || fine distribution summed onto coarse)."""
        log_pc = F.log_softmax(coarse_logits.float(), dim=-1)
        p_fine = F.softmax(fine_logits.float(), dim=-1)
        q = p_fine.new_zeros(len(p_fine), self.n_coarse).index_add_(1, self.parent, p_fine)
        return (log_pc.exp() * (log_pc - q.clamp_min(1e-12).log())).sum(dim=-1)

    def loss(self, history: torch.Tensor, targets: torch.Tensor, mu: float = 0.0) -> torch.Tensor:
        """``CE(g) + CE(f) + CE(e) + mu * L_align``, means over the batch's target items ``(N,)``."""
        coarse, fine, dedup = self(history)
        ids = self.codes[targets]
        loss = (
            F.cross_entropy(coarse.float(), ids[:, 0])
            + F.cross_entropy(fine.float(), ids[:, 1])
            + F.cross_entropy(dedup.float(), ids[:, 2])
        )
        if mu:
            loss = loss + mu * self.alignment(coarse, fine).mean()
        return loss

    # --------------------------------------------------------------- scoring
    def item_scores(self, log_probs, items: torch.Tensor | None = None) -> torch.Tensor:
        """``log p(g_i) + log p(f_i) + log p(e_i)`` of items ``(N, B)`` (every item when None).

        ``log_probs`` is :meth:`log_probs`'s triple; returns ``(N, B)`` or ``(N, n_items)``.
        """
        log_pc, log_pf, log_pe = log_probs
        if items is None:
            ids = self.codes
            return log_pc[:, ids[:, 0]] + log_pf[:, ids[:, 1]] + log_pe[:, ids[:, 2]]
        ids = self.codes[items.clamp(min=0)]  # (N, B, 3)
        return log_pc.gather(1, ids[..., 0]) + log_pf.gather(1, ids[..., 1]) + log_pe.gather(1, ids[..., 2])


class InvertedIndex:
    """Coarse ID -> the items under it, in catalogue order (CSR arrays).

    ``items_by_coarse[offsets[g] : offsets[g] + counts[g]]`` are coarse
    cluster ``g``'s items. Tensors live on ``device``.
    """

    def __init__(self, coarse: torch.Tensor, n_coarse: int, device: torch.device | str = "cpu"):
        coarse = torch.as_tensor(coarse, dtype=torch.long, device=device)
        self.items_by_coarse = torch.sort(coarse, stable=True).indices
        self.counts = torch.bincount(coarse, minlength=n_coarse)
        self.offsets = torch.cumsum(self.counts, 0) - self.counts
        self.n_coarse = n_coarse

    def lookup(self, g: int) -> torch.Tensor:
        """The items of coarse cluster ``g``."""
        start = int(self.offsets[g])
        return self.items_by_coarse[start : start + int(self.counts[g])]

    def candidates(self, top_coarse: torch.Tensor, budget: int | None = None) -> torch.Tensor:
        """Items under each row's coarse IDs ``top_coarse (N, c)``, best coarse ID first.

        Returns ``(N, B)`` item indices padded with -1, ``B`` the longest
        row's count capped at ``budget`` (None: no cap); a row beyond its
        budget keeps its first ``budget`` candidates.
        """
        lengths = self.counts[top_coarse]  # (N, c)
        ends = torch.cumsum(lengths, dim=1)  # (N, c)
        total = ends[:, -1]
        width = int(total.max()) if len(total) else 0
        if budget is not None:
            width = min(width, budget)
            total = total.clamp(max=budget)
        pos = torch.arange(width, device=top_coarse.device).expand(len(top_coarse), width).contiguous()
        # Which of the row's coarse IDs position p falls in, and where inside it.
        seg = torch.searchsorted(ends, pos, right=True).clamp(max=top_coarse.shape[1] - 1)
        inside = pos - (ends.gather(1, seg) - lengths.gather(1, seg))
        flat = self.offsets[top_coarse.gather(1, seg)] + inside
        items = self.items_by_coarse[flat.clamp(max=len(self.items_by_coarse) - 1)]
        return torch.where(pos < total[:, None], items, torch.full_like(items, -1))


def exhaustive_topk(model: HdnagGenerator, log_probs, k: int, exclude: torch.Tensor | None = None):
    """The top-``k`` of every item's score (the reference ranking): ``(items, scores)`` ``(N, k)``.

    ``exclude (N, H)`` items (PAD = -1) are never returned; ties go to the
    lower item index, as in every ranking (``pmsid.evaluate.ranking.top_k``).
    """
    scores = model.item_scores(log_probs)
    if exclude is not None:
        spare = torch.cat([scores, scores.new_zeros(len(scores), 1)], dim=1)  # a column for PAD
        spare.scatter_(1, torch.where(exclude >= 0, exclude, model.n_items), float("-inf"))
        scores = spare[:, : model.n_items]
    items = torch.arange(model.n_items, device=scores.device).expand_as(scores)
    return _best(items, scores, k)


def two_stage_topk(
    model: HdnagGenerator,
    index: InvertedIndex,
    log_probs,
    k: int,
    coarse_candidates: int,
    budget: int | None = None,
    exclude: torch.Tensor | None = None,
):
    """Two-stage retrieval: the top ``coarse_candidates`` coarse IDs recall
    candidates through ``index`` (at most ``budget``), which are ranked by
    the item score. Returns ``(items, scores, n_candidates)``: ``(N, k)``
    lists (padded with -1 / -inf, the tie rule of :func:`exhaustive_topk`)
    and ``(N,)`` the candidates scored per user.
    """
    log_pc = log_probs[0]
    c = min(coarse_candidates, log_pc.shape[1])
    # Stable: equal coarse scores go to the lower coarse ID.
    top_coarse = torch.sort(log_pc, dim=1, descending=True, stable=True).indices[:, :c]
    cand = index.candidates(top_coarse, budget)  # (N, B)
    scores = model.item_scores(log_probs, cand).masked_fill(cand < 0, float("-inf"))
    if exclude is not None:
        hit = (cand[:, :, None] == exclude[:, None, :]) & (exclude[:, None, :] >= 0)
        scores = scores.masked_fill(hit.any(dim=-1), float("-inf"))
    n_candidates = (cand >= 0).sum(dim=1)
    # Order candidates by item index first, so the stable score sort breaks ties to the lower index.
    by_item = torch.sort(torch.where(cand < 0, model.n_items, cand), dim=1, stable=True).indices
    items, values = _best(cand.gather(1, by_item), scores.gather(1, by_item), k)
    return items, values, n_candidates


def _best(items: torch.Tensor, scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best of ``items (N, B)`` (in ascending item order) by ``scores``: a stable sort, so
    ties keep the lower item; -inf (excluded, padding) becomes item -1; lists shorter than ``k`` padded."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    items, values = items.gather(1, order), scores.gather(1, order)
    items = torch.where(torch.isneginf(values), torch.full_like(items, -1), items)
    if items.shape[1] < k:
        pad = k - items.shape[1]
        items = torch.cat([items, items.new_full((len(items), pad), -1)], dim=1)
        values = torch.cat([values, values.new_full((len(values), pad), float("-inf"))], dim=1)
    return items, values


def build_hdnag(codes, parent, cfg: dict) -> HdnagGenerator:
    """An HDNAG generator over ``codes (n_items, 3)`` with the architecture of ``cfg``."""
    return HdnagGenerator(
        torch.as_tensor(codes),
        torch.as_tensor(parent),
        history_cap=cfg["history_cap"],
        d_model=cfg["d_model"],
        n_heads=cfg["n_heads"],
        n_encoder_layers=cfg["n_encoder_layers"],
        n_decoder_layers=cfg["n_decoder_layers"],
        d_ff=cfg["d_ff"],
        dropout=cfg["dropout"],
        levels=cfg["levels"],
    )
