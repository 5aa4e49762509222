"""Load the contract files a model trains and ranks on: sequences, semantic
IDs, personalized ID tables and each user's table per split."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pmsid.data import contracts
from pmsid.data.sequences import Sequences, training_positions

SPLITS = ("train", "valid", "test")


def load_sequences(interactions_path: str, items_path: str) -> Sequences:
    """Every user's time-ordered items with their splits."""
    items = contracts.read_table(items_path, contracts.ITEMS)
    interactions = contracts.read_table(interactions_path, contracts.INTERACTIONS)
    return Sequences.from_interactions(interactions, n_items=len(items))


def load_codes(ids_path: str, n_items: int) -> np.ndarray:
    """Semantic IDs ``(n_items, levels + 1)``, row i = item_idx i."""
    item_idx, codes = contracts.read_semantic_ids(ids_path)
    if not np.array_equal(item_idx, np.arange(n_items)):
        raise ValueError(
            f"{ids_path}: semantic IDs must cover item_idx 0..{n_items - 1} exactly; "
            f"found {len(item_idx)} rows. Rerun the tokenizer on the current items.parquet."
        )
    return codes


def read_assignment(path: str, n_users: int) -> dict[str, np.ndarray]:
    """``{split: (U,) table index}`` from an assignment file, every user present once per split."""
    frame = contracts.read_table(path, contracts.ASSIGNMENT)
    out = {}
    for split in SPLITS:
        rows = frame[frame["split"] == split].sort_values("user_idx")
        if not np.array_equal(rows["user_idx"].to_numpy(), np.arange(n_users)):
            raise ValueError(f"{path}: split {split!r} must list user_idx 0..{n_users - 1} once each")
        out[split] = rows["prototype"].to_numpy(np.int64)
    return out


def load_personalized(ids_path: str, assignment_path: str, seqs: Sequences) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """PMAT ID tables ``(P, N, L + 1)`` and the table of every user per split."""
    codes = contracts.read_personalized_ids(ids_path)
    if codes.shape[1] != seqs.n_items:
        raise ValueError(
            f"{ids_path}: ID tables cover {codes.shape[1]} items, the dataset {seqs.n_items}; rerun pmat_ids"
        )
    tables = read_assignment(assignment_path, seqs.n_users)
    for split, table in tables.items():
        if table.max() >= len(codes):
            raise ValueError(f"{assignment_path}: split {split} names table {table.max()} of {len(codes)}")
    return codes, tables


def load_prefix_tables(path: str, seqs: Sequences, n_tables: int) -> np.ndarray:
    """The ID table of every training prefix ``(S,)``, in the row order of
    :func:`pmsid.data.sequences.training_samples` (contract PREFIX_TABLES)."""
    frame = contracts.read_table(path, contracts.PREFIX_TABLES)
    users, positions = training_positions(seqs)
    key = pd.MultiIndex.from_arrays([frame["user_idx"].to_numpy(np.int64), frame["position"].to_numpy(np.int64)])
    if key.has_duplicates:
        raise ValueError(f"{path}: a (user_idx, position) pair is listed twice")
    wanted = pd.MultiIndex.from_arrays([users, positions])
    found = key.get_indexer(wanted)
    if (found < 0).any() or len(key) != len(wanted):
        raise ValueError(
            f"{path}: lists {len(key)} prefixes, {int((found < 0).sum())} of the dataset's {len(wanted)} training "
            "prefixes missing; rerun pmat_ids on the current interactions"
        )
    tables = frame["prototype"].to_numpy(np.int64)[found]
    if len(tables) and (tables.min() < 0 or tables.max() >= n_tables):
        raise ValueError(f"{path}: names table {tables.max()} but there are {n_tables} ID tables")
    return tables


def load_id_tables(inputs: dict, seqs: Sequences) -> tuple[np.ndarray, dict[str, np.ndarray] | None]:
    """The ID tables a generator trains or ranks under, from a rule's inputs.

    ``inputs["ids"]`` alone: one table ``(n_items, D)`` (RQ-KMeans), no
    per-user tables. With ``inputs["assignment"]``: PMAT's ``(P, n_items, D)``
    tables and ``{split: (U,)}``, the table each user uses at each split;
    with ``inputs["prefix_tables"]`` also ``"prefix": (S,)``, the table of
    each training prefix (:func:`load_prefix_tables`).
    """
    if "assignment" not in inputs:
        return load_codes(inputs["ids"], seqs.n_items), None
    codes, tables = load_personalized(inputs["ids"], inputs["assignment"], seqs)
    if "prefix_tables" in inputs:
        tables["prefix"] = load_prefix_tables(inputs["prefix_tables"], seqs, len(codes))
    return codes, tables
