"""Report figures (seaborn): codebook usage, training curves, metric bars.

Each function draws one PNG with a title and labelled axes, saved at
``DPI`` with a tight layout, and closes its figure (the report draws several
in one process).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import matplotlib

# The report runs on headless cluster nodes: never ask for a display.
matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from pmsid.data.contracts import TRAIN_LOG, read_table  # noqa: E402
from pmsid.report.tables import parse_run_path  # noqa: E402

log = logging.getLogger(__name__)

DPI = 150


def _save(fig: plt.Figure, out_png: str | os.PathLike) -> str:
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out_png, dpi=DPI)
    plt.close(fig)
    log.info("wrote figure %s", out_png)
    return str(out_png)


def _one_legend_outside(axes, title: str) -> None:
    """Keep a single legend, right of the last panel, so it never hides bars or lines."""
    axes = [ax for ax in axes if ax.get_legend() is not None]
    if not axes:
        return
    for ax in axes[:-1]:
        ax.get_legend().remove()
    sns.move_legend(axes[-1], "upper left", bbox_to_anchor=(1.02, 1.0), title=title, fontsize="small", frameon=False)


def _require_columns(df: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: frame lacks column(s) {missing}; found {list(df.columns)}")


def plot_codebook_utilization(quality_df: pd.DataFrame, out_png: str | os.PathLike) -> str:
    """Per-level codebook utilization and normalized entropy, one bar per dataset / tokenizer.

    ``quality_df`` is the long frame of :func:`pmsid.report.tables.collect_quality`
    (``dataset, tokenizer, seed, metric, level, value``; one tokenizer per
    seed). A bar is the mean over the seeds, its error bar their sample
    standard deviation (none with one seed). Two panels share the level
    axis; both quantities lie in [0, 1], where 1 means every code is used
    (utilization) or used equally often (normalized entropy).
    """
    _require_columns(quality_df, ["dataset", "tokenizer", "metric", "level", "value"], "plot_codebook_utilization")
    q = quality_df[(quality_df["level"] >= 0) & quality_df["metric"].isin(["utilization", "normalized_entropy"])]
    if q.empty:
        raise ValueError("plot_codebook_utilization: no per-level 'utilization' or 'normalized_entropy' rows")
    q = q.assign(
        ids=q["dataset"] + " / " + q["tokenizer"],
        level=q["level"].astype(int),
    )
    hue_order = sorted(q["ids"].unique())
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4), sharey=True)
    panels = [("utilization", "Codebook utilization"), ("normalized_entropy", "Normalized entropy of code usage")]
    for ax, (metric, label) in zip(axes, panels):
        part = q[q["metric"] == metric]
        if part.empty:
            ax.text(0.5, 0.5, f"no {metric} in quality files", ha="center", va="center", transform=ax.transAxes)
        else:
            sns.barplot(data=part, x="level", y="value", hue="ids", hue_order=hue_order, ax=ax, errorbar="sd")
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=0.8)  # the ideal: every code used
        ax.set_ylim(0, 1.08)
        ax.set_title(label)
        ax.set_xlabel("codebook level (0 = coarsest)")
        ax.set_ylabel(label)
    _one_legend_outside(axes, "dataset / tokenizer")
    fig.suptitle("Semantic-ID codebook usage per level (mean ± std over seeds)")
    return _save(fig, out_png)


def collect_train_logs(train_log_paths: list[str]) -> pd.DataFrame:
    """Concatenate ``train_log.parquet`` files, adding ``dataset, model, seed`` from each path."""
    frames = []
    for path in train_log_paths:
        run = parse_run_path(path, "train", "train_log.parquet")
        df = read_table(path, TRAIN_LOG)
        if df.empty:
            raise ValueError(f"{path}: training log has no rows; rerun the training that wrote it")
        frames.append(df.assign(**run))
    if not frames:
        raise ValueError("collect_train_logs: no train_log.parquet files given")
    return pd.concat(frames, ignore_index=True)


def plot_training_curves(train_log_paths: list[str], out_png: str | os.PathLike) -> str:
    """Training loss and validation NDCG@10 against epoch, one column of panels per dataset.

    Loss is averaged over the logged steps of each epoch; validation NDCG@10
    is the last evaluation of each epoch. Colour is the model, and each seed
    is its own line. Loss axes are not shared: losses of different models
    (item-level vs token-level cross-entropy) are on different scales.
    """
    logs = collect_train_logs(train_log_paths)
    logs["valid_ndcg10"] = pd.to_numeric(logs["valid_ndcg10"]).astype("float64")
    loss = logs.groupby(["dataset", "model", "seed", "epoch"], as_index=False)["loss"].mean()
    valid = (
        logs.dropna(subset=["valid_ndcg10"])
        .sort_values("step")
        .groupby(["dataset", "model", "seed", "epoch"], as_index=False)["valid_ndcg10"]
        .last()
    )
    datasets = sorted(logs["dataset"].unique())
    hue_order = sorted(logs["model"].unique())
    fig, axes = plt.subplots(2, len(datasets), figsize=(5 * len(datasets) + 1.5, 7), squeeze=False, sharex="col")
    for col, dataset in enumerate(datasets):
        for row, (frame, y, label) in enumerate(
            [(loss, "loss", "training loss (mean per epoch)"), (valid, "valid_ndcg10", "validation NDCG@10")]
        ):
            ax = axes[row, col]
            part = frame[frame["dataset"] == dataset]
            if part.empty:
                ax.text(0.5, 0.5, "nothing logged", ha="center", va="center", transform=ax.transAxes)
            else:
                # units=seed with estimator=None draws every seed as its own line.
                sns.lineplot(
                    data=part, x="epoch", y=y, hue="model", hue_order=hue_order,
                    units="seed", estimator=None, marker="o", markersize=3, ax=ax,
                )  # fmt: skip
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
            ax.set_title(f"{dataset}: {label}")
            ax.set_xlabel("epoch")
            ax.set_ylabel(label)
    _one_legend_outside(axes.ravel(), "model\n(one line per seed)")
    fig.suptitle("Training curves")
    return _save(fig, out_png)


def plot_metric_comparison(
    runs_df: pd.DataFrame,
    out_png: str | os.PathLike,
    metrics: tuple[str, ...] = ("Recall@10", "NDCG@10"),
    split: str = "test",
) -> str:
    """Bars of test Recall@10 and NDCG@10 by dataset and model; error bars = std over seeds.

    ``runs_df`` is the long frame of :func:`pmsid.report.tables.collect_runs`.
    """
    _require_columns(runs_df, ["dataset", "model", "seed", "split", "metric", "value"], "plot_metric_comparison")
    runs = runs_df[(runs_df["split"] == split) & runs_df["metric"].isin(metrics)]
    if runs.empty:
        raise ValueError(f"plot_metric_comparison: no {split} rows for metrics {list(metrics)}")
    hue_order = sorted(runs["model"].unique())
    order = sorted(runs["dataset"].unique())
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics) + 1.5, 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        part = runs[runs["metric"] == metric]
        # errorbar="sd" is the sample std over seeds (no bar when a model has one seed).
        sns.barplot(
            data=part, x="dataset", y="value", hue="model", order=order, hue_order=hue_order,
            errorbar="sd", capsize=0.1, err_kws={"linewidth": 1}, ax=ax,
        )  # fmt: skip
        ax.set_title(f"{split} {metric}")
        ax.set_xlabel("dataset")
        ax.set_ylabel(f"{metric} (mean ± std over seeds)")
    _one_legend_outside(axes[0], "model")
    fig.suptitle(f"Model comparison on the {split} split")
    return _save(fig, out_png)
