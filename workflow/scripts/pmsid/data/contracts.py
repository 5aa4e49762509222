"""Data contracts: every Parquet file the workflow writes has a fixed schema.

The schema is asserted on write and on read, so a stage never silently
consumes a file of the wrong shape. Embedding matrices (features) have a
dimension that depends on the encoder, so they get their own helpers
(:func:`write_features`, :func:`read_features`) that check the column types
and that every value is finite.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

# results/data/{dataset}/items.parquet: one row per item, item_idx dense 0..N-1.
ITEMS = pa.schema(
    [
        pa.field("item_idx", pa.int32(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),  # the raw id (asin, movie id)
        pa.field("text", pa.string(), nullable=False),  # the configured text fields, joined
        pa.field("image_url", pa.string()),  # first image from metadata; null if none
    ]
)

# results/data/{dataset}/users.parquet: user_idx dense 0..U-1.
USERS = pa.schema(
    [
        pa.field("user_idx", pa.int32(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
    ]
)

# results/data/{dataset}/interactions.parquet: the filtered, split interactions.
# position is the 0-based chronological index within the user's sequence;
# split is "train", "valid" (second-to-last) or "test" (last).
INTERACTIONS = pa.schema(
    [
        pa.field("user_idx", pa.int32(), nullable=False),
        pa.field("item_idx", pa.int32(), nullable=False),
        pa.field("timestamp", pa.int64(), nullable=False),
        pa.field("position", pa.int32(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
    ]
)

# results/data/{dataset}/images.parquet: where each item's image lives locally.
# status is "ok", "missing" (no image in metadata / no file) or "broken" (not decodable).
IMAGES = pa.schema(
    [
        pa.field("item_idx", pa.int32(), nullable=False),
        pa.field("path", pa.string()),
        pa.field("status", pa.string(), nullable=False),
    ]
)

# results/pseudolabels/{dataset}/seed{seed}/{modality}.parquet: k-means cluster per item.
PSEUDOLABELS = pa.schema(
    [
        pa.field("item_idx", pa.int32(), nullable=False),
        pa.field("label", pa.int32(), nullable=False),
    ]
)

# results/tokenize/{dataset}/{tokenizer}/quality.parquet: ID-quality figures in
# long form. level is -1 for whole-ID metrics (collision rate, uniqueness).
ID_QUALITY = pa.schema(
    [
        pa.field("metric", pa.string(), nullable=False),
        pa.field("level", pa.int32(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
    ]
)

# results/evaluate/{dataset}/{model}/seed{seed}/per_user.parquet: rank of the
# held-out item for every user and split; rank is 1-based and null when the
# target is outside the method's top-K list (ranking.parquet).
PER_USER = pa.schema(
    [
        pa.field("user_idx", pa.int32(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("target_item", pa.int32(), nullable=False),
        pa.field("rank", pa.int32()),
    ]
)

# results/evaluate/{dataset}/{method}/seed{seed}/ranking.parquet: the method's
# top-K list for every user and split, best first (K = the evaluation's list
# length; shorter when the method returns fewer items), and the scores behind
# it where the method has them (null otherwise, e.g. for beam search). Every
# metric of the evaluation is recomputable from this file.
RANKING = pa.schema(
    [
        pa.field("user_idx", pa.int32(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("target_item", pa.int32(), nullable=False),
        pa.field("items", pa.list_(pa.int32()), nullable=False),
        pa.field("scores", pa.list_(pa.float32())),
    ]
)

# .../metrics.parquet and anything else in long form: one row per (split, metric).
METRICS = pa.schema(
    [
        pa.field("split", pa.string(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
    ]
)

# results/train/{dataset}/{model}/seed{seed}/train_log.parquet: one row per
# logged step; valid_ndcg10 is filled on evaluation steps only.
TRAIN_LOG = pa.schema(
    [
        pa.field("epoch", pa.int32(), nullable=False),
        pa.field("step", pa.int64(), nullable=False),
        pa.field("loss", pa.float64(), nullable=False),
        pa.field("valid_ndcg10", pa.float64()),
    ]
)

# results/efficiency/{dataset}/seed{seed}/efficiency.parquet: one row per
# retrieval method timed side by side (pmsid.methods.efficiency); NaN where
# a measure does not apply (beam search scores no items; CPU peak memory).
EFFICIENCY = pa.schema(
    [pa.field("method", pa.string(), nullable=False)]
    + [
        pa.field(name, pa.float64())
        for name in (
            "batch1_ms_median",
            "batch1_ms_p95",
            "batched_users_per_s",
            "decoder_passes_per_batch",
            "items_scored_per_user",
            "peak_memory_mb",
            "Recall@10",
            "NDCG@10",
            "speedup_batch1",
            "speedup_batched",
        )
    ]
)

# results/efficiency/{dataset}/seed{seed}/sweep.parquet: HDNAG's test accuracy
# and batched time per setting of one retrieval knob (coarse_candidates or
# candidate_budget).
EFFICIENCY_SWEEP = pa.schema(
    [
        pa.field("knob", pa.string(), nullable=False),
        pa.field("value", pa.int64(), nullable=False),
        pa.field("ms_per_user", pa.float64(), nullable=False),
        pa.field("candidates_per_user", pa.float64(), nullable=False),
        pa.field("Recall@10", pa.float64(), nullable=False),
        pa.field("NDCG@10", pa.float64(), nullable=False),
    ]
)


def _check_schema(table: pa.Table, schema: pa.Schema, path: str | os.PathLike) -> None:
    got = {f.name: f.type for f in table.schema}
    want = {f.name: f.type for f in schema}
    missing = [n for n in want if n not in got]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {list(got)}")
    extra = [n for n in got if n not in want]
    if extra:
        raise ValueError(f"{path}: unexpected column(s) {extra}; the contract has {list(want)}")
    wrong = {n: str(got[n]) for n in want if got[n] != want[n]}
    if wrong:
        expected = {n: str(want[n]) for n in wrong}
        raise ValueError(f"{path}: column type(s) {wrong} differ from the contract {expected}")
    for field in schema:
        if not field.nullable and table.column(field.name).null_count:
            raise ValueError(f"{path}: column '{field.name}' has nulls; the contract forbids them")


def write_table(df: pd.DataFrame, path: str | os.PathLike, schema: pa.Schema, metadata: dict | None = None) -> None:
    """Write ``df`` to ``path`` after checking it against ``schema``.

    The file is written to a temporary name and renamed, so a killed job
    never leaves a half-written Parquet file behind.
    """
    missing = [f.name for f in schema if f.name not in df.columns]
    if missing:
        raise ValueError(f"{path}: frame lacks column(s) {missing}; found {list(df.columns)}")
    table = pa.Table.from_pandas(df[[f.name for f in schema]], schema=schema, preserve_index=False)
    _check_schema(table, schema, path)
    if metadata:
        meta = dict(table.schema.metadata or {})
        meta.update({k.encode(): json.dumps(v).encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(meta)
    _atomic_write(table, path)


def empty_frame(schema: pa.Schema) -> pd.DataFrame:
    """A frame with no rows and the columns of ``schema`` (for example the
    train log of a method without epochs)."""
    return schema.empty_table().to_pandas()


def read_table(path: str | os.PathLike, schema: pa.Schema) -> pd.DataFrame:
    """Read ``path`` and check it against ``schema``; returns a DataFrame."""
    table = pq.read_table(path)
    _check_schema(table, schema, path)
    return table.to_pandas()


def read_metadata(path: str | os.PathLike) -> dict:
    """The JSON metadata written with :func:`write_table` or :func:`write_features`."""
    raw = pq.read_schema(path).metadata or {}
    out = {}
    for k, v in raw.items():
        key = k.decode()
        if key == "pandas":
            continue
        try:
            out[key] = json.loads(v)
        except json.JSONDecodeError:
            out[key] = v.decode()
    return out


def _atomic_write(table: pa.Table, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def check_finite(matrix: np.ndarray, stage: str) -> None:
    """Fail naming ``stage`` when ``matrix`` holds NaN or inf."""
    bad = ~np.isfinite(matrix)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0])
        raise ValueError(
            f"{stage}: {bad.sum()} non-finite value(s) (NaN or inf) in {len(rows)} row(s), "
            f"first rows {rows[:5].tolist()}"
        )


def write_features(
    path: str | os.PathLike, item_idx: np.ndarray, matrix: np.ndarray, stage: str, metadata: dict | None = None
) -> None:
    """Write an item-feature matrix ``(n_items, dim)`` as Parquet.

    Columns: ``item_idx`` (int32) and ``embedding`` (fixed-size list of
    float32). ``metadata`` (model name, dimension, ...) goes into the file's
    schema metadata. ``stage`` names the producing stage in error messages.
    """
    matrix = np.asarray(matrix, dtype=np.float32)
    if matrix.ndim != 2 or len(matrix) != len(item_idx):
        raise ValueError(f"{stage}: expected a (n_items, dim) matrix for {len(item_idx)} items, got {matrix.shape}")
    check_finite(matrix, stage)
    dim = matrix.shape[1]
    emb = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1), pa.float32()), dim)
    table = pa.table({"item_idx": pa.array(np.asarray(item_idx, dtype=np.int32)), "embedding": emb})
    meta = {"dim": dim, "stage": stage, **(metadata or {})}
    table = table.replace_schema_metadata({k.encode(): json.dumps(v).encode() for k, v in meta.items()})
    _atomic_write(table, path)


def read_features(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a feature file; returns ``(item_idx, matrix)`` with rows sorted by item_idx."""
    table = pq.read_table(path)
    names = table.schema.names
    if names != ["item_idx", "embedding"]:
        raise ValueError(f"{path}: expected columns ['item_idx', 'embedding'], found {names}")
    if table.schema.field("item_idx").type != pa.int32() or not pa.types.is_fixed_size_list(
        table.schema.field("embedding").type
    ):
        raise ValueError(f"{path}: expected item_idx int32 and embedding fixed_size_list<float>, got {table.schema}")
    item_idx = table.column("item_idx").to_numpy()
    col = table.column("embedding").combine_chunks()
    dim = col.type.list_size
    matrix = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
    order = np.argsort(item_idx, kind="stable")
    check_finite(matrix, f"reading {path}")
    return item_idx[order], matrix[order]


