"""A modality from precomputed per-item features (docs/METHOD.md 2.2; how audio enters the pipeline).

No dataset in the thesis has audio, so any further modality comes as a
Parquet file the user computed elsewhere: columns ``item_id`` (the raw item
id, as a string, as in items.parquet) and ``embedding`` (a list of floats,
the same length on every row). :func:`align_external_features` maps it onto
the items' ``item_idx`` and writes an ordinary feature file.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pmsid.data.contracts import ITEMS, read_table, write_features

log = logging.getLogger("pmsid.features.external")

MISSING_POLICIES = ("error", "mean", "zeros")


def sha256_file(path: str | os.PathLike, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def read_external(source_path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(item_id (n,) str, matrix (n, dim) float32)`` of a precomputed feature file, checked.

    Fails naming the file on: missing columns, non-string ids, null or
    duplicated ids, null embeddings, rows of different lengths, NaN or inf.
    """
    path = Path(source_path)
    if not path.exists():
        raise FileNotFoundError(f"external features {path} do not exist")
    table = pq.read_table(path)
    for col in ("item_id", "embedding"):
        if col not in table.column_names:
            raise ValueError(f"{path}: lacks column '{col}'; found {table.column_names} (need item_id, embedding)")
    if table.num_rows == 0:
        raise ValueError(f"{path}: holds no rows")
    ids = table.column("item_id")
    if not (pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type)):
        raise ValueError(
            f"{path}: column 'item_id' must hold the raw item ids as strings (as in items.parquet), found "
            f"{ids.type}; write it with df['item_id'].astype(str)"
        )
    if ids.null_count:
        raise ValueError(f"{path}: column 'item_id' has {ids.null_count} null(s)")
    item_id = np.asarray(ids.to_pylist(), dtype=object)
    dup = pd.Series(item_id)[pd.Series(item_id).duplicated()].unique()
    if len(dup):
        raise ValueError(
            f"{path}: {len(dup)} item_id(s) appear more than once, e.g. {dup[:5].tolist()}; keep one row each"
        )

    emb = table.column("embedding").combine_chunks()
    if not (pa.types.is_list(emb.type) or pa.types.is_large_list(emb.type) or pa.types.is_fixed_size_list(emb.type)):
        raise ValueError(f"{path}: column 'embedding' must be a list of floats per row, found {emb.type}")
    if emb.null_count:
        rows = np.nonzero(emb.is_null().to_numpy(zero_copy_only=False))[0]
        raise ValueError(f"{path}: {len(rows)} row(s) without an embedding, e.g. item_id {item_id[rows[:5]].tolist()}")
    lengths = pc.list_value_length(emb).to_numpy(zero_copy_only=False)
    if lengths.min() != lengths.max():
        odd = np.nonzero(lengths != np.bincount(lengths).argmax())[0]
        raise ValueError(
            f"{path}: embeddings have different lengths ({sorted(set(lengths.tolist()))[:5]}); e.g. item_id "
            f"{item_id[odd[:5]].tolist()} differ from the most common length {np.bincount(lengths).argmax()}"
        )
    dim = int(lengths[0])
    if dim == 0:
        raise ValueError(f"{path}: embeddings are empty (length 0)")
    values = pc.list_flatten(emb)
    if not (pa.types.is_floating(values.type) or pa.types.is_integer(values.type)):
        raise ValueError(f"{path}: embedding values must be numbers, found {values.type}")
    if values.null_count:
        raise ValueError(f"{path}: embeddings hold {values.null_count} null value(s)")
    matrix = values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(item_id), dim)
    bad = ~np.isfinite(matrix).all(axis=1)
    if bad.any():
        raise ValueError(
            f"{path}: {int(bad.sum())} embedding(s) hold NaN or inf (or overflow float32), e.g. item_id "
            f"{item_id[bad][:5].tolist()}"
        )
    return item_id, matrix


def align_external_features(
    items: pd.DataFrame | str | os.PathLike,
    source_path: str | os.PathLike,
    out_path: str | os.PathLike,
    modality: str,
    missing: str = "error",
) -> None:
    """Align the precomputed features in ``source_path`` to the items and write ``out_path``.

    ``items`` follows the ITEMS contract. Rows of the source whose
    ``item_id`` is not an item are ignored (and counted in the log). Items
    the source lacks get, by ``missing``: ``"error"`` (fail, naming how many
    and which), ``"mean"`` (the mean of the aligned rows) or ``"zeros"``.
    The metadata records the modality, the source path and its sha256, the
    dimension, the number of filled items and the policy.
    """
    if missing not in MISSING_POLICIES:
        raise ValueError(f"{modality}_features: unknown missing policy '{missing}'; choose one of {MISSING_POLICIES}")
    if not isinstance(items, pd.DataFrame):
        items = read_table(items, ITEMS)
    for col in ("item_idx", "item_id"):
        if col not in items.columns:
            raise ValueError(f"{modality}_features: items lack column '{col}'; found {list(items.columns)}")
    items = items.sort_values("item_idx", kind="stable").reset_index(drop=True)
    if not np.array_equal(items["item_idx"].to_numpy(), np.arange(len(items))):
        raise ValueError(f"{modality}_features: item_idx must be dense 0..N-1 without duplicates (the ITEMS contract)")

    source_ids, source = read_external(source_path)
    row_of = pd.Series(np.arange(len(source_ids)), index=pd.Index(source_ids))
    hit = row_of.reindex(items["item_id"].astype(str).to_numpy())  # source row per item, NaN if absent
    has = hit.notna().to_numpy()
    n_missing = int((~has).sum())
    n_unknown = len(source_ids) - int(has.sum())
    log.info(
        "%s features from %s: dim %d; %d of %d items found, %d missing (policy %s), %d source row(s) for "
        "unknown items ignored",
        modality,
        source_path,
        source.shape[1],
        int(has.sum()),
        len(items),
        n_missing,
        missing,
        n_unknown,
    )
    if n_missing and missing == "error":
        examples = items.loc[~has, "item_id"].head(5).tolist()
        raise ValueError(
            f"{modality}_features: {n_missing} of {len(items)} item(s) have no row in {source_path}, e.g. item_id "
            f"{examples}; add them, or set the missing policy to 'mean' or 'zeros'"
        )
    if not has.any() and missing == "mean":
        raise ValueError(
            f"{modality}_features: no item of the catalogue is in {source_path} (are the item_id values the raw "
            f"ids of items.parquet?), so the 'mean' fill is undefined"
        )

    matrix = np.zeros((len(items), source.shape[1]), dtype=np.float32)
    matrix[has] = source[hit.to_numpy()[has].astype(np.int64)]
    if n_missing and missing == "mean":
        matrix[~has] = matrix[has].mean(axis=0)

    write_features(
        out_path,
        items["item_idx"].to_numpy(),
        matrix,
        stage=f"{modality}_features",
        metadata={
            "modality": modality,
            "source": str(source_path),
            "source_sha256": sha256_file(source_path),
            "dim": int(source.shape[1]),
            "n_items": int(len(items)),
            "n_missing": n_missing,
            "n_unknown_ignored": int(n_unknown),
            "policy": missing,
        },
    )
