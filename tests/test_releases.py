"""One reader per dataset release, on raw-format fixtures served by a local
mirror (tests/mirror.py), and the release catalogue (pmsid.data.releases)."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import json
import subprocess
import sys
import threading
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mirror import DATASETS, FIXTURES, build_mirror

from pmsid.data.amazon2014 import read_amazon2014
from pmsid.data.amazon2018 import read_amazon2018
from pmsid.data.amazon2023 import main_image, read_amazon2023
from pmsid.data.contracts import INTERACTIONS, ITEMS, USERS
from pmsid.data.images import resolve_images
from pmsid.data.local import read_local
from pmsid.data.movielens import VARIANTS, read_movielens, split_title
from pmsid.data.protocol import build_dataset
from pmsid.data.releases import (
    MOVIELENS_VARIANTS,
    READERS_WITH_DOWNLOADS,
    check_stats,
    expected_stats,
    raw_files,
    read_release,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    root = tmp_path_factory.mktemp("mirror")
    return root, build_mirror(root, root.as_uri())


def build(spec: dict, raw_interactions=None, raw_items=None, **kwargs):
    if raw_interactions is None:
        raw_interactions, raw_items = read_release(spec["reader"], spec["raw"], spec["category"])
    kwargs = {"min_interactions": 5, "require_image": spec["require_image"], **kwargs}
    return build_dataset(raw_interactions, raw_items, spec["text_fields"], **kwargs)


def gz_lines(path: Path, lines: list[str]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


# ---- Amazon 2014 ----------------------------------------------------------------------------


def test_amazon2014_fields(mirror, caplog):
    _, m = mirror
    spec = m["amazon2014"]
    with caplog.at_level("INFO", logger="pmsid.data"):
        inter, items = read_amazon2014(spec["raw"]["reviews"], spec["raw"]["meta"])
    assert "skipped 1 duplicate metadata line" in caplog.text

    assert list(inter.columns) == ["user_id", "item_id", "timestamp"] and inter["timestamp"].dtype == np.int64
    assert len(inter) == 58
    assert list(items.columns) == ["item_id", "image_url", "title", "brand", "categories", "description"]
    assert items["item_id"].tolist() == [f"B00BEAUTY{k}" for k in range(7)] + ["B00FRINGE1", "B00UNREV01"]
    item = items.set_index("item_id")
    b0, b1, b2, b3, b4 = (item.loc[f"B00BEAUTY{k}"] for k in range(5))
    assert b0["title"] == "Crème Brûlée Lip Balm" and b0["brand"] == "Maison Rosé"
    assert b0["categories"] == ["Beauty", "Skin Care", "Lips", "Makeup"]  # two paths, flattened, unique
    assert b0["description"] == "A rich lip balm & moisturiser. Shea butter, no parabens."
    assert b0["image_url"] == f"{mirror[0].as_uri()}/amazon2014/images/B00BEAUTY0.png"
    # \xe9 and \u2122 escapes inside a double-quoted Python literal
    assert b1["title"] == "L'Oréal Paris Voluminous Mascara\u2122" and b1["brand"] == "L'Oréal Paris"
    assert b2["title"] == "Rose Water Toner" and pd.isna(b2["image_url"])  # first line wins; no imUrl
    assert pd.isna(b3["title"]) and pd.isna(b3["brand"]) and pd.isna(b3["description"])
    assert b3["categories"] == ["Beauty", "Fragrance", "Women"]
    assert pd.isna(b4["description"])  # whitespace only


def test_amazon2014_metadata_is_never_evaluated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    reviews = gz_lines(tmp_path / "reviews_Evil_5.json.gz", ['{"reviewerID": "U", "asin": "A", "unixReviewTime": 1}'])
    marker = tmp_path / "pwned"
    meta = gz_lines(
        tmp_path / "meta_Evil.json.gz",
        ["{'asin': 'A', 'title': 'fine'}", f"__import__('os').system('touch {marker}')"],
    )
    with pytest.raises(ValueError, match=r"meta_Evil\.json\.gz, line 2: not a Python literal .*literal_eval"):
        read_amazon2014(reviews, meta)
    assert not marker.exists()

    inside = gz_lines(tmp_path / "meta_Inside.json.gz", ["{'asin': 'A', 'title': __import__('os').getcwd()}"])
    with pytest.raises(ValueError, match=r"meta_Inside\.json\.gz, line 1: not a Python literal"):
        read_amazon2014(reviews, inside)
    not_dict = gz_lines(tmp_path / "meta_List.json.gz", ["['A', 'B']"])
    with pytest.raises(ValueError, match=r"meta_List\.json\.gz, line 1: expected a dict literal, got list"):
        read_amazon2014(reviews, not_dict)


def test_amazon2014_through_the_protocol(mirror):
    _, m = mirror
    spec = m["amazon2014"]
    raw, raw_items = read_release("amazon2014", spec["raw"], "Beauty")
    items, users, inter, stats = build(spec, raw, raw_items)
    assert {k: stats[k] for k in spec["stats"]} == spec["stats"]
    # The repeated review is gone, the earliest kept.
    alpha = users.loc[users["user_id"] == "A2ALPHA0BEAUTY", "user_idx"].item()
    b1 = items.loc[items["item_id"] == "B00BEAUTY1", "item_idx"].item()
    rows = inter[(inter["user_idx"] == alpha) & (inter["item_idx"] == b1)]
    first = raw[(raw["user_id"] == "A2ALPHA0BEAUTY") & (raw["item_id"] == "B00BEAUTY1")]["timestamp"].min()
    assert len(rows) == 1 and rows["timestamp"].item() == first
    # Items without an image stay (the 2014 protocol is not image-filtered).
    assert items.set_index("item_id").loc["B00BEAUTY2", "image_url"] is None or pd.isna(
        items.set_index("item_id").loc["B00BEAUTY2", "image_url"]
    )
    assert items.set_index("item_id").loc["B00BEAUTY3", "text"] == "categories: Beauty, Fragrance, Women"


# ---- Amazon 2018 ----------------------------------------------------------------------------


def test_amazon2018_images_and_image_filter(mirror):
    root, m = mirror
    spec = m["amazon2018"]
    raw, raw_items = read_amazon2018(spec["raw"]["reviews"], spec["raw"]["meta"])
    url = raw_items.set_index("item_id")["image_url"]
    base = f"{root.as_uri()}/amazon2018/images"
    assert url["B00MUSIC00"] == f"{base}/B00MUSIC00.png"  # imageURLHighRes before imageURL
    assert url["B00MUSIC01"] == f"{base}/B00MUSIC01_lo.png"  # only a small image
    assert pd.isna(url["B00NOIMG01"])

    items, _, _, stats = build(spec, raw, raw_items)
    assert {k: stats[k] for k in spec["stats"]} == spec["stats"]
    assert "B00NOIMG01" not in set(items["item_id"])
    # Without the image filter the imageless item (7 reviews) and its fan survive.
    items_all, users_all, _, stats_all = build(spec, raw, raw_items, require_image=False)
    assert "B00NOIMG01" in set(items_all["item_id"]) and "A9NOIMGFAN" in set(users_all["user_id"])
    assert stats_all["dropped_no_image"] == 0 and stats_all["n_items"] == 7

    # The missing and the broken image are found as such.
    images = resolve_images(items, root / "image_cache")
    status = dict(zip(items["item_id"], images["status"]))
    assert status["B00MUSIC04"] == "missing" and status["B00MUSIC05"] == "broken"
    assert [status[f"B00MUSIC0{k}"] for k in (0, 1, 2, 3)] == ["ok"] * 4


# ---- Amazon 2023 ----------------------------------------------------------------------------


def read_2023(spec):
    raw = spec["raw"]
    return read_amazon2023(raw["train"], raw["valid"], raw["test"], raw["meta"])


def test_amazon2023_reader(mirror):
    root, m = mirror
    inter, items = read_2023(m["amazon2023"])
    assert list(inter.columns) == ["user_id", "item_id", "timestamp", "split"]
    assert inter["split"].tolist() == ["train"] * 28 + ["valid"] * 7 + ["test"] * 7
    assert inter["timestamp"].dtype == np.int64
    train_file = pd.read_csv(FIXTURES / "amazon2023" / "Musical_Instruments.train.csv")
    assert sorted(inter["timestamp"].iloc[:28]) == sorted(train_file["timestamp"] // 1000)  # ms -> s, floored
    assert inter["timestamp"].iloc[:28].is_monotonic_increasing  # train rows in time order

    assert list(items.columns) == ["item_id", "image_url", "title", "brand", "categories", "description", "features"]
    assert len(items) == 9  # a repeated line skipped
    item = items.set_index("item_id")
    base = f"{root.as_uri()}/amazon2023/images"
    assert item.loc["B0002E1G5C", "image_url"] == f"{base}/B0002E1G5C.png"  # MAIN hi_res
    assert item.loc["B0002GXF8Q", "image_url"] == f"{base}/B0002GXF8Q_large.png"  # MAIN without hi_res: large
    assert item.loc["B0006NDF8A", "image_url"] == f"{base}/B0006NDF8A_pt01.png"  # no MAIN: the first image
    assert pd.isna(item.loc["B000EEJDBQ", "image_url"]) and pd.isna(item.loc["B000EEJDBQ", "brand"])
    a = item.loc["B0002E1G5C"]
    assert a["title"] == "D'Addario EJ16 Phosphor Bronze Acoustic Strings" and a["brand"] == "D'Addario"
    assert a["description"] == "Corrosion-resistant phosphor bronze. Warm, bright tone."
    assert a["features"] == ["Light gauge: .012-.053", "Made in the USA"]
    assert item.loc["B001L8KE06", "description"] == "Touch-sensitive keys. Über 600 Klänge."
    assert item.loc["B000EEJDBQ", "categories"] == []


def test_main_image_order():
    im = {"thumb": "t", "large": "L", "hi_res": "H", "variant": "PT01"}
    assert main_image([im, {**im, "variant": "MAIN", "hi_res": "MH"}]) == "MH"
    assert main_image([im, {**im, "variant": "MAIN", "hi_res": None, "large": "ML"}]) == "ML"
    assert main_image([{**im, "hi_res": None}]) == "L"
    assert main_image([]) is None and main_image(None) is None


def test_amazon2023_given_split_is_kept(mirror):
    _, m = mirror
    spec = m["amazon2023"]
    raw, raw_items = read_2023(spec)
    items, users, inter, stats = build(spec, raw, raw_items, min_interactions=7)  # no k-core: 7 is ignored
    assert {k: stats[k] for k in spec["stats"]} == spec["stats"]
    assert stats["given_split"] is True and stats["min_interactions"] is None
    assert stats["dropped_duplicates"] == 0 and stats["dropped_k_core"] == 0
    for df, schema in ((items, ITEMS), (users, USERS), (inter, INTERACTIONS)):
        assert list(df.columns) == schema.names

    item_id = items.set_index("item_idx")["item_id"]
    user_id = users.set_index("user_idx")["user_id"]
    seq = inter.assign(user=inter["user_idx"].map(user_id), item=inter["item_idx"].map(item_id))
    for split in ("valid", "test"):
        given = pd.read_csv(FIXTURES / "amazon2023" / f"Musical_Instruments.{split}.csv")
        ours = seq[seq["split"] == split].set_index("user")["item"]
        assert ours.to_dict() == dict(zip(given["user_id"], given["parent_asin"]))
        # The release's history column is each user's sequence before that row: ours matches it,
        # including two train rows in the same second (file order reversed) and a shuffled user.
        for user, history in zip(given["user_id"], given["history"]):
            row = seq[(seq["user"] == user) & (seq["split"] == split)]
            before = seq[(seq["user"] == user) & (seq["position"] < row["position"].item())]
            assert before.sort_values("position")["item"].tolist() == history.split(), user
    for _, u in seq.groupby("user_idx"):
        assert u["split"].tolist() == ["train"] * (len(u) - 2) + ["valid", "test"]
        assert u["position"].tolist() == list(range(len(u)))

    # The split, not the timestamp, puts valid and test last: even a test row dated before
    # everything else (clock skew) stays last.
    user = raw["user_id"].iloc[0]
    skewed = raw.copy()
    skewed.loc[(skewed["user_id"] == user) & (skewed["split"] == "test"), "timestamp"] = 0
    skewed.loc[(skewed["user_id"] == user) & (skewed["split"] == "valid"), "timestamp"] = 1
    _, users2, inter2, _ = build(spec, skewed, raw_items)
    u = inter2[inter2["user_idx"] == users2.loc[users2["user_id"] == user, "user_idx"].item()]
    assert u["split"].tolist() == ["train"] * 4 + ["valid", "test"] and u["timestamp"].tolist()[-2:] == [1, 0]


def test_amazon2023_split_validation(mirror):
    _, m = mirror
    spec = m["amazon2023"]
    raw, raw_items = read_2023(spec)
    user = raw["user_id"].iloc[0]

    no_test = raw[~((raw["user_id"] == user) & (raw["split"] == "test"))]
    with pytest.raises(
        ValueError, match=rf"given split: 1 of 7 user\(s\) .*'{user}': {{'train': 4, 'valid': 1, 'test': 0}}"
    ):
        build(spec, no_test, raw_items)
    two_valid = pd.concat([raw, raw[(raw["user_id"] == user) & (raw["split"] == "valid")]], ignore_index=True)
    with pytest.raises(ValueError, match=r"1 of 7 user\(s\) do not have .*exactly one valid row"):
        build(spec, two_valid, raw_items)
    only_eval = raw[~((raw["user_id"] == user) & (raw["split"] == "train"))]
    with pytest.raises(ValueError, match=r"at least one train row"):
        build(spec, only_eval, raw_items)
    odd = raw.assign(split=raw["split"].replace({"valid": "validation"}))
    with pytest.raises(ValueError, match=r"column 'split' must hold .*'validation'"):
        build(spec, odd, raw_items)

    lacking = raw_items[raw_items["item_id"] != "B0BSGM6CQ9"]
    n = int((raw["item_id"] == "B0BSGM6CQ9").sum())
    with pytest.raises(
        ValueError, match=rf"{n} interaction\(s\) on 1 item\(s\) without metadata, e\.g\. \['B0BSGM6CQ9'\]"
    ):
        build(spec, raw, lacking)
    with pytest.raises(ValueError, match=r"without an image, e\.g\. \['B000EEJDBQ'\].*require_image: false"):
        build(spec, raw, raw_items, require_image=True)


# ---- MovieLens ------------------------------------------------------------------------------


def test_movielens_1m(mirror):
    _, m = mirror
    spec = m["ml-1m"]
    inter, items = read_movielens(spec["raw"]["archive"], "ml-1m")
    assert list(inter.columns) == ["user_id", "item_id", "timestamp"] and len(inter) == 47
    assert inter["timestamp"].dtype == np.int64 and inter.iloc[0].tolist() == ["1", "29", 978301060]
    assert list(items.columns) == ["item_id", "image_url", "title", "year", "genres", "tags"]
    item = items.set_index("item_id")
    assert item.loc["73", "title"] == "Misérables, Les" and item.loc["73", "year"] == 1995  # latin-1 decoded
    assert item.loc["1176", "title"] == "Double Vie de Véronique, La (Double Life of Veronique, The)"
    assert item.loc["1", "genres"] == ["Animation", "Children's", "Comedy"]
    assert items["tags"].map(len).eq(0).all() and items["image_url"].isna().all()
    _, _, _, stats = build(spec, inter, items)
    assert {k: stats[k] for k in spec["stats"]} == spec["stats"]


def test_movielens_25m(mirror):
    _, m = mirror
    spec = m["ml-25m"]
    inter, items = read_release("movielens", spec["raw"], "ml-25m")
    assert len(inter) == 48 and inter["user_id"].nunique() == 8
    item = items.set_index("item_id")
    assert (item.loc["11", "title"], item.loc["11", "year"]) == ("American President, The", 1995)
    assert item.loc["1064", "title"] == '"Great Performances" Cats'
    assert (item.loc["171749", "title"], item.loc["171749", "year"]) == ("Death Note: Desu nôto", 2006)
    assert item.loc["171749", "genres"] == []  # "(no genres listed)"
    assert item.loc["149532", "title"] == "Marco Polo: One Hundred Eyes" and item.loc["149532", "year"] is None
    # Tags: lower-cased, stripped, most frequent first, ties alphabetical, at most 20.
    assert item.loc["1", "tags"] == ["pixar", "animation", "fun", "toys"]
    assert item.loc["11", "tags"] == ["politics, romance", "white house"]  # the empty tag is dropped
    shawshank = item.loc["318", "tags"]
    assert len(shawshank) == 20 and shawshank[0] == "tag21" and shawshank[1:3] == ["tag00", "tag01"]
    assert "tag19" not in shawshank and "tag20" not in shawshank
    assert "99999" not in item.index
    items_df, _, _, stats = build(spec, inter, items)
    assert {k: stats[k] for k in spec["stats"]} == spec["stats"]
    assert items_df.set_index("item_id").loc["1", "text"] == (
        "title: Toy Story; year: 1995; genres: Adventure, Animation, Children, Comedy, Fantasy; "
        "tags: pixar, animation, fun, toys"
    )


def test_split_title():
    titles, years = split_title(pd.Series(["Heat (1995)", "Babylon 5", "Show (2007-)", "Se7en (1995) "]))
    assert titles.tolist() == ["Heat", "Babylon 5", "Show", "Se7en"] and years == [1995, None, 2007, 1995]


def write_zip(path: Path, members: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, text in members.items():
            z.writestr(name, text)
    return path


def test_movielens_errors(mirror, tmp_path):
    _, m = mirror
    assert tuple(VARIANTS) == MOVIELENS_VARIANTS
    with pytest.raises(ValueError, match=r"unknown variant 'ml-10m'; expected one of \['ml-1m', 'ml-20m', 'ml-25m'\]"):
        read_movielens(m["ml-25m"]["raw"]["archive"], "ml-10m")
    with pytest.raises(FileNotFoundError, match=r"ml-25m\.zip: no member 'ml-1m/ratings\.dat'"):
        read_movielens(m["ml-25m"]["raw"]["archive"], "ml-1m")
    good = "movieId,title,genres\n1,Heat (1995),Action\n"
    bad = write_zip(
        tmp_path / "ml-20m.zip",
        {
            "ml-20m/ratings.csv": "userId,movieId,rating,timestamp\n1,1,4.0,10\n1,abc,4.0,11\n",
            "ml-20m/movies.csv": good,
            "ml-20m/tags.csv": "userId,movieId,tag,timestamp\n",
        },
    )
    with pytest.raises(ValueError, match=r"ml-20m/ratings\.csv, line 3: field 'movieId' is 'abc', not an integer"):
        read_movielens(bad, "ml-20m")
    no_column = write_zip(
        tmp_path / "nocol.zip",
        {"ml-20m/ratings.csv": "userId,movieId,rating\n1,1,4.0\n", "ml-20m/movies.csv": good, "ml-20m/tags.csv": ""},
    )
    with pytest.raises(
        ValueError, match=r"missing column\(s\) \['timestamp'\]; found \['userId', 'movieId', 'rating'\]"
    ):
        read_movielens(no_column, "ml-20m")
    dat = write_zip(tmp_path / "ml-1m.zip", {"ml-1m/ratings.dat": "1::1::5::1\n2::1::4\n", "ml-1m/movies.dat": ""})
    with pytest.raises(ValueError, match=r"ml-1m/ratings\.dat, line 2: field 'timestamp' is ''"):
        read_movielens(dat, "ml-1m")


# ---- the local format ---------------------------------------------------------------------------


def test_local_format(mirror):
    root, m = mirror
    spec = m["local"]
    inter, items = read_local(spec["raw"]["interactions"], spec["raw"]["items"])
    assert list(inter.columns) == ["user_id", "item_id", "timestamp"] and inter["timestamp"].dtype == np.int64
    assert list(items.columns) == ["item_id", "image_url", "title", "artist", "genre"]
    url = items.set_index("item_id")["image_url"]
    assert url["song-01"] == str(root / "local" / "images" / "song-01.png")  # relative to items.csv
    assert url["song-03"] == f"{root.as_uri()}/local/images/song-03.png"
    assert pd.isna(url["song-04"]) and pd.isna(items.set_index("item_id").loc["song-99", "genre"])
    assert items.set_index("item_id").loc["song-06", "title"] == "Für Elise"
    items_df, _, _, stats = build(spec, inter, items)
    assert {k: stats[k] for k in spec["stats"]} == spec["stats"]
    images = resolve_images(items_df, root / "local_cache")
    assert images["status"].tolist() == ["ok", "ok", "ok", "missing", "ok", "ok"]

    audio = pd.read_parquet(spec["audio"]["path"])
    assert audio["item_id"].tolist() == [i for i in items["item_id"] if i != spec["audio"]["missing"]]
    assert {len(e) for e in audio["embedding"]} == {8}


def test_local_other_formats_and_given_split(mirror, tmp_path):
    _, m = mirror
    spec = m["local"]
    inter, items = read_local(spec["raw"]["interactions"], spec["raw"]["items"])
    as_int = inter.assign(timestamp=inter["timestamp"].astype(np.int64))
    as_int.to_parquet(tmp_path / "i.parquet")
    with gzip.open(tmp_path / "i.jsonl.gz", "wt") as f:
        for row in as_int.to_dict("records"):
            f.write(json.dumps(row) + "\n")
    as_int.to_csv(tmp_path / "i.tsv", sep="\t", index=False)
    for name in ("i.parquet", "i.jsonl.gz", "i.tsv"):
        again, _ = read_local(tmp_path / name, spec["raw"]["items"])
        pd.testing.assert_frame_equal(again, inter, check_dtype=False)
        assert again["timestamp"].dtype == np.int64

    # A split column is the data's own split.
    split = inter[inter["user_id"] != "u07"].copy()
    split["split"] = "train"
    last = split.groupby("user_id")["timestamp"].transform("max") == split["timestamp"]
    split.loc[last, "split"] = "TEST"  # case is normalised
    first = split.groupby("user_id")["timestamp"].transform("min") == split["timestamp"]
    split.loc[first, "split"] = "valid"  # an unusual but legal choice: valid is the earliest
    split.to_csv(tmp_path / "split.csv", index=False)
    raw, raw_items = read_local(tmp_path / "split.csv", spec["raw"]["items"])
    assert set(raw["split"]) == {"train", "valid", "test"}
    _, _, out, stats = build(spec, raw, raw_items)
    assert stats["given_split"] is True
    assert out.groupby("user_idx")["split"].apply(lambda s: s.tolist()[-2:] == ["valid", "test"]).all()


def test_local_errors(mirror, tmp_path):
    _, m = mirror
    items = m["local"]["raw"]["items"]
    (tmp_path / "a.csv").write_text("user,item_id,timestamp\nu1,i1,1\n")
    with pytest.raises(
        ValueError,
        match=r"a\.csv: missing column\(s\) \['user_id'\]; found \['user', 'item_id', 'timestamp'\]\. "
        r"Expected \['user_id', 'item_id', 'timestamp'\] and optionally \['split'\]",
    ):
        read_local(tmp_path / "a.csv", items)
    (tmp_path / "b.csv").write_text("user_id,item_id,timestamp\nu1,i1,1\nu1,i2,2021-01-01\n")
    with pytest.raises(ValueError, match=r"b\.csv, line 3: field 'timestamp' is '2021-01-01', not integer seconds"):
        read_local(tmp_path / "b.csv", items)
    (tmp_path / "c.csv").write_text("user_id,item_id,timestamp\nu1,,1\n")
    with pytest.raises(ValueError, match=r"c\.csv, line 2: field 'item_id' is empty"):
        read_local(tmp_path / "c.csv", items)
    (tmp_path / "d.xlsx").write_text("")
    with pytest.raises(ValueError, match=r"d\.xlsx: unknown table format '\.xlsx'"):
        read_local(tmp_path / "d.xlsx", items)
    (tmp_path / "e.jsonl").write_text('{"user_id": "u1", "item_id": "i1", "timestamp": 1}\n\n{"user_id": "u2"}\n')
    with pytest.raises(ValueError, match=r"e\.jsonl, line 3: field 'item_id' is empty"):
        read_local(tmp_path / "e.jsonl", items)
    (tmp_path / "items.csv").write_text("id,title\ni1,x\n")
    with pytest.raises(ValueError, match=r"items\.csv: missing column\(s\) \['item_id'\]; found \['id', 'title'\]"):
        read_local(m["local"]["raw"]["interactions"], tmp_path / "items.csv")
    (tmp_path / "items2.csv").write_text("item_id,title\ni1,x\ni1,y\n")
    with pytest.raises(ValueError, match=r"items2\.csv: 1 duplicate item_id\(s\), e\.g\. \['i1'\]"):
        read_local(m["local"]["raw"]["interactions"], tmp_path / "items2.csv")


# ---- the catalogue: statistics ---------------------------------------------------------------


@pytest.mark.parametrize("name", list(DATASETS))
def test_every_fixture_passes_its_stats_check(mirror, name):
    _, m = mirror
    spec = m[name]
    *_, stats = build(spec)
    assert check_stats(stats, spec["stats"], "error", name) == []


def test_check_stats_modes(mirror, caplog):
    _, m = mirror
    *_, stats = build(m["amazon2018"])
    wrong = {"n_users": 17_112, "n_items": 6, "n_interactions": 136_226}
    with pytest.raises(ValueError) as err:
        check_stats(stats, wrong, "error", "instruments")
    message = str(err.value)
    assert "n_users: expected 17112, got 8" in message and "n_interactions: expected 136226, got 42" in message
    assert "n_items" not in message and "dataset instruments" in message
    assert "dataset_specs.instruments.stats_check: warn" in message

    with caplog.at_level("WARNING", logger="pmsid.data.releases"):
        found = check_stats(stats, wrong, "warn", "instruments")
    assert found == ["n_users: expected 17112, got 8", "n_interactions: expected 136226, got 42"]
    assert "n_users: expected 17112, got 8" in caplog.text
    assert check_stats(stats, wrong, "skip", "instruments") == []
    with pytest.raises(ValueError, match=r"lack key\(s\) \['n_movies'\]"):
        check_stats(stats, {"n_movies": 1}, "warn", "instruments")
    with pytest.raises(ValueError, match=r"stats_check: 'strict' is not one of \['error', 'warn', 'skip'\]"):
        check_stats(stats, wrong, "strict", "instruments")


def test_expected_stats():
    assert expected_stats("amazon2014", "Beauty") == {"n_users": 22_363, "n_items": 12_101, "n_interactions": 198_502}
    assert expected_stats("amazon2014", "Toys_and_Games")["n_interactions"] == 167_597
    assert expected_stats("amazon2018", "Video_Games") == {
        "n_users": 42_259,
        "n_items": 13_839,
        "n_interactions": 373_514,
    }
    assert expected_stats("amazon2023", "Industrial_and_Scientific")["n_users"] == 50_985
    ml25 = expected_stats("movielens", "ml-25m")
    assert ml25 == {"raw_users": 162_541, "raw_interactions": 25_000_095, "raw_items_with_metadata": 62_423}
    assert expected_stats("movielens", "ml-1m")["raw_items_with_metadata"] == 3_883
    assert expected_stats("amazon2018", "Beauty") is None and expected_stats("local", "x") is None
    expected_stats("amazon2014", "Beauty")["n_users"] = 0  # a copy: the catalogue is not changed
    assert expected_stats("amazon2014", "Beauty")["n_users"] == 22_363
    with pytest.raises(ValueError, match=r"unknown reader 'amazon2020'; expected one of \['amazon2014'"):
        expected_stats("amazon2020", "Beauty")


# ---- the catalogue: URLs and the mirror --------------------------------------------------------

# docs/METHOD.md 2.1, with {Cat} filled in.
SPEC_URLS = {
    ("amazon2014", "Beauty"): [
        "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles/reviews_Beauty_5.json.gz",
        "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles/meta_Beauty.json.gz",
    ],
    ("amazon2018", "Video_Games"): [
        "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/categoryFilesSmall/Video_Games_5.json.gz",
        "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/metaFiles2/meta_Video_Games.json.gz",
    ],
    ("amazon2023", "Musical_Instruments"): [
        "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_2023/benchmark/5core/last_out_w_his/"
        f"Musical_Instruments.{split}.csv.gz"
        for split in ("train", "valid", "test")
    ]
    + [
        "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_2023/raw/meta_categories/meta_Musical_Instruments.jsonl.gz"
    ],
    ("movielens", "ml-25m"): ["https://files.grouplens.org/datasets/movielens/ml-25m.zip"],
}


def test_raw_files_official_urls():
    for (reader, cat), urls in SPEC_URLS.items():
        files = raw_files(reader, cat)
        assert [f.url for f in files] == urls
        assert [f.filename for f in files] == [u.rsplit("/", 1)[1] for u in urls]
    assert [f.role for f in raw_files("amazon2023", "Video_Games")] == ["train", "valid", "test", "meta"]
    assert [f.role for f in raw_files("amazon2014", "Toys_and_Games")] == ["reviews", "meta"]
    (ml25,) = raw_files("movielens", "ml-25m")
    assert (ml25.role, ml25.md5, ml25.md5_url) == (
        "archive",
        "6b51fb2759a8657d3bfcbfc42b592ada",
        "https://files.grouplens.org/datasets/movielens/ml-25m.zip.md5",
    )
    assert raw_files("movielens", "ml-20m")[0].md5 == "cd245b17a1ae2cc31bb14903e1204af3"
    assert raw_files("movielens", "ml-1m")[0].md5 is None
    assert all(f.md5 is None and f.md5_url is None for f in raw_files("amazon2018", "Video_Games"))


def test_raw_files_with_base_url_and_bad_names():
    for base in ("http://127.0.0.1:8000/amazon2018/", "http://127.0.0.1:8000/amazon2018"):
        urls = [f.url for f in raw_files("amazon2018", "Musical_Instruments", base_url=base)]
        assert urls == [
            "http://127.0.0.1:8000/amazon2018/categoryFilesSmall/Musical_Instruments_5.json.gz",
            "http://127.0.0.1:8000/amazon2018/metaFiles2/meta_Musical_Instruments.json.gz",
        ]
    (ml,) = raw_files("movielens", "ml-1m", base_url="http://h/movielens")
    assert (ml.url, ml.md5_url) == ("http://h/movielens/ml-1m.zip", "http://h/movielens/ml-1m.zip.md5")
    # A mirror is checked against its own .md5 file, not the official files' MD5.
    assert raw_files("movielens", "ml-25m", base_url="http://h/movielens/")[0].md5 is None
    for reader in READERS_WITH_DOWNLOADS:  # any category of a release can be fetched
        assert raw_files(reader, "Any_Category" if reader != "movielens" else "ml-1m")
    with pytest.raises(ValueError, match=r"unknown reader 'ml100k'; expected one of \['amazon2014', 'amazon2018'"):
        raw_files("ml100k", "x")
    for bad in ("Video Games", "../etc", "a/b", ""):
        with pytest.raises(ValueError, match="not a file-name part"):
            raw_files("amazon2018", bad)
    with pytest.raises(ValueError, match=r"movielens: unknown variant 'ml-100k'"):
        raw_files("movielens", "ml-100k")


def test_read_release_dispatch_errors(mirror):
    _, m = mirror
    with pytest.raises(ValueError, match=r"amazon2023: raw files lack role\(s\) \['valid', 'test'\]"):
        read_release("amazon2023", {k: m["amazon2023"]["raw"][k] for k in ("train", "meta")}, "Musical_Instruments")
    with pytest.raises(ValueError, match=r"unknown reader 'amazon2019'"):
        read_release("amazon2019", {}, None)


def test_releases_module_imports_no_pandas():
    code = "import sys, pmsid.data.releases; sys.exit(1 if 'pandas' in sys.modules or 'torch' in sys.modules else 0)"
    env_path = str(REPO / "workflow" / "scripts")
    done = subprocess.run([sys.executable, "-c", code], cwd=env_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.fixture
def served(mirror):
    root, m = mirror
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root, m
    server.shutdown()
    server.server_close()


def test_mirror_serves_every_release_at_its_paths(served):
    url, root, m = served
    for name in ("amazon2014", "amazon2018", "amazon2023", "ml-1m", "ml-25m"):
        spec = m[name]
        files = raw_files(spec["reader"], spec["category"], base_url=f"{url}/{spec['reader']}/")
        for f in files:
            with urllib.request.urlopen(f.url, timeout=5) as r:
                data = r.read()
            assert data == (root / spec["files"][f.role]).read_bytes()
            if f.md5_url:
                with urllib.request.urlopen(f.md5_url, timeout=5) as r:
                    assert r.read().decode() == f"{hashlib.md5(data).hexdigest()}  {f.filename}\n"


def test_mirror_is_deterministic(tmp_path):
    a = build_mirror(tmp_path / "a", "http://img")
    b = build_mirror(tmp_path / "b", "http://img")
    for name in ("amazon2014", "amazon2023", "ml-1m", "ml-25m"):
        for relative in a[name]["files"].values():
            assert (tmp_path / "a" / relative).read_bytes() == (tmp_path / "b" / relative).read_bytes(), relative
    assert a["ml-1m"]["md5"] == b["ml-1m"]["md5"]
    for name in ("amazon2014", "amazon2018", "amazon2023"):
        for relative in a[name]["files"].values():
            assert (tmp_path / "a" / relative).read_bytes()[4:8] == b"\0\0\0\0"  # gzip header mtime
    with zipfile.ZipFile(tmp_path / "a" / a["ml-25m"]["files"]["archive"]) as z:
        assert {info.date_time for info in z.infolist()} == {(2019, 11, 21, 0, 0, 0)}
    # ml-1m's movies.dat is latin-1 in the archive, as in the release.
    with zipfile.ZipFile(tmp_path / "a" / a["ml-1m"]["files"]["archive"]) as z:
        assert "Misérables".encode("latin-1") in z.read("ml-1m/movies.dat")
    assert b"{IMAGE_BASE}" not in gzip.decompress((tmp_path / "a" / a["amazon2018"]["files"]["meta"]).read_bytes())


def test_every_dataset_spec_of_the_config_describes_its_release():
    import yaml

    from pmsid.report.releases import describe_release

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    got = {name: describe_release(spec, config) for name, spec in config["dataset_specs"].items()}
    assert got["ml-100k"] == "MovieLens-100K (the copy inside the PyPI package recbole)"
    assert got["synthetic"] == "generated Amazon-2018-format catalogue (synthetic.seed 7)"
    assert got["planted-disjoint"].startswith("generated planted-preference catalogue, design disjoint")
    assert (
        got["instruments-2018"] == "Amazon 2018, Musical_Instruments, image-filtered (items with metadata and an image)"
    )
    assert got["instruments-2023"].startswith("Amazon 2023 (its official 5-core leave-one-out split)")
    assert got["ml-1m"] == "MovieLens, ml-1m"
    assert len(set(got.values())) == len(got)  # no two datasets read as the same data
