"""Report tables: the main comparison, significance tests, ID quality.

Every table is built from the Parquet files of earlier stages (checked
against their contracts on read) and written three ways by
:func:`write_table_formats`: CSV for machines, Markdown for the README,
LaTeX for the thesis.

Where a run comes from is read off its path, which the workflow fixes
``results/evaluate/{dataset}/{model}/seed{seed}/metrics.parquet``
and ``results/tokenize/{dataset}/{tokenizer}/seed{seed}/quality.parquet``. A
path of another shape fails loudly rather than being guessed at.
"""

from __future__ import annotations

import html
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

# The evaluation of the other history switch sits in a folder named by it
# (protocol.report_both_histories): results/evaluate/.../seed0/history_excluded/.
_RUN_PATH = (
    r"(?:^|/)results/{stage}/(?P<dataset>[^/]+)/(?P<model>[^/]+)/seed(?P<seed>\d+)/"
    r"(?:history_(?:excluded|included)/)?{filename}$"
)
_TOKENIZER_PATH = re.compile(
    r"(?:^|/)results/tokenize/(?P<dataset>[^/]+)/(?P<tokenizer>[^/]+)/seed(?P<seed>\d+)/quality\.parquet$"
)
_METRIC_NAME = re.compile(r"^(?P<name>Recall|NDCG|MRR)@(?P<k>\d+)$")


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class SectionRows:
    """The methods of one report section, as the manifest describes them.

    ``methods`` in table order (the registry's), ``control`` the one every
    other row is tested against (None when the section has none),
    ``descriptions`` a clause per method for captions, ``losses`` the loss
    terms a method trains with, where its options name them (MCRL),
    ``roles`` each method's role (floor, baseline, control, ours, oracle).
    """

    methods: tuple[str, ...]
    control: str | None = None
    descriptions: dict = field(default_factory=dict)
    losses: dict = field(default_factory=dict)
    roles: dict = field(default_factory=dict)

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
            roles={m: first[m].get("role") for m in methods},
        )

    def with_role(self, role: str) -> list[str]:
        """The methods of ``role``, in table order."""
        return [m for m in self.methods if self.roles.get(m) == role]

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
    """``{dataset, tokenizer, seed}`` of ``results/tokenize/{dataset}/{tokenizer}/seed{seed}/quality.parquet``
    (one tokenizer per run seed)."""
    m = _TOKENIZER_PATH.search(Path(path).as_posix())
    if m is None:
        raise ValueError(
            f"{path}: cannot read dataset/tokenizer/seed from this path; expected "
            "results/tokenize/{dataset}/{tokenizer}/seed{seed}/quality.parquet"
        )
    return {"dataset": m["dataset"], "tokenizer": m["tokenizer"], "seed": int(m["seed"])}


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


# Which stages vary with a run's seed, for the captions of tables with a std over seeds.
SEED_NOTE = (
    "Seeds: a run's seed reaches every stochastic stage, the RQ-KMeans tokenizer, the k-means pseudo-labels, "
    "PMAT (preference network, prototypes, ID tables, update replay) and every model, so a std over seeds "
    "covers all of a method's random choices; the text, image and behaviour features are deterministic, the "
    "same for every seed."
)


