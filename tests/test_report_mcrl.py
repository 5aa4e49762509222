"""The report's MCRL section: ablation, ID space, cost per step, loss curves, t-SNE.

A fake ``results/`` tree with contract-valid files, 2 seeds. ``synth`` (text
and image) runs a subset of the ablations with the control mcrl_none;
``ml`` (text only) runs two ablations and no control, so it has no tests
and no cost ratio. Ranks are built so the paired tests have a known answer
on synth: mcrl_user ranks exactly like mcrl_none, mcrl_all ranks every
target higher, mcrl_inter every target lower. SASRec is the main report's
model and baseline.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zlib

import numpy as np
import pandas as pd
import pytest

from pmsid.data.contracts import ID_QUALITY, METRICS, PER_USER, TRAIN_LOG, write_table
from pmsid.evaluate.metrics import mean_metrics, user_metrics
from pmsid.methods.mcrl import ABLATIONS
from pmsid.report import mcrl, tables
from pmsid.report.build import build_report

from conftest import REPO, REPORT_BASE_FILES, TABLE_FORMATS, parse_cell, report_manifest, section_rows, train_budget

MODALITIES = {"synth": ["text", "image"], "ml": ["text"]}
# Given in an order that is not ABLATIONS order, so that the table's order is the code's doing.
RUN_ABLATIONS = {"synth": ["all", "user", "intra_inter", "none", "inter"], "ml": ["all", "user"]}
SEEDS = [0, 1]
N_USERS = 60
N_ITEMS = 40
KS = [5, 10, 20]
STEPS_PER_EPOCH = 30
EPOCHS = 2
# Seconds per timed optimizer step, by ablation: the cost ratio to mcrl_none is known exactly.
SECONDS = {"none": 0.1, "user": 0.12, "inter": 0.2, "intra_inter": 0.11, "all": 0.15}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MCRL_TABLES = ["mcrl_ablation", "mcrl_id_space", "mcrl_cost"]
MCRL_FIGURES = ["mcrl_loss_curves.png", "mcrl_tsne.png"]


def fake_ranks(dataset: str, model: str, seed: int) -> np.ndarray:
    base = "mcrl_none" if model in ("mcrl_user", "mcrl_all", "mcrl_inter") else model
    rng = np.random.default_rng(zlib.crc32(f"{dataset}/{base}/{seed}".encode()))
    ranks = rng.integers(2, 30, size=N_USERS).astype(float)
    if model == "mcrl_all":
        ranks = np.maximum(1.0, ranks - 8)
    if model == "mcrl_inter":
        ranks = ranks + 6
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


def components(ablation: str, seed: int) -> pd.DataFrame:
    """One row per step; the last step of each epoch is untimed (NaN), inactive losses are NaN."""
    n = STEPS_PER_EPOCH * EPOCHS
    step = np.arange(1, n + 1, dtype=np.int64)
    frame = pd.DataFrame({"epoch": ((step - 1) // STEPS_PER_EPOCH).astype(np.int32), "step": step})
    frame["id"] = step + 2.0 * seed  # mean over the two seeds: step + 1
    for term in ["user", "intra", "inter"]:
        frame[term] = 1.0 / step if term in ABLATIONS[ablation] else np.nan
    frame["total"] = frame["id"] + frame[["user", "intra", "inter"]].sum(axis=1)
    frame["seconds"] = np.where(step % STEPS_PER_EPOCH == 0, np.nan, SECONDS.get(ablation, 0.1))
    return frame


def ratio(dataset: str, ablation: str, seed: int, modality: str) -> float:
    return 0.9 - 0.1 * len(ABLATIONS[ablation]) - 0.02 * seed - (0.05 if modality == "image" else 0.0)


def uniformity(ablation: str, seed: int) -> float:
    return -1.0 - 0.5 * len(ABLATIONS[ablation]) + 0.1 * seed


def id_space(dataset: str, ablation: str, seed: int) -> dict:
    mods = MODALITIES[dataset]
    return {
        "n_items": N_ITEMS, "n_tables": 1, "modalities": mods,
        "alignment": {m: 0.5 * ratio(dataset, ablation, seed, m) for m in mods}, "mean_pair_distance": 0.5,
        "alignment_ratio": {m: ratio(dataset, ablation, seed, m) for m in mods},
        "uniformity": uniformity(ablation, seed),
    }  # fmt: skip


def tsne(dataset: str, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    items = np.arange(N_ITEMS, dtype=np.int32)
    frame = pd.DataFrame({"item_idx": items, "x": rng.normal(size=N_ITEMS), "y": rng.normal(size=N_ITEMS)})
    frame = frame.astype({"x": np.float32, "y": np.float32})
    for i, modality in enumerate(MODALITIES[dataset]):
        frame[f"label_{modality}"] = (items % (4 + i)).astype(np.int32)
    return frame


def write_tree(root) -> dict:
    """Every input of the report; returns the path lists and the expected metric values."""
    keys = ["metrics", "per_user", "train", "quality", "mcrl_metrics", "mcrl_per_user", "components", "id_space"]
    paths = {k: [] for k in keys + ["tsne"]}
    expected = {}  # (dataset, model) -> {metric: [per seed]}
    for dataset, ablations in RUN_ABLATIONS.items():
        for seed in SEEDS:
            metrics_path, per_user_path, _ = write_run(root, dataset, "sasrec", seed)
            paths["metrics"].append(metrics_path)
            paths["per_user"].append(per_user_path)
            log = root / "results" / "train" / dataset / "sasrec" / f"seed{seed}" / "train_log.parquet"
            write_table(
                pd.DataFrame({"epoch": [1, 2], "step": [0, 1], "loss": [2.0, 1.0], "valid_ndcg10": [0.1, 0.2]}),
                log,
                TRAIN_LOG,
                metadata=train_budget(),
            )
            paths["train"].append(str(log))
            for ablation in ablations:
                model = f"mcrl_{ablation}"
                metrics_path, per_user_path, values = write_run(root, dataset, model, seed)
                paths["mcrl_metrics"].append(metrics_path)
                paths["mcrl_per_user"].append(per_user_path)
                for metric, value in values.items():
                    expected.setdefault((dataset, model), {}).setdefault(metric, []).append(value)
                comp = (
                    root / "results" / "train" / dataset / model / f"seed{seed}" / "extras" / "loss_components.parquet"
                )
                comp.parent.mkdir(parents=True, exist_ok=True)
                components(ablation, seed).to_parquet(comp, index=False)
                paths["components"].append(str(comp))
                mcrl_dir = root / "results" / "mcrl" / dataset / model / f"seed{seed}"
                mcrl_dir.mkdir(parents=True)
                (mcrl_dir / "id_space.json").write_text(json.dumps(id_space(dataset, ablation, seed)))
                paths["id_space"].append(str(mcrl_dir / "id_space.json"))
                tsne(dataset, seed).to_parquet(mcrl_dir / "tsne.parquet", index=False)
                paths["tsne"].append(str(mcrl_dir / "tsne.parquet"))
        rq = root / "results" / "tokenize" / dataset / "rqkmeans" / "seed0" / "quality.parquet"
        rows = [{"metric": m, "level": -1, "value": 0.5} for m in tables.WHOLE_ID_METRICS]
        write_table(pd.DataFrame(rows + [{"metric": "utilization", "level": 0, "value": 0.9}]), rq, ID_QUALITY)
        paths["quality"].append(str(rq))
    return {"paths": paths, "expected": expected}


def mcrl_kwargs(paths: dict) -> dict:
    return {
        "mcrl_metrics_paths": paths["mcrl_metrics"],
        "mcrl_per_user_paths": paths["mcrl_per_user"],
        "mcrl_components_paths": paths["components"],
        "mcrl_id_space_paths": paths["id_space"],
        "mcrl_tsne_paths": paths["tsne"],
    }


def run_report(paths: dict, out_dir, **mcrl_paths) -> list[str]:
    manifest = report_manifest(paths["metrics"], paths["per_user"], paths["quality"], paths["train"], **mcrl_paths)
    return build_report(manifest, out_dir, exclude_history=True, baseline_model="sasrec")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("mcrl_report")
    tree = write_tree(root)
    out, plain = root / "results" / "report", root / "results" / "report_plain"
    written = run_report(tree["paths"], out, **mcrl_kwargs(tree["paths"]))
    plain_written = run_report(tree["paths"], plain)
    return {**tree, "root": root, "out": out, "written": written, "plain": plain, "plain_written": plain_written}


def write_mcrl_only(paths: dict, out, **overrides) -> None:
    """The MCRL section alone, so that a failing input fails fast."""
    kwargs = {**mcrl_kwargs(paths), **overrides}
    runs = tables.collect_runs(kwargs["mcrl_metrics_paths"])
    inputs = [kwargs[f"mcrl_{k}_paths"] for k in ["per_user", "components", "id_space", "tsne"]]
    mcrl.write_mcrl_report(runs, *inputs, out=out, exclude_history=True, rows=section_rows("mcrl"))


def expected_rows() -> list[tuple[str, str]]:
    """(dataset, model) of every MCRL table: datasets sorted, ablations in ABLATIONS order."""
    order = list(ABLATIONS)
    return [(d, f"mcrl_{a}") for d in sorted(RUN_ABLATIONS) for a in sorted(RUN_ABLATIONS[d], key=order.index)]


# --------------------------------------------------------------------------- outputs


def test_mcrl_outputs_written(report):
    out = report["out"]
    names = REPORT_BASE_FILES + [f"{s}.{e}" for s in MCRL_TABLES for e in TABLE_FORMATS] + MCRL_FIGURES
    assert sorted(report["written"]) == sorted(str(out / n) for n in names)
    for name in MCRL_FIGURES:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000, name


def test_without_mcrl_paths_no_mcrl_files_and_same_main_table(report):
    plain = report["plain"]
    assert sorted(report["plain_written"]) == sorted(str(plain / n) for n in REPORT_BASE_FILES)
    assert not list(plain.glob("mcrl_*"))
    assert "MCRL" not in (plain / "README.md").read_text()
    # The MCRL runs come in their own arguments: the main comparison is the same with or without them.
    for name in ["main_comparison.csv", "significance.csv"]:
        assert (plain / name).read_bytes() == (report["out"] / name).read_bytes(), name
    assert set(pd.read_csv(report["out"] / "main_comparison.csv")["model"]) == {"sasrec"}


def test_readme_has_the_mcrl_sections(report):
    readme = (report["out"] / "README.md").read_text()
    for title in ["MCRL ablation", "MCRL ID space", "MCRL cost per training step"]:
        assert f"### {title}" in readme, title
    for stem in MCRL_TABLES:
        assert (report["out"] / f"{stem}.md").read_text().strip() in readme, stem
    for name in MCRL_FIGURES:
        assert f"]({name})" in readme, name


@pytest.mark.parametrize("stem", MCRL_TABLES)
def test_mcrl_tex_is_escaped(report, stem):
    tex = (report["out"] / f"{stem}.tex").read_text()
    assert r"\begin{tabular}" in tex and r"\label{tab:" + stem.replace("_", "-") + "}" in tex
    assert not re.search(r"(?<!\\)_", tex) and "±" not in tex and "**" not in tex


def test_every_table_and_figure_has_a_snakemake_report_caption():
    for stem in MCRL_TABLES + [name.removesuffix(".png") for name in MCRL_FIGURES]:
        assert (REPO / "workflow" / "report" / f"{stem}.rst").read_text().strip(), stem


# --------------------------------------------------------------------------- ablation


def test_ablation_rows_in_ablations_order_with_mean_std(report):
    table = pd.read_csv(report["out"] / "mcrl_ablation.csv")
    assert list(table[["dataset", "model"]].itertuples(index=False, name=None)) == expected_rows()
    assert list(table.columns[:4]) == ["dataset", "model", "losses", "seeds"]
    losses = dict(zip(table["model"], table["losses"]))
    assert losses["mcrl_none"] == "none" and losses["mcrl_user"] == "L_user"
    assert losses["mcrl_intra_inter"] == "L_intra + L_inter" and losses["mcrl_all"] == "L_user + L_intra + L_inter"
    for _, row in table.iterrows():
        assert row["seeds"] == len(SEEDS)
        for metric in tables.ABLATION_METRICS:
            per_seed = np.array(report["expected"][(row["dataset"], row["model"])][metric])
            mean, std = parse_cell(row[metric])[:2]
            assert mean == pytest.approx(per_seed.mean(), abs=5e-5), (row["dataset"], row["model"], metric)
            assert std == pytest.approx(per_seed.std(ddof=1), abs=5e-5), (row["dataset"], row["model"], metric)
    # mcrl_all ranks every target highest on synth, so it carries the best marker there.
    synth = table[table["dataset"] == "synth"]
    assert [str(c).startswith("**") for c in synth["NDCG@10"]] == [m == "mcrl_all" for m in synth["model"]]


def per_user_ndcg(dataset: str, model: str) -> np.ndarray:
    """Each user's NDCG@10 averaged over seeds, computed here from the built ranks."""
    per_seed = [user_metrics(fake_ranks(dataset, model, s), [10])["NDCG@10"].to_numpy() for s in SEEDS]
    return np.mean(per_seed, axis=0)


