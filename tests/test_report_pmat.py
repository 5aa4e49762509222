"""The report's PMAT section: ablation, updates, preference recovery, ID quality, figures.

A fake ``results/`` tree with contract-valid files: 2 datasets x 2 seeds.
``synth`` has planted modality preferences, ``ml`` has none. On both,
``pmat_full`` ranks every target higher than ``pmat_global`` and
``pmat_static`` ranks exactly like ``pmat_global``, so the paired tests
have a known right answer; SASRec is there as the main report's baseline.
"""

from __future__ import annotations

import json
import re
import zlib

import numpy as np
import pandas as pd
import pytest

from pmsid.data.contracts import ID_QUALITY, METRICS, PER_USER, TRAIN_LOG, USER_WEIGHTS, write_table
from pmsid.evaluate.metrics import mean_metrics
from pmsid.report import pmat, tables
from pmsid.report.build import build_report

from conftest import REPORT_BASE_FILES, TABLE_FORMATS, parse_cell, report_manifest, section_rows, train_budget

DATASETS = {"synth": ["text", "image"], "ml": ["text", "behaviour"]}
SEEDS = [0, 1]
MODELS = ["sasrec", "tiger", "pmat_global", "pmat_static", "pmat_full"]
N_USERS = 80
KS = [5, 10, 20]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PMAT_TABLES = ["pmat_ablation", "pmat_updates", "pmat_preference", "pmat_id_quality"]
PMAT_FIGURES = ["pmat_weights.png", "pmat_semantic_consistency.png"]

# Per-seed preference recovery on synth; ml has no truth.
SPEARMAN = {0: 0.8, 1: 0.6}
ACC_MEDIAN = {0: 0.9, 1: 0.7}
AUC = {0: 0.95, 1: 0.85}
# Replay summaries: (dataset, seed) -> the keys that differ between runs.
REPLAY = {
    ("synth", 0): {"n_fired": 10, "n_bound_violations": 1, "max_bound_ratio": 0.7, "mean_lambda_fired": 0.2},
    ("synth", 1): {"n_fired": 20, "n_bound_violations": 2, "max_bound_ratio": 1.3, "mean_lambda_fired": 0.4},
    ("ml", 0): {"n_fired": 4, "n_bound_violations": 0, "max_bound_ratio": 0.5, "mean_lambda_fired": 0.3},
    ("ml", 1): {"n_fired": 0, "n_bound_violations": 0, "max_bound_ratio": None, "mean_lambda_fired": None},
}


def fake_ranks(dataset: str, model: str, seed: int) -> np.ndarray:
    """pmat_static = pmat_global exactly; pmat_full ranks every target at least as high, most strictly higher."""
    base = "pmat_global" if model in ("pmat_static", "pmat_full") else model
    rng = np.random.default_rng(zlib.crc32(f"{dataset}/{base}/{seed}".encode()))
    ranks = rng.integers(2, 30, size=N_USERS).astype(float)
    if model == "pmat_full":
        ranks = np.maximum(1.0, ranks - 8)
    return ranks


def write_run(root, dataset: str, model: str, seed: int) -> tuple[str, str, dict]:
    run = root / "results" / "evaluate" / dataset / model / f"seed{seed}"
    ranks = fake_ranks(dataset, model, seed)
    users = np.arange(N_USERS)
    per_user = pd.DataFrame({"user_idx": users, "split": "test", "target_item": users % 7, "rank": ranks})
    per_user["rank"] = per_user["rank"].astype("Int32")
    write_table(per_user, run / "per_user.parquet", PER_USER)
    values = mean_metrics(ranks, KS)
    values["n_users"] = float(N_USERS)
    rows = pd.DataFrame([{"split": "test", "metric": k, "value": v} for k, v in values.items()])
    write_table(rows, run / "metrics.parquet", METRICS)
    return str(run / "metrics.parquet"), str(run / "per_user.parquet"), values


def write_train_log(root, dataset: str, model: str, seed: int) -> str:
    path = root / "results" / "train" / dataset / model / f"seed{seed}" / "train_log.parquet"
    rows = pd.DataFrame({"epoch": [1, 2], "step": [0, 1], "loss": [2.0, 1.0 + seed], "valid_ndcg10": [0.1, 0.2]})
    write_table(rows, path, TRAIN_LOG, metadata=train_budget())
    return str(path)


