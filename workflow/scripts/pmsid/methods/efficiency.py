"""Retrieval cost of the generators, measured side by side (docs/METHOD.md section 6).

One process, one machine, the same test users, the same list length K:
every method's trained model of one dataset and seed retrieves the top-K
items of each user

- at batch 1 (one user per call, ``batch1_users`` users after
  ``warmup`` calls): median and 95th-percentile milliseconds per user;
- batched (``eval_batch_size`` users per call, all users, after one
  warm-up batch): users per second;

counting on the way the decoder passes per batch (a forward hook on the
decoder) and the items whose score is computed per user (HDNAG: its
candidates; dense scoring: the catalogue; beam search scores ID prefixes,
not items, so it has none). On CUDA the peak memory allocated during the
batched run is recorded too.

The methods: TIGER-style trie-constrained beam search (batched, the
encoder memory computed once per user and shared by its beams; the decoder
re-reads the at most D-token prefix at each step, no key-value cache),
HDNAG's two-stage retrieval and its exhaustive scoring of every item,
HDNAG single-level, and SASRec's exhaustive dense scoring of item
embeddings. Each row's ``speedup_*`` is beam search's time over its own.

The candidate sweep ranks the test split again with HDNAG under other
numbers of recalled coarse IDs ``c`` and candidate budgets, each with its
accuracy and batched time (the median of :data:`SWEEP_REPEATS` passes): the
accuracy-vs-latency curve.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from pmsid.data.contracts import EFFICIENCY
from pmsid.data.sequences import Sequences, eval_samples
from pmsid.evaluate.metrics import user_metrics
from pmsid.evaluate.ranking import history_items, mask_items, ranks_in_list, top_k
from pmsid.methods import hdnag as hdnag_method
from pmsid.models.beam import beam_search_tables
from pmsid.models.hdnag import InvertedIndex
from pmsid.train import recipes

log = logging.getLogger(__name__)

SPLIT = "test"
SWEEP_REPEATS = 3  # each sweep setting's time is the median of this many passes over the test users
# The measured columns, in the order of the EFFICIENCY contract (the speed-ups are added last).
COLUMNS = [f.name for f in EFFICIENCY if not f.name.startswith("speedup_")]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_method(
    retrieve: Callable[[np.ndarray, np.ndarray | None], np.ndarray],
    hist: np.ndarray,
    exclude: np.ndarray | None,
    batch_size: int,
    batch1_users: int,
    warmup: int,
    device: torch.device,
) -> dict:
    """Batch-1 latencies and batched throughput of ``retrieve(hist, exclude) -> items``;
    also returns the batched run's lists (``items``)."""
    n1 = min(batch1_users, len(hist))

    def one(u: int) -> None:
        retrieve(hist[u : u + 1], None if exclude is None else exclude[u : u + 1])

    for u in range(min(warmup, len(hist))):
        one(u)
    latencies = []
    for u in range(n1):
        _sync(device)
        start = time.perf_counter()
        one(u)
        _sync(device)
        latencies.append(time.perf_counter() - start)
    retrieve(hist[:batch_size], None if exclude is None else exclude[:batch_size])  # warm-up batch
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()
    items = np.concatenate(
        [
            retrieve(hist[s : s + batch_size], None if exclude is None else exclude[s : s + batch_size])
            for s in range(0, len(hist), batch_size)
        ]
    )
    _sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else np.nan
    ms = 1e3 * np.asarray(latencies)
    return {
        "batch1_ms_median": float(np.median(ms)),
        "batch1_ms_p95": float(np.percentile(ms, 95)),
        "batched_users_per_s": len(hist) / seconds,
        "peak_memory_mb": peak,
        "items": items,
    }


def _count_calls(module: torch.nn.Module) -> list:
    calls: list = []
    module.register_forward_hook(lambda *args: calls.append(1))
    return calls


def _accuracy(items: np.ndarray, targets: np.ndarray) -> dict:
    means = user_metrics(ranks_in_list(items, targets), [10]).mean()
    return {"Recall@10": float(means["Recall@10"]), "NDCG@10": float(means["NDCG@10"])}