# results/tokenize/{dataset}/{tokenizer}/ids.parquet: one semantic ID per item.
# codes holds levels + 1 tokens; the last is the dedup token (TIGER) that makes
# every full ID unique. The ID length depends on the tokenizer's config, so the
# schema is built per file by :func:`ids_schema`.
def ids_schema(id_length: int) -> pa.Schema:
    """The ``ids.parquet`` schema for IDs of ``id_length`` tokens (levels + 1)."""
    if id_length < 2:
        raise ValueError(f"semantic IDs need at least one level plus the dedup token; got id_length={id_length}")
    return pa.schema(
        [
            pa.field("item_idx", pa.int32(), nullable=False),
            pa.field("codes", pa.list_(pa.int32(), id_length), nullable=False),
        ]
    )


def _check_semantic_ids(item_idx: np.ndarray, codes: np.ndarray, path: str | os.PathLike) -> None:
    # Beyond the column types: one row per item, tokens are vocabulary indices,
    # and the dedup token really did make every full ID unique.
    if len(np.unique(item_idx)) != len(item_idx):
        raise ValueError(f"{path}: column 'item_idx' repeats items; write one semantic ID per item")
    if codes.size and codes.min() < 0:
        raise ValueError(
            f"{path}: column 'codes' holds negative tokens (min {codes.min()}); tokens are codebook indices"
        )
    n_distinct = len(np.unique(codes, axis=0)) if len(codes) else 0
    if n_distinct != len(codes):
        raise ValueError(
            f"{path}: column 'codes' has {len(codes) - n_distinct} duplicated full ID(s); "
            "append the dedup token (pmsid.quantize.rq_kmeans.add_dedup_level) before writing"
        )


