"""PMAT's part of the report: ablation, drift-triggered updates, preference recovery, ID quality.

:func:`write_pmat_report` writes four tables (``.csv/.md/.tex/.html``) and two
figures; :func:`pmsid.report.build.build_report` calls it when it is given
PMAT's files. Where a file comes from is read off its path, which the
workflow fixes:

- ``results/pmat/{dataset}/seed{seed}/weights.parquet`` (USER_WEIGHTS)
- ``results/pmat/{dataset}/seed{seed}/preference.json``
- ``results/pmat/{dataset}/seed{seed}/replay/summary.json``
- ``results/tokenize/{dataset}/pmat_{variant}/seed{seed}/quality.parquet`` (ID_QUALITY)

The ablation reads the evaluation runs of the methods of the manifest's
``pmat`` section (:class:`pmsid.report.tables.SectionRows`) from the report's
ordinary metrics and per-user files.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from pmsid.data.contracts import ID_QUALITY, USER_WEIGHTS, read_table
from pmsid.report import figures, tables
from pmsid.report.tables import PM

log = logging.getLogger(__name__)

ABLATION_METRICS = tables.ABLATION_METRICS

# Keys of replay/summary.json; a value may be null where the key says so in the drift replay.
REPLAY_KEYS = (
    "n_users", "n_events", "n_fired", "fire_rate", "mean_drift", "mean_lambda_fired",
    "mean_churn_per_update", "mean_future_churn_per_update", "n_prototype_changes",
    "n_users_prototype_changed", "max_bound_ratio", "n_bound_violations", "window", "theta",
    "lambda_max", "sharpness", "n_codes", "n_prototypes", "n_check_items", "mean_consistency_loss",
)  # fmt: skip
# Replay settings that come from the config, so every seed of a dataset must agree on them.
REPLAY_CONFIG_KEYS = ("theta", "window", "lambda_max", "sharpness", "n_prototypes")

# Keys of preference.json: always, and when the dataset has planted preferences.
PREFERENCE_KEYS = ("available", "reason")
PREFERENCE_TRUTH_KEYS = (
    "modality", "n_users", "spearman", "spearman_p", "auc", "accuracy_median_threshold", "accuracy_half_threshold",
)  # fmt: skip

# Whole-ID metrics (level -1) every PMAT quality file must have, then the optional ones.
QUALITY_REQUIRED = ["n_prototypes", "collision_rate", "uniqueness_before_dedup", "uniqueness"]
QUALITY_OPTIONAL = [
    "personalization_spearman_rho",
    "personalization_mantel_p",
    "personalization_user_spearman_rho",
    "personalization_user_mantel_p",
]
QUALITY_PER_LEVEL = ["semantic_consistency_gap", "utilization"]

_PMAT_PATH = r"(?:^|/)results/pmat/(?P<dataset>[^/]+)/seed(?P<seed>\d+)/{filename}$"


# --------------------------------------------------------------------------- reading


def parse_pmat_path(path: str | os.PathLike, filename: str) -> dict:
    """``{dataset, seed}`` of ``results/pmat/{dataset}/seed{seed}/{filename}``."""
    m = re.search(_PMAT_PATH.format(filename=re.escape(filename)), Path(path).as_posix())
    if m is None:
        raise ValueError(
            f"{path}: cannot read dataset/seed from this path; expected results/pmat/{{dataset}}/seed{{seed}}/{filename}"
        )
    return {"dataset": m["dataset"], "seed": int(m["seed"])}


def parse_pmat_quality_path(path: str | os.PathLike) -> dict:
    """``{dataset, variant, seed}`` of ``results/tokenize/{dataset}/pmat_{variant}/seed{seed}/quality.parquet``."""
    run = tables.parse_run_path(path, "tokenize", "quality.parquet")
    if not run["model"].startswith("pmat_"):
        raise ValueError(
            f"{path}: tokenizer '{run['model']}' is not a PMAT one; expected "
            "results/tokenize/{dataset}/pmat_{variant}/seed{seed}/quality.parquet"
        )
    return {"dataset": run["dataset"], "variant": run["model"].removeprefix("pmat_"), "seed": run["seed"]}


def _require_file(path: str | os.PathLike) -> None:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file; run the PMAT stage that writes it before the report")


def read_json(path: str | os.PathLike, keys: tuple[str, ...]) -> dict:
    """Read a JSON object and fail naming the path and any of ``keys`` it lacks."""
    _require_file(path)
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(data).__name__}")
    missing = [k for k in keys if k not in data]
    if missing:
        raise ValueError(f"{path}: lacks key(s) {missing}; found {sorted(data)}; rerun the PMAT stage that wrote it")
    return data


def _one_per_run(frame: pd.DataFrame, keys: list[str], what: str) -> None:
    dup = frame.duplicated(keys)
    if dup.any():
        first = frame.loc[dup, keys].iloc[0].to_dict()
        raise ValueError(f"{what}: the same {tuple(keys)} appears twice: {first}")


def _json_frame(paths: list[str], filename: str, keys: tuple[str, ...], what: str) -> pd.DataFrame:
    rows = []
    for path in paths:
        data = read_json(path, keys)
        rows.append({**parse_pmat_path(path, filename), **data, "path": str(path)})
    if not rows:
        raise ValueError(f"{what}: no {filename} files given")
    frame = pd.DataFrame(rows)
    _one_per_run(frame, ["dataset", "seed"], what)
    return frame.sort_values(["dataset", "seed"], ignore_index=True)


def collect_replays(paths: list[str]) -> pd.DataFrame:
    """One row per (dataset, seed): every key of replay/summary.json; JSON null becomes NaN."""
    frame = _json_frame(paths, "replay/summary.json", REPLAY_KEYS, "collect_replays")
    for key in REPLAY_KEYS:
        try:
            frame[key] = pd.to_numeric(frame[key])  # JSON null (None) becomes NaN
        except (TypeError, ValueError) as err:
            raise ValueError(f"collect_replays: key '{key}' is not numeric in {list(frame['path'])}: {err}") from err
    return frame


def collect_preferences(paths: list[str]) -> pd.DataFrame:
    """One row per (dataset, seed) from preference.json; the truth keys are required where available."""
    frame = _json_frame(paths, "preference.json", PREFERENCE_KEYS, "collect_preferences")
    for row in frame.itertuples():
        if row.available:
            read_json(row.path, PREFERENCE_KEYS + PREFERENCE_TRUTH_KEYS)
    for dataset, group in frame.groupby("dataset"):
        if group["available"].astype(bool).nunique() > 1:
            raise ValueError(
                f"collect_preferences: on dataset '{dataset}' some seeds have a planted preference and some not "
                f"({dict(zip(group['seed'], group['available']))}); planted truth is a property of the dataset"
            )
    return frame


def collect_weights(paths: list[str]) -> pd.DataFrame:
    """USER_WEIGHTS files with ``dataset, seed`` from each path; every user's weights must sum to 1."""
    frames = []
    for path in paths:
        _require_file(path)
        df = read_table(path, USER_WEIGHTS)
        if df.empty:
            raise ValueError(f"{path}: no user weights; rerun the PMAT stage that wrote it")
        sums = df.groupby("user_idx")["weight"].sum()
        off = sums[~np.isclose(sums, 1.0, rtol=0.0, atol=1e-4)]
        if len(off):
            raise ValueError(
                f"{path}: the weights of {len(off)} user(s) do not sum to 1 over the modalities "
                f"(e.g. user {off.index[0]}: {off.iloc[0]:.6f}); PMAT's weights are a softmax"
            )
        frames.append(df.assign(**parse_pmat_path(path, "weights.parquet")))
    if not frames:
        raise ValueError("collect_weights: no weights.parquet files given")
    weights = pd.concat(frames, ignore_index=True)
    _one_per_run(weights, ["dataset", "seed", "user_idx", "modality"], "collect_weights")
    return weights


