"""MCRL losses: three InfoNCE losses on ID representations (docs/METHOD.md section 5).

MCRL trains the generator jointly with contrastive losses on the
representations of items' semantic IDs:

    L_total = L_ID + lambda2 * (L_user + a * L_intra + b * L_inter)

(L_ID: the generator's loss; this module gives the bracket, :func:`mcrl_loss`).
The thesis's ``lambda1 * L_cons`` is trained with PMAT's preference network
(config ``pmat.lambda1``), not with the generator. All three losses are the
multi-positive InfoNCE of :func:`info_nce` on cosine similarities
``s(x, y) = cos(x, y) / tau``:

    InfoNCE(q_b) = 1/|P(b)| sum_{k in P(b)} -log( exp(s(q_b, k_k)) / sum_{j not excluded} exp(s(q_b, k_j)) )

averaged over the queries with at least one positive (supervised-contrastive
form, Khosla et al. 2020: each positive is one term, the denominator is all
keys). With one positive per query it is exactly
``cross_entropy(logits, target)``. Shapes: B batch rows, d features.

- ``L_user`` (:func:`user_preference_loss`): queries are the users' context
  representations ``(B, d)``, keys the ID representations of their next items
  ``(B, d)``. Row b's positive is item b; with ``groups`` (for example each
  user's PMAT preference prototype) the items of every other row whose user
  is in the same group are positives too, so items preferred by users with
  similar modality weights are pulled together and items of users with
  different preferences pushed apart. The other in-batch items are negatives.
- ``L_intra`` (:func:`intra_modal_loss`, one modality): within the batch, items
  with the same k-means pseudo-label of that modality (docs/METHOD.md section 3,
  K = 512 in MACRec) are positives of each other; an item is never its own
  positive and is left out of its own denominator. Items whose label no other
  row shares have no positive and are skipped.
  :func:`intra_modal_loss_multi` averages it over modalities.
- ``L_inter`` (:func:`inter_modal_loss`): for every pair of views (m, n), the
  m-view and the n-view of the same item are positives, the n-views of the
  other items negatives; symmetric (m -> n and n -> m, the CLIP loss),
  averaged over the pairs.

Design
------
**The ID representation is the generator's own.** :class:`IdRepresentation`
sums the embeddings of an item's D ID tokens and projects the sum
(``Linear(d_model, d_out)``):

    e_i = W sum_j tok_emb[offset_j + c_j(i)] + w_0

``tok_emb`` is the generator's ``nn.Embedding`` itself (a shared, tied
module, not a copy), so the MCRL losses move the very token embeddings the
generator reads and predicts with. The ID tables (``codes (P, N, D)``) and
``offsets (D,)`` are the generator's buffers, shared as non-persistent
buffers: they belong to the generator and are saved with it; build this
module with :meth:`IdRepresentation.from_generator`. Because ``tok_emb`` is a
registered submodule of both, collect parameters for an optimizer from one
parent module holding both (``nn.Module.parameters`` drops the duplicate), not
by concatenating the two lists. The sum is the same pooling as the
generator's ``encoder_tokens="item"`` mode.

**L_intra's views are heads on the ID representation.** :class:`ModalityViews`
holds one small head per modality (a Linear, or a two-layer MLP) mapping
``e_i`` to that modality's view ``V_m(e_i)``; the modality's semantics enter
through its pseudo-labels, and the loss shapes the ID token embeddings.

**L_inter's modality views come from the modalities' content.**
:class:`ContentViews` holds each modality's raw item features ``f_m(i)``
``(n_items, d_m)``, standardized per dimension over the catalogue
(:func:`standardize`), and one encoder per modality ``g_m: d_m -> d_out``
(a Linear, or the same two-layer MLP). The joint model contrasts the views
``{"id": e_i, m: g_m(f_m(i)) for each modality m}`` with
:func:`inter_modal_loss` over all their pairs: the modality–modality pairs
(text–image) make the encoders agree on an item across modalities and train
only the encoders; the id–modality pairs tie the item's ID representation to
its content and are the only part of L_inter that reaches the generator.

Losses with in-batch negatives (L_user, L_inter) need B >= 2 rows; a batch
where no query has a positive (for example L_intra with all labels distinct)
gives a zero loss that is still attached to the graph, so ``backward`` works
and adds nothing.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from numbers import Integral, Real

import torch
import torch.nn.functional as F
from torch import nn

LOSS_NAMES = ("user", "intra", "inter")


# --- InfoNCE --------------------------------------------------------------------


def _check_temperature(temperature) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, Real) or not temperature > 0:
        raise ValueError(f"temperature (tau) must be a number > 0, got {temperature!r}")
    if not math.isfinite(temperature):
        raise ValueError(f"temperature (tau) must be finite, got {temperature!r}")


def _check_mask(mask: torch.Tensor, name: str, shape: tuple[int, int]) -> None:
    if not torch.is_tensor(mask) or mask.dtype != torch.bool or tuple(mask.shape) != shape:
        got = f"{mask.dtype} {tuple(mask.shape)}" if torch.is_tensor(mask) else f"{type(mask).__name__}"
        raise ValueError(f"{name} must be a bool tensor of shape (B, K) = {shape}, got {got}")


def info_nce(
    queries: torch.Tensor,
    keys: torch.Tensor,
    positives: torch.Tensor,
    temperature: float,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multi-positive InfoNCE of ``queries (B, d)`` against ``keys (K, d)``; returns a scalar.

    ``positives (B, K)`` bool marks each query's positive keys; ``exclude
    (B, K)`` bool (optional) removes keys from a query's denominator (for
    example the query itself when queries and keys are the same set). An
    excluded key is never a positive. Logits are cosine similarities over
    ``temperature`` (computed in float32); for query b with positive set P(b):

        loss_b = mean_{k in P(b)} [ -s_bk + logsumexp_{j not excluded} s_bj ]

    and the result is the mean of ``loss_b`` over the queries with at least
    one positive; the others are skipped. If no query has a positive, the
    result is a zero that is still attached to the inputs' graph (its
    gradient is zero), so adding it to a loss and calling ``backward`` works.
    """
    _check_temperature(temperature)
    if queries.dim() != 2:
        raise ValueError(f"queries must be (B, d), got shape {tuple(queries.shape)}")
    if keys.dim() != 2 or keys.shape[1] != queries.shape[1]:
        raise ValueError(f"keys must be (K, d={queries.shape[1]}) like queries, got shape {tuple(keys.shape)}")
    shape = (queries.shape[0], keys.shape[0])
    _check_mask(positives, "positives", shape)
    if exclude is not None:
        _check_mask(exclude, "exclude", shape)
        positives = positives & ~exclude

    sim = (F.normalize(queries, dim=-1) @ F.normalize(keys, dim=-1).T).float() / temperature  # (B, K)
    has_pos = positives.any(dim=1)  # (B,)
    if not has_pos.any():
        return sim.sum() * 0.0  # zero, attached to the graph
    # Only rows with a positive go on: each has a non-excluded key, so its
    # logsumexp is finite (a fully excluded row would put NaN in the gradient).
    logits, pos = sim[has_pos], positives[has_pos]  # (B', K)
    if exclude is not None:
        logits = logits.masked_fill(exclude[has_pos], float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)  # (B', K)
    # torch.where, not a product: excluded entries hold -inf, and -inf * 0 is NaN.
    per_query = -torch.where(pos, log_prob, 0.0).sum(dim=1) / pos.sum(dim=1)  # (B',)
    return per_query.mean()


