"""TIGER-style encoder-decoder generator over semantic-ID tokens (docs/METHOD.md section 3).

Every item ``i`` has a semantic ID ``codes[i] = (c_0, ..., c_{D-1})``: ``D - 1``
quantizer levels plus the dedup token. Level ``j`` uses codes ``0 .. K_j - 1``.

Personalized IDs (PMAT, docs/METHOD.md section 4) give ``P`` ID tables ``codes (P,
n_items, D)``, one per user-preference prototype, and every user reads items
under one table. The tables share one code space (level ``j`` code ``c`` is
the same token in every table), so one model serves them all; an ID is
unique within its table but may name different items in different tables,
and ``K_j`` is the largest code of level ``j`` over all tables plus one. A
single table ``(n_items, D)`` is ``P = 1``.

Token vocabulary (one embedding table for encoder and decoder)::

    token(level j, code c) = offset_j + c,   offset_j = K_0 + ... + K_{j-1}
    PAD = sum_j K_j,  BOS = PAD + 1,  vocabulary size V = sum_j K_j + 2

The encoder reads the user's history as ``history_cap x D`` tokens (each
history item contributes its D tokens, in order), with learned level and
history-position embeddings added (or, with ``encoder_tokens="item"``, one
token per history item: the sum of its D token embeddings). With ``table_token`` the
encoder also reads one more token in front: a learned embedding of the ID
table the row decodes in (PMAT's preference prototype), so the model knows
which table's IDs it is to generate. The decoder generates the next item's D
tokens left to right, teacher-forced in training with the loss

    L_ID = - sum_j log p(c_j | c_<j, history)

where ``p(. | ...)`` at step ``j`` is a softmax over the ``K_j`` tokens of level
``j`` only (a token of another level can never be right there).

Beam search (``pmsid.models.beam``) decodes many prefixes per user at once. It
calls :meth:`TigerGenerator.next_logprobs` with ``G`` prefixes per user packed
into one decoder sequence of ``G * t`` tokens and a block-diagonal causal mask,
so the encoder memory of a user is attended by all its beams without copying
it ``G`` times (see :func:`group_causal_mask`).
"""

from __future__ import annotations

from numbers import Integral

import torch
import torch.nn.functional as F
from torch import nn


def group_causal_mask(groups: int, length: int, device: torch.device | None = None) -> torch.Tensor:
    """Attention mask for ``groups`` independent sequences of ``length`` tokens laid end to end.

    Returns a bool ``(groups * length, groups * length)`` tensor, True where
    attention is blocked (``nn.MultiheadAttention``'s convention): a token sees
    only earlier-or-same positions of its own group. With ``groups = 1`` this
    is the ordinary causal mask.
    """
    idx = torch.arange(groups * length, device=device)
    group, pos = idx // length, idx % length
    other_group = group[:, None] != group[None, :]
    future = pos[None, :] > pos[:, None]
    return other_group | future


