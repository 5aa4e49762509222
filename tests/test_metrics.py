"""The ranking metrics (pmsid.evaluate.metrics) against numbers written out by
hand, the one tie rule of every score-based ranking, and an independent
recomputation of every metric of real method outputs from ranking.parquet."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from pmsid.data import contracts
from pmsid.data.sequences import Sequences, eval_samples
from pmsid.evaluate.metrics import mean_metrics, rank_of_target, user_metrics
from pmsid.evaluate.ranking import evaluate_rankings, history_items, mask_items, ranks_in_list, top_k
from pmsid.methods import mostpop, random_ranking
from pmsid.train import recipes

from conftest import evaluate_sasrec

NEG = -np.inf


# --------------------------------------------------------------------------- hand-computed values


def test_user_metrics_at_ranks_one_two_k_k_plus_one_and_absent():
    # K = 5: ranks 1, 2, 5 (= K), 6 (= K + 1), and a target absent from the list written both ways.
    ranks = np.array([1, 2, 5, 6, np.nan, 0])
    got = user_metrics(ranks, [1, 5])
    assert list(got.columns) == ["Recall@1", "NDCG@1", "Recall@5", "NDCG@5", "MRR@5"]
    expected = {
        "Recall@1": [1, 0, 0, 0, 0, 0],
        "NDCG@1": [1, 0, 0, 0, 0, 0],
        "Recall@5": [1, 1, 1, 0, 0, 0],
        # 1 / log2(rank + 1): 1 / log2(3) = 0.6309..., 1 / log2(6) = 0.3868...
        "NDCG@5": [1, 1 / math.log2(3), 1 / math.log2(6), 0, 0, 0],
        # MRR is cut at the largest K: rank 6 earns nothing at K = 5.
        "MRR@5": [1, 1 / 2, 1 / 5, 0, 0, 0],
    }
    for name, values in expected.items():
        assert got[name].tolist() == pytest.approx(values, abs=1e-15), name
    assert got.loc[1, "NDCG@5"] == pytest.approx(0.6309297535714574, abs=1e-15)
    assert got.loc[2, "NDCG@5"] == pytest.approx(0.38685280723454163, abs=1e-15)


def test_mean_metrics_average_the_hand_computed_values():
    got = mean_metrics(np.array([1, 2, 5, 6, np.nan, 0]), [1, 5])
    assert set(got) == {"Recall@1", "NDCG@1", "Recall@5", "NDCG@5", "MRR@5"}
    assert got["Recall@1"] == pytest.approx(1 / 6, abs=1e-15)
    assert got["NDCG@1"] == pytest.approx(1 / 6, abs=1e-15)
    assert got["Recall@5"] == pytest.approx(3 / 6, abs=1e-15)
    assert got["NDCG@5"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 6, abs=1e-15)
    assert got["MRR@5"] == pytest.approx((1 + 1 / 2 + 1 / 5) / 6, abs=1e-15)


def test_mrr_is_truncated_at_the_largest_cut_off_only():
    # With K up to 10, rank 6 now counts for MRR (1/6) but still not for Recall@5; rank 11 counts nowhere.
    got = mean_metrics(np.array([6, 10, 11]), [5, 10])
    assert set(got) == {"Recall@5", "NDCG@5", "Recall@10", "NDCG@10", "MRR@10"}
    assert got["MRR@10"] == pytest.approx((1 / 6 + 1 / 10) / 3, abs=1e-15)
    assert got["Recall@5"] == 0.0 and got["NDCG@5"] == 0.0
    assert got["Recall@10"] == pytest.approx(2 / 3, abs=1e-15)
    assert got["NDCG@10"] == pytest.approx((1 / math.log2(7) + 1 / math.log2(11)) / 3, abs=1e-15)


# --------------------------------------------------------------------------- the tie rule

# Rows of scores over 6 items, the target of each row, and its rank by the rule
# "higher score, or equal score and lower item index; -inf never ranks".
TIES = [
    ([0.5, 0.9, 0.9, 0.9, 0.1, 0.9], 3, 3),  # tied with lower 1, 2 (above) and higher 5 (below)
    ([NEG, 0.7, 0.3, 0.3, NEG, 0.3], 3, 3),  # 1 scores higher, 2 ties lower; excluded 0, 4 never rank
    ([0.2, 0.2, 0.2, NEG, 1.0, 0.2], 0, 2),  # the lowest index of a tie: only the higher score 4 is above
    ([0.0, 0.0, 0.0, 0.0, 0.0, 0.0], 4, 5),  # a constant model: the items of lower index
    ([0.1, NEG, 0.3, 0.3, 0.3, 0.3], 1, np.nan),  # the target itself excluded: not ranked
    ([NEG, NEG, 0.4, 0.4, 0.4, 0.4], 2, 1),  # excluded items of lower index do not rank above
]


def test_rank_of_target_follows_the_tie_rule_by_hand():
    scores = np.array([row for row, _, _ in TIES])
    targets = np.array([t for _, t, _ in TIES])
    expected = np.array([rank for _, _, rank in TIES], dtype=np.float64)
    np.testing.assert_array_equal(rank_of_target(scores, targets), expected)


def test_rank_of_target_equals_the_rank_in_the_top_k_list():
    """The ranks training's validation computes equal those the evaluation reads from top_k's lists."""
    scores = np.array([row for row, _, _ in TIES])
    targets = np.array([t for _, t, _ in TIES])
    items, _ = top_k(torch.from_numpy(scores), scores.shape[1])
    assert items[0].tolist() == [1, 2, 3, 5, 0, 4] and items[4].tolist() == [2, 3, 4, 5, 0, -1]
    np.testing.assert_array_equal(rank_of_target(scores, targets), ranks_in_list(items.numpy(), targets))
    # Many ties: scores of 4 levels over 30 items, about a fifth excluded, every item a target once.
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(300, 30)).astype(np.float64)
    scores[rng.random(scores.shape) < 0.2] = NEG
    targets = np.tile(np.arange(30), 10)
    items, _ = top_k(torch.from_numpy(scores), 30)
    ranks = rank_of_target(scores, targets)
    np.testing.assert_array_equal(ranks, ranks_in_list(items.numpy(), targets))
    assert np.isnan(ranks).sum() == np.isneginf(scores[np.arange(300), targets]).sum() > 0


def tied_sasrec(tmp_path, n_items: int, tied: list[int]):
    """An untrained SASRec whose ``tied`` items have zero embeddings, so they score exactly 0 for every user."""
    cfg = {**recipes.SASREC_DEFAULTS, "d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32, "history_cap": 6}
    torch.manual_seed(0)
    model = recipes.build_sasrec(n_items, cfg)
    with torch.no_grad():
        model.item_emb.weight[tied] = 0.0
    path = tmp_path / "sasrec.pt"
    torch.save({"kind": "sasrec", "cfg": cfg, "n_items": n_items, "state_dict": model.state_dict()}, path)
    return recipes.load_sasrec(path), path, cfg


@pytest.mark.parametrize("exclude_history", [False, True])
def test_sasrec_validation_ranks_equal_the_evaluation_ranks_under_ties(tmp_path, exclude_history):
    n_items, tied = 12, [1, 4, 6, 9]
    rng = np.random.default_rng(1)
    seqs = Sequences([rng.choice(n_items, size=rng.integers(4, 8)) for _ in range(60)], n_items)
    model, path, cfg = tied_sasrec(tmp_path, n_items, tied)
    _, hist, targets = eval_samples(seqs, "valid", cfg["history_cap"])
    exclude = history_items(seqs, "valid") if exclude_history else None
    validation = recipes._sasrec_ranks(model, hist, targets, exclude, batch_size=16)
    per_user, _ = evaluate_sasrec(path, seqs, [1, 5, 10], exclude_history)
    # K = 20 > 12 items: every ranked item is in the list, so the two ranks must agree for every user.
    evaluation = per_user.loc[per_user["split"] == "valid", "rank"].to_numpy(dtype=np.float64, na_value=np.nan)
    np.testing.assert_array_equal(validation, evaluation)
    # The ties matter: the old pessimistic rule (every tied item above the target) ranks some users lower.
    with torch.no_grad():
        scores = model.scores(torch.from_numpy(hist))
    if exclude is not None:
        scores = mask_items(scores, torch.from_numpy(exclude))
    scores = scores.numpy()
    pessimistic = (scores >= scores[np.arange(len(targets)), targets][:, None]).sum(axis=1)
    finite = np.isfinite(evaluation)
    assert np.isin(targets[finite], tied).any()
    assert (pessimistic[finite] > evaluation[finite]).any()
    assert (pessimistic[finite] >= evaluation[finite]).all()


# --------------------------------------------------------------------------- independent recomputation


def reference_metrics(items: list[int], target: int, ks: list[int]) -> dict[str, float]:
    """One user's metrics from scratch: the 1-based position of ``target`` in ``items``, then the formulas."""
    position = items.index(target) + 1 if target in items else None
    out = {}
    for k in ks:
        hit = position is not None and position <= k
        out[f"Recall@{k}"] = 1.0 if hit else 0.0
        out[f"NDCG@{k}"] = 1.0 / math.log2(position + 1) if hit else 0.0
    top = max(ks)
    out[f"MRR@{top}"] = 1.0 / position if position is not None and position <= top else 0.0
    return out