def measure(
    seqs: Sequences,
    models: dict[str, str],
    k: int,
    beam_size: int,
    exclude_history: bool,
    batch_size: int,
    batch1_users: int,
    warmup: int,
    sweep_candidates: list[int],
    sweep_budgets: list[int],
    device: torch.device,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The efficiency table (:data:`COLUMNS`) and the candidate sweep of one dataset and seed.

    ``models`` maps method names to model files: ``tiger``, ``sasrec``,
    ``hdnag``, ``hdnag_single`` (any subset).
    """
    torch.set_flush_denormal(True)  # subnormals slow CPU kernels ~10x (see pmsid.train.loop)
    rows, sweep = [], []

    def add(method: str, retrieve, passes: list | None, scored: float, cap: int) -> dict:
        users, hist, targets = eval_samples(seqs, SPLIT, cap)
        exclude = history_items(seqs, SPLIT) if exclude_history else None
        with torch.no_grad():
            measured = time_method(retrieve, hist, exclude, batch_size, batch1_users, warmup, device)
            if passes is not None:
                passes.clear()
                retrieve(hist[:batch_size], None if exclude is None else exclude[:batch_size])
        row = {
            "method": method,
            **{key: v for key, v in measured.items() if key != "items"},
            "decoder_passes_per_batch": float(len(passes)) if passes is not None else np.nan,
            "items_scored_per_user": scored,
            **_accuracy(measured["items"], targets),
        }
        log.info(
            "%s: batch 1 %.2f ms median (p95 %.2f), batched %.0f users/s, NDCG@10 %.4f",
            method, row["batch1_ms_median"], row["batch1_ms_p95"], row["batched_users_per_s"], row["NDCG@10"],
        )  # fmt: skip
        rows.append(row)
        return row

    if "tiger" in models:
        saved = recipes.load_model(models["tiger"], "tiger")
        cfg = {**recipes.TIGER_DEFAULTS, **saved["cfg"]}
        model = recipes.generator_from(saved, None, models["tiger"]).to(device)
        codes = saved["codes"].numpy()
        tries = recipes.build_tries(codes[None] if codes.ndim == 2 else codes, model.level_sizes, device)
        passes = _count_calls(model.decoder)

        def beam(h, ex):
            tables = np.zeros(len(h), np.int64)
            return beam_search_tables(model, tries, h, tables, beam_size, ex, batch_size).items[:, :k]

        add("tiger", beam, passes, np.nan, cfg["history_cap"])

    for name in ("hdnag", "hdnag_single"):
        if name not in models:
            continue
        model, cfg = hdnag_method.load(models[name], device)
        index = InvertedIndex(model.codes[:, 0], model.n_coarse, device)
        passes = _count_calls(model.decoder)
        scored: list = []

        def two_stage(h, ex, model=model, index=index, cfg=cfg, scored=scored):
            items, extra = hdnag_method.retrieve(model, index, h, ex, k, {**cfg, "eval_batch_size": len(h)})
            scored.append(extra["candidates_per_user"])
            return items

        row = add(name, two_stage, passes, np.nan, cfg["history_cap"])
        row["items_scored_per_user"] = float(np.mean(scored))
        if name == "hdnag":

            def exhaustive(h, ex, model=model, index=index, cfg=cfg):
                full = {**cfg, "eval_batch_size": len(h)}
                return hdnag_method.retrieve(model, index, h, ex, k, full, exhaustive=True)[0]

            add("hdnag_exhaustive", exhaustive, passes, float(model.n_items), cfg["history_cap"])
            sweep += _sweep(model, index, cfg, seqs, k, exclude_history, batch_size, device,
                            sweep_candidates, sweep_budgets)  # fmt: skip

    if "sasrec" in models:
        cfg = {**recipes.SASREC_DEFAULTS, **recipes.load_model(models["sasrec"], "sasrec")["cfg"]}
        sasrec = recipes.load_sasrec(models["sasrec"]).to(device)

        def dense(h, ex):
            scores = sasrec.scores(torch.from_numpy(h).to(device)).float()
            if ex is not None:
                scores = mask_items(scores, torch.from_numpy(ex).to(device))
            return top_k(scores, k)[0].cpu().numpy()

        add("sasrec_dense", dense, None, float(seqs.n_items), cfg["history_cap"])

    table = pd.DataFrame(rows, columns=COLUMNS)
    if "tiger" in set(table["method"]):
        ar = table.set_index("method").loc["tiger"]
        table["speedup_batch1"] = ar["batch1_ms_median"] / table["batch1_ms_median"]
        table["speedup_batched"] = table["batched_users_per_s"] / ar["batched_users_per_s"]
    else:
        table["speedup_batch1"] = table["speedup_batched"] = np.nan
    return table, pd.DataFrame(sweep)


def _sweep(model, index, cfg, seqs, k, exclude_history, batch_size, device, candidates, budgets) -> list[dict]:
    """HDNAG's accuracy and batched time over ``c`` (all recalled) and over budgets (``c`` = every coarse ID)."""
    _, hist, targets = eval_samples(seqs, SPLIT, cfg["history_cap"])
    exclude = history_items(seqs, SPLIT) if exclude_history else None
    settings = [("coarse_candidates", c, c, None) for c in sorted({min(c, model.n_coarse) for c in candidates})]
    settings += [("candidate_budget", b, model.n_coarse, b) for b in sorted(set(budgets)) if b < model.n_items]
    out = []
    for knob, value, c, budget in settings:
        run = {**cfg, "coarse_candidates": c, "candidate_budget": budget, "eval_batch_size": batch_size}
        seconds = []
        with torch.no_grad():
            hdnag_method.retrieve(model, index, hist[:batch_size], None, k, run)  # warm-up
            for _ in range(SWEEP_REPEATS):
                _sync(device)
                start = time.perf_counter()
                items, extra = hdnag_method.retrieve(model, index, hist, exclude, k, run)
                _sync(device)
                seconds.append(time.perf_counter() - start)
        out.append(
            {
                "knob": knob,
                "value": int(value),
                "ms_per_user": 1e3 * float(np.median(seconds)) / len(hist),
                "candidates_per_user": extra["candidates_per_user"],
                **_accuracy(items, targets),
            }
        )
    return out