def collect_pmat_quality(paths: list[str]) -> pd.DataFrame:
    """ID_QUALITY files of PMAT's IDs: ``dataset, variant, seed, metric, level, value``."""
    frames = []
    for path in paths:
        _require_file(path)
        run = parse_pmat_quality_path(path)
        df = read_table(path, ID_QUALITY)
        have = set(df.loc[df["level"] == -1, "metric"])
        missing = [m for m in QUALITY_REQUIRED if m not in have]
        if missing:
            raise ValueError(f"{path}: missing whole-ID metric(s) {missing} at level -1; found {sorted(have)}")
        if df.duplicated(["metric", "level"]).any():
            dup = df.loc[df.duplicated(["metric", "level"]), ["metric", "level"]].iloc[0].to_dict()
            raise ValueError(f"{path}: (metric, level) {dup} appears twice")
        frames.append(df.assign(**run))
    if not frames:
        raise ValueError("collect_pmat_quality: no PMAT quality.parquet files given")
    return pd.concat(frames, ignore_index=True)[["dataset", "variant", "seed", "metric", "level", "value"]]


# --------------------------------------------------------------------------- tables


def ablation_table(
    runs: pd.DataFrame,
    per_user_paths: list[str],
    rows: tables.SectionRows,
    metric: str = "NDCG@10",
    alpha: float = 0.05,
) -> pd.DataFrame:
    """One row per (dataset, PMAT method): ``mean ± std`` of ABLATION_METRICS, then a paired test.

    :func:`pmsid.report.tables.ablation_table` over the section's ``rows``
    against their control (the global-fusion variant): ``runs`` is
    :func:`pmsid.report.tables.collect_runs`'s frame (bold = best of the rows
    per dataset); the control's rows, and datasets without it, have no test
    (NaN).
    """
    return tables.ablation_table(
        runs, per_user_paths, list(rows.methods), rows.control, ABLATION_METRICS, metric, alpha, what="ablation_table"
    )


