"""The method interface: the registry, the generic evaluation, and the two
floors (MostPop, Random) that every table carries, each checked against
hand-computed rankings and metrics."""

from __future__ import annotations

import importlib
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from snakemake.utils import validate

from pmsid import config as checks
from pmsid.data import contracts
from pmsid.data.sequences import Sequences
from pmsid.evaluate.metrics import mean_metrics
from pmsid.evaluate.ranking import Ranking, evaluate_rankings, list_length, top_k
from pmsid.methods import mostpop, random_ranking, registry
from pmsid.methods.run import evaluate_method, train_method

from conftest import REPO, write_contract_dataset

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def default_config() -> dict:
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    validate(cfg, str(SCHEMA))
    return cfg


def seqs_of(*users: list[int], n_items: int) -> Sequences:
    return Sequences([np.asarray(u, np.int64) for u in users], n_items)


def rank_job(model: str, seqs: Sequences, k: int = 3, exclude_history: bool = False):
    return SimpleNamespace(model=model, seqs=seqs, k=k, exclude_history=exclude_history, device="cpu")


# --------------------------------------------------------------------------- the registry


def test_every_registered_method_has_a_module_with_train_and_rank():
    for name, spec in registry.METHODS.items():
        module = importlib.import_module(spec.module)
        assert callable(module.rank), name
        assert not spec.trains or callable(module.train), name
        assert spec.role in registry.ROLES, name


def test_runs_of_the_default_config():
    """The quick setting: every method on ml-100k and synthetic, MCRL's ablations on synthetic,
    HDNAG without its ablations."""
    runs = registry.runs(default_config())
    pmat = ("pmat_global", "pmat_static", "pmat_static_token", "pmat_full")
    for method in ("mostpop", "random", "sasrec", "tiger", *pmat):
        assert {("ml-100k", method), ("synthetic", method)} <= set(runs), method
    # 2 datasets x (4 floors and baselines + 4 PMAT); the oracle on the one with
    # planted preferences; MCRL's 8 ablations on synthetic; HDNAG on both.
    assert len(runs) == 2 * (4 + 4) + 1 + 8 + 2
    assert {d for d, m in runs if m == "pmat_oracle"} == {"synthetic"}
    assert {d for d, m in runs if m.startswith("mcrl_")} == {"synthetic"}
    assert {m for _, m in runs if m.startswith("hdnag")} == {"hdnag"}


def test_runs_of_the_thesis_config():
    """The thesis setting adds planted-disjoint, MCRL on ml-100k and HDNAG's ablations."""

    def merge(base: dict, over: dict) -> dict:  # as Snakemake merges --configfile files
        return {**base, **{k: merge(base[k], v) if isinstance(v, dict) else v for k, v in over.items()}}

    runs = registry.runs(merge(default_config(), yaml.safe_load((REPO / "config" / "thesis.yaml").read_text())))
    # 3 datasets x (4 floors and baselines + 4 PMAT); the oracle on the 2 with planted
    # preferences; MCRL's 8 ablations on 2; HDNAG and its 2 ablations on 3.
    assert len(runs) == 3 * (4 + 4) + 2 + 2 * 8 + 3 * 3
    assert {d for d, m in runs if m == "pmat_oracle"} == {"synthetic", "planted-disjoint"}


def test_a_method_left_out_of_methods_does_not_run():
    cfg = {**default_config(), "methods": ["sasrec"]}
    names = {m for _, m in registry.runs(cfg)}
    assert "sasrec" in names and not names & {"mostpop", "random", "tiger"}


def test_mcrl_starts_from_the_pmat_generator_where_pmat_runs_else_tiger():
    cfg = {**default_config(), "pmat": {**default_config()["pmat"], "datasets": ["synthetic"]}}
    spec = registry.get("mcrl_user")
    assert f"model:{cfg['pmat']['generator']}" in spec.train_needs(cfg, "synthetic")
    assert "model:tiger" in spec.train_needs(cfg, "ml-100k")
    assert spec.rank_needs(cfg, "synthetic") == ("pmat_replayed_tables",)
    assert spec.rank_needs(cfg, "ml-100k") == ("rqkmeans_ids",)


