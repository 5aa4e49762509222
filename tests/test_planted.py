"""Planted-preference datasets: determinism, format, and each design's planted structure."""

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

from pmsid.data.amazon2018 import read_amazon2018
from pmsid.data.planted import DESIGNS, TEXTUAL, VISUAL, attribute_values, generate_planted
from pmsid.data.protocol import build_dataset
from pmsid.data.synthetic import COLOURS, SHAPES, TEXTURES

SMALL = {"n_users": 400, "n_items": 360}  # the reviewer's size


def file_hashes(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def read_jsonl(path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    return {d: generate_planted(root / d, d, seed=5, **SMALL) for d in DESIGNS}


def choices(paths) -> pd.DataFrame:
    """One row per review with the user's truth and the item's attributes."""
    reviews = pd.DataFrame(read_jsonl(paths["reviews"]))[["reviewerID", "asin"]]
    users = pd.read_parquet(paths["truth_users"]).rename(columns={"user_id": "reviewerID"})
    items = pd.read_parquet(paths["truth_items"]).rename(columns={"item_id": "asin"})
    return reviews.merge(users, on="reviewerID").merge(items, on="asin")


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = tmp_path / "a"
    paths = generate_planted(a, "colour_kind", seed=3, n_users=30, n_items=60)
    assert set(paths) == {"reviews", "meta", "images", "truth_users", "truth_items"}
    first = file_hashes(a)
    assert sum(k.startswith("images/") for k in first) == 60
    shutil.rmtree(a)
    generate_planted(a, "colour_kind", seed=3, n_users=30, n_items=60)
    assert file_hashes(a) == first  # every file, Parquet included
    generate_planted(tmp_path / "c", "colour_kind", seed=4, n_users=30, n_items=60)
    assert file_hashes(tmp_path / "c")["Planted_5.json.gz"] != first["Planted_5.json.gz"]
    with pytest.raises(ValueError, match="unknown design"):
        generate_planted(tmp_path / "d", "nope")


def test_reads_back_through_the_amazon2018_reader(datasets):
    paths = datasets["disjoint"]
    raw, raw_items = read_amazon2018(paths["reviews"], paths["meta"])
    assert len(raw_items) == SMALL["n_items"]
    items, users, inter, stats = build_dataset(
        raw, raw_items, ["title", "brand", "categories", "description"], min_interactions=5, require_image=True
    )
    assert stats["n_users"] >= 0.9 * SMALL["n_users"] and stats["n_items"] >= 0.9 * SMALL["n_items"]
    assert items["image_url"].str.startswith("file://").all()


@pytest.mark.parametrize("design", sorted(DESIGNS))
def test_text_never_names_what_the_image_shows(datasets, design):
    words = re.compile(r"\b(" + "|".join([*SHAPES, *COLOURS, *TEXTURES, "pattern", "striped"]) + r")s?\b", re.I)
    for m in read_jsonl(datasets[design]["meta"]):
        text = " ".join([m["title"], m["brand"], *m["category"], *m["description"]])
        assert not words.search(text), text


@pytest.mark.parametrize("design", sorted(DESIGNS))
def test_each_group_chooses_by_its_own_attribute(datasets, design):
    spec = DESIGNS[design]
    assert spec.image_attribute in VISUAL and spec.text_attribute in TEXTUAL
    df = choices(datasets[design])
    users = pd.read_parquet(datasets[design]["truth_users"])
    assert ((users["alpha_image"] >= 0.5) == (users["preference"] == "image")).all()
    assert users["alpha_image"].between(0, 1).all()
    assert (users["preference"] == "image").mean() == pytest.approx(spec.image_fraction, abs=0.01)
    if spec.alpha == "pure":
        assert set(users["alpha_image"]) == {0.0, 1.0}
    else:
        assert users["alpha_image"].std() > 0.2  # graded, not two points
    df["image_hit"] = df[spec.image_attribute] == df["fav_image"]
    df["text_hit"] = df[spec.text_attribute] == df["fav_text"]
    chance_image = 1 / len(attribute_values(spec, spec.image_attribute))
    chance_text = 1 / len(attribute_values(spec, spec.text_attribute))
    image_led = df[df["preference"] == "image"]
    text_led = df[df["preference"] == "text"]
    # Far above chance on the own attribute: at least 40% (graded: 20%) of the way from chance to always.
    lift = 0.4 if spec.alpha == "pure" else 0.2
    assert image_led["image_hit"].mean() > chance_image + lift * (1 - chance_image)
    assert text_led["text_hit"].mean() > chance_text + lift * (1 - chance_text)
    if spec.alpha == "pure":  # ... and near chance on the other group's
        assert image_led["text_hit"].mean() < 2 * chance_text + 0.05
        assert text_led["image_hit"].mean() < 2 * chance_image + 0.05


def test_disjoint_groups_choose_by_disjoint_information(datasets):
    df = choices(datasets["disjoint"])
    per_user = df.groupby(["reviewerID", "preference"]).agg(
        colour_share=("colour", lambda s: s.value_counts(normalize=True).iloc[0]),
        topic_share=("topic", lambda s: s.value_counts(normalize=True).iloc[0]),
    )
    per_user = per_user.reset_index()
    image_led, text_led = per_user[per_user["preference"] == "image"], per_user[per_user["preference"] == "text"]
    # Image-led users' items share one colour (chance 1/8), not one topic; text-led users the reverse.
    assert image_led["colour_share"].median() > 0.7 > image_led["topic_share"].median()
    assert text_led["topic_share"].median() > 0.7 > text_led["colour_share"].median()
    # A single global ranking cannot serve both: the image-led users' favourite
    # colour tells nothing about the topic of what they choose.
    truth = pd.read_parquet(datasets["disjoint"]["truth_users"])
    assert set(truth["image_attribute"]) == {"colour"} and set(truth["text_attribute"]) == {"topic"}
    items = pd.read_parquet(datasets["disjoint"]["truth_items"])
    table = pd.crosstab(items["colour"], items["topic"])
    assert table.shape == (8, 8) and (table.to_numpy() > 0).mean() > 0.8  # attributes drawn independently
    assert np.isclose(truth["alpha_image"].isin([0.0, 1.0]).mean(), 1.0)