def ablation_caption(
    rows: tables.SectionRows,
    exclude_history: bool,
    metric: str = "NDCG@10",
    alpha: float = 0.05,
    metrics: list[str] = tables.DEFAULT_METRICS,
) -> str:
    """Caption of the ablation table: what each row is, what the cells and tests are, then the protocol."""
    described = "; ".join(f"{m} = {rows.descriptions[m]}" for m in rows.methods)
    return (
        f"PMAT ablation on the test split. Rows: {described}. Cells: mean {PM} sample standard deviation over "
        "seeds ('seeds' gives their number); bold marks the best row per dataset and metric. "
        + tables.ablation_test_caption(rows.control, metric, alpha)
        + " "
        + tables.protocol_caption(exclude_history, metrics)
    )


def updates_table(replays: pd.DataFrame) -> pd.DataFrame:
    """One row per dataset: the drift-triggered-update replay summarized over seeds (see UPDATES_CAPTION)."""
    rows = []
    for dataset, group in replays.groupby("dataset", sort=True):
        for key in REPLAY_CONFIG_KEYS:
            if group[key].nunique(dropna=False) > 1:
                raise ValueError(
                    f"updates_table: on dataset '{dataset}' the seeds' replays differ in the setting '{key}' "
                    f"({dict(zip(group['seed'], group[key]))}); rerun them with one config"
                )
        first = group.iloc[0]
        rows.append(
            {
                "dataset": dataset,
                "seeds": len(group),
                "n_users": group["n_users"].mean(),
                "n_events": group["n_events"].mean(),
                "n_fired": group["n_fired"].mean(),
                "fire_rate": group["fire_rate"].mean(),
                "mean_lambda_fired": group["mean_lambda_fired"].mean(),
                "mean_churn_per_update": group["mean_churn_per_update"].mean(),
                "mean_future_churn_per_update": group["mean_future_churn_per_update"].mean(),
                "n_users_prototype_changed": group["n_users_prototype_changed"].mean(),
                "n_bound_violations_total": int(group["n_bound_violations"].sum()),
                "max_bound_ratio": group["max_bound_ratio"].max(),
                "mean_consistency_loss": group["mean_consistency_loss"].mean(),
                "theta": first["theta"],
                "window": int(first["window"]),
                "lambda_max": first["lambda_max"],
                "n_prototypes": int(first["n_prototypes"]),
            }
        )
    return pd.DataFrame(rows)


