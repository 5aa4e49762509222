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

from conftest import report_manifest

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


def write_metrics(path, ranks: np.ndarray) -> dict:
    values = mean_metrics(ranks, KS)
    values["n_users"] = float(len(ranks))
    rows = [{"split": "test", "metric": k, "value": v} for k, v in values.items()]
    # A valid split with other numbers, so the table must select the test split.
    rows += [{"split": "valid", "metric": k, "value": 0.999} for k in values]
    write_table(pd.DataFrame(rows), path, METRICS)
    return values


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


def write_quality(path, key) -> None:
    rows = [{"metric": m, "level": -1, "value": v} for m, v in QUALITY[key].items()]
    rows.append({"metric": "uniqueness", "level": -1, "value": 1.0})
    for metric in ["utilization", "normalized_entropy", "prefix_utilization"]:
        rows += [{"metric": metric, "level": lv, "value": v} for lv, v in enumerate(level_values(key, metric))]
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
    write_table(pd.DataFrame(rows), path, TRAIN_LOG)


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
                values = write_metrics(run / "metrics.parquet", ranks)
                for metric, value in values.items():
                    expected.setdefault((dataset, model), {}).setdefault(metric, []).append(value)
                metrics_paths.append(str(run / "metrics.parquet"))
                per_user_paths.append(str(run / "per_user.parquet"))
                train = root / "results" / "train" / dataset / model / f"seed{seed}" / "train_log.parquet"
                write_train_log(train, model, seed)
                train_paths.append(str(train))
    for dataset, tokenizer in QUALITY:
        path = root / "results" / "tokenize" / dataset / tokenizer / "quality.parquet"
        write_quality(path, (dataset, tokenizer))
        quality_paths.append(str(path))

    out_dir = root / "results" / "report"
    manifest = report_manifest(metrics_paths, per_user_paths, quality_paths, train_paths)
    written = build_report(manifest, out_dir, exclude_history=True, baseline_model="sasrec", setting="quick")
    return {
        "out": out_dir,
        "written": written,
        "expected": expected,
        "per_user_paths": per_user_paths,
        "metrics_paths": metrics_paths,
        "root": root,
    }


def parse_cell(cell: str) -> tuple[float, float | None, bool]:
    """'**0.1234 ± 0.0100**' -> (0.1234, 0.01, True)."""
    best = cell.startswith("**") and cell.endswith("**")
    parts = cell.strip("*").split(" ± ")
    return float(parts[0]), (float(parts[1]) if len(parts) > 1 else None), best


def test_all_outputs_written(report):
    out = report["out"]
    names = [
        f"{stem}.{ext}" for stem in ["main_comparison", "significance", "id_quality"] for ext in ["csv", "md", "tex"]
    ]
    names += ["codebook_utilization.png", "training_curves.png", "metric_comparison.png", "README.md"]
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
            mean, std, _ = parse_cell(row[metric])
            assert mean == pytest.approx(per_seed.mean(), abs=5e-5), (row["dataset"], row["model"], metric)
            assert std == pytest.approx(per_seed.std(ddof=1), abs=5e-5), (row["dataset"], row["model"], metric)


def test_best_marker_on_the_better_model(report):
    table = pd.read_csv(report["out"] / "main_comparison.csv")
    for _, row in table.iterrows():
        should_be_best = (row["dataset"] == "toy_a") == (row["model"] == "tiger")
        for metric in tables.DEFAULT_METRICS:
            assert parse_cell(row[metric])[2] == should_be_best, (row["dataset"], row["model"], metric)


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


def test_every_table_and_the_readme_name_the_setting(report):
    note = tables.setting_note("quick")
    assert "under-trained" in note
    mds = sorted(report["out"].glob("*.md"))
    assert len(mds) >= 4
    for md in mds:
        assert md.read_text().startswith(note if md.name != "README.md" else "# Report\n\n" + note), md.name
    for tex in report["out"].glob("*.tex"):
        assert "Setting: quick" in tex.read_text(), tex.name
    with pytest.raises(ValueError, match="setting must be one of"):
        tables.setting_note("laptop")


def test_significance_finds_the_clearly_better_model(report):
    sig = pd.read_csv(report["out"] / "significance.csv").set_index("dataset")
    assert set(sig.index) == set(DATASETS)
    assert (sig["model"] == "tiger").all() and (sig["baseline"] == "sasrec").all()
    for dataset in DATASETS:
        assert sig.loc[dataset, "wilcoxon_p"] < 1e-6
        assert sig.loc[dataset, "ttest_p"] < 1e-6
        assert bool(sig.loc[dataset, "significant"])
    assert sig.loc["toy_a", "delta"] > 0 > sig.loc["toy_b", "delta"]
    assert sig.loc["toy_a", "n_users"] == N_USERS  # test split only


def test_significance_of_identical_models_is_not_significant(report, tmp_path):
    # A copy of SASRec under another name: every per-user difference is zero.
    paths = [p for p in report["per_user_paths"] if "/toy_a/sasrec/" in p]
    copies = []
    for p in paths:
        dst = tmp_path / p.split(str(report["root"]) + "/")[1].replace("/sasrec/", "/sasrec_copy/")
        dst.parent.mkdir(parents=True)
        shutil.copy(p, dst)
        copies.append(str(dst))
    sig = tables.significance(paths + copies, baseline_model="sasrec")
    assert len(sig) == 1
    row = sig.iloc[0]
    assert row["model"] == "sasrec_copy" and row["delta"] == 0.0
    assert row["wilcoxon_p"] == 1.0 and row["ttest_p"] == 1.0
    assert not row["significant"]


def test_significance_uses_user_metrics_with_null_as_miss(tmp_path):
    # Two users; the baseline misses user 1 (null rank) which the model ranks 1st.
    for model, ranks in {"base": [1.0, np.nan], "m": [1.0, 1.0]}.items():
        write_per_user(tmp_path / f"results/evaluate/d/{model}/seed0/per_user.parquet", np.array(ranks))
    paths = [str(p) for p in sorted(tmp_path.rglob("per_user.parquet"))]
    sig = tables.significance(paths, baseline_model="base", metric="NDCG@10").iloc[0]
    assert sig["mean_baseline"] == pytest.approx(0.5) and sig["mean_model"] == pytest.approx(1.0)


def test_id_quality_table_equals_inputs(report):
    table = pd.read_csv(report["out"] / "id_quality.csv").set_index(["dataset", "tokenizer"])
    assert set(table.index) == set(QUALITY)
    for key, whole in QUALITY.items():
        for metric, value in whole.items():
            assert table.loc[key, metric] == pytest.approx(value)
        assert table.loc[key, "uniqueness"] == pytest.approx(1.0)
        for metric in ["utilization", "normalized_entropy"]:
            for level, value in enumerate(level_values(key, metric)):
                assert table.loc[key, f"{metric}_L{level}"] == pytest.approx(value)


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


@pytest.mark.parametrize("stem", ["main_comparison", "significance", "id_quality"])
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


def test_readme_embeds_tables_and_links_figures(report):
    readme = (report["out"] / "README.md").read_text()
    for stem in ["main_comparison", "significance", "id_quality"]:
        table_md = (report["out"] / f"{stem}.md").read_text().strip()
        assert table_md in readme, stem
    for name in ["codebook_utilization.png", "training_curves.png", "metric_comparison.png"]:
        assert f"]({name})" in readme, name


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
