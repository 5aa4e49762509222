"""The report stage: tables, significance, ID quality, figures, README.

Inputs are small but contract-valid Parquet files written with
``write_table`` into a fake ``results/`` tree: 2 datasets x 2 models x 2
seeds. On dataset ``toy_a`` TIGER is built clearly better than SASRec, on
``toy_b`` clearly worse, so the best marker and the significance test have a
known right answer.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import zlib

import numpy as np
import pandas as pd
import pytest

from pmsid.data.contracts import ID_QUALITY, METRICS, PER_USER, TRAIN_LOG, write_table
from pmsid.evaluate.metrics import mean_metrics
from pmsid.report import tables
from pmsid.report.build import build_report

from conftest import REPORT_BASE_FILES, REPORT_TABLES, parse_cell, report_manifest, train_budget

DATASETS = ["toy_a", "toy_b"]
MODELS = ["sasrec", "tiger"]
SEEDS = [0, 1]
N_USERS = 150
KS = [1, 5, 10, 20]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_ranks(dataset: str, model: str, seed: int) -> np.ndarray:
    """Test ranks (float, NaN = not retrieved) for one run; the better model ranks targets high."""
    # crc32, not hash(): str hashes change between processes.
    rng = np.random.default_rng(zlib.crc32(f"{dataset}/{model}/{seed}".encode()))
    better = (dataset == "toy_a") == (model == "tiger")
    ranks = rng.integers(1, 15 if better else 40, size=N_USERS).astype(float)
    missed = rng.random(N_USERS) < (0.05 if better else 0.4)  # beyond the returned top list
    ranks[missed] = np.nan
    return ranks


def write_per_user(path, ranks: np.ndarray) -> None:
    users = np.arange(len(ranks))
    test = pd.DataFrame({"user_idx": users, "split": "test", "target_item": users % 7, "rank": ranks})
    # Validation rows the significance test must ignore: all ranks 1.
    valid = pd.DataFrame({"user_idx": users, "split": "valid", "target_item": users % 5, "rank": 1.0})
    df = pd.concat([test, valid], ignore_index=True)
    df["rank"] = df["rank"].astype("Int32")  # nullable: NaN -> null
    write_table(df, path, PER_USER)


def write_metrics(path, ranks: np.ndarray, decoding: dict | None = None) -> dict:
    """metrics.parquet of ``ranks``; ``decoding`` adds a generator's beam-search measures to the test split."""
    values = mean_metrics(ranks, KS)
    values["n_users"] = float(len(ranks))
    rows = [{"split": "test", "metric": k, "value": v} for k, v in {**values, **(decoding or {})}.items()]
    # A valid split with other numbers, so the table must select the test split.
    rows += [{"split": "valid", "metric": k, "value": 0.999} for k in values]
    write_table(pd.DataFrame(rows), path, METRICS)
    return values


RELEASES = {"toy_a": "release A of the toys", "toy_b": "release B of the toys"}

# TIGER's beam search measures; SASRec ranks by scores and has none.
DECODING = {
    (dataset, "tiger", seed): {
        "invalid_id_rate": 0.0, "unconstrained_invalid_id_rate": 0.4 + 0.1 * seed,
        "unconstrained_NDCG@10": 0.01 * (seed + 1), "unconstrained_Recall@10": 0.02 * (seed + 1),
    }
    for dataset in DATASETS
    for seed in SEEDS
}  # fmt: skip

QUALITY = {
    ("toy_a", "rqkmeans"): {"collision_rate": 0.0276, "uniqueness_before_dedup": 0.9724, "max_dedup_index": 3.0},
    ("toy_b", "rqkmeans"): {"collision_rate": 0.0124, "uniqueness_before_dedup": 0.9876, "max_dedup_index": 2.0},
    ("toy_a", "rqvae"): {"collision_rate": 0.051, "uniqueness_before_dedup": 0.949, "max_dedup_index": 5.0},
}


