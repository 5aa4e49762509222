"""The training-budget table: how long each model trained and why it stopped.

Every neural model trains with one rule (``pmsid.train.loop``): validation
NDCG@10 after every epoch, the best epoch kept, early stopping after
``patience`` epochs without a gain, at most ``max_epochs`` epochs. The loop
writes its budget and what became of it into the metadata of
``train_log.parquet`` (``max_epochs``, ``patience``, ``max_samples_per_epoch``,
``epochs_run``, ``best_epoch``, ``stopped_early``); this module turns those
into one row per dataset and model, so a reader sees which models reached
early stopping and which were cut off by the epoch cap while still improving.
"""

from __future__ import annotations

import pandas as pd

from pmsid.data.contracts import TRAIN_LOG, read_metadata, read_table
from pmsid.report.tables import parse_run_path

BUDGET_KEYS = ("max_epochs", "patience", "max_samples_per_epoch", "epochs_run", "best_epoch", "stopped_early")


def collect_budgets(train_log_paths: list[str]) -> pd.DataFrame:
    """One row per run: ``dataset, model, seed`` and the :data:`BUDGET_KEYS` of its train log.

    A log written without the budget (by a version of the pipeline before it
    was recorded) fails naming the file: rerun that training.
    """
    rows = []
    for path in train_log_paths:
        run = parse_run_path(path, "train", "train_log.parquet")
        meta = read_metadata(path)
        missing = [k for k in BUDGET_KEYS if k not in meta]
        if missing:
            raise ValueError(
                f"{path}: the train log's metadata lacks {missing}; it was written before budgets were "
                "recorded, so rerun that training"
            )
        read_table(path, TRAIN_LOG)  # the contract, so a broken file fails here
        rows.append({**run, **{k: meta[k] for k in BUDGET_KEYS}})
    return pd.DataFrame(rows, columns=["dataset", "model", "seed", *BUDGET_KEYS])


def _per_seed(values) -> str:
    """``3`` when every seed agrees, else the values in seed order: ``3, 5, 4``."""
    values = [str(v) for v in values]
    return values[0] if len(set(values)) == 1 else ", ".join(values)


def budget_table(budgets: pd.DataFrame, order: list[str] | None = None) -> pd.DataFrame:
    """One row per (dataset, model): the budget, and per seed the epochs run and the best epoch.

    ``stopped_early`` and ``still_improving`` count seeds: a run is still
    improving when it did not stop early and its best epoch is its last, so
    more epochs might have helped (the mark of an under-trained model).
    ``order`` lists the models in table order (default: alphabetical).
    """
    rows = []
    for (dataset, model), group in budgets.sort_values("seed").groupby(["dataset", "model"], sort=True):
        stopped = group["stopped_early"].astype(bool)
        improving = ~stopped & (group["best_epoch"] == group["epochs_run"])
        cap = group["max_samples_per_epoch"].iloc[0]
        rows.append(
            {
                "dataset": dataset,
                "model": model,
                "seeds": len(group),
                "max_epochs": _per_seed(group["max_epochs"]),
                "patience": _per_seed(group["patience"]),
                "samples_per_epoch": "all" if pd.isna(cap) else str(int(cap)),
                "epochs_run": _per_seed(group["epochs_run"]),
                "best_epoch": _per_seed(group["best_epoch"]),
                "stopped_early": f"{int(stopped.sum())}/{len(group)}",
                "still_improving": f"{int(improving.sum())}/{len(group)}",
            }
        )
    table = pd.DataFrame(rows)
    if order is not None and len(table):
        rank = {m: i for i, m in enumerate(order)}
        table = table.sort_values(
            ["dataset", "model"], key=lambda c: c.map(rank) if c.name == "model" else c, ignore_index=True
        )
    return table


BUDGET_CAPTION = (
    "Training budgets. Every neural model trains with one rule: validation NDCG@10 after every epoch, the best "
    "epoch's weights kept, early stopping after 'patience' epochs without a gain, at most 'max_epochs' epochs of "
    "at most 'samples_per_epoch' training samples each. 'epochs_run' and 'best_epoch' are per seed (one value "
    "when all seeds agree); 'stopped_early' counts the seeds where patience ran out before the cap; "
    "'still_improving' counts the seeds whose best epoch was their last without early stopping: those were cut "
    "off by the cap and may be under-trained."
)
