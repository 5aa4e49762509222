"""The data protocol: dedup, iterative k-core, leave-one-out, build_dataset, ml-100k."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pmsid.data.contracts import INTERACTIONS, ITEMS, USERS, read_table, write_table
from pmsid.data.ml100k import default_ml100k_dir, read_atomic, read_ml100k
from pmsid.data.protocol import build_dataset, deduplicate, k_core, split_leave_one_out


def frame(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).astype({"timestamp": np.int64})


def pairs(df):
    return set(zip(df["user_id"], df["item_id"]))


# ---- dedup -------------------------------------------------------------------


def test_deduplicate_keeps_earliest_and_input_order():
    df = frame(
        [
            ("u1", "a", 50),
            ("u2", "a", 7),
            ("u1", "b", 20),
            ("u1", "a", 30),  # earlier repeat of (u1, a): this one stays
            ("u1", "a", 30),  # exact repeat of the earliest: the first of the two stays
            ("u2", "b", 9),
        ]
    )
    df.index = [10, 11, 12, 13, 14, 15]  # a caller's index must not matter
    out = deduplicate(df)
    assert out.values.tolist() == [["u2", "a", 7], ["u1", "b", 20], ["u1", "a", 30], ["u2", "b", 9]]
    assert out.index.tolist() == [0, 1, 2, 3]


# ---- k-core ------------------------------------------------------------------


def cascade_case() -> tuple[pd.DataFrame, set]:
    """A 5x5 block that is a 5-core, plus a fringe that needs four rounds to remove.

    Round 1 drops item F (4 users). Then u5..u8 fall to 4 items (round 2),
    which leaves item G with 4 users (round 3), which leaves u9..u12 with 4
    items (round 4).
    """
    rows, t = [], 0
    core = {(f"u{u}", i) for u in range(5) for i in "ABCDE"}
    for u, i in sorted(core):
        rows.append((u, i, t := t + 1))
    for u, items in {
        "u5": "ABCFG",
        "u6": "ABCDF",
        "u7": "ABCDF",
        "u8": "ABCDF",
        "u9": "ABCDG",
        "u10": "ABCDG",
        "u11": "ABCDG",
        "u12": "ABCDG",
    }.items():
        for i in items:
            rows.append((u, i, t := t + 1))
    return frame(rows), core


def test_k_core_iterates_until_stable():
    df, core = cascade_case()
    # The case is built so that one pass is not enough:
    one_pass = df[
        (df.groupby("user_id")["item_id"].transform("size") >= 5)
        & (df.groupby("item_id")["user_id"].transform("size") >= 5)
    ]
    assert pairs(one_pass) != core and "F" not in set(one_pass["item_id"])

    out = k_core(df, 5)
    assert pairs(out) == core
    assert out["user_id"].value_counts().min() >= 5 and out["item_id"].value_counts().min() >= 5
    # Order kept: the surviving rows appear as they did in the input.
    assert out["timestamp"].is_monotonic_increasing
    assert k_core(out, 5).equals(out)  # a k-core is a fixed point


def test_k_core_rejects_bad_k():
    df, _ = cascade_case()
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        k_core(df, 0)


# ---- leave-one-out -------------------------------------------------------------


def test_split_leave_one_out_sorts_by_time_and_breaks_ties_by_input_order():
    df = frame(
        [
            ("u1", "a", 10),
            ("u2", "x", 1),
            ("u1", "b", 5),
            ("u1", "c", 10),
            ("u2", "z", 2),
            ("u1", "d", 20),
            ("u2", "y", 2),  # ties with z at the end: z came first, so y is last (test)
            ("u1", "e", 10),
        ]
    )
    out = split_leave_one_out(df)
    u1 = out[out["user_id"] == "u1"]
    assert u1["item_id"].tolist() == ["b", "a", "c", "e", "d"]
    assert u1["position"].tolist() == [0, 1, 2, 3, 4]
    assert u1["split"].tolist() == ["train", "train", "train", "valid", "test"]
    u2 = out[out["user_id"] == "u2"]
    assert u2["item_id"].tolist() == ["x", "z", "y"]
    assert u2["split"].tolist() == ["train", "valid", "test"]
    assert out["position"].dtype == np.int32


def test_split_leave_one_out_needs_three_interactions():
    df = frame([("u1", "a", 1), ("u1", "b", 2), ("u2", "a", 1), ("u2", "b", 2), ("u2", "c", 3)])
    with pytest.raises(ValueError, match=r"u1.*k_core"):
        split_leave_one_out(df)


# ---- build_dataset ---------------------------------------------------------------


def small_raw():
    """Three users x four items, everybody saw everything (a 3-core), plus noise
    the filters must remove."""
    rows = []
    t = 0
    for u in ["u2", "u10", "u1"]:
        for i in ["i3", "i1", "i2", "i4"]:
            rows.append((u, i, t := t + 1))
    rows += [
        ("u1", "i1", 999),  # a later duplicate
        ("u1", "nometa", 5),  # an item without metadata
        ("u3", "i1", 7),  # a user with one interaction: the k-core drops them
    ]
    items = pd.DataFrame(
        {
            "item_id": ["i1", "i2", "i3", "i4", "extra"],
            "title": ["First  item\n", "Second", None, "Fourth", "unused"],
            "tags": [["a", "b"], [], ["c", None, " "], np.nan, ["z"]],
            "image_url": ["file:///x/1.png", None, "  ", "http://h/4.jpg", None],
        }
    )
    return frame(rows), items


def test_build_dataset_contracts_text_and_stats(tmp_path):
    raw, raw_items = small_raw()
    items, users, inter, stats = build_dataset(raw, raw_items, ["title", "tags"], min_interactions=3)

    # Frames match the contracts exactly, and survive a write/read round trip.
    for df, schema, name in ((items, ITEMS, "items"), (users, USERS, "users"), (inter, INTERACTIONS, "inter")):
        assert list(df.columns) == schema.names
        write_table(df, tmp_path / f"{name}.parquet", schema)
        pd.testing.assert_frame_equal(read_table(tmp_path / f"{name}.parquet", schema), df)

    # Dense indices in sorted raw-id (string) order.
    assert items["item_id"].tolist() == ["i1", "i2", "i3", "i4"]
    assert users["user_id"].tolist() == ["u1", "u10", "u2"]
    assert items["text"].tolist() == ["title: First item; tags: a, b", "title: Second", "tags: c", "title: Fourth"]
    assert items["image_url"].isna().tolist() == [False, True, True, False]

    assert (stats["n_users"], stats["n_items"], stats["n_interactions"]) == (3, 4, 12)
    assert stats["raw_interactions"] == 15 and stats["raw_users"] == 4 and stats["raw_items"] == 5
    assert stats["dropped_no_metadata"] == 1
    assert stats["dropped_duplicates"] == 1
    assert stats["dropped_k_core"] == 1 and stats["dropped_k_core_users"] == 1
    assert stats["density"] == pytest.approx(1.0) and stats["avg_seq_len"] == pytest.approx(4.0)

    # Leave-one-out per user; u1 (user_idx 0) saw i3, i1, i2, i4 in that order.
    u1 = inter[inter["user_idx"] == 0]
    assert u1["item_idx"].tolist() == [2, 0, 1, 3]
    assert u1["split"].tolist() == ["train", "train", "valid", "test"]
    assert inter.groupby("user_idx")["split"].apply(lambda s: (s == "test").sum()).eq(1).all()


def test_build_dataset_require_image_drops_items_without_one():
    raw, raw_items = small_raw()
    # With only i1 and i4 imaged, nobody keeps 3 items: the data is too small.
    with pytest.raises(ValueError, match="no interactions left"):
        build_dataset(raw, raw_items, ["title"], min_interactions=3, require_image=True)
    raw_items["image_url"] = ["a.png", "b.png", None, "d.png", None]
    items, _, _, stats = build_dataset(raw, raw_items, ["title"], min_interactions=3, require_image=True)
    assert items["item_id"].tolist() == ["i1", "i2", "i4"]
    assert stats["dropped_no_image"] == 3  # (u2, u10, u1) x i3


def test_build_dataset_fails_on_empty_text_naming_the_item():
    raw, raw_items = small_raw()
    with pytest.raises(ValueError, match=r"item 'i3' has empty text"):
        build_dataset(raw, raw_items, ["title"], min_interactions=3)


def test_missing_columns_are_named():
    raw, raw_items = small_raw()
    with pytest.raises(
        ValueError, match=r"raw_interactions: missing column\(s\) \['timestamp'\]; found \['user_id', 'item_id'\]"
    ):
        build_dataset(raw.drop(columns="timestamp"), raw_items, ["title"], min_interactions=3)
    with pytest.raises(ValueError, match=r"raw_items: missing column\(s\) \['brand'\]"):
        build_dataset(raw, raw_items, ["title", "brand"], min_interactions=3)
    with pytest.raises(ValueError, match="duplicate item_id"):
        build_dataset(raw, pd.concat([raw_items, raw_items]), ["title"], min_interactions=3)


# ---- MovieLens-100K (real data) -----------------------------------------------------


def test_ml100k_five_core_matches_the_known_figures():
    raw, raw_items = read_ml100k(default_ml100k_dir())
    assert len(raw) == 100_000 and len(raw_items) == 1_682
    assert raw["timestamp"].dtype == np.int64
    toy = raw_items[raw_items["item_id"] == "1"].iloc[0]
    assert (toy["title"], toy["year"], toy["genres"]) == ("Toy Story", "1995", "Animation, Children's, Comedy")
    assert raw_items["image_url"].isna().all()

    items, users, inter, stats = build_dataset(raw, raw_items, ["title", "year", "genres"], min_interactions=5)
    assert (stats["n_users"], stats["n_items"], stats["n_interactions"]) == (943, 1_349, 99_287)
    assert len(items) == 1_349 and len(users) == 943 and len(inter) == 99_287
    assert (inter["split"] == "test").sum() == 943


def test_ml100k_missing_column_names_file_and_column(tmp_path):
    bad = tmp_path / "ml-100k.inter"
    bad.write_text("user_id:token\titem_id:token\trating:float\n1\t2\t3\n")
    (tmp_path / "ml-100k.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    )
    with pytest.raises(ValueError, match=r"ml-100k\.inter: missing column\(s\) \['timestamp'\]; found"):
        read_ml100k(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_atomic(tmp_path / "absent.item", ["item_id"])


# ---- given splits (Amazon 2023) -------------------------------------------------------


def test_given_split_is_neither_deduplicated_nor_filtered():
    raw = frame(
        [
            ("u1", "a", 10),
            ("u1", "a", 5),  # a repeat, kept: the release decided
            ("u1", "b", 20),
            ("u1", "c", 30),
            ("u2", "b", 1),  # u2 has 3 rows only, kept although min_interactions is 5
            ("u2", "a", 2),
            ("u2", "c", 3),
        ]
    )
    raw["split"] = ["train", "train", "valid", "test", "train", "valid", "test"]
    items = pd.DataFrame({"item_id": ["a", "b", "c"], "title": ["A", "B", "C"], "image_url": [None] * 3})
    _, users, inter, stats = build_dataset(raw, items, ["title"], min_interactions=5)
    assert (stats["n_users"], stats["n_interactions"], stats["dropped_duplicates"]) == (2, 7, 0)
    assert stats["given_split"] is True and stats["min_interactions"] is None
    u1 = inter[inter["user_idx"] == 0]
    assert u1["item_idx"].tolist() == [0, 0, 1, 2] and u1["timestamp"].tolist() == [5, 10, 20, 30]
    assert u1["split"].tolist() == ["train", "train", "valid", "test"]
    # Without the split column the same rows get the standard protocol.
    with pytest.raises(ValueError, match="no interactions left"):
        build_dataset(raw.drop(columns="split"), items, ["title"], min_interactions=5)
