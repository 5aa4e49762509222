"""The whole workflow on a tiny configuration, in a temporary directory
every stage runs for real, the report holds both
models for both datasets, a rerun has nothing to do, and a changed parameter
or module reruns exactly what depends on it. Dry runs check which stages run
per seed, and a deterministic rerun of the tokenizer, train and evaluate
stages gives the same files."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import report_browser
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
    models = [
        "mostpop", "random", "tiger", "sasrec", "pmat_global", "pmat_static", "pmat_static_token", "pmat_full", "hdnag",
    ]  # fmt: skip
    assert pairs == {(d, m) for d in ["ml-100k-tiny", "synthetic"] for m in models}
    # Every evaluation writes its ranking, and its metrics follow from it.
    for d in ["ml-100k-tiny", "synthetic"]:
        for m in [*models, "mcrl_none", "mcrl_all", "hdnag_single"]:
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
            assert (finished_run / "results" / "pseudolabels" / dataset / "seed0" / f"{modality}.parquet").exists()
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
    # HDNAG's tables: its models against beam search, their cost side by side, the sweep and its curve.
    hdnag = pd.read_csv(report / "hdnag_ablation.csv")
    assert set(zip(hdnag["dataset"], hdnag["model"])) == {
        (d, m) for d in ["ml-100k-tiny", "synthetic"] for m in ["tiger", "hdnag", "hdnag_single"]
    }
    cost = pd.read_csv(report / "hdnag_efficiency.csv")
    methods = {"tiger", "hdnag", "hdnag_exhaustive", "hdnag_single", "sasrec_dense"}
    assert set(zip(cost["dataset"], cost["method"])) == {(d, m) for d in ["ml-100k-tiny", "synthetic"] for m in methods}
    passes = cost.set_index(["dataset", "method"])["decoder_passes_per_batch"]
    assert passes[("synthetic", "hdnag")] == "2" and passes[("synthetic", "hdnag_single")] == "1"
    assert passes[("synthetic", "tiger")] == "3"  # two RQ-KMeans levels and the dedup token
    sweep = pd.read_csv(report / "hdnag_sweep.csv")
    assert set(sweep["knob"]) == {"coarse_candidates", "candidate_budget"}
    assert (report / "hdnag_accuracy_latency.png").stat().st_size > 0


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
    # hdnag_efficiency times SASRec's dense scoring beside the generators.
    assert jobs == {"train_sasrec", "evaluate_sasrec", "hdnag_efficiency", "report", "all"}


@pytest.mark.slow
def test_hdnag_keys_rerun_what_reads_them(finished_run, tmp_path):
    # The cost measurement's settings time again and nothing retrains.
    jobs = jobs_after_override(finished_run, tmp_path, "hdnag:\n  efficiency:\n    batch1_users: 7\n")
    assert jobs == {"hdnag_efficiency", "report", "all"}
    # The coarse codebook: new IDs, so HDNAG's models, nothing else.
    jobs = jobs_after_override(finished_run, tmp_path, "hdnag:\n  coarse_size: 3\n")
    assert {"hkmeans_ids", "train_hdnag", "train_hdnag_single", "hdnag_efficiency", "report"} <= jobs
    assert not jobs & {"rqkmeans_ids", "train_tiger", "train_sasrec", "evaluate_tiger"}


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
def test_html_report_renders_every_table_and_figure(finished_run):
    result = run_snakemake(finished_run, "--report", "report.html", "--configfile", str(DEFAULT), str(TINY))
    assert result.returncode == 0, result.stderr[-3000:]
    html = (finished_run / "report.html").read_text(errors="replace")
    assert "Codebook utilization" in html and "Main comparison on the test split" in html
    if report_browser.chromium() is None:
        pytest.skip("no Chromium to open the report in (make test installs Debian's chromium when run as root)")
    # Every table (as HTML) and figure of the report, opened in headless Chromium.
    rendered = report_browser.render_report(finished_run / "report.html")
    assert all(word in rendered["nav"] for word in ["Results", "Tables", "Figures", "PMAT", "MCRL", "HDNAG"])
    report = finished_run / "results" / "report"
    shown = {path: entry for path, entry in rendered["results"].items() if Path(path).parent == Path("results/report")}
    expected = {f"results/report/{p.name}" for p in [*report.glob("*.html"), *report.glob("*.png")]}
    assert set(shown) == expected and len(expected) >= 20
    for path, entry in shown.items():
        assert entry["caption"], path
        if path.endswith(".png"):
            assert entry.get("width", 0) > 100 and entry.get("height", 0) > 100, (path, entry)
        else:
            rows = len(pd.read_csv(report / Path(path).with_suffix(".csv").name))
            assert entry["rows"] == rows and rows > 0 and entry["header"], (path, entry)
            assert entry["table_caption"].startswith("Setting: quick"), path


@pytest.mark.slow
def test_named_slices_report_their_own_runs(finished_run):
    """Each slice target on the finished run: only its report job runs (every
    input is there), and its main table holds the slice's models."""
    slices = ["main", "baselines", "pmat", "mcrl", "hdnag"]
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
    assert models["hdnag"] == floors | {"tiger", "hdnag"}  # hdnag is a main-table row too
    assert set(pd.read_csv(report / "hdnag" / "hdnag_ablation.csv")["model"]) == {"tiger", "hdnag", "hdnag_single"}
    assert {"pmat_global", "pmat_full", "tiger"} <= models["pmat"] and "sasrec" not in models["pmat"]
    assert models["main"] == set(pd.read_csv(report / "main_comparison.csv")["model"])
    assert (report / "pmat" / "pmat_ablation.csv").exists() and not (report / "main" / "pmat_ablation.csv").exists()
    assert set(pd.read_csv(report / "mcrl" / "mcrl_ablation.csv")["model"]) == {"mcrl_none", "mcrl_all"}
    assert (report / "mcrl" / "training_curves.png").stat().st_size > 0


