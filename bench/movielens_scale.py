"""Scale check: the MovieLens reader and the protocol on an ml-25m-sized zip.

No MovieLens-25M ships offline, so this writes a zip in the release's format
(``ml-25m/ratings.csv``, ``movies.csv``, ``tags.csv``) with 25,000,095 random
ratings by 162,541 users over 59,047 movies (Zipf-distributed popularity),
then times :func:`read_movielens` and :func:`build_dataset` (dedup, 5-core,
leave-one-out) on it. Run under ``/usr/bin/time -v`` for the peak memory:

    PYTHONPATH=workflow/scripts /usr/bin/time -v .venv/bin/python bench/movielens_scale.py
"""

from __future__ import annotations

import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from pmsid.data.movielens import read_movielens
from pmsid.data.protocol import build_dataset

N_RATINGS, N_USERS, N_RATED, N_MOVIES = 25_000_095, 162_541, 59_047, 62_423  # ml-25m's sizes


def write_zip(path: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    ratings = pd.DataFrame(
        {
            "userId": rng.integers(1, N_USERS + 1, N_RATINGS),
            "movieId": rng.zipf(1.3, N_RATINGS) % N_RATED + 1,
            "rating": 4.0,
            "timestamp": rng.integers(789_652_009, 1_574_327_703, N_RATINGS),
        }
    )
    ids = np.arange(1, N_MOVIES + 1)
    movies = pd.DataFrame({"movieId": ids, "title": [f"Movie {i} (1999)" for i in ids], "genres": "Comedy|Drama"})
    tags = pd.DataFrame({"userId": [1, 2], "movieId": [1, 1], "tag": ["funny", "Funny"], "timestamp": [1, 2]})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for name, df in [("ratings.csv", ratings), ("movies.csv", movies), ("tags.csv", tags)]:
            z.writestr(f"ml-25m/{name}", df.to_csv(index=False))


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ml-25m.zip"
        start = time.perf_counter()
        write_zip(path)
        print(f"wrote {path.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - start:.0f} s", flush=True)
        start = time.perf_counter()
        raw_interactions, raw_items = read_movielens(path, "ml-25m")
        print(
            f"read_movielens: {len(raw_interactions):,} ratings, {len(raw_items):,} movies "
            f"in {time.perf_counter() - start:.1f} s",
            flush=True,
        )
        start = time.perf_counter()
        _, _, _, stats = build_dataset(raw_interactions, raw_items, ["title", "year", "genres", "tags"], 5)
        print(
            f"build_dataset: {stats['n_users']:,} users, {stats['n_items']:,} items, "
            f"{stats['n_interactions']:,} interactions ({stats['dropped_duplicates']:,} duplicates dropped) "
            f"in {time.perf_counter() - start:.1f} s"
        )


if __name__ == "__main__":
    main()
