"""The synthetic dataset: determinism, format, truth files, and the planted signal."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pmsid.data.amazon2018 import read_amazon2018
from pmsid.data.images import resolve_images
from pmsid.data.protocol import build_dataset
from pmsid.data.synthetic import COLOURS, SHAPES, generate_synthetic

SMALL = {"n_users": 40, "n_items": 30, "max_len": 20}


def file_hashes(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and not p.name.endswith(".parquet")
    }


def read_jsonl(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    summary = generate_synthetic(out, seed=3, n_users=240, n_items=120)
    return out, summary


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = tmp_path / "a"
    generate_synthetic(a, seed=11, **SMALL)
    first = file_hashes(a)
    assert any(k.startswith("images/") for k in first)

    # Same seed, same folder, from scratch: every JSON and PNG byte equal.
    shutil.rmtree(a)
    generate_synthetic(a, seed=11, **SMALL)
    assert file_hashes(a) == first

    # Same seed elsewhere: only the file:// URLs (which name the folder) differ.
    b = tmp_path / "b"
    generate_synthetic(b, seed=11, **SMALL)
    other = file_hashes(b)
    assert other["Synthetic_5.json.gz"] == first["Synthetic_5.json.gz"]
    assert {k: v for k, v in other.items() if k.startswith("images/")} == {
        k: v for k, v in first.items() if k.startswith("images/")
    }
    meta_a = gzip.decompress((a / "meta_Synthetic.json.gz").read_bytes()).decode()
    meta_b = gzip.decompress((b / "meta_Synthetic.json.gz").read_bytes()).decode()
    assert meta_a.replace(a.as_uri(), b.as_uri()) == meta_b

    c = tmp_path / "c"
    generate_synthetic(c, seed=12, **SMALL)
    assert file_hashes(c)["Synthetic_5.json.gz"] != first["Synthetic_5.json.gz"]


def test_reads_back_through_the_protocol(dataset):
    out, summary = dataset
    raw, raw_items = read_amazon2018(out / "Synthetic_5.json.gz", out / "meta_Synthetic.json.gz")
    assert len(raw) == summary["n_interactions"] and len(raw_items) == 120

    items, users, inter, stats = build_dataset(
        raw, raw_items, ["title", "brand", "categories", "description"], min_interactions=5, require_image=True
    )
    truth_items = pd.read_parquet(out / "truth_items.parquet").set_index("item_id")
    assert truth_items.loc[items["item_id"], "has_image"].all()
    assert stats["dropped_no_image"] > 0  # the missing-image items were really reviewed
    assert stats["n_users"] >= 200 and stats["n_items"] >= 100
    assert (inter["split"] == "test").sum() == stats["n_users"]

    images = resolve_images(items, out / "unused_downloads")
    assert (images["status"] == "ok").all()
    with Image.open(images["path"].iloc[0]) as im:
        assert im.format == "PNG" and im.size == (64, 64) and im.mode == "RGB"


def test_truth_is_consistent_with_the_files(dataset):
    out, summary = dataset
    reviews = pd.DataFrame(read_jsonl(out / "Synthetic_5.json.gz"))
    meta = read_jsonl(out / "meta_Synthetic.json.gz")
    truth_users = pd.read_parquet(out / "truth_users.parquet")
    truth_items = pd.read_parquet(out / "truth_items.parquet")

    assert set(truth_users["user_id"]) == set(reviews["reviewerID"])
    counts = reviews.groupby("reviewerID").size()
    assert (counts.loc[truth_users["user_id"]].to_numpy() == truth_users["n_interactions"].to_numpy()).all()
    assert counts.between(8, 30).all()
    # Strictly increasing review times per user, and no repeated item.
    ordered = reviews.sort_values(["reviewerID", "unixReviewTime"])
    assert (ordered.groupby("reviewerID")["unixReviewTime"].diff().dropna() > 0).all()
    assert not reviews.duplicated(["reviewerID", "asin"]).any()

    assert ((truth_users["alpha_image"] >= 0.5) == (truth_users["preference"] == "image")).all()
    assert truth_users["alpha_image"].between(0, 1).all()
    assert (truth_users["preference"] == "image").sum() == 120
    drifted = truth_users["drift_position"] >= 0
    assert 0.15 < drifted.mean() < 0.45
    same = np.ones(len(truth_users), dtype=bool)
    for attr in ("colour", "shape", "topic", "brand"):
        same &= truth_users[f"fav_{attr}_before"] == truth_users[f"fav_{attr}_after"]
        assert (truth_users.loc[drifted, f"fav_{attr}_before"] != truth_users.loc[drifted, f"fav_{attr}_after"]).all()
    assert (same == ~drifted).all()
    assert (truth_users.loc[drifted, "drift_position"] < truth_users.loc[drifted, "n_interactions"]).all()

    by_asin = {m["asin"]: m for m in meta}
    assert set(by_asin) == set(truth_items["item_id"])
    for item in truth_items.itertuples():
        urls = by_asin[item.item_id]["imageURLHighRes"]
        png = out / "images" / f"{item.item_id}.png"
        assert bool(urls) == item.has_image == png.is_file()
        if urls:
            assert urls == [png.resolve().as_uri()]
    n_missing = (~truth_items["has_image"]).sum()
    assert 1 <= n_missing <= 0.06 * len(truth_items)


def test_text_carries_no_image_attributes(dataset):
    out, _ = dataset
    words = re.compile(r"\b(" + "|".join([*SHAPES, *COLOURS]) + r")s?\b", re.IGNORECASE)
    for m in read_jsonl(out / "meta_Synthetic.json.gz"):
        text = " ".join([m["title"], m["brand"], *m["category"], *m["description"]])
        assert not words.search(text), text


def test_planted_modality_preference_and_drift(dataset):
    """Image-led users pick their favourite colour/shape far more often than
    text-led users do, and the other way round for topics; drifting users
    follow their new favourites after the drift point."""
    out, _ = dataset
    reviews = pd.DataFrame(read_jsonl(out / "Synthetic_5.json.gz"))
    items = pd.read_parquet(out / "truth_items.parquet").set_index("item_id")
    users = pd.read_parquet(out / "truth_users.parquet").set_index("user_id")
    reviews = reviews.sort_values(["reviewerID", "unixReviewTime"])
    reviews["t"] = reviews.groupby("reviewerID").cumcount()
    reviews = reviews.join(items, on="asin").join(users, on="reviewerID")
    after = (reviews["drift_position"] >= 0) & (reviews["t"] >= reviews["drift_position"])
    before = ~after

    def rate(mask, attr, phase):
        hit = reviews[attr] == reviews[f"fav_{attr}_{phase}"]
        return hit[mask].groupby(reviews.loc[mask, "preference"]).mean()

    colour = rate(before, "colour", "before")
    topic = rate(before, "topic", "before")
    # Chance is 1/8 for both; the planted preference lifts one modality.
    assert colour["image"] > 0.3 and colour["image"] > colour["text"] + 0.15
    assert topic["text"] > 0.4 and topic["text"] > topic["image"] + 0.2

    drift_users = reviews["drift_position"] >= 0
    led = np.where(reviews["preference"] == "image", "colour", "topic")
    fav_old = np.where(led == "colour", reviews["fav_colour_before"], reviews["fav_topic_before"])
    fav_new = np.where(led == "colour", reviews["fav_colour_after"], reviews["fav_topic_after"])
    value = np.where(led == "colour", reviews["colour"], reviews["topic"])
    post = (drift_users & after).to_numpy()
    new_rate, old_rate = (value[post] == fav_new[post]).mean(), (value[post] == fav_old[post]).mean()
    print(
        f"before drift: colour {colour.to_dict()}, topic {topic.to_dict()}; after: new {new_rate:.2f}, old {old_rate:.2f}"
    )
    assert new_rate > old_rate + 0.2
