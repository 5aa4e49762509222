"""HDNAG as a method: train the two-level non-autoregressive generator on
hierarchical IDs and rank by two-stage retrieval (docs/METHOD.md section 6;
the model is :mod:`pmsid.models.hdnag`).

One implementation for the three registered variants, chosen by the spec's
options: ``hdnag`` (two levels, alignment weight ``mu``), ``hdnag_no_align``
(``mu = 0``) and ``hdnag_single`` (all three tokens in one pass). Training
takes every prefix of every training sequence, as the TIGER-style generator
does, on the shared loop (early stopping on validation NDCG@10 under the
method's own two-stage retrieval). Ranking measures on the way what the
efficiency table needs: candidates scored per user, decoder passes per
batch and wall time; the test split is also ranked exhaustively (every
item scored), so the accuracy cost of the candidate cut is measured, not
assumed.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import numpy as np
import torch

from pmsid.data import contracts
from pmsid.data.loaders import load_codes, load_sequences
from pmsid.data.sequences import eval_samples
from pmsid.defaults import run_defaults, section_defaults
from pmsid.evaluate.metrics import mean_metrics, user_metrics
from pmsid.evaluate.ranking import SPLITS, Ranking, history_items, ranks_in_list
from pmsid.models import hdnag
from pmsid.models.hdnag import HdnagGenerator, InvertedIndex, build_hdnag, exhaustive_topk, two_stage_topk
from pmsid.runtime import resolve_device, seed_everything
from pmsid.train import recipes

log = logging.getLogger(__name__)

# Keys of the config's hdnag section that configure the tokenizer or select
# runs; the rest configure the generator (see registry's hyper_skip).
TOKENIZER_KEYS = ("coarse_size", "fine_size", "n_init")


def hdnag_defaults() -> dict:
    """Every key of an HDNAG cfg with its default (schema section ``hdnag``
    less the tokenizer and run-selection keys, plus the run keys and the
    variant's ``levels``)."""
    section = section_defaults("hdnag")
    skip = {*TOKENIZER_KEYS, "datasets", "ablations", "efficiency"}
    return {**run_defaults(), **{k: v for k, v in section.items() if k not in skip}, "levels": "two"}


HDNAG_DEFAULTS = hdnag_defaults()


def load_hierarchical_ids(path: str, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """``codes (n_items, 3)`` and ``parent (F,)`` of an ``hkmeans_ids`` file."""
    codes = load_codes(path, n_items)
    meta = contracts.read_metadata(path)
    if meta.get("tokenizer") != "hkmeans" or "parent" not in meta or codes.shape[1] != 3:
        raise ValueError(
            f"{path}: not a hierarchical ID file (tokenizer {meta.get('tokenizer')!r}, {codes.shape[1]} tokens); "
            "HDNAG needs the hkmeans_ids stage's (coarse, fine, dedup) IDs"
        )
    return codes, np.asarray(meta["parent"], np.int64)


def method_cfg(job) -> dict:
    """The generator's cfg: the hdnag section's generator keys, the protocol
    keys, and the variant's options (``levels``; ``mu = 0`` without alignment)."""
    cfg = {k: v for k, v in job.cfg.items() if k not in TOKENIZER_KEYS}
    cfg.update(
        history_cap=job.protocol["history_cap"],
        exclude_history=job.protocol["exclude_history"],
        ks=job.evaluation["ks"],
        deterministic=job.deterministic,
        levels=job.options.get("levels", "two"),
    )
    if not job.options.get("align", True):
        cfg["mu"] = 0.0
    return recipes.with_defaults(cfg, HDNAG_DEFAULTS, "hdnag")


def train(job) -> None:
    """Train on every training prefix; keep the epoch with the best validation NDCG@10."""
    seed_everything(job.seed, job.deterministic)
    seqs = load_sequences(job.inputs["interactions"], job.inputs["catalogue"])
    codes, parent = load_hierarchical_ids(job.inputs["ids"], seqs.n_items)
    cfg = method_cfg(job)
    dev = recipes.start(job.outputs["model"], job.seed, cfg, job.device)
    model = build_hdnag(codes, parent, cfg).to(dev)
    index = InvertedIndex(model.codes[:, 0], model.n_coarse, dev)
    log.info(
        "%s: %d coarse, %d fine clusters, %d dedup tokens, levels %s, mu %g",
        job.method, model.n_coarse, model.n_fine, model.n_dedup, cfg["levels"], cfg["mu"],
    )  # fmt: skip
    _, hist, targets = eval_samples(seqs, "valid", cfg["history_cap"])
    exclude = history_items(seqs, "valid") if cfg["exclude_history"] else None

    def validate(m: HdnagGenerator) -> float:
        items, _ = retrieve(m, index, hist, exclude, max(cfg["ks"]), cfg)
        return mean_metrics(ranks_in_list(items, targets), [10])["NDCG@10"]

    key = recipes.training_key("hdnag", cfg, job.seed, seqs, codes)
    key["hdnag_code"] = hashlib.sha256(Path(hdnag.__file__).read_bytes()).hexdigest()
    mu = cfg["mu"]
    result = recipes.fit(
        model, seqs, cfg, validate, job.checkpoint, key, job.seed, job.method,
        loss=lambda m, batch: m.loss(*batch, mu=mu),
    )  # fmt: skip
    payload = {"kind": "hdnag", "cfg": cfg, "codes": torch.from_numpy(codes), "parent": torch.from_numpy(parent)}
    recipes.finish(model, result, payload, job.outputs["model"], job.outputs["log"])


def load(model_path: str, device) -> tuple[HdnagGenerator, dict]:
    """A saved HDNAG generator in eval mode on ``device``, and its cfg."""
    saved = recipes.load_model(model_path, "hdnag")
    cfg = {**HDNAG_DEFAULTS, **saved["cfg"]}
    model = build_hdnag(saved["codes"], saved["parent"], cfg)
    model.load_state_dict(saved["state_dict"])
    return model.to(device).eval(), cfg


@torch.no_grad()
def retrieve(
    model: HdnagGenerator,
    index: InvertedIndex,
    hist: np.ndarray,
    exclude: np.ndarray | None,
    k: int,
    cfg: dict,
    exhaustive: bool = False,
) -> tuple[np.ndarray, dict]:
    """Top-``k`` lists ``(U, k)`` of histories ``hist (U, cap)`` in batches of
    ``eval_batch_size``, by two-stage retrieval (or every item scored), and
    the mean candidates scored per user."""
    dev = model.codes.device
    out, scored = [], 0
    batch = cfg["eval_batch_size"]
    for start in range(0, len(hist), batch):
        h = torch.from_numpy(hist[start : start + batch]).to(dev)
        ex = None if exclude is None else torch.from_numpy(exclude[start : start + batch]).to(dev)
        log_probs = model.log_probs(h)
        if exhaustive:
            items, _ = exhaustive_topk(model, log_probs, k, ex)
            scored += len(h) * model.n_items
        else:
            items, _, n = two_stage_topk(
                model, index, log_probs, k, cfg["coarse_candidates"], cfg["candidate_budget"], ex
            )
            scored += int(n.sum())
        out.append(items.cpu().numpy())
    return np.concatenate(out), {"candidates_per_user": scored / max(1, len(hist))}


def rank(job) -> dict[str, Ranking]:
    """Two-stage retrieval for every user and split; the test split also exhaustively."""
    dev = resolve_device(job.device)
    torch.set_flush_denormal(True)  # subnormals slow CPU kernels ~10x (see pmsid.train.loop)
    model, cfg = load(job.model, dev)
    codes, _ = load_hierarchical_ids(job.inputs["ids"], job.seqs.n_items)
    if not np.array_equal(codes, model.codes.cpu().numpy()):
        raise ValueError(f"{job.model}: the hierarchical IDs differ from the ones the model was trained on; retrain")
    index = InvertedIndex(model.codes[:, 0], model.n_coarse, dev)
    passes = _count_decoder_passes(model)
    rankings = {}
    for split in SPLITS:
        users, hist, targets = eval_samples(job.seqs, split, cfg["history_cap"])
        exclude = history_items(job.seqs, split) if job.exclude_history else None
        passes.clear()
        _sync(dev)
        start = time.perf_counter()
        items, extra = retrieve(model, index, hist, exclude, job.k, cfg)
        _sync(dev)
        n_batches = -(-len(hist) // cfg["eval_batch_size"])
        extra.update(
            retrieval_seconds_per_user=(time.perf_counter() - start) / len(users),
            decoder_passes_per_batch=len(passes) / n_batches,
            catalogue_fraction_scored=extra["candidates_per_user"] / model.n_items,
        )
        if split == "test":
            full, _ = retrieve(model, index, hist, exclude, job.k, cfg, exhaustive=True)
            means = user_metrics(ranks_in_list(full, targets), job.evaluation["ks"]).mean()
            extra.update({f"exhaustive_{m}@{k}": float(means[f"{m}@{k}"]) for k in job.evaluation["ks"]
                          for m in ("Recall", "NDCG")})  # fmt: skip
        log.info(
            "%s %s: %.1f candidates per user (%.1f%% of the catalogue), %.2f ms per user, %g decoder passes per batch",
            job.method, split, extra["candidates_per_user"], 100 * extra["catalogue_fraction_scored"],
            1e3 * extra["retrieval_seconds_per_user"], extra["decoder_passes_per_batch"],
        )  # fmt: skip
        rankings[split] = Ranking(users=users, items=items, extra=extra)
    return rankings


def _count_decoder_passes(model: HdnagGenerator) -> list:
    """A list that grows by one at every decoder call (a forward hook)."""
    calls: list = []
    model.decoder.register_forward_hook(lambda *args: calls.append(1))
    return calls


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