# --- ID representation and modality views -----------------------------------------


class IdRepresentation(nn.Module):
    """An item's ID representation: the projected sum of its ID-token embeddings.

    ``tok_emb`` is the generator's token embedding (shared, so gradients reach
    it); ``codes`` ``(n_items, D)`` or ``(P, n_items, D)`` the ID tables and
    ``offsets (D,)`` the first token of each level (token = ``offsets[j] +
    code``), as in :class:`pmsid.models.generator.TigerGenerator`. Prefer
    :meth:`from_generator`, which passes the generator's own.
    """

    def __init__(self, tok_emb: nn.Embedding, codes: torch.Tensor, offsets: torch.Tensor, d_out: int):
        super().__init__()
        if not isinstance(tok_emb, nn.Embedding):
            raise ValueError(f"tok_emb must be the generator's nn.Embedding, got {type(tok_emb).__name__}")
        codes = torch.as_tensor(codes)
        if codes.dim() == 2:
            codes = codes[None]  # one table: P = 1
        if codes.dim() != 3 or codes.is_floating_point() or (codes < 0).any():
            raise ValueError(
                f"codes must be a non-negative integer (n_items, D) or (P, n_items, D) tensor, got {codes.dtype} "
                f"{tuple(codes.shape)}"
            )
        offsets = torch.as_tensor(offsets)
        if offsets.shape != codes.shape[2:] or offsets.is_floating_point():
            raise ValueError(f"offsets must be an integer (D={codes.shape[2]},) tensor, got {tuple(offsets.shape)}")
        top = int((codes.amax(dim=(0, 1)) + offsets).max())
        if top >= tok_emb.num_embeddings:
            raise ValueError(
                f"codes + offsets reach token {top} but tok_emb has {tok_emb.num_embeddings} rows; "
                f"pass the codes and offsets of the generator that owns tok_emb"
            )
        if not (isinstance(d_out, Integral) and d_out >= 1):
            raise ValueError(f"d_out must be an integer >= 1, got {d_out!r}")
        self.n_tables, self.n_items, self.n_levels = codes.shape
        self.tok_emb = tok_emb  # shared with the generator, not copied
        # The tables belong to the generator (saved with it): not in this module's state_dict.
        self.register_buffer("codes", codes.long(), persistent=False)  # (P, n_items, D)
        self.register_buffer("offsets", offsets.long(), persistent=False)  # (D,)
        self.proj = nn.Linear(tok_emb.embedding_dim, d_out)

    @classmethod
    def from_generator(cls, generator: nn.Module, d_out: int) -> IdRepresentation:
        """The ID representation over a TigerGenerator's ``tok_emb``, ``codes`` and ``offsets``."""
        return cls(generator.tok_emb, generator.codes, generator.offsets, d_out)

    def item_tokens(self, items: torch.Tensor, table: int | torch.Tensor | None = None) -> torch.Tensor:
        """Vocabulary tokens ``(..., D)`` of item indices ``items (...)`` under ``table``.

        ``table`` as in ``TigerGenerator.item_codes``: None (table 0), an int
        (every row), or an integer tensor ``(N,)`` giving the table of each row
        of ``items (N, ...)``.
        """
        if not torch.is_tensor(items) or items.is_floating_point():
            raise ValueError(f"items must be an integer tensor of item indices, got {items!r:.80}")
        if items.numel() and (items.min() < 0 or items.max() >= self.n_items):
            raise ValueError(
                f"items must be item indices in [0, {self.n_items}), got {int(items.min())}..{int(items.max())}"
            )
        if table is None:
            table = 0
        if isinstance(table, Integral):
            if not 0 <= table < self.n_tables:
                raise ValueError(f"table must be in [0, {self.n_tables}), got {table}")
            codes = self.codes[table][items]
        else:
            if (
                not torch.is_tensor(table)
                or table.is_floating_point()
                or items.dim() == 0
                or table.shape != items.shape[:1]
            ):
                raise ValueError(
                    f"table must be None, an int or an integer tensor of shape (N,) = {tuple(items.shape[:1])} "
                    f"(one table per row of items), got {table!r:.80}"
                )
            if ((table < 0) | (table >= self.n_tables)).any():
                raise ValueError(f"table must hold indices in [0, {self.n_tables}), got {table.min()}..{table.max()}")
            rows = table.view(-1, *([1] * (items.dim() - 1)))  # (N, 1, ...) broadcasts against items
            codes = self.codes[rows, items]
        return codes + self.offsets  # (..., D)

    def forward(self, items: torch.Tensor, table: int | torch.Tensor | None = None) -> torch.Tensor:
        """ID representations ``(..., d_out)`` of ``items (...)`` under ``table`` (see :meth:`item_tokens`)."""
        summed = self.tok_emb(self.item_tokens(items, table)).sum(dim=-2)  # (..., d_model)
        return self.proj(summed)


