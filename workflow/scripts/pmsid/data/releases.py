"""The catalogue of dataset releases: where each release's raw files live,
what the standard protocol should give on them, and which reader reads them
(docs/METHOD.md 2.1).

The Snakefile imports this module at parse time to know which files to
download, so it imports neither pandas nor torch; :func:`read_release`
imports the readers when it is called.

A release is named by its reader (``amazon2014``, ``amazon2018``,
``amazon2023``, ``movielens``) and a category: a free string, since any
category of a release can be fetched (``Beauty``, ``Video_Games``; for
MovieLens the variant, ``ml-1m`` / ``ml-20m`` / ``ml-25m``). Figures to
check against exist only for the categories the thesis uses.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pandas is not imported at parse time
    import pandas as pd

log = logging.getLogger("pmsid.data.releases")


@dataclass(frozen=True)
class RawFile:
    """One raw file of a release."""

    role: str  # reader argument: reviews / meta / train / valid / test / archive
    url: str
    filename: str  # the local file name under resources/downloads/<reader>/
    md5: str | None = None  # committed known MD5 (MovieLens 20m/25m, docs/METHOD.md 2.1)
    md5_url: str | None = None  # the official .md5 file (MovieLens: url + ".md5")


READERS_WITH_DOWNLOADS = ("amazon2014", "amazon2018", "amazon2023", "movielens")
# Readers of files already on disk: the bundled MovieLens-100K and the pipeline's own format.
LOCAL_READERS = ("ml100k", "local")
READERS = READERS_WITH_DOWNLOADS + LOCAL_READERS
MOVIELENS_VARIANTS = ("ml-1m", "ml-20m", "ml-25m")

# One official base URL per release, and each file's path below it
# (docs/METHOD.md 2.1). A mirror (or a test server) replaces the base and keeps the paths.
OFFICIAL_BASES = {
    "amazon2014": "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles/",
    "amazon2018": "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/",
    "amazon2023": "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_2023/",
    "movielens": "https://files.grouplens.org/datasets/movielens/",
}
# role -> path template; {cat} is the category (MovieLens: the variant).
_PATHS = {
    "amazon2014": {"reviews": "reviews_{cat}_5.json.gz", "meta": "meta_{cat}.json.gz"},
    # The 5-core reviews; metaFiles2 is the metadata the MQL4GRec / MACRec protocol uses.
    "amazon2018": {"reviews": "categoryFilesSmall/{cat}_5.json.gz", "meta": "metaFiles2/meta_{cat}.json.gz"},
    "amazon2023": {
        "train": "benchmark/5core/last_out_w_his/{cat}.train.csv.gz",
        "valid": "benchmark/5core/last_out_w_his/{cat}.valid.csv.gz",
        "test": "benchmark/5core/last_out_w_his/{cat}.test.csv.gz",
        "meta": "raw/meta_categories/meta_{cat}.jsonl.gz",
    },
    "movielens": {"archive": "{cat}.zip"},
}
# Official MD5s from docs/METHOD.md 2.1 (GroupLens publishes them next to the
# archives; Amazon publishes none: the download step records SHA-256 instead).
MOVIELENS_MD5 = {
    "ml-25m": "6b51fb2759a8657d3bfcbfc42b592ada",
    "ml-20m": "cd245b17a1ae2cc31bb14903e1204af3",
}

# What the standard protocol gives (keys of build_dataset's stats).
_EXPECTED = {
    # Amazon 2014, after dedup + 5-core: docs/METHOD.md 2.1. The thesis gives no
    # interaction count for Sports and Toys; those come from S3-Rec (Zhou et
    # al., CIKM 2020), Table 1, which also lists Beauty's 198,502.
    ("amazon2014", "Beauty"): {"n_users": 22_363, "n_items": 12_101, "n_interactions": 198_502},
    ("amazon2014", "Sports_and_Outdoors"): {"n_users": 35_598, "n_items": 18_357, "n_interactions": 296_337},
    ("amazon2014", "Toys_and_Games"): {"n_users": 19_412, "n_items": 11_924, "n_interactions": 167_597},
    # Amazon 2018, image-filtered (MQL4GRec / MACRec protocol): docs/METHOD.md 2.1.
    ("amazon2018", "Musical_Instruments"): {"n_users": 17_112, "n_items": 6_250, "n_interactions": 136_226},
    ("amazon2018", "Arts_Crafts_and_Sewing"): {"n_users": 22_171, "n_items": 9_416, "n_interactions": 174_079},
    ("amazon2018", "Video_Games"): {"n_users": 42_259, "n_items": 13_839, "n_interactions": 373_514},
    # Amazon 2023, the official 5-core benchmark split: docs/METHOD.md 2.1.
    ("amazon2023", "Musical_Instruments"): {"n_users": 57_439, "n_items": 24_587, "n_interactions": 511_836},
    ("amazon2023", "Video_Games"): {"n_users": 94_762, "n_items": 25_612, "n_interactions": 814_586},
    ("amazon2023", "Industrial_and_Scientific"): {"n_users": 50_985, "n_items": 25_848, "n_interactions": 412_947},
    # MovieLens, before filtering. raw_items_with_metadata is the movies
    # file's row count; raw_items (distinct rated movies) has no committed
    # source and is not checked.
    # ml-25m: docs/METHOD.md 2.1 and the official README ("25000095 ratings ...
    # across 62423 movies ... created by 162541 users").
    ("movielens", "ml-25m"): {"raw_users": 162_541, "raw_interactions": 25_000_095, "raw_items_with_metadata": 62_423},
    # ml-20m: the official README ("20000263 ratings ... across 27278 movies
    # ... created by 138493 users").
    ("movielens", "ml-20m"): {"raw_users": 138_493, "raw_interactions": 20_000_263, "raw_items_with_metadata": 27_278},
    # ml-1m: the official README ("1,000,209 anonymous ratings ... made by
    # 6,040 MovieLens users"); movies.dat holds 3,883 movies.
    ("movielens", "ml-1m"): {"raw_users": 6_040, "raw_interactions": 1_000_209, "raw_items_with_metadata": 3_883},
}

STATS_CHECK_MODES = ("error", "warn", "skip")  # not "off": YAML reads an unquoted off as false


def _check_reader(reader: str, readers: tuple[str, ...] = READERS) -> None:
    if reader not in readers:
        raise ValueError(f"unknown reader {reader!r}; expected one of {list(readers)}")


def _check_category(reader: str, category: str) -> None:
    if not isinstance(category, str) or not category or "/" in category or any(c.isspace() for c in category):
        raise ValueError(
            f"{reader}: category {category!r} is not a file-name part; use the release's own spelling, "
            "with underscores and no '/' or spaces (e.g. 'Musical_Instruments')"
        )
    if reader == "movielens" and category not in MOVIELENS_VARIANTS:
        raise ValueError(f"movielens: unknown variant {category!r}; expected one of {list(MOVIELENS_VARIANTS)}")


def raw_files(reader: str, category: str, base_url: str | None = None) -> list[RawFile]:
    """The raw files of one release and category, in the reader's argument order.

    ``base_url`` (a mirror, a test server) replaces the release's official
    base; the paths below it stay the same, and the committed MovieLens MD5s
    (of the official files) are not applied to it. Local file names are the URL's
    last part, so categories never collide in ``resources/downloads/<reader>/``.
    """
    _check_reader(reader, READERS_WITH_DOWNLOADS)
    _check_category(reader, category)
    base = OFFICIAL_BASES[reader] if base_url is None else base_url.rstrip("/") + "/"
    files = []
    for role, template in _PATHS[reader].items():
        url = base + template.format(cat=category)
        md5 = md5_url = None
        if reader == "movielens":
            # The committed MD5s are those of the official files; a mirror (or
            # a test server) is checked against its own .md5 files only.
            md5 = MOVIELENS_MD5.get(category) if base_url is None else None
            md5_url = url + ".md5"
        files.append(RawFile(role=role, url=url, filename=url.rsplit("/", 1)[1], md5=md5, md5_url=md5_url))
    return files


def expected_stats(reader: str, category: str) -> dict | None:
    """Published figures for a release and category (keys of
    :func:`pmsid.data.protocol.build_dataset`'s stats), or None if there are none."""
    _check_reader(reader)
    expected = _EXPECTED.get((reader, category))
    return dict(expected) if expected is not None else None


def check_stats(stats: dict, expected: dict, mode: str, dataset: str) -> list[str]:
    """Compare a dataset's statistics with the published ones.

    ``mode`` ``"error"`` raises a ValueError listing every mismatch as
    ``"key: expected E, got A"``; ``"warn"`` logs them as a warning; both
    return the list of mismatches otherwise. ``"skip"`` checks nothing and
    returns ``[]``. A key of ``expected`` that ``stats`` lacks is an error
    in ``error`` and ``warn`` mode: the comparison would be meaningless.
    """
    if mode not in STATS_CHECK_MODES:
        raise ValueError(f"dataset_specs.{dataset}.stats_check: {mode!r} is not one of {list(STATS_CHECK_MODES)}")
    if mode == "skip":
        return []
    absent = [key for key in expected if key not in stats]
    if absent:
        raise ValueError(
            f"dataset {dataset}: the statistics lack key(s) {absent} that the expected figures name; "
            f"found {sorted(stats)}"
        )
    mismatches = [f"{key}: expected {want}, got {stats[key]}" for key, want in expected.items() if stats[key] != want]
    if mismatches and mode == "error":
        raise ValueError(
            f"dataset {dataset}: the data differ from the published figures: {'; '.join(mismatches)}. "
            "Check that the raw files are the release and category the config names (a re-download may help). "
            f"If the difference is expected, set dataset_specs.{dataset}.stats_check: warn"
        )
    if mismatches:
        log.warning("dataset %s: the data differ from the published figures: %s", dataset, "; ".join(mismatches))
    return mismatches


def _need(reader: str, raw: dict[str, str], roles: tuple[str, ...]) -> list[str]:
    missing = [r for r in roles if r not in raw]
    if missing:
        raise ValueError(f"{reader}: raw files lack role(s) {missing}; got {sorted(raw)}, expected {list(roles)}")
    return [raw[r] for r in roles]


def read_release(reader: str, raw: dict[str, str], category: str | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read a release's raw files (``role -> path``, roles as in
    :func:`raw_files`; ``ml100k``: ``inter``; ``local``: ``interactions``,
    ``items``) into ``(raw_interactions, raw_items)`` for
    :func:`pmsid.data.protocol.build_dataset`."""
    _check_reader(reader)
    if reader == "amazon2014":
        from pmsid.data.amazon2014 import read_amazon2014

        return read_amazon2014(*_need(reader, raw, ("reviews", "meta")))
    if reader == "amazon2018":
        from pmsid.data.amazon2018 import read_amazon2018

        return read_amazon2018(*_need(reader, raw, ("reviews", "meta")))
    if reader == "amazon2023":
        from pmsid.data.amazon2023 import read_amazon2023

        return read_amazon2023(*_need(reader, raw, ("train", "valid", "test", "meta")))
    if reader == "movielens":
        from pmsid.data.movielens import read_movielens

        if category is None:
            raise ValueError(f"movielens: the category names the variant, one of {list(MOVIELENS_VARIANTS)}")
        (archive,) = _need(reader, raw, ("archive",))
        return read_movielens(archive, category)
    if reader == "local":
        from pmsid.data.local import read_local

        return read_local(*_need(reader, raw, ("interactions", "items")))
    # ml100k: the RecBole atomic files, read from the folder of ml-100k.inter.
    from pathlib import Path

    from pmsid.data.ml100k import read_ml100k

    (inter,) = _need(reader, raw, ("inter",))
    return read_ml100k(Path(inter).parent)
