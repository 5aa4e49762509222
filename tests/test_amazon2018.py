"""The Amazon 2018 reader on a hand-written fixture (image resolution: tests/test_images.py)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from pmsid.data.amazon2018 import clean_text, read_amazon2018
from pmsid.data.protocol import build_dataset


def write_jsonl_gz(path: Path, lines: list) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for line in lines:
            f.write(line if isinstance(line, str) else json.dumps(line, ensure_ascii=False))
            f.write("\n")
    return path


def review(user, asin, t, **extra):
    return {"overall": 5.0, "reviewerID": user, "asin": asin, "unixReviewTime": t, "reviewTime": "x", **extra}


@pytest.fixture
def amazon_files(tmp_path):
    reviews = []
    t = 1_500_000_000
    # Three users each review the four items A1..A4 (a 3-core), in varied order.
    for user, order in {"UA": "1234", "UB": "4321", "UC": "2143"}.items():
        for k in order:
            reviews.append(review(user, f"A{k}", t := t + 86400, reviewText="Très bien ✓"))
    reviews += [
        review("UA", "A1", t + 10**6),  # a duplicate review (later): dedup drops it
        review("UA", "NOMETA", t),  # item without metadata
        "",  # a blank line is tolerated
        {"reviewerID": "UD", "asin": "A1", "unixReviewTime": "1500000000"},  # minimal fields, time as text
    ]
    meta = [
        {
            "asin": "A1",
            "title": "Caf\u00e9 Cr\u00e8me Guitar Strings \u266b",
            "brand": "  Ernie  Ball ",
            "category": ["Musical Instruments", "Strings", "<b>Electric</b>"],
            "description": ["Bright &amp; clear tone.<br/>Lasts\n\nlonger.", "", "Nickel wound."],
            "imageURLHighRes": ["https://img/A1_hi.jpg"],
            "imageURL": ["https://img/A1_lo.jpg"],
        },
        {
            "asin": "A2",
            "title": "Tuner",
            "description": "A single string, not a list. Size < 5 cm.",
            "imageURLHighRes": [],
            "imageURL": ["https://img/A2_lo.jpg"],
        },
        {"asin": "A3", "title": "Capo", "brand": "", "imageURLHighRes": [], "imageURL": []},  # no image
        {"asin": "A4", "category": ["Musical Instruments"]},  # no title, no brand, no images
        {"asin": "A1", "title": "A later duplicate line, skipped"},
    ]
    return write_jsonl_gz(tmp_path / "Cat_5.json.gz", reviews), write_jsonl_gz(tmp_path / "meta_Cat.json.gz", meta)


def test_read_amazon2018_fields(amazon_files):
    inter, items = read_amazon2018(*amazon_files)

    assert list(inter.columns) == ["user_id", "item_id", "timestamp"]
    assert len(inter) == 15 and inter["timestamp"].dtype == "int64"
    assert inter.iloc[-1].tolist() == ["UD", "A1", 1_500_000_000]

    assert list(items.columns) == ["item_id", "title", "brand", "categories", "description", "image_url"]
    assert items["item_id"].tolist() == ["A1", "A2", "A3", "A4"]  # duplicate A1 line skipped
    a1, a2, a3, a4 = (items.iloc[k] for k in range(4))
    assert a1["title"] == "Café Crème Guitar Strings ♫"
    assert a1["brand"] == "Ernie Ball"
    assert a1["categories"] == ["Musical Instruments", "Strings", "Electric"]
    assert a1["description"] == "Bright & clear tone. Lasts longer. Nickel wound."
    assert a1["image_url"] == "https://img/A1_hi.jpg"  # high-res first
    assert a2["image_url"] == "https://img/A2_lo.jpg"  # else the small one
    assert a2["description"] == "A single string, not a list. Size < 5 cm."  # a literal '<' survives
    assert pd.isna(a2["brand"]) and pd.isna(a3["brand"]) and pd.isna(a3["image_url"])
    assert pd.isna(a4["title"]) and a4["categories"] == ["Musical Instruments"] and pd.isna(a4["image_url"])


def test_amazon2018_through_the_protocol(amazon_files):
    inter, items = read_amazon2018(*amazon_files)
    fields = ["title", "brand", "categories", "description"]
    items_df, users_df, inter_df, stats = build_dataset(inter, items, fields, min_interactions=3)
    assert items_df["item_id"].tolist() == ["A1", "A2", "A3", "A4"]
    assert users_df["user_id"].tolist() == ["UA", "UB", "UC"]
    assert stats["dropped_no_metadata"] == 1 and stats["dropped_duplicates"] == 1 and stats["dropped_k_core"] == 1
    assert items_df["text"].iloc[0] == (
        "title: Café Crème Guitar Strings ♫; brand: Ernie Ball; categories: Musical Instruments, Strings, "
        "Electric; description: Bright & clear tone. Lasts longer. Nickel wound."
    )
    assert items_df["text"].iloc[3] == "categories: Musical Instruments"

    # Image-filtered protocol: A3 and A4 have no image, so the users keep 2 items and nothing survives a 3-core.
    with pytest.raises(ValueError, match="no interactions left"):
        build_dataset(inter, items, fields, min_interactions=3, require_image=True)


def test_review_missing_field_names_file_line_and_field(tmp_path):
    path = write_jsonl_gz(
        tmp_path / "Bad_5.json.gz",
        [review("U1", "A1", 1), {"reviewerID": "U2", "asin": "A1", "overall": 4.0}],
    )
    meta = write_jsonl_gz(tmp_path / "meta_Bad.json.gz", [{"asin": "A1"}])
    with pytest.raises(ValueError, match=r"Bad_5\.json\.gz, line 2: review lacks field 'unixReviewTime'"):
        read_amazon2018(path, meta)

    broken = tmp_path / "Broken_5.json.gz"
    broken.write_bytes(
        gzip.compress(b'{"reviewerID": "U1", "asin": "A1", "unixReviewTime": 1}\n{"reviewerID": "U2", "as')
    )
    with pytest.raises(ValueError, match=r"Broken_5\.json\.gz, line 2: not valid JSON"):
        read_amazon2018(broken, meta)

    good = write_jsonl_gz(tmp_path / "Good_5.json.gz", [review("U1", "A1", 1)])
    no_asin = write_jsonl_gz(tmp_path / "meta_NoAsin.json.gz", [{"asin": "A1"}, {"title": "x"}])
    with pytest.raises(ValueError, match=r"meta_NoAsin\.json\.gz, line 2: metadata lacks field 'asin'"):
        read_amazon2018(good, no_asin)


def test_clean_text():
    assert clean_text(" a&nbsp;b <br>c\t\n d &lt;e&gt; ") == "a b c d <e>"
    assert clean_text("<p> </p>") is None
    assert clean_text(None) is None
