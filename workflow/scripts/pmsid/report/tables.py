"""Report tables: the main comparison, significance tests, ID quality.

Every table is built from the Parquet files of earlier stages (checked
against their contracts on read) and written three ways by
:func:`write_table_formats`: CSV for machines, Markdown for the README,
LaTeX for the thesis.

Where a run comes from is read off its path, which the workflow fixes
``results/evaluate/{dataset}/{model}/seed{seed}/metrics.parquet``
and ``results/tokenize/{dataset}/{tokenizer}/quality.parquet``. A path of
another shape fails loudly rather than being guessed at.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from pmsid.data.contracts import ID_QUALITY, METRICS, PER_USER, read_metadata, read_table
from pmsid.evaluate.metrics import user_metrics

log = logging.getLogger(__name__)

DEFAULT_METRICS = ["Recall@5", "NDCG@5", "Recall@10", "NDCG@10", "Recall@20", "NDCG@20", "MRR@20"]

# Metrics where a smaller value is the better one; everything else is "higher is better".
LOWER_IS_BETTER = {"invalid_id_rate"}

# Whole-ID metrics of a tokenizer (level -1 in quality.parquet), in table order.
WHOLE_ID_METRICS = ["collision_rate", "uniqueness_before_dedup", "uniqueness", "max_dedup_index"]

# Number format of the main table: four decimals is the field's convention
# (docs/METHOD.md section 8) and enough to tell models apart on these datasets.
DECIMALS = 4

PM = "±"

_RUN_PATH = r"(?:^|/)results/{stage}/(?P<dataset>[^/]+)/(?P<model>[^/]+)/seed(?P<seed>\d+)/{filename}$"
_TOKENIZER_PATH = re.compile(r"(?:^|/)results/tokenize/(?P<dataset>[^/]+)/(?P<tokenizer>[^/]+)/quality\.parquet$")
_METRIC_NAME = re.compile(r"^(?P<name>Recall|NDCG|MRR)@(?P<k>\d+)$")


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class SectionRows:
    """The methods of one report section, as the manifest describes them.

    ``methods`` in table order (the registry's), ``control`` the one every
    other row is tested against (None when the section has none),
    ``descriptions`` a clause per method for captions, ``losses`` the loss
    terms a method trains with, where its options name them (MCRL).
    """

    methods: tuple[str, ...]
    control: str | None = None
    descriptions: dict = field(default_factory=dict)
    losses: dict = field(default_factory=dict)

    @classmethod
    def from_manifest(cls, manifest: list[dict], section: str) -> SectionRows:
        """The rows of ``section`` from the entries that carry a ``method``."""
        entries = [e for e in manifest if "method" in e and section in e.get("sections", ())]
        methods = tuple(dict.fromkeys(e["method"] for e in entries))
        first = {m: next(e for e in entries if e["method"] == m) for m in methods}
        controls = [m for m in methods if first[m].get("role") == "control"]
        if len(controls) > 1:
            raise ValueError(f"report section {section}: more than one control {controls}; the manifest must name one")
        return cls(
            methods=methods,
            control=controls[0] if controls else None,
            descriptions={m: first[m].get("description") or first[m].get("label", m) for m in methods},
            losses={m: tuple(first[m].get("options", {}).get("losses", ())) for m in methods},
        )

    def losses_label(self, method: str) -> str:
        """The loss terms of ``method``, e.g. ``L_user + L_intra``; ``none`` for none."""
        return " + ".join(f"L_{term}" for term in self.losses.get(method, ())) or "none"

    def order(self, frame: pd.DataFrame, column: str = "model") -> pd.DataFrame:
        """``frame`` sorted by dataset, then by the rows' method order (not alphabetically)."""
        rank = {m: i for i, m in enumerate(self.methods)}
        return frame.sort_values(
            ["dataset", column], key=lambda c: c.map(rank) if c.name == column else c, ignore_index=True
        )


# --------------------------------------------------------------------------- paths


def parse_run_path(path: str | os.PathLike, stage: str, filename: str) -> dict:
    """``{dataset, model, seed}`` of ``results/{stage}/{dataset}/{model}/seed{seed}/{filename}``.

    Raises ``ValueError`` naming the path when it does not have that shape.
    """
    posix = Path(path).as_posix()
    m = re.search(_RUN_PATH.format(stage=re.escape(stage), filename=re.escape(filename)), posix)
    if m is None:
        raise ValueError(
            f"{path}: cannot read dataset/model/seed from this path; expected "
            f"results/{stage}/{{dataset}}/{{model}}/seed{{seed}}/{filename}"
        )
    return {"dataset": m["dataset"], "model": m["model"], "seed": int(m["seed"])}


def parse_tokenizer_path(path: str | os.PathLike) -> dict:
    """``{dataset, tokenizer}`` of ``results/tokenize/{dataset}/{tokenizer}/quality.parquet``."""
    m = _TOKENIZER_PATH.search(Path(path).as_posix())
    if m is None:
        raise ValueError(
            f"{path}: cannot read dataset/tokenizer from this path; expected "
            "results/tokenize/{dataset}/{tokenizer}/quality.parquet"
        )
    return {"dataset": m["dataset"], "tokenizer": m["tokenizer"]}


def _require_paths(paths: list, what: str) -> list:
    if isinstance(paths, (str, os.PathLike)):
        # A single string would otherwise be iterated character by character.
        raise TypeError(f"{what}: expected a list of paths, got the single path {paths!r}")
    paths = list(paths)
    if not paths:
        raise ValueError(f"{what}: no input files given; the report needs at least one")
    return paths


# --------------------------------------------------------------------------- main comparison


def collect_runs(paths: list[str], exclude_history: bool | None = None) -> pd.DataFrame:
    """Concatenate ``metrics.parquet`` files into one long frame.

    Columns: ``dataset, model, seed, split, metric, value``. ``dataset``,
    ``model`` and ``seed`` come from each file's path. When
    ``exclude_history`` is given and a file's metadata records an
    ``exclude_history`` flag that differs, this fails: a table must never mix
    protocols (docs/METHOD.md section 2).
    """
    frames = []
    for path in _require_paths(paths, "collect_runs"):
        run = parse_run_path(path, "evaluate", "metrics.parquet")
        df = read_table(path, METRICS)
        if df.empty:
            raise ValueError(f"{path}: metrics file has no rows; rerun the evaluation that wrote it")
        if exclude_history is not None:
            recorded = read_metadata(path).get("exclude_history")
            if recorded is not None and bool(recorded) != bool(exclude_history):
                raise ValueError(
                    f"{path}: evaluated with exclude_history={recorded} but the report is built with "
                    f"exclude_history={exclude_history}; re-evaluate so every model uses one protocol"
                )
        frames.append(df.assign(**run))
    runs = pd.concat(frames, ignore_index=True)
    log.info(
        "read %d metrics files: %d datasets, %d models", len(frames), runs["dataset"].nunique(), runs["model"].nunique()
    )
    dup = runs.duplicated(["dataset", "model", "seed", "split", "metric"])
    if dup.any():
        first = runs.loc[dup, ["dataset", "model", "seed", "split", "metric"]].iloc[0].to_dict()
        raise ValueError(f"collect_runs: the same (dataset, model, seed, split, metric) appears twice: {first}")
    return runs[["dataset", "model", "seed", "split", "metric", "value"]]


def max_k(metrics: list[str]) -> int:
    """The largest K among ranking metric names such as ``NDCG@10``."""
    ks = [int(m["k"]) for m in map(_METRIC_NAME.match, metrics) if m]
    if not ks:
        raise ValueError(f"no ranking metric of the form Recall@K / NDCG@K / MRR@K in {metrics}")
    return max(ks)


def protocol_caption(exclude_history: bool, metrics: list[str] = DEFAULT_METRICS, split: str = "test") -> str:
    """The evaluation protocol in one sentence, for a table's caption and header."""
    history = (
        "items already in the user's history are excluded from the ranking"
        if exclude_history
        else "items already in the user's history are not excluded from the ranking"
    )
    return (
        f"Protocol: leave-one-out ({split} split: "
        f"{'last' if split == 'test' else 'second-to-last'} item per user), full ranking over the whole "
        f"catalogue (no negative sampling), {history}, MRR truncated at K = {max_k(metrics)}."
    )


def main_caption(exclude_history: bool, metrics: list[str] = DEFAULT_METRICS, split: str = "test") -> str:
    """Caption of the main comparison table: what the cells are, then the protocol."""
    return (
        f"Main comparison on the {split} split: mean {PM} sample standard deviation over seeds "
        f"(std shown when a model has more than one seed; 'seeds' gives their number); "
        f"bold marks the best model per dataset and metric. " + protocol_caption(exclude_history, metrics, split)
    )


def _check_same_users(runs: pd.DataFrame, split: str) -> None:
    """Fail when models of one dataset were evaluated on different numbers of users."""
    n = runs[(runs["split"] == split) & (runs["metric"] == "n_users")]
    for dataset, group in n.groupby("dataset"):
        if group["value"].nunique() > 1:
            counts = group.groupby("model")["value"].unique().map(list).to_dict()
            raise ValueError(
                f"main_table: on dataset '{dataset}' the models were evaluated on different numbers of "
                f"{split} users {counts}; they must share one protocol and one split"
            )


def main_table(
    runs_df: pd.DataFrame,
    split: str = "test",
    metrics: list[str] = DEFAULT_METRICS,
) -> pd.DataFrame:
    """One row per (dataset, model); each metric cell reads ``mean ± std`` over seeds.

    The std (sample std, ``ddof=1``) is shown only when there is more than one
    seed; the ``seeds`` column says how many. The best model per dataset and
    metric is wrapped in ``**...**`` (Markdown bold, which
    :func:`write_table_formats` turns into ``\\textbf`` for LaTeX); ties are all
    marked. A metric a model lacks shows as ``-``.
    """
    metrics = list(metrics)
    runs = runs_df[runs_df["split"] == split]
    if runs.empty:
        raise ValueError(f"main_table: no rows with split '{split}'; found splits {sorted(runs_df['split'].unique())}")
    _check_same_users(runs_df, split)
    unknown = sorted(set(metrics) - set(runs["metric"]))
    if unknown:
        raise ValueError(
            f"main_table: metric(s) {unknown} appear in no metrics file; found {sorted(runs['metric'].unique())}"
        )
    runs = runs[runs["metric"].isin(metrics)]

    stats_ = (
        runs.groupby(["dataset", "model", "metric"])["value"]
        .agg(mean="mean", std=lambda v: v.std(ddof=1) if len(v) > 1 else np.nan, n="count")
        .reset_index()
    )
    # The best mean per dataset and metric; isclose so that equal means are a tie.
    stats_["best"] = np.isclose(stats_["mean"], _best_per_group(stats_), rtol=0.0, atol=1e-12)

    def cell(row) -> str:
        text = f"{row['mean']:.{DECIMALS}f}"
        if row["n"] > 1:
            text += f" {PM} {row['std']:.{DECIMALS}f}"
        return f"**{text}**" if row["best"] else text

    stats_["cell"] = stats_.apply(cell, axis=1)
    wide = stats_.pivot(index=["dataset", "model"], columns="metric", values="cell")
    wide = wide.reindex(columns=metrics).fillna("-")
    seeds = runs.groupby(["dataset", "model"])["seed"].nunique().rename("seeds")
    table = wide.join(seeds).reset_index()
    table.columns.name = None
    return table[["dataset", "model", "seeds", *metrics]].sort_values(["dataset", "model"], ignore_index=True)


def _best_per_group(stats_: pd.DataFrame) -> pd.Series:
    """Best mean of each (dataset, metric) group, aligned to ``stats_``'s rows."""
    grouped = stats_.groupby(["dataset", "metric"])["mean"]
    best = grouped.transform("max")
    lower = stats_["metric"].isin(LOWER_IS_BETTER)
    return best.where(~lower, grouped.transform("min"))


# --------------------------------------------------------------------------- significance


def _per_user_values(path: str, metric: str, split: str) -> pd.DataFrame:
    """Per-user values of ``metric`` on ``split`` for one per_user.parquet file."""
    m = _METRIC_NAME.match(metric)
    if m is None:
        raise ValueError(f"significance: metric '{metric}' is not of the form Recall@K, NDCG@K or MRR@K")
    df = read_table(path, PER_USER)
    df = df[df["split"] == split]
    if df.empty:
        raise ValueError(f"{path}: no rows with split '{split}'; rerun the evaluation that wrote it")
    if df["user_idx"].duplicated().any():
        raise ValueError(f"{path}: a user appears twice in split '{split}'; leave-one-out has one target per user")
    # A null rank means the target was not in the returned list; user_metrics
    # scores any non-finite rank as "not retrieved".
    ranks = pd.to_numeric(df["rank"]).to_numpy(dtype=np.float64, na_value=np.nan)
    values = user_metrics(ranks, [int(m["k"])])[metric].to_numpy()
    return pd.DataFrame({"user_idx": df["user_idx"].to_numpy(), "value": values})


def _paired_tests(model: np.ndarray, baseline: np.ndarray) -> tuple[float, float]:
    """Two-sided Wilcoxon signed-rank and paired t-test p-values, model vs baseline per user.

    When every difference is zero the models are indistinguishable on these
    users: both tests are undefined there (scipy raises or returns NaN), and
    p = 1 is the honest answer.
    """
    diff = model - baseline
    if len(diff) < 2 or np.allclose(diff, 0.0, rtol=0.0, atol=1e-15):
        return 1.0, 1.0
    with warnings.catch_warnings():
        # Ties and zero differences are the norm for hit metrics; scipy warns
        # about the normal approximation, which is the method we want here.
        warnings.simplefilter("ignore", category=UserWarning)
        warnings.simplefilter("ignore", category=RuntimeWarning)
        # zero_method="wilcox" drops users where both models score the same
        # (mostly both 0), the usual choice for ranking metrics.
        w_p = float(stats.wilcoxon(diff, zero_method="wilcox", alternative="two-sided").pvalue)
        t_p = float(stats.ttest_rel(model, baseline).pvalue)
    return w_p, t_p


def significance(
    per_user_paths: list[str],
    baseline_model: str,
    metric: str = "NDCG@10",
    split: str = "test",
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Paired tests of every model against ``baseline_model``, per dataset.

    Per-user values of ``metric`` come from :func:`pmsid.evaluate.metrics.user_metrics`
    on the ranks in ``per_user.parquet`` (null rank = not retrieved) and are
    averaged per user over the seeds of a model, so each user contributes one
    paired observation. Tests: two-sided Wilcoxon signed-rank
    (``scipy.stats.wilcoxon``) and paired t-test (``scipy.stats.ttest_rel``).
    ``significant`` is ``wilcoxon_p < alpha``. Models identical to the
    baseline on every user get p = 1.
    """
    rows = []
    for path in _require_paths(per_user_paths, "significance"):
        run = parse_run_path(path, "evaluate", "per_user.parquet")
        rows.append(_per_user_values(path, metric, split).assign(**run))
    values = pd.concat(rows, ignore_index=True)

    out = []
    for dataset, ds in values.groupby("dataset", sort=True):
        models = sorted(ds["model"].unique())
        if baseline_model not in models:
            raise ValueError(
                f"significance: baseline '{baseline_model}' has no per_user.parquet on dataset '{dataset}'; "
                f"found models {models}"
            )
        seeds = ds.groupby("model")["seed"].nunique()
        # users x models, each cell the user's value averaged over that model's seeds
        by_user = ds.groupby(["user_idx", "model"])["value"].mean().unstack("model")
        if by_user.isna().any().any():
            missing = by_user.columns[by_user.isna().any()].tolist()
            raise ValueError(
                f"significance: on dataset '{dataset}' model(s) {missing} lack some {split} users that other "
                "models have; every model must be evaluated on the same users"
            )
        base = by_user[baseline_model].to_numpy()
        for model in models:
            if model == baseline_model:
                continue
            other = by_user[model].to_numpy()
            w_p, t_p = _paired_tests(other, base)
            log.info(
                "%s: %s vs %s on %s: wilcoxon p=%.3g, t-test p=%.3g", dataset, model, baseline_model, metric, w_p, t_p
            )
            out.append(
                {
                    "dataset": dataset,
                    "model": model,
                    "baseline": baseline_model,
                    "metric": metric,
                    "n_users": len(base),
                    "seeds_model": int(seeds[model]),
                    "seeds_baseline": int(seeds[baseline_model]),
                    "mean_model": float(other.mean()),
                    "mean_baseline": float(base.mean()),
                    "delta": float(other.mean() - base.mean()),
                    "wilcoxon_p": w_p,
                    "ttest_p": t_p,
                    "significant": bool(w_p < alpha),
                }
            )
    columns = [
        "dataset", "model", "baseline", "metric", "n_users", "seeds_model", "seeds_baseline",
        "mean_model", "mean_baseline", "delta", "wilcoxon_p", "ttest_p", "significant",
    ]  # fmt: skip
    return pd.DataFrame(out, columns=columns)


def significance_caption(baseline_model: str, metric: str, alpha: float = 0.05, split: str = "test") -> str:
    """Caption of the significance table."""
    return (
        f"Paired significance tests of each model against {baseline_model} on per-user {split} {metric} "
        f"(each user's value averaged over seeds): two-sided Wilcoxon signed-rank test (users with equal "
        f"values dropped) and paired t-test; significant = Wilcoxon p < {alpha}; p = 1 where the two models "
        "score every user the same."
    )


# --------------------------------------------------------------------------- ablations

# The metrics of a method's ablation table: the thesis's headline cut-offs.
ABLATION_METRICS = ["Recall@10", "NDCG@10", "Recall@20", "NDCG@20"]


def mean_std(values) -> str:
    """``mean ± std`` over seeds as in the main table (std only with more than one value); ``-`` if none."""
    values = pd.Series(values, dtype="float64").dropna()
    if values.empty:
        return "-"
    text = f"{values.mean():.{DECIMALS}f}"
    if len(values) > 1:
        text += f" {PM} {values.std(ddof=1):.{DECIMALS}f}"
    return text


def ablation_table(
    runs: pd.DataFrame,
    per_user_paths: list[str],
    models: list[str],
    baseline: str,
    metrics: list[str] = ABLATION_METRICS,
    metric: str = "NDCG@10",
    alpha: float = 0.05,
    what: str = "ablation_table",
    inputs: tuple[str, str] = ("metrics_paths", "per_user_paths"),
) -> pd.DataFrame:
    """One row per (dataset, model of ``models``): ``mean ± std`` of ``metrics``, then a paired test.

    A method's ablation: its variants ``models`` (rows in that order within a
    dataset; those not evaluated are left out) against the variant
    ``baseline``. ``runs`` is :func:`collect_runs`'s frame; the cells come
    from :func:`main_table` restricted to ``models`` (bold = best of them per
    dataset). Each model is tested against ``baseline`` of the same dataset
    with :func:`significance` on per-user test ``metric``: columns
    ``delta_{metric}``, ``wilcoxon_p``, ``ttest_p``, ``significant``. The
    baseline's rows, and every row of a dataset without the baseline, have no
    test (NaN). ``what`` names the table in errors and ``inputs`` the
    arguments that carry its metrics and per-user files, so that an error
    says which list lacks a file.
    """
    models = list(models)
    metrics_arg, per_user_arg = inputs
    own = runs[runs["model"].isin(models)]
    if own.empty:
        raise ValueError(
            f"{what}: none of {models} among the evaluated models {sorted(runs['model'].unique())}; "
            f"pass their metrics.parquet in {metrics_arg}"
        )
    table = main_table(own, split="test", metrics=metrics)
    order = {m: i for i, m in enumerate(models)}
    table = table.sort_values(["dataset", "model"], key=lambda c: c.map(order) if c.name == "model" else c)

    with_baseline = set(own.loc[own["model"] == baseline, "dataset"])
    paths = []
    for path in per_user_paths:
        run = parse_run_path(path, "evaluate", "per_user.parquet")
        if run["model"] in models and run["dataset"] in with_baseline:
            paths.append(path)
    columns = ["dataset", "model", f"delta_{metric}", "wilcoxon_p", "ttest_p", "significant"]
    if paths:
        sig = significance(paths, baseline, metric=metric, alpha=alpha)
        sig = sig.rename(columns={"delta": f"delta_{metric}"})[columns]
    else:
        sig = pd.DataFrame(columns=columns)
    table = table.merge(sig, on=["dataset", "model"], how="left")
    untested = table[table["dataset"].isin(with_baseline) & (table["model"] != baseline)]
    untested = untested[untested["wilcoxon_p"].isna()]
    if len(untested):
        first = untested.iloc[0]
        raise ValueError(
            f"{what}: no per_user.parquet for {first['model']} on dataset '{first['dataset']}'; "
            f"pass every evaluated model's per-user file in {per_user_arg}"
        )
    return table.reset_index(drop=True)


def ablation_test_caption(baseline: str, metric: str = "NDCG@10", alpha: float = 0.05) -> str:
    """The sentence of an ablation caption that says what the paired tests are."""
    return (
        f"Each model against {baseline} of the same dataset on per-user test {metric} (each user's value "
        f"averaged over seeds): delta of the means, two-sided Wilcoxon signed-rank test (users with equal values "
        f"dropped) and paired t-test; significant = Wilcoxon p < {alpha}."
    )


# --------------------------------------------------------------------------- ID quality


def collect_quality(quality_paths: list[str]) -> pd.DataFrame:
    """Concatenate ``quality.parquet`` files: ``dataset, tokenizer, metric, level, value``."""
    frames = []
    for path in _require_paths(quality_paths, "collect_quality"):
        tok = parse_tokenizer_path(path)
        df = read_table(path, ID_QUALITY)
        have = set(df.loc[df["level"] == -1, "metric"])
        missing = [m for m in WHOLE_ID_METRICS if m not in have]
        if missing:
            raise ValueError(f"{path}: missing whole-ID metric(s) {missing} at level -1; found {sorted(have)}")
        if df.duplicated(["metric", "level"]).any():
            dup = df.loc[df.duplicated(["metric", "level"]), ["metric", "level"]].iloc[0].to_dict()
            raise ValueError(f"{path}: (metric, level) {dup} appears twice")
        frames.append(df.assign(**tok))
    return pd.concat(frames, ignore_index=True)[["dataset", "tokenizer", "metric", "level", "value"]]


def id_quality_table(quality_paths: list[str]) -> pd.DataFrame:
    """One row per (dataset, tokenizer): whole-ID metrics, then per-level columns.

    Per-level columns are named ``{metric}_L{level}`` with levels counted
    from 0 (the coarsest), as in quality.parquet: utilization, normalized
    entropy, then any other per-level metric (e.g. prefix utilization).
    """
    q = collect_quality(quality_paths)
    whole = q[q["level"] == -1].pivot(index=["dataset", "tokenizer"], columns="metric", values="value")
    per_level = q[q["level"] >= 0]
    # Utilization and entropy first (the figures docs/METHOD.md section 3 asks for), then the rest.
    first = ["utilization", "normalized_entropy"]
    level_metrics = [m for m in first if m in set(per_level["metric"])]
    level_metrics += sorted(set(per_level["metric"]) - set(first))
    levels = sorted(per_level["level"].unique())
    per_level = per_level.assign(column=per_level["metric"] + "_L" + per_level["level"].astype(str))
    wide_levels = per_level.pivot(index=["dataset", "tokenizer"], columns="column", values="value")
    level_cols = [f"{m}_L{lv}" for m in level_metrics for lv in levels if f"{m}_L{lv}" in wide_levels.columns]
    extra_whole = sorted(set(whole.columns) - set(WHOLE_ID_METRICS))
    table = whole[WHOLE_ID_METRICS + extra_whole].join(wide_levels[level_cols]).reset_index()
    table.columns.name = None
    return table.sort_values(["dataset", "tokenizer"], ignore_index=True)


ID_QUALITY_CAPTION = (
    "Semantic-ID quality per dataset and tokenizer: collision rate and ID uniqueness before the dedup "
    "token, uniqueness after it, the largest dedup index, and per level (L0 = coarsest) the codebook "
    "utilization and normalized entropy of code usage."
)


# --------------------------------------------------------------------------- writing


# LaTeX specials in plain text. Styler escapes cell values but not the caption,
# so captions go through this small table (same characters as Styler's escape).
_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    # Not special to TeX, but in the default OT1 font encoding they print as
    # inverted punctuation; Styler's escape leaves them alone.
    "<": r"\textless{}",
    ">": r"\textgreater{}",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX specials in plain ``text``; ``±`` becomes ``$\\pm$``."""
    escaped = "".join(_LATEX_SPECIALS.get(ch, ch) for ch in str(text))
    return escaped.replace(PM, r"$\pm$")


def _latex_cell(escaped: str) -> str:
    """Finish a cell Styler already escaped: ``**x**`` -> ``\\textbf{x}``, ``±`` -> ``$\\pm$``, ``<``, ``>``."""
    text = str(escaped).replace(PM, r"$\pm$").replace("<", r"\textless{}").replace(">", r"\textgreater{}")
    return re.sub(r"\*\*(.+?)\*\*", r"\\textbf{\1}", text)


def _format_value(value) -> str:
    """Cell text for Markdown and LaTeX: 4 significant digits for floats (p-values stay readable)."""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return "-" if np.isnan(value) else f"{value:.4g}"
    return str(value)


# What each config `setting` says at the head of every caption.
SETTINGS = {
    "quick": "Setting: quick (laptop budgets: the models are under-trained; not the thesis setting).",
    "thesis": "Setting: thesis.",
}


def setting_note(setting: str) -> str:
    """The sentence that names the run's ``setting`` (:data:`SETTINGS`)."""
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {list(SETTINGS)}, got {setting!r}")
    return SETTINGS[setting]


def write_table_formats(
    df: pd.DataFrame, stem: str | os.PathLike, caption: str, setting: str | None = None
) -> list[str]:
    """Write ``{stem}.csv``, ``{stem}.md`` and ``{stem}.tex``; returns the three paths.

    With a ``setting``, the caption starts with :func:`setting_note`.

    - CSV: the frame as is, full precision.
    - Markdown: the caption as a paragraph, then ``DataFrame.to_markdown``.
    - LaTeX: ``Styler.to_latex`` in a ``table`` float with the caption and the
      label ``tab:{stem name}`` (underscores become hyphens); cells, headers
      and caption are escaped, ``±`` is set as ``$\\pm$`` and ``**x**`` as
      ``\\textbf{x}``. Needs ``booktabs`` in the preamble.
    """
    if setting is not None:
        caption = f"{setting_note(setting)} {caption}"
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [f"{stem}.csv", f"{stem}.md", f"{stem}.tex"]

    df.to_csv(paths[0], index=False)

    shown = df.copy()
    for col in shown.columns:
        shown[col] = shown[col].map(_format_value).astype(object)
    markdown = shown.to_markdown(index=False, disable_numparse=True)
    Path(paths[1]).write_text(f"{caption}\n\n{markdown}\n", encoding="utf-8")

    styler = (
        shown.style.hide(axis="index").format(_latex_cell, escape="latex").format_index(escape="latex", axis="columns")
    )
    latex = styler.to_latex(
        caption=latex_escape(caption),
        label="tab:" + stem.name.replace("_", "-"),
        position="htbp",
        position_float="centering",
        hrules=True,
        column_format="l" * shown.shape[1],
    )
    Path(paths[2]).write_text(latex, encoding="utf-8")
    return paths


def check_same_runs(frames: dict[str, pd.DataFrame], keys: list[str], section: str) -> None:
    """Fail unless every frame of ``frames`` ({file name: frame}) holds the same ``keys`` tuples.

    The sections of the report that join several per-run files (PMAT, MCRL)
    call this first, so a missing file is named before anything is written.
    """
    runs = {name: set(f[keys].itertuples(index=False, name=None)) for name, f in frames.items()}
    union = set().union(*runs.values())
    for name, have in runs.items():
        if have != union:
            raise ValueError(
                f"{section} report: no {name} for ({', '.join(keys)}) {sorted(union - have)}; "
                f"{', '.join(frames)} must cover the same {section} runs"
            )


def all_or_none(inputs: dict, section: str) -> bool:
    """True when every path list of ``inputs`` ({argument name: paths}) is non-empty, False when all are empty.

    A section of the report (PMAT, MCRL) is written only with all its inputs;
    a partial set fails naming the empty arguments, and a single path given
    where a list belongs fails naming its argument.
    """
    for name, paths in inputs.items():
        if isinstance(paths, (str, os.PathLike)):
            # A single string would otherwise be iterated character by character.
            raise TypeError(f"{name}: expected a list of paths, got the single path {paths!r}")
    empty = [name for name, paths in inputs.items() if not len(paths)]
    if empty and len(empty) < len(inputs):
        raise ValueError(
            f"{section} report: {empty} are empty; pass all {len(inputs)} {section} inputs, "
            f"or none for no {section} section"
        )
    return not empty