def write_weights(path, dataset: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    second = rng.uniform(0.05, 0.95, size=N_USERS)
    planted = np.where(np.arange(N_USERS) % 2 == 0, "image", "text") if dataset == "synth" else [None] * N_USERS
    first, other = DATASETS[dataset]
    frame = pd.concat(
        [
            pd.DataFrame({"user_idx": np.arange(N_USERS), "modality": first, "weight": 1 - second}),
            pd.DataFrame({"user_idx": np.arange(N_USERS), "modality": other, "weight": second}),
        ]
    )
    frame["planted_preference"] = np.concatenate([planted, planted])
    write_table(frame, path, USER_WEIGHTS)


def preference(dataset: str, seed: int) -> dict:
    if dataset != "synth":  # as pmat.stages writes it: no statistics without truth
        return {"available": False, "reason": "the dataset has no planted preferences", "seed": seed}
    return {
        "available": True, "modality": "image", "n_users": N_USERS, "spearman": SPEARMAN[seed],
        "spearman_p": 1e-4 * (seed + 1), "auc": AUC[seed], "accuracy_median_threshold": ACC_MEDIAN[seed],
        "accuracy_half_threshold": 0.75, "reason": None,
    }  # fmt: skip


def replay_summary(dataset: str, seed: int) -> dict:
    varying = REPLAY[(dataset, seed)]
    fired = varying["n_fired"] > 0
    return {
        "n_users": N_USERS, "n_events": 100, "fire_rate": varying["n_fired"] / 100, "mean_drift": 0.1,
        "mean_churn_per_update": 0.05 if fired else None, "mean_future_churn_per_update": 0.02 if fired else None,
        "n_prototype_changes": 3, "n_users_prototype_changed": 2 + seed, "window": 5, "theta": 0.3,
        "lambda_max": 0.5, "sharpness": 10.0, "n_codes": 64, "n_prototypes": 4, "n_check_items": 50,
        "mean_consistency_loss": 0.01 * (seed + 1), **varying,
    }  # fmt: skip


def gap(dataset: str, variant: str, seed: int, level: int) -> float:
    return 0.3 - 0.1 * level + (0.05 if variant == "personalized" else 0.0) + 0.01 * seed + (dataset == "ml") * 0.1


def write_pmat_quality(path, dataset: str, variant: str, seed: int) -> None:
    whole = {
        "n_prototypes": 1.0 if variant == "global" else 4.0,
        "collision_rate": 0.1 + 0.02 * seed,
        "uniqueness_before_dedup": 0.9 - 0.02 * seed,
        "uniqueness": 1.0,
        "max_dedup_index": 2.0,
    }
    if variant == "personalized" and dataset == "synth":  # P >= 3 and distances not constant
        whole |= {"personalization_spearman_rho": 0.5 + 0.1 * seed, "personalization_mantel_p": 0.04}
    rows = [{"metric": m, "level": -1, "value": v} for m, v in whole.items()]
    for level in range(3):
        rows.append({"metric": "semantic_consistency_gap", "level": level, "value": gap(dataset, variant, seed, level)})
        rows.append({"metric": "utilization", "level": level, "value": 0.9 - 0.1 * level})
        rows.append({"metric": "normalized_entropy", "level": level, "value": 0.8})
    write_table(pd.DataFrame(rows), path, ID_QUALITY)


def write_tree(root) -> dict:
    """Every input of the report; returns the path lists and expected metric values."""
    paths = {k: [] for k in ["metrics", "per_user", "train", "quality", "weights", "preference", "replay", "pq"]}
    expected = {}  # (dataset, model) -> {metric: [per seed]}
    for dataset in DATASETS:
        for seed in SEEDS:
            for model in MODELS:
                metrics_path, per_user_path, values = write_run(root, dataset, model, seed)
                paths["metrics"].append(metrics_path)
                paths["per_user"].append(per_user_path)
                for metric, value in values.items():
                    expected.setdefault((dataset, model), {}).setdefault(metric, []).append(value)
            for model in ["sasrec", "pmat_global", "pmat_personalized"]:
                paths["train"].append(write_train_log(root, dataset, model, seed))
            pmat_dir = root / "results" / "pmat" / dataset / f"seed{seed}"
            write_weights(pmat_dir / "weights.parquet", dataset, seed)
            (pmat_dir / "replay").mkdir(parents=True)
            (pmat_dir / "preference.json").write_text(json.dumps(preference(dataset, seed)))
            (pmat_dir / "replay" / "summary.json").write_text(json.dumps(replay_summary(dataset, seed)))
            paths["weights"].append(str(pmat_dir / "weights.parquet"))
            paths["preference"].append(str(pmat_dir / "preference.json"))
            paths["replay"].append(str(pmat_dir / "replay" / "summary.json"))
            for variant in ["global", "personalized"]:
                path = root / "results" / "tokenize" / dataset / f"pmat_{variant}" / f"seed{seed}" / "quality.parquet"
                write_pmat_quality(path, dataset, variant, seed)
                paths["pq"].append(str(path))
        # The ordinary (non-PMAT) ID-quality table still needs its own tokenizer file.
        rq = root / "results" / "tokenize" / dataset / "rqkmeans" / "seed0" / "quality.parquet"
        write_table(
            pd.DataFrame(
                [{"metric": m, "level": -1, "value": 0.5} for m in tables.WHOLE_ID_METRICS]
                + [{"metric": "utilization", "level": 0, "value": 0.9}]
            ),
            rq,
            ID_QUALITY,
        )
        paths["quality"].append(str(rq))
    return {"paths": paths, "expected": expected}


def pmat_kwargs(paths: dict) -> dict:
    return {
        "pmat_weights_paths": paths["weights"],
        "pmat_preference_paths": paths["preference"],
        "pmat_replay_paths": paths["replay"],
        "pmat_quality_paths": paths["pq"],
    }


def run_report(paths: dict, out_dir, **pmat_paths) -> list[str]:
    manifest = report_manifest(paths["metrics"], paths["per_user"], paths["quality"], paths["train"], **pmat_paths)
    return build_report(manifest, out_dir, exclude_history=True, baseline_model="sasrec", setting="thesis")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("pmat_report")
    tree = write_tree(root)
    with_pmat = root / "results" / "report"
    without_pmat = root / "results" / "report_plain"
    written = run_report(tree["paths"], with_pmat, **pmat_kwargs(tree["paths"]))
    written_plain = run_report(tree["paths"], without_pmat)
    return {
        **tree,
        "root": root,
        "out": with_pmat,
        "written": written,
        "plain": without_pmat,
        "plain_written": written_plain,
    }


def test_pmat_tables_name_the_setting(report):
    for stem in ["pmat_ablation", "pmat_updates", "pmat_preference", "pmat_id_quality"]:
        assert (report["out"] / f"{stem}.md").read_text().startswith("Setting: thesis. "), stem


def test_pmat_outputs_written(report):
    out = report["out"]
    names = REPORT_BASE_FILES + [f"{s}.{e}" for s in PMAT_TABLES for e in TABLE_FORMATS] + PMAT_FIGURES
    assert sorted(report["written"]) == sorted(str(out / n) for n in names)
    for name in PMAT_FIGURES:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name


def test_without_pmat_paths_no_pmat_files(report):
    plain = report["plain"]
    assert sorted(report["plain_written"]) == sorted(str(plain / n) for n in REPORT_BASE_FILES)
    assert not list(plain.glob("pmat_*"))
    readme = (plain / "README.md").read_text()
    assert "pmat_ablation" not in readme and "### PMAT" not in readme  # no PMAT table or figure


def test_pmat_models_with_underscores_are_in_the_main_table(report):
    main = pd.read_csv(report["out"] / "main_comparison.csv")
    assert set(main["model"]) == set(MODELS)


def test_ablation_rows_and_mean_std(report):
    table = pd.read_csv(report["out"] / "pmat_ablation.csv")
    assert list(table[["dataset", "model"]].itertuples(index=False, name=None)) == [
        (d, m) for d in sorted(DATASETS) for m in section_rows("pmat").methods if m in MODELS
    ]
    for _, row in table.iterrows():
        assert row["seeds"] == len(SEEDS)
        for metric in pmat.ABLATION_METRICS:
            per_seed = np.array(report["expected"][(row["dataset"], row["model"])][metric])
            mean, std = parse_cell(row[metric])[:2]
            assert mean == pytest.approx(per_seed.mean(), abs=5e-5), (row["dataset"], row["model"], metric)
            assert std == pytest.approx(per_seed.std(ddof=1), abs=5e-5), (row["dataset"], row["model"], metric)
        # pmat_full is better by construction, so it carries the best marker.
        assert str(row["NDCG@10"]).startswith("**") == (row["model"] == "pmat_full")


def test_ablation_paired_test_against_global(report):
    table = pd.read_csv(report["out"] / "pmat_ablation.csv").set_index(["dataset", "model"])
    for dataset in DATASETS:
        full, static, glob = (table.loc[(dataset, m)] for m in ["pmat_full", "pmat_static", "pmat_global"])
        assert full["wilcoxon_p"] < 1e-6 and full["ttest_p"] < 1e-6 and bool(full["significant"])
        assert full["delta_NDCG@10"] > 0
        assert static["wilcoxon_p"] == 1.0 and static["delta_NDCG@10"] == 0.0 and not bool(static["significant"])
        assert np.isnan(glob["wilcoxon_p"]) and np.isnan(glob["delta_NDCG@10"])
    caption = (report["out"] / "pmat_ablation.md").read_text().splitlines()[0]
    for phrase in ["pmat_global = ", "pmat_static = ", "pmat_full = ", "leave-one-out", "full ranking"]:
        assert phrase in caption, phrase


def test_updates_table_sums_violations_and_means_the_rest(report):
    table = pd.read_csv(report["out"] / "pmat_updates.csv").set_index("dataset")
    assert table.loc["synth", "n_bound_violations_total"] == 3
    assert table.loc["ml", "n_bound_violations_total"] == 0
    assert table.loc["synth", "n_fired"] == pytest.approx(15.0)
    assert table.loc["synth", "max_bound_ratio"] == pytest.approx(1.3)
    # ml seed 1 fired nothing: its null means are left out, not counted as 0.
    assert table.loc["ml", "mean_lambda_fired"] == pytest.approx(0.3)
    assert table.loc["ml", "max_bound_ratio"] == pytest.approx(0.5)
    assert table.loc["synth", "mean_consistency_loss"] == pytest.approx(0.015)
    assert table.loc["synth", "theta"] == pytest.approx(0.3) and table.loc["synth", "n_prototypes"] == 4


def test_preference_table_only_for_the_dataset_with_truth(report):
    table = pd.read_csv(report["out"] / "pmat_preference.csv")
    assert list(table["dataset"]) == ["synth"]
    row = table.iloc[0]
    assert parse_cell(row["spearman"])[:2] == pytest.approx((0.7, np.std([0.8, 0.6], ddof=1)), abs=5e-5)
    assert parse_cell(row["accuracy_median_threshold"])[:2] == pytest.approx(
        (0.8, np.std([0.9, 0.7], ddof=1)), abs=5e-5
    )
    assert parse_cell(row["auc"])[:2] == pytest.approx((0.9, np.std([0.95, 0.85], ddof=1)), abs=5e-5)
    assert row["spearman_p_max"] == pytest.approx(2e-4) and row["n_users"] == N_USERS
    assert "not scored: ml" in (report["out"] / "pmat_preference.md").read_text()


def test_preference_table_without_any_truth_says_so():
    prefs = pd.DataFrame([{"dataset": "ml", "seed": 0, **preference("ml", 0)}])
    table = pmat.preference_table(prefs)
    assert len(table) == 1 and "no dataset has planted" in table.loc[0, "note"]
    assert "the dataset has no planted preferences" in table.loc[0, "note"]


def test_pmat_id_quality_table(report):
    table = pd.read_csv(report["out"] / "pmat_id_quality.csv").set_index(["dataset", "variant"])
    assert set(table.index) == {(d, v) for d in DATASETS for v in ["global", "personalized"]}
    assert table.loc[("synth", "personalized"), "n_prototypes"] == 4
    assert table.loc[("synth", "global"), "collision_rate"] == pytest.approx(0.11)
    assert table.loc[("synth", "personalized"), "personalization_spearman_rho"] == pytest.approx(0.55)
    assert np.isnan(table.loc[("ml", "personalized"), "personalization_spearman_rho"])
    for level in range(3):
        expected = np.mean([gap("ml", "personalized", s, level) for s in SEEDS])
        assert table.loc[("ml", "personalized"), f"semantic_consistency_gap_L{level}"] == pytest.approx(expected)
        assert table.loc[("ml", "global"), f"utilization_L{level}"] == pytest.approx(0.9 - 0.1 * level)


def test_readme_has_the_pmat_sections(report):
    readme = (report["out"] / "README.md").read_text()
    for title in [
        "PMAT ablation",
        "PMAT drift-triggered updates",
        "PMAT preference recovery",
        "PMAT semantic-ID quality",
    ]:
        assert f"### {title}" in readme, title
    for stem in PMAT_TABLES:
        assert (report["out"] / f"{stem}.md").read_text().strip() in readme, stem
    for name in PMAT_FIGURES:
        assert f"]({name})" in readme, name


@pytest.mark.parametrize("stem", PMAT_TABLES)
def test_pmat_tex_is_escaped(report, stem):
    tex = (report["out"] / f"{stem}.tex").read_text()
    assert r"\begin{tabular}" in tex and r"\label{tab:" + stem.replace("_", "-") + "}" in tex
    assert not re.search(r"(?<!\\)_", tex) and "±" not in tex and "**" not in tex


def test_json_missing_key_fails_naming_path_and_key(report, tmp_path):
    path = tmp_path / "results/pmat/synth/seed0/replay/summary.json"
    path.parent.mkdir(parents=True)
    summary = replay_summary("synth", 0)
    del summary["n_fired"]
    path.write_text(json.dumps(summary))
    with pytest.raises(ValueError, match=re.escape(str(path)) + r".*'n_fired'"):
        pmat.collect_replays([str(path)])

    # A dataset with truth must give the statistics.
    pref = tmp_path / "results/pmat/synth/seed0/preference.json"
    pref.write_text(json.dumps({k: v for k, v in preference("synth", 0).items() if k != "spearman"}))
    with pytest.raises(ValueError, match=re.escape(str(pref)) + r".*'spearman'"):
        pmat.collect_preferences([str(pref)])
    # Without truth the statistics may be absent.
    pref.write_text(json.dumps({"available": False, "reason": "no truth"}))
    assert not pmat.collect_preferences([str(pref)])["available"].iloc[0]


def write_pmat_only(report, out, **kwargs) -> None:
    """The PMAT section alone, so that a failing input fails fast."""
    paths = report["paths"]
    runs = tables.collect_runs(paths["metrics"])
    inputs = [kwargs[f"pmat_{k}_paths"] for k in ["weights", "preference", "replay", "quality"]]
    pmat.write_pmat_report(runs, paths["per_user"], *inputs, out=out, exclude_history=True, rows=section_rows("pmat"))


def test_missing_file_fails_naming_it(report, tmp_path):
    kwargs = pmat_kwargs(report["paths"])
    missing = str(tmp_path / "results/pmat/synth/seed2/replay/summary.json")
    kwargs["pmat_replay_paths"] = [*kwargs["pmat_replay_paths"], missing]
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        write_pmat_only(report, tmp_path / "out", **kwargs)


def test_partial_pmat_inputs_fail(report, tmp_path):
    kwargs = pmat_kwargs(report["paths"])
    kwargs["pmat_quality_paths"] = []
    with pytest.raises(ValueError, match="pmat_quality_paths"):
        run_report(report["paths"], tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()  # refused before any work


def test_runs_must_match_across_pmat_inputs(report, tmp_path):
    kwargs = pmat_kwargs(report["paths"])
    kwargs["pmat_weights_paths"] = kwargs["pmat_weights_paths"][1:]  # synth seed 0 lacks weights
    with pytest.raises(ValueError, match=r"weights\.parquet.*synth"):
        write_pmat_only(report, tmp_path / "out", **kwargs)


def test_replay_settings_must_agree_across_seeds(report):
    replays = pmat.collect_replays(report["paths"]["replay"])
    replays.loc[(replays["dataset"] == "ml") & (replays["seed"] == 1), "theta"] = 0.9
    with pytest.raises(ValueError, match="'ml'.*'theta'"):
        pmat.updates_table(replays)


def test_weights_must_sum_to_one(tmp_path):
    path = tmp_path / "results/pmat/d/seed0/weights.parquet"
    frame = pd.DataFrame(
        {"user_idx": [0, 0], "modality": ["text", "image"], "weight": [0.5, 0.6], "planted_preference": [None, None]}
    )
    write_table(frame, path, USER_WEIGHTS)
    with pytest.raises(ValueError, match="do not sum to 1"):
        pmat.collect_weights([str(path)])


def test_badly_placed_pmat_file_fails(tmp_path):
    with pytest.raises(ValueError, match="results/pmat/"):
        pmat.parse_pmat_path(tmp_path / "weights.parquet", "weights.parquet")
    with pytest.raises(ValueError, match="not a PMAT one"):
        pmat.parse_pmat_quality_path("results/tokenize/d/rqkmeans/seed0/quality.parquet")