UPDATES_CAPTION = (
    "PMAT's drift-triggered updates, replayed over each user's sequence, per dataset. Means over seeds: "
    "n_users, n_events (drift checks), n_fired (updates), fire_rate (n_fired / n_events), "
    "n_users_prototype_changed, and the per-update means mean_lambda_fired (update strength), "
    "mean_churn_per_update (share of catalogue items whose ID changes for the user), "
    "mean_future_churn_per_update (the same over the user's items still to come) and "
    "mean_consistency_loss, each averaged over the seeds where it is defined (blank where no update fired in "
    "any seed). n_bound_violations_total is the sum over seeds of updates that broke the Theorem 2 bound, "
    "which holds by construction (a convex step with lambda <= lambda_max): an invariant checked as a test of "
    "the implementation (non-zero only through a bug), not a result; max_bound_ratio is the largest over seeds "
    "of ||h_{t+1} - h_t|| / ||h_new - h_t|| (at most lambda_max while the invariant holds). theta (drift threshold), "
    "window, lambda_max and n_prototypes are the replay's settings, equal for every seed."
)


def preference_table(prefs: pd.DataFrame) -> pd.DataFrame:
    """One row per dataset with planted preferences: recovery statistics ``mean ± std`` over seeds.

    When no dataset has planted preferences, one row says so and gives each dataset's reason.
    """
    truth = prefs[prefs["available"].astype(bool)]
    if truth.empty:
        reasons = "; ".join(f"{d}: {g['reason'].iloc[0]}" for d, g in prefs.groupby("dataset", sort=True))
        return pd.DataFrame([{"dataset": "-", "note": f"no dataset has planted modality preferences ({reasons})"}])
    rows = []
    for dataset, group in truth.groupby("dataset", sort=True):
        if group["modality"].nunique() > 1:
            raise ValueError(
                f"preference_table: on dataset '{dataset}' the seeds score different modalities "
                f"{sorted(group['modality'].unique())}"
            )
        rows.append(
            {
                "dataset": dataset,
                "modality": group["modality"].iloc[0],
                "seeds": len(group),
                "n_users": pd.to_numeric(group["n_users"]).mean(),
                "spearman": tables.mean_std(group["spearman"]),
                "spearman_p_max": pd.to_numeric(group["spearman_p"]).max(),
                "auc": tables.mean_std(group["auc"]),
                "accuracy_median_threshold": tables.mean_std(group["accuracy_median_threshold"]),
                "accuracy_half_threshold": tables.mean_std(group["accuracy_half_threshold"]),
            }
        )
    return pd.DataFrame(rows)


def preference_caption(prefs: pd.DataFrame) -> str:
    """Caption of the preference table, naming the datasets left out for lack of truth."""
    without = sorted(prefs.loc[~prefs["available"].astype(bool), "dataset"].unique())
    text = (
        "Recovery of the planted modality preference by PMAT's learned user weights, on datasets whose users "
        "have one (mean "
        f"{PM} standard deviation over seeds): Spearman correlation between each user's learned weight of "
        "'modality' and its planted weight (spearman_p_max: the largest p-value over seeds), the AUC of that "
        "weight for telling the users who choose by 'modality' from the others (0.5 = chance), and the share "
        "of users whose planted modality is recovered when the learned weight is thresholded at its median "
        "over users or at 0.5."
    )
    if without:
        text += f" Datasets without planted preferences, so not scored: {', '.join(without)}."
    return text