def level_values(key, metric: str) -> list[float]:
    """Per-level values of a tokenizer, distinct per key so that a mix-up shows."""
    base = {"utilization": 0.95, "normalized_entropy": 0.9, "prefix_utilization": 0.5}[metric]
    offset = 0.01 * list(QUALITY).index(key)
    return [round(base - 0.1 * level - offset, 4) for level in range(3)]


QUALITY_STEP = 0.002  # seed s's tokenizer: every figure but uniqueness plus s * QUALITY_STEP


def write_quality(path, key, seed: int) -> None:
    rows = [{"metric": m, "level": -1, "value": v + seed * QUALITY_STEP} for m, v in QUALITY[key].items()]
    rows.append({"metric": "uniqueness", "level": -1, "value": 1.0})
    for metric in ["utilization", "normalized_entropy", "prefix_utilization"]:
        values = level_values(key, metric)
        rows += [{"metric": metric, "level": lv, "value": v + seed * QUALITY_STEP} for lv, v in enumerate(values)]
    write_table(pd.DataFrame(rows), path, ID_QUALITY)


def write_train_log(path, model: str, seed: int) -> None:
    rows = []
    for epoch in range(5):
        for step_in_epoch in range(3):
            step = epoch * 3 + step_in_epoch
            last = step_in_epoch == 2
            rows.append(
                {
                    "epoch": epoch,
                    "step": step,
                    "loss": (3.0 if model == "tiger" else 8.0) / (1 + step) + 0.05 * seed,
                    "valid_ndcg10": (0.02 if model == "tiger" else 0.015) * epoch + 0.01 * seed if last else None,
                }
            )
    write_table(pd.DataFrame(rows), path, TRAIN_LOG, metadata=BUDGETS[(model, seed)])


# The train logs' budgets: TIGER's seed 0 runs to the cap still improving, its seed 1 stops early.
BUDGETS = {
    (model, seed): train_budget(5, 5 - seed, False, max_epochs=5, patience=2, max_samples_per_epoch=1000)
    for model in MODELS
    for seed in SEEDS
}
BUDGETS["tiger", 0] = train_budget(5, 5, False, max_epochs=5, patience=2)
BUDGETS["tiger", 1] = train_budget(4, 2, True, max_epochs=5, patience=2)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """Write the fake results tree, build the report once, return what the tests need."""
    root = tmp_path_factory.mktemp("report")
    metrics_paths, per_user_paths, train_paths, quality_paths = [], [], [], []
    expected = {}  # (dataset, model) -> {metric: [value per seed]}
    for dataset in DATASETS:
        for model in MODELS:
            for seed in SEEDS:
                run = root / "results" / "evaluate" / dataset / model / f"seed{seed}"
                ranks = fake_ranks(dataset, model, seed)
                write_per_user(run / "per_user.parquet", ranks)
                values = write_metrics(run / "metrics.parquet", ranks, DECODING.get((dataset, model, seed)))
                for metric, value in values.items():
                    expected.setdefault((dataset, model), {}).setdefault(metric, []).append(value)
                metrics_paths.append(str(run / "metrics.parquet"))
                per_user_paths.append(str(run / "per_user.parquet"))
                train = root / "results" / "train" / dataset / model / f"seed{seed}" / "train_log.parquet"
                write_train_log(train, model, seed)
                train_paths.append(str(train))
    for dataset, tokenizer in QUALITY:
        for seed in SEEDS:  # one tokenizer per seed
            path = root / "results" / "tokenize" / dataset / tokenizer / f"seed{seed}" / "quality.parquet"
            write_quality(path, (dataset, tokenizer), seed)
            quality_paths.append(str(path))

    out_dir = root / "results" / "report"
    manifest = report_manifest(metrics_paths, per_user_paths, quality_paths, train_paths)
    written = build_report(
        manifest, out_dir, exclude_history=True, baseline_model="sasrec", setting="quick", releases=RELEASES
    )
    return {
        "out": out_dir,
        "written": written,
        "expected": expected,
        "per_user_paths": per_user_paths,
        "metrics_paths": metrics_paths,
        "root": root,
    }


