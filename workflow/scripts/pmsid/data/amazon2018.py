"""Reader for the Amazon review data, 2018 release (Ni, Li & McAuley, EMNLP 2019).

Two gzipped JSON-lines files per category:

- ``{Cat}_5.json.gz``: the 5-core reviews, one JSON object per line with
  ``reviewerID``, ``asin``, ``overall``, ``unixReviewTime``, ``reviewTime``,
  ``reviewText``, ... Only ``reviewerID``, ``asin`` and ``unixReviewTime``
  are needed; a line without one of them is an error.
- ``meta_{Cat}.json.gz``: item metadata, one JSON object per line with
  ``asin``, ``title``, ``brand``, ``category`` (list), ``description`` (list
  or string), ``imageURLHighRes`` and ``imageURL`` (lists of URLs). Any
  field but ``asin`` may be missing. The release repeats some items; the
  first line wins.

Unlike the 2014 release (Python literals), the 2018 files are real JSON, so
:func:`json.loads` reads them; nothing here ever evaluates code.
"""

from __future__ import annotations

import gzip
import html
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger("pmsid.data.amazon2018")

REVIEW_FIELDS = ("reviewerID", "asin", "unixReviewTime")
ITEM_COLUMNS = ["item_id", "title", "brand", "categories", "description", "image_url"]

# Markup that turns up in the 2018 metadata: HTML tags (<br>, <b>, <span ...>)
# and entities (&amp;). Only things that look like tags are removed, so a
# literal "size < 5" survives.
_TAG = re.compile(r"</?[A-Za-z][^<>]*>")
_SPACE = re.compile(r"\s+")


def clean_text(value: object) -> str | None:
    """Plain one-line text from a metadata string: entities decoded, tags
    removed, whitespace collapsed. Empty or non-string -> None."""
    if value is None:
        return None
    if not isinstance(value, str):
        value = str(value)
    # Tags first, entities second: an escaped "&lt;b&gt;" was meant as text.
    text = _SPACE.sub(" ", html.unescape(_TAG.sub(" ", value))).strip()
    return text or None


def _text_list(value: object) -> list[str]:
    """A field that may be a list of strings or one string, as a list of
    cleaned, non-empty strings."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    out = []
    for v in items:
        text = clean_text(v)
        if text:
            out.append(text)
    return out


def _first_url(*candidates: object) -> str | None:
    for value in candidates:
        for url in value if isinstance(value, list) else [value]:
            if isinstance(url, str) and url.strip():
                return url.strip()
    return None


def _open_text(path: Path):
    # Both releases ship gzip; a plain .json file (hand-made fixture,
    # decompressed copy) is read as is.
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def iter_json_lines(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for every non-blank line of a
    (gzipped) JSON-lines file; a malformed line fails naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with _open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {lineno}: not valid JSON ({e}); is the file truncated?") from e
            if not isinstance(obj, dict):
                raise ValueError(f"{path}, line {lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def read_reviews(path: str | os.PathLike) -> pd.DataFrame:
    """The interactions of a 2018 reviews file: ``user_id``, ``item_id``, ``timestamp``.

    Rows keep the file's order (the protocol's tie-break for equal times).
    """
    users, items, times = [], [], []
    for lineno, obj in iter_json_lines(path):
        for field in REVIEW_FIELDS:
            if obj.get(field) in (None, ""):
                raise ValueError(
                    f"{path}, line {lineno}: review lacks field '{field}'; found {sorted(obj)}. "
                    f"Every review needs {list(REVIEW_FIELDS)}."
                )
        try:
            ts = int(obj["unixReviewTime"])
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"{path}, line {lineno}: field 'unixReviewTime' is {obj['unixReviewTime']!r}, not integer seconds"
            ) from e
        users.append(str(obj["reviewerID"]))
        items.append(str(obj["asin"]))
        times.append(ts)
    return pd.DataFrame(
        {
            "user_id": pd.Series(users, dtype="str"),
            "item_id": pd.Series(items, dtype="str"),
            "timestamp": np.asarray(times, dtype=np.int64),
        }
    )


def read_metadata(path: str | os.PathLike) -> pd.DataFrame:
    """The items of a 2018 metadata file, one row per asin (first line wins).

    Columns: ``item_id``, ``title``, ``brand``, ``description`` (str or null),
    ``categories`` (list of str, possibly empty), ``image_url`` (first of
    ``imageURLHighRes``, else first of ``imageURL``, else null).
    """

    def row(obj: dict) -> dict:
        return {
            "title": clean_text(obj.get("title")),
            "brand": clean_text(obj.get("brand")),
            "categories": _text_list(obj.get("category")),
            "description": " ".join(_text_list(obj.get("description"))) or None,
            "image_url": _first_url(obj.get("imageURLHighRes"), obj.get("imageURL")),
        }

    return metadata_frame(iter_json_lines(path), path, "asin", row, ITEM_COLUMNS)


def metadata_frame(
    lines: Iterator[tuple[int, dict]], path: str | os.PathLike, id_field: str, row, columns: list[str]
) -> pd.DataFrame:
    """One row per item of a metadata file: ``item_id`` from ``id_field``,
    the other ``columns`` from ``row(obj)``. The releases repeat some items;
    the first line wins. Text columns (all but list-valued ones) are str or
    null. Shared by the 2014, 2018 and 2023 readers.
    """
    rows = []
    seen: set[str] = set()
    duplicates = 0
    for lineno, obj in lines:
        item_id = obj.get(id_field)
        if item_id in (None, ""):
            raise ValueError(f"{path}, line {lineno}: metadata lacks field '{id_field}'; found {sorted(obj)}")
        item_id = str(item_id)
        if item_id in seen:
            duplicates += 1
            continue
        seen.add(item_id)
        rows.append({"item_id": item_id, **row(obj)})
    if duplicates:
        log.info("%s: skipped %d duplicate metadata line(s), kept the first of each %s", path, duplicates, id_field)
    df = pd.DataFrame(rows, columns=columns)
    for col in ("item_id", "title", "brand", "description", "image_url"):
        df[col] = df[col].astype("str")
    return df


def read_amazon2018(reviews_path: str | os.PathLike, meta_path: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read one category of the Amazon 2018 release.

    Returns ``(raw_interactions, raw_items)`` for
    :func:`pmsid.data.protocol.build_dataset`: interactions ``user_id``
    (reviewerID), ``item_id`` (asin), ``timestamp`` (unixReviewTime, int64);
    items ``item_id, title, brand, categories, description, image_url``.
    """
    raw_interactions = read_reviews(reviews_path)
    raw_items = read_metadata(meta_path)
    log_raw_counts("amazon2018", raw_interactions, raw_items, reviews_path, meta_path)
    return raw_interactions, raw_items


def log_raw_counts(release: str, raw_interactions: pd.DataFrame, raw_items: pd.DataFrame, reviews_path, meta_path):
    """One log line with what an Amazon reader read (2014 and 2018 share it)."""
    log.info(
        "%s: %d reviews by %d users on %d items (%s); %d items with metadata, %d with an image (%s)",
        release,
        len(raw_interactions),
        raw_interactions["user_id"].nunique(),
        raw_interactions["item_id"].nunique(),
        reviews_path,
        len(raw_items),
        int(raw_items["image_url"].notna().sum()),
        meta_path,
    )