def main_caption(
    exclude_history: bool, metrics: list[str] = DEFAULT_METRICS, split: str = "test", alpha: float = 0.05
) -> str:
    """Caption of the main comparison table: what the cells and markers are, then the protocol."""
    return (
        f"Main comparison on the {split} split: mean {PM} sample standard deviation over seeds "
        f"(std shown when a model has more than one seed; 'seeds' gives their number); "
        f"bold marks the best model per dataset and metric, underline the second best; {SIG_MARK} marks a "
        f"cell ({' or '.join(SIGNIFICANCE_METRICS)}) that differs significantly from the dataset's best baseline "
        f"(Holm-corrected Wilcoxon p < {alpha}; the significance table gives the tests). "
        + protocol_caption(exclude_history, metrics, split)
        + " "
        + SEED_NOTE
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
    :func:`write_table_formats` turns into ``\\textbf`` for LaTeX), the
    second best in ``<u>...</u>`` (underlined; ``\\underline``); ties are all
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
    # The best and second-best mean per dataset and metric; isclose so that equal means are a tie.
    best, second = _best_per_group(stats_)
    stats_["best"] = np.isclose(stats_["mean"], best, rtol=0.0, atol=1e-12)
    stats_["second"] = np.isclose(stats_["mean"], second, rtol=0.0, atol=1e-12) & ~stats_["best"]

    def cell(row) -> str:
        text = f"{row['mean']:.{DECIMALS}f}"
        if row["n"] > 1:
            text += f" {PM} {row['std']:.{DECIMALS}f}"
        if row["best"]:
            return f"**{text}**"
        return f"<u>{text}</u>" if row["second"] else text

    stats_["cell"] = stats_.apply(cell, axis=1)
    wide = stats_.pivot(index=["dataset", "model"], columns="metric", values="cell")
    wide = wide.reindex(columns=metrics).fillna("-")
    seeds = runs.groupby(["dataset", "model"])["seed"].nunique().rename("seeds")
    table = wide.join(seeds).reset_index()
    table.columns.name = None
    return table[["dataset", "model", "seeds", *metrics]].sort_values(["dataset", "model"], ignore_index=True)


