"""HDNAG's report section: accuracy against beam search, cost side by side, the candidate sweep.

- ``hdnag_ablation``: the section's models (TIGER's beam search, HDNAG and
  its ablations) on the test split, each tested against TIGER
  (:func:`pmsid.report.tables.ablation_table`), with HDNAG's exhaustive
  NDCG@10 beside its two-stage one;
- ``hdnag_efficiency``: rule hdnag_efficiency's measurements
  (:mod:`pmsid.methods.efficiency`), mean ± std over seeds;
- ``hdnag_sweep``: test accuracy and batched time per setting of ``c`` and
  of the candidate budget;
- ``hdnag_accuracy_latency.png``: that sweep as curves (mean over seeds,
  band = std), beam search and dense scoring as reference points.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from pmsid.data.contracts import EFFICIENCY, EFFICIENCY_SWEEP, read_metadata, read_table  # noqa: E402
from pmsid.report import tables  # noqa: E402
from pmsid.report.figures import _save  # noqa: E402
from pmsid.report.tables import PM  # noqa: E402

REFERENCE = "tiger"  # the autoregressive beam search every HDNAG row is tested against
_PATH = re.compile(
    r"(?:^|/)results/efficiency/(?P<dataset>[^/]+)/seed(?P<seed>\d+)/(?:history_(?:excluded|included)/)?"
    r"(?P<file>[^/]+)\.parquet$"
)
METRICS = [*tables.ABLATION_METRICS, "exhaustive_NDCG@10"]
EFFICIENCY_LABELS = {
    "tiger": "TIGER-style beam search (autoregressive, trie-constrained)",
    "hdnag": "HDNAG two-stage retrieval",
    "hdnag_exhaustive": "HDNAG, every item scored",
    "hdnag_single": "HDNAG single-level, two-stage retrieval",
    "sasrec_dense": "SASRec dense scoring of every item",
}


def _read(paths: list[str], schema, what: str, exclude_history: bool | None) -> pd.DataFrame:
    frames = []
    for path in paths:
        m = _PATH.search(Path(path).as_posix())
        if m is None:
            raise ValueError(f"{path}: expected results/efficiency/{{dataset}}/seed{{seed}}/{what}.parquet")
        recorded = read_metadata(path).get("exclude_history")
        if exclude_history is not None and recorded is not None and bool(recorded) != bool(exclude_history):
            raise ValueError(
                f"{path}: measured with exclude_history={recorded}, the report is built with {exclude_history}"
            )
        frames.append(read_table(path, schema).assign(dataset=m["dataset"], seed=int(m["seed"])))
    if not frames:
        raise ValueError(f"HDNAG report: no {what}.parquet files given")
    return pd.concat(frames, ignore_index=True)


def _cell(values: pd.Series, decimals: int) -> str:
    values = values.dropna()
    if values.empty:
        return "-"
    text = f"{values.mean():.{decimals}f}"
    return text + (f" {PM} {values.std(ddof=1):.{decimals}f}" if len(values) > 1 else "")


def efficiency_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, method): every measure as ``mean ± std`` over seeds."""
    decimals = {
        "batch1_ms_median": 2, "batch1_ms_p95": 2, "batched_users_per_s": 0, "speedup_batch1": 1,
        "speedup_batched": 1, "decoder_passes_per_batch": 0, "items_scored_per_user": 0, "peak_memory_mb": 1,
        "Recall@10": 4, "NDCG@10": 4,
    }  # fmt: skip
    order = {m: i for i, m in enumerate(EFFICIENCY_LABELS)}
    rows = []
    for (dataset, method), group in frame.groupby(["dataset", "method"], sort=False):
        row = {"dataset": dataset, "method": method, "seeds": group["seed"].nunique()}
        row.update({col: _cell(group[col], d) for col, d in decimals.items()})
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.sort_values(["dataset", "method"], key=lambda c: c.map(order) if c.name == "method" else c,
                             ignore_index=True)  # fmt: skip


