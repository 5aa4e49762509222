"""Reader for the pipeline's own raw format, for any custom dataset.

Two tables, each CSV, TSV, Parquet or JSON lines (chosen by the file's
suffix: ``.csv``, ``.tsv``, ``.parquet``, ``.jsonl`` / ``.json`` /
``.ndjson``; text formats may be gzipped, ``.csv.gz``):

- interactions: ``user_id``, ``item_id``, ``timestamp`` (integer seconds)
  and optionally ``split`` (``train`` / ``valid`` / ``test``: the data's own
  split, kept by :func:`pmsid.data.protocol.build_dataset` instead of
  leave-one-out). Any other column is ignored.
- items: ``item_id``, optionally ``image_url`` (an http(s) URL, a
  ``file://`` URL or a path; a relative path is resolved against the items
  file's folder), and any text columns (``title``, ``artist``, ...), which
  the config's ``text_fields`` can name. Lists (Parquet, JSON) stay lists.

Per-item features of another modality (audio, say) are not read here: they
come as a precomputed Parquet file (``item_id``, ``embedding``), see
docs/METHOD.md 2.2.

:func:`read_csv_checked` is also what the Amazon 2023 and MovieLens readers
use: fast typed parsing, and on failure an error naming the file, the line
and the field.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from pmsid.data.amazon2018 import iter_json_lines

log = logging.getLogger("pmsid.data.local")

INTERACTION_COLUMNS = ["user_id", "item_id", "timestamp"]
OPTIONAL_INTERACTION_COLUMNS = ["split"]
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".jsonl", ".json", ".ndjson")
_INTEGER = re.compile(r"^\s*[+-]?\d+\s*$")


# ---- checked CSV parsing (shared with the Amazon 2023 and MovieLens readers) --------


def open_binary(path: str | os.PathLike) -> io.BufferedIOBase:
    """Open a file for reading, gunzipping it when it starts with gzip's magic
    bytes (whatever its name says)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def read_csv_checked(
    source: str,
    opener: Callable[[], io.IOBase],
    required: list[str],
    dtypes: dict[str, str],
    expected: str,
    header_lines: int = 1,
    **read_csv_kwargs,
) -> pd.DataFrame:
    """Read the ``required`` columns of a delimited file with explicit dtypes.

    ``opener()`` returns a fresh binary stream each call (a file, a zip
    member); ``source`` names it in errors. Columns in ``dtypes`` whose
    dtype is an integer type must hold integer literals; string columns are
    read verbatim (no "NA" guessing) and must not be empty. A missing column
    fails naming it, the columns found and ``expected``; a bad value fails
    naming the line (counting ``header_lines`` header lines) and the field.

    Parsing is done once with the target dtypes (fast, low memory: MovieLens
    25M has 25M rows); only when that fails is the file read again as text
    to find the offending line.
    """
    kwargs = {"keep_default_na": False, "na_values": [], **read_csv_kwargs}
    if kwargs.get("header", "infer") is not None:
        with opener() as f:
            found = list(pd.read_csv(f, nrows=0, **kwargs).columns)
        missing = [c for c in required if c not in found]
        if missing:
            raise ValueError(f"{source}: missing column(s) {missing}; found {found}. Expected {expected}.")
    try:
        with opener() as f:
            df = pd.read_csv(f, usecols=required, dtype=dtypes, **kwargs)
    except (ValueError, pd.errors.ParserError) as e:
        _raise_bad_line(source, opener, required, dtypes, kwargs, header_lines, e)
        raise  # _raise_bad_line always raises; this keeps linters quiet
    _check_not_empty(df, [c for c, t in dtypes.items() if t == "str" and c in required], source, header_lines)
    return df[required]


def _raise_bad_line(source, opener, required, dtypes, kwargs, header_lines, error) -> None:
    try:
        with opener() as f:
            text = pd.read_csv(f, usecols=required, dtype="str", **kwargs)
    except (ValueError, pd.errors.ParserError) as e:
        # The tokenizer's message names the line ("Expected 4 fields in line 7, saw 5").
        raise ValueError(f"{source}: cannot parse ({e}); is the file truncated or of another format?") from e
    for column, dtype in dtypes.items():
        if column not in required or not dtype.startswith(("int", "uint")):
            continue
        ok = text[column].str.match(_INTEGER)
        if not ok.all():
            first = int(np.flatnonzero(~ok.to_numpy())[0])
            raise ValueError(
                f"{source}, line {first + header_lines + 1}: field '{column}' is {text[column].iloc[first]!r}, "
                f"not an integer ({int((~ok).sum())} such value(s) in the file)"
            ) from error
    raise ValueError(f"{source}: cannot parse ({error})") from error


def _check_not_empty(df: pd.DataFrame, columns: list[str], source: str, header_lines: int) -> None:
    for column in columns:
        empty = df[column].isna() | (df[column].str.strip() == "")
        if empty.any():
            first = int(np.flatnonzero(empty.to_numpy())[0])
            raise ValueError(
                f"{source}, line {first + header_lines + 1}: field '{column}' is empty "
                f"({int(empty.sum())} such row(s) in the file)"
            )


# ---- the local format ----------------------------------------------------------------


def _table_format(path: Path) -> tuple[str, bool]:
    name = path.name.lower()
    gzipped = name.endswith(".gz")
    if gzipped:
        name = name[: -len(".gz")]
    suffix = Path(name).suffix
    if suffix not in TABLE_SUFFIXES or (suffix == ".parquet" and gzipped):
        raise ValueError(
            f"{path}: unknown table format {''.join(path.suffixes)!r}; use one of {list(TABLE_SUFFIXES)} "
            "(text formats may end in .gz)"
        )
    return suffix, gzipped


