"""Reader for the Amazon review data, 2014 release (McAuley et al., SIGIR 2015).

Two gzipped files per category, the ones S3-Rec, P5 and TIGER start from:

- ``reviews_{Cat}_5.json.gz``: the 5-core reviews, strict JSON per line with
  ``reviewerID``, ``asin``, ``unixReviewTime``, ``overall``, ``reviewText``,
  ... (the same fields as the 2018 release, read the same way).
- ``meta_{Cat}.json.gz``: item metadata, one *Python literal* dict per line
  (single quotes; written with Python's ``str(dict)``), with ``asin``,
  ``title``, ``brand``, ``categories`` (a list of category paths, each a
  list), ``description`` (str), ``imUrl`` (one image URL), ``price``,
  ``salesRank``, ``related``. Any field but ``asin`` may be missing; some
  items repeat, and the first line wins.

The metadata is parsed with :func:`ast.literal_eval`, which accepts only
literals (strings, numbers, lists, dicts, ...) and never runs code: a line
such as ``__import__('os').system('...')`` is rejected, naming the line.
Never ``eval`` these files.
"""

from __future__ import annotations

import ast
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

# The 2014 reviews are the 2018 format; the text helpers are shared so both
# releases clean titles and descriptions the same way.
from pmsid.data.amazon2018 import (
    _first_url,
    _open_text,
    _text_list,
    clean_text,
    log_raw_counts,
    metadata_frame,
    read_reviews,
)

log = logging.getLogger("pmsid.data.amazon2014")

ITEM_COLUMNS = ["item_id", "image_url", "title", "brand", "categories", "description"]


def iter_literal_lines(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, dict)`` for every non-blank line of a (gzipped)
    file of Python-literal dicts; anything that is not a literal dict fails
    naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with _open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                obj = ast.literal_eval(line)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as e:
                raise ValueError(
                    f"{path}, line {lineno}: not a Python literal ({type(e).__name__}: {e}). The 2014 metadata "
                    "is read with ast.literal_eval, which refuses anything but literals (calls, names, "
                    "operators); is this the right file, or is it truncated?"
                ) from e
            if not isinstance(obj, dict):
                raise ValueError(f"{path}, line {lineno}: expected a dict literal, got {type(obj).__name__}")
            yield lineno, obj


def flatten_categories(value: object) -> list[str]:
    """The 2014 ``categories`` field (a list of category paths, each a list of
    names) as one list of distinct names, in order of first appearance."""
    if value is None:
        return []
    paths = value if isinstance(value, list) else [value]
    out: list[str] = []
    for path in paths:
        for name in _text_list(path):
            if name not in out:
                out.append(name)
    return out


def read_metadata(path: str | os.PathLike) -> pd.DataFrame:
    """The items of a 2014 metadata file, one row per asin (first line wins).

    Columns: ``item_id``, ``image_url`` (``imUrl`` or null), ``title``,
    ``brand``, ``description`` (cleaned text or null), ``categories`` (list
    of str, possibly empty).
    """

    def row(obj: dict) -> dict:
        return {
            "image_url": _first_url(obj.get("imUrl")),
            "title": clean_text(obj.get("title")),
            "brand": clean_text(obj.get("brand")),
            "categories": flatten_categories(obj.get("categories")),
            "description": " ".join(_text_list(obj.get("description"))) or None,
        }

    return metadata_frame(iter_literal_lines(path), path, "asin", row, ITEM_COLUMNS)


def read_amazon2014(reviews_path: str | os.PathLike, meta_path: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read one category of the Amazon 2014 release.

    Returns ``(raw_interactions, raw_items)`` for
    :func:`pmsid.data.protocol.build_dataset`: interactions ``user_id``
    (reviewerID), ``item_id`` (asin), ``timestamp`` (unixReviewTime, int64),
    in file order; items ``item_id, image_url, title, brand, categories,
    description``. Repeated reviews are left to the protocol's deduplication.
    """
    raw_interactions = read_reviews(reviews_path)
    raw_items = read_metadata(meta_path)
    log_raw_counts("amazon2014", raw_interactions, raw_items, reviews_path, meta_path)
    return raw_interactions, raw_items