def test_ablation_tests_against_mcrl_none(report):
    table = pd.read_csv(report["out"] / "mcrl_ablation.csv").set_index(["dataset", "model"])
    control = per_user_ndcg("synth", "mcrl_none")
    for model in ["mcrl_user", "mcrl_inter", "mcrl_intra_inter", "mcrl_all"]:
        delta = per_user_ndcg("synth", model).mean() - control.mean()
        assert table.loc[("synth", model), "delta_NDCG@10"] == pytest.approx(delta, abs=1e-12), model
    user, inter, best = (table.loc[("synth", m)] for m in ["mcrl_user", "mcrl_inter", "mcrl_all"])
    assert user["delta_NDCG@10"] == 0.0 and user["wilcoxon_p"] == 1.0 and not bool(user["significant"])
    assert best["delta_NDCG@10"] > 0 and best["wilcoxon_p"] < 1e-6 and bool(best["significant"])
    assert inter["delta_NDCG@10"] < 0 and inter["wilcoxon_p"] < 1e-3 and bool(inter["significant"])
    assert np.isnan(table.loc[("synth", "mcrl_none"), "wilcoxon_p"])
    # Holm across the table's tested rows; the interval holds the delta.
    tested = table.dropna(subset=["wilcoxon_p"])
    assert tested["wilcoxon_p_holm"].to_numpy() == pytest.approx(tables.holm(tested["wilcoxon_p"]))
    assert (tested["ci95_low"] <= tested["delta_NDCG@10"]).all() and (
        tested["delta_NDCG@10"] <= tested["ci95_high"]
    ).all()
    # ml has no control: no test at all.
    for model in ["mcrl_user", "mcrl_all"]:
        assert np.isnan(table.loc[("ml", model), "wilcoxon_p"]) and np.isnan(table.loc[("ml", model), "ttest_p"])
    caption = (report["out"] / "mcrl_ablation.md").read_text().splitlines()[0]
    for phrase in [
        "against mcrl_none",
        "Holm-corrected",
        "95% t interval",
        "leave-one-out",
        "full ranking",
        "mcrl_none, the control",
    ]:
        assert phrase in caption, phrase


