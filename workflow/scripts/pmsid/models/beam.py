"""Beam search constrained to the trie of valid semantic IDs (docs/METHOD.md section 2, 3).

A generative model ranks the catalogue by beam search: at step ``j`` every beam
(an ID prefix of length ``j``) is extended by one code of level ``j``, and the
``B`` highest-scoring prefixes (score = sum of token log-probabilities) are
kept. Constrained to the trie of valid IDs, a prefix can only be extended by
codes that some item's ID continues with; every finished beam is then an
item. With the protocol switch ``exclude_history`` the trie is pruned per user:
a prefix whose every completion is a history item is not allowed either, so
the beam never wastes a slot on an item it must drop.

Why own code instead of Hugging Face ``generate`` with
``prefix_allowed_tokens_fn``:
that callback runs in Python once per beam and step, the known slow spot of
public TIGER implementations. Here the trie is a dense child table per depth,
so one step is a handful of tensor ops for all users and beams at once.

Personalized IDs (``P`` tables, see ``pmsid.models.generator``): an ID names
an item only within its table, so each table has its own trie and a user is
searched in the trie of the table they decode under;
:func:`beam_search_tables` groups users by table and maps every generated ID
back to an item index through that user's table.

Unconstrained search (``constrained=False``): the same beams, scores and
width, but every code of a level extends every beam, so a finished beam may be
a code tuple that no item has. The trie then serves only as the user's ID
table, mapping each finished beam to its item (or ``-1``). Constrained search
cannot emit an invalid ID (an invariant, tested); the unconstrained invalid-ID
rate is what says how well the model has learnt which IDs exist.

:func:`brute_force_topk` scores every valid ID exactly (teacher forcing) and is
the reference the tests hold beam search to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pmsid.models.generator import TigerGenerator

NEG_INF = float("-inf")


class Trie:
    """Prefix trie over the rows of ``codes (n_items, D)`` (one ID table) as dense tensors.

    Nodes at depth ``e`` are the distinct ID prefixes of length ``e`` (depth 0
    is the root; depth ``D`` nodes are the items themselves, node id = item
    index). Tables, for depth ``e = 0 .. D - 1``:

    - ``child[e] (n_nodes_e, K_e)``: node id at depth ``e + 1`` reached by code
      ``k``, or ``-1`` where no ID continues that way;
    - ``n_leaves[e] (n_nodes_e,)``: items below each node (``n_leaves[D]`` is 1);
    - ``item_node[e] (n_items,)``: each item's ancestor at depth ``e``.

    ``K_e`` is ``level_sizes[e]`` when given, else the table's own largest
    code of level ``e`` plus one. Beam search adds the model's log-probs over
    its ``K_e`` codes to the trie's tables, so the trie of one of several ID
    tables is built with ``level_sizes=model.level_sizes`` (the sizes over all
    tables); codes a table never uses stay ``-1``.

    Memory is ``sum_e n_nodes_e * K_e`` entries (at most ``n_items * K`` per
    depth), small next to the model for the catalogues of docs/METHOD.md 2.1.
    """

    def __init__(self, codes: np.ndarray | torch.Tensor, level_sizes: list[int] | None = None):
        codes = np.asarray(torch.as_tensor(codes).cpu().numpy(), dtype=np.int64)
        if codes.ndim != 2 or len(codes) == 0:
            raise ValueError(f"codes must be a non-empty (n_items, D) array, got shape {codes.shape}")
        if (codes < 0).any():
            raise ValueError("codes must be non-negative")
        n_unique = len(np.unique(codes, axis=0))
        if n_unique != len(codes):
            raise ValueError(
                f"codes: {len(codes) - n_unique} duplicate IDs; every item needs a unique ID "
                "(add the dedup level in the tokenizer)"
            )
        self.n_items, self.depth = codes.shape
        needed = [int(k) for k in codes.max(axis=0) + 1]
        self.level_sizes = needed if level_sizes is None else _check_level_sizes(level_sizes, needed)
        item_node = [np.zeros(self.n_items, dtype=np.int64)]  # depth 0: the root
        for e in range(1, self.depth):
            _, inverse = np.unique(codes[:, :e], axis=0, return_inverse=True)
            item_node.append(inverse.reshape(-1).astype(np.int64))
        item_node.append(np.arange(self.n_items, dtype=np.int64))  # depth D: the item

        self.child, self.n_leaves = [], []
        for e in range(self.depth + 1):
            n_nodes = int(item_node[e].max()) + 1
            self.n_leaves.append(torch.from_numpy(np.bincount(item_node[e], minlength=n_nodes)))
            if e < self.depth:
                table = np.full((n_nodes, self.level_sizes[e]), -1, dtype=np.int64)
                table[item_node[e], codes[:, e]] = item_node[e + 1]
                self.child.append(torch.from_numpy(table))
        self.item_node = [torch.from_numpy(a) for a in item_node]
        self.codes = torch.from_numpy(codes)

    def to(self, device: torch.device | str) -> Trie:
        """Move every table to ``device`` (in place); returns self."""
        self.child = [t.to(device) for t in self.child]
        self.n_leaves = [t.to(device) for t in self.n_leaves]
        self.item_node = [t.to(device) for t in self.item_node]
        self.codes = self.codes.to(device)
        return self

    def items_of(self, ids: torch.Tensor) -> torch.Tensor:
        """The item each ID of ``ids (..., D)`` names in this table, ``-1`` for a code tuple no item has.

        Codes must lie below :attr:`level_sizes` (the model's sizes, for IDs
        the model generated). Returns a long tensor shaped ``ids.shape[:-1]``.
        """
        node = torch.zeros(ids.shape[:-1], dtype=torch.long, device=ids.device)
        for e in range(self.depth):
            node = torch.where(node >= 0, self.child[e][node.clamp(min=0), ids[..., e]], -1)
        return node

    def remaining_leaves(self, excluded: torch.Tensor | None, depth: int, nodes: torch.Tensor) -> torch.Tensor:
        """Items below ``nodes`` (depth ``depth``, any shape ``(N, ...)``, ``-1`` allowed) not excluded.

        ``excluded (N, n_items)`` is a per-user bool mask of items to leave out,
        or None. Returns a tensor shaped like ``nodes``; 0 where the node is -1.
        """
        safe = nodes.clamp(min=0)
        left = self.n_leaves[depth][safe]
        if excluded is not None:
            # excluded items per (user, node at this depth): sum the mask over
            # the items below each node, then look up the candidate nodes.
            n_nodes = len(self.n_leaves[depth])
            counts = torch.zeros(excluded.shape[0], n_nodes, device=excluded.device)
            counts.index_add_(1, self.item_node[depth], excluded.float())  # (N, n_nodes)
            left = left - counts.gather(1, safe.flatten(1)).view_as(safe).long()
        return torch.where(nodes >= 0, left, 0)


def _check_level_sizes(level_sizes: list[int], needed: list[int]) -> list[int]:
    """``level_sizes`` as ints, failing when it does not cover the codes of every level."""
    level_sizes = [int(k) for k in level_sizes]
    if len(level_sizes) != len(needed):
        raise ValueError(f"level_sizes must give one size per ID level ({len(needed)}), got {level_sizes}")
    short = [j for j, (k, n) in enumerate(zip(level_sizes, needed)) if k < n]
    if short:
        raise ValueError(
            f"level_sizes {level_sizes} too small for codes: level(s) {short} need sizes >= "
            f"{[needed[j] for j in short]} (largest code + 1); pass the model's level_sizes"
        )
    return level_sizes


@dataclass
class BeamResult:
    """Top-``B`` items per user, best first.

    ``items (U, B)`` int64 with ``-1`` where fewer than ``B`` valid IDs exist
    and, in unconstrained search, for a finished beam that is no item's ID
    (an invalid beam: ``-1`` with its finite score, in its place);
    ``scores (U, B)`` the IDs' log-probabilities (``-inf`` for the fill);
    ``n_invalid`` counts the invalid beams (0 by construction in constrained search).
    """

    items: np.ndarray
    scores: np.ndarray
    n_invalid: int


def exclusion_mask(exclude_items: np.ndarray | torch.Tensor, n_items: int, device: torch.device) -> torch.Tensor:
    """Bool ``(U, n_items)`` mask from a padded ``(U, H)`` item array (``-1`` = no item)."""
    items = torch.as_tensor(np.asarray(exclude_items), dtype=torch.long, device=device)
    mask = torch.zeros(items.shape[0], n_items + 1, dtype=torch.bool, device=device)
    # PAD (-1) goes to the spare last column, which is then dropped.
    mask.scatter_(1, torch.where(items >= 0, items, n_items), True)
    return mask[:, :n_items]


@torch.no_grad()
def beam_search(
    model: TigerGenerator,
    trie: Trie,
    histories: np.ndarray | torch.Tensor,
    beam_size: int,
    exclude_items: np.ndarray | torch.Tensor | None = None,
    batch_size: int = 256,
    table: int | None = None,
    constrained: bool = True,
) -> BeamResult:
    """Trie-constrained (or, with ``constrained=False``, unconstrained) beam search for every user.

    ``histories (U, cap)``: left-padded item indices (``PAD = -1``).
    ``exclude_items (U, H)``: items each user must not get (``-1`` padded), or None.
    ``table``: the ID table all these users decode under (None = table 0);
    ``trie`` must be that table's trie (checked). Users are processed
    ``batch_size`` at a time; all beams of a batch advance together. Returns
    a :class:`BeamResult` of item indices.

    Unconstrained search (:func:`_free_beam_batch`) extends every beam by
    every code and maps the finished beams to items through ``trie``; an
    excluded item's beam is dropped from the list after that mapping (the
    list closes up), rather than pruned from the search.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    device = next(model.parameters()).device
    if trie.child[0].device != device:
        trie = trie.to(device)
    _check_trie(model, trie, 0 if table is None else table)
    was_training = model.training
    model.eval()
    histories = torch.as_tensor(np.asarray(histories), dtype=torch.long)
    items, scores, n_invalid = [], [], 0
    for start in range(0, len(histories), batch_size):
        hist = histories[start : start + batch_size].to(device)
        excluded = None
        if exclude_items is not None:
            excluded = exclusion_mask(exclude_items[start : start + batch_size], trie.n_items, device)
        search = _beam_batch if constrained else _free_beam_batch
        it, sc, bad = search(model, trie, hist, beam_size, excluded, table)
        items.append(it.cpu().numpy())
        scores.append(sc.cpu().numpy())
        n_invalid += bad
    model.train(was_training)
    return BeamResult(np.concatenate(items), np.concatenate(scores), n_invalid)