def _check_modality_names(names: list[str]) -> None:
    if not names or len(set(names)) != len(names):
        raise ValueError(f"modalities must be distinct names, at least one; got {names}")
    for name in names:
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"modality names must be non-empty strings without '.', got {name!r}")


def _head(d_in: int, d_out: int, hidden: int | None) -> nn.Module:
    """``Linear(d_in, d_out)``, or with ``hidden`` ``Linear(d_in, hidden) -> GELU -> Linear(hidden, d_out)``."""
    for dim_name, dim in (("d_in", d_in), ("d_view", d_out), ("hidden", hidden)):
        if dim is not None and not (isinstance(dim, Integral) and dim >= 1):
            raise ValueError(f"{dim_name} must be an integer >= 1, got {dim!r}")
    if hidden is None:
        return nn.Linear(d_in, d_out)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))


class ModalityViews(nn.Module):
    """One projection head per modality, mapping ID representations to modality views (L_intra).

    ``modalities``: the modality names (for example ``("text", "image")``);
    each head is ``Linear(d_in, d_view)``, or with ``hidden`` a two-layer MLP
    ``Linear(d_in, hidden) -> GELU -> Linear(hidden, d_view)``.
    ``forward(id_repr (..., d_in))`` returns ``{modality: (..., d_view)}``.
    """

    def __init__(self, modalities: Sequence[str], d_in: int, d_view: int, hidden: int | None = None):
        super().__init__()
        names = list(modalities)
        _check_modality_names(names)
        self.heads = nn.ModuleDict({name: _head(d_in, d_view, hidden) for name in names})

    @property
    def modalities(self) -> list[str]:
        return list(self.heads.keys())

    def forward(self, id_repr: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: head(id_repr) for name, head in self.heads.items()}


