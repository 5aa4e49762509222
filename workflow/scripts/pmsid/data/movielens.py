"""Reader for the MovieLens releases (Harper & Konstan, TiiS 2015), straight
from the official zip archives.

Two layouts:

- ``ml-1m.zip``: ``ml-1m/ratings.dat`` (``UserID::MovieID::Rating::Timestamp``)
  and ``ml-1m/movies.dat`` (``MovieID::Title::Genres``), ``::``-separated,
  latin-1 encoded, no header, genres ``|``-separated. No tags.
- ``ml-20m.zip`` / ``ml-25m.zip``: ``{variant}/ratings.csv``
  (``userId,movieId,rating,timestamp``), ``movies.csv``
  (``movieId,title,genres``; titles are quoted when they hold commas or
  quotes) and ``tags.csv`` (``userId,movieId,tag,timestamp``), UTF-8.

Titles end in the release year, ``"Toy Story (1995)"``; the reader splits it
off. Every rating is one interaction: the field treats MovieLens as
implicit feedback. MovieLens has no images (docs/METHOD.md 2.2).

ml-25m has 25M ratings, so ratings are parsed by pandas with explicit
integer dtypes straight from the zip member, with no per-row Python.
"""

from __future__ import annotations

import io
import logging
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from pmsid.data.local import read_csv_checked

log = logging.getLogger("pmsid.data.movielens")

# variant -> (folder inside the zip, layout)
VARIANTS = {"ml-1m": ("ml-1m", "dat"), "ml-20m": ("ml-20m", "csv"), "ml-25m": ("ml-25m", "csv")}
ITEM_COLUMNS = ["item_id", "image_url", "title", "year", "genres", "tags"]
MAX_TAGS = 20  # per movie, the most frequent
NO_GENRES = "(no genres listed)"
# "Title (1995)", also a range "(2006–2007)" or an open one "(2007-)": the first year.
_TITLE_YEAR = r"^(?P<title>.*?)\s*\((?P<year>\d{4})(?:\s*[-\u2013]\s*\d{0,4})?\)\s*$"


def split_title(titles: pd.Series) -> tuple[pd.Series, list]:
    """``"Toy Story (1995)"`` -> ``("Toy Story", 1995)``; a title without a
    trailing year is kept whole with year None."""
    titles = titles.astype("str").str.strip()
    parts = titles.str.extract(_TITLE_YEAR)
    has_year = parts["year"].notna().to_numpy()
    title = titles.where(~has_year, parts["title"])
    years = [int(y) if ok else None for y, ok in zip(parts["year"], has_year)]
    return title.astype("str"), years


def split_genres(genres: pd.Series) -> list[list[str]]:
    """``"Animation|Children's"`` -> ``["Animation", "Children's"]``;
    ``"(no genres listed)"`` -> ``[]``."""
    return [[g for g in str(value).split("|") if g.strip() and g != NO_GENRES] for value in genres]


def top_tags(tags: pd.DataFrame, max_tags: int = MAX_TAGS) -> pd.Series:
    """Each movie's distinct tags, lower-cased and stripped, most frequent
    first (ties alphabetical), at most ``max_tags``: a Series of lists
    indexed by movie id (as in ``tags``), only for movies with tags."""
    tag = tags["tag"].astype("str").str.strip().str.lower()
    df = pd.DataFrame({"movieId": tags["movieId"].to_numpy(), "tag": tag})
    df = df[df["tag"].notna() & (df["tag"] != "")]
    counts = df.groupby(["movieId", "tag"], sort=False).size().rename("n").reset_index()
    counts = counts.sort_values(["movieId", "n", "tag"], ascending=[True, False, True], kind="stable")
    top = counts.groupby("movieId", sort=False).head(max_tags)
    return top.groupby("movieId", sort=True)["tag"].agg(list)


def _member(archive: zipfile.ZipFile, zip_path: Path, name: str) -> str:
    if name not in archive.namelist():
        found = [n for n in archive.namelist() if not n.endswith("/")][:10]
        raise FileNotFoundError(
            f"{zip_path}: no member {name!r}; found {found}. Is this the official archive of that variant?"
        )
    return name


def _read_dat_ratings(archive: zipfile.ZipFile, zip_path: Path, name: str) -> pd.DataFrame:
    # pandas' fast parser takes one-character separators only; "::" never
    # occurs inside the numeric fields, so replacing it by "," is safe and
    # keeps the C parser (ml-1m: 24 MB).
    data = archive.read(name).replace(b"::", b",")
    return read_csv_checked(
        f"{zip_path}:{name}",
        lambda: io.BytesIO(data),
        ["userId", "movieId", "timestamp"],
        {"userId": "int32", "movieId": "int32", "timestamp": "int64"},
        expected="UserID::MovieID::Rating::Timestamp",
        header_lines=0,
        header=None,
        names=["userId", "movieId", "rating", "timestamp"],
    )