def test_pmat_generator_chooses_what_the_replay_and_mcrl_build_on():
    cfg = default_config()
    assert registry.get("pmat_full").model_owner(cfg) == "pmat_static_token"
    cfg["pmat"] = {**cfg["pmat"], "generator": "pmat_static"}
    assert registry.get("pmat_full").model_owner(cfg) == "pmat_static"
    assert "model:pmat_static" in registry.get("mcrl_all").train_needs(cfg, "synthetic")
    cfg["pmat"]["generator"] = "tiger"
    with pytest.raises(ValueError, match="pmat.generator must be one of"):
        registry.get("pmat_full").model_owner(cfg)


def test_unknown_method_name_fails_naming_it():
    with pytest.raises(ValueError, match="methods lists 'bert4rec', which is not a registered method"):
        checks.check_config({**default_config(), "methods": ["sasrec", "bert4rec"]})


def test_a_method_with_its_own_section_cannot_be_listed_in_methods():
    with pytest.raises(ValueError, match="methods lists 'pmat_full', whose runs are chosen by its own config section"):
        checks.check_config({**default_config(), "methods": ["pmat_full"]})


def test_an_unknown_need_fails_naming_the_method(monkeypatch):
    bad = registry.MethodSpec(
        name="typo", label="typo", module="pmsid.methods.mostpop", datasets=lambda c: list(c["datasets"]),
        train_needs=lambda c, d: ("rqkmeans_idz",),
    )  # fmt: skip
    monkeypatch.setitem(registry.METHODS, "typo", bad)
    monkeypatch.setattr(registry, "_SPECS", [*registry._SPECS, bad])
    with pytest.raises(ValueError, match="method typo: unknown need 'rqkmeans_idz'"):
        registry.check_needs(default_config())


def test_unknown_method_lookup_lists_the_registered_ones():
    with pytest.raises(ValueError, match=r"unknown method 'nope'; registered methods: \['hdnag', 'hdnag_no_align'"):
        registry.get("nope")


# --------------------------------------------------------------------------- evaluation


def test_top_k_breaks_ties_by_item_index_and_drops_excluded_items():
    scores = torch.tensor([[1.0, 3.0, 3.0, 2.0, float("-inf")]])
    items, values = top_k(scores, 5)
    assert items.tolist() == [[1, 2, 3, 0, -1]]
    assert values[0, :4].tolist() == [3.0, 3.0, 2.0, 1.0] and math.isinf(values[0, 4])


def test_list_length_is_the_largest_cut_off_and_at_least_twenty():
    assert list_length([1, 5, 10]) == 20
    assert list_length([10, 50]) == 50


def hand_metrics(rank: float | None, k: int) -> dict:
    """Recall@k and NDCG@k of one user from a 1-based rank, written out by hand."""
    hit = rank is not None and rank <= k
    return {"Recall": 1.0 if hit else 0.0, "NDCG": 1.0 / math.log2(rank + 1) if hit else 0.0}


def test_metrics_from_lists_match_hand_computed_ranks():
    # Five users; each test target (the last item) sits at rank 1, 2, 5, 6 or nowhere in a 6-item list.
    seqs = seqs_of(*[[0, 1, t] for t in (10, 11, 12, 13, 14)], n_items=30)
    lists = np.array(
        [
            [10, 20, 21, 22, 23, 24],  # rank 1
            [20, 11, 21, 22, 23, 24],  # rank 2
            [20, 21, 22, 23, 12, 24],  # rank 5 (= K for K = 5)
            [20, 21, 22, 23, 24, 13],  # rank 6 (= K + 1)
            [20, 21, 22, 23, 24, 25],  # absent
        ]
    )
    users = np.arange(5)
    valid = Ranking(users=users, items=np.zeros((5, 6), np.int64))
    ranking, per_user, metrics = evaluate_rankings(seqs, {"valid": valid, "test": Ranking(users, lists)}, [1, 5], 20)
    test = per_user[per_user["split"] == "test"]
    assert test["rank"].tolist()[:4] == [1, 2, 5, 6] and pd.isna(test["rank"].tolist()[4])
    got = metrics[metrics["split"] == "test"].set_index("metric")["value"]
    ranks = [1, 2, 5, 6, None]
    for k in (1, 5):
        assert got[f"Recall@{k}"] == pytest.approx(np.mean([hand_metrics(r, k)["Recall"] for r in ranks]))
        assert got[f"NDCG@{k}"] == pytest.approx(np.mean([hand_metrics(r, k)["NDCG"] for r in ranks]))
    assert got["MRR@5"] == pytest.approx((1 + 1 / 2 + 1 / 5) / 5)
    assert got["n_users"] == 5
    # Lists hold K = 20 items: the method's 6, then -1.
    written = ranking.loc[ranking["split"] == "test", "items"].map(list).tolist()
    assert written == [row + [-1] * 14 for row in lists.tolist()]