def standardize(features: torch.Tensor) -> torch.Tensor:
    """``features (n_items, d)`` with every column at mean 0 and standard deviation 1 over the items.

    Raw features differ in scale and offset between modalities (MiniLM text
    embeddings are unit vectors with entries of order 0.05, EfficientNet
    image features are non-negative, so they share a large common mean
    direction); standardizing each dimension over the catalogue centres them
    and puts every modality on one scale, so a freshly initialized encoder
    maps any of them to outputs of order 1. A constant column (standard
    deviation below 1e-12) becomes 0. Computed in float64, returned as
    float32.
    """
    x = features.double()
    std = x.std(dim=0, unbiased=False)
    scaled = (x - x.mean(dim=0)) / torch.where(std > 1e-12, std, 1.0)
    return scaled.float()


class ContentViews(nn.Module):
    """Each modality's view of items from that modality's own content features (L_inter).

    ``features``: ``{modality: (n_items, d_m)}`` the raw feature matrices of the
    dataset's modalities, row i = item i (for example the feature files
    ``results/features/{dataset}/{modality}.parquet``); they are stored
    standardized (:func:`standardize`) as non-persistent buffers
    ``features_{modality}``: data, not weights, so they stay out of the
    state dict. Each modality has its own encoder ``g_m``: ``Linear(d_m,
    d_view)``, or with ``hidden`` ``Linear(d_m, hidden) -> GELU ->
    Linear(hidden, d_view)``.

    ``forward(items (...))`` returns ``{modality: g_m(standardize(f_m)[items])
    (..., d_view)}``.
    """

    def __init__(self, features: Mapping[str, torch.Tensor], d_view: int, hidden: int | None = None):
        super().__init__()
        if not isinstance(features, Mapping):
            raise ValueError(f"features must map modality names to (n_items, d) tensors, got {type(features).__name__}")
        names = list(features)
        _check_modality_names(names)
        n_items = None
        for name in names:
            x = features[name]
            if not torch.is_tensor(x) or not x.is_floating_point() or x.dim() != 2 or 0 in x.shape:
                raise ValueError(f"features[{name!r}] must be a non-empty floating (n_items, d) tensor, got {x!r:.80}")
            if not torch.isfinite(x).all():
                raise ValueError(f"features[{name!r}] holds NaN or inf values")
            if n_items is not None and len(x) != n_items:
                raise ValueError(
                    f"features[{name!r}] has {len(x)} rows, features[{names[0]!r}] {n_items}: one per item"
                )
            n_items = len(x)
            self.register_buffer(f"features_{name}", standardize(x), persistent=False)  # (n_items, d_m)
        self.n_items = n_items
        self.encoders = nn.ModuleDict({name: _head(features[name].shape[1], d_view, hidden) for name in names})

    @property
    def modalities(self) -> list[str]:
        return list(self.encoders.keys())

    def forward(self, items: torch.Tensor) -> dict[str, torch.Tensor]:
        if not torch.is_tensor(items) or items.is_floating_point():
            raise ValueError(f"items must be an integer tensor of item indices, got {items!r:.80}")
        if items.numel() and (items.min() < 0 or items.max() >= self.n_items):
            raise ValueError(
                f"items must be item indices in [0, {self.n_items}), got {int(items.min())}..{int(items.max())}"
            )
        return {name: enc(getattr(self, f"features_{name}")[items]) for name, enc in self.encoders.items()}