def test_all_outputs_written(report):
    out = report["out"]
    names = REPORT_BASE_FILES
    assert sorted(report["written"]) == sorted(str(out / n) for n in names)
    for name in names:
        assert (out / name).stat().st_size > 0, name


def test_main_table_means_and_stds_match_inputs(report):
    table = pd.read_csv(report["out"] / "main_comparison.csv")
    assert len(table) == len(DATASETS) * len(MODELS)
    assert list(table.columns) == ["dataset", "model", "seeds", *tables.DEFAULT_METRICS]
    for _, row in table.iterrows():
        assert row["seeds"] == len(SEEDS)
        for metric in tables.DEFAULT_METRICS:
            per_seed = np.array(report["expected"][(row["dataset"], row["model"])][metric])
            mean, std = parse_cell(row[metric])[:2]
            assert mean == pytest.approx(per_seed.mean(), abs=5e-5), (row["dataset"], row["model"], metric)
            assert std == pytest.approx(per_seed.std(ddof=1), abs=5e-5), (row["dataset"], row["model"], metric)


def test_best_marker_on_the_better_model(report):
    table = pd.read_csv(report["out"] / "main_comparison.csv")
    for _, row in table.iterrows():
        should_be_best = (row["dataset"] == "toy_a") == (row["model"] == "tiger")
        for metric in tables.DEFAULT_METRICS:
            cell = parse_cell(row[metric])
            # Two models: the worse one is the second best.
            assert (cell.best, cell.second) == (should_be_best, not should_be_best), (row["dataset"], row["model"])


def test_single_seed_shows_no_std_and_ties_are_both_marked():
    runs = pd.DataFrame(
        {
            "dataset": ["d"] * 3,
            "model": ["a", "b", "b"],
            "seed": [0, 0, 1],
            "split": ["test"] * 3,
            "metric": ["NDCG@10"] * 3,
            "value": [0.2, 0.1, 0.3],
        }
    )
    table = tables.main_table(runs, metrics=["NDCG@10"]).set_index("model")
    assert table.loc["a", "NDCG@10"] == "**0.2000**"  # one seed: no ± std
    assert table.loc["b", "NDCG@10"] == f"**0.2000 ± {np.std([0.1, 0.3], ddof=1):.4f}**"
    assert table.loc["a", "seeds"] == 1 and table.loc["b", "seeds"] == 2


def test_caption_states_the_protocol(report):
    md = (report["out"] / "main_comparison.md").read_text()
    header = md.splitlines()[0]
    for phrase in ["leave-one-out", "full ranking", "are excluded from the ranking", "MRR truncated at K = 20"]:
        assert phrase in header, phrase
    assert "not excluded" in tables.protocol_caption(False)
    assert tables.SEED_NOTE in header and tables.SEED_NOTE in (report["out"] / "README.md").read_text()


def test_every_table_and_the_readme_name_the_setting(report):
    note = tables.setting_note("quick")
    assert "under-trained" in note
    mds = sorted(report["out"].glob("*.md"))
    assert len(mds) >= 4
    data = "Data: toy_a = release A of the toys; toy_b = release B of the toys."
    for md in mds:
        start = f"{note} {data}" if md.name != "README.md" else f"# Report\n\n{note} {data}"
        assert md.read_text().startswith(start), md.name
    for tex in report["out"].glob("*.tex"):
        assert "Setting: quick" in tex.read_text(), tex.name
    with pytest.raises(ValueError, match="setting must be one of"):
        tables.setting_note("laptop")