def pmat_quality_table(quality: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, variant): means over seeds of whole-ID and per-level ID-quality figures.

    Whole-ID columns: QUALITY_REQUIRED, then QUALITY_OPTIONAL (NaN where a
    variant lacks them, e.g. P < 3). Per-level columns ``{metric}_L{level}``
    for QUALITY_PER_LEVEL.
    """
    means = quality.groupby(["dataset", "variant", "metric", "level"], as_index=False)["value"].mean()
    whole = means[means["level"] == -1].pivot(index=["dataset", "variant"], columns="metric", values="value")
    whole = whole.reindex(columns=QUALITY_REQUIRED + QUALITY_OPTIONAL)
    per_level = means[(means["level"] >= 0) & means["metric"].isin(QUALITY_PER_LEVEL)]
    per_level = per_level.assign(column=per_level["metric"] + "_L" + per_level["level"].astype(str))
    wide = per_level.pivot(index=["dataset", "variant"], columns="column", values="value")
    levels = sorted(per_level["level"].unique())
    level_cols = [f"{m}_L{lv}" for m in QUALITY_PER_LEVEL for lv in levels if f"{m}_L{lv}" in wide.columns]
    seeds = quality.groupby(["dataset", "variant"])["seed"].nunique().rename("seeds")
    table = whole.join(seeds).join(wide[level_cols]).reset_index()
    table.columns.name = None
    table = table[["dataset", "variant", "seeds", *QUALITY_REQUIRED, *QUALITY_OPTIONAL, *level_cols]]
    return table.sort_values(["dataset", "variant"], ignore_index=True)


PMAT_QUALITY_CAPTION = (
    "Quality of PMAT's semantic IDs per dataset and variant (global: one fused ID table, P = 1; personalized: "
    "one table per preference prototype), means over seeds. n_prototypes is P; collision rate and uniqueness "
    "before and after the dedup token are means over the P tables. personalization_spearman_rho: Spearman "
    "correlation, over prototype pairs, between the distance of two tables' IDs and of their prototypes' "
    "weights, with its Mantel permutation p-value (blank for P < 3); the personalization_user_ columns are the "
    "same over user pairs (each user's IDs under its own table against the distance of the users' own weights, "
    "at most 1,000 users; blank for P = 1). Per level (L0 = coarsest): "
    "semantic_consistency_gap, the feature similarity of items sharing the ID prefix minus that of random "
    "pairs (above 0: the IDs group similar items), and codebook utilization."
)


# --------------------------------------------------------------------------- figures


def plot_weights(weights: pd.DataFrame, out_png: str | os.PathLike) -> str:
    """Histogram of learned modality weights across users, one panel per dataset and modality.

    A user's weights sum to 1, so with M modalities the panels show every
    modality but the first listed (its weight is 1 minus the others'). Users
    of all seeds are pooled; colour is the planted preference where the data
    has one.
    """
    panels = []
    for dataset, ds in weights.groupby("dataset", sort=True):
        modalities = list(dict.fromkeys(ds["modality"]))  # first-appearance order
        for modality in modalities[1:] or modalities:
            panels.append((dataset, modality, ds[ds["modality"] == modality]))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels) + 1.5, 3.8), squeeze=False)
    # One colour per planted label across all panels, grey for users without one, so the single legend fits all.
    hue_order = sorted(weights["planted_preference"].dropna().unique()) + ["none planted"]
    palette = dict(zip(hue_order, sns.color_palette(n_colors=len(hue_order) - 1) + ["grey"]))
    for ax, (dataset, modality, part) in zip(axes[0], panels):
        part = part.assign(planted=part["planted_preference"].fillna("none planted"))
        sns.histplot(
            data=part, x="weight", hue="planted", hue_order=hue_order, palette=palette,
            bins=20, binrange=(0.0, 1.0), element="step", ax=ax,
        )  # fmt: skip
        ax.set_xlim(0.0, 1.0)
        ax.set_title(f"{dataset}: weight of {modality}")
        ax.set_xlabel(f"learned weight of {modality}")
        ax.set_ylabel("users (all seeds pooled)")
    figures._one_legend_outside(axes[0], "planted preference")
    fig.suptitle("PMAT's learned modality weights per user")
    return figures._save(fig, out_png)


def plot_semantic_consistency(quality: pd.DataFrame, out_png: str | os.PathLike) -> str:
    """Semantic-consistency gap per codebook level, global vs personalized IDs, one panel per dataset."""
    gap = quality[(quality["metric"] == "semantic_consistency_gap") & (quality["level"] >= 0)]
    datasets = sorted(quality["dataset"].unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets) + 1.5, 3.8), squeeze=False)
    hue_order = sorted(quality["variant"].unique())
    for ax, dataset in zip(axes[0], datasets):
        part = gap[gap["dataset"] == dataset].assign(level=lambda d: d["level"].astype(int))
        if part.empty:
            ax.text(0.5, 0.5, "no semantic_consistency_gap", ha="center", va="center", transform=ax.transAxes)
        else:
            # errorbar="sd": the sample std over seeds (no bar with one seed).
            sns.barplot(
                data=part, x="level", y="value", hue="variant", hue_order=hue_order,
                errorbar="sd", capsize=0.1, err_kws={"linewidth": 1}, ax=ax,
            )  # fmt: skip
        ax.axhline(0.0, color="grey", linewidth=0.8)  # no better than random pairs
        ax.set_title(dataset)
        ax.set_xlabel("codebook level (0 = coarsest)")
        ax.set_ylabel("semantic-consistency gap")
    figures._one_legend_outside(axes[0], "PMAT IDs")
    fig.suptitle("Semantic consistency of PMAT's IDs: shared-prefix minus random-pair similarity")
    return figures._save(fig, out_png)


FIGURE_CAPTIONS = {
    "pmat_weights.png": (
        "PMAT's learned modality weight per user, one panel per dataset and modality (every modality but the "
        "first listed, whose weight is one minus the others'); users of all seeds pooled; colour is the "
        "planted preference where the dataset has one."
    ),
    "pmat_semantic_consistency.png": (
        "Semantic-consistency gap of PMAT's global and personalized IDs per codebook level and dataset: "
        "similarity of items sharing the ID prefix minus that of random pairs; bars are means over seeds, "
        "error bars the standard deviation over seeds."
    ),
}


# --------------------------------------------------------------------------- all of it


def requested(weights_paths, preference_paths, replay_paths, quality_paths) -> bool:
    """True when all four PMAT inputs are given, False when none is; fails on a partial set."""
    inputs = {
        "pmat_weights_paths": weights_paths,
        "pmat_preference_paths": preference_paths,
        "pmat_replay_paths": replay_paths,
        "pmat_quality_paths": quality_paths,
    }
    return tables.all_or_none(inputs, "PMAT")


def write_pmat_report(
    runs: pd.DataFrame,
    per_user_paths: list[str],
    weights_paths: list[str],
    preference_paths: list[str],
    replay_paths: list[str],
    quality_paths: list[str],
    out: Path,
    exclude_history: bool,
    rows: tables.SectionRows,
    metrics: list[str] = tables.DEFAULT_METRICS,
    significance_metric: str = "NDCG@10",
    alpha: float = 0.05,
    header: str | None = None,
) -> tuple[list[str], list[tuple[str, str, str]], dict[str, str]]:
    """Write the PMAT tables and figures into ``out``.

    ``rows`` are the section's methods from the manifest (table order, the
    control, a description each). Returns the written paths, the README
    sections ``(title, stem, caption)`` and the figure captions ``{png
    name: caption}``.
    """
    if not requested(weights_paths, preference_paths, replay_paths, quality_paths):
        raise ValueError("write_pmat_report: no PMAT inputs given")
    weights = collect_weights(list(weights_paths))
    prefs = collect_preferences(list(preference_paths))
    replays = collect_replays(list(replay_paths))
    quality = collect_pmat_quality(list(quality_paths))
    files = {"weights.parquet": weights, "preference.json": prefs, "replay/summary.json": replays}
    tables.check_same_runs(files, ["dataset", "seed"], "PMAT")

    written: list[str] = []
    sections = [
        (
            "PMAT ablation",
            "pmat_ablation",
            ablation_caption(rows, exclude_history, significance_metric, alpha, metrics),
            ablation_table(runs, per_user_paths, rows, significance_metric, alpha),
        ),
        ("PMAT drift-triggered updates", "pmat_updates", UPDATES_CAPTION, updates_table(replays)),
        ("PMAT preference recovery", "pmat_preference", preference_caption(prefs), preference_table(prefs)),
        ("PMAT semantic-ID quality", "pmat_id_quality", PMAT_QUALITY_CAPTION, pmat_quality_table(quality)),
    ]
    for _title, stem, caption, table in sections:
        written += tables.write_table_formats(table, out / stem, caption, header)
    written.append(plot_weights(weights, out / "pmat_weights.png"))
    written.append(plot_semantic_consistency(quality, out / "pmat_semantic_consistency.png"))
    return written, [s[:3] for s in sections], dict(FIGURE_CAPTIONS)