def test_every_metric_is_recomputable_from_ranking_parquet(tmp_path):
    """An independent reimplementation over the written ranking.parquet gives the same numbers."""
    rng = np.random.default_rng(0)
    n_items, n_users = 40, 60
    seqs = seqs_of(*[rng.choice(n_items, size=6, replace=False).tolist() for _ in range(n_users)], n_items=n_items)
    users = np.arange(n_users)
    rankings = {
        split: Ranking(users, np.stack([rng.permutation(n_items)[:20] for _ in users])) for split in ("valid", "test")
    }
    ranking, _, metrics = evaluate_rankings(seqs, rankings, [1, 5, 10, 20], 20)
    contracts.write_table(ranking, tmp_path / "ranking.parquet", contracts.RANKING)
    written = contracts.read_table(tmp_path / "ranking.parquet", contracts.RANKING)
    for split, group in written.groupby("split"):
        recomputed = {}
        for k in (1, 5, 10, 20):
            hits = [list(items[:k]).count(target) for items, target in zip(group["items"], group["target_item"])]
            gains = [
                1 / math.log2(list(items).index(target) + 2) if target in list(items[:k]) else 0.0
                for items, target in zip(group["items"], group["target_item"])
            ]
            recomputed[f"Recall@{k}"] = sum(hits) / len(group)
            recomputed[f"NDCG@{k}"] = sum(gains) / len(group)
        got = metrics[metrics["split"] == split].set_index("metric")["value"]
        for name, value in recomputed.items():
            assert got[name] == pytest.approx(value, abs=1e-12), (split, name)


def test_longer_lists_are_cut_to_k():
    seqs = seqs_of([0, 1, 2], [1, 2, 3], n_items=40)
    users = np.arange(2)
    long = Ranking(users, np.tile(np.arange(30), (2, 1)), scores=np.tile(np.arange(30.0)[::-1], (2, 1)))
    ranking, per_user, _ = evaluate_rankings(seqs, {"valid": long, "test": long}, [5], 20)
    assert ranking["items"].map(len).eq(20).all() and ranking["scores"].map(len).eq(20).all()
    # User 1's test target, item 3, is 4th in the list.
    assert per_user.loc[per_user["split"] == "test", "rank"].tolist() == [3, 4]


def test_a_ranking_of_other_users_is_refused():
    seqs = seqs_of([0, 1, 2], [1, 2, 3], n_items=5)
    bad = Ranking(users=np.array([1, 0]), items=np.zeros((2, 3), np.int64))
    with pytest.raises(ValueError, match="the ranking's users differ"):
        evaluate_rankings(seqs, {"valid": bad, "test": bad}, [1], 20)


# --------------------------------------------------------------------------- the floors


def test_mostpop_counts_training_interactions_only(tmp_path):
    # Training items are all but the last two of each sequence.
    seqs = seqs_of([0, 1, 1, 4, 5], [1, 2, 3, 4], [2, 0, 9, 8], n_items=10)
    counts = mostpop.popularity(seqs)
    # Training: user 0 has 0, 1, 1; user 1 has 1, 2; user 2 has 2, 0 (4, 5, 3, 4, 9, 8 are held out).
    assert counts.tolist() == [2, 3, 2, 0, 0, 0, 0, 0, 0, 0]


def test_mostpop_ranks_by_count_ties_by_index_and_excludes_history(tmp_path):
    seqs = seqs_of([0, 1, 1, 4, 5], [1, 2, 3, 4], [2, 0, 9, 8], n_items=10)
    model = tmp_path / "mostpop.pt"
    torch.save({"kind": "mostpop", "counts": torch.from_numpy(mostpop.popularity(seqs)), "n_items": 10}, model)
    plain = mostpop.rank(rank_job(str(model), seqs, k=4))
    assert plain["test"].items.tolist() == [[1, 0, 2, 3]] * 3  # count 3, a tie at 2 by index, then the zeros
    excluded = mostpop.rank(rank_job(str(model), seqs, k=4, exclude_history=True))
    # user 0's test history is 0, 1, 1, 4; user 2's is 2, 0, 9.
    assert excluded["test"].items[0].tolist() == [2, 3, 5, 6]
    assert excluded["test"].items[2].tolist() == [1, 3, 4, 5]