def test_generic_ablation_table_takes_any_reference(report):
    runs = tables.collect_runs(report["paths"]["mcrl_metrics"])
    per_user = [p for p in report["paths"]["mcrl_per_user"] if "/synth/" in p]
    table = tables.ablation_table(runs, per_user, ["mcrl_all", "mcrl_none"], "mcrl_all")
    table = table.set_index(["dataset", "model"])
    assert list(table.index) == [("ml", "mcrl_all"), ("synth", "mcrl_all"), ("synth", "mcrl_none")]
    assert table.loc[("synth", "mcrl_none"), "delta_NDCG@10"] < 0  # the control is worse than mcrl_all
    with pytest.raises(ValueError, match=r"mcrl_ablation: no per_user\.parquet for mcrl_user.*mcrl_per_user_paths"):
        mcrl.ablation_table(runs, [p for p in per_user if "mcrl_user" not in p], section_rows("mcrl"))


# --------------------------------------------------------------------------- ID space and cost


def test_id_space_table(report):
    table = pd.read_csv(report["out"] / "mcrl_id_space.csv").set_index(["dataset", "model"])
    assert list(table.index) == expected_rows()
    assert list(table.columns) == ["losses", "seeds", "alignment_ratio_text", "alignment_ratio_image", "uniformity"]
    for dataset, ablations in RUN_ABLATIONS.items():
        for ablation in ablations:
            row = table.loc[(dataset, f"mcrl_{ablation}")]
            assert row["seeds"] == len(SEEDS)
            for modality in ["text", "image"]:
                cell = row[f"alignment_ratio_{modality}"]
                if modality not in MODALITIES[dataset]:
                    assert cell == "-", (dataset, ablation)
                    continue
                values = [ratio(dataset, ablation, s, modality) for s in SEEDS]
                assert parse_cell(cell)[:2] == pytest.approx((np.mean(values), np.std(values, ddof=1)), abs=5e-5)
            values = [uniformity(ablation, s) for s in SEEDS]
            assert parse_cell(row["uniformity"])[:2] == pytest.approx(
                (np.mean(values), np.std(values, ddof=1)), abs=5e-5
            )


