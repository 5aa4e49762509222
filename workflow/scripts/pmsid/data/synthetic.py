"""A small synthetic multimodal dataset with planted truth, in Amazon 2018 format.

Why it exists: the real Amazon data cannot be downloaded here, and even where
it can, nobody knows which users follow images and which follow text. This
generator plants exactly that, so the pipeline can be run end to end offline
and PMAT's personalised modality weights can be checked against the truth.

Items have two independent sets of attributes:

- image attributes, drawn into a real PNG: ``shape`` (6), ``colour`` (8),
  ``texture`` (4). Nothing in the text mentions them.
- text attributes, written into title, description and categories:
  ``topic`` (8) and ``brand`` (12). Nothing in the image shows them.

Users have a planted modality preference: ``alpha_image`` in [0, 1], high
(0.6..1) for image-led users and low (0..0.4) for text-led ones (half each:
``n_users // 2`` are image-led); favourite image attributes (colour, shape)
and text attributes (topic, brand). Each next item is drawn without
replacement with probability

    p(i) ∝ exp(strength * (alpha * image_match(i) + (1 - alpha) * text_match(i))
               + popularity_weight * popularity(i))

where ``image_match = 0.6 [colour = fav] + 0.4 [shape = fav]`` and
``text_match = 0.8 [topic = fav] + 0.2 [brand = fav]``; with probability
``noise_rate`` a draw uses popularity alone. About ``drift_fraction`` of the
users switch all favourites at a drift position in their sequence (planted
interest drift for PMAT's drift gate). ``alpha_image`` does not drift.

Outputs in ``out_dir`` (the Amazon 2018 file names, category "Synthetic"):

- ``Synthetic_5.json.gz``: reviews (reviewerID, asin, overall,
  unixReviewTime, reviewTime, ...), grouped by asin like the real files;
- ``meta_Synthetic.json.gz``: asin, title, brand, category, description,
  imageURLHighRes / imageURL (``file://`` URL of the PNG; empty lists for the
  ~3% of items without an image);
- ``images/{asin}.png``;
- ``truth_users.parquet``: ``user_id`` (= reviewerID), ``preference``
  ("image"/"text"), ``alpha_image``, ``drift_position`` (0-based index in the
  user's generated sequence of the first item drawn under the new
  favourites; -1 without drift; filtering can shift it by the few items the
  5-core drops), ``fav_{colour,shape,topic,brand}_{before,after}`` (equal
  when there is no drift), ``n_interactions``;
- ``truth_items.parquet``: ``item_id`` (= asin), ``shape``, ``colour``,
  ``texture``, ``topic``, ``brand``, ``has_image``, ``popularity`` (latent,
  log scale).

Everything follows from ``seed`` (one :class:`numpy.random.Generator`), and the
gzip headers carry no time or file name, so the same seed (and the same
``out_dir``, which the image URLs name) gives byte-identical files.
"""

from __future__ import annotations

import datetime as dt
import functools
import gzip
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

log = logging.getLogger("pmsid.data.synthetic")

CATEGORY = "Synthetic"
REVIEWS_FILE = f"{CATEGORY}_5.json.gz"
META_FILE = f"meta_{CATEGORY}.json.gz"
TRUTH_USERS_FILE = "truth_users.parquet"
TRUTH_ITEMS_FILE = "truth_items.parquet"

# ---- image attributes -------------------------------------------------------
SHAPES = ("circle", "square", "triangle", "star", "ring", "cross")
COLOURS = {
    "red": (214, 39, 40),
    "orange": (245, 130, 10),
    "yellow": (232, 200, 20),
    "green": (44, 160, 60),
    "cyan": (20, 180, 200),
    "blue": (35, 75, 215),
    "purple": (125, 55, 185),
    "magenta": (215, 45, 160),
}
TEXTURES = ("solid", "stripes", "dots", "checker")