def _read_dat_movies(archive: zipfile.ZipFile, zip_path: Path, name: str) -> pd.DataFrame:
    # 3,883 lines in ml-1m: a plain loop is clearer than a parser here.
    ids, titles, genres = [], [], []
    for lineno, line in enumerate(archive.read(name).decode("latin-1").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("::")
        if len(fields) != 3 or not fields[0].strip().isdigit():
            raise ValueError(f"{zip_path}:{name}, line {lineno}: expected MovieID::Title::Genres, got {line[:80]!r}")
        ids.append(int(fields[0]))
        titles.append(fields[1])
        genres.append(fields[2])
    return pd.DataFrame({"movieId": np.asarray(ids, dtype=np.int32), "title": titles, "genres": genres})


def read_movielens(zip_path: str | os.PathLike, variant: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read a MovieLens release from its official zip.

    Returns ``(raw_interactions, raw_items)`` for
    :func:`pmsid.data.protocol.build_dataset`: interactions ``user_id``,
    ``item_id`` (str), ``timestamp`` (int64 seconds), one row per rating in
    file order; items, one per movie of the movies file: ``item_id``,
    ``image_url`` (null), ``title`` (without the year), ``year`` (int or
    None), ``genres`` (list), ``tags`` (list, at most 20, most frequent
    first; empty for ml-1m, which has no tags).
    """
    if variant not in VARIANTS:
        raise ValueError(f"movielens: unknown variant {variant!r}; expected one of {list(VARIANTS)}")
    zip_path = Path(zip_path)
    if not zip_path.is_file():
        raise FileNotFoundError(f"{zip_path}: no such file; expected the official {variant}.zip")
    folder, layout = VARIANTS[variant]
    with zipfile.ZipFile(zip_path) as archive:
        if layout == "dat":
            ratings = _read_dat_ratings(archive, zip_path, _member(archive, zip_path, f"{folder}/ratings.dat"))
            movies = _read_dat_movies(archive, zip_path, _member(archive, zip_path, f"{folder}/movies.dat"))
            tags = None
        else:
            name = _member(archive, zip_path, f"{folder}/ratings.csv")
            ratings = read_csv_checked(
                f"{zip_path}:{name}",
                lambda: archive.open(name),
                ["userId", "movieId", "timestamp"],
                {"userId": "int32", "movieId": "int32", "timestamp": "int64"},
                expected="userId,movieId,rating,timestamp",
            )
            movies_name = _member(archive, zip_path, f"{folder}/movies.csv")
            movies = read_csv_checked(
                f"{zip_path}:{movies_name}",
                lambda: archive.open(movies_name),
                ["movieId", "title", "genres"],
                {"movieId": "int32", "title": "str", "genres": "str"},
                expected="movieId,title,genres",
            )
            tags_name = _member(archive, zip_path, f"{folder}/tags.csv")
            tags = read_csv_checked(
                f"{zip_path}:{tags_name}",
                lambda: archive.open(tags_name),
                ["movieId", "tag"],
                {"movieId": "int32", "tag": "object"},
                expected="userId,movieId,tag,timestamp",
            )

    raw_interactions = pd.DataFrame(
        {
            "user_id": ratings["userId"].astype("str"),
            "item_id": ratings["movieId"].astype("str"),
            "timestamp": ratings["timestamp"].to_numpy(np.int64),
        }
    )
    del ratings

    dup = movies["movieId"][movies["movieId"].duplicated()]
    if len(dup):
        raise ValueError(f"{zip_path}: the movies file repeats {len(dup)} movie id(s), e.g. {dup.head(5).tolist()}")
    title, year = split_title(movies["title"])
    if tags is not None:
        by_movie = top_tags(tags)
        movie_tags = [list(by_movie.get(m, [])) for m in movies["movieId"]]
    else:
        movie_tags = [[] for _ in range(len(movies))]
    raw_items = pd.DataFrame(
        {
            "item_id": movies["movieId"].astype("str"),
            "image_url": pd.Series([None] * len(movies), dtype="str"),
            "title": title,
            "year": pd.Series(year, dtype=object),
            "genres": split_genres(movies["genres"]),
            "tags": movie_tags,
        }
    )[ITEM_COLUMNS]
    log.info(
        "%s: %d ratings by %d users on %d movies; %d movies in the movies file, %d with tags (%s)",
        variant,
        len(raw_interactions),
        raw_interactions["user_id"].nunique(),
        raw_interactions["item_id"].nunique(),
        len(raw_items),
        sum(1 for t in movie_tags if t),
        zip_path,
    )
    return raw_interactions, raw_items