def test_cost_ratio_exact_and_untimed_steps_ignored(report):
    table = pd.read_csv(report["out"] / "mcrl_cost.csv").set_index(["dataset", "model"])
    assert list(table.index) == expected_rows()
    timed = len(SEEDS) * (STEPS_PER_EPOCH - 1) * EPOCHS  # the last step of each epoch is NaN
    for dataset, ablations in RUN_ABLATIONS.items():
        for ablation in ablations:
            row = table.loc[(dataset, f"mcrl_{ablation}")]
            assert row["timed_steps"] == timed
            assert row["median_seconds_per_step"] == pytest.approx(SECONDS[ablation], rel=1e-12)
    assert table.loc[("synth", "mcrl_all"), "ratio_to_none"] == pytest.approx(1.5, rel=1e-12)
    assert table.loc[("synth", "mcrl_inter"), "ratio_to_none"] == pytest.approx(2.0, rel=1e-12)
    assert table.loc[("synth", "mcrl_none"), "ratio_to_none"] == 1.0
    assert table.loc[("ml", "mcrl_all"), "ratio_to_none"] != table.loc[("ml", "mcrl_all"), "ratio_to_none"]  # NaN
    caption = (report["out"] / "mcrl_cost.md").read_text().splitlines()[0]
    assert "same fine-tuning stage" in caption and "machine that ran the workflow" in caption