# ---- text attributes --------------------------------------------------------
# Word lists avoid every shape and colour name, so the text carries no image
# information (tests check this on the generated files).
# fmt: off
TOPICS = {
    "cooking": {
        "phrase": "cooking at home",
        "nouns": [
            "skillet", "chef's knife", "spice grinder", "dutch oven",
            "cookbook", "pasta maker", "mixing bowl", "cutting board",
        ],
        "adjectives": ["cast-iron", "nonstick", "rustic", "professional", "seasoned", "artisan"],
        "uses": ["weeknight dinners", "slow braises", "homemade bread", "family meals", "quick sauces"],
    },
    "travel": {
        "phrase": "travelling light",
        "nouns": [
            "carry-on bag", "packing cubes", "passport wallet", "neck pillow",
            "travel adapter", "luggage scale", "guidebook", "rain jacket",
        ],
        "adjectives": ["lightweight", "foldable", "compact", "weatherproof", "expandable", "durable"],
        "uses": ["long-haul flights", "weekend getaways", "backpacking trips", "business travel", "city breaks"],
    },
    "astronomy": {
        "phrase": "exploring the night sky",
        "nouns": [
            "telescope", "eyepiece", "sky atlas", "planisphere",
            "tripod mount", "lunar filter", "binoculars", "observing log",
        ],
        "adjectives": ["refracting", "wide-field", "motorized", "portable", "high-contrast", "precision"],
        "uses": ["deep-sky observing", "lunar viewing", "planet hunting", "meteor showers", "dark-site trips"],
    },
    "gardening": {
        "phrase": "gardening",
        "nouns": [
            "pruning shears", "trowel", "watering can", "seed trays",
            "raised bed kit", "compost bin", "garden gloves", "hose reel",
        ],
        "adjectives": ["ergonomic", "heavy-duty", "rust-resistant", "stainless", "organic", "sturdy"],
        "uses": ["vegetable patches", "herb beds", "spring planting", "balcony pots", "flower borders"],
    },
    "music": {
        "phrase": "making music",
        "nouns": [
            "acoustic guitar", "ukulele", "metronome", "keyboard stand",
            "capo", "practice amp", "songbook", "guitar strap",
        ],
        "adjectives": ["handcrafted", "vintage", "studio-grade", "beginner", "resonant", "tuned"],
        "uses": ["daily practice", "live gigs", "home recording", "jam sessions", "music lessons"],
    },
    "fitness": {
        "phrase": "staying fit",
        "nouns": [
            "yoga mat", "kettlebell", "resistance bands", "jump rope",
            "foam roller", "dumbbell set", "pull-up bar", "gym bag",
        ],
        "adjectives": ["non-slip", "adjustable", "high-density", "sweat-proof", "training", "portable"],
        "uses": ["home workouts", "morning runs", "strength training", "yoga practice", "interval sessions"],
    },
    "photography": {
        "phrase": "taking photographs",
        "nouns": [
            "camera strap", "lens cleaning kit", "tripod", "light meter",
            "camera bag", "memory card case", "lens hood", "reflector",
        ],
        "adjectives": ["weather-sealed", "padded", "professional", "carbon-fibre", "compact", "precision"],
        "uses": ["portrait shoots", "landscape trips", "street photography", "product shots", "travel photos"],
    },
    "woodworking": {
        "phrase": "working with wood",
        "nouns": [
            "chisel set", "hand plane", "workbench vise", "marking gauge",
            "coping saw", "wood glue", "sanding block", "router bits",
        ],
        "adjectives": ["hardened-steel", "hand-forged", "precision", "sturdy", "oiled", "fine-grained"],
        "uses": ["furniture making", "joinery projects", "weekend builds", "carving", "cabinet repairs"],
    },
}
# fmt: on
BRANDS = (
    "Northwind",
    "Alderbrook",
    "Kestrel",
    "Quillon",
    "Marlowe",
    "Tessera",
    "Halcyon",
    "Brightwater",
    "Oakhurst",
    "Veritas",
    "Lumen",
    "Fennick",
)  # fmt: skip

DESCRIPTION_TEMPLATES = (
    "A {adj} {noun} made for {use}.",
    "Designed by {brand} for anyone who enjoys {phrase}.",
    "Ideal for {use} and {use2}.",
    "{brand} has built gear for {phrase} for years, and this {noun} shows it.",
    "Reliable, easy to care for and ready for {use2}.",
)

# Weights inside the match scores (see the module docstring).
IMAGE_MATCH = {"colour": 0.6, "shape": 0.4}
TEXT_MATCH = {"topic": 0.8, "brand": 0.2}