def _check_trie(model: TigerGenerator, trie: Trie, table: int) -> None:
    """Fail unless ``trie`` is the trie of the model's ID table ``table``, sized as the model's levels."""
    if not 0 <= table < model.n_tables:
        raise ValueError(f"table must be in [0, {model.n_tables}) (the model's ID tables), got {table}")
    if trie.level_sizes != model.level_sizes:
        raise ValueError(
            f"trie level sizes {trie.level_sizes} differ from the model's {model.level_sizes}; "
            "build it as Trie(codes, level_sizes=model.level_sizes)"
        )
    if not torch.equal(trie.codes, model.codes[table]):
        raise ValueError(f"the trie is not built from the model's ID table {table}; pass that table's trie")


@torch.no_grad()
def beam_search_tables(
    model: TigerGenerator,
    tries: list[Trie],
    histories: np.ndarray | torch.Tensor,
    user_tables: np.ndarray,
    beam_size: int,
    exclude_items: np.ndarray | torch.Tensor | None = None,
    batch_size: int = 256,
    constrained: bool = True,
) -> BeamResult:
    """Beam search for users who decode under different ID tables.

    ``tries[p]`` is the trie of the model's table ``p`` (``len(tries) ==
    model.n_tables``); ``user_tables (U,)`` gives each user's table;
    ``histories (U, cap)``, ``exclude_items (U, H)`` and ``constrained`` as in
    :func:`beam_search`. Users are grouped by table, each group searched in
    its table's trie (so a generated ID becomes the item it names in that
    user's table), and the results are put back in input order: ``items (U,
    B)`` are item indices. With one table this is :func:`beam_search`.
    """
    if len(tries) != model.n_tables:
        raise ValueError(f"tries must hold one trie per ID table ({model.n_tables}), got {len(tries)}")
    histories = np.asarray(histories)
    user_tables = np.asarray(user_tables)
    if user_tables.shape != (len(histories),) or not np.issubdtype(user_tables.dtype, np.integer):
        raise ValueError(
            f"user_tables must be an integer array of shape ({len(histories)},) (one table per user), "
            f"got {user_tables.dtype} {user_tables.shape}"
        )
    if len(user_tables) and not (user_tables.min() >= 0 and user_tables.max() < model.n_tables):
        raise ValueError(f"user_tables must be in [0, {model.n_tables}), got {user_tables.min()}..{user_tables.max()}")
    if exclude_items is not None:
        exclude_items = np.asarray(exclude_items)
    items = np.full((len(histories), beam_size), -1, dtype=np.int64)
    scores = np.full((len(histories), beam_size), NEG_INF, dtype=np.float32)
    n_invalid = 0
    for p in np.unique(user_tables):
        rows = np.flatnonzero(user_tables == p)
        excluded = None if exclude_items is None else exclude_items[rows]
        result = beam_search(
            model, tries[p], histories[rows], beam_size, excluded, batch_size, table=int(p), constrained=constrained
        )
        items[rows], scores[rows] = result.items, result.scores
        n_invalid += result.n_invalid
    return BeamResult(items, scores, n_invalid)