def write_semantic_ids(
    path: str | os.PathLike, item_idx: np.ndarray, codes: np.ndarray, metadata: dict | None = None
) -> None:
    """Write semantic IDs: ``item_idx`` (N,) and ``codes`` (N, levels + 1).

    Columns: ``item_idx`` (int32) and ``codes`` (fixed-size list of int32,
    ``levels + 1`` long). Every full ID must be unique and every token
    non-negative. ``metadata`` (levels, codebook size, seed, ...) goes into the
    file's schema metadata next to ``id_length``.
    """
    item_idx = np.asarray(item_idx)
    codes = np.asarray(codes)
    if codes.ndim != 2 or len(codes) != len(item_idx):
        raise ValueError(
            f"{path}: column 'codes' must be an (n_items, levels + 1) matrix for {len(item_idx)} items, got {codes.shape}"
        )
    if not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"{path}: column 'codes' must hold integer tokens, got dtype {codes.dtype}")
    if codes.size and codes.max() > np.iinfo(np.int32).max:
        raise ValueError(f"{path}: column 'codes' has a token {codes.max()} beyond int32")
    _check_semantic_ids(item_idx, codes, path)
    id_length = codes.shape[1]
    schema = ids_schema(id_length)
    flat = pa.array(codes.astype(np.int32).reshape(-1), pa.int32())
    table = pa.table(
        {
            "item_idx": pa.array(item_idx.astype(np.int32), pa.int32()),
            "codes": pa.FixedSizeListArray.from_arrays(flat, id_length),
        }
    ).cast(schema)
    _check_schema(table, schema, path)
    meta = {"id_length": id_length, **(metadata or {})}
    table = table.replace_schema_metadata({k.encode(): json.dumps(v).encode() for k, v in meta.items()})
    _atomic_write(table, path)


