"""Reader for the Amazon Reviews 2023 release (Hou et al., 2024), with its
official benchmark split.

The release ships ready-made 5-core splits; we use the "last_out_w_his"
ones (leave-last-out with history), three gzipped CSV files per category:

- ``{Cat}.train.csv.gz``: ``user_id,parent_asin,rating,timestamp``;
- ``{Cat}.valid.csv.gz`` and ``{Cat}.test.csv.gz``: the same plus
  ``history`` (the user's earlier parent_asins, space-separated), one row
  per user.

Timestamps are in milliseconds. Items are identified by ``parent_asin``
(variants of one product share it). Metadata comes from
``meta_{Cat}.jsonl.gz``: JSON per line with ``parent_asin``, ``title``,
``store``, ``categories`` (list), ``description`` (list of str),
``features`` (list of str), ``images`` (list of dicts with ``thumb``,
``large``, ``hi_res``, ``variant``), ... The first line of a repeated
parent_asin wins.

The interactions keep the files' split in a ``split`` column, which
:func:`pmsid.data.protocol.build_dataset` keeps as given instead of
filtering and splitting again.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from pmsid.data.amazon2018 import _first_url, _text_list, clean_text, iter_json_lines, metadata_frame
from pmsid.data.local import open_binary, read_csv_checked

log = logging.getLogger("pmsid.data.amazon2023")

SPLIT_COLUMNS = ["user_id", "parent_asin", "timestamp"]
SPLIT_HEADER = "user_id,parent_asin,rating,timestamp (valid/test files also: history)"
ITEM_COLUMNS = ["item_id", "image_url", "title", "brand", "categories", "description", "features"]


def read_split_file(path: str | os.PathLike, split: str) -> pd.DataFrame:
    """One benchmark file as ``user_id, item_id, timestamp, split``: valid and
    test rows in file order, train rows in (millisecond time, file) order."""
    path = Path(path)
    df = read_csv_checked(
        str(path),
        lambda: open_binary(path),
        SPLIT_COLUMNS,
        {"user_id": "str", "parent_asin": "str", "timestamp": "int64"},
        expected=SPLIT_HEADER,
    )
    if split == "train":
        # Put train rows in millisecond order first (stable: file order breaks
        # exact ties), so that the protocol's (seconds, row order) sort below
        # reproduces the release's own order, which its history column shows.
        df = df.sort_values("timestamp", kind="stable").reset_index(drop=True)
    # Milliseconds to integer seconds by floor division. Two interactions of a
    # user can tie after this; that is harmless because the given split, not
    # the timestamp, decides which rows are valid and test, and ties among
    # train rows keep the row order set above.
    seconds = df["timestamp"].to_numpy(np.int64) // 1000
    return pd.DataFrame(
        {
            "user_id": df["user_id"].astype("str"),
            "item_id": df["parent_asin"].astype("str"),
            "timestamp": seconds,
            "split": pd.Series([split] * len(df), dtype="str"),
        }
    )


def main_image(images: object) -> str | None:
    """The item's image: the MAIN variant's ``hi_res``, else its ``large``,
    else the first image's ``hi_res`` / ``large``; None without one."""
    if not isinstance(images, list):
        return None
    images = [im for im in images if isinstance(im, dict)]
    for im in images:
        if im.get("variant") == "MAIN":
            url = _first_url(im.get("hi_res"), im.get("large"))
            if url:
                return url
    if images:
        return _first_url(images[0].get("hi_res"), images[0].get("large"))
    return None


def read_metadata(path: str | os.PathLike) -> pd.DataFrame:
    """The items of a 2023 metadata file, one row per parent_asin (first line wins).

    Columns: ``item_id`` (parent_asin), ``image_url`` (:func:`main_image`),
    ``title``, ``brand`` (the ``store``), ``categories`` (list of str),
    ``description`` (the list's paragraphs joined into one text, or null),
    ``features`` (list of str, the bullet points).
    """

    def row(obj: dict) -> dict:
        return {
            "image_url": main_image(obj.get("images")),
            "title": clean_text(obj.get("title")),
            "brand": clean_text(obj.get("store")),
            "categories": _text_list(obj.get("categories")),
            "description": " ".join(_text_list(obj.get("description"))) or None,
            "features": _text_list(obj.get("features")),
        }

    return metadata_frame(iter_json_lines(path), path, "parent_asin", row, ITEM_COLUMNS)


def read_amazon2023(
    train_path: str | os.PathLike,
    valid_path: str | os.PathLike,
    test_path: str | os.PathLike,
    meta_path: str | os.PathLike,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read one category of the Amazon 2023 release with its official split.

    Returns ``(raw_interactions, raw_items)`` for
    :func:`pmsid.data.protocol.build_dataset`: interactions ``user_id``,
    ``item_id`` (parent_asin), ``timestamp`` (int64 seconds), ``split``
    (``train`` / ``valid`` / ``test``, from the file each row came from), the
    train rows first (in millisecond time order, file order for exact ties),
    then valid, then test (file order); items
    ``item_id, image_url, title, brand, categories, description, features``.
    """
    parts = [read_split_file(p, s) for p, s in ((train_path, "train"), (valid_path, "valid"), (test_path, "test"))]
    raw_interactions = pd.concat(parts, ignore_index=True)
    raw_interactions["split"] = raw_interactions["split"].astype("str")
    raw_items = read_metadata(meta_path)
    log.info(
        "amazon2023: %d train / %d valid / %d test interactions by %d users on %d items; "
        "%d items with metadata, %d with an image (%s)",
        *(len(p) for p in parts),
        raw_interactions["user_id"].nunique(),
        raw_interactions["item_id"].nunique(),
        len(raw_items),
        int(raw_items["image_url"].notna().sum()),
        meta_path,
    )
    return raw_interactions, raw_items