def test_cost_median_pools_steps_of_all_seeds():
    # Pooled over 3 + 1 timed steps: median of [1, 1, 1, 5] = 1; a mean of per-seed medians would be 3.
    frame = pd.DataFrame(
        {
            "dataset": "d", "model": "mcrl_none", "seed": [0, 0, 0, 0, 1, 1],
            "seconds": [1.0, 1.0, 1.0, np.nan, 5.0, np.nan],
        }
    )  # fmt: skip
    table = mcrl.cost_table(frame, section_rows("mcrl"))
    assert table.loc[0, "median_seconds_per_step"] == 1.0 and table.loc[0, "timed_steps"] == 4


# --------------------------------------------------------------------------- figures


def test_loss_curves_are_the_seed_mean_smoothed_over_active_steps(report):
    comps = mcrl.collect_components(report["paths"]["components"])
    curves = mcrl.loss_curves_frame(comps, window=25).set_index(["dataset", "model", "component", "step"])
    # id = step + 2 * seed, so the seed mean is step + 1 and its 25-step rolling mean at step 30 is mean(6..30) + 1.
    assert curves.loc[("synth", "mcrl_none", "id", 30), "value"] == pytest.approx(19.0)
    assert curves.loc[("synth", "mcrl_none", "id", 3), "value"] == pytest.approx(3.0)  # min_periods=1: mean(1..3) + 1
    drawn = set(curves.reset_index()[["model", "component"]].itertuples(index=False, name=None))
    assert ("mcrl_user", "user") in drawn and ("mcrl_user", "intra") not in drawn
    assert not any(m == "mcrl_none" and c in ("user", "intra", "inter") for m, c in drawn)