def test_significance_tests_each_model_against_the_best_baseline(report):
    sig = pd.read_csv(report["out"] / "significance.csv")
    # Both models are baselines: the better one of each dataset is the reference, the other is tested.
    assert sorted(zip(sig["dataset"], sig["metric"], sig["model"], sig["baseline"])) == [
        ("toy_a", "NDCG@10", "sasrec", "tiger"), ("toy_a", "Recall@10", "sasrec", "tiger"),
        ("toy_b", "NDCG@10", "tiger", "sasrec"), ("toy_b", "Recall@10", "tiger", "sasrec"),
    ]  # fmt: skip
    for row in sig.itertuples():
        assert row.n_users == N_USERS  # test split only
        assert row.delta < 0 and row.ci95_low < row.delta < row.ci95_high < 0
        assert row.delta == pytest.approx(row.mean_model - row.mean_baseline)
        assert row.wilcoxon_p < 1e-6 and row.ttest_p < 1e-6
        assert row.wilcoxon_p <= row.wilcoxon_p_holm <= 4 * row.wilcoxon_p  # four comparisons
        assert row.significant
    main = pd.read_csv(report["out"] / "main_comparison.csv")
    for row in main.itertuples():
        worse = (row.dataset == "toy_a") == (row.model == "sasrec")
        for metric in tables.DEFAULT_METRICS:
            marked = parse_cell(main.loc[row.Index, metric]).marked
            assert marked == (worse and metric in tables.SIGNIFICANCE_METRICS), (row.dataset, row.model, metric)
    tex = (report["out"] / "main_comparison.tex").read_text()
    assert r"$^{\dagger}$" in tex and r"\underline{" in tex and tables.SIG_MARK not in tex


def test_significance_of_identical_models_is_not_significant(report, tmp_path):
    # A copy of SASRec under another name: every per-user difference is zero.
    paths = [p for p in report["per_user_paths"] if "/toy_a/sasrec/" in p]
    copies = []
    for p in paths:
        dst = tmp_path / p.split(str(report["root"]) + "/")[1].replace("/sasrec/", "/sasrec_copy/")
        dst.parent.mkdir(parents=True)
        shutil.copy(p, dst)
        copies.append(str(dst))
    sig = tables.significance(paths + copies, ["sasrec"], metrics=["NDCG@10"])
    assert len(sig) == 1
    row = sig.iloc[0]
    assert row["model"] == "sasrec_copy" and row["delta"] == 0.0
    assert row["ci95_low"] == row["ci95_high"] == 0.0
    assert row["wilcoxon_p"] == row["ttest_p"] == row["wilcoxon_p_holm"] == 1.0
    assert not row["significant"]


def write_runs(root, ranks_by_model: dict, seeds=(0, 1)) -> list[str]:
    """per_user.parquet of each model (the same ranks every seed) on dataset ``d``; their paths."""
    paths = []
    for model, ranks in ranks_by_model.items():
        for seed in seeds:
            path = root / f"results/evaluate/d/{model}/seed{seed}/per_user.parquet"
            write_per_user(path, np.asarray(ranks, dtype=float))
            paths.append(str(path))
    return paths


def test_significance_uses_user_metrics_with_null_as_miss(tmp_path):
    # Two users; the baseline misses user 1 (null rank) which the model ranks 1st.
    paths = write_runs(tmp_path, {"base": [1.0, np.nan], "m": [1.0, 1.0]})
    sig = tables.significance(paths, ["base"], metrics=["NDCG@10"]).iloc[0]
    assert sig["mean_baseline"] == pytest.approx(0.5) and sig["mean_model"] == pytest.approx(1.0)


