"""The report's dataset table: statistics, the check against the published
figures, and image status counts, from stats.json and images.parquet."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pmsid.report.datasets import dataset_table


def write_stats(path, n_users, n_items, n_interactions, expected=None, mismatches=None, mode="error"):
    path.parent.mkdir(parents=True, exist_ok=True)
    stats = {
        "n_users": n_users,
        "n_items": n_items,
        "n_interactions": n_interactions,
        "density": n_interactions / (n_users * n_items),
    }
    if expected is not None:
        stats["expected"] = expected
        stats["stats_check"] = {"mode": mode, "mismatches": mismatches or []}
    path.write_text(json.dumps(stats))
    return path


def test_rows_counts_and_checks(tmp_path):
    a = write_stats(tmp_path / "a" / "stats.json", 10, 5, 40, {"n_users": 10, "n_items": 5})
    b = write_stats(tmp_path / "b" / "stats.json", 8, 4, 30, {"n_users": 9}, ["n_users: expected 9, got 8"], "warn")
    c = write_stats(tmp_path / "c" / "stats.json", 6, 3, 18)
    images = tmp_path / "b" / "images.parquet"
    pd.DataFrame(
        {"item_idx": [0, 1, 2, 3], "path": ["x", None, "y", "z"], "status": ["ok", "missing", "broken", "ok"]}
    ).to_parquet(images)
    table = dataset_table([a, b, c], [images], image_policy="mean")
    assert table["dataset"].tolist() == ["a", "b", "c"]
    assert table["users"].tolist() == [10, 8, 6] and table["interactions"].tolist() == [40, 30, 18]
    assert table.loc[0, "density"] == pytest.approx(40 / 50)
    assert table["check"].tolist() == ["match", "mismatch: n_users: expected 9, got 8", "-"]
    assert table.loc[0, "expected"] == "n_users=10 / n_items=5"
    assert table.loc[1, ["images ok", "images missing", "images broken", "image policy"]].tolist() == [2, 1, 1, "mean"]
    assert table.loc[0, "images ok"] == "-" and table.loc[2, "image policy"] == "-"


def test_skipped_check_and_bad_inputs_are_named(tmp_path):
    a = write_stats(tmp_path / "a" / "stats.json", 10, 5, 40, {"n_users": 11}, [], "skip")
    assert dataset_table([a]).loc[0, "check"] == "not checked"
    bad = tmp_path / "bad" / "stats.json"
    bad.parent.mkdir()
    bad.write_text(json.dumps({"n_users": 1}))
    with pytest.raises(ValueError, match=r"bad/stats.json: stats lack \['n_items', 'n_interactions', 'density'\]"):
        dataset_table([bad])
    images = tmp_path / "a" / "images.parquet"
    pd.DataFrame({"item_idx": [0], "path": ["x"], "status": ["fine"]}).to_parquet(images)
    with pytest.raises(ValueError, match=r"unknown image status\(es\) \['fine'\]"):
        dataset_table([a], [images])