def read_semantic_ids(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read an ids file; returns ``(item_idx, codes)`` sorted by item_idx.

    ``item_idx`` is int32 (N,), ``codes`` int64 (N, levels + 1). The schema and
    the uniqueness of every full ID are checked; metadata is available through
    :func:`read_metadata`.
    """
    table = pq.read_table(path)
    names = table.schema.names
    if "codes" not in names:
        raise ValueError(f"{path}: missing column(s) ['codes']; found {names}")
    codes_type = table.schema.field("codes").type
    if not pa.types.is_fixed_size_list(codes_type):
        raise ValueError(
            f"{path}: column 'codes' must be a fixed-size list of int32 (levels + 1 long), got {codes_type}; "
            "write it with write_semantic_ids"
        )
    _check_schema(table, ids_schema(codes_type.list_size), path)
    col = table.column("codes").combine_chunks()
    if col.flatten().null_count:
        raise ValueError(f"{path}: column 'codes' has null tokens; the contract forbids them")
    item_idx = table.column("item_idx").to_numpy()
    codes = col.flatten().to_numpy(zero_copy_only=False).astype(np.int64).reshape(-1, codes_type.list_size)
    _check_semantic_ids(item_idx, codes, path)
    order = np.argsort(item_idx, kind="stable")
    return item_idx[order], codes[order]


# results/tokenize/{dataset}/pmat_{variant}/seed{seed}/ids.parquet: PMAT's
# personalized semantic IDs, one table per preference prototype (P tables over
# the same N items; P = 1 for global fusion). Every full ID is unique within
# its table; the same ID may name different items in different tables.
def write_personalized_ids(path: str | os.PathLike, ids: np.ndarray, metadata: dict | None = None) -> None:
    """Write ``ids (P, N, levels + 1)``: columns ``prototype``, ``item_idx`` (int32), ``codes``."""
    ids = np.asarray(ids)
    if ids.ndim != 3 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(
            f"{path}: personalized IDs must be an integer (P, N, levels + 1) array, got {ids.dtype} {ids.shape}"
        )
    n_tables, n_items, id_length = ids.shape
    for p in range(n_tables):
        _check_semantic_ids(np.arange(n_items), ids[p], f"{path} (prototype {p})")
    flat = pa.array(ids.astype(np.int32).reshape(-1), pa.int32())
    table = pa.table(
        {
            "prototype": pa.array(np.repeat(np.arange(n_tables, dtype=np.int32), n_items)),
            "item_idx": pa.array(np.tile(np.arange(n_items, dtype=np.int32), n_tables)),
            "codes": pa.FixedSizeListArray.from_arrays(flat, id_length),
        },
        schema=personalized_ids_schema(id_length),
    )
    meta = {"id_length": id_length, "n_prototypes": n_tables, **(metadata or {})}
    table = table.replace_schema_metadata({k.encode(): json.dumps(v).encode() for k, v in meta.items()})
    _atomic_write(table, path)


def personalized_ids_schema(id_length: int) -> pa.Schema:
    return pa.schema([pa.field("prototype", pa.int32(), nullable=False), *ids_schema(id_length)])


def read_personalized_ids(path: str | os.PathLike) -> np.ndarray:
    """Read a personalized-IDs file; returns ``ids (P, N, levels + 1)`` int64.

    Every prototype must cover item_idx 0..N-1 exactly once, with unique IDs.
    """
    table = pq.read_table(path)
    if "codes" not in table.schema.names or not pa.types.is_fixed_size_list(table.schema.field("codes").type):
        raise ValueError(f"{path}: expected a fixed-size list column 'codes'; write it with write_personalized_ids")
    id_length = table.schema.field("codes").type.list_size
    _check_schema(table, personalized_ids_schema(id_length), path)
    proto = table.column("prototype").to_numpy()
    item = table.column("item_idx").to_numpy()
    codes = table.column("codes").combine_chunks().flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    codes = codes.reshape(-1, id_length)
    n_tables, n_items = int(proto.max()) + 1, int(item.max()) + 1
    if len(proto) != n_tables * n_items:
        raise ValueError(f"{path}: {len(proto)} rows, expected prototypes x items = {n_tables} x {n_items}")
    ids = np.full((n_tables, n_items, id_length), -1, dtype=np.int64)
    ids[proto, item] = codes
    if (ids < 0).any():
        raise ValueError(f"{path}: some (prototype, item_idx) pairs are missing or tokens are negative")
    for p in range(n_tables):
        _check_semantic_ids(np.arange(n_items), ids[p], f"{path} (prototype {p})")
    return ids


# results/pmat/{dataset}/seed{seed}/weights.parquet: each user's learned
# modality weights (long form, one row per user and modality; the weights of a
# user sum to 1). planted_preference is the synthetic data's planted label
# ("image" / "text"), null where the dataset has no truth.
USER_WEIGHTS = pa.schema(
    [
        pa.field("user_idx", pa.int32(), nullable=False),
        pa.field("modality", pa.string(), nullable=False),
        pa.field("weight", pa.float64(), nullable=False),
        pa.field("planted_preference", pa.string()),
    ]
)

# results/pmat/{dataset}/seed{seed}/attention_log.parquet: one row per epoch of
# the preference network's training.
ATTENTION_LOG = pa.schema(
    [
        pa.field("epoch", pa.int32(), nullable=False),
        pa.field("step", pa.int64(), nullable=False),
        pa.field("loss", pa.float64(), nullable=False),
        pa.field("valid_infonce", pa.float64(), nullable=False),
        pa.field("valid_recall10", pa.float64(), nullable=False),
        pa.field("alpha_std", pa.float64(), nullable=False),
        pa.field("seconds", pa.float64(), nullable=False),
    ]
)

# .../prototypes.parquet: the weights of every preference prototype (long form).
PROTOTYPES = pa.schema(
    [
        pa.field("prototype", pa.int32(), nullable=False),
        pa.field("modality", pa.string(), nullable=False),
        pa.field("weight", pa.float64(), nullable=False),
    ]
)

# .../assignment.parquet: the ID table (prototype) each user decodes under, per
# split. Without updates valid and test use the training-time prototype; with
# drift-triggered updates (PMAT replay) the one in force when that split's
# target is ranked.
ASSIGNMENT = pa.schema(
    [
        pa.field("user_idx", pa.int32(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("prototype", pa.int32(), nullable=False),
    ]
)

# .../prefix_tables.parquet: the ID table each training prefix is tokenized in.
# ``position`` is the index of the prefix's target in the user's sequence, so
# the prefix is the user's items [0, position). The table is chosen from those
# items only (never from the target or later items), as at evaluation.
PREFIX_TABLES = pa.schema(
    [
        pa.field("user_idx", pa.int32(), nullable=False),
        pa.field("position", pa.int32(), nullable=False),
        pa.field("prototype", pa.int32(), nullable=False),
    ]
)