def _best_per_group(stats_: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Best and second-best distinct mean of each (dataset, metric) group, aligned to ``stats_``'s rows.

    Higher is better except for :data:`LOWER_IS_BETTER`; a group with one
    distinct mean has no second (NaN).
    """
    sign = np.where(stats_["metric"].isin(LOWER_IS_BETTER), -1.0, 1.0)
    score = stats_["mean"] * sign
    # Means within 1e-12 are one value, as the tie rule of the markers.
    key = score.round(12)
    grouped = key.groupby([stats_["dataset"], stats_["metric"]])
    first = grouped.transform("max")
    second = key.where(key < first).groupby([stats_["dataset"], stats_["metric"]]).transform("max")
    return first * sign, second * sign


# --------------------------------------------------------------------------- significance

# The per-user metrics the main table tests, each against the best baseline.
SIGNIFICANCE_METRICS = ("NDCG@10", "Recall@10")
# A model is tested only with at least this many seeds on both sides: with one
# training run per model a test over users cannot tell the method from the
# run's randomness (the quick setting's single seed shows no p-values).
MIN_TEST_SEEDS = 2
CI_LEVEL = 0.95
# The main table's marker of a cell that differs significantly from the best
# baseline (Holm-corrected Wilcoxon p < alpha); LaTeX gets $^{\dagger}$.
SIG_MARK = "†"


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the input order (Holm 1979).

    With the ``m`` p-values sorted ascending, the ``i``-th (1-based) becomes
    ``max_{j <= i} min(1, (m - j + 1) p_(j))``; rejecting where the adjusted
    value is below alpha controls the family-wise error rate at alpha. NaN
    entries (comparisons not tested) are left NaN and do not count in ``m``.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m = len(order)
    out[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return out


def mean_difference_ci(diff: np.ndarray, level: float = CI_LEVEL) -> tuple[float, float, float]:
    """Mean of the paired differences ``diff`` and its two-sided t interval at ``level``.

    The effect size beside each p-value. With all differences equal the
    interval is that one value; with fewer than two it is undefined (NaN).
    """
    diff = np.asarray(diff, dtype=np.float64)
    mean = float(diff.mean())
    if len(diff) < 2:
        return mean, np.nan, np.nan
    se = float(diff.std(ddof=1)) / np.sqrt(len(diff))
    half = float(stats.t.ppf(0.5 + level / 2, len(diff) - 1)) * se
    return mean, mean - half, mean + half


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


def _users_by_model(per_user_paths: list[str], metric: str, split: str) -> dict[str, tuple[pd.DataFrame, pd.Series]]:
    """Per dataset: users x models (each cell the user's ``metric`` averaged over
    that model's seeds) and each model's number of seeds."""
    rows = []
    for path in _require_paths(per_user_paths, "significance"):
        run = parse_run_path(path, "evaluate", "per_user.parquet")
        rows.append(_per_user_values(path, metric, split).assign(**run))
    values = pd.concat(rows, ignore_index=True)
    out = {}
    for dataset, ds in values.groupby("dataset", sort=True):
        by_user = ds.groupby(["user_idx", "model"])["value"].mean().unstack("model")
        if by_user.isna().any().any():
            missing = by_user.columns[by_user.isna().any()].tolist()
            raise ValueError(
                f"significance: on dataset '{dataset}' model(s) {missing} lack some {split} users that other "
                "models have; every model must be evaluated on the same users"
            )
        out[dataset] = (by_user, ds.groupby("model")["seed"].nunique())
    return out


SIGNIFICANCE_COLUMNS = [
    "dataset", "metric", "model", "baseline", "n_users", "seeds_model", "seeds_baseline",
    "mean_model", "mean_baseline", "delta", "ci95_low", "ci95_high",
    "wilcoxon_p", "wilcoxon_p_holm", "ttest_p", "ttest_p_holm", "significant",
]  # fmt: skip


def significance(
    per_user_paths: list[str],
    baselines: list[str],
    metrics: tuple[str, ...] | list[str] = SIGNIFICANCE_METRICS,
    split: str = "test",
    alpha: float = 0.05,
    min_seeds: int = MIN_TEST_SEEDS,
) -> pd.DataFrame:
    """Paired tests of every model against the best of ``baselines``, per dataset and metric.

    Per-user values of each metric come from
    :func:`pmsid.evaluate.metrics.user_metrics` on the ranks in
    ``per_user.parquet`` (null rank = not retrieved), averaged per user over
    the seeds of a model, so each user contributes one paired observation.
    The reference of a (dataset, metric) is the baseline of ``baselines``
    with the highest mean there; every other model of the dataset is tested
    against it: two-sided Wilcoxon signed-rank (``scipy.stats.wilcoxon``) and
    paired t-test (``scipy.stats.ttest_rel``), Holm-corrected (:func:`holm`)
    across every comparison of the table. ``delta`` is the mean per-user
    difference, ``ci95_low``/``ci95_high`` its t interval
    (:func:`mean_difference_ci`). ``significant`` is Holm-corrected Wilcoxon
    p < ``alpha``. A model with fewer than ``min_seeds`` seeds on either side
    gets its delta but no interval and no p-values (NaN, not significant).
    Models identical to the reference on every user get p = 1.
    """
    baselines = list(baselines)
    out = []
    for metric in metrics:
        for dataset, (by_user, seeds) in _users_by_model(per_user_paths, metric, split).items():
            present = [b for b in baselines if b in by_user.columns]
            if not present:
                raise ValueError(
                    f"significance: none of the baselines {baselines} has a per_user.parquet on dataset "
                    f"'{dataset}'; found models {sorted(by_user.columns)}"
                )
            # The best baseline by mean; the first listed wins a tie.
            reference = max(present, key=lambda b: (by_user[b].mean(), -present.index(b)))
            base = by_user[reference].to_numpy()
            for model in sorted(by_user.columns):
                if model == reference:
                    continue
                other = by_user[model].to_numpy()
                if min(seeds[model], seeds[reference]) >= min_seeds:
                    delta, low, high = mean_difference_ci(other - base)
                    w_p, t_p = _paired_tests(other, base)
                else:
                    delta, low, high, w_p, t_p = float(np.mean(other - base)), np.nan, np.nan, np.nan, np.nan
                out.append(
                    {
                        "dataset": dataset, "metric": metric, "model": model, "baseline": reference,
                        "n_users": len(base), "seeds_model": int(seeds[model]),
                        "seeds_baseline": int(seeds[reference]), "mean_model": float(other.mean()),
                        "mean_baseline": float(base.mean()), "delta": delta, "ci95_low": low, "ci95_high": high,
                        "wilcoxon_p": w_p, "ttest_p": t_p,
                    }
                )  # fmt: skip
    table = pd.DataFrame(
        out, columns=[c for c in SIGNIFICANCE_COLUMNS if not c.endswith("_holm") and c != "significant"]
    )
    table["wilcoxon_p_holm"] = holm(table["wilcoxon_p"])
    table["ttest_p_holm"] = holm(table["ttest_p"])
    table["significant"] = table["wilcoxon_p_holm"] < alpha  # NaN (untested) compares False
    for row in table.itertuples():
        log.info(
            "%s %s: %s vs %s: delta %+.4f, wilcoxon p=%.3g (Holm %.3g), t-test p=%.3g (Holm %.3g)",
            row.dataset, row.metric, row.model, row.baseline, row.delta,
            row.wilcoxon_p, row.wilcoxon_p_holm, row.ttest_p, row.ttest_p_holm,
        )  # fmt: skip
    return table[SIGNIFICANCE_COLUMNS]


def paired_tests_sentence(alpha: float = 0.05, min_seeds: int = MIN_TEST_SEEDS) -> str:
    """What every table's paired tests are, in one sentence."""
    return (
        "Per user (each user's value averaged over seeds): delta = mean difference with its 95% t interval; "
        "two-sided Wilcoxon signed-rank test (users with equal values dropped) and paired t-test, both "
        f"Holm-corrected across the table's comparisons; significant = Holm-corrected Wilcoxon p < {alpha}; "
        "p = 1 where two models score every user the same; models with fewer than "
        f"{min_seeds} seeds are not tested (one training run cannot separate the method from its randomness)."
    )


def significance_caption(
    baselines: list[str], metrics=SIGNIFICANCE_METRICS, alpha: float = 0.05, split: str = "test"
) -> str:
    """Caption of the significance table."""
    return (
        f"Paired significance tests of each model against the best baseline of its dataset and metric "
        f"(the baseline of {', '.join(baselines)} with the highest mean) on per-user {split} "
        f"{' and '.join(metrics)}. " + paired_tests_sentence(alpha)
    )


def mark_significant(table: pd.DataFrame, sig: pd.DataFrame) -> pd.DataFrame:
    """``table`` (:func:`main_table`'s) with :data:`SIG_MARK` after each cell whose
    model differs significantly from its dataset's best baseline on that metric."""
    marked = table.copy()
    hits = sig[sig["significant"]]
    for row in hits.itertuples():
        where = (marked["dataset"] == row.dataset) & (marked["model"] == row.model)
        if row.metric in marked.columns:
            marked.loc[where, row.metric] = marked.loc[where, row.metric] + SIG_MARK
    return marked


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
    with :func:`significance` on per-user test ``metric``, Holm-corrected
    across the table's rows: columns ``delta_{metric}``, ``ci95_low``,
    ``ci95_high``, ``wilcoxon_p``, ``wilcoxon_p_holm``, ``ttest_p``,
    ``ttest_p_holm``, ``significant``. The baseline's rows, every row of a
    dataset without the baseline, and models with one seed have no test
    (NaN, not significant). ``what`` names the table in errors and ``inputs`` the
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
    tested = ["ci95_low", "ci95_high", "wilcoxon_p", "wilcoxon_p_holm", "ttest_p", "ttest_p_holm", "significant"]
    columns = ["dataset", "model", f"delta_{metric}", *tested]
    if paths:
        sig = significance(paths, [baseline], metrics=[metric], alpha=alpha)
        sig = sig.rename(columns={"delta": f"delta_{metric}"})[columns]
    else:
        sig = pd.DataFrame(columns=columns)
    table = table.merge(sig.assign(_tested=True), on=["dataset", "model"], how="left")
    untested = table[table["dataset"].isin(with_baseline) & (table["model"] != baseline) & table["_tested"].isna()]
    if len(untested):
        first = untested.iloc[0]
        raise ValueError(
            f"{what}: no per_user.parquet for {first['model']} on dataset '{first['dataset']}'; "
            f"pass every evaluated model's per-user file in {per_user_arg}"
        )
    table["significant"] = table["significant"].fillna(False).astype(bool)
    return table.drop(columns="_tested").reset_index(drop=True)


def ablation_test_caption(baseline: str, metric: str = "NDCG@10", alpha: float = 0.05) -> str:
    """The sentence of an ablation caption that says what the paired tests are."""
    return f"Each model against {baseline} of the same dataset on per-user test {metric}. " + paired_tests_sentence(
        alpha
    )


# --------------------------------------------------------------------------- ID quality


def collect_quality(quality_paths: list[str]) -> pd.DataFrame:
    """Concatenate ``quality.parquet`` files: ``dataset, tokenizer, seed, metric, level, value``."""
    frames, seen = [], {}
    for path in _require_paths(quality_paths, "collect_quality"):
        tok = parse_tokenizer_path(path)
        key = tuple(tok.values())
        if key in seen:
            raise ValueError(f"collect_quality: {path} and {seen[key]} are the same (dataset, tokenizer, seed) {key}")
        seen[key] = path
        df = read_table(path, ID_QUALITY)
        have = set(df.loc[df["level"] == -1, "metric"])
        missing = [m for m in WHOLE_ID_METRICS if m not in have]
        if missing:
            raise ValueError(f"{path}: missing whole-ID metric(s) {missing} at level -1; found {sorted(have)}")
        if df.duplicated(["metric", "level"]).any():
            dup = df.loc[df.duplicated(["metric", "level"]), ["metric", "level"]].iloc[0].to_dict()
            raise ValueError(f"{path}: (metric, level) {dup} appears twice")
        frames.append(df.assign(**tok))
    return pd.concat(frames, ignore_index=True)[["dataset", "tokenizer", "seed", "metric", "level", "value"]]


def id_quality_table(quality_paths: list[str]) -> pd.DataFrame:
    """One row per (dataset, tokenizer): ``seeds``, whole-ID metrics, then per-level columns.

    Each cell reads ``mean ± std`` over the seeds' tokenizers (:func:`mean_std`:
    std only with more than one seed), as the main table does for models, so
    the table shows how much the IDs vary with the seed; ``seeds`` says how
    many there are. Per-level columns are named ``{metric}_L{level}`` with
    levels counted from 0 (the coarsest), as in quality.parquet: utilization,
    normalized entropy, then any other per-level metric (e.g. prefix
    utilization). A figure a tokenizer lacks shows as ``-``.
    """
    q = collect_quality(quality_paths)
    keys = ["dataset", "tokenizer"]
    whole, per_level = q[q["level"] == -1], q[q["level"] >= 0]
    # Utilization and entropy first (the figures docs/METHOD.md section 3 asks for), then the rest.
    first = ["utilization", "normalized_entropy"]
    level_metrics = [m for m in first if m in set(per_level["metric"])]
    level_metrics += sorted(set(per_level["metric"]) - set(first))
    levels = sorted(per_level["level"].unique())
    level_cols = [f"{m}_L{lv}" for m in level_metrics for lv in levels]
    whole_cols = WHOLE_ID_METRICS + sorted(set(whole["metric"]) - set(WHOLE_ID_METRICS))
    column = np.where(q["level"] == -1, q["metric"], q["metric"] + "_L" + q["level"].astype(str))
    cells = q.assign(column=column).groupby([*keys, "column"])["value"].agg(mean_std).unstack("column")
    columns = [c for c in whole_cols + level_cols if c in cells.columns]
    seeds = q.groupby(keys)["seed"].nunique().rename("seeds")
    table = seeds.to_frame().join(cells[columns].fillna("-")).reset_index()
    table.columns.name = None
    return table.sort_values(keys, ignore_index=True)


ID_QUALITY_CAPTION = (
    f"Semantic-ID quality per dataset and tokenizer, one tokenizer per seed: mean {PM} sample standard "
    "deviation over the seeds (std shown with more than one seed; 'seeds' gives their number) of the collision "
    "rate and ID uniqueness before the dedup token, uniqueness after it, the largest dedup index, and per level "
    "(L0 = coarsest) the codebook utilization and normalized entropy of code usage. rqkmeans: residual levels "
    "of one codebook size each; hkmeans (HDNAG): L0 the coarse clusters, L1 the fine clusters nested in them, "
    "each level against its own codebook size."
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
    """Escape LaTeX specials in plain ``text``; ``±`` becomes ``$\\pm$``, :data:`SIG_MARK` ``$^{\\dagger}$``."""
    escaped = "".join(_LATEX_SPECIALS.get(ch, ch) for ch in str(text))
    return escaped.replace(PM, r"$\pm$").replace(SIG_MARK, r"$^{\dagger}$")


def _latex_cell(escaped: str) -> str:
    """Finish a cell Styler already escaped: ``**x**`` -> ``\\textbf{x}``, ``<u>x</u>`` ->
    ``\\underline{x}``, ``±`` -> ``$\\pm$``, :data:`SIG_MARK` -> ``$^{\\dagger}$``, ``<``, ``>``."""
    text = re.sub(r"<u>(.+?)</u>", r"\\underline{\1}", str(escaped))
    text = text.replace(PM, r"$\pm$").replace(SIG_MARK, r"$^{\dagger}$")
    text = text.replace("<", r"\textless{}").replace(">", r"\textgreater{}")
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


def releases_note(releases: dict[str, str]) -> str:
    """The data of every dataset in one sentence: ``Data: ml-100k = MovieLens-100K (...); ...``."""
    return "Data: " + "; ".join(f"{name} = {what}" for name, what in releases.items()) + "."


def caption_header(setting: str | None, releases: dict[str, str] | None = None) -> str | None:
    """What heads every caption of a report: its setting (:func:`setting_note`) and its datasets'
    releases (:func:`releases_note`); None when neither is given."""
    parts = ([setting_note(setting)] if setting is not None else []) + ([releases_note(releases)] if releases else [])
    return " ".join(parts) or None


def write_table_formats(
    df: pd.DataFrame, stem: str | os.PathLike, caption: str, header: str | None = None
) -> list[str]:
    """Write ``{stem}.csv``, ``{stem}.md``, ``{stem}.tex`` and ``{stem}.html``; returns the four paths.

    With a ``header`` (:func:`caption_header`), the caption starts with it.

    - CSV: the frame as is, full precision.
    - Markdown: the caption as a paragraph, then ``DataFrame.to_markdown``.
    - LaTeX: ``Styler.to_latex`` in a ``table`` float with the caption and the
      label ``tab:{stem name}`` (underscores become hyphens); cells, headers
      and caption are escaped, ``±`` is set as ``$\\pm$`` and ``**x**`` as
      ``\\textbf{x}``. Needs ``booktabs`` in the preamble.
    - HTML: a standalone page, the caption as the table's ``<caption>``; the
      one ``snakemake --report`` shows (:func:`_html_cell` for the markers).
    """
    if header is not None:
        caption = f"{header} {caption}"
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [f"{stem}.csv", f"{stem}.md", f"{stem}.tex", f"{stem}.html"]

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

    body = shown.map(_html_cell).rename(columns=html.escape).to_html(index=False, escape=False)
    body = re.sub(r"<table[^>]*>", lambda _: f"<table>\n  <caption>{html.escape(caption)}</caption>", body, count=1)
    Path(paths[3]).write_text(_HTML_PAGE.format(title=html.escape(stem.name), table=body), encoding="utf-8")
    return paths


_HTML_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: sans-serif; font-size: 14px; }}
table {{ border-collapse: collapse; }}
caption {{ caption-side: top; text-align: left; max-width: 60em; padding-bottom: 0.5em; }}
th, td {{ padding: 2px 8px; text-align: left; border-bottom: 1px solid #ddd; white-space: nowrap; }}
thead th {{ border-bottom: 2px solid #333; }}
</style>
</head>
<body>
{table}
</body>
</html>
"""


def _html_cell(text: str) -> str:
    """A shown cell as HTML: escaped, then ``**x**`` -> ``<strong>x</strong>`` and ``<u>x</u>`` kept."""
    escaped = html.escape(str(text))
    escaped = re.sub(r"&lt;u&gt;(.+?)&lt;/u&gt;", r"<u>\1</u>", escaped)
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)


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
