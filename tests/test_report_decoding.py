"""The report's decoding table: constrained against unconstrained beam search, from a hand-built runs frame."""

from __future__ import annotations

import pandas as pd
import pytest

from pmsid.report.decoding import DECODING_CAPTION, DECODING_METRICS, decoding_table
from pmsid.report.tables import PM


def generator_run(dataset, model, seed, free_rate, ndcg, recall, free_ndcg, free_recall):
    """Test and valid rows of one TIGER-style evaluation, as collect_runs returns them."""
    test = {
        "invalid_id_rate": 0.0,
        "unconstrained_invalid_id_rate": free_rate,
        "NDCG@10": ndcg,
        "Recall@10": recall,
        "unconstrained_NDCG@10": free_ndcg,
        "unconstrained_Recall@10": free_recall,
        "beam_seconds_per_user": 0.01,
        "n_users": 100.0,
    }
    rows = [(dataset, model, seed, "test", metric, value) for metric, value in test.items()]
    # The valid split has no unconstrained search; its rows must be ignored.
    rows += [(dataset, model, seed, "valid", metric, 0.5) for metric in ("invalid_id_rate", "NDCG@10", "Recall@10")]
    return rows


def runs_frame(*groups):
    rows = [row for group in groups for row in group]
    return pd.DataFrame(rows, columns=["dataset", "model", "seed", "split", "metric", "value"])


def sasrec_run(dataset, seed):
    return [(dataset, "sasrec", seed, "test", m, v) for m, v in (("NDCG@10", 0.3), ("Recall@10", 0.4))]


def standard_runs():
    return runs_frame(
        generator_run("ml-100k", "tiger", 0, 0.40, 0.020, 0.040, 0.010, 0.020),
        generator_run("ml-100k", "tiger", 1, 0.60, 0.040, 0.060, 0.030, 0.040),
        generator_run("ml-100k", "pmat_static", 0, 0.25, 0.050, 0.080, 0.045, 0.070),
        generator_run("synthetic", "tiger", 0, 0.10, 0.100, 0.200, 0.090, 0.180),
        sasrec_run("ml-100k", 0),
    )


def test_one_row_per_generator_with_mean_and_std_over_seeds():
    table = decoding_table(standard_runs())
    assert list(table.columns) == ["dataset", "model", "seeds", *DECODING_METRICS]
    # SASRec ran no beam search: no row. Sorted by dataset, then model.
    assert list(zip(table["dataset"], table["model"])) == [
        ("ml-100k", "pmat_static"),
        ("ml-100k", "tiger"),
        ("synthetic", "tiger"),
    ]
    tiger = table.iloc[1]
    assert tiger["seeds"] == 2
    assert tiger["invalid_id_rate"] == f"0.0000 {PM} 0.0000"
    # mean 0.5, sample std of (0.4, 0.6) = 0.1414
    assert tiger["unconstrained_invalid_id_rate"] == f"0.5000 {PM} 0.1414"
    assert tiger["NDCG@10"] == f"0.0300 {PM} 0.0141"
    assert tiger["unconstrained_Recall@10"] == f"0.0300 {PM} 0.0141"
    single = table.iloc[0]  # one seed: no std
    assert single["seeds"] == 1
    assert single["unconstrained_invalid_id_rate"] == "0.2500"
    assert single["Recall@10"] == "0.0800" and single["unconstrained_NDCG@10"] == "0.0450"


def test_no_generator_gives_an_empty_table_with_the_columns():
    table = decoding_table(runs_frame(sasrec_run("ml-100k", 0), sasrec_run("ml-100k", 1)))
    assert table.empty
    assert list(table.columns) == ["dataset", "model", "seeds", *DECODING_METRICS]


def test_a_seed_without_the_unconstrained_search_fails_naming_it():
    old = [
        row for row in generator_run("ml-100k", "tiger", 2, 0.5, 0.1, 0.1, 0.1, 0.1) if "unconstrained" not in row[4]
    ]
    runs = pd.concat([standard_runs(), runs_frame(old)], ignore_index=True)
    with pytest.raises(ValueError, match=r"ml-100k/tiger seed\(s\) \[2\] have no unconstrained_invalid_id_rate"):
        decoding_table(runs)


def test_a_missing_constrained_metric_fails_naming_it():
    runs = standard_runs()
    runs = runs[~((runs["model"] == "pmat_static") & (runs["metric"] == "Recall@10"))]
    with pytest.raises(ValueError, match=r"ml-100k/pmat_static lacks test metric\(s\) \['Recall@10'\]"):
        decoding_table(runs)


def test_a_nonzero_constrained_invalid_rate_is_a_bug_not_a_cell():
    runs = standard_runs()
    broken = (runs["model"] == "pmat_static") & (runs["split"] == "test") & (runs["metric"] == "invalid_id_rate")
    runs.loc[broken, "value"] = 0.01
    with pytest.raises(ValueError, match=r"ml-100k/pmat_static seed\(s\) \[0\] have a constrained invalid_id_rate"):
        decoding_table(runs)


def test_caption_says_the_constrained_rate_is_an_invariant():
    assert "0 by construction" in DECODING_CAPTION
    assert "invariant" in DECODING_CAPTION and "not a result" in DECODING_CAPTION
    assert "unconstrained" in DECODING_CAPTION and PM in DECODING_CAPTION
