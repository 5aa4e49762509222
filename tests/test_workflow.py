"""The whole workflow on a tiny configuration, in a temporary directory
every stage runs for real, the report holds both
models for both datasets, a rerun has nothing to do, and a changed parameter
or module reruns exactly what depends on it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, dry_run_jobs, run_snakemake

DEFAULT = REPO / "config" / "config.yaml"
TINY = REPO / "tests" / "configs" / "tiny.yaml"


def write_ml100k_slice(directory: Path, n_users: int = 120) -> None:
    """The first ``n_users`` users of the real MovieLens-100K shipped in recbole."""
    spec = importlib.util.find_spec("recbole")
    source = Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / "ml-100k"
    directory.mkdir(parents=True)
    lines = (source / "ml-100k.inter").read_text().splitlines()
    header, rows = lines[0], lines[1:]
    keep = [r for r in rows if int(r.split("\t")[0]) <= n_users]
    (directory / "ml-100k.inter").write_text("\n".join([header, *keep]) + "\n")
    (directory / "ml-100k.item").write_text((source / "ml-100k.item").read_text())


def jobs_in_dry_run(output: str) -> set[str]:
    return dry_run_jobs(output)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("workflow")
    write_ml100k_slice(workdir / "resources" / "ml-100k-tiny")
    result = run_snakemake(workdir, "--cores", "2", "--configfile", str(DEFAULT), str(TINY))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-6000:]
    return workdir


@pytest.mark.slow
def test_report_holds_every_method_for_both_datasets(finished_run):
    report = finished_run / "results" / "report"
    for name in [
        "README.md",
        "main_comparison.csv",
        "main_comparison.md",
        "main_comparison.tex",
        "id_quality.csv",
        "codebook_utilization.png",
        "training_curves.png",
    ]:
        assert (report / name).stat().st_size > 0, name
    main = pd.read_csv(report / "main_comparison.csv")
    pairs = set(zip(main["dataset"], main["model"]))
    models = ["mostpop", "random", "tiger", "sasrec", "pmat_global", "pmat_static", "pmat_static_token", "pmat_full"]
    assert pairs == {(d, m) for d in ["ml-100k-tiny", "synthetic"] for m in models}
    # Every evaluation writes its ranking, and its metrics follow from it.
    for d in ["ml-100k-tiny", "synthetic"]:
        for m in [*models, "mcrl_none", "mcrl_all"]:
            run = finished_run / "results" / "evaluate" / d / m / "seed0"
            ranking = pd.read_parquet(run / "ranking.parquet")
            assert ranking["items"].map(len).eq(20).all(), (d, m)
            test = ranking[ranking["split"] == "test"]
            hits = [t in list(items[:10]) for items, t in zip(test["items"], test["target_item"])]
            metrics = pd.read_parquet(run / "metrics.parquet").set_index(["split", "metric"])["value"]
            assert metrics[("test", "Recall@10")] == pytest.approx(sum(hits) / len(hits)), (d, m)
    quality = pd.read_csv(report / "id_quality.csv")
    assert set(quality["dataset"]) == {"ml-100k-tiny", "synthetic"}
    datasets = pd.read_csv(report / "datasets.csv")
    assert datasets["dataset"].tolist() == ["ml-100k-tiny", "synthetic"]
    counts = [int(datasets.loc[1, f"images {s}"]) for s in ("ok", "missing", "broken")]  # ml-100k's are "-"
    assert sum(counts) == datasets.loc[1, "items"] and counts[0] > 0
    for dataset in ["ml-100k-tiny", "synthetic"]:
        for modality in ["text"] if dataset != "synthetic" else ["text", "image"]:
            assert (finished_run / "results" / "pseudolabels" / dataset / f"{modality}.parquet").exists()
    assert (finished_run / "logs" / "train" / "synthetic_tiger_seed0.log").read_text().strip()
    # MCRL: its ablations in their own table, not in the main one.
    mcrl = pd.read_csv(report / "mcrl_ablation.csv")
    assert set(zip(mcrl["dataset"], mcrl["model"])) == {
        (d, m) for d in ["ml-100k-tiny", "synthetic"] for m in ["mcrl_none", "mcrl_all"]
    }
    for name in ["mcrl_id_space.csv", "mcrl_cost.csv", "mcrl_loss_curves.png", "mcrl_tsne.png"]:
        assert (report / name).stat().st_size > 0, name
    # PMAT's table: the TIGER baseline beside its ablations; the oracle only where truth is planted.
    pmat = set(zip(*pd.read_csv(report / "pmat_ablation.csv")[["dataset", "model"]].T.to_numpy()))
    assert {("synthetic", "tiger"), ("synthetic", "pmat_oracle"), ("ml-100k-tiny", "tiger")} <= pmat
    assert ("ml-100k-tiny", "pmat_oracle") not in pmat


@pytest.mark.slow
def test_rerun_after_success_has_nothing_to_do(finished_run):
    result = run_snakemake(finished_run, "-n", "--configfile", str(DEFAULT), str(TINY))
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


def jobs_after_override(workdir: Path, tmp_path: Path, override: str) -> set[str]:
    """The jobs a dry run of the finished run schedules with ``override`` (YAML) on top of its configs."""
    path = tmp_path / "override.yaml"
    path.write_text(override)
    result = run_snakemake(workdir, "-n", "--configfile", str(DEFAULT), str(TINY), str(path))
    assert result.returncode == 0, result.stderr[-3000:]
    return jobs_in_dry_run(result.stdout)


@pytest.mark.slow
def test_changed_parameter_reruns_only_downstream(finished_run, tmp_path):
    # The tiger section configures every TIGER-style generator (PMAT's too), so
    # they rerun; nothing upstream and no other model does.
    jobs = jobs_after_override(finished_run, tmp_path, "tiger:\n  lr: 0.002\n")
    assert {"train_tiger", "evaluate_tiger", "train_pmat_static", "report"} <= jobs
    assert not jobs & {"prepare_dataset", "text_features", "image_features", "rqkmeans_ids", "train_sasrec"}


@pytest.mark.slow
def test_changed_hyperparameter_of_one_method_reruns_that_method_and_the_report(finished_run, tmp_path):
    jobs = jobs_after_override(finished_run, tmp_path, "sasrec:\n  lr: 0.002\n")
    assert jobs == {"train_sasrec", "evaluate_sasrec", "report", "all"}


@pytest.mark.slow
def test_changed_module_reruns_only_its_rules(finished_run):
    # Snakemake ignores a newer mtime when a small file's content is unchanged,
    # so the test really edits the module (and restores it).
    module = REPO / "workflow" / "scripts" / "pmsid" / "quantize" / "rq_kmeans.py"
    original = module.read_bytes()
    try:
        module.write_bytes(original + b"\n# an edit\n")
        result = run_snakemake(finished_run, "-n", "--configfile", str(DEFAULT), str(TINY))
    finally:
        module.write_bytes(original)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = jobs_in_dry_run(result.stdout)
    assert {"rqkmeans_ids", "train_tiger"} <= jobs
    assert not jobs & {"prepare_dataset", "text_features", "image_features", "train_sasrec"}


@pytest.mark.slow
def test_html_report_builds_with_captions(finished_run):
    result = run_snakemake(finished_run, "--report", "report.html", "--configfile", str(DEFAULT), str(TINY))
    assert result.returncode == 0, result.stderr[-3000:]
    html = (finished_run / "report.html").read_text(errors="replace")
    assert "Codebook utilization" in html and "Main comparison on the test split" in html


@pytest.mark.slow
def test_named_slices_report_their_own_runs(finished_run):
    """Each slice target on the finished run: only its report job runs (every
    input is there), and its main table holds the slice's models."""
    slices = ["main", "baselines", "pmat", "mcrl"]
    # Targets before --configfile, which takes every file name that follows it.
    dry = run_snakemake(finished_run, *slices, "-n", "--configfile", str(DEFAULT), str(TINY))
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    assert jobs_in_dry_run(dry.stdout) == {*slices, *(f"report_{s}" for s in slices)}
    result = run_snakemake(finished_run, *slices, "--cores", "2", "--configfile", str(DEFAULT), str(TINY))
    assert result.returncode == 0, result.stderr[-3000:]
    report = finished_run / "results" / "report"
    floors = {"mostpop", "random"}
    models = {s: set(pd.read_csv(report / s / "main_comparison.csv")["model"]) for s in slices}
    assert models["baselines"] == floors | {"sasrec", "tiger"}
    assert models["mcrl"] == floors
    assert {"pmat_global", "pmat_full", "tiger"} <= models["pmat"] and "sasrec" not in models["pmat"]
    assert models["main"] == set(pd.read_csv(report / "main_comparison.csv")["model"])
    assert (report / "pmat" / "pmat_ablation.csv").exists() and not (report / "main" / "pmat_ablation.csv").exists()
    assert set(pd.read_csv(report / "mcrl" / "mcrl_ablation.csv")["model"]) == {"mcrl_none", "mcrl_all"}
    assert (report / "mcrl" / "training_curves.png").stat().st_size > 0


