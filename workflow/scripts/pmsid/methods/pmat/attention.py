"""PMAT Module 1: the user-modality preference network (docs/METHOD.md section 4).

Every item ``i`` has one raw feature vector per modality (text, image, audio,
...; any number ``M >= 2``). The network

1. projects each modality to a shared dimension ``d`` and L2-normalizes it,
   giving ``f_m(i)`` (:class:`ModalityProjector`);
2. reads a user's history as those projected features and returns weights
   ``alpha_u`` on the simplex over the ``M`` modalities, plus a history
   representation ``q_u = sum_m alpha_{u,m} r_{u,m}`` built from per-modality
   history summaries ``r_{u,m}`` (:class:`UserModalityAttention`);
3. fuses an item for a user, ``h_i^u = sum_m alpha_{u,m} f_m(i)``
   (:func:`fuse`, :func:`fuse_np`), the vector PMAT quantizes into ``ID_i^u``.

Behavioural training signal (the thesis asks for one besides the quantizer's
reconstruction loss): next-item InfoNCE between ``q_u`` and the next item's
fused feature *under the user's own weights* (:func:`next_item_infonce`),

    s(u, j) = cos(q_u, h_j^u) / tau,    L = -log softmax_j s(u, j)[target of u]

with the other in-batch targets, each fused under ``alpha_u``, as negatives.
``alpha_u`` appears on both sides of the cosine, so the loss rewards putting
weight on the modalities in which the user's next item resembles the history.

:func:`train_modality_attention` trains projector and attention on the
training prefixes of the leave-one-out protocol; :func:`user_weights` and
:func:`project_features` hand plain numpy arrays to the prototype tokenizer
(``prototypes``) and the drift gate (``drift``).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from pmsid.data.contracts import check_finite
from pmsid.data.sequences import PAD, Sequences, eval_samples, pad_left, training_samples
from pmsid.defaults import section_defaults
from pmsid.methods.pmat.drift import consistency_loss
from pmsid.runtime import resolve_device, seed_everything
from pmsid.train.utils import check_loss

log = logging.getLogger(__name__)

# Configuration of train_modality_attention: the config's pmat.attention keys
# take the schema's defaults (d, hidden, epochs, max_samples_per_epoch,
# batch_size, lr, projector_lr, temperature, patience); the rest are this
# module's own settings. Why projector_lr is a tenth of lr: projections that
# move fast absorb the modalities' relevance globally and leave alpha little
# to do (on the synthetic data, projector_lr = lr gave the same ranking of
# users but a 5x smaller spread of alpha), and slow ones stay near the
# neighbourhood-preserving init.
DEFAULTS = {
    **section_defaults("pmat", "attention"),
    "weight_decay": 0.01,  # AdamW weight decay
    "alpha_temperature": 1.0,  # T of softmax(score / T) over modalities; higher = flatter alpha
    "history_cap": section_defaults("protocol")["history_cap"],  # most recent history items the network reads
    # Projection init: "pca" (per-modality PCA, each modality on its own d // M
    # coordinates), "pca_shared" (every modality's PCA on the same coordinates;
    # the old init, kept to reproduce its failure) or "orthogonal".
    "init": "pca",
    "grad_clip": 1.0,  # max global gradient norm; 0 disables clipping
    # lambda1 L_cons (theorem 3) over simulated updates of the training
    # prefixes; these four are config pmat's own keys (see _consistency_term).
    **{k: section_defaults("pmat")[k] for k in ("lambda1", "window", "lambda_max", "cons_temperature")},
    "progress": True,  # tqdm bar per epoch
}


# ---- module 1: projections, attention, fusion --------------------------------


class ModalityProjector(nn.Module):
    """One linear map per modality to the shared dimension, then L2 norm: ``f_m(i)``.

    ``dims[m]`` is modality m's raw feature dimension. Default init is
    orthogonal; :meth:`init_pca` replaces it with each modality's PCA (centre,
    then rotate onto the top principal axes). The PCA map is an orthogonal
    projection of the centred features, so distances within the kept
    subspace are kept exactly and cosine neighbourhoods of the untrained
    projection are those of the centred raw features (centring removes the
    common direction that makes all sentence embeddings look alike).

    Where the principal axes go matters, because the modalities share the
    ``d`` output coordinates and fusion adds them. ``layout="blocks"`` (the
    default) gives modality m its own ``d // M`` coordinates and its top
    ``d // M`` axes: at init ``f_m(i) . f_m'(j) = 0`` for m != m', fusion is a
    weighted concatenation and ``cos(q_u, h_j^u)`` is a sum of per-modality
    similarities weighted by ``alpha_u``. ``layout="shared"`` puts every
    modality's top ``d`` axes on the same coordinates 1..d: each modality's
    dominant structure (e.g. colour in the image, product kind in the text)
    then lands on the same few coordinates, an item's red picture and some
    kind's description point the same way, and the cross-modal terms
    ``alpha_m alpha_m' f_m(i) . f_m'(j)`` of the fused cosine are large and
    systematic. On planted data that made the learned weights collapse onto
    one modality and rank the users in reverse (docs/METHOD.md section 4 and
    ``bench/planted_recovery.py``). A modality with fewer raw
    dimensions (or items) than its share fills the first rows of it and
    leaves the rest zero.
    """

    def __init__(self, dims: list[int], d: int):
        super().__init__()
        if len(dims) < 2:
            raise ValueError(f"PMAT needs M >= 2 modalities, got dims={dims}")
        self.dims, self.d = list(dims), d
        self.proj = nn.ModuleList(nn.Linear(dim, d) for dim in dims)
        for lin in self.proj:
            nn.init.orthogonal_(lin.weight)
            nn.init.zeros_(lin.bias)

    @torch.no_grad()
    def init_pca(self, features: list[np.ndarray], layout: str = "blocks") -> ModalityProjector:
        """Set each map to the PCA of ``features[m]`` (N, dims[m]); returns self.

        ``layout``: "blocks" (modality m's top ``d // M`` axes on its own
        coordinates ``m * (d // M) ..``) or "shared" (every modality's top
        ``d`` axes on coordinates ``0 .. d - 1``); see the class docstring.
        """
        if layout not in ("blocks", "shared"):
            raise ValueError(f"init_pca: layout must be 'blocks' or 'shared', got {layout!r}")
        width = self.d // len(self.proj) if layout == "blocks" else self.d
        if width < 1:
            raise ValueError(
                f"init_pca: d = {self.d} leaves no coordinate per modality for {len(self.proj)} modalities"
            )
        for m, (lin, x) in enumerate(zip(self.proj, features)):
            x = np.asarray(x, dtype=np.float64)
            if x.shape[1] != self.dims[m]:
                raise ValueError(f"modality {m}: features have dim {x.shape[1]}, the projector expects {self.dims[m]}")
            mean = x.mean(axis=0)
            _, _, vt = np.linalg.svd(x - mean, full_matrices=False)  # vt: (min(N, D), D), rows = principal axes
            k = min(width, vt.shape[0])
            # The sign of a principal axis is arbitrary; fix it (largest entry positive) for reproducibility.
            axes = vt[:k]
            signs = np.sign(axes[np.arange(k), np.abs(axes).argmax(axis=1)])
            axes = axes * np.where(signs == 0, 1.0, signs)[:, None]
            start = m * width if layout == "blocks" else 0
            weight = np.zeros((self.d, x.shape[1]))
            weight[start : start + k] = axes
            lin.weight.copy_(torch.as_tensor(weight, dtype=lin.weight.dtype))
            lin.bias.copy_(torch.as_tensor(-weight @ mean, dtype=lin.bias.dtype))  # W (x - mean)
        return self

    def forward(self, raw: list[torch.Tensor]) -> torch.Tensor:
        """``raw[m]`` (..., dims[m]) -> ``f`` (..., M, d), every ``f[..., m, :]`` of unit norm."""
        return torch.stack([F.normalize(lin(x), dim=-1) for lin, x in zip(self.proj, raw)], dim=-2)


class UserModalityAttention(nn.Module):
    """Modality weights ``alpha_u`` (on the simplex) from a user's history.

    Per modality m, over the real (non-PAD) history items ``i_1 .. i_n``:

    - ``r_{u,m}``: attention pooling of ``f_m(i_h)`` with a learned query per
      modality (zero at init, so it starts as the mean over the history);
    - ``c_{u,m}``: coherence, the mean pairwise cosine between the history's
      items in modality m (0 for fewer than two items). A user whose history
      is tightly clustered in modality m is predictable in m; this is the
      statistic the score needs most and a small MLP on ``r`` alone would have
      to approximate a norm to get it, so it is given explicitly.

    A shared two-layer MLP scores ``[r_{u,m}; c_{u,m}; e_m]`` (``e_m`` a
    learned modality embedding, so one network serves any M), and

        alpha_u = softmax_m(score_{u,m} / T),    q_u = sum_m alpha_{u,m} r_{u,m}.

    The scorer's last layer starts at zero: an untrained network gives the
    uniform weights ``1 / M`` (global fusion), and any personalization it
    shows was learned.
    """

    def __init__(self, n_modalities: int, d: int, hidden: int = 32, alpha_temperature: float = 1.0):
        super().__init__()
        if n_modalities < 2:
            raise ValueError(f"PMAT needs M >= 2 modalities, got {n_modalities}")
        if alpha_temperature <= 0:
            raise ValueError(f"alpha_temperature must be > 0, got {alpha_temperature}")
        self.n_modalities, self.d, self.alpha_temperature = n_modalities, d, alpha_temperature
        self.query = nn.Parameter(torch.zeros(n_modalities, d))  # pooling query per modality
        self.modality_emb = nn.Parameter(0.02 * torch.randn(n_modalities, 8))
        self.scorer = nn.Sequential(nn.Linear(d + 1 + 8, hidden), nn.GELU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.scorer[-1].weight)
        nn.init.zeros_(self.scorer[-1].bias)
        # Coherence is standardized per modality before scoring (set by calibrate()):
        # raw mean cosines sit in a narrow band (e.g. 0.0..0.3) that differs by
        # modality, too small an input for the scorer to pick up quickly.
        self.register_buffer("coherence_mean", torch.zeros(n_modalities))
        self.register_buffer("coherence_std", torch.ones(n_modalities))

    @torch.no_grad()
    def calibrate(self, hist: torch.Tensor, mask: torch.Tensor) -> UserModalityAttention:
        """Set the coherence standardization from histories ``(B, H, M, d)``, ``mask (B, H)``; returns self."""
        _, c = self.summaries(hist, mask)
        c = c[mask.sum(dim=1) >= 2]  # coherence is defined from two items on
        if len(c) >= 2:
            self.coherence_mean.copy_(c.mean(dim=0))
            self.coherence_std.copy_(c.std(dim=0).clamp_min(1e-6))
        return self

    def summaries(self, hist: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """History features ``(B, H, M, d)`` and mask ``(B, H)`` (True = real item) -> ``r (B, M, d)``, ``c (B, M)``."""
        hist = hist * mask[:, :, None, None]  # zero the PAD rows
        m = mask.float()[:, :, None]  # (B, H, 1)
        n = m.sum(dim=1)  # (B, 1) real items per history
        # Attention pooling over history positions, per modality. The features are
        # unit vectors, so <f, query> is at most |query|; sqrt(d) lets a query of
        # unit-scale entries reach a sharp pooling.
        logits = torch.einsum("bhmd,md->bhm", hist, self.query) * math.sqrt(self.d)  # (B, H, M)
        logits = logits.masked_fill(~mask[:, :, None], -1e9)
        weights = torch.softmax(logits, dim=1) * m  # an all-PAD history keeps zero weights, not NaN
        weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-12)
        r = torch.einsum("bhm,bhmd->bmd", weights, hist)  # (B, M, d)
        # Mean pairwise cosine, self-pairs excluded (f has unit norm): (||sum_h f||^2 - n) / (n (n - 1)).
        total = hist.sum(dim=1)  # (B, M, d)
        c = (total.pow(2).sum(-1) - n) / (n * (n - 1)).clamp_min(1.0)  # (B, M)
        c = torch.where(n >= 2, c, torch.zeros_like(c))
        return r, c

    def forward(self, hist: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``hist (B, H, M, d)``, ``mask (B, H)`` -> ``alpha (B, M)`` on the simplex and ``q (B, d)``."""
        r, c = self.summaries(hist, mask)
        c = (c - self.coherence_mean) / self.coherence_std
        emb = self.modality_emb.expand(r.shape[0], -1, -1)  # (B, M, 8)
        score = self.scorer(torch.cat([r, c[..., None], emb], dim=-1)).squeeze(-1)  # (B, M)
        alpha = torch.softmax(score / self.alpha_temperature, dim=-1)
        q = fuse(r, alpha)  # q_u = sum_m alpha_{u,m} r_{u,m}
        return alpha, q


def fuse(features: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``h_i^u = sum_m alpha_{u,m} f_m(i)`` (docs/METHOD.md section 4, Module 1).

    ``features (..., M, d)``, ``alpha (..., M)`` (broadcastable) -> ``(..., d)``.
    Not re-normalized: the thesis quantizes ``h`` as it is (norm <= 1).
    """
    return (alpha.unsqueeze(-1) * features).sum(dim=-2)


def fuse_np(features: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """The numpy twin of :func:`fuse`, the same equation ``h_i = sum_m w_m f_m(i)``.

    ``features[m]`` (N, d), ``weights`` (M,) -> ``(N, d)`` float32. This is the
    call the prototype tokenizer makes with a prototype's weights.
    """
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (len(features),):
        raise ValueError(f"fuse_np: weights must have shape ({len(features)},), one per modality; got {weights.shape}")
    out = np.zeros_like(np.asarray(features[0], dtype=np.float64))
    for w, f in zip(weights, features):
        if f.shape != out.shape:
            raise ValueError(f"fuse_np: every modality must be (N, d) = {out.shape}; got {f.shape}")
        out += w * np.asarray(f, dtype=np.float64)
    return out.astype(np.float32)


# ---- behavioural signal ----------------------------------------------------------


def fused_cosine(q: torch.Tensor, alpha: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """``cos(q_u, h_j^u)`` for every user u and item j.

    ``q (B, d)``, ``alpha (B, M)``, ``items (N, M, d)`` -> ``(B, N)``.

    Equal to normalizing ``fuse(items[None], alpha[:, None])`` (B, N, d) and
    taking dot products, without building that tensor:
    ``q.h = sum_m alpha_m (q . f_m(j))`` and
    ``||h||^2 = sum_{m,m'} alpha_m alpha_m' (f_m(j) . f_m'(j))``.
    """
    q = F.normalize(q, dim=-1)
    proj = torch.einsum("bd,nmd->bnm", q, items)  # (B, N, M)
    dot = torch.einsum("bnm,bm->bn", proj, alpha)
    gram = torch.einsum("nmd,nkd->nmk", items, items)  # (N, M, M)
    sq = torch.einsum("bm,nmk,bk->bn", alpha, gram, alpha)
    return dot / sq.clamp_min(1e-12).sqrt()


def next_item_infonce(
    q: torch.Tensor,
    alpha: torch.Tensor,
    target_features: torch.Tensor,
    temperature: float,
    targets: torch.Tensor | None = None,
) -> torch.Tensor:
    """Next-item InfoNCE with in-batch negatives, each fused under the user's own weights.

    ``q (B, d)``, ``alpha (B, M)``, ``target_features (B, M, d)`` (row u is
    user u's next item). For user u the positive is ``h_{t_u}^u`` and the
    negatives are ``h_{t_j}^u`` for the other targets j, all under ``alpha_u``:

        L = mean_u -log softmax_j (cos(q_u, h_{t_j}^u) / tau)[u]

    ``targets (B,)`` (item indices), when given, masks other rows with the
    same target item: they are not negatives.
    """
    logits = fused_cosine(q, alpha, target_features) / temperature  # (B, B)
    if targets is not None:
        same = (targets[:, None] == targets[None, :]) & ~torch.eye(len(targets), dtype=torch.bool, device=q.device)
        logits = logits.masked_fill(same, float("-inf"))
    labels = torch.arange(len(q), device=q.device)
    return F.cross_entropy(logits, labels)


# ---- training ----------------------------------------------------------------------


@dataclass
class AttentionBundle:
    """A trained projector and attention network with the config they were trained under."""

    projector: ModalityProjector
    attention: UserModalityAttention
    cfg: dict
    best_epoch: int = 0
    info: dict = field(default_factory=dict)  # seed, seconds, best validation figures

    def state(self) -> dict:
        """A ``torch.save``-able description (state dicts, dims, config)."""
        return {
            "projector": self.projector.state_dict(),
            "attention": self.attention.state_dict(),
            "dims": self.projector.dims,
            "cfg": self.cfg,
            "best_epoch": self.best_epoch,
            "info": self.info,
        }

    @classmethod
    def from_state(cls, state: dict) -> AttentionBundle:
        cfg = state["cfg"]
        projector = ModalityProjector(state["dims"], cfg["d"])
        attention = UserModalityAttention(len(state["dims"]), cfg["d"], cfg["hidden"], cfg["alpha_temperature"])
        projector.load_state_dict(state["projector"])
        attention.load_state_dict(state["attention"])
        return cls(projector.eval(), attention.eval(), cfg, state["best_epoch"], state["info"])


def resolve_cfg(cfg: dict | None) -> dict:
    """``cfg`` over :data:`DEFAULTS`; an unknown key fails naming it."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"PMAT attention: unknown config key(s) {unknown}; valid keys are {sorted(DEFAULTS)}")
    out = {**DEFAULTS, **cfg}
    if out["init"] not in ("pca", "pca_shared", "orthogonal"):
        raise ValueError(f"PMAT attention: init must be 'pca', 'pca_shared' or 'orthogonal', got {out['init']!r}")
    if not out["lambda1"] >= 0:
        raise ValueError(f"PMAT attention: lambda1 must be >= 0, got {out['lambda1']}")
    if out["lambda1"] > 0 and not 0 <= out["lambda_max"] <= 1:
        raise ValueError(f"PMAT attention: lambda_max must be in [0, 1], got {out['lambda_max']}")
    for key in ("d", "hidden", "epochs", "batch_size", "history_cap", "patience", "window"):
        if int(out[key]) < 1:
            raise ValueError(f"PMAT attention: {key} must be >= 1, got {out[key]}")
    if out["max_samples_per_epoch"] is not None and int(out["max_samples_per_epoch"]) < 2:
        raise ValueError(
            f"PMAT attention: max_samples_per_epoch must be None or >= 2, got {out['max_samples_per_epoch']}"
        )
    return out


def _check_features(features: list[np.ndarray], n_items: int | None = None) -> list[np.ndarray]:
    if len(features) < 2:
        raise ValueError(f"PMAT needs M >= 2 modalities; got {len(features)} feature matrix(es)")
    out = []
    for m, x in enumerate(features):
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f"modality {m}: features must be (n_items, dim), got shape {x.shape}")
        check_finite(x, f"PMAT attention, modality {m} features")
        if len(x) != len(features[0]):
            raise ValueError(f"modality {m} has {len(x)} items, modality 0 has {len(features[0])}; rows are items")
        out.append(x)
    if n_items is not None and len(out[0]) != n_items:
        raise ValueError(f"features cover {len(out[0])} items, the sequences {n_items}")
    return out


def _forward(projector: ModalityProjector, attention: UserModalityAttention, raw: list[torch.Tensor], hist):
    """Raw features ``raw[m] (N, D_m)``, histories ``hist (B, H)`` with PAD -> ``alpha (B, M)``, ``q (B, d)``."""
    return _forward_feats(projector, attention, raw, hist)[:2]


def _forward_feats(projector, attention, raw, hist):
    """As :func:`_forward`, plus the projected history ``(B, H, M, d)`` and its mask ``(B, H)``."""
    mask = hist != PAD
    idx = hist.clamp_min(0)
    feats = projector([x[idx] for x in raw])  # (B, H, M, d)
    alpha, q = attention(feats, mask)
    return alpha, q, feats, mask


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x (B, H, d)`` over the positions where ``mask (B, H)`` is True."""
    m = mask.to(x.dtype)[..., None]
    return (x * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def _consistency_term(attention, feats, mask, alpha_long, cfg) -> torch.Tensor:
    """``L_cons`` (theorem 3, :func:`pmsid.methods.pmat.drift.consistency_loss`) of a simulated update per prefix.

    For each training prefix (history ``feats (B, H, M, d)``, ``mask``, its
    weights ``alpha_long`` from the whole prefix): ``alpha_new`` = the
    network on the last ``W = window`` items, the update
    ``alpha_{t+1} = (1 - lam) alpha_long + lam alpha_new`` with
    ``lam = lambda_max``, and

    - ``h_t``: mean fused history under ``alpha_long`` (detached: the old state);
    - ``h_{t+1}``: mean fused history under ``alpha_{t+1}``;
    - interest: mean fused last W items under ``alpha_{t+1}``,

    with the other prefixes' interests as in-batch negatives. Why ``lam =
    lambda_max``: the replay applies ``lam = g(drift)`` in ``(0,
    lambda_max]`` and only where the drift exceeds theta, which almost no
    training prefix does; training at the cap makes the largest update the
    replay can make the one the network is consistent under, and the rate
    is the config's, not a second constant.
    """
    window = int(cfg["window"])
    lam = float(cfg["lambda_max"])
    recent, recent_mask = feats[:, -window:], mask[:, -window:]  # left padding: the last W columns are the newest
    alpha_new, _ = attention(recent, recent_mask)
    alpha_next = (1.0 - lam) * alpha_long + lam * alpha_new
    h_t = _masked_mean(fuse(feats, alpha_long.detach()[:, None]), mask).detach()
    h_next = _masked_mean(fuse(feats, alpha_next[:, None]), mask)
    interest = _masked_mean(fuse(recent, alpha_next[:, None]), recent_mask)
    return consistency_loss(h_next, h_t, interest, lam, temperature=cfg["cons_temperature"])


@torch.no_grad()
def _validate(projector, attention, raw, hist, targets, temperature, chunk=1024) -> tuple[float, float]:
    """Full-catalogue next-item InfoNCE (every item a negative) and Recall@10 on the valid split."""
    items = projector(raw)  # (N, M, d)
    losses, hits = [], []
    for s in range(0, len(hist), chunk):
        alpha, q = _forward(projector, attention, raw, hist[s : s + chunk])
        logits = fused_cosine(q, alpha, items) / temperature  # (b, N)
        t = targets[s : s + chunk]
        losses.append(F.cross_entropy(logits, t, reduction="none"))
        # 0-based rank of the target under the evaluation's tie rule: higher
        # logits first, equal logits by lower item index (pmsid.evaluate.ranking.top_k).
        target = logits.gather(1, t[:, None])
        lower = torch.arange(logits.shape[1], device=logits.device)[None, :] < t[:, None]
        rank = ((logits > target) | ((logits == target) & lower)).sum(dim=1)
        hits.append((rank < 10).float())
    return torch.cat(losses).mean().item(), torch.cat(hits).mean().item()


def train_modality_attention(
    features: list[np.ndarray], seqs: Sequences, cfg: dict | None, seed: int | None, device: str = "auto"
) -> tuple[AttentionBundle, pd.DataFrame]:
    """Train projector + attention with the next-item InfoNCE; returns ``(bundle, log)``.

    ``features[m]`` (N, D_m): modality m's raw features, row = item_idx, in
    the dataset's modality order. Samples are every training prefix
    (``training_samples``, histories capped at ``history_cap``). Optimizer
    AdamW (``lr`` for the attention network, ``projector_lr`` for the
    projections, which start from PCA so their neighbourhoods are meaningful
    before training), gradient clipping, non-finite-loss guard.

    Model selection: after every epoch, the full-catalogue next-item InfoNCE
    on the validation split (history = training items, target = the valid
    item; every catalogue item fused under the user's weights is a negative).
    It is deterministic (no dependence on batching) and smooth, unlike
    Recall@10 on a few hundred users; Recall@10 of the same ranking is logged
    beside it. Early stopping after ``patience`` epochs without improvement;
    the best epoch's weights are returned.

    With ``lambda1 > 0`` the objective is ``InfoNCE + lambda1 * L_cons``,
    ``L_cons`` over one simulated drift update per training prefix
    (:func:`_consistency_term`; keys ``window``, ``lambda_max``,
    ``cons_temperature``, the config's pmat keys). ``lambda1 = 0`` adds
    nothing and computes nothing: the training is the plain InfoNCE one.

    cfg keys (defaults in :data:`DEFAULTS`): d 64, hidden 32, epochs 20,
    max_samples_per_epoch None (all prefixes), batch_size 256, lr 3e-3,
    projector_lr 3e-4, weight_decay 0.01, temperature 0.1, alpha_temperature 1.0, history_cap 20, patience 2,
    init "pca", grad_clip 1.0, lambda1 0.1, window 5, lambda_max 0.5,
    cons_temperature 0.1, progress True. An unknown key fails.

    The log has one row per epoch: ``epoch, step, loss, valid_infonce,
    valid_recall10, alpha_std`` (std of the valid users' weights, averaged
    over modalities: 0 means no personalization), ``seconds``. No resumable
    checkpoint: a run takes seconds to minutes.
    """
    cfg = resolve_cfg(cfg)
    features = _check_features(features, seqs.n_items)
    seed_everything(seed)
    dev = resolve_device(device)
    started = time.perf_counter()

    projector = ModalityProjector([x.shape[1] for x in features], cfg["d"])
    if cfg["init"] in ("pca", "pca_shared"):
        projector.init_pca(features, layout="blocks" if cfg["init"] == "pca" else "shared")
    attention = UserModalityAttention(len(features), cfg["d"], cfg["hidden"], cfg["alpha_temperature"])
    projector.to(dev)
    attention.to(dev)
    raw = [torch.as_tensor(x, device=dev) for x in features]

    _, hist, targets = training_samples(seqs, cfg["history_cap"])
    if len(targets) == 0:
        raise ValueError("PMAT attention: no training prefixes; every user needs >= 2 training items for one")
    hist, targets = torch.as_tensor(hist, device=dev), torch.as_tensor(targets, device=dev)
    _, v_hist, v_targets = eval_samples(seqs, "valid", cfg["history_cap"])
    with torch.no_grad():  # coherence statistics of the users' training histories, as projected at init
        cal = torch.as_tensor(v_hist[:4096], device=dev)
        attention.calibrate(projector([x[cal.clamp_min(0)] for x in raw]), cal != PAD)
    v_hist, v_targets = torch.as_tensor(v_hist, device=dev), torch.as_tensor(v_targets, device=dev)

    groups = [{"params": attention.parameters(), "lr": cfg["lr"]}]
    if cfg["projector_lr"] > 0:
        groups.append({"params": projector.parameters(), "lr": cfg["projector_lr"]})
    else:
        projector.requires_grad_(False)
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg["weight_decay"])
    params = [p for p in [*attention.parameters(), *projector.parameters()] if p.requires_grad]

    gen = torch.Generator().manual_seed(seed if seed is not None else int(torch.randint(0, 2**31 - 1, (1,))))
    best = {"loss": math.inf, "epoch": 0, "state": None, "recall": float("nan")}
    rows, step, bad = [], 0, 0
    for epoch in range(1, cfg["epochs"] + 1):
        t0 = time.perf_counter()
        projector.train()
        attention.train()
        order = torch.randperm(len(targets), generator=gen)[: cfg["max_samples_per_epoch"]].to(dev)
        total, count, cons_total = 0.0, 0, 0.0
        bar = tqdm(
            range(0, len(order), cfg["batch_size"]),
            desc=f"pmat-attention epoch {epoch}",
            disable=not cfg["progress"],
            leave=False,
            mininterval=2.0,
        )
        for s in bar:
            idx = order[s : s + cfg["batch_size"]]
            if len(idx) < 2:  # one row has no negative
                continue
            alpha, q, feats, mask = _forward_feats(projector, attention, raw, hist[idx])
            target_feats = projector([x[targets[idx]] for x in raw])  # (B, M, d)
            loss = next_item_infonce(q, alpha, target_feats, cfg["temperature"], targets[idx])
            if cfg["lambda1"] > 0:  # lambda1 = 0 computes nothing more: the training is exactly the plain one
                cons = _consistency_term(attention, feats, mask, alpha, cfg)
                loss = loss + cfg["lambda1"] * cons
                cons_total += cons.item() * len(idx)
            step += 1
            check_loss(loss, step, "pmat-attention")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg["grad_clip"] > 0:
                nn.utils.clip_grad_norm_(params, cfg["grad_clip"])
            optimizer.step()
            total += loss.item() * len(idx)
            count += len(idx)
            bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
        bar.close()

        projector.eval()
        attention.eval()
        v_loss, v_recall = _validate(projector, attention, raw, v_hist, v_targets, cfg["temperature"])
        with torch.no_grad():
            v_alpha, _ = _forward(projector, attention, raw, v_hist)
        rows.append(
            {
                "epoch": epoch,
                "step": step,
                "loss": total / max(count, 1),
                "valid_infonce": v_loss,
                "valid_recall10": v_recall,
                "alpha_std": v_alpha.std(dim=0).mean().item(),
                "seconds": time.perf_counter() - t0,
            }
        )
        improved = v_loss < best["loss"]
        if improved:
            state = {"projector": projector.state_dict(), "attention": attention.state_dict()}
            best.update(loss=v_loss, epoch=epoch, recall=v_recall, state=copy.deepcopy(state))
            best["consistency"] = cons_total / max(count, 1) if cfg["lambda1"] > 0 else None
            bad = 0
        else:
            bad += 1
        log.info(
            "pmat-attention epoch %d/%d: train loss %.4f, valid InfoNCE %.4f, Recall@10 %.4f, alpha std %.3f%s",
            epoch, cfg["epochs"], rows[-1]["loss"], v_loss, v_recall, rows[-1]["alpha_std"],
            " (best)" if improved else "",
        )  # fmt: skip
        if bad >= cfg["patience"]:
            log.info("pmat-attention: early stop after epoch %d; best epoch %d", epoch, best["epoch"])
            break

    if best["state"] is None:  # every validation loss was NaN
        raise ValueError("PMAT attention: validation InfoNCE was never finite; check the features and the lr")
    projector.load_state_dict(best["state"]["projector"])
    attention.load_state_dict(best["state"]["attention"])
    projector.cpu().eval()
    attention.cpu().eval()
    info = {
        "seed": seed,
        "seconds": time.perf_counter() - started,
        "valid_infonce": best["loss"],
        "valid_recall10": best["recall"],
        "n_train_samples": int(len(targets)),
        "train_consistency": best.get("consistency"),  # mean L_cons of the best epoch (None when lambda1 = 0)
    }
    frame = pd.DataFrame(
        rows, columns=["epoch", "step", "loss", "valid_infonce", "valid_recall10", "alpha_std", "seconds"]
    )
    frame = frame.astype({"epoch": "int32", "step": "int64"})
    return AttentionBundle(projector, attention, cfg, best["epoch"], info), frame


# ---- what the tokenizer and the drift gate read -------------------------------------


def split_histories(seqs: Sequences, split: str, cap: int) -> np.ndarray:
    """Left-padded histories ``(U, cap)`` available at ``split``.

    "train" and "valid": the training items; "test": training items + the valid item.
    """
    if split in ("train", "valid"):
        cut = -2
    elif split == "test":
        cut = -1
    else:
        raise ValueError(f"split must be 'train', 'valid' or 'test', got {split!r}")
    return np.stack([pad_left(seq[:cut], cap) for seq in seqs.items])


@torch.no_grad()
def histories_weights(bundle: AttentionBundle, features: list[np.ndarray], hist: np.ndarray) -> np.ndarray:
    """``alpha (B, M)`` float64 for left-padded histories ``hist (B, H)`` (PAD = -1)."""
    features = _check_features(features)
    raw = [torch.as_tensor(x) for x in features]
    hist = torch.as_tensor(np.asarray(hist, dtype=np.int64))
    out = [_forward(bundle.projector, bundle.attention, raw, hist[s : s + 4096])[0] for s in range(0, len(hist), 4096)]
    return torch.cat(out).double().numpy()


def user_weights(bundle: AttentionBundle, features: list[np.ndarray], seqs: Sequences, split: str) -> np.ndarray:
    """Each user's modality weights ``alpha (U, M)`` from the history available at ``split``.

    Rows are user_idx, columns the modalities in ``features`` order; every row
    is on the simplex. Histories are capped at the bundle's ``history_cap``.
    """
    return histories_weights(bundle, features, split_histories(seqs, split, bundle.cfg["history_cap"]))


@torch.no_grad()
def project_features(bundle: AttentionBundle, features: list[np.ndarray]) -> list[np.ndarray]:
    """The L2-normalized projected features ``f_m`` as a list of ``(N, d)`` float32 arrays."""
    features = _check_features(features)
    f = bundle.projector([torch.as_tensor(x) for x in features])  # (N, M, d)
    return [f[:, m].numpy().astype(np.float32) for m in range(f.shape[1])]