def test_random_is_seeded_and_near_its_expected_recall(tmp_path):
    n_items, n_users = 50, 3000
    rng = np.random.default_rng(1)
    seqs = seqs_of(*[rng.choice(n_items, 4, replace=False).tolist() for _ in range(n_users)], n_items=n_items)

    def ranking(seed):
        path = tmp_path / f"random{seed}.pt"
        torch.save({"kind": "random", "seed": seed, "n_items": n_items}, path)
        return random_ranking.rank(rank_job(str(path), seqs, k=20))

    first, again, other = ranking(0), ranking(0), ranking(1)
    assert np.array_equal(first["test"].items, again["test"].items)
    assert not np.array_equal(first["test"].items, other["test"].items)
    assert not np.array_equal(first["valid"].items, first["test"].items)
    _, _, metrics = evaluate_rankings(seqs, first, [10, 20], 20)
    recall = metrics.set_index(["split", "metric"])["value"][("test", "Recall@20")]
    # Expected 20 / 50 = 0.4; the standard error over 3000 users is about 0.009.
    assert recall == pytest.approx(20 / n_items, abs=0.04)


def test_a_floor_refuses_a_model_of_another_dataset(tmp_path):
    seqs = seqs_of([0, 1, 2], n_items=5)
    path = tmp_path / "m.pt"
    torch.save({"kind": "random", "seed": 0, "n_items": 6}, path)
    with pytest.raises(ValueError, match="not a Random model of this dataset's 5 items"):
        random_ranking.rank(rank_job(str(path), seqs))


def write_dataset(root) -> dict:
    """A three-user dataset in the contract format."""
    return write_contract_dataset(root, [[0, 1, 2, 3, 4], [1, 2, 3, 5], [2, 0, 1, 3]], n_items=6)


def test_mostpop_through_the_generic_train_and_evaluate_stages(tmp_path):
    inputs = write_dataset(tmp_path)
    cfg = default_config()
    train_out = {
        k: str(tmp_path / "train" / n) for k, n in [("model", "model.pt"), ("log", "log.parquet"), ("extras", "extras")]
    }
    params = {
        "cfg": {}, "protocol": cfg["protocol"], "evaluation": cfg["evaluation"], "modalities": ["text"],
        "checkpoint": str(tmp_path / "ckpt.pt"), "device": "cpu", "deterministic": False,
    }  # fmt: skip
    train_method("mostpop", "d", 0, inputs, train_out, params)
    assert contracts.read_table(train_out["log"], contracts.TRAIN_LOG).empty
    out = {k: str(tmp_path / "eval" / f"{k}.parquet") for k in ("ranking", "per_user", "metrics")}
    evaluate_method("mostpop", "d", 0, {**inputs, "model": train_out["model"]}, out, params)
    ranking = contracts.read_table(out["ranking"], contracts.RANKING)
    # The list has K = 20 slots; a 6-item catalogue fills 6, the rest are -1.
    assert len(ranking) == 6 and ranking["items"].map(lambda x: list(x[6:]) == [-1] * 14).all()
    # Training: user 0 has 0, 1, 2; user 1 has 1, 2; user 2 has 2, 0: item 2 three times, 0 and 1 twice.
    assert list(ranking["items"].iloc[0][:6]) == [2, 0, 1, 3, 4, 5]
    metrics = contracts.read_table(out["metrics"], contracts.METRICS).set_index(["split", "metric"])["value"]
    per_user = contracts.read_table(out["per_user"], contracts.PER_USER)
    test_ranks = per_user.loc[per_user["split"] == "test", "rank"].to_numpy(dtype=float, na_value=np.nan)
    assert metrics[("test", "NDCG@10")] == pytest.approx(mean_metrics(test_ranks, [10])["NDCG@10"])
    assert contracts.read_metadata(out["metrics"])["method"] == "mostpop"
