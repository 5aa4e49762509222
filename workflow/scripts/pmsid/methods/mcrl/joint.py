"""MCRL's joint objective on top of the generator (docs/METHOD.md section 5).

    L_total = L_ID + lambda2 * (L_user + a * L_intra + b * L_inter)

``L_ID`` is :meth:`TigerGenerator.loss` (PMAT's personalized tables
included: every row reads its history and target under its user's table);
the bracket is :func:`pmsid.methods.mcrl.losses.mcrl_loss` over three InfoNCE
losses on the batch's target items. For a batch of N rows (history
``(N, cap)``, target ``(N,)``, table ``(N,)``), with the dataset's M
modalities:

- user context ``u_n = W_u mean_{l not pad} memory[n, l] + w_u`` ``(N, d_out)``:
  the mean of the encoder memory over the row's non-padding positions,
  projected (:meth:`JointModel.user_context`);
- item representation ``e_n = id_repr(target_n, table_n)`` ``(N, d_out)``: the
  projected sum of the target's ID-token embeddings under the row's table
  (:class:`~pmsid.methods.mcrl.losses.IdRepresentation`, sharing the
  generator's ``tok_emb``);
- ``L_user = user_preference_loss(u, e, tau, groups)``;
- ``L_intra = intra_modal_loss_multi(views(e), {m: labels[m][target]}, tau)``:
  heads ``V_m(e_n) (N, d_out)`` on the ID representation
  (:class:`~pmsid.methods.mcrl.losses.ModalityViews`), positives the items'
  k-means pseudo-labels per modality;
- ``L_inter = inter_modal_loss({"id": e, m: c_m for m}, tau, items=target)``
  with the content views ``c_m = g_m(f_m[target]) (N, d_out)``: each
  modality's standardized raw features ``f_m (n_items, d_m)`` (the feature
  files) through its own encoder ``g_m``
  (:class:`~pmsid.methods.mcrl.losses.ContentViews`). The M + 1 views are
  contrasted over all their ``(M + 1) M / 2`` pairs, equally weighted (for
  text and image: id–text, id–image, text–image); rows with the same target
  item are positives of each other.

Why the ID representation is one of L_inter's views: the content views
alone (text–image) would train only the encoders ``g_m``, never the
generator, since no ID token enters them. The id–modality pairs are what
reach ``tok_emb``: they pull each item's ID representation towards its own
content in every modality and away from the other items'. The text–image
pair makes the encoders agree on the item across modalities, so the content
targets the ID representation is tied to are themselves cross-modal.
L_intra keeps heads on the ID representation: its modality semantics come
from the pseudo-labels, and heads on frozen content features would not move
the generator at all.

The thesis's ``lambda1 * L_cons`` is not a term here: it is trained with
PMAT's preference network (config ``pmat.lambda1``), not with the generator.

Config (:data:`DEFAULTS`; an unknown key fails naming it):
    lambda2 0.1: weight of the MCRL bracket; 0 is PMAT (or TIGER) alone.
    a 1.0, b 1.0: weights of L_intra and L_inter inside the bracket.
    tau 0.1: InfoNCE temperature of all three losses (> 0).
    d_out 64: width of the ID representation, the user context and the views.
    view_hidden None: hidden width of each L_intra head and each content
        encoder (None: one Linear).
    terms ["user", "intra", "inter"]: the MCRL losses of this model (the
        ablations: each alone, each pair, all three). L_user has no weight of
        its own inside the bracket, so "L_intra alone" is ``terms: [intra]``.

A loss is *configured* when it is in ``terms`` and its weight is non-zero
(``lambda2`` for L_user; ``lambda2 * a``, ``lambda2 * b`` for the others).
Only configured losses are ever computed; a step's ``terms`` argument (from
:func:`active_terms`) narrows them further. When no loss is active the total
*is* the generator's loss tensor: the same value bit for bit and the same
gradients, so PMAT alone is reproduced exactly.

When L_user is active the encoder runs once: its memory feeds both the
decoder (L_ID, computed as :meth:`TigerGenerator.loss` does, in the same
order so dropout draws the same masks) and the user context. A test checks
that this L_ID equals ``generator.loss`` bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from numbers import Integral, Real

import torch
from torch import nn

from pmsid.defaults import section_defaults
from pmsid.methods.mcrl.losses import (
    LOSS_NAMES,
    ContentViews,
    IdRepresentation,
    ModalityViews,
    inter_modal_loss,
    intra_modal_loss_multi,
    mcrl_loss,
    user_preference_loss,
)
from pmsid.models.generator import TigerGenerator

# The weights, temperature and head sizes take the config schema's mcrl
# defaults; terms is this module's own (see above).
DEFAULTS = {
    **{key: section_defaults("mcrl")[key] for key in ("lambda2", "a", "b", "tau", "d_out", "view_hidden")},
    "terms": list(LOSS_NAMES),
}
SCHEDULES = ("joint", "two_stage", "alternating")
COMPONENT_NAMES = ("id", *LOSS_NAMES)
COMPONENT_COLUMNS = ["epoch", "step", "total", *COMPONENT_NAMES]
ID_VIEW = "id"  # L_inter's name for the ID representation among the modality views


# --- config -------------------------------------------------------------------------


def _check_terms(terms, name: str) -> frozenset[str]:
    if isinstance(terms, str) or not isinstance(terms, Iterable):
        raise ValueError(f"{name} must be a collection of loss names from {LOSS_NAMES}, got {terms!r}")
    terms = list(terms)
    unknown = sorted({str(t) for t in terms} - set(LOSS_NAMES))
    if unknown:
        raise ValueError(f"{name} holds unknown MCRL loss name(s) {unknown}; valid names are {list(LOSS_NAMES)}")
    return frozenset(terms)


def resolve_cfg(cfg: Mapping | None, modalities: Sequence[str]) -> dict:
    """``cfg`` over :data:`DEFAULTS`, checked against the dataset's ``modalities``.

    Fails naming the key: an unknown key, a negative or non-finite weight,
    ``tau <= 0``, ``d_out`` or ``view_hidden`` not a positive integer, an
    unknown name in ``terms``, ``a > 0`` without modalities, ``b > 0`` with
    fewer than two.
    """
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"MCRL: unknown config key(s) {unknown}; valid keys are {sorted(DEFAULTS)}")
    out = {**DEFAULTS, **cfg}
    for key in ("lambda2", "a", "b"):
        w = out[key]
        if isinstance(w, bool) or not isinstance(w, Real) or not math.isfinite(w) or w < 0:
            raise ValueError(f"MCRL: {key} must be a finite number >= 0, got {w!r}")
        out[key] = float(w)
    tau = out["tau"]
    if isinstance(tau, bool) or not isinstance(tau, Real) or not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"MCRL: tau (the InfoNCE temperature) must be a finite number > 0, got {tau!r}")
    out["tau"] = float(tau)
    for key in ("d_out", "view_hidden"):
        dim = out[key]
        if key == "view_hidden" and dim is None:
            continue
        if isinstance(dim, bool) or not isinstance(dim, Integral) or dim < 1:
            raise ValueError(f"MCRL: {key} must be an integer >= 1, got {dim!r}")
    out["terms"] = sorted(_check_terms(out["terms"], "MCRL: terms"), key=LOSS_NAMES.index)
    n = len(modalities)
    if out["a"] > 0 and n < 1:
        raise ValueError("MCRL: a > 0 but the dataset has no modality: L_intra needs at least one; set a: 0")
    if out["b"] > 0 and n < 2:
        raise ValueError(
            f"MCRL: b = {out['b']} but the dataset has {n} modality(ies) {list(modalities)}: "
            f"L_inter needs at least two modalities; set b: 0"
        )
    return out


def configured_terms(cfg: Mapping) -> frozenset[str]:
    """The MCRL losses a resolved ``cfg`` trains with: in ``terms`` and with a non-zero weight."""
    if cfg["lambda2"] == 0:
        return frozenset()
    weight = {"user": 1.0, "intra": cfg["a"], "inter": cfg["b"]}
    return frozenset(name for name in cfg["terms"] if weight[name] > 0)


# --- the joint model ------------------------------------------------------------------


class JointModel(nn.Module):
    """The generator plus MCRL's heads, as one module (one optimizer, one state dict).

    ``generator``: a :class:`TigerGenerator` (``codes (P, n_items, D)``);
    ``modalities``: the dataset's modality names (keys of ``labels`` and
    ``features``); ``cfg``: see :data:`DEFAULTS` and the module docstring;
    ``features``: ``{modality: FloatTensor (n_items, d_m)}`` the items' raw
    content features, row i = item i (required while L_inter is configured;
    checked against ``modalities`` and ``n_items`` whenever given).

    Submodules: ``generator``; ``id_repr``
    (``IdRepresentation.from_generator(generator, d_out)``, whose ``tok_emb``
    *is* ``generator.tok_emb``); ``user_proj`` (``Linear(d_model, d_out)``);
    ``views`` (:class:`ModalityViews` ``d_out -> d_out`` per modality, built
    only when L_intra is configured, else None); ``content``
    (:class:`ContentViews` ``d_m -> d_out`` per modality holding the
    standardized features as non-persistent buffers, built only when L_inter
    is configured, else None). The shared token embedding is registered
    under both ``generator`` and ``id_repr``; ``parameters()`` yields it once,
    so build the optimizer from this module.
    """

    def __init__(
        self,
        generator: TigerGenerator,
        modalities: Sequence[str],
        cfg: Mapping | None = None,
        features: Mapping[str, torch.Tensor] | None = None,
    ):
        super().__init__()
        if not isinstance(generator, TigerGenerator):
            raise ValueError(f"generator must be a TigerGenerator, got {type(generator).__name__}")
        if isinstance(modalities, str):
            raise ValueError(f"modalities must be a list of modality names, got the string {modalities!r}")
        names = list(modalities)
        if len(set(names)) != len(names) or not all(isinstance(m, str) and m for m in names):
            raise ValueError(f"modalities must be distinct non-empty names, got {names}")
        self.cfg = resolve_cfg(cfg, names)
        self.modalities = names
        self.configured = configured_terms(self.cfg)
        d_out, hidden = self.cfg["d_out"], self.cfg["view_hidden"]
        self.generator = generator
        self.id_repr = IdRepresentation.from_generator(generator, d_out)
        self.user_proj = nn.Linear(generator.d_model, d_out)
        self.views = ModalityViews(names, d_out, d_out, hidden) if "intra" in self.configured else None
        if features is not None:
            self._check_features(features)
        self.content = None
        if "inter" in self.configured:
            if features is None:
                raise ValueError(
                    f"features is required while L_inter is configured (b = {self.cfg['b']}): pass the items' "
                    f"content features {{modality: FloatTensor (n_items, d)}} for {names}, or set b: 0"
                )
            if ID_VIEW in names:
                raise ValueError(f"modality name {ID_VIEW!r} is L_inter's name for the ID view; rename the modality")
            self.content = ContentViews({m: features[m] for m in names}, d_out, hidden)

    def _check_modalities(self, mapping, name: str, shape: str, owner: str) -> None:
        """Fail naming ``name`` unless ``mapping`` is a Mapping keyed by exactly :attr:`modalities`."""
        if not isinstance(mapping, Mapping):
            raise ValueError(f"{name} must map modality names to {shape} tensors, got {type(mapping).__name__}")
        missing = [m for m in self.modalities if m not in mapping]
        extra = [m for m in mapping if m not in self.modalities]
        if missing or extra:
            raise ValueError(
                f"{name} has modalities {list(mapping)}, {owner} {self.modalities} "
                f"(missing {missing}, unexpected {extra})"
            )

    def _check_features(self, features) -> None:
        """Fail naming ``features`` unless it maps exactly :attr:`modalities` to ``(n_items, d)`` matrices."""
        self._check_modalities(features, "features", "(n_items, d)", "the dataset")
        n_items = self.generator.n_items
        for m in self.modalities:
            x = features[m]
            if not torch.is_tensor(x) or not x.is_floating_point() or x.dim() != 2 or len(x) != n_items:
                raise ValueError(
                    f"features[{m!r}] must be a floating tensor of shape (n_items={n_items}, d), got {x!r:.80}"
                )

    # ------------------------------------------------------------ representations
    def _pool(self, memory: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """``user_proj`` of the mean of ``memory (N, L, d)`` over positions where ``pad (N, L)`` is False."""
        keep = (~pad).unsqueeze(-1).to(memory.dtype)  # (N, L, 1)
        # encode() leaves every row at least one position, so the count is >= 1.
        mean = (memory * keep).sum(dim=1) / keep.sum(dim=1)  # (N, d_model)
        return self.user_proj(mean)  # (N, d_out)

    def user_context(self, history: torch.Tensor, table: int | torch.Tensor | None = None) -> torch.Tensor:
        """Users' context ``(N, d_out)``: the mean encoder memory of ``history (N, cap)``, projected."""
        memory, pad = self.generator.encode(history, table)
        return self._pool(memory, pad)

    # -------------------------------------------------------------------- losses
    def active(self, terms: Iterable[str] | None = None) -> frozenset[str]:
        """The configured losses narrowed to ``terms`` (None: all configured)."""
        if terms is None:
            return self.configured
        return self.configured & _check_terms(terms, "terms")

    def _target_labels(self, labels, target: torch.Tensor) -> dict[str, torch.Tensor]:
        if labels is None:
            raise ValueError(
                f"labels is required while L_intra is active (a = {self.cfg['a']}): pass the items' pseudo-labels "
                f"{{modality: LongTensor (n_items,)}} for {self.modalities}, or set a: 0"
            )
        self._check_modalities(labels, "labels", "(n_items,)", "the model")
        out = {}
        for m in self.modalities:
            lab = labels[m]
            n_items = self.generator.n_items
            if (
                not torch.is_tensor(lab)
                or lab.is_floating_point()
                or lab.dtype == torch.bool
                or lab.shape != (n_items,)
            ):
                raise ValueError(
                    f"labels[{m!r}] must be an integer tensor of shape (n_items={n_items},), got {lab!r:.80}"
                )
            out[m] = lab.to(target.device)[target]  # (N,)
        return out

    def loss_components(
        self,
        history: torch.Tensor,
        target: torch.Tensor,
        table: int | torch.Tensor | None = None,
        labels: Mapping[str, torch.Tensor] | None = None,
        groups: torch.Tensor | None = None,
        terms: Iterable[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The unweighted losses of a batch as scalar tensors.

        ``history (N, cap)`` item indices (PAD = -1, left-padded), ``target
        (N,)`` the next items, ``table`` None / int / LongTensor ``(N,)`` (each
        row's ID table), ``labels {modality: LongTensor (n_items,)}`` the
        items' pseudo-labels (required while L_intra is active), ``groups
        (N,)`` optional user groups for L_user (for example each user's PMAT
        prototype; users of one group share positives), ``terms`` narrows the
        configured losses (see :meth:`active`). L_inter reads the content
        features given at construction.

        Returns ``{"id": L_ID}`` plus ``"user"``, ``"intra"``, ``"inter"`` for
        the active losses only. L_user and L_inter use in-batch negatives and
        need N >= 2.
        """
        if not torch.is_tensor(history) or history.dim() != 2 or history.is_floating_point():
            raise ValueError(f"history must be an integer (N, cap) tensor of item indices, got {history!r:.80}")
        if not torch.is_tensor(target) or target.is_floating_point() or target.shape != history.shape[:1]:
            raise ValueError(f"target must be an integer tensor of shape (N={len(history)},), got {target!r:.80}")
        active = self.active(terms)
        target_labels = self._target_labels(labels, target) if "intra" in active else None

        out = {}
        if "user" in active:
            memory, pad = self.generator.encode(history, table)  # encoder once, for L_ID and the context
            out["id"] = self.generator.loss_from_memory(memory, pad, target, table)
            user = self._pool(memory, pad)  # (N, d_out)
        else:
            out["id"] = self.generator.loss(history, target, table)
        if not active:
            return out

        item = self.id_repr(target, table)  # (N, d_out)
        tau = self.cfg["tau"]
        if "user" in active:
            out["user"] = user_preference_loss(user, item, tau, groups)
        if "intra" in active:
            out["intra"] = intra_modal_loss_multi(self.views(item), target_labels, tau)  # views {m: (N, d_out)}
        if "inter" in active:
            views = {ID_VIEW: item, **self.content(target)}  # {"id" and each modality: (N, d_out)}
            out["inter"] = inter_modal_loss(views, tau, items=target)
        return out

    def loss(
        self,
        history: torch.Tensor,
        target: torch.Tensor,
        table: int | torch.Tensor | None = None,
        labels: Mapping[str, torch.Tensor] | None = None,
        groups: torch.Tensor | None = None,
        terms: Iterable[str] | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``L_total = L_ID + lambda2 * (L_user + a * L_intra + b * L_inter)`` over the active losses.

        Arguments as in :meth:`loss_components`. Returns the scalar total (to
        backpropagate) and ``{name: float}`` of the components computed (for
        :func:`component_row`). With no active MCRL loss the total is the
        generator's own loss tensor, untouched.
        """
        components = self.loss_components(history, target, table, labels, groups, terms)
        total = components["id"]
        mcrl = {name: value for name, value in components.items() if name != "id"}
        if mcrl:
            total = total + mcrl_loss(mcrl, self.cfg["lambda2"], self.cfg["a"], self.cfg["b"])
        # One device sync for all the logged values.
        values = torch.stack([v.detach().float() for v in components.values()]).tolist()
        return total, dict(zip(components, values))


# --- schedules and logging --------------------------------------------------------------


def active_terms(schedule: str, epoch: int, step: int, stage1_epochs: int) -> set[str]:
    """The MCRL losses on at optimizer step ``step`` of epoch ``epoch`` (docs/METHOD.md section 5).

    ``epoch`` counts from 1; ``step`` is the run's global optimizer step,
    counted from 1 (the n-th update of the run; train_loop's ``state["step"]``
    once the step is done, so its value *before* the step plus one).

    - ``"joint"``: every loss at every step (``stage1_epochs`` is ignored).
    - ``"two_stage"``: epochs ``1 .. stage1_epochs`` train the generator
      alone (PMAT's tables, no MCRL loss); from epoch ``stage1_epochs + 1``
      every loss.
    - ``"alternating"``: stage 1 as in two_stage; afterwards the MCRL losses
      are on at odd global steps and off at even ones (``step % 2 == 1``).

    Returns a subset of LOSS_NAMES (all of them or none); :meth:`JointModel.loss`
    intersects it with the model's configured losses.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
    for name, value, low in (("epoch", epoch, 1), ("step", step, 1), ("stage1_epochs", stage1_epochs, 0)):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if schedule == "joint":
        return set(LOSS_NAMES)
    if epoch <= stage1_epochs:
        return set()
    if schedule == "two_stage" or step % 2 == 1:
        return set(LOSS_NAMES)
    return set()


def component_row(epoch: int, step: int, total, components: Mapping[str, float]) -> dict:
    """One row of the per-step loss log, keys :data:`COMPONENT_COLUMNS`; absent components are NaN."""
    unknown = sorted(set(components) - set(COMPONENT_NAMES))
    if unknown:
        raise ValueError(f"components holds unknown name(s) {unknown}; valid names are {list(COMPONENT_NAMES)}")
    if torch.is_tensor(total):
        total = total.detach()
    row = {"epoch": int(epoch), "step": int(step), "total": float(total)}
    for name in COMPONENT_NAMES:
        row[name] = float(components[name]) if name in components else math.nan
    return row