def test_the_reference_is_the_best_baseline_per_metric(tmp_path):
    # a: every target at rank 8 (Recall@10 1, NDCG@10 1/log2(9) = 0.315); b: half at rank 1, half missed
    # (Recall@10 0.5, NDCG@10 0.5). a is the better baseline on Recall@10, b on NDCG@10.
    n = 40
    paths = write_runs(tmp_path, {"a": [8.0] * n, "b": [1.0, np.nan] * (n // 2), "c": [2.0] * n, "floor": [np.nan] * n})
    sig = tables.significance(paths, ["a", "b"]).set_index(["metric", "model"])
    assert set(sig.loc["Recall@10"].index) == {"b", "c", "floor"}
    assert set(sig.loc["NDCG@10"].index) == {"a", "c", "floor"}
    assert (sig.loc["Recall@10", "baseline"] == "a").all() and (sig.loc["NDCG@10", "baseline"] == "b").all()
    assert sig.loc[("NDCG@10", "c"), "delta"] == pytest.approx(1 / np.log2(3) - 0.5)
    # Holm across all six comparisons of the table.
    assert sig["wilcoxon_p_holm"].tolist() == pytest.approx(tables.holm(sig["wilcoxon_p"]).tolist())
    with pytest.raises(ValueError, match="none of the baselines"):
        tables.significance(paths, ["sasrec"])


def test_significance_matches_scipy_on_built_per_user_scores(tmp_path):
    """The table's numbers recomputed by hand: NDCG@10 per user from the ranks, the mean over seeds,
    scipy's Wilcoxon (zero_method wilcox) and paired t-test, Holm over the two comparisons, a t interval."""
    from scipy import stats

    rng = np.random.default_rng(3)
    n, seeds = 120, (0, 1, 2)
    ranks = {m: {s: rng.choice([*range(1, 31), np.nan], size=n) for s in seeds} for m in ("base", "m1", "m2")}
    ranks["m1"] = {s: np.where(rng.random(n) < 0.3, 1.0, r) for s, r in ranks["m1"].items()}  # m1 is better
    paths = []
    for model, by_seed in ranks.items():
        for seed, r in by_seed.items():
            path = tmp_path / f"results/evaluate/d/{model}/seed{seed}/per_user.parquet"
            write_per_user(path, r)
            paths.append(str(path))

    def ndcg(r):  # by hand: 1 / log2(rank + 1) inside the top 10, else 0 (a null rank is a miss)
        return np.where(np.nan_to_num(r, nan=99) <= 10, 1 / np.log2(np.nan_to_num(r, nan=99) + 1), 0.0)

    per_user = {m: np.mean([ndcg(r) for r in by_seed.values()], axis=0) for m, by_seed in ranks.items()}
    sig = tables.significance(paths, ["base"], metrics=["NDCG@10"]).set_index("model")
    raw = {}
    for model in ("m1", "m2"):
        diff = per_user[model] - per_user["base"]
        row = sig.loc[model]
        raw[model] = stats.wilcoxon(diff, zero_method="wilcox").pvalue
        assert row["wilcoxon_p"] == pytest.approx(raw[model], rel=1e-12)
        assert row["ttest_p"] == pytest.approx(stats.ttest_rel(per_user[model], per_user["base"]).pvalue, rel=1e-12)
        half = stats.t.ppf(0.975, n - 1) * diff.std(ddof=1) / np.sqrt(n)
        assert (row["ci95_low"], row["delta"], row["ci95_high"]) == pytest.approx(
            (diff.mean() - half, diff.mean(), diff.mean() + half), rel=1e-9
        )
    # Holm over two: the smaller p doubled, the larger one at least that and itself.
    small, large = sorted(raw, key=raw.get)
    assert sig.loc[small, "wilcoxon_p_holm"] == pytest.approx(min(1, 2 * raw[small]))
    assert sig.loc[large, "wilcoxon_p_holm"] == pytest.approx(min(1, max(2 * raw[small], raw[large])))
    assert sig.loc["m1", "significant"] and sig.loc["m1", "delta"] > 0


def test_one_seed_gives_a_delta_but_no_test(tmp_path):
    paths = write_runs(tmp_path, {"base": [np.nan] * 30, "m": [1.0] * 30}, seeds=(0,))
    row = tables.significance(paths, ["base"], metrics=["NDCG@10"]).iloc[0]
    assert row["delta"] == pytest.approx(1.0)
    for column in ["ci95_low", "ci95_high", "wilcoxon_p", "ttest_p", "wilcoxon_p_holm", "ttest_p_holm"]:
        assert np.isnan(row[column]), column
    assert not row["significant"]
    # With two seeds the same users are a clear difference.
    two = write_runs(tmp_path / "two", {"base": [np.nan] * 30, "m": [1.0] * 30})
    assert tables.significance(two, ["base"], metrics=["NDCG@10"]).iloc[0]["significant"]


def test_holm_matches_the_hand_computed_step_down():
    # m = 4 tested: sorted 0.005, 0.01, 0.03, 0.04 -> 4 x 0.005 = 0.02, 3 x 0.01 = 0.03,
    # 2 x 0.03 = 0.06, then max(0.06, 1 x 0.04) = 0.06; NaN stays NaN and does not count.
    got = tables.holm([0.01, 0.04, 0.03, np.nan, 0.005])
    assert got[[0, 1, 2, 4]].tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert np.isnan(got[3])
    assert tables.holm([0.6, 0.9]).tolist() == [1.0, 1.0]  # capped at 1
    assert tables.holm([]).size == 0


def test_mean_difference_ci_is_the_t_interval():
    # diff 1, 2, 3: mean 2, sd 1, se 1/sqrt(3), t(0.975, df 2) = 4.302653 -> half-width 2.484138.
    mean, low, high = tables.mean_difference_ci(np.array([1.0, 2.0, 3.0]))
    assert (
        mean == 2.0 and low == pytest.approx(2 - 2.484138, abs=1e-6) and high == pytest.approx(2 + 2.484138, abs=1e-6)
    )
    assert np.isnan(tables.mean_difference_ci(np.array([1.0]))[1])


def test_training_budget_states_best_epochs_and_early_stopping(report):
    table = pd.read_csv(report["out"] / "training_budget.csv", dtype=str).set_index(["dataset", "model"])
    assert sorted(table.index) == [(d, m) for d in DATASETS for m in MODELS]
    for dataset in DATASETS:
        tiger, sasrec = table.loc[(dataset, "tiger")], table.loc[(dataset, "sasrec")]
        assert (tiger["epochs_run"], tiger["best_epoch"]) == ("5, 4", "5, 2")
        assert (tiger["stopped_early"], tiger["still_improving"], tiger["samples_per_epoch"]) == ("1/2", "1/2", "all")
        assert (sasrec["epochs_run"], sasrec["best_epoch"], sasrec["max_epochs"]) == ("5", "5, 4", "5")
        # Seed 1 of SASRec peaked before its last epoch without stopping: not still improving.
        assert (sasrec["stopped_early"], sasrec["still_improving"], sasrec["samples_per_epoch"]) == (
            "0/2",
            "1/2",
            "1000",
        )


def test_a_train_log_without_its_budget_is_named(tmp_path):
    from pmsid.report import training

    path = tmp_path / "results/train/d/m/seed0/train_log.parquet"
    write_table(pd.DataFrame({"epoch": [1], "step": [1], "loss": [1.0], "valid_ndcg10": [0.1]}), path, TRAIN_LOG)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*lacks"):
        training.collect_budgets([str(path)])


def test_decoding_table_holds_the_generators_both_searches(report):
    table = pd.read_csv(report["out"] / "decoding.csv", dtype=str).set_index(["dataset", "model"])
    assert sorted(table.index) == [(d, "tiger") for d in DATASETS]  # SASRec has no beam search
    row = table.loc[("toy_a", "tiger")]
    assert row["invalid_id_rate"] == f"0.0000 {tables.PM} 0.0000"
    assert row["unconstrained_invalid_id_rate"] == f"0.4500 {tables.PM} {np.std([0.4, 0.5], ddof=1):.4f}"
    caption = (report["out"] / "decoding.md").read_text().splitlines()[0]
    assert "0 by construction" in caption and "leave-one-out" in caption


def test_id_quality_table_is_mean_and_std_over_the_seeds_tokenizers(report):
    table = pd.read_csv(report["out"] / "id_quality.csv").set_index(["dataset", "tokenizer"])
    assert set(table.index) == set(QUALITY) and (table["seeds"] == len(SEEDS)).all()
    shifts = np.array(SEEDS) * QUALITY_STEP
    expected_std = shifts.std(ddof=1)
    for key, whole in QUALITY.items():
        cells = dict(whole)
        for metric in ["utilization", "normalized_entropy"]:
            cells.update({f"{metric}_L{level}": v for level, v in enumerate(level_values(key, metric))})
        for column, value in cells.items():
            mean, std = parse_cell(table.loc[key, column])[:2]
            assert mean == pytest.approx(value + shifts.mean(), abs=5e-5), (key, column)
            assert std == pytest.approx(expected_std, abs=5e-5), (key, column)
        assert parse_cell(table.loc[key, "uniqueness"])[:2] == (1.0, 0.0)


def test_a_tokenizer_quality_path_names_its_seed():
    path = "x/results/tokenize/ml-100k/rqkmeans/seed3/quality.parquet"
    assert tables.parse_tokenizer_path(path) == {"dataset": "ml-100k", "tokenizer": "rqkmeans", "seed": 3}
    with pytest.raises(ValueError, match="seed"):
        tables.parse_tokenizer_path("results/tokenize/ml-100k/rqkmeans/quality.parquet")


def test_pngs_are_valid_images(report):
    import matplotlib.image

    for name in ["codebook_utilization.png", "training_curves.png", "metric_comparison.png"]:
        path = report["out"] / name
        assert path.read_bytes()[:8] == PNG_MAGIC, name
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100, name
        assert image.std() > 0, f"{name} is blank"


def _tex_problems(tex: str) -> list[str]:
    """Characters that would break LaTeX outside commands and math."""
    problems = []
    if re.search(r"(?<!\\)_", tex):
        problems.append("unescaped _")
    if re.search(r"(?<!\\)%", tex):
        problems.append("unescaped %")
    if re.search(r"[<>]", tex):
        problems.append("raw < or > (prints as inverted punctuation in OT1)")
    if "±" in tex:
        problems.append("raw ± (use $\\pm$)")
    if tex.count("$") % 2:
        problems.append("unbalanced $")
    if tex.count("{") - tex.count(r"\{") != tex.count("}") - tex.count(r"\}"):
        problems.append("unbalanced braces")
    return problems


@pytest.mark.parametrize("stem", REPORT_TABLES)
def test_tex_is_escaped(report, stem):
    tex = (report["out"] / f"{stem}.tex").read_text()
    assert r"\begin{tabular}" in tex and r"\caption{" in tex and r"\label{tab:" in tex
    assert _tex_problems(tex) == []
    assert r"toy\_a" in tex  # the dataset name's underscore, escaped
    if stem == "main_comparison":
        assert r"$\pm$" in tex and r"\textbf{" in tex and "**" not in tex

    if shutil.which("pdflatex") is None:
        return  # no TeX here: the text checks above stand in for compiling
    doc = report["out"].parent / f"compile_{stem}"
    doc.mkdir(exist_ok=True)
    (doc / "doc.tex").write_text(
        "\\documentclass{article}\\usepackage{booktabs}\\usepackage[T1]{fontenc}\n"
        f"\\begin{{document}}\n{tex}\n\\end{{document}}\n"
    )
    result = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
        cwd=doc, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:]


def test_html_tables_carry_caption_markers_and_every_row(report):
    from html.parser import HTMLParser

    class Cells(HTMLParser):
        def __init__(self):
            super().__init__()
            self.rows, self.tags, self.caption = [], [], ""
            self._in = None

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            if tag == "tr":
                self.rows.append([])
            if tag in ("td", "th", "caption"):
                self._in = tag
                if tag != "caption":
                    self.rows[-1].append("")

        def handle_endtag(self, tag):
            if tag in ("td", "th", "caption"):
                self._in = None

        def handle_data(self, data):
            if self._in == "caption":
                self.caption += data
            elif self._in:
                self.rows[-1][-1] += data

    for stem in REPORT_TABLES:
        parser = Cells()
        parser.feed((report["out"] / f"{stem}.html").read_text())
        csv = pd.read_csv(report["out"] / f"{stem}.csv")
        assert parser.caption.startswith(tables.setting_note("quick")), stem
        assert parser.rows[0] == list(csv.columns), stem
        assert len(parser.rows) == len(csv) + 1, stem
    main = (report["out"] / "main_comparison.html").read_text()
    assert "<strong>" in main and "<u>" in main and tables.SIG_MARK in main and "**" not in main


def test_html_cells_are_escaped(tmp_path):
    frame = pd.DataFrame({"a<b": ["<script>x</script>", "**1.0**"]})
    tables.write_table_formats(frame, tmp_path / "t", "caption & <more>")
    page = (tmp_path / "t.html").read_text()
    assert "<script>x" not in page and "&lt;script&gt;x&lt;/script&gt;" in page
    assert "<strong>1.0</strong>" in page and "a&lt;b" in page and "caption &amp; &lt;more&gt;" in page


def test_readme_embeds_tables_and_links_figures(report):
    readme = (report["out"] / "README.md").read_text()
    for stem in REPORT_TABLES:
        table_md = (report["out"] / f"{stem}.md").read_text().strip()
        assert table_md in readme, stem
    for name in ["codebook_utilization.png", "training_curves.png", "metric_comparison.png"]:
        assert f"]({name})" in readme, name


def test_run_paths_of_the_other_history_protocol_parse():
    path = "results/evaluate/toy_a/tiger/seed2/history_excluded/metrics.parquet"
    assert tables.parse_run_path(path, "evaluate", "metrics.parquet") == {
        "dataset": "toy_a",
        "model": "tiger",
        "seed": 2,
    }
    with pytest.raises(ValueError, match="cannot read dataset/model/seed"):
        tables.parse_run_path("results/evaluate/toy_a/tiger/seed2/other/metrics.parquet", "evaluate", "metrics.parquet")


def test_collect_runs_names_a_badly_placed_file(tmp_path):
    bad = tmp_path / "somewhere" / "metrics.parquet"
    write_table(pd.DataFrame({"split": ["test"], "metric": ["NDCG@10"], "value": [0.1]}), bad, METRICS)
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        tables.collect_runs([str(bad)])


def test_main_table_refuses_mixed_user_counts(report):
    runs = tables.collect_runs(report["metrics_paths"])
    bump = (runs["metric"] == "n_users") & (runs["model"] == "tiger") & (runs["dataset"] == "toy_a")
    runs.loc[bump, "value"] += 1
    with pytest.raises(ValueError, match="toy_a"):
        tables.main_table(runs)


def test_collect_runs_refuses_a_different_protocol(tmp_path):
    # A metrics file that records exclude_history=False cannot go into a table built with True.
    path = tmp_path / "results/evaluate/d/m/seed0/metrics.parquet"
    frame = pd.DataFrame({"split": ["test"], "metric": ["NDCG@10"], "value": [0.1]})
    write_table(frame, path, METRICS, metadata={"exclude_history": False})
    assert len(tables.collect_runs([str(path)], exclude_history=False)) == 1
    with pytest.raises(ValueError, match="exclude_history"):
        tables.collect_runs([str(path)], exclude_history=True)