THESIS = REPO / "config" / "thesis.yaml"


@pytest.mark.parametrize("configs", [[DEFAULT], [DEFAULT, THESIS]], ids=["quick", "thesis"])
def test_every_named_slice_builds_its_dag(configs, tmp_path):
    """Each slice target dry-runs on the shipped configs and schedules its own
    methods' jobs (and what they need), never another slice's."""
    args = ["--configfile", *map(str, configs)]
    jobs = {}
    for target in ["all", "main", "baselines", "pmat", "mcrl"]:
        result = run_snakemake(tmp_path, target, "-n", *args)
        assert result.returncode == 0, (target, result.stderr[-3000:])
        jobs[target] = jobs_in_dry_run(result.stdout)
    trained = {t: {j.removeprefix("train_") for j in js if j.startswith("train_")} for t, js in jobs.items()}
    assert trained["baselines"] == {"mostpop", "random", "sasrec", "tiger"}
    assert "report_pmat" in jobs["pmat"] and "pmat_oracle" in {j.removeprefix("evaluate_") for j in jobs["pmat"]}
    assert not {m for m in trained["main"] | trained["pmat"] if m.startswith("mcrl_")}
    # MCRL's slice trains its ablations and the stage-1 generator they start from, not SASRec.
    assert {"mcrl_none", "mcrl_all", "pmat_static_token"} <= trained["mcrl"] and "sasrec" not in trained["mcrl"]
    assert trained["all"] == set().union(*trained.values())
