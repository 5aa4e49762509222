"""The field's standard data protocol (docs/METHOD.md section 2).

Raw interactions ``(user_id, item_id, timestamp)`` from any reader go through
the same steps, in this order:

1. keep interactions whose item has metadata (and, for image-filtered
   releases such as Amazon 2018, an image);
2. :func:`deduplicate`: one interaction per (user, item), the earliest;
3. :func:`k_core`: iterative k-core (users and items with >= k interactions);
4. :func:`split_leave_one_out`: per user in time order, last = test,
   second-to-last = valid, the rest = train.

:func:`build_dataset` runs them all and returns frames that match the
``ITEMS``, ``USERS`` and ``INTERACTIONS`` contracts of
:mod:`pmsid.data.contracts`, plus a statistics dict for ``stats.json``.

Row order matters in one place: when two interactions of a user share a
timestamp, the one that came first in the raw file comes first in the
sequence. Every step here therefore keeps the original relative row order.

Releases that ship their own split (Amazon 2023's "last_out_w_his"
benchmark) pass a ``split`` column: steps 2-4 are then skipped and the
release's split is kept and validated instead (:func:`keep_given_split`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

log = logging.getLogger("pmsid.data.protocol")

INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp")
SPLITS = ("train", "valid", "test")

# ITEMS / USERS / INTERACTIONS column order, as in pmsid.data.contracts.
ITEM_COLUMNS = ["item_idx", "item_id", "text", "image_url"]
USER_COLUMNS = ["user_idx", "user_id"]
SPLIT_COLUMNS = ["user_idx", "item_idx", "timestamp", "position", "split"]


def require_columns(df: pd.DataFrame, columns: Iterable[str], source: str) -> None:
    """Fail naming ``source``, the missing column(s) and the columns found.

    ``source`` is whatever tells the reader where the frame came from: a file
    path when a reader knows it, otherwise a description ("raw_items").
    """
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(
            f"{source}: missing column(s) {missing}; found {list(df.columns)}. "
            "Check the reader's column names against the raw file's header."
        )


def deduplicate(df: pd.DataFrame) -> pd.DataFrame:
    """Drop repeated (user_id, item_id) pairs, keeping the earliest timestamp.

    Among repeats with the same earliest timestamp the first row in the
    input wins. The result keeps the input's row order (so later tie-breaks
    on original order still hold) and gets a fresh 0..n-1 index.
    """
    require_columns(df, INTERACTION_COLUMNS, "interactions")
    df = df.reset_index(drop=True)  # positional labels, whatever the caller's index
    # A stable sort by time puts each pair's earliest row first; sorting the
    # survivors' index back restores the input order.
    earliest_first = df.sort_values("timestamp", kind="stable")
    kept = earliest_first.drop_duplicates(["user_id", "item_id"], keep="first")
    return df.loc[np.sort(kept.index.to_numpy())].reset_index(drop=True)


def k_core(df: pd.DataFrame, k: int) -> pd.DataFrame:
    """Iterative k-core: drop users and items with fewer than ``k`` interactions
    until every remaining user and item has at least ``k``.

    One pass is not enough in general: dropping a rare item can push a user
    below ``k``, whose removal can push another item below ``k``, and so on.
    Keeps the input's row order; returns a fresh 0..n-1 index.
    """
    require_columns(df, ("user_id", "item_id"), "interactions")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k_core: k must be an integer >= 1, got {k!r}")
    out = df
    rounds = 0
    while True:
        user_counts = out["user_id"].map(out["user_id"].value_counts())
        item_counts = out["item_id"].map(out["item_id"].value_counts())
        keep = (user_counts >= k) & (item_counts >= k)
        if keep.all():
            break
        out = out[keep.to_numpy()]
        rounds += 1
    log.debug("k_core(k=%d): stable after %d filtering round(s)", k, rounds)
    return out.reset_index(drop=True)


def split_leave_one_out(df: pd.DataFrame) -> pd.DataFrame:
    """Order each user's history in time and split it leave-one-out.

    Sorts by (user_id, timestamp, original row order) and adds ``position``
    (0..n-1 within the user, chronological) and ``split``: ``"test"`` for the
    last interaction, ``"valid"`` for the second-to-last, ``"train"`` for the
    rest. Returns the rows sorted by user then position, with a fresh index.

    Every user needs at least 3 interactions (one train, one valid, one
    test); run :func:`k_core` with ``k >= 3`` first.
    """
    require_columns(df, ("user_id", "timestamp"), "interactions")
    out = df.reset_index(drop=True)
    # Original order is the stable tie-break for equal timestamps.
    out = out.assign(_row=np.arange(len(out))).sort_values(["user_id", "timestamp", "_row"], kind="stable")
    out = out.drop(columns="_row").reset_index(drop=True)
    position = out.groupby("user_id", sort=False).cumcount().to_numpy()
    length = out.groupby("user_id", sort=False)["user_id"].transform("size").to_numpy()
    short = out.loc[length < 3, "user_id"].unique()
    if len(short):
        raise ValueError(
            f"leave-one-out needs >= 3 interactions per user; {len(short)} user(s) have fewer, "
            f"e.g. {list(short[:5])}. Filter with k_core(df, k) for some k >= 3 first."
        )
    split = np.where(position == length - 1, "test", np.where(position == length - 2, "valid", "train"))
    out["position"] = position.astype(np.int32)
    out["split"] = pd.Series(split, index=out.index, dtype="str")
    return out


def keep_given_split(df: pd.DataFrame) -> pd.DataFrame:
    """Keep a release's own train/valid/test split and order each user's sequence.

    ``df`` has ``user_id, item_id, timestamp, split``. Every user needs at
    least one ``train`` row, exactly one ``valid`` and exactly one ``test``
    row. Nothing is dropped or deduplicated: the release already did that,
    and any change would break its split.

    Positions: the train rows by (timestamp, original row order), then the
    valid row, then the test row. The split, not the timestamp, decides the
    order of the last two (a release may round times so that they tie).
    Returns the rows sorted by user then position, with ``position`` and
    ``split`` as :func:`split_leave_one_out` gives them.
    """
    require_columns(df, (*INTERACTION_COLUMNS, "split"), "interactions")
    out = df.reset_index(drop=True)
    unknown = ~out["split"].isin(SPLITS)
    if unknown.any():
        raise ValueError(
            f"interactions: column 'split' must hold {list(SPLITS)}; {int(unknown.sum())} row(s) hold other "
            f"values, e.g. {out.loc[unknown, 'split'].drop_duplicates().head(5).tolist()}"
        )
    counts = pd.crosstab(out["user_id"], out["split"]).reindex(columns=list(SPLITS), fill_value=0)
    bad = counts[(counts["train"] < 1) | (counts["valid"] != 1) | (counts["test"] != 1)]
    if len(bad):
        examples = {user: row for user, row in zip(bad.index[:5], bad.to_dict("records"))}
        raise ValueError(
            f"given split: {len(bad)} of {len(counts)} user(s) do not have at least one train row, exactly one "
            f"valid row and exactly one test row; e.g. (rows per split) {examples}. Is one of the release's "
            "train/valid/test files truncated, or from another category?"
        )
    order = out["split"].map({"train": 0, "valid": 1, "test": 2}).to_numpy()
    out = out.assign(_order=order, _row=np.arange(len(out))).sort_values(
        ["user_id", "_order", "timestamp", "_row"], kind="stable"
    )
    out = out.drop(columns=["_order", "_row"]).reset_index(drop=True)
    out["position"] = out.groupby("user_id", sort=False).cumcount().to_numpy().astype(np.int32)
    out["split"] = out["split"].astype("str")
    return out


def _is_missing(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, (list, tuple, np.ndarray, dict)):
        return False
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _clean(text: str) -> str:
    # Collapse runs of whitespace (newlines, tabs, non-breaking spaces) so the
    # joined text reads as one line.
    return re.sub(r"\s+", " ", text).strip()


def format_value(value: object) -> str:
    """One metadata value as text: lists joined by ", ", missing -> ""."""
    if _is_missing(value):
        return ""
    if isinstance(value, (list, tuple, np.ndarray)):
        parts = [format_value(v) for v in value]
        return ", ".join(p for p in parts if p)
    return _clean(str(value))


def item_text(row: dict, text_fields: Sequence[str]) -> str:
    """The item's text: ``"field: value; field: value"`` over ``text_fields``,
    skipping empty values."""
    parts = []
    for field in text_fields:
        value = format_value(row.get(field))
        if value:
            parts.append(f"{field}: {value}")
    return "; ".join(parts)


def _as_timestamps(values: pd.Series) -> pd.Series:
    ts = pd.to_numeric(values, errors="coerce")
    bad = ts.isna() | ~np.isfinite(ts.astype("float64"))
    if bad.any():
        examples = values[bad].head(3).tolist()
        raise ValueError(
            f"interactions: {int(bad.sum())} timestamp(s) are missing or not numbers, e.g. {examples}; "
            "timestamps must be integer seconds since the epoch"
        )
    if not np.all(np.floor(ts) == ts):
        raise ValueError("interactions: timestamps must be whole seconds; found fractional values")
    return ts.astype(np.int64)


DROP_STATS = (
    "dropped_no_metadata",
    "dropped_no_image",
    "dropped_duplicates",
    "dropped_k_core",
    "dropped_k_core_users",
    "dropped_k_core_items",
)


def _check_given_split_items(inter: pd.DataFrame, items: pd.DataFrame, require_image: bool) -> None:
    """With a given split every interaction must survive: dropping one would
    leave a user without its valid or test item, or shift its history."""
    checks = [("metadata", items["item_id"])]
    if require_image:
        checks.append(("an image", items.loc[items["image_url"].notna(), "item_id"]))
    for what, known in checks:
        lacking = ~inter["item_id"].isin(known)
        if lacking.any():
            examples = inter.loc[lacking, "item_id"].drop_duplicates().head(5).tolist()
            raise ValueError(
                f"given split: {int(lacking.sum())} interaction(s) on {inter.loc[lacking, 'item_id'].nunique()} "
                f"item(s) without {what}, e.g. {examples}. Dropping them would break the release's split; "
                "use the metadata file of the same release and category"
                + (", or set require_image: false" if what == "an image" else "")
            )


def build_dataset(
    raw_interactions: pd.DataFrame,
    raw_items: pd.DataFrame,
    text_fields: Sequence[str],
    min_interactions: int = 5,
    require_image: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """Apply the standard protocol to one dataset.

    Parameters
    ----------
    raw_interactions:
        columns ``user_id, item_id, timestamp`` (raw ids; integer seconds).
    raw_items:
        ``item_id``, ``image_url`` (null when the item has no image) and the
        columns named in ``text_fields``. One row per item.
    text_fields:
        metadata columns joined, in this order, into the item text as
        ``"field: value; ..."``; empty values are skipped, list values are
        joined by ``", "``.
    min_interactions:
        the k of the iterative k-core (5 in the standard protocol; >= 3 so
        every user has train, valid and test items).
    require_image:
        keep only items whose ``image_url`` is set (image-filtered releases).

    A ``split`` column in ``raw_interactions`` (``train`` / ``valid`` /
    ``test``, e.g. Amazon 2023's benchmark files) means the release's own
    split: no deduplication, no k-core, no leave-one-out; the split is kept
    and validated (:func:`keep_given_split`), an interaction whose item lacks
    metadata (or, with ``require_image``, an image) is an error rather than
    dropped, and ``stats`` gets ``"given_split": True`` and
    ``"min_interactions": None``.

    Returns
    -------
    ``(items, users, interactions, stats)``: the first three match the
    ``ITEMS``, ``USERS`` and ``INTERACTIONS`` contracts exactly (columns,
    order, dtypes); ``item_idx`` is dense over items sorted by raw item_id,
    ``user_idx`` dense over users sorted by raw user_id. ``stats`` holds the
    final counts, density, average sequence length, the raw counts and the
    number of interactions each step dropped.
    """
    require_columns(raw_interactions, INTERACTION_COLUMNS, "raw_interactions")
    text_fields = list(text_fields)
    if not text_fields or not all(isinstance(f, str) for f in text_fields):
        raise ValueError(f"text_fields must be a non-empty list of column names, got {text_fields!r}")
    require_columns(raw_items, ["item_id", "image_url", *text_fields], "raw_items")
    if (
        isinstance(min_interactions, bool)
        or not isinstance(min_interactions, (int, np.integer))
        or min_interactions < 3
    ):
        raise ValueError(
            f"min_interactions must be an integer >= 3 (leave-one-out needs train, valid and test items), "
            f"got {min_interactions!r}"
        )

    inter = pd.DataFrame(
        {
            "user_id": raw_interactions["user_id"].astype("str"),
            "item_id": raw_interactions["item_id"].astype("str"),
            "timestamp": _as_timestamps(raw_interactions["timestamp"]),
        }
    )
    for col in ("user_id", "item_id"):
        if inter[col].isna().any():
            raise ValueError(f"raw_interactions: {int(inter[col].isna().sum())} row(s) have a null {col}")

    items = raw_items.copy()
    items["item_id"] = items["item_id"].astype("str")
    if items["item_id"].isna().any():
        raise ValueError("raw_items: some rows have a null item_id")
    dup = items["item_id"][items["item_id"].duplicated()]
    if len(dup):
        raise ValueError(
            f"raw_items: {len(dup)} duplicate item_id(s), e.g. {dup.head(5).tolist()}; "
            "the reader must keep one metadata row per item"
        )
    # An empty or whitespace-only URL means no image, same as null.
    url = items["image_url"].astype("str").str.strip()
    items["image_url"] = url.where(url.notna() & (url != ""), None)

    stats: dict = {
        "raw_interactions": len(inter),
        "raw_users": int(inter["user_id"].nunique()),
        "raw_items": int(inter["item_id"].nunique()),
        "raw_items_with_metadata": len(items),
    }

    given_split = "split" in raw_interactions.columns
    if given_split:
        inter = inter.assign(split=raw_interactions["split"].astype("str").to_numpy())
        _check_given_split_items(inter, items, require_image)
        # The release deduplicated and filtered already; nothing is dropped.
        for key in DROP_STATS:
            stats[key] = 0
        inter = keep_given_split(inter)
    else:
        n = len(inter)
        inter = inter[inter["item_id"].isin(items["item_id"])]
        stats["dropped_no_metadata"] = n - len(inter)

        n = len(inter)
        if require_image:
            with_image = items.loc[items["image_url"].notna(), "item_id"]
            inter = inter[inter["item_id"].isin(with_image)]
        stats["dropped_no_image"] = n - len(inter)

        n = len(inter)
        inter = deduplicate(inter)
        stats["dropped_duplicates"] = n - len(inter)

        n, n_u, n_i = len(inter), inter["user_id"].nunique(), inter["item_id"].nunique()
        inter = k_core(inter, min_interactions)
        stats["dropped_k_core"] = n - len(inter)
        stats["dropped_k_core_users"] = int(n_u - inter["user_id"].nunique())
        stats["dropped_k_core_items"] = int(n_i - inter["item_id"].nunique())
        if inter.empty:
            raise ValueError(
                f"no interactions left after the {min_interactions}-core filter "
                f"(steps dropped: {stats}); is the data too small for this min_interactions?"
            )

        inter = split_leave_one_out(inter)

    # Dense indices in sorted raw-id order (string order of the raw ids).
    item_ids = np.sort(inter["item_id"].unique())
    user_ids = np.sort(inter["user_id"].unique())
    item_index = pd.Series(np.arange(len(item_ids), dtype=np.int32), index=item_ids)
    user_index = pd.Series(np.arange(len(user_ids), dtype=np.int32), index=user_ids)

    meta = items.set_index("item_id").loc[item_ids]
    texts = []
    for item_id, row in zip(item_ids, meta.to_dict("records")):
        text = item_text(row, text_fields)
        if not text:
            raise ValueError(
                f"item {item_id!r} has empty text: all of its fields {text_fields} are empty. "
                "Add other text fields in the config or fix the item's metadata."
            )
        texts.append(text)

    items_df = pd.DataFrame(
        {
            "item_idx": np.arange(len(item_ids), dtype=np.int32),
            "item_id": pd.Series(item_ids, dtype="str"),
            "text": pd.Series(texts, dtype="str"),
            "image_url": pd.Series(meta["image_url"].to_numpy(), dtype="str"),
        }
    )[ITEM_COLUMNS]
    users_df = pd.DataFrame(
        {
            "user_idx": np.arange(len(user_ids), dtype=np.int32),
            "user_id": pd.Series(user_ids, dtype="str"),
        }
    )[USER_COLUMNS]
    interactions_df = pd.DataFrame(
        {
            "user_idx": inter["user_id"].map(user_index).to_numpy(np.int32),
            "item_idx": inter["item_id"].map(item_index).to_numpy(np.int32),
            "timestamp": inter["timestamp"].to_numpy(np.int64),
            "position": inter["position"].to_numpy(np.int32),
            "split": pd.Series(inter["split"].to_numpy(), dtype="str"),
        }
    )[SPLIT_COLUMNS]
    # split_leave_one_out sorted by raw user_id, which is user_idx order.
    interactions_df = interactions_df.sort_values(["user_idx", "position"], kind="stable").reset_index(drop=True)

    n_users, n_items, n_inter = len(users_df), len(items_df), len(interactions_df)
    stats.update(
        {
            "n_users": n_users,
            "n_items": n_items,
            "n_interactions": n_inter,
            "density": n_inter / (n_users * n_items),
            "avg_seq_len": n_inter / n_users,
            "n_items_with_image": int(items_df["image_url"].notna().sum()),
            "min_interactions": int(min_interactions),
            "require_image": bool(require_image),
            "text_fields": text_fields,
        }
    )
    if given_split:
        # The release applied its own k-core; this run's min_interactions was not used.
        stats["min_interactions"] = None
        stats["given_split"] = True
    log.info(
        "protocol: %d raw interactions -> %d users, %d items, %d interactions "
        "(dropped: %d without metadata, %d without image, %d duplicates, %d by the %d-core)",
        stats["raw_interactions"],
        n_users,
        n_items,
        n_inter,
        stats["dropped_no_metadata"],
        stats["dropped_no_image"],
        stats["dropped_duplicates"],
        stats["dropped_k_core"],
        min_interactions,
    )
    return items_df, users_df, interactions_df, stats