BASE_TIME = 1420070400  # 2015-01-01 00:00 UTC; Amazon review times are whole days
DAY = 86400


def generate_synthetic(
    out_dir: str | os.PathLike,
    seed: int = 0,
    n_users: int = 600,
    n_items: int = 400,
    min_len: int = 8,
    max_len: int = 30,
    mean_extra_len: float = 7.0,
    drift_fraction: float = 0.3,
    no_image_fraction: float = 0.03,
    image_size: int = 64,
    preference_strength: float = 5.0,
    popularity_weight: float = 0.5,
    noise_rate: float = 0.1,
) -> dict:
    """Write the synthetic dataset to ``out_dir`` and return a summary dict.

    ``n_users`` users each get ``min_len`` + Geometric(mean ``mean_extra_len``)
    interactions, capped at ``max_len``, on ``n_items`` items. See the module
    docstring for the generative story and the meaning of
    ``preference_strength``, ``popularity_weight``, ``noise_rate`` and
    ``drift_fraction``. ``no_image_fraction`` of the items get no image.
    The same ``seed`` gives the same bytes.
    """
    _check_params(n_users, n_items, min_len, max_len, drift_fraction, no_image_fraction, image_size, noise_rate)
    started = time.perf_counter()
    out_dir = Path(out_dir).resolve()
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    items = _make_items(rng, n_items, no_image_fraction)
    users = _make_users(rng, n_users, min_len, max_len, mean_extra_len, drift_fraction)
    reviews = _make_interactions(rng, users, items, preference_strength, popularity_weight, noise_rate)

    meta_lines = []
    for item in items.to_dict("records"):
        png = image_dir / f"{item['item_id']}.png"
        urls = []
        if item["has_image"]:
            img = draw_item_image(item["shape"], item["colour"], item["texture"], image_size, rng)
            _atomic_png(img, png)
            urls = [png.as_uri()]
        meta_lines.append(_meta_record(item, urls, rng))
    _remove_stale_pngs(image_dir, {f"{i}.png" for i in items.loc[items["has_image"], "item_id"]})

    _atomic_gzip_lines(out_dir / REVIEWS_FILE, [json.dumps(r) for r in reviews])
    _atomic_gzip_lines(out_dir / META_FILE, [json.dumps(m) for m in meta_lines])
    _atomic_parquet(users.drop(columns=["length"]), out_dir / TRUTH_USERS_FILE)
    _atomic_parquet(items, out_dir / TRUTH_ITEMS_FILE)

    summary = {
        "out_dir": str(out_dir),
        "seed": seed,
        "n_users": n_users,
        "n_items": n_items,
        "n_interactions": len(reviews),
        "n_items_without_image": int((~items["has_image"]).sum()),
        "n_image_led_users": int((users["preference"] == "image").sum()),
        "n_drift_users": int((users["drift_position"] >= 0).sum()),
        "seconds": round(time.perf_counter() - started, 2),
    }
    log.info(
        "synthetic: %d users (%d image-led, %d with drift), %d items (%d without image), "
        "%d interactions written to %s in %.1f s",
        summary["n_users"],
        summary["n_image_led_users"],
        summary["n_drift_users"],
        summary["n_items"],
        summary["n_items_without_image"],
        summary["n_interactions"],
        out_dir,
        summary["seconds"],
    )
    return summary


def _check_params(n_users, n_items, min_len, max_len, drift_fraction, no_image_fraction, image_size, noise_rate):
    if n_users < 2 or n_items < 10:
        raise ValueError(f"synthetic: need n_users >= 2 and n_items >= 10, got {n_users} and {n_items}")
    if not 3 <= min_len <= max_len:
        raise ValueError(f"synthetic: need 3 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
    if max_len > n_items:
        raise ValueError(
            f"synthetic: max_len={max_len} exceeds n_items={n_items}; a user never repeats an item, "
            "so raise n_items or lower max_len"
        )
    for name, value in (
        ("drift_fraction", drift_fraction),
        ("no_image_fraction", no_image_fraction),
        ("noise_rate", noise_rate),
    ):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"synthetic: {name} must be in [0, 1], got {value}")
    if image_size < 16:
        raise ValueError(f"synthetic: image_size must be >= 16 pixels, got {image_size}")