def _beam_batch(
    model: TigerGenerator,
    trie: Trie,
    hist: torch.Tensor,
    beam: int,
    excluded: torch.Tensor | None,
    table: int | None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Beam search for one batch of ``N`` users; returns items, scores ``(N, beam)`` and the invalid count."""
    memory, pad = model.encode(hist, table)  # (N, L, d), (N, L)
    n = hist.shape[0]
    # W (the live width) starts at 1 (the root) and grows to `beam`.
    node = torch.zeros(n, 1, dtype=torch.long, device=hist.device)  # (N, W) trie node at the current depth
    score = torch.zeros(n, 1, device=hist.device)  # (N, W) log-prob of each prefix
    prefix = torch.zeros(n, 1, 0, dtype=torch.long, device=hist.device)  # (N, W, depth) codes so far
    for depth in range(trie.depth):
        k_level = trie.level_sizes[depth]
        child = trie.child[depth][node.clamp(min=0)]  # (N, W, K)
        child = child.masked_fill(node[..., None] < 0, -1)  # dead beams have no children
        allowed = trie.remaining_leaves(excluded, depth + 1, child) > 0  # (N, W, K)
        logp = model.next_logprobs(memory, pad, prefix)  # (N, W, K)
        cand = (score[..., None] + logp).masked_fill(~allowed, NEG_INF).flatten(1)  # (N, W * K)
        score, flat = cand.topk(min(beam, cand.shape[1]), dim=1)  # (N, W')
        parent, code = flat // k_level, flat % k_level
        prefix = torch.cat([prefix.gather(1, parent[..., None].expand(-1, -1, depth)), code[..., None]], dim=-1)
        node = child.flatten(1).gather(1, flat).masked_fill(score == NEG_INF, -1)
    # After the last level a node id is an item index.
    finished = score > NEG_INF
    n_invalid = int((finished & (node < 0)).sum())
    items = torch.where(finished, node, -1)
    items, score = _fill(items, score, beam)
    return items, score, n_invalid


def _fill(items: torch.Tensor, score: torch.Tensor, beam: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``items, score (N, W)`` padded to ``beam`` columns with item -1, score -inf (fewer IDs than beams)."""
    n, width = items.shape
    if width < beam:
        items = torch.cat([items, items.new_full((n, beam - width), -1)], dim=1)
        score = torch.cat([score, score.new_full((n, beam - width), NEG_INF)], dim=1)
    return items, score


def _free_beam_batch(
    model: TigerGenerator,
    trie: Trie,
    hist: torch.Tensor,
    beam: int,
    excluded: torch.Tensor | None,
    table: int | None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """:func:`_beam_batch` without the trie: the top ``beam`` continuations over every code of each level.

    Only after the last level is each finished beam looked up in ``trie`` (the
    ID table): a code tuple no item has stays in its place as item -1 with its
    score and counts as invalid; a beam whose item is excluded is dropped and
    the beams behind it move up, the tail padded with item -1, score -inf.
    """
    memory, pad = model.encode(hist, table)  # (N, L, d), (N, L)
    n = hist.shape[0]
    score = torch.zeros(n, 1, device=hist.device)  # (N, W) log-prob of each prefix, W from 1 to `beam`
    prefix = torch.zeros(n, 1, 0, dtype=torch.long, device=hist.device)  # (N, W, depth) codes so far
    for depth in range(trie.depth):
        k_level = trie.level_sizes[depth]
        cand = (score[..., None] + model.next_logprobs(memory, pad, prefix)).flatten(1)  # (N, W * K)
        score, flat = cand.topk(min(beam, cand.shape[1]), dim=1)  # (N, W')
        parent, code = flat // k_level, flat % k_level
        prefix = torch.cat([prefix.gather(1, parent[..., None].expand(-1, -1, depth)), code[..., None]], dim=-1)
    finished = score > NEG_INF
    node = trie.items_of(prefix)  # (N, W) item index, -1 for no item's ID
    n_invalid = int((finished & (node < 0)).sum())
    items = torch.where(finished, node, -1)
    if excluded is not None:
        dropped = (items >= 0) & excluded.gather(1, items.clamp(min=0))
        order = torch.sort(dropped.int(), dim=1, stable=True).indices  # kept beams first, in score order
        dropped = dropped.gather(1, order)
        items = items.gather(1, order).masked_fill(dropped, -1)
        score = score.gather(1, order).masked_fill(dropped, NEG_INF)
    items, score = _fill(items, score, beam)
    return items, score, n_invalid


@torch.no_grad()
def brute_force_topk(
    model: TigerGenerator,
    codes: np.ndarray | torch.Tensor,
    histories: np.ndarray | torch.Tensor,
    k: int,
    exclude_items: np.ndarray | torch.Tensor | None = None,
    table: int | None = None,
) -> BeamResult:
    """Exact top-``k`` items per user by the full teacher-forced log-prob of every valid ID.

    ``codes (n_items, D)`` are the IDs of the table the users decode under,
    ``table`` that table's index (None = 0; it selects the history tokens).
    Reference for tests on tiny catalogues (cost ``U x n_items`` decoder runs):
    each ID is decoded alone against a copy of the user's memory, a different
    code path from :func:`beam_search`'s packed beams.
    """
    codes = torch.as_tensor(np.asarray(codes), dtype=torch.long)
    if codes.ndim != 2:
        raise ValueError(f"codes must be one ID table (n_items, D), got shape {tuple(codes.shape)}; pass codes[table]")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    codes = codes.to(device)
    histories = torch.as_tensor(np.asarray(histories), dtype=torch.long, device=device)
    n_items = len(codes)
    excluded = None if exclude_items is None else exclusion_mask(exclude_items, n_items, device)
    items, scores = [], []
    for u in range(len(histories)):
        memory, pad = model.encode(histories[u : u + 1], table)
        s = model.score_ids(memory.expand(n_items, -1, -1), pad.expand(n_items, -1), codes)  # (n_items,)
        if excluded is not None:
            s = s.masked_fill(excluded[u], NEG_INF)
        top, idx = s.topk(min(k, n_items))
        idx = torch.where(top > NEG_INF, idx, -1)
        fill = k - len(idx)
        items.append(torch.cat([idx, idx.new_full((fill,), -1)]).cpu().numpy())
        scores.append(torch.cat([top, top.new_full((fill,), NEG_INF)]).cpu().numpy())
    model.train(was_training)
    return BeamResult(np.stack(items), np.stack(scores), 0)
