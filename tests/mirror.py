"""A local mirror of the dataset releases, built from the plain-text fixtures
in ``tests/fixtures/releases/``.

:func:`build_mirror` writes, under ``root``, the tree a download mirror
would serve: each release's files at exactly the paths below the release's
official base (``root/<reader>/`` stands for the base; see
:func:`pmsid.data.releases.raw_files`), gzipped or zipped as the release
ships them, with deterministic bytes (gzip mtime 0, fixed zip dates). Serve
``root`` over HTTP and pass ``base_url=f"{server}/<reader>/"`` to
``raw_files`` to fetch them, or read them straight from disk.

Image URLs in the fixtures start with ``{IMAGE_BASE}``; it is replaced by
``image_base`` (``f"{server}"`` or ``root.as_uri()``), and the images are
written under ``root`` at the same relative paths: tiny PNGs, except that a
name starting with ``missing`` is not written and one starting with
``broken`` holds bytes no decoder accepts.

The returned dict describes each fixture dataset: reader, category, the
files (role -> relative path and absolute path), the build_dataset
arguments, and ``stats``, the figures :func:`pmsid.data.protocol.build_dataset`
must give (worked out by hand from the fixtures; see the comments).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pmsid.data.releases import raw_files

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "releases"
PLACEHOLDER = "{IMAGE_BASE}"
_IMAGE_REF = re.compile(re.escape(PLACEHOLDER) + r"/([A-Za-z0-9_./-]+)")
ZIP_DATE = (2019, 11, 21, 0, 0, 0)
BROKEN_IMAGE = b"\xff\xd8\xff\xe0 this is not a JPEG, just bytes"
AMAZON_TEXT = ["title", "brand", "categories", "description"]

# The expected statistics, by hand from the fixtures (see tests/fixtures/releases/README.md):
DATASETS = {
    # 7 users x 7 items, each user reviewing all but "their" item: 42 reviews. Removed: a repeated
    # review (dedup), 5 reviews of an item without metadata, a fringe item with 4 reviews (round 1
    # of the 5-core) whose 4th reviewer then has 4 reviews left (round 2), a user with 2 reviews.
    "amazon2014": {
        "reader": "amazon2014",
        "category": "Beauty",
        "text_fields": AMAZON_TEXT,
        "require_image": False,
        "stats": {
            "raw_interactions": 58,
            "raw_users": 9,
            "raw_items": 9,
            "raw_items_with_metadata": 9,
            "dropped_no_metadata": 5,
            "dropped_duplicates": 1,
            "dropped_k_core": 10,
            "n_users": 7,
            "n_items": 7,
            "n_interactions": 42,
        },
    },
    # 8 users x 6 items: users 0-5 skip one item each, users 6-7 review all: 42 reviews, every
    # item 7. Removed: 2 reviews of an item without metadata, 7 of an item without images (MQL4GRec
    # keeps items with an image), then by the 5-core the fan of that item (4 left) and a user with 2.
    "amazon2018": {
        "reader": "amazon2018",
        "category": "Musical_Instruments",
        "text_fields": AMAZON_TEXT,
        "require_image": True,
        "stats": {
            "raw_interactions": 57,
            "raw_users": 10,
            "raw_items": 8,
            "raw_items_with_metadata": 8,
            "dropped_no_metadata": 2,
            "dropped_no_image": 7,
            "dropped_duplicates": 0,
            "dropped_k_core": 6,
            "n_users": 8,
            "n_items": 6,
            "n_interactions": 42,
            "n_items_with_image": 6,
        },
    },
    # The official split: 7 users with 4 train + 1 valid + 1 test rows each over 8 items (each
    # item 5 or 6 times, a 5-core already); nothing is dropped.
    "amazon2023": {
        "reader": "amazon2023",
        "category": "Musical_Instruments",
        "text_fields": AMAZON_TEXT + ["features"],
        "require_image": False,
        "stats": {
            "raw_interactions": 42,
            "raw_users": 7,
            "raw_items": 8,
            "raw_items_with_metadata": 9,
            "n_users": 7,
            "n_items": 8,
            "n_interactions": 42,
            "n_items_with_image": 7,
            "given_split": True,
        },
    },
    # 7 users x 7 movies minus one each (42), a movie with 3 ratings, a user with 2; movies.dat
    # holds 10 movies (2 never rated).
    "ml-1m": {
        "reader": "movielens",
        "category": "ml-1m",
        "text_fields": ["title", "year", "genres"],
        "require_image": False,
        "stats": {
            "raw_users": 8,
            "raw_items": 8,
            "raw_interactions": 47,
            "raw_items_with_metadata": 10,
            "n_users": 7,
            "n_items": 7,
            "n_interactions": 42,
        },
    },
    # As ml-1m, with a movie rated 4 times; movies.csv holds 10 movies.
    "ml-25m": {
        "reader": "movielens",
        "category": "ml-25m",
        "text_fields": ["title", "year", "genres", "tags"],
        "require_image": False,
        "stats": {
            "raw_users": 8,
            "raw_items": 8,
            "raw_interactions": 48,
            "raw_items_with_metadata": 10,
            "n_users": 7,
            "n_items": 7,
            "n_interactions": 42,
        },
    },
    # 6 users x 6 songs minus one each (30), plus a user with 2; items.csv holds 7 songs.
    "local": {
        "reader": "local",
        "category": None,
        "text_fields": ["title", "artist", "genre"],
        "require_image": False,
        "stats": {
            "raw_interactions": 32,
            "raw_users": 7,
            "raw_items": 6,
            "raw_items_with_metadata": 7,
            "n_users": 6,
            "n_items": 6,
            "n_interactions": 30,
            "n_items_with_image": 5,
        },
    },
}
AUDIO_DIM = 8
AUDIO_MISSING_ITEM = "song-04"  # audio.parquet covers every other item


def _gzip(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as f:
        f.write(data)
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        folders = sorted({name.split("/")[0] + "/" for name in members})
        for folder in folders:
            info = zipfile.ZipInfo(folder, date_time=ZIP_DATE)
            info.external_attr = 0o40755 << 16
            z.writestr(info, b"")
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            z.writestr(info, members[name])
    return buf.getvalue()


def _png(name: str) -> bytes:
    # A colour from the name, so images differ but stay deterministic.
    colour = tuple(hashlib.sha256(name.encode()).digest()[:3])
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return buf.getvalue()


def _fixture_text(path: Path, image_base: str, images: set[str]) -> str:
    text = path.read_text(encoding="utf-8")
    images.update(_IMAGE_REF.findall(text))
    return text.replace(PLACEHOLDER, image_base.rstrip("/"))


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def build_mirror(root: Path, image_base: str) -> dict:
    """Write the mirror under ``root``; return ``DATASETS`` with, per dataset,
    ``files`` (role -> path relative to ``root``), ``raw`` (role -> absolute
    path, what :func:`pmsid.data.releases.read_release` takes) and ``images``
    (``all`` / ``missing`` / ``broken``: image paths relative to ``root``);
    ml-1m and ml-25m also get ``md5``, local gets ``audio``."""
    root = Path(root)
    out = {name: {**spec, "files": {}, "raw": {}} for name, spec in DATASETS.items()}
    images: dict[str, set[str]] = {name: set() for name in out}  # dataset -> image paths below root

    for name in ("amazon2014", "amazon2018", "amazon2023"):
        spec = out[name]
        reader = spec["reader"]
        for f in raw_files(reader, spec["category"], base_url="MIRROR/"):
            relative = f"{reader}/{f.url.removeprefix('MIRROR/')}"
            fixture = FIXTURES / reader / f.filename.removesuffix(".gz")
            _write(root / relative, _gzip(_fixture_text(fixture, image_base, images[name]).encode("utf-8")))
            spec["files"][f.role] = relative
            spec["raw"][f.role] = str(root / relative)

    for name in ("ml-1m", "ml-25m"):
        spec = out[name]
        (f,) = raw_files("movielens", name, base_url="MIRROR/")
        relative = f"movielens/{f.url.removeprefix('MIRROR/')}"
        members = {}
        for fixture in sorted((FIXTURES / "movielens" / name).iterdir()):
            text = fixture.read_text(encoding="utf-8")
            # ml-1m's .dat files are latin-1 in the release; the fixture is kept
            # in UTF-8 so it reads well, and is encoded here as the release does.
            members[f"{name}/{fixture.name}"] = text.encode("latin-1" if fixture.suffix == ".dat" else "utf-8")
        data = _zip(members)
        _write(root / relative, data)
        # The official .md5 format: "<hash>  <file name>".
        _write(root / (relative + ".md5"), f"{hashlib.md5(data).hexdigest()}  {f.filename}\n".encode())
        spec["files"]["archive"] = relative
        spec["raw"]["archive"] = str(root / relative)
        spec["md5"] = hashlib.md5(data).hexdigest()

    # The local format needs no server: files on disk, relative image paths.
    local = out["local"]
    for role, filename in (("interactions", "interactions.csv"), ("items", "items.csv")):
        text = _fixture_text(FIXTURES / "local" / filename, image_base, images["local"])
        _write(root / "local" / filename, text.encode("utf-8"))
        local["files"][role] = f"local/{filename}"
        local["raw"][role] = str(root / "local" / filename)
    items = pd.read_csv(root / "local" / "items.csv", dtype=str, keep_default_na=False)
    for value in items["image_url"]:
        if value and "://" not in value:
            images["local"].add(f"local/{value}")
    covered = [i for i in items["item_id"] if i != AUDIO_MISSING_ITEM]
    rng = np.random.default_rng(0)
    audio = pd.DataFrame(
        {
            "item_id": pd.Series(covered, dtype="str"),
            "embedding": [rng.standard_normal(AUDIO_DIM).astype(np.float32).tolist() for _ in covered],
        }
    )
    audio.to_parquet(root / "local" / "audio.parquet", index=False)
    local["files"]["audio"] = "local/audio.parquet"
    local["audio"] = {"path": str(root / "local" / "audio.parquet"), "dim": AUDIO_DIM, "missing": AUDIO_MISSING_ITEM}

    for name, paths in images.items():
        for relative in sorted(paths):
            stem = Path(relative).name
            if not stem.startswith("missing"):
                _write(root / relative, BROKEN_IMAGE if stem.startswith("broken") else _png(relative))
        out[name]["images"] = {
            "all": sorted(paths),
            "missing": sorted(p for p in paths if Path(p).name.startswith("missing")),
            "broken": sorted(p for p in paths if Path(p).name.startswith("broken")),
        }
    return out