# --- the three MCRL losses ---------------------------------------------------------


def _check_pair(x: torch.Tensor, y: torch.Tensor, x_name: str, y_name: str) -> None:
    if x.dim() != 2:
        raise ValueError(f"{x_name} must be (B, d), got shape {tuple(x.shape)}")
    if y.shape != x.shape:
        raise ValueError(f"{y_name} must have the shape of {x_name} {tuple(x.shape)}, got {tuple(y.shape)}")


def _check_labels(labels: torch.Tensor, name: str, batch: int) -> None:
    if not torch.is_tensor(labels) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor of shape (B={batch},), got {labels!r:.80}")
    if labels.shape != (batch,):
        raise ValueError(f"{name} must have shape (B={batch},), got {tuple(labels.shape)}")


def _check_in_batch(batch: int, name: str) -> None:
    if batch < 2:
        raise ValueError(
            f"{name} has a batch of {batch} row(s): in-batch negatives need B >= 2 "
            f"(use drop_last=True in the DataLoader or a larger batch)"
        )


def user_preference_loss(
    user_repr: torch.Tensor,
    item_repr: torch.Tensor,
    temperature: float,
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_user (docs/METHOD.md section 5): users' context ``(B, d)`` against their next items' ID representations ``(B, d)``.

    Row b's positive is item b, the other in-batch items its negatives. With
    ``groups (B,)`` integer (for example each user's preference prototype),
    the items of all rows whose user has the same group as user b are
    positives of user b too. Needs B >= 2.
    """
    _check_pair(user_repr, item_repr, "user_repr", "item_repr")
    batch = len(user_repr)
    _check_in_batch(batch, "user_repr")
    positives = torch.eye(batch, dtype=torch.bool, device=user_repr.device)  # (B, B)
    if groups is not None:
        _check_labels(groups, "groups", batch)
        positives = positives | (groups[:, None] == groups[None, :])
    return info_nce(user_repr, item_repr, positives, temperature)


def intra_modal_loss(views: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """L_intra for one modality: ``views (B, d)`` with the same pseudo-label ``labels (B,)`` are positives.

    Self-pairs are neither positives nor in the denominator; items whose label
    no other row shares are skipped (a batch with all labels distinct gives
    an attached zero).
    """
    if views.dim() != 2:
        raise ValueError(f"views must be (B, d), got shape {tuple(views.shape)}")
    batch = len(views)
    _check_labels(labels, "labels", batch)
    self_pair = torch.eye(batch, dtype=torch.bool, device=views.device)  # (B, B)
    same_label = labels[:, None] == labels[None, :]
    return info_nce(views, views, same_label & ~self_pair, temperature, exclude=self_pair)


def intra_modal_loss_multi(
    views: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor], temperature: float
) -> torch.Tensor:
    """L_intra averaged over modalities: ``views[m] (B, d)`` with pseudo-labels ``labels[m] (B,)``."""
    if not views:
        raise ValueError("views must hold at least one modality")
    for m in views:
        if m not in labels:
            raise ValueError(f"labels lacks modality {m!r} (views has {list(views)}, labels {list(labels)})")
    for m in labels:
        if m not in views:
            raise ValueError(f"views lacks modality {m!r} (labels has {list(labels)}, views {list(views)})")
    losses = [intra_modal_loss(views[m], labels[m], temperature) for m in views]
    return torch.stack(losses).mean()


def inter_modal_loss(
    views: Mapping[str, torch.Tensor], temperature: float, items: torch.Tensor | None = None
) -> torch.Tensor:
    """L_inter: ``views[m] (B, d)`` and ``views[n] (B, d)`` of the same item are positives.

    For each pair of views (m, n), the symmetric InfoNCE
    ``(InfoNCE(m -> n) + InfoNCE(n -> m)) / 2`` with the other items' views as
    in-batch negatives; the result is the mean over the ``V (V - 1) / 2``
    pairs of the ``V`` views. Row b's positive is row b; with ``items (B,)``
    (the item of each row) every row holding the same item is a positive too,
    so an item that occurs twice in a batch is not its own negative. Needs at
    least two views and B >= 2.
    """
    names = list(views)
    if len(names) < 2:
        raise ValueError(f"views has {len(names)} modality(ies) {names}: L_inter needs at least two modalities")
    first = views[names[0]]
    if first.dim() != 2:
        raise ValueError(f"views[{names[0]!r}] must be (B, d), got shape {tuple(first.shape)}")
    for m in names[1:]:
        _check_pair(first, views[m], f"views[{names[0]!r}]", f"views[{m!r}]")
    batch = len(first)
    _check_in_batch(batch, "views")
    if items is None:
        same_item = torch.eye(batch, dtype=torch.bool, device=first.device)  # (B, B)
    else:
        _check_labels(items, "items", batch)
        same_item = items[:, None] == items[None, :]  # (B, B), the diagonal included
    losses = []
    for m, n in itertools.combinations(names, 2):
        m_to_n = info_nce(views[m], views[n], same_item, temperature)
        n_to_m = info_nce(views[n], views[m], same_item, temperature)
        losses.append((m_to_n + n_to_m) / 2)
    return torch.stack(losses).mean()


def mcrl_loss(components: Mapping[str, torch.Tensor], lambda2: float, a: float, b: float) -> torch.Tensor:
    """``lambda2 * (L_user + a * L_intra + b * L_inter)`` (docs/METHOD.md section 5).

    ``components`` maps names of ``LOSS_NAMES`` to scalar losses; a missing
    one counts as 0 (the ablations: each loss alone, each pair). A term whose
    weight is 0 is left out, not multiplied by 0, so it adds nothing to the
    value or the gradient even if it is NaN; when no term is left the result
    is a plain zero (no graph).
    """
    weights = {"lambda2": lambda2, "a": a, "b": b}
    for name, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, Real) or not math.isfinite(w) or w < 0:
            raise ValueError(f"MCRL weight {name} must be a finite number >= 0, got {w!r}")
    for name, value in components.items():
        if name not in LOSS_NAMES:
            raise ValueError(f"unknown MCRL loss component {name!r}; expected names from {LOSS_NAMES}")
        if not torch.is_tensor(value) or value.dim() != 0:
            raise ValueError(f"components[{name!r}] must be a scalar tensor, got {value!r:.80}")
    scale = {"user": lambda2, "intra": lambda2 * a, "inter": lambda2 * b}
    terms = [scale[name] * components[name] for name in LOSS_NAMES if name in components and scale[name] != 0]
    if terms:
        return sum(terms[1:], terms[0])
    if components:
        return next(iter(components.values())).new_zeros(())
    return torch.zeros(())
