"""The report's decoding table: constrained against unconstrained beam search.

The TIGER-style generators rank by trie-constrained beam search, whose
invalid-ID rate is 0 by construction: the trie admits only prefixes of
valid IDs. That is an invariant (tests/test_beam.py checks it), not a
finding. What the model has learnt about its ID space shows in the same
search without the trie, which every TIGER-style evaluation runs on the
test split (:func:`pmsid.methods.tiger.unconstrained_measures`); this
table puts the two side by side.
"""

from __future__ import annotations

import pandas as pd

from pmsid.report.tables import PM, mean_std

SPLIT = "test"  # the split the unconstrained search runs on

# Table columns, each the metrics.parquet metric of that name: constrained, then unconstrained.
DECODING_METRICS = [
    "invalid_id_rate",
    "unconstrained_invalid_id_rate",
    "NDCG@10",
    "Recall@10",
    "unconstrained_NDCG@10",
    "unconstrained_Recall@10",
]

DECODING_CAPTION = (
    "Decoding of the TIGER-style generators on the test split, one row per dataset and model that ran "
    "both searches. invalid_id_rate: finished beams whose code tuple is no item's ID in the user's table, "
    "over all beams. The unprefixed columns are trie-constrained beam search, the ranking every other table "
    "reports; its invalid-ID rate is 0 by construction (the trie admits only prefixes of valid IDs), an "
    "invariant the tests check, not a result. The unconstrained_ columns are the same model and beam width "
    "without the trie (any code at every level): its invalid-ID rate is the measured one, and in its lists an "
    "invalid beam keeps its slot and counts as a miss. Cells: mean "
    f"{PM} sample standard deviation over seeds (std shown with more than one seed; 'seeds' gives their number)."
)


def decoding_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, model) whose test metrics have ``unconstrained_invalid_id_rate``.

    ``runs`` is the frame of :func:`pmsid.report.tables.collect_runs`
    (``dataset, model, seed, split, metric, value``). Columns: dataset,
    model, seeds, then :data:`DECODING_METRICS`, each cell
    :func:`pmsid.report.tables.mean_std` over the seeds; rows sorted by
    dataset and model. Methods without the unconstrained search (SASRec,
    the floors) have no row; with none at all the frame is empty.

    Fails naming the run when a seed of a listed model lacks the
    unconstrained search (evaluated by older code: re-evaluate it), when a
    listed model lacks one of the constrained metrics, or when a
    constrained invalid-ID rate is not 0 (the invariant is broken: a bug in
    the beam search, not a result to print).
    """
    test = runs[runs["split"] == SPLIT]
    has_free = test.loc[test["metric"] == "unconstrained_invalid_id_rate", ["dataset", "model"]].drop_duplicates()
    columns = ["dataset", "model", "seeds", *DECODING_METRICS]
    rows = []
    for dataset, model in has_free.itertuples(index=False):
        run = test[(test["dataset"] == dataset) & (test["model"] == model)]
        values = run.pivot(index="seed", columns="metric", values="value")
        without = values.index[values["unconstrained_invalid_id_rate"].isna()].tolist()
        if without:
            raise ValueError(
                f"decoding_table: {dataset}/{model} seed(s) {without} have no unconstrained_invalid_id_rate "
                "while other seeds do; re-evaluate them so every seed ran both searches"
            )
        missing = [m for m in DECODING_METRICS if m not in values.columns or values[m].isna().any()]
        if missing:
            raise ValueError(
                f"decoding_table: {dataset}/{model} lacks {SPLIT} metric(s) {missing} in some seed; "
                f"found {sorted(values.columns)}"
            )
        broken = values.index[values["invalid_id_rate"] != 0].tolist()
        if broken:
            raise ValueError(
                f"decoding_table: {dataset}/{model} seed(s) {broken} have a constrained invalid_id_rate "
                f"{values.loc[broken, 'invalid_id_rate'].tolist()}; trie-constrained search cannot emit an "
                "invalid ID, so this is a bug in the beam search"
            )
        rows.append(
            {
                "dataset": dataset,
                "model": model,
                "seeds": len(values),
                **{m: mean_std(values[m]) for m in DECODING_METRICS},
            }
        )
    return pd.DataFrame(rows, columns=columns).sort_values(["dataset", "model"], ignore_index=True)