# ---- items ------------------------------------------------------------------


def _make_items(rng: np.random.Generator, n_items: int, no_image_fraction: float) -> pd.DataFrame:
    topics = list(TOPICS)
    n_missing = int(round(no_image_fraction * n_items))
    if no_image_fraction > 0:
        n_missing = max(n_missing, 1)
    has_image = np.ones(n_items, dtype=bool)
    has_image[rng.choice(n_items, size=n_missing, replace=False)] = False
    return pd.DataFrame(
        {
            # Readable ASIN-like ids, 10 characters like the real ones.
            "item_id": [f"SYN{i:07d}" for i in range(n_items)],
            "shape": rng.choice(SHAPES, size=n_items),
            "colour": rng.choice(list(COLOURS), size=n_items),
            "texture": rng.choice(TEXTURES, size=n_items),
            "topic": rng.choice(topics, size=n_items),
            "brand": rng.choice(BRANDS, size=n_items),
            "has_image": has_image,
            # Latent popularity (log scale): some items are picked more by everyone.
            "popularity": rng.normal(0.0, 1.0, size=n_items),
        }
    )


def _meta_record(item: dict, urls: list[str], rng: np.random.Generator) -> dict:
    words = TOPICS[item["topic"]]
    noun = str(rng.choice(words["nouns"]))
    adj = str(rng.choice(words["adjectives"]))
    use, use2 = (str(u) for u in rng.choice(words["uses"], size=2, replace=False))
    model = f"{chr(ord('A') + int(rng.integers(26)))}-{int(rng.integers(100, 1000))}"
    title = f"{item['brand']} {adj.title()} {noun.title()} {model}"
    fill = {"adj": adj, "noun": noun, "use": use, "use2": use2, "brand": item["brand"], "phrase": words["phrase"]}
    picks = rng.choice(len(DESCRIPTION_TEMPLATES), size=int(rng.integers(2, 4)), replace=False)
    description = [DESCRIPTION_TEMPLATES[k].format(**fill) for k in sorted(picks)]
    return {
        "category": [CATEGORY, item["topic"].title()],
        "description": description,
        "title": title,
        "brand": item["brand"],
        "main_cat": CATEGORY,
        "imageURL": list(urls),
        "imageURLHighRes": list(urls),
        "asin": item["item_id"],
    }


# ---- users and their sequences ------------------------------------------------


def _other(rng: np.random.Generator, choices, current: str) -> str:
    return str(rng.choice([c for c in choices if c != current]))


def _make_users(rng, n_users, min_len, max_len, mean_extra_len, drift_fraction) -> pd.DataFrame:
    # Exactly half image-led (odd n: one more text-led), in random order.
    n_image = n_users // 2
    preference = rng.permutation(np.array(["image"] * n_image + ["text"] * (n_users - n_image)))
    rows = []
    for u in range(n_users):
        image_led = preference[u] == "image"
        # 0.6..1 for image-led users, 0..0.4 for text-led ones.
        alpha = 0.6 + 0.4 * rng.beta(2, 2) if image_led else 0.4 * rng.beta(2, 2)
        extra = rng.geometric(1.0 / (mean_extra_len + 1.0)) - 1 if mean_extra_len > 0 else 0
        length = int(min(max_len, min_len + extra))
        before = {
            "colour": str(rng.choice(list(COLOURS))),
            "shape": str(rng.choice(SHAPES)),
            "topic": str(rng.choice(list(TOPICS))),
            "brand": str(rng.choice(BRANDS)),
        }
        drift_position = -1
        after = dict(before)
        if rng.random() < drift_fraction:
            # Switch somewhere in the middle, so both regimes have a few items.
            drift_position = int(rng.integers(math.ceil(0.4 * length), math.floor(0.7 * length) + 1))
            after = {
                "colour": _other(rng, list(COLOURS), before["colour"]),
                "shape": _other(rng, SHAPES, before["shape"]),
                "topic": _other(rng, list(TOPICS), before["topic"]),
                "brand": _other(rng, BRANDS, before["brand"]),
            }
        row = {
            "user_id": f"SYNU{u:06d}",
            "preference": str(preference[u]),
            "alpha_image": float(alpha),
            "drift_position": drift_position,
            "length": length,
        }
        row.update({f"fav_{k}_before": v for k, v in before.items()})
        row.update({f"fav_{k}_after": v for k, v in after.items()})
        rows.append(row)
    users = pd.DataFrame(rows)
    users["drift_position"] = users["drift_position"].astype(np.int32)
    users["n_interactions"] = users["length"].astype(np.int32)
    return users


