"""MCRL's part of the report: ablation, ID-space measures, training cost, loss curves, t-SNE.

:func:`write_mcrl_report` writes three tables (``.csv/.md/.tex/.html``) and two
figures; :func:`pmsid.report.build.build_report` calls it when it is given
MCRL's files. Its rows are the methods of the manifest's ``mcrl`` section
(:class:`pmsid.report.tables.SectionRows`: their order, the loss terms each
trains with, and the control, the stage-1 generator fine-tuned for the same
epochs with no MCRL loss, which every other ablation is compared with). A
config may run any subset of the ablations. Where a file comes from is read
off its path, which the workflow fixes:

- ``results/evaluate/{dataset}/mcrl_{ablation}/seed{seed}/metrics.parquet`` and
  ``per_user.parquet`` (METRICS, PER_USER), kept apart from the main
  comparison's runs so that the main table stays as it is
- ``results/train/{dataset}/mcrl_{ablation}/seed{seed}/extras/loss_components.parquet``
  (one row per optimizer step: ``epoch, step, total, id, user, intra, inter, seconds``)
- ``results/mcrl/{dataset}/mcrl_{ablation}/seed{seed}/id_space.json`` (ID_SPACE_KEYS)
- ``results/mcrl/{dataset}/mcrl_{ablation}/seed{seed}/tsne.parquet``
  (``item_idx, x, y`` and ``label_{modality}`` per modality)
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import seaborn as sns

from pmsid.report import figures, tables
from pmsid.report.tables import PM

log = logging.getLogger(__name__)

# loss_components.parquet: the columns every file must have; NaN marks an inactive loss or an untimed step.
COMPONENT_COLUMNS = ["epoch", "step", "total", "id", "user", "intra", "inter", "seconds"]
# The loss curves' panels, in order, with their titles.
COMPONENT_TITLES = {
    "id": "L_ID (generator loss)",
    "user": "L_user",
    "intra": "L_intra",
    "inter": "L_inter",
    "total": "total (weighted sum)",
}
# Steps in the rolling mean of the loss curves: per-step losses are too noisy to read raw.
SMOOTH_STEPS = 25

ID_SPACE_KEYS = (
    "n_items", "n_tables", "modalities", "alignment", "mean_pair_distance", "alignment_ratio", "uniformity",
)  # fmt: skip
TSNE_COLUMNS = ["item_idx", "x", "y"]

_INPUTS = ("mcrl_metrics_paths", "mcrl_per_user_paths")


# --------------------------------------------------------------------------- reading


def parse_mcrl_path(path: str | os.PathLike, stage: str, filename: str) -> dict:
    """``{dataset, model, seed}`` of ``results/{stage}/{dataset}/{method}/seed{seed}/{filename}``.

    Fails naming the path when it has another shape.
    """
    return tables.parse_run_path(path, stage, filename)


def _require_file(path: str | os.PathLike) -> None:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file; run the MCRL stage that writes it before the report")


def _one_per_run(frame: pd.DataFrame, keys: list[str], what: str) -> None:
    dup = frame.duplicated(keys)
    if dup.any():
        first = frame.loc[dup, keys].iloc[0].to_dict()
        raise ValueError(f"{what}: the same {tuple(keys)} appears twice: {first}")


def collect_components(paths: list[str]) -> pd.DataFrame:
    """Every loss_components.parquet in one frame: ``dataset, model, seed`` and COMPONENT_COLUMNS.

    Fails naming the file when it lacks a column, has no rows, a
    non-numeric component or a step twice.
    """
    frames = []
    for path in paths:
        _require_file(path)
        run = parse_mcrl_path(path, "train", "extras/loss_components.parquet")
        df = pd.read_parquet(path)
        missing = [c for c in COMPONENT_COLUMNS if c not in df.columns]
        if missing:
            raise ValueError(
                f"{path}: lacks column(s) {missing}; found {list(df.columns)}; MCRL's training writes "
                f"{COMPONENT_COLUMNS}, rerun it"
            )
        if df.empty:
            raise ValueError(f"{path}: no steps logged; rerun the MCRL training that wrote it")
        df = df[COMPONENT_COLUMNS].copy()
        for column in COMPONENT_COLUMNS:
            try:
                df[column] = pd.to_numeric(df[column]).astype("float64")
            except (TypeError, ValueError) as err:
                raise ValueError(f"{path}: column '{column}' is not numeric: {err}") from err
        if df["step"].duplicated().any():
            step = int(df.loc[df["step"].duplicated(), "step"].iloc[0])
            raise ValueError(f"{path}: step {step} is logged twice; one row per optimizer step is expected")
        frames.append(df.assign(**run))
    if not frames:
        raise ValueError("collect_components: no loss_components.parquet files given")
    components = pd.concat(frames, ignore_index=True)
    return components[["dataset", "model", "seed", *COMPONENT_COLUMNS]].sort_values(
        ["dataset", "model", "seed", "step"], ignore_index=True
    )


def _number(path, key: str, value, allow_null: bool = False) -> float:
    """A JSON number as float (null as NaN where allowed); fails naming the file and key otherwise."""
    if value is None and allow_null:
        return float("nan")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{path}: key '{key}' should be a number, found {value!r}")
    return float(value)


def read_id_space(path: str | os.PathLike) -> dict:
    """One id_space.json: every ID_SPACE_KEYS present, ``alignment_ratio`` given for each of ``modalities``."""
    _require_file(path)
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(data).__name__}")
    missing = [k for k in ID_SPACE_KEYS if k not in data]
    if missing:
        raise ValueError(f"{path}: lacks key(s) {missing}; found {sorted(data)}; rerun the MCRL stage that wrote it")
    modalities = data["modalities"]
    if not isinstance(modalities, list) or not modalities or not all(isinstance(m, str) for m in modalities):
        raise ValueError(f"{path}: key 'modalities' should be a non-empty list of names, found {modalities!r}")
    ratios = data["alignment_ratio"]
    if not isinstance(ratios, dict):
        raise ValueError(f"{path}: key 'alignment_ratio' should map modality to number, found {ratios!r}")
    absent = [m for m in modalities if m not in ratios]
    if absent:
        raise ValueError(
            f"{path}: key 'alignment_ratio' lacks modality(ies) {absent} listed in 'modalities'; found {sorted(ratios)}"
        )
    return {
        "modalities": tuple(modalities),
        # null where a modality's ratio is undefined (e.g. every pseudo-label a single item)
        "alignment_ratio": {m: _number(path, f"alignment_ratio.{m}", ratios[m], allow_null=True) for m in modalities},
        "uniformity": _number(path, "uniformity", data["uniformity"]),
        "mean_pair_distance": _number(path, "mean_pair_distance", data["mean_pair_distance"]),
        "n_items": int(_number(path, "n_items", data["n_items"])),
        "n_tables": int(_number(path, "n_tables", data["n_tables"])),
    }


def collect_id_space(paths: list[str]) -> pd.DataFrame:
    """One row per (dataset, model, seed) from id_space.json; all runs of a dataset share its modalities."""
    rows = []
    for path in paths:
        run = parse_mcrl_path(path, "mcrl", "id_space.json")
        rows.append({**run, **read_id_space(path), "path": str(path)})
    if not rows:
        raise ValueError("collect_id_space: no id_space.json files given")
    frame = pd.DataFrame(rows)
    _one_per_run(frame, ["dataset", "model", "seed"], "collect_id_space")
    for dataset, group in frame.groupby("dataset"):
        if group["modalities"].nunique() > 1:
            found = {p: list(m) for p, m in zip(group["path"], group["modalities"])}
            raise ValueError(
                f"collect_id_space: on dataset '{dataset}' the runs list different modalities {found}; "
                "the pseudo-labels are the dataset's, so every run must share them"
            )
    return frame.sort_values(["dataset", "model", "seed"], ignore_index=True)


# --------------------------------------------------------------------------- tables


def ablation_table(
    runs: pd.DataFrame,
    per_user_paths: list[str],
    rows: tables.SectionRows,
    metric: str = "NDCG@10",
    alpha: float = 0.05,
) -> pd.DataFrame:
    """One row per (dataset, MCRL ablation): ``mean ± std`` of ABLATION_METRICS, then a paired test vs mcrl_none.

    :func:`pmsid.report.tables.ablation_table` over the section's ``rows`` with
    ``mcrl_none`` as reference, plus a ``losses`` column naming each
    ablation's MCRL losses. Datasets without ``mcrl_none`` have no tests (NaN).
    """
    for path in per_user_paths:
        parse_mcrl_path(path, "evaluate", "per_user.parquet")
    table = tables.ablation_table(
        runs, per_user_paths, list(rows.methods), rows.control, tables.ABLATION_METRICS, metric, alpha,
        what="mcrl_ablation", inputs=_INPUTS,
    )  # fmt: skip
    table.insert(2, "losses", table["model"].map(rows.losses_label))
    return table


def ablation_caption(
    rows: tables.SectionRows,
    exclude_history: bool,
    metric: str = "NDCG@10",
    alpha: float = 0.05,
    metrics: list[str] = tables.DEFAULT_METRICS,
) -> str:
    """Caption of the MCRL ablation table: rows, cells, tests, then the protocol."""
    return (
        "MCRL ablation on the test split. Each row mcrl_{ablation} fine-tunes the stage-1 generator under L_ID plus "
        f"the MCRL losses in 'losses'; {rows.control}, the control, fine-tunes it for the same epochs with L_ID alone. "
        f"Cells: mean {PM} sample standard deviation over seeds ('seeds' gives their number); bold marks the best "
        "ablation per dataset and metric. "
        + tables.ablation_test_caption(rows.control, metric, alpha)
        + f" Datasets without {rows.control} have no tests (blank). "
        + tables.protocol_caption(exclude_history, metrics)
    )


def id_space_table(id_space: pd.DataFrame, rows: tables.SectionRows) -> pd.DataFrame:
    """One row per (dataset, ablation): ``mean ± std`` over seeds of each alignment ratio, and of uniformity.

    One column ``alignment_ratio_{modality}`` per modality of any dataset
    (first-appearance order over the sorted datasets); ``-`` where the
    dataset lacks that modality.
    """
    modalities = list(dict.fromkeys(m for ms in id_space.sort_values("dataset")["modalities"] for m in ms))
    out = []
    for (dataset, model), group in id_space.groupby(["dataset", "model"], sort=False):
        row = {"dataset": dataset, "model": model, "losses": rows.losses_label(model), "seeds": group["seed"].nunique()}
        for modality in modalities:
            # absent modality -> no values -> "-"
            row[f"alignment_ratio_{modality}"] = tables.mean_std([r.get(modality) for r in group["alignment_ratio"]])
        row["uniformity"] = tables.mean_std(group["uniformity"])
        out.append(row)
    return rows.order(pd.DataFrame(out))


ID_SPACE_CAPTION = (
    "ID space after MCRL per dataset and ablation, mean "
    f"{PM} sample standard deviation over seeds ('seeds'). alignment_ratio_{{modality}}: mean squared distance "
    "between the L2-normalized ID representations of items sharing that modality's k-means pseudo-label, "
    "divided by the same over all item pairs; below 1, items of one pseudo-label lie closer than random pairs "
    "(lower = tighter); '-' where the dataset has no such modality. uniformity: log E exp(-2 ||z_i - z_j||^2) "
    "over item pairs (lower = more uniform)."
)


def cost_table(components: pd.DataFrame, rows: tables.SectionRows) -> pd.DataFrame:
    """One row per (dataset, ablation): median seconds per optimizer step and its ratio to mcrl_none's.

    The median pools every timed step (finite ``seconds``) of every seed;
    the untimed steps (NaN: the last step of each epoch, where validation
    runs) are left out. ``ratio_to_none`` is NaN on a dataset without
    ``mcrl_none`` and where an ablation has no timed step.
    """
    out = []
    for (dataset, model), group in components.groupby(["dataset", "model"], sort=False):
        seconds = group["seconds"][np.isfinite(group["seconds"])]
        if seconds.empty:
            log.warning("mcrl cost: %s on %s has no timed step; its median is left blank", model, dataset)
        out.append(
            {
                "dataset": dataset,
                "model": model,
                "losses": rows.losses_label(model),
                "seeds": group["seed"].nunique(),
                "timed_steps": len(seconds),
                "median_seconds_per_step": float(seconds.median()) if len(seconds) else np.nan,
            }
        )
    table = rows.order(pd.DataFrame(out))
    control = table[table["model"] == rows.control].set_index("dataset")["median_seconds_per_step"]
    table["ratio_to_none"] = table["median_seconds_per_step"] / table["dataset"].map(control).astype("float64")
    return table


def cost_caption(rows: tables.SectionRows) -> str:
    """Caption of the cost table (names the control)."""
    control = rows.control
    return (
        "Cost of MCRL per training step, per dataset and ablation: median wall-clock seconds per optimizer step, "
        "pooled over every timed step of every seed (timed_steps; the last step of each epoch, where validation "
        f"runs, is not timed), and ratio_to_none = that median / {control}'s median on the same dataset (blank "
        f"without {control}): the cost per training step of MCRL relative to the control, measured in the same run. "
        "Every row times the steps of the same fine-tuning stage (stage 2, the stage-1 generator fine-tuned for the "
        "same epochs), on the machine that ran the workflow. The ablations are separate jobs, run at different "
        "times, so changes in the machine's load between jobs enter the ratio; `make bench-mcrl` measures the same "
        "ratio with the ablations' steps interleaved on the same batches."
    )


# --------------------------------------------------------------------------- figures


def loss_curves_frame(components: pd.DataFrame, window: int = SMOOTH_STEPS) -> pd.DataFrame:
    """The loss curves as drawn: ``dataset, model, component, step, value``.

    ``value`` is the component's mean over seeds at each step, then a
    rolling mean over ``window`` consecutive steps where the component was
    active (inactive steps, NaN, are dropped first, so an alternating
    schedule's curve is not broken up); ``min_periods=1`` so the curve
    starts at the first step.
    """
    means = components.groupby(["dataset", "model", "step"])[list(COMPONENT_TITLES)].mean()  # NaN if no seed active
    frames = []
    for (dataset, model), part in means.groupby(level=["dataset", "model"], sort=False):
        part = part.droplevel(["dataset", "model"]).sort_index()
        for component in COMPONENT_TITLES:
            active = part[component].dropna()
            if active.empty:
                continue
            smooth = active.rolling(window, min_periods=1).mean()
            frames.append(
                pd.DataFrame(
                    {"dataset": dataset, "model": model, "component": component, "step": smooth.index, "value": smooth}
                )
            )
    return pd.concat(frames, ignore_index=True)


def plot_loss_curves(
    components: pd.DataFrame, out_png: str | os.PathLike, rows: tables.SectionRows, window: int = SMOOTH_STEPS
) -> str:
    """Per-step loss components against step: a row of panels per dataset, one panel per component.

    One line per ablation, the mean over seeds smoothed by
    :func:`loss_curves_frame`; an ablation without a component (not in its
    losses) has no line in that panel. Loss axes are not shared: the
    components are on different scales.
    """
    curves = loss_curves_frame(components, window)
    datasets = sorted(components["dataset"].unique())
    # The control in black, each ablation its own colour, the same in every panel.
    others = [m for m in rows.methods if m != rows.control]
    palette = dict(zip(others, sns.color_palette("tab10", n_colors=max(len(others), 1))))
    palette[rows.control] = "black"
    ncols = len(COMPONENT_TITLES)
    fig, axes = plt.subplots(
        len(datasets), ncols, figsize=(3.6 * ncols + 2.0, 3.0 * len(datasets) + 0.6), squeeze=False, sharex="row"
    )
    handles = {}
    for row, dataset in enumerate(datasets):
        for col, (component, title) in enumerate(COMPONENT_TITLES.items()):
            ax = axes[row, col]
            part = curves[(curves["dataset"] == dataset) & (curves["component"] == component)]
            for model in rows.methods:
                line = part[part["model"] == model]
                if not line.empty:
                    (handles[model],) = ax.plot(line["step"], line["value"], color=palette[model], linewidth=1.2)
            if part.empty:
                ax.text(0.5, 0.5, "not trained by any ablation", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(f"{dataset}: {title}", fontsize="medium")
            ax.set_xlabel("optimizer step")
            ax.set_ylabel(f"loss (rolling mean, {window} steps)" if col == 0 else "")
    shown = [m for m in rows.methods if m in handles]
    axes[0, -1].legend(
        [handles[m] for m in shown], [f"{m} ({rows.losses_label(m)})" for m in shown], title="ablation (mean over seeds)",
        loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small", frameon=False,
    )  # fmt: skip
    fig.suptitle("MCRL loss components per training step")
    return figures._save(fig, out_png)


def tsne_columns(present: list[str], rows: tables.SectionRows) -> list[str]:
    """The ablations the t-SNE figure shows for one dataset: the first and last run, in the rows' order.

    With every ablation run these are mcrl_none (the control) and mcrl_all
    (all three losses); a subset falls back to its first and last.
    """
    ordered = [m for m in rows.methods if m in set(present)]
    if not ordered:
        raise ValueError(f"tsne_columns: none of {list(rows.methods)} in {sorted(present)}")
    return list(dict.fromkeys([ordered[0], ordered[-1]]))


def _label_colours(labels: np.ndarray) -> np.ndarray:
    """One categorical colour per pseudo-label (tab10 up to 10 labels, evenly spread hues beyond)."""
    values = np.unique(labels)
    palette = np.asarray(sns.color_palette("tab10" if len(values) <= 10 else "husl", n_colors=len(values)))
    return palette[np.searchsorted(values, labels)]


def collect_tsne(paths: list[str], id_space: pd.DataFrame) -> pd.DataFrame:
    """The t-SNE runs ``dataset, model, seed, path``, each file checked for its columns.

    Every tsne.parquet needs ``item_idx, x, y`` and ``label_{modality}`` for
    each modality of its run's id_space.json, which must be given too. Only
    the schema is read here; the figure reads the points of the runs it draws.
    """
    by_run = id_space.set_index(["dataset", "model", "seed"])
    rows = []
    for path in paths:
        _require_file(path)
        run = parse_mcrl_path(path, "mcrl", "tsne.parquet")
        key = (run["dataset"], run["model"], run["seed"])
        if key not in by_run.index:
            raise ValueError(f"{path}: no id_space.json for this run {key}; pass it in mcrl_id_space_paths")
        expected = TSNE_COLUMNS + [f"label_{m}" for m in by_run.loc[key, "modalities"]]
        names = pq.read_schema(path).names
        missing = [c for c in expected if c not in names]
        if missing:
            raise ValueError(f"{path}: lacks column(s) {missing}; found {names}; expected {expected}")
        rows.append({**run, "path": str(path)})
    if not rows:
        raise ValueError("collect_tsne: no tsne.parquet files given")
    runs = pd.DataFrame(rows)
    _one_per_run(runs, ["dataset", "model", "seed"], "collect_tsne")
    return runs


def plot_tsne(id_space: pd.DataFrame, runs: pd.DataFrame, out_png: str | os.PathLike, rows: tables.SectionRows) -> str:
    """t-SNE of the ID representations: a row per dataset, a panel per ablation of :func:`tsne_columns`.

    ``runs`` is :func:`collect_tsne`'s frame. Each panel is the lowest seed
    with a t-SNE; points are items coloured by the k-means pseudo-label of
    the dataset's first modality, and the title gives that modality's
    alignment ratio from the same run's id_space.json.
    """
    by_run = id_space.set_index(["dataset", "model", "seed"])
    datasets = sorted(runs["dataset"].unique())
    columns = {d: tsne_columns(list(runs.loc[runs["dataset"] == d, "model"]), rows) for d in datasets}
    ncols = max(len(c) for c in columns.values())
    fig, axes = plt.subplots(len(datasets), ncols, figsize=(4.6 * ncols, 4.4 * len(datasets)), squeeze=False)
    for row, dataset in enumerate(datasets):
        for col in range(ncols):
            ax = axes[row, col]
            if col >= len(columns[dataset]):
                ax.axis("off")
                continue
            model = columns[dataset][col]
            mine = runs[(runs["dataset"] == dataset) & (runs["model"] == model)]
            first = mine.loc[mine["seed"].idxmin()]
            measures = by_run.loc[(dataset, model, first["seed"])]
            modality = measures["modalities"][0]
            points = pd.read_parquet(first["path"], columns=["x", "y", f"label_{modality}"])
            ax.scatter(
                points["x"], points["y"], c=_label_colours(points[f"label_{modality}"].to_numpy()),
                s=6, linewidths=0, alpha=0.8, rasterized=True,
            )  # fmt: skip
            ratio = measures["alignment_ratio"][modality]
            ax.set_title(
                f"{dataset}: {model} ({rows.losses_label(model)}), seed {first['seed']}\n"
                f"colour: {modality} pseudo-label; alignment ratio {ratio:.3f}",
                fontsize="medium",
            )
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel("t-SNE 1")
            ax.set_ylabel("t-SNE 2")
    fig.suptitle("ID representations after MCRL (t-SNE)")
    return figures._save(fig, out_png)


def figure_captions(rows: tables.SectionRows) -> dict[str, str]:
    """Captions of the MCRL figures (they name the control)."""
    return {
        "mcrl_loss_curves.png": (
            "MCRL's loss components per optimizer step of the fine-tuning stage, one row of panels per dataset and "
            "one panel per component (L_ID, the generator loss; L_user, L_intra, L_inter; the weighted total), one "
            "line per ablation: the mean over seeds at each step, smoothed by a rolling mean over "
            f"{SMOOTH_STEPS} consecutive steps where the component was active. An ablation that does not train a "
            "component has no line in its panel."
        ),
        "mcrl_tsne.png": (
            "t-SNE of the items' ID representations, one row per dataset: the first and the last ablation in table "
            f"order ({rows.control}, the control, and the one with all three MCRL losses when all run); lowest seed. "
            "Points are coloured by the k-means pseudo-label of the dataset's first modality; each title gives that "
            "modality's alignment ratio (below 1: items of one pseudo-label closer than random pairs)."
        ),
    }


# --------------------------------------------------------------------------- all of it


def requested(metrics_paths, per_user_paths, components_paths, id_space_paths, tsne_paths) -> bool:
    """True when all five MCRL inputs are given, False when none is; fails on a partial set."""
    inputs = {
        "mcrl_metrics_paths": metrics_paths,
        "mcrl_per_user_paths": per_user_paths,
        "mcrl_components_paths": components_paths,
        "mcrl_id_space_paths": id_space_paths,
        "mcrl_tsne_paths": tsne_paths,
    }
    return tables.all_or_none(inputs, "MCRL")


def write_mcrl_report(
    runs: pd.DataFrame,
    per_user_paths: list[str],
    components_paths: list[str],
    id_space_paths: list[str],
    tsne_paths: list[str],
    out: Path,
    exclude_history: bool,
    rows: tables.SectionRows,
    metrics: list[str] = tables.DEFAULT_METRICS,
    significance_metric: str = "NDCG@10",
    alpha: float = 0.05,
    header: str | None = None,
) -> tuple[list[str], list[tuple[str, str, str]], dict[str, str]]:
    """Write the MCRL tables and figures into ``out``.

    ``runs`` is :func:`pmsid.report.tables.collect_runs` of the MCRL runs'
    metrics.parquet only; ``rows`` the section's methods from the manifest. Writes the tables ``mcrl_ablation``,
    ``mcrl_id_space`` and ``mcrl_cost`` and the figures
    ``mcrl_loss_curves.png`` and ``mcrl_tsne.png``. Returns the written
    paths, the README sections ``(title, stem, caption)`` and the figure
    captions ``{png name: caption}``.
    """
    if runs.empty:
        raise ValueError("write_mcrl_report: no MCRL evaluation runs given (mcrl_metrics_paths)")
    others = sorted(set(runs["model"]) - set(rows.methods))
    if others:
        raise ValueError(
            f"write_mcrl_report: model(s) {others} are not rows of the MCRL section {list(rows.methods)}; "
            "mcrl_metrics_paths takes only the section's runs"
        )
    if rows.control is None:
        raise ValueError("write_mcrl_report: the MCRL section has no control row (role 'control')")
    # runs stands in for mcrl_metrics_paths, already read (and non-empty).
    if not requested(["runs"], per_user_paths, components_paths, id_space_paths, tsne_paths):
        raise ValueError("write_mcrl_report: no MCRL inputs given")
    # Everything is read and checked before anything is written.
    components = collect_components(list(components_paths))
    id_space = collect_id_space(list(id_space_paths))
    tsne = collect_tsne(list(tsne_paths), id_space)
    files = {"metrics.parquet": runs, "loss_components.parquet": components, "id_space.json": id_space}
    tables.check_same_runs(files, ["dataset", "model", "seed"], "MCRL")

    written: list[str] = []
    sections = [
        (
            "MCRL ablation",
            "mcrl_ablation",
            ablation_caption(rows, exclude_history, significance_metric, alpha, metrics),
            ablation_table(runs, list(per_user_paths), rows, significance_metric, alpha),
        ),
        ("MCRL ID space", "mcrl_id_space", ID_SPACE_CAPTION, id_space_table(id_space, rows)),
        ("MCRL cost per training step", "mcrl_cost", cost_caption(rows), cost_table(components, rows)),
    ]
    for _title, stem, caption, table in sections:
        written += tables.write_table_formats(table, out / stem, caption, header)
    written.append(plot_loss_curves(components, out / "mcrl_loss_curves.png", rows))
    written.append(plot_tsne(id_space, tsne, out / "mcrl_tsne.png", rows))
    return written, [s[:3] for s in sections], figure_captions(rows)