def sweep_table(sweep: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, knob, value): time, candidates and accuracy, mean ± std over seeds."""
    rows = []
    for (dataset, knob, value), group in sweep.groupby(["dataset", "knob", "value"]):
        rows.append(
            {
                "dataset": dataset,
                "knob": knob,
                "value": int(value),
                "seeds": group["seed"].nunique(),
                "ms_per_user": _cell(group["ms_per_user"], 3),
                "candidates_per_user": _cell(group["candidates_per_user"], 0),
                "Recall@10": _cell(group["Recall@10"], 4),
                "NDCG@10": _cell(group["NDCG@10"], 4),
            }
        )
    return pd.DataFrame(rows)


def plot_accuracy_latency(sweep: pd.DataFrame, efficiency: pd.DataFrame, out_png: str | os.PathLike) -> str:
    """NDCG@10 against batched ms per user: one panel per dataset, a curve per knob, reference points."""
    datasets = list(dict.fromkeys(sweep["dataset"]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4.2), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for knob, marker in (("coarse_candidates", "o"), ("candidate_budget", "s")):
            part = sweep[(sweep["dataset"] == dataset) & (sweep["knob"] == knob)]
            if part.empty:
                continue
            stats = part.groupby("value").agg(
                x=("ms_per_user", "mean"), y=("NDCG@10", "mean"), sd=("NDCG@10", lambda v: v.std(ddof=1))
            )
            sd = stats["sd"].fillna(0.0)
            line = ax.plot(stats["x"], stats["y"], marker=marker, label=f"HDNAG, sweep of {knob}")[0]
            ax.fill_between(stats["x"], stats["y"] - sd, stats["y"] + sd, alpha=0.2, color=line.get_color())
            for value, point in stats.iterrows():
                ax.annotate(str(value), (point["x"], point["y"]), fontsize="x-small", xytext=(3, 3),
                            textcoords="offset points")  # fmt: skip
        ref = efficiency[(efficiency["dataset"] == dataset) & efficiency["method"].isin(["tiger", "sasrec_dense"])]
        for method, group in ref.groupby("method"):
            x = (1e3 / group["batched_users_per_s"]).mean()
            ax.errorbar(x, group["NDCG@10"].mean(), yerr=group["NDCG@10"].std(ddof=1) if len(group) > 1 else None,
                        marker="*", markersize=12, linestyle="none", label=EFFICIENCY_LABELS[method])  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("batched retrieval time (ms per user, log scale)")
        ax.set_ylabel("test NDCG@10")
        ax.set_title(dataset)
        ax.legend(fontsize="x-small")
    return _save(fig, out_png)


def ablation_caption(exclude_history: bool, metrics: list[str], alpha: float = 0.05) -> str:
    return (
        "HDNAG against autoregressive beam search on the test split. tiger: the TIGER-style encoder-decoder "
        "decoding RQ-KMeans IDs by trie-constrained beam search; hdnag: hierarchical k-means IDs (coarse, fine, "
        "dedup), the coarse token then the fine tokens each predicted in one parallel decoder pass, ranked by "
        "two-stage retrieval (top-c coarse IDs recall candidates, the item score re-ranks them); hdnag_no_align: "
        "without the alignment loss; hdnag_single: all tokens in one pass. exhaustive_NDCG@10: the same HDNAG "
        "model with every item scored, so the cost of the candidate cut shows. Cells: mean "
        f"{PM} sample standard deviation over seeds; bold marks the best per dataset and metric. "
        + tables.ablation_test_caption(REFERENCE, "NDCG@10", alpha)
        + " "
        + tables.protocol_caption(exclude_history, metrics)
    )


EFFICIENCY_CAPTION = (
    "Retrieval cost of each method, all measured in one process on the same machine and test users, top-K lists "
    "of the same length (rule hdnag_efficiency). batch1_ms: milliseconds per user retrieving one user at a time "
    "(median and 95th percentile after a warm-up); batched_users_per_s: users per second in batches of "
    "hdnag.eval_batch_size; speedup_*: beam search's time over the row's (above 1 = faster than beam search); "
    "decoder_passes_per_batch: forward passes of the decoder for one batch (beam search: one per ID level; "
    "HDNAG: two, single-level one; dense scoring has no decoder); items_scored_per_user: items whose score is "
    "computed (beam search scores ID prefixes, not items); peak_memory_mb: CUDA only. The beam search shares "
    f"each user's encoder memory across its beams and re-reads the prefix at each step (no key-value cache). "
    f"Cells: mean {PM} std over seeds. Recall@10 and NDCG@10 are of the lists timed here."
)

SWEEP_CAPTION = (
    "HDNAG's two-stage retrieval under other settings of its knobs, the same trained model: coarse_candidates "
    "c (the top-c coarse IDs, every item under them scored) and candidate_budget (c = every coarse ID, the "
    "candidate list cut at the budget, in coarse-score order). ms_per_user: batched retrieval time; "
    f"candidates_per_user: items scored. Cells: mean {PM} std over seeds, test split."
)

FIGURE_CAPTION = (
    "Accuracy against retrieval time: HDNAG's test NDCG@10 over its sweep of c and of the candidate budget "
    "(mean over seeds, band = std), beside autoregressive beam search and SASRec's dense scoring (stars). "
    "Time is batched milliseconds per user, log scale."
)


def write_hdnag_report(
    runs: pd.DataFrame,
    per_user_paths: list[str],
    efficiency_paths: list[str],
    sweep_paths: list[str],
    out: Path,
    exclude_history: bool,
    rows: tables.SectionRows,
    metrics: list[str] = tables.DEFAULT_METRICS,
    alpha: float = 0.05,
    header: str | None = None,
) -> tuple[list[str], list[tuple[str, str, str]], dict[str, str]]:
    """Write HDNAG's tables and figure into ``out``; returns paths, README sections and figure captions."""
    efficiency = _read(efficiency_paths, EFFICIENCY, "efficiency", exclude_history)
    sweep = _read(sweep_paths, EFFICIENCY_SWEEP, "sweep", exclude_history)
    present = [m for m in METRICS if m in set(runs["metric"])]
    ablation = tables.ablation_table(
        runs, per_user_paths, list(rows.methods), REFERENCE, present, "NDCG@10", alpha,
        what="hdnag_ablation", inputs=("hdnag metrics", "hdnag per_user"),
    )  # fmt: skip
    sections = [
        ("HDNAG against beam search", "hdnag_ablation", ablation_caption(exclude_history, metrics, alpha), ablation),
        ("Retrieval cost", "hdnag_efficiency", EFFICIENCY_CAPTION, efficiency_table(efficiency)),
        ("HDNAG candidate sweep", "hdnag_sweep", SWEEP_CAPTION, sweep_table(sweep)),
    ]
    written: list[str] = []
    for _title, stem, caption, table in sections:
        written += tables.write_table_formats(table, out / stem, caption, header)
    written.append(plot_accuracy_latency(sweep, efficiency, out / "hdnag_accuracy_latency.png"))
    return written, [s[:3] for s in sections], {"hdnag_accuracy_latency.png": FIGURE_CAPTION}