class TigerGenerator(nn.Module):
    """Encoder-decoder Transformer that generates the next item's semantic ID.

    ``codes`` ``(n_items, D)`` or ``(P, n_items, D)`` (``P`` personalized ID
    tables) is stored as a ``(P, n_items, D)`` buffer: the model maps history
    items to their ID tokens itself, and a saved model carries the IDs it was
    trained on. Methods that look items up take ``table``: None (table 0), an
    int (every row), or a LongTensor ``(N,)`` giving each row's table.
    """

    def __init__(
        self,
        codes: torch.Tensor,
        history_cap: int,
        d_model: int = 64,
        n_heads: int = 4,
        n_encoder_layers: int = 2,
        n_decoder_layers: int = 2,
        d_ff: int = 256,
        dropout: float = 0.1,
        encoder_tokens: str = "flat",
        table_token: bool = False,
    ):
        super().__init__()
        if encoder_tokens not in ("flat", "item"):
            raise ValueError(f"encoder_tokens must be 'flat' or 'item', got {encoder_tokens!r}")
        if not isinstance(table_token, bool):
            raise ValueError(f"table_token must be true or false, got {table_token!r}")
        self.encoder_tokens = encoder_tokens
        self.table_token = table_token
        codes = torch.as_tensor(codes, dtype=torch.long)
        if codes.ndim == 2:
            codes = codes[None]  # one table: P = 1
        if codes.ndim != 3 or (codes < 0).any():
            raise ValueError(
                f"codes must be a non-negative (n_items, D) or (P, n_items, D) array, got shape {tuple(codes.shape)}"
            )
        self.n_tables, self.n_items, self.n_levels = codes.shape
        self.level_sizes = [int(k) for k in codes.amax(dim=(0, 1)) + 1]  # K_j over all tables
        self.history_cap = history_cap
        self.d_model = d_model
        offsets = [0]
        for k in self.level_sizes[:-1]:
            offsets.append(offsets[-1] + k)
        self.pad_token = sum(self.level_sizes)
        self.bos_token = self.pad_token + 1
        vocab = self.pad_token + 2

        self.register_buffer("codes", codes.clone())  # (P, n_items, D)
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.long))  # (D,)
        # level_mask[j, v]: token v belongs to level j; the loss's softmax at step j runs over these.
        level_of_token = torch.repeat_interleave(torch.arange(self.n_levels), torch.tensor(self.level_sizes))
        level_mask = torch.zeros(self.n_levels, vocab, dtype=torch.bool)
        level_mask[level_of_token, torch.arange(self.pad_token)] = True
        self.register_buffer("level_mask", level_mask, persistent=False)  # (D, V)

        self.tok_emb = nn.Embedding(vocab, d_model)
        self.enc_level_emb = nn.Embedding(self.n_levels, d_model)
        self.enc_pos_emb = nn.Embedding(history_cap, d_model)
        self.dec_pos_emb = nn.Embedding(self.n_levels, d_model)
        # One learned token per ID table, read in front of the history (table_token only).
        self.table_emb = nn.Embedding(self.n_tables, d_model) if table_token else None
        self.drop = nn.Dropout(dropout)
        self.encoder, self.decoder = transformer_stacks(
            d_model, n_heads, d_ff, dropout, n_encoder_layers, n_decoder_layers
        )
        self.head = nn.Linear(d_model, vocab, bias=False)
        self.apply(init_weights)

    # ------------------------------------------------------------------ tables
    def item_codes(self, items: torch.Tensor, table: int | torch.Tensor | None = None) -> torch.Tensor:
        """Semantic IDs ``(N, ..., D)`` of item indices ``items (N, ...)`` (all >= 0) under ``table``.

        ``table``: None (table 0), an int (every row), or a LongTensor ``(N,)``
        (row ``n`` reads table ``table[n]``).
        """
        if table is None:
            table = 0
        if isinstance(table, Integral):
            if not 0 <= table < self.n_tables:
                raise ValueError(f"table must be in [0, {self.n_tables}), got {table}")
            return self.codes[table][items]
        if not torch.is_tensor(table) or table.shape != items.shape[:1] or table.is_floating_point():
            raise ValueError(
                f"table must be None, an int or an integer tensor of shape ({items.shape[0]},) "
                f"(one table per row), got {table!r:.80}"
            )
        if ((table < 0) | (table >= self.n_tables)).any():
            raise ValueError(f"table must hold indices in [0, {self.n_tables}), got {table.min()}..{table.max()}")
        rows = table.view(-1, *([1] * (items.ndim - 1)))  # (N, 1, ...) broadcasts against items
        return self.codes[rows, items]

    def _table_rows(self, table: int | torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
        """The table of each of ``n`` rows as a LongTensor ``(n,)`` (``table`` as in :meth:`item_codes`)."""
        if table is None or isinstance(table, Integral):
            return torch.full((n,), int(table or 0), dtype=torch.long, device=device)
        return table.to(device=device, dtype=torch.long)

    # ----------------------------------------------------------------- encoder
    def encode(
        self, history: torch.Tensor, table: int | torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode left-padded histories ``(N, cap)`` of item indices (``PAD = -1``).

        History items become the tokens of their IDs in ``table`` (see
        :meth:`item_codes`): None (table 0), an int, or a LongTensor ``(N,)``.

        ``encoder_tokens = "flat"`` (TIGER): every history item contributes its
        D tokens, so the encoder reads ``L = cap * D`` tokens. ``"item"``: the D
        token embeddings of an item are summed into one token (``L = cap``),
        about D^2 times cheaper in attention and D times in the rest; the model
        still sees only semantic-ID tokens, never an item-ID embedding.

        With ``table_token`` the first of ``L + 1`` positions is the row's
        table embedding (never padding).

        Returns ``memory (N, L, d_model)`` and its key-padding mask ``(N, L)``
        (True = padding).
        """
        n, cap = history.shape
        valid = history >= 0  # (N, cap)
        tokens = self.item_codes(history.clamp(min=0), table) + self.offsets  # (N, cap, D)
        tokens = torch.where(valid[..., None], tokens, self.pad_token)
        pos = torch.arange(cap, device=history.device)
        lvl = torch.arange(self.n_levels, device=history.device)
        x = self.tok_emb(tokens) + self.enc_level_emb(lvl)[None, None]  # (N, cap, D, d)
        if self.encoder_tokens == "flat":
            x = (x + self.enc_pos_emb(pos)[None, :, None]).flatten(1, 2)  # (N, cap * D, d)
            pad = (~valid)[..., None].expand(n, cap, self.n_levels).flatten(1)  # (N, cap * D)
        else:
            x = x.sum(dim=2) + self.enc_pos_emb(pos)[None]  # (N, cap, d)
            pad = ~valid  # (N, cap)
        # A row with no history at all would make attention softmax over nothing
        # (NaN); let it see its last PAD token instead (the protocol never builds
        # such rows, but a caller might).
        empty = pad.all(dim=1)
        if empty.any():
            pad = pad.clone()
            pad[empty, -1] = False
        if self.table_emb is not None:
            rows = self._table_rows(table, n, history.device)
            x = torch.cat([self.table_emb(rows)[:, None], x], dim=1)  # (N, 1 + L, d)
            pad = torch.cat([torch.zeros(n, 1, dtype=torch.bool, device=pad.device), pad], dim=1)
        memory = self.encoder(self.drop(x), src_key_padding_mask=pad)
        return memory, pad

    # ----------------------------------------------------------------- decoder
    def decoder_hidden(self, memory: torch.Tensor, memory_pad: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """Decoder states for ``G`` ID prefixes per user.

        ``prefix (N, G, t)`` holds codes (not tokens) of levels ``0..t-1``. The
        decoder input is ``[BOS, prefix]``; returns ``(N, G, t + 1, d_model)``,
        where position ``j`` predicts level ``j``.
        """
        n, g, t = prefix.shape
        tokens = prefix + self.offsets[:t]  # (N, G, t)
        bos = torch.full((n, g, 1), self.bos_token, dtype=torch.long, device=prefix.device)
        tokens = torch.cat([bos, tokens], dim=-1)  # (N, G, t + 1)
        pos = torch.arange(t + 1, device=prefix.device)
        x = (self.tok_emb(tokens) + self.dec_pos_emb(pos)).flatten(1, 2)  # (N, G * (t + 1), d)
        mask = group_causal_mask(g, t + 1, prefix.device)
        h = self.decoder(self.drop(x), memory, tgt_mask=mask, memory_key_padding_mask=memory_pad)
        return h.view(n, g, t + 1, self.d_model)

    def level_logits(self, hidden: torch.Tensor, level: int) -> torch.Tensor:
        """Logits ``(..., K_level)`` over the codes of one level, from decoder states ``(..., d)``."""
        start = int(self.offsets[level])
        weight = self.head.weight[start : start + self.level_sizes[level]]  # (K_level, d)
        return F.linear(hidden, weight)

    def next_logprobs(self, memory: torch.Tensor, memory_pad: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """``log p(c_t | prefix, history)`` for ``prefix (N, G, t)``; returns ``(N, G, K_t)``."""
        h = self.decoder_hidden(memory, memory_pad, prefix)[:, :, -1]  # (N, G, d)
        return F.log_softmax(self.level_logits(h, prefix.shape[-1]).float(), dim=-1)

    # ----------------------------------------------------- training and scores
    def full_logits(
        self, history: torch.Tensor, target_codes: torch.Tensor, table: int | torch.Tensor | None = None
    ) -> torch.Tensor:
        """Teacher-forced logits ``(N, D, V)`` for target IDs ``(N, D)``, other levels' tokens at -inf.

        ``history (N, cap)`` is read under ``table`` (see :meth:`encode`).
        """
        memory, pad = self.encode(history, table)
        return self.memory_logits(memory, pad, target_codes)

    def memory_logits(self, memory: torch.Tensor, memory_pad: torch.Tensor, target_codes: torch.Tensor) -> torch.Tensor:
        """:meth:`full_logits` from an encoder output ``memory (N, L, d)``, ``memory_pad (N, L)``."""
        h = self.decoder_hidden(memory, memory_pad, target_codes[:, None, :-1])[:, 0]  # (N, D, d)
        logits = self.head(h).float()  # (N, D, V)
        return logits.masked_fill(~self.level_mask, float("-inf"))

    def loss(
        self, history: torch.Tensor, target_items: torch.Tensor, table: int | torch.Tensor | None = None
    ) -> torch.Tensor:
        """L_ID: mean cross-entropy over the D tokens of the target items ``(N,)``.

        ``history (N, cap)`` and the targets are both read under ``table``
        (None = table 0, an int, or a LongTensor ``(N,)``): a user's history
        and target are IDs of the user's own table.
        """
        memory, pad = self.encode(history, table)
        return self.loss_from_memory(memory, pad, target_items, table)

    def loss_from_memory(
        self,
        memory: torch.Tensor,
        memory_pad: torch.Tensor,
        target_items: torch.Tensor,
        table: int | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """:meth:`loss` from an encoder output, for callers that reuse the memory (MCRL's user context)."""
        codes = self.item_codes(target_items, table)  # (N, D)
        logits = self.memory_logits(memory, memory_pad, codes)
        targets = codes + self.offsets  # (N, D) vocabulary tokens
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    def score_ids(self, memory: torch.Tensor, memory_pad: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Full log-probability ``sum_j log p(c_j | c_<j)`` of one ID per row.

        ``memory (N, L, d)``, ``memory_pad (N, L)``, ``codes (N, D)``; returns ``(N,)``.
        Used by the brute-force reference ranking (each row decoded alone).
        """
        logp = F.log_softmax(self.memory_logits(memory, memory_pad, codes), dim=-1)  # (N, D, V)
        tokens = codes + self.offsets
        return logp.gather(-1, tokens[..., None]).squeeze(-1).sum(dim=-1)


def transformer_stacks(
    d_model: int, n_heads: int, d_ff: int, dropout: float, n_encoder_layers: int, n_decoder_layers: int
) -> tuple[nn.TransformerEncoder, nn.TransformerDecoder]:
    """The encoder and decoder stacks of the generators (this one and HDNAG's).

    Pre-LayerNorm blocks train stably without a long warmup; torch's layers
    run scaled-dot-product attention underneath.
    """
    enc_layer = nn.TransformerEncoderLayer(
        d_model, n_heads, d_ff, dropout, activation="gelu", batch_first=True, norm_first=True
    )
    dec_layer = nn.TransformerDecoderLayer(
        d_model, n_heads, d_ff, dropout, activation="gelu", batch_first=True, norm_first=True
    )
    encoder = nn.TransformerEncoder(enc_layer, n_encoder_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False)
    decoder = nn.TransformerDecoder(dec_layer, n_decoder_layers, norm=nn.LayerNorm(d_model))
    return encoder, decoder


def init_weights(module: nn.Module) -> None:
    # Small normal init (as in GPT-2 / nanoGPT): keeps early logits near uniform.
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)


def tiger_defaults() -> dict:
    """Every key of a TIGER cfg with its default (the schema's ``tiger`` and
    ``evaluation.beam_size``, plus the run keys; see ``pmsid.defaults``)."""
    from pmsid.defaults import run_defaults, section_defaults

    return {
        **run_defaults(),
        **section_defaults("tiger"),
        "beam_size": section_defaults("evaluation")["beam_size"],
        # A design choice of a method (pmat_static_token), not a config key.
        "table_token": False,
    }


def build_tiger(codes, cfg: dict) -> TigerGenerator:
    """A generator over ID tables ``codes`` with the architecture of ``cfg``."""
    return TigerGenerator(
        torch.as_tensor(codes),
        history_cap=cfg["history_cap"],
        d_model=cfg["d_model"],
        n_heads=cfg["n_heads"],
        n_encoder_layers=cfg["n_encoder_layers"],
        n_decoder_layers=cfg["n_decoder_layers"],
        d_ff=cfg["d_ff"],
        dropout=cfg["dropout"],
        encoder_tokens=cfg["encoder_tokens"],
        table_token=cfg["table_token"],
    )