@pytest.mark.slow
def test_both_history_protocols_give_two_whole_reports(finished_run, tmp_path):
    """protocol.report_both_histories on the finished run: every trained model is evaluated again with
    history items excluded, nothing is retrained, and that protocol's whole report is written."""
    both = tmp_path / "both.yaml"
    both.write_text("protocol:\n  report_both_histories: true\n")
    args = ["--configfile", str(DEFAULT), str(TINY), str(both)]
    dry = run_snakemake(finished_run, "-n", *args)
    assert dry.returncode == 0, dry.stderr[-3000:]
    jobs = dry_run_jobs(dry.stdout)
    # The same models and the main protocol's evaluations: nothing already computed reruns.
    assert not {j for j in jobs if j.startswith("train_") or (j.startswith("evaluate_") and "other" not in j)}
    assert {"report_history_excluded", "evaluate_other_history"} <= jobs
    result = run_snakemake(finished_run, "--cores", "2", *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    other = finished_run / "results" / "report" / "history_excluded"
    for stem in ["main_comparison", "significance", "decoding", "pmat_ablation", "mcrl_ablation"]:
        caption = (other / f"{stem}.md").read_text().splitlines()[0]
        assert "items already in the user's history are excluded" in caption, stem
        assert "selected under exclude_history = false" in caption, stem
    assert "are not excluded" in (finished_run / "results" / "report" / "main_comparison.md").read_text()
    main = pd.read_csv(other / "main_comparison.csv")
    assert len(main) == len(pd.read_csv(finished_run / "results" / "report" / "main_comparison.csv"))
    # Every ranking of the other protocol leaves out each user's history (all items before the target).
    interactions = pd.read_parquet(finished_run / "results" / "data" / "synthetic" / "interactions.parquet")
    # HDNAG's retrieval cost measured again under this protocol, not mixed in from the main one.
    cost = finished_run / "results" / "efficiency" / "synthetic" / "seed0" / "history_excluded" / "efficiency.parquet"
    assert pd.read_parquet(cost)["method"].tolist()[:2] == ["tiger", "hdnag"]
    assert (other / "hdnag_efficiency.csv").exists()
    for method in ["mostpop", "sasrec", "tiger", "pmat_full", "mcrl_all", "hdnag"]:
        ranking = pd.read_parquet(
            finished_run
            / "results"
            / "evaluate"
            / "synthetic"
            / method
            / "seed0"
            / "history_excluded"
            / "ranking.parquet"
        )
        for row in ranking.itertuples():
            split_position = interactions[
                (interactions["user_idx"] == row.user_idx) & (interactions["split"] == row.split)
            ]
            history = interactions[
                (interactions["user_idx"] == row.user_idx)
                & (interactions["position"] < split_position["position"].iloc[0])
            ]["item_idx"]
            assert not set(history) & set(row.items), (method, row.user_idx, row.split)


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


def dry_run_blocks(output: str) -> list[dict]:
    """Each job of a dry run's output: its ``rule``, ``wildcards`` (a dict) and ``input`` paths."""
    jobs = []
    for block in re.split(r"^\[.*\]$", output, flags=re.MULTILINE):
        rule = re.search(r"^rule (\w+):", block, flags=re.MULTILINE)
        if rule is None:
            continue
        wildcards = re.search(r"^\s+wildcards: (.*)$", block, flags=re.MULTILINE)
        inputs = re.search(r"^\s+input: (.*)$", block, flags=re.MULTILINE)
        jobs.append(
            {
                "rule": rule[1],
                "wildcards": dict(w.split("=", 1) for w in wildcards[1].split(", ")) if wildcards else {},
                "input": inputs[1].split(", ") if inputs else [],
            }
        )
    return jobs


def test_each_seed_schedules_its_own_tokenizer_and_pseudolabels(tmp_path):
    """Two seeds: two tokenizer and two pseudo-label jobs per dataset (and
    modality), one behaviour-feature job, and every seed-1 job reads the seed-1
    IDs and labels."""
    override = tmp_path / "seeds.yaml"
    override.write_text("seeds: [0, 1]\n")
    result = run_snakemake(tmp_path, "-n", "--configfile", str(DEFAULT), str(override))
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = dry_run_blocks(result.stdout)
    config = yaml.safe_load(DEFAULT.read_text())
    datasets = config["datasets"]

    def wildcards_of(rule: str, *keys: str) -> list[tuple]:
        return sorted(tuple(j["wildcards"][k] for k in keys) for j in jobs if j["rule"] == rule)

    assert wildcards_of("rqkmeans_ids", "dataset", "seed") == sorted((d, s) for d in datasets for s in "01")
    labels = [(d, m, s) for d in datasets for m in config["dataset_specs"][d]["modalities"] for s in "01"]
    assert wildcards_of("pseudolabels", "dataset", "modality", "seed") == sorted(labels)
    behaviour = [(d,) for d in datasets if "behaviour" in config["dataset_specs"][d]["modalities"]]
    assert wildcards_of("behaviour_features", "dataset") == behaviour != []  # per dataset, not per seed
    for job in jobs:
        seed = job["wildcards"].get("seed")
        if job["rule"] == "train" and job["wildcards"]["method"] == "tiger":
            ids = [p for p in job["input"] if "/rqkmeans/" in p]
            assert ids == [f"results/tokenize/{job['wildcards']['dataset']}/rqkmeans/seed{seed}/ids.parquet"], job
        for path in job["input"]:
            if "/rqkmeans/" in path or "/pseudolabels/" in path:
                assert f"/seed{seed}/" in path or job["rule"] in ("report", "all"), (job["rule"], path)
    trained = {(j["wildcards"]["dataset"], j["wildcards"]["seed"]) for j in jobs if j["rule"] == "train"}
    assert {(d, "1") for d in datasets} <= trained


def write_random_dataset(root: Path, n_users: int = 40, n_items: int = 24, length: int = 7) -> dict:
    """A random dataset in the contract format and one text-feature file: the inputs of the tokenizer and of
    a generator's train and evaluate jobs."""
    from pmsid.data import contracts

    rng = np.random.default_rng(5)
    rows = []
    for user in range(n_users):
        for pos, item in enumerate(rng.choice(n_items, size=length, replace=False)):
            split = "test" if pos == length - 1 else "valid" if pos == length - 2 else "train"
            rows.append((user, item, pos, pos, split))
    inter = pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp", "position", "split"])
    inter = inter.astype({"user_idx": "int32", "item_idx": "int32", "timestamp": "int64", "position": "int32"})
    items = pd.DataFrame(
        {"item_idx": np.arange(n_items, dtype=np.int32), "item_id": [f"i{i}" for i in range(n_items)],
         "text": "x", "image_url": None}
    )  # fmt: skip
    paths = {name: str(root / f"{name}.parquet") for name in ("interactions", "catalogue", "text")}
    contracts.write_table(inter, paths["interactions"], contracts.INTERACTIONS)
    contracts.write_table(items, paths["catalogue"], contracts.ITEMS)
    contracts.write_features(paths["text"], np.arange(n_items), rng.standard_normal((n_items, 16)), stage="test")
    return paths


def test_a_deterministic_rerun_gives_identical_ids_rankings_and_metrics(tmp_path, monkeypatch):
    """`deterministic: true`: the tokenizer, train and evaluate stages of a
    TIGER run (the tiny workflow's settings, seed 1) run twice give the same
    IDs, model, rankings and per-user ranks byte for byte, and every metric
    bit for bit but the beam search's wall time (``beam_seconds_per_user``,
    a measurement, not a result)."""
    import torch

    from pmsid.data import contracts
    from pmsid.methods.run import evaluate_method, train_method
    from pmsid.quantize.rq_kmeans import tokenize

    data = write_random_dataset(tmp_path)
    default, tiny = yaml.safe_load(DEFAULT.read_text()), yaml.safe_load(TINY.read_text())
    tokenizer = {**default["tokenizer"], **tiny["tokenizer"]}
    params = {
        "cfg": {**default["tiger"], **tiny["tiger"]}, "protocol": default["protocol"],
        "evaluation": default["evaluation"], "modalities": ["text"], "device": "cpu", "deterministic": True,
    }  # fmt: skip
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what seed_everything sets, undone after the test
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    runs = {}
    try:
        for run in ("first", "again"):
            out = tmp_path / run
            ids = {"ids": str(out / "ids.parquet")}
            tokenize([data["text"]], ids["ids"], out / "quality.parquet", tokenizer["levels"], tokenizer["codes"],
                     seed=1, n_init=tokenizer["n_init"])  # fmt: skip
            inputs = {"interactions": data["interactions"], "catalogue": data["catalogue"], **ids}
            trained = {"model": str(out / "model.pt"), "log": str(out / "log.parquet"), "extras": str(out / "extras")}
            train_method("tiger", "d", 1, inputs, trained, {**params, "checkpoint": str(out / "last.pt")})
            evaluated = {k: str(out / f"{k}.parquet") for k in ("ranking", "per_user", "metrics")}
            evaluate_method("tiger", "d", 1, {**inputs, "model": trained["model"]}, evaluated, params)
            runs[run] = {**ids, **evaluated, "quality": str(out / "quality.parquet"), "model": trained["model"]}
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
    first, again = runs["first"], runs["again"]
    for name in ("ids", "quality", "ranking", "per_user"):
        assert Path(first[name]).read_bytes() == Path(again[name]).read_bytes(), name
    models = [torch.load(runs[r]["model"], weights_only=False)["state_dict"] for r in ("first", "again")]
    assert models[0].keys() == models[1].keys()
    assert all(torch.equal(models[0][k], models[1][k]) for k in models[0]), "the trained weights differ"
    metrics = [contracts.read_table(runs[r]["metrics"], contracts.METRICS) for r in ("first", "again")]
    results = [m[m["metric"] != "beam_seconds_per_user"].reset_index(drop=True) for m in metrics]
    assert len(results[0]) > 10 and results[0][["split", "metric"]].equals(results[1][["split", "metric"]])
    assert np.array_equal(results[0]["value"].to_numpy(), results[1]["value"].to_numpy())  # bit for bit


def test_the_other_history_protocol_is_off_by_default_and_twins_every_evaluation(tmp_path):
    default = run_snakemake(tmp_path, "-n", "--configfile", str(DEFAULT))
    assert default.returncode == 0, default.stderr[-3000:]
    assert not {b["rule"] for b in dry_run_blocks(default.stdout)} & {
        "evaluate_other_history",
        "report_history_excluded",
    }
    both = tmp_path / "both.yaml"
    both.write_text("protocol:\n  report_both_histories: true\n")
    result = run_snakemake(tmp_path, "-n", "--configfile", str(DEFAULT), str(both))
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = dry_run_blocks(result.stdout)

    def runs(rule: str) -> set[tuple]:
        return {tuple(j["wildcards"][k] for k in ("dataset", "method", "seed")) for j in jobs if j["rule"] == rule}

    assert runs("evaluate_other_history") == runs("evaluate") != set()
    assert sum(j["rule"] == "report_history_excluded" for j in jobs) == 1
