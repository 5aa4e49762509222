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


@pytest.mark.slow
def test_changed_parameter_reruns_only_downstream(finished_run, tmp_path):
    override = tmp_path / "lr.yaml"
    override.write_text("tiger:\n  lr: 0.002\n")
    result = run_snakemake(finished_run, "-n", "--configfile", str(DEFAULT), str(TINY), str(override))
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = jobs_in_dry_run(result.stdout)
    assert {"train_tiger", "evaluate_tiger", "report"} <= jobs
    assert not jobs & {"prepare_dataset", "text_features", "image_features", "rqkmeans_ids", "train_sasrec"}


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