def test_tsne_columns_are_first_and_last_present_ablation():
    assert mcrl.tsne_columns(["mcrl_all", "mcrl_user", "mcrl_none"], section_rows("mcrl")) == ["mcrl_none", "mcrl_all"]
    assert mcrl.tsne_columns(["mcrl_inter", "mcrl_user"], section_rows("mcrl")) == ["mcrl_user", "mcrl_inter"]
    assert mcrl.tsne_columns(["mcrl_intra"], section_rows("mcrl")) == ["mcrl_intra"]


# --------------------------------------------------------------------------- failures


def test_components_missing_column_fails_naming_file_and_column(tmp_path):
    path = tmp_path / "results/train/d/mcrl_all/seed0/extras/loss_components.parquet"
    path.parent.mkdir(parents=True)
    components("all", 0).drop(columns="seconds").to_parquet(path, index=False)
    with pytest.raises(ValueError, match=re.escape(str(path)) + r".*'seconds'"):
        mcrl.collect_components([str(path)])


def test_id_space_missing_key_fails_naming_file_and_key(tmp_path):
    path = tmp_path / "results/mcrl/d/mcrl_all/seed0/id_space.json"
    path.parent.mkdir(parents=True)
    data = id_space("synth", "all", 0)
    del data["uniformity"]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=re.escape(str(path)) + r".*'uniformity'"):
        mcrl.collect_id_space([str(path)])
    data = id_space("synth", "all", 0)
    del data["alignment_ratio"]["image"]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=re.escape(str(path)) + r".*'alignment_ratio'.*'image'"):
        mcrl.collect_id_space([str(path)])


def test_tsne_missing_label_column_fails_naming_file(report, tmp_path):
    paths = report["paths"]
    bad = tmp_path / "results/mcrl/synth/mcrl_none/seed0/tsne.parquet"
    bad.parent.mkdir(parents=True)
    tsne("synth", 0).drop(columns="label_image").to_parquet(bad, index=False)
    tsne_paths = [str(bad) if p.endswith("synth/mcrl_none/seed0/tsne.parquet") else p for p in paths["tsne"]]
    with pytest.raises(ValueError, match=re.escape(str(bad)) + r".*'label_image'"):
        write_mcrl_only(paths, tmp_path / "out", mcrl_tsne_paths=tsne_paths)
    assert not (tmp_path / "out").exists()  # every input is checked before anything is written


def test_partial_mcrl_inputs_fail_before_any_work(report, tmp_path):
    kwargs = mcrl_kwargs(report["paths"])
    kwargs["mcrl_tsne_paths"] = []
    with pytest.raises(ValueError, match="mcrl_tsne_paths"):
        run_report(report["paths"], tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_runs_must_match_across_mcrl_inputs(report, tmp_path):
    paths = report["paths"]
    fewer = [p for p in paths["id_space"] if "synth/mcrl_user/seed1" not in p]
    with pytest.raises(ValueError, match=r"no id_space\.json.*'synth', 'mcrl_user', 1"):
        write_mcrl_only(paths, tmp_path / "out", mcrl_id_space_paths=fewer)


def test_non_mcrl_models_are_refused(report, tmp_path):
    paths = report["paths"]
    with pytest.raises(ValueError, match=r"\['sasrec'\] are not rows of the MCRL section"):
        write_mcrl_only(paths, tmp_path / "out", mcrl_metrics_paths=paths["mcrl_metrics"] + paths["metrics"][:1])


def test_report_section_does_not_import_torch():
    # The report's conda env has no torch: the MCRL section must not pull it in through pmsid.methods.mcrl.
    code = "import sys, pmsid.report.build; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO / "workflow" / "scripts")},
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