def _make_interactions(rng, users, items, strength, popularity_weight, noise_rate) -> list[dict]:
    colour = items["colour"].to_numpy()
    shape = items["shape"].to_numpy()
    topic = items["topic"].to_numpy()
    brand = items["brand"].to_numpy()
    popularity = popularity_weight * items["popularity"].to_numpy()
    item_ids = items["item_id"].to_numpy()
    n_items = len(items)

    reviews = []
    for user in users.to_dict("records"):
        alpha, length, drift = user["alpha_image"], user["length"], user["drift_position"]
        used = np.zeros(n_items, dtype=bool)
        start = BASE_TIME + DAY * int(rng.integers(0, 730))
        times = start + DAY * np.cumsum(rng.integers(1, 31, size=length))  # strictly increasing days
        # The user's match with every item, before and after the drift point.
        matches = {}
        for phase in ("before", "after"):
            image_match = IMAGE_MATCH["colour"] * (colour == user[f"fav_colour_{phase}"]) + IMAGE_MATCH["shape"] * (
                shape == user[f"fav_shape_{phase}"]
            )
            text_match = TEXT_MATCH["topic"] * (topic == user[f"fav_topic_{phase}"]) + TEXT_MATCH["brand"] * (
                brand == user[f"fav_brand_{phase}"]
            )
            matches[phase] = alpha * image_match + (1.0 - alpha) * text_match
        for t in range(length):
            match = matches["after" if 0 <= drift <= t else "before"]
            i = draw_next_item(rng, match, popularity, used, strength, noise_rate)
            reviews.append(review_record(rng, user["user_id"], str(item_ids[i]), match[i], int(times[t])))
    # The real 5-core files are grouped by item.
    reviews.sort(key=lambda r: (r["asin"], r["unixReviewTime"], r["reviewerID"]))
    return reviews


def draw_next_item(rng, match: np.ndarray, popularity: np.ndarray, used: np.ndarray, strength, noise_rate) -> int:
    """One next item, drawn without replacement (``used`` is updated).

    ``p(i) ∝ exp(strength * match(i) + popularity(i))`` over the unused items,
    or with probability ``noise_rate`` by popularity alone.
    """
    noise_draw = rng.random() < noise_rate
    logits = popularity if noise_draw else strength * match + popularity
    logits = np.where(used, -np.inf, logits)
    p = np.exp(logits - logits[~used].max())
    i = int(rng.choice(len(match), p=p / p.sum()))
    used[i] = True
    return i


def review_record(rng, user_id: str, asin: str, match: float, unix_time: int) -> dict:
    """One review in the Amazon 2018 format; the star rating leans on the match, as satisfied users rate higher."""
    overall = float(np.clip(np.round(2.0 + 3.0 * match + rng.normal(0.0, 0.7)), 1, 5))
    when = dt.datetime.fromtimestamp(unix_time, tz=dt.UTC)
    return {
        "overall": overall,
        "verified": True,
        "reviewTime": f"{when.month:02d} {when.day}, {when.year}",
        "reviewerID": user_id,
        "asin": asin,
        "reviewerName": f"Reviewer {user_id[4:]}",
        "summary": "Excellent" if overall >= 5 else "Good" if overall >= 3 else "Not for me",
        "unixReviewTime": unix_time,
    }


# ---- images -----------------------------------------------------------------


def _rotate(points: np.ndarray, angle: float, centre: tuple[float, float]) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    rot = points @ np.array([[c, s], [-s, c]])
    return [(float(x + centre[0]), float(y + centre[1])) for x, y in rot]