def floor_rankings(tmp_path, seqs: Sequences, exclude_history: bool) -> dict:
    """The rankings of MostPop and Random on ``seqs`` (K = 20), by their own modules."""
    counts = torch.from_numpy(mostpop.popularity(seqs))
    torch.save({"kind": "mostpop", "counts": counts, "n_items": seqs.n_items}, tmp_path / "mostpop.pt")
    torch.save({"kind": "random", "seed": 3, "n_items": seqs.n_items}, tmp_path / "random.pt")
    out = {}
    for name, module in (("mostpop", mostpop), ("random", random_ranking)):
        job = SimpleNamespace(
            model=str(tmp_path / f"{name}.pt"), seqs=seqs, k=20, exclude_history=exclude_history, device="cpu"
        )
        out[name] = module.rank(job)
    return out


def ranking_rows(path) -> list[tuple[str, list[int], int]]:
    """``(split, items, target_item)`` of every row of a ranking.parquet, as plain Python values."""
    frame = contracts.read_table(path, contracts.RANKING)
    return [
        (s, [int(i) for i in items], int(t))
        for s, items, t in zip(frame["split"], frame["items"], frame["target_item"])
    ]


@pytest.mark.parametrize("exclude_history", [False, True])
def test_every_metric_of_real_rankings_is_recomputed_from_ranking_parquet(tmp_path, exclude_history):
    """MostPop's and Random's metrics.parquet and per_user.parquet against a from-scratch
    recomputation that reads nothing but ranking.parquet's lists and targets."""
    ks = [1, 5, 10]  # MRR@10 while the lists hold 20 items: the truncation is exercised
    rng = np.random.default_rng(2)
    popular = rng.dirichlet(np.full(40, 0.3))  # a skewed catalogue: MostPop hits, with ties in the counts
    seqs = Sequences([rng.choice(40, size=rng.integers(3, 10), p=popular) for _ in range(80)], 40)
    for name, rankings in floor_rankings(tmp_path, seqs, exclude_history).items():
        ranking, per_user, metrics = evaluate_rankings(seqs, rankings, ks, history_cap=20)
        paths = {kind: tmp_path / f"{name}_{kind}.parquet" for kind in ("ranking", "per_user", "metrics")}
        contracts.write_table(ranking, paths["ranking"], contracts.RANKING)
        contracts.write_table(per_user, paths["per_user"], contracts.PER_USER)
        contracts.write_table(metrics, paths["metrics"], contracts.METRICS)
        lists = ranking_rows(paths["ranking"])
        written = contracts.read_table(paths["metrics"], contracts.METRICS).set_index(["split", "metric"])["value"]
        ranks = contracts.read_table(paths["per_user"], contracts.PER_USER)
        hits = 0
        for split in ("valid", "test"):
            rows = [(items, target) for s, items, target in lists if s == split]
            per_row = [reference_metrics(items, target, ks) for items, target in rows]
            names = set(per_row[0])
            assert set(written[split].index) == names | {"n_users"}, (name, split)
            assert written[(split, "n_users")] == len(rows) == seqs.n_users
            for metric in names:
                expected = sum(r[metric] for r in per_row) / len(rows)
                assert written[(split, metric)] == pytest.approx(expected, abs=1e-12), (name, split, metric)
            positions = [items.index(t) + 1 if t in items else None for items, t in rows]
            got = ranks.loc[ranks["split"] == split, "rank"].tolist()
            assert [None if pd.isna(r) else int(r) for r in got] == positions, (name, split)
            hits += sum(p is not None and p <= 10 for p in positions)
        assert 0 < hits < 2 * seqs.n_users, name  # hits and misses both occur: neither branch is vacuous