def read_table_file(path: str | os.PathLike) -> pd.DataFrame:
    """A CSV / TSV / Parquet / JSON-lines file as a frame; text cells of CSV
    and TSV stay text (empty -> null), JSON and Parquet keep their types."""
    path = Path(path)
    suffix, _ = _table_format(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if suffix == ".parquet":
        df = pd.read_parquet(path)
        for col in df.columns:  # Parquet lists arrive as numpy arrays; keep them plain lists
            if df[col].dtype == object:
                df[col] = [v.tolist() if isinstance(v, np.ndarray) else v for v in df[col]]
        return df
    if suffix in (".jsonl", ".json", ".ndjson"):
        lines, records = [], []
        for lineno, obj in iter_json_lines(path):
            lines.append(lineno)
            records.append(obj)
        df = pd.DataFrame.from_records(records)
        df.attrs["lines"] = lines  # for errors naming the line
        return df
    with open_binary(path) as f:
        return pd.read_csv(
            f,
            sep="\t" if suffix == ".tsv" else ",",
            dtype="str",
            keep_default_na=False,
            na_values=[""],
            quoting=csv.QUOTE_MINIMAL,
        )


def _row_name(df: pd.DataFrame, path: Path, row: int) -> str:
    if "lines" in df.attrs:  # JSON lines
        return f"{path}, line {df.attrs['lines'][row]}"
    if _table_format(path)[0] == ".parquet":
        return f"{path}, row {row}"
    return f"{path}, line {row + 2}"  # CSV / TSV, after the header line


def _require(df: pd.DataFrame, path: Path, required: list[str], expected: str) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {list(df.columns)}. Expected {expected}.")
    for col in required:
        values = df[col]
        empty = values.isna() | (values.astype("str").str.strip() == "")
        if empty.any():
            first = int(np.flatnonzero(empty.to_numpy())[0])
            raise ValueError(f"{_row_name(df, path, first)}: field '{col}' is empty ({int(empty.sum())} such row(s))")


def _ids(values: pd.Series) -> pd.Series:
    # Parquet/JSON may hold integer ids; the protocol's raw ids are strings.
    return values.astype("str").str.strip()


def _integer_seconds(df: pd.DataFrame, path: Path) -> np.ndarray:
    values = df["timestamp"]
    text = values.astype("str")
    ok = text.str.match(_INTEGER)
    if not ok.all():
        first = int(np.flatnonzero(~ok.to_numpy())[0])
        raise ValueError(
            f"{_row_name(df, path, first)}: field 'timestamp' is {values.iloc[first]!r}, not integer seconds since "
            f"the epoch ({int((~ok).sum())} such value(s))"
        )
    return text.astype(np.int64).to_numpy()


def resolve_image_url(value: object, folder: Path) -> str | None:
    """An ``image_url`` cell as the pipeline's images step takes it: URLs
    (``http(s)://``, ``file://``) unchanged, an absolute path unchanged, a
    relative path joined to ``folder``; blank -> None."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    url = str(value).strip()
    if not url:
        return None
    if len(urlparse(url).scheme) > 1:  # a scheme, not a Windows drive letter
        return url
    path = Path(url)
    return str(path if path.is_absolute() else Path(os.path.normpath(folder.absolute() / path)))


def read_local(
    interactions_path: str | os.PathLike, items_path: str | os.PathLike
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read a dataset in the pipeline's own raw format.

    Returns ``(raw_interactions, raw_items)`` for
    :func:`pmsid.data.protocol.build_dataset`: interactions ``user_id``,
    ``item_id`` (str), ``timestamp`` (int64) and ``split`` when the file has
    one; items ``item_id``, ``image_url`` (str or null) and every other
    column of the items file, in the file's order.
    """
    interactions_path, items_path = Path(interactions_path), Path(items_path)
    inter = read_table_file(interactions_path)
    expected = f"{INTERACTION_COLUMNS} and optionally {OPTIONAL_INTERACTION_COLUMNS}"
    _require(inter, interactions_path, INTERACTION_COLUMNS, expected)
    raw_interactions = pd.DataFrame(
        {
            "user_id": _ids(inter["user_id"]),
            "item_id": _ids(inter["item_id"]),
            "timestamp": _integer_seconds(inter, interactions_path),
        }
    )
    if "split" in inter.columns:
        _require(inter, interactions_path, ["split"], expected)
        raw_interactions["split"] = inter["split"].astype("str").str.strip().str.lower()

    items = read_table_file(items_path)
    _require(items, items_path, ["item_id"], "'item_id', optionally 'image_url', and text columns")
    items["item_id"] = _ids(items["item_id"])
    dup = items["item_id"][items["item_id"].duplicated()]
    if len(dup):
        raise ValueError(
            f"{items_path}: {len(dup)} duplicate item_id(s), e.g. {dup.head(5).tolist()}; keep one row per item"
        )
    folder = items_path.parent
    urls = items["image_url"] if "image_url" in items.columns else pd.Series([None] * len(items))
    image_url = pd.Series([resolve_image_url(v, folder) for v in urls], dtype="str")
    text_columns = [c for c in items.columns if c not in ("item_id", "image_url")]
    raw_items = pd.concat(
        [
            items[["item_id"]].reset_index(drop=True),
            image_url.rename("image_url"),
            items[text_columns].reset_index(drop=True),
        ],
        axis=1,
    )
    log.info(
        "local: %d interactions by %d users on %d items (%s); %d items with metadata, %d with an image (%s)",
        len(raw_interactions),
        raw_interactions["user_id"].nunique(),
        raw_interactions["item_id"].nunique(),
        interactions_path,
        len(raw_items),
        int(raw_items["image_url"].notna().sum()),
        items_path,
    )
    return raw_interactions, raw_items