def _shape_mask(shape: str, size: int, centre: tuple[float, float], radius: float, angle: float) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy = centre
    if shape in ("circle", "ring"):
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=255)
        if shape == "ring":
            inner = 0.55 * radius
            draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
        return mask
    if shape in ("square", "triangle"):
        n = 4 if shape == "square" else 3
        r = radius * (1.1 if shape == "square" else 1.15)
        phase = math.pi / 4 if shape == "square" else -math.pi / 2
        t = phase + 2 * math.pi * np.arange(n) / n
        points = np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
    elif shape == "star":
        t = -math.pi / 2 + math.pi * np.arange(10) / 5
        r = np.where(np.arange(10) % 2 == 0, 1.1 * radius, 0.45 * radius)
        points = np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
    elif shape == "cross":
        a, b = radius, 0.35 * radius  # arm half-length, arm half-width
        points = np.array(
            [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b), (-a, -b), (-b, -b)]
        )
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    draw.polygon(_rotate(points, angle, centre), fill=255)
    return mask


@functools.lru_cache(maxsize=64)
def _texture(texture: str, rgb: tuple[int, int, int], size: int) -> Image.Image:
    # Cached: only len(TEXTURES) * len(COLOURS) patterns exist per size, and
    # Image.paste never modifies its source.
    base = np.array(rgb, dtype=np.float64)
    light = 0.35 * base + 0.65 * 255.0
    yy, xx = np.mgrid[0:size, 0:size]
    period = size // 8
    if texture == "solid":
        pattern = np.zeros((size, size), dtype=bool)
    elif texture == "stripes":
        pattern = ((xx + yy) // (period // 2 or 1)) % 2 == 1
    elif texture == "dots":
        dx, dy = xx % period - period / 2, yy % period - period / 2
        pattern = dx**2 + dy**2 < (0.3 * period) ** 2
    elif texture == "checker":
        pattern = ((xx // period) + (yy // period)) % 2 == 1
    else:
        raise ValueError(f"unknown texture {texture!r}; expected one of {TEXTURES}")
    pixels = np.where(pattern[..., None], light, base)
    return Image.fromarray(pixels.round().astype(np.uint8), "RGB")


def draw_item_image(shape: str, colour: str, texture: str, size: int, rng: np.random.Generator) -> Image.Image:
    """A ``size`` x ``size`` RGB picture of a ``colour`` ``shape`` filled with ``texture``.

    Position, scale, rotation and the background's grey level jitter a little
    (drawn from ``rng``), so two items with the same attributes differ in
    pixels but not in meaning. Drawn at 4x and downsampled for smooth edges.
    """
    big = 4 * size
    radius = big * rng.uniform(0.30, 0.40)
    centre = (big / 2 + big * rng.uniform(-0.05, 0.05), big / 2 + big * rng.uniform(-0.05, 0.05))
    angle = math.radians(rng.uniform(-15.0, 15.0))
    grey = int(rng.integers(228, 251))
    canvas = Image.new("RGB", (big, big), (grey, grey, grey))
    canvas.paste(_texture(texture, COLOURS[colour], big), (0, 0), _shape_mask(shape, big, centre, radius, angle))
    return canvas.resize((size, size), Image.Resampling.LANCZOS)


# ---- atomic writers -----------------------------------------------------------


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _atomic_gzip_lines(path: Path, lines: list[str]) -> None:
    tmp = _tmp_path(path)
    # mtime=0 and an empty file name keep the gzip header free of the time and
    # of the temporary name: same content, same bytes.
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        for line in lines:
            gz.write(line.encode("utf-8") + b"\n")
    os.replace(tmp, path)


def _atomic_png(img: Image.Image, path: Path) -> None:
    tmp = _tmp_path(path)
    img.save(tmp, format="PNG")
    os.replace(tmp, path)


def _atomic_parquet(df: pd.DataFrame, path: Path) -> None:
    tmp = _tmp_path(path)
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp)
    os.replace(tmp, path)


def _remove_stale_pngs(image_dir: Path, keep: set[str]) -> None:
    # A rerun with fewer items (or other missing-image draws) must not leave
    # pictures behind that the metadata no longer names.
    stale = [p for p in image_dir.glob("*.png") if p.name not in keep]
    for p in stale:
        p.unlink()
    if stale:
        log.info("synthetic: removed %d stale image(s) from %s", len(stale), image_dir)
