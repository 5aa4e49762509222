"""Planted-preference datasets in Amazon 2018 format, one per *attribute design*.

What they are for: checking that PMAT's preference network recovers which
users choose by what they see and which by what they read, on data where
that is known and where each side's signal is carried by exactly one
modality. :mod:`pmsid.data.synthetic` plants one mixture; here every design
names the one visual attribute image-led users choose by and the one textual
attribute text-led users choose by, the planted ``alpha_image`` law, the
share of image-led users and the popularity confound.

Items draw every attribute independently:

- visual (drawn into the PNG with :func:`pmsid.data.synthetic.draw_item_image`,
  never named in the text): ``colour`` (8, or the first ``n_colours``),
  ``shape`` (6), ``texture`` (4);
- textual (written into title, description and categories, never drawn):
  ``kind`` (a product noun; its topic follows from it), ``topic`` (8),
  ``brand`` (12). A design with ``n_kinds`` kinds uses the first ``n_kinds``
  nouns of :data:`KINDS` (round robin over the topics).

A user has a favourite value of the design's visual attribute and one of its
textual attribute, and ``alpha_image`` in [0, 1]. Each next item is drawn
without replacement with probability

    p(i) ∝ exp(strength * (alpha [visual(i) = fav] + (1 - alpha) [textual(i) = fav])
               + popularity_weight * popularity(i))

and with probability ``noise_rate`` by popularity alone. With pure
preferences (alpha 0 or 1) an image-led user's choices depend on nothing the
text says and a text-led user's on nothing the image shows.

Designs (:data:`DESIGNS`):

- ``colour_kind``: colour (image) vs product kind (text), pure, half each
  (the reviewer's design);
- ``shape_brand``: shape vs brand, pure, half each;
- ``texture_topic``: texture/pattern vs topic, pure, half each, strong
  popularity confound;
- ``graded``: colour vs topic, ``alpha_image`` uniform in [0, 1] (image-led
  iff alpha >= 1/2, half each);
- ``unequal``: 4 colours vs 24 kinds, 30% image-led;
- ``disjoint``: colour vs topic, pure, half each, no popularity confound and
  little noise: the two groups choose by disjoint information, so one
  global fusion of the modalities mixes what either group chooses by.

Outputs in ``out_dir`` (category "Planted"): ``Planted_5.json.gz``,
``meta_Planted.json.gz``, ``images/{asin}.png``, ``truth_users.parquet``
(``user_id``, ``preference`` image/text, ``alpha_image``,
``image_attribute``, ``fav_image``, ``text_attribute``, ``fav_text``,
``n_interactions``) and ``truth_items.parquet`` (``item_id``, every
attribute, ``has_image``, ``popularity``). Same seed, same ``out_dir``:
byte-identical files.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pmsid.data.synthetic import (
    BASE_TIME,
    BRANDS,
    COLOURS,
    DAY,
    DESCRIPTION_TEMPLATES,
    SHAPES,
    TEXTURES,
    TOPICS,
    _atomic_gzip_lines,
    _atomic_parquet,
    _atomic_png,
    _remove_stale_pngs,
    draw_item_image,
    draw_next_item,
    review_record,
)

log = logging.getLogger("pmsid.data.planted")

CATEGORY = "Planted"
REVIEWS_FILE = f"{CATEGORY}_5.json.gz"
META_FILE = f"meta_{CATEGORY}.json.gz"
TRUTH_USERS_FILE = "truth_users.parquet"
TRUTH_ITEMS_FILE = "truth_items.parquet"

VISUAL = ("colour", "shape", "texture")
TEXTUAL = ("kind", "topic", "brand")
# Product kinds: the topics' nouns, round robin (kind k belongs to topic k % 8).
KINDS = tuple(TOPICS[t]["nouns"][j] for j in range(8) for t in TOPICS)
KIND_TOPIC = {TOPICS[t]["nouns"][j]: t for j in range(8) for t in TOPICS}


@dataclass(frozen=True)
class Design:
    """One attribute design; see the module docstring."""

    image_attribute: str  # what image-led users choose by (a VISUAL name)
    text_attribute: str  # what text-led users choose by (a TEXTUAL name)
    alpha: str = "pure"  # "pure": 1 / 0; "graded": U(1/2, 1) / U(0, 1/2)
    image_fraction: float = 0.5  # share of image-led users
    n_colours: int = 8
    n_kinds: int = len(KINDS)
    strength: float = 4.0
    popularity_weight: float = 0.5
    noise_rate: float = 0.1
    description: str = ""


DESIGNS: dict[str, Design] = {
    "colour_kind": Design("colour", "kind", n_kinds=8, description="colour only in the image vs kind only in the text"),
    "shape_brand": Design("shape", "brand", description="shape vs brand"),
    "texture_topic": Design("texture", "topic", popularity_weight=1.5, description="pattern vs topic, popular items"),
    "graded": Design("colour", "topic", alpha="graded", description="colour vs topic, alpha uniform in [0, 1]"),
    "unequal": Design(
        "colour", "kind", n_colours=4, n_kinds=24, image_fraction=0.3, description="4 colours vs 24 kinds, 30% image"
    ),
    "disjoint": Design(
        "colour", "topic", popularity_weight=0.0, noise_rate=0.05, description="colour vs topic, disjoint, no confound"
    ),
}


def attribute_values(design: Design, attribute: str) -> tuple[str, ...]:
    """The values ``attribute`` takes under ``design``."""
    values = {
        "colour": tuple(COLOURS)[: design.n_colours],
        "shape": SHAPES,
        "texture": TEXTURES,
        "kind": KINDS[: design.n_kinds],
        "topic": tuple(TOPICS),
        "brand": BRANDS,
    }
    return values[attribute]


def generate_planted(
    out_dir: str | os.PathLike,
    design: str = "disjoint",
    seed: int = 0,
    n_users: int = 400,
    n_items: int = 360,
    min_len: int = 8,
    max_len: int = 30,
    mean_extra_len: float = 7.0,
    image_size: int = 64,
) -> dict[str, str]:
    """Write design ``design``'s dataset to ``out_dir``; returns its paths.

    Keys: ``reviews``, ``meta`` (the two files the ``amazon2018`` reader
    reads), ``images`` (folder), ``truth_users``, ``truth_items``. Each user
    has ``min_len`` + Geometric(mean ``mean_extra_len``) interactions, capped
    at ``max_len``. One :class:`numpy.random.Generator` from ``seed`` draws
    everything.
    """
    if design not in DESIGNS:
        raise ValueError(f"planted: unknown design {design!r}; expected one of {sorted(DESIGNS)}")
    if n_users < 4 or n_items < 20:
        raise ValueError(f"planted: need n_users >= 4 and n_items >= 20, got {n_users} and {n_items}")
    if not 3 <= min_len <= max_len <= n_items // 2:
        raise ValueError(f"planted: need 3 <= min_len <= max_len <= n_items / 2, got {min_len}, {max_len}")
    spec = DESIGNS[design]
    out_dir = Path(out_dir).resolve()
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    items = _make_items(rng, spec, n_items)
    users = _make_users(rng, spec, n_users, min_len, max_len, mean_extra_len)
    reviews = _make_interactions(rng, spec, users, items)

    meta = []
    for item in items.to_dict("records"):
        png = image_dir / f"{item['item_id']}.png"
        _atomic_png(draw_item_image(item["shape"], item["colour"], item["texture"], image_size, rng), png)
        meta.append(_meta_record(item, [png.as_uri()], rng))
    _remove_stale_pngs(image_dir, {f"{i}.png" for i in items["item_id"]})

    paths = {
        "reviews": out_dir / REVIEWS_FILE,
        "meta": out_dir / META_FILE,
        "images": image_dir,
        "truth_users": out_dir / TRUTH_USERS_FILE,
        "truth_items": out_dir / TRUTH_ITEMS_FILE,
    }
    _atomic_gzip_lines(paths["reviews"], [json.dumps(r) for r in reviews])
    _atomic_gzip_lines(paths["meta"], [json.dumps(m) for m in meta])
    _atomic_parquet(users.drop(columns=["length"]), paths["truth_users"])
    _atomic_parquet(items, paths["truth_items"])
    log.info(
        "planted %s: %d users (%d image-led), %d items, %d interactions written to %s",
        design,
        n_users,
        int((users["preference"] == "image").sum()),
        n_items,
        len(reviews),
        out_dir,
    )
    return {k: str(v) for k, v in paths.items()}


def _make_items(rng: np.random.Generator, spec: Design, n_items: int) -> pd.DataFrame:
    colour = rng.choice(attribute_values(spec, "colour"), size=n_items)
    shape = rng.choice(SHAPES, size=n_items)
    texture = rng.choice(TEXTURES, size=n_items)
    if spec.n_kinds < len(KINDS):
        kind = rng.choice(attribute_values(spec, "kind"), size=n_items)
        topic = np.array([KIND_TOPIC[k] for k in kind])
    else:  # the topic is drawn first and the kind is any of its nouns
        topic = rng.choice(list(TOPICS), size=n_items)
        kind = np.array([str(rng.choice(TOPICS[t]["nouns"])) for t in topic])
    brand = rng.choice(BRANDS, size=n_items)
    return pd.DataFrame(
        {
            "item_id": [f"PLT{i:07d}" for i in range(n_items)],
            "colour": colour,
            "shape": shape,
            "texture": texture,
            "kind": kind,
            "topic": topic,
            "brand": brand,
            "has_image": np.ones(n_items, dtype=bool),
            "popularity": rng.normal(0.0, 1.0, size=n_items),
        }
    )


def _meta_record(item: dict, urls: list[str], rng: np.random.Generator) -> dict:
    words = TOPICS[item["topic"]]
    noun = item["kind"]
    adj = str(rng.choice(words["adjectives"]))
    use, use2 = (str(u) for u in rng.choice(words["uses"], size=2, replace=False))
    model = f"{chr(ord('A') + int(rng.integers(26)))}-{int(rng.integers(100, 1000))}"
    fill = {"adj": adj, "noun": noun, "use": use, "use2": use2, "brand": item["brand"], "phrase": words["phrase"]}
    picks = rng.choice(len(DESCRIPTION_TEMPLATES), size=int(rng.integers(2, 4)), replace=False)
    return {
        "category": [CATEGORY, item["topic"].title()],
        "description": [DESCRIPTION_TEMPLATES[k].format(**fill) for k in sorted(picks)],
        "title": f"{item['brand']} {adj.title()} {noun.title()} {model}",
        "brand": item["brand"],
        "main_cat": CATEGORY,
        "imageURL": list(urls),
        "imageURLHighRes": list(urls),
        "asin": item["item_id"],
    }


def _make_users(rng, spec: Design, n_users, min_len, max_len, mean_extra_len) -> pd.DataFrame:
    n_image = int(round(spec.image_fraction * n_users))
    preference = rng.permutation(np.array(["image"] * n_image + ["text"] * (n_users - n_image)))
    image_values = attribute_values(spec, spec.image_attribute)
    text_values = attribute_values(spec, spec.text_attribute)
    rows = []
    for u in range(n_users):
        image_led = preference[u] == "image"
        if spec.alpha == "pure":
            alpha = 1.0 if image_led else 0.0
        else:
            alpha = float(rng.uniform(0.5, 1.0) if image_led else rng.uniform(0.0, 0.5))
        extra = rng.geometric(1.0 / (mean_extra_len + 1.0)) - 1 if mean_extra_len > 0 else 0
        rows.append(
            {
                "user_id": f"PLTU{u:06d}",
                "preference": str(preference[u]),
                "alpha_image": alpha,
                "image_attribute": spec.image_attribute,
                "fav_image": str(rng.choice(image_values)),
                "text_attribute": spec.text_attribute,
                "fav_text": str(rng.choice(text_values)),
                "length": int(min(max_len, min_len + extra)),
            }
        )
    users = pd.DataFrame(rows)
    users["n_interactions"] = users["length"].astype(np.int32)
    return users


def _make_interactions(rng, spec: Design, users: pd.DataFrame, items: pd.DataFrame) -> list[dict]:
    visual = items[spec.image_attribute].to_numpy()
    textual = items[spec.text_attribute].to_numpy()
    popularity = spec.popularity_weight * items["popularity"].to_numpy()
    item_ids = items["item_id"].to_numpy()
    n_items = len(items)
    reviews = []
    for user in users.to_dict("records"):
        alpha, length = user["alpha_image"], user["length"]
        match = alpha * (visual == user["fav_image"]) + (1.0 - alpha) * (textual == user["fav_text"])
        used = np.zeros(n_items, dtype=bool)
        start = BASE_TIME + DAY * int(rng.integers(0, 730))
        times = start + DAY * np.cumsum(rng.integers(1, 31, size=length))
        for t in range(length):
            i = draw_next_item(rng, match, popularity, used, spec.strength, spec.noise_rate)
            reviews.append(review_record(rng, user["user_id"], str(item_ids[i]), match[i], int(times[t])))
    reviews.sort(key=lambda r: (r["asin"], r["unixReviewTime"], r["reviewerID"]))
    return reviews
