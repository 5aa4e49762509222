"""The generic rules' inputs and the report's manifest, built from the registry
without Snakemake (the workflow passes its rules' output patterns)."""

from __future__ import annotations

import pytest
import yaml
from snakemake.utils import validate

from pmsid import manifest
from pmsid.methods import registry

from conftest import REPO

# The workflow's own patterns, written out (workflow/rules/*.smk).
PATTERNS = {
    "interactions": "results/data/{dataset}/interactions.parquet",
    "catalogue": "results/data/{dataset}/items.parquet",
    "stats": "results/data/{dataset}/stats.json",
    "images": "results/data/{dataset}/images.parquet",
    "features": "results/features/{dataset}/{modality}.parquet",
    "rqkmeans_ids": "results/tokenize/{dataset}/rqkmeans/seed{seed}/ids.parquet",
    "rqkmeans_quality": "results/tokenize/{dataset}/rqkmeans/seed{seed}/quality.parquet",
    "hkmeans_ids": "results/tokenize/{dataset}/hkmeans/seed{seed}/ids.parquet",
    "hkmeans_quality": "results/tokenize/{dataset}/hkmeans/seed{seed}/quality.parquet",
    "efficiency": "results/efficiency/{dataset}/seed{seed}/efficiency.parquet",
    "efficiency_sweep": "results/efficiency/{dataset}/seed{seed}/sweep.parquet",
    "pseudolabels": "results/pseudolabels/{dataset}/seed{seed}/{modality}.parquet",
    "pmat_ids": "results/tokenize/{dataset}/pmat_{variant}/seed{seed}/ids.parquet",
    "pmat_assignment": "results/tokenize/{dataset}/pmat_{variant}/seed{seed}/assignment.parquet",
    "pmat_prefix_tables": "results/tokenize/{dataset}/pmat_{variant}/seed{seed}/prefix_tables.parquet",
    "pmat_quality": "results/tokenize/{dataset}/pmat_{variant}/seed{seed}/quality.parquet",
    "pmat_weights": "results/pmat/{dataset}/seed{seed}/weights.parquet",
    "pmat_preference": "results/pmat/{dataset}/seed{seed}/preference.json",
    "pmat_replay": "results/pmat/{dataset}/seed{seed}/replay/summary.json",
    "pmat_replay_assignment": "results/pmat/{dataset}/seed{seed}/replay/assignment.parquet",
    "model": "results/train/{dataset}/{method}/seed{seed}/model.pt",
    "train_log": "results/train/{dataset}/{method}/seed{seed}/train_log.parquet",
    "extras": "results/train/{dataset}/{method}/seed{seed}/extras",
    "ranking": "results/evaluate/{dataset}/{method}/seed{seed}/ranking.parquet",
    "per_user": "results/evaluate/{dataset}/{method}/seed{seed}/per_user.parquet",
    "metrics": "results/evaluate/{dataset}/{method}/seed{seed}/metrics.parquet",
    "mcrl_id_space": "results/mcrl/{dataset}/{method}/seed{seed}/id_space.json",
    "mcrl_tsne": "results/mcrl/{dataset}/{method}/seed{seed}/tsne.parquet",
}


@pytest.fixture
def config() -> dict:
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    validate(cfg, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    return cfg


def test_floors_need_only_the_dataset(config):
    files = manifest.method_inputs(config, "mostpop", "ml-100k", 0, "train", PATTERNS)
    assert files == {
        "interactions": "results/data/ml-100k/interactions.parquet",
        "catalogue": "results/data/ml-100k/items.parquet",
    }
    ranked = manifest.method_inputs(config, "random", "ml-100k", 3, "evaluate", PATTERNS)
    assert ranked["model"] == "results/train/ml-100k/random/seed3/model.pt"


def test_pmat_full_ranks_with_the_pmat_generator_under_the_replayed_tables(config):
    files = manifest.method_inputs(config, "pmat_full", "synthetic", 1, "evaluate", PATTERNS)
    assert files["model"] == "results/train/synthetic/pmat_static_token/seed1/model.pt"
    assert files["ids"] == "results/tokenize/synthetic/pmat_personalized/seed1/ids.parquet"
    assert files["assignment"] == "results/pmat/synthetic/seed1/replay/assignment.parquet"
    static = manifest.method_inputs(config, "pmat_static", "synthetic", 1, "evaluate", PATTERNS)
    assert static["assignment"] == "results/tokenize/synthetic/pmat_personalized/seed1/assignment.parquet"


def test_mcrl_trains_from_its_stage_one_model_with_every_modalitys_labels(config):
    files = manifest.method_inputs(config, "mcrl_all", "synthetic", 0, "train", PATTERNS)
    assert files["init"] == "results/train/synthetic/pmat_static_token/seed0/model.pt"
    assert {k for k in files if k.startswith("labels_")} == {"labels_text", "labels_image"}
    config["pmat"]["datasets"] = ["synthetic"]
    plain = manifest.method_inputs(config, "mcrl_all", "ml-100k", 0, "train", PATTERNS)
    assert plain["init"] == "results/train/ml-100k/tiger/seed0/model.pt"
    assert plain["ids"] == "results/tokenize/ml-100k/rqkmeans/seed0/ids.parquet" and "assignment" not in plain


def test_a_seeds_jobs_read_that_seeds_tokenizer_and_pseudolabels(config):
    tiger = manifest.method_inputs(config, "tiger", "ml-100k", 2, "evaluate", PATTERNS)
    assert tiger["ids"] == "results/tokenize/ml-100k/rqkmeans/seed2/ids.parquet"
    mcrl = manifest.method_inputs(config, "mcrl_all", "synthetic", 1, "train", PATTERNS)
    assert mcrl["labels_image"] == "results/pseudolabels/synthetic/seed1/image.parquet"
    assert mcrl["ids"] == "results/tokenize/synthetic/pmat_personalized/seed1/ids.parquet"
    # The features are the same for every seed.
    assert mcrl["features_text"] == "results/features/synthetic/text.parquet"
    config["seeds"] = [0, 3]
    quality = [e for e in manifest.report_manifest(config, PATTERNS) if e["kind"] == "quality"]
    rq = [e for e in quality if "/rqkmeans/" in e["path"]]
    assert [(e["dataset"], e["seed"]) for e in rq] == [(d, s) for d in config["datasets"] for s in (0, 3)]
    assert rq[1]["path"] == f"results/tokenize/{config['datasets'][0]}/rqkmeans/seed3/quality.parquet"
    # HDNAG's hierarchical tokenizer, one per seed too, where HDNAG runs.
    hk = [(e["dataset"], e["seed"]) for e in quality if "/hkmeans/" in e["path"]]
    assert hk == [(d, s) for d in config["hdnag"]["datasets"] for s in (0, 3)]


def test_a_missing_pattern_is_named(config):
    patterns = {k: v for k, v in PATTERNS.items() if k != "extras"}
    with pytest.raises(ValueError, match=r"no path pattern for \['extras'\]"):
        manifest.report_manifest(config, patterns)


def test_the_manifest_lists_every_run_with_its_metadata(config):
    config["mcrl"]["datasets"] = ["ml-100k", "synthetic"]  # the thesis setting's
    entries = manifest.report_manifest(config, PATTERNS)
    runs = registry.runs(config)
    metrics = [e for e in entries if e["kind"] == "metrics"]
    assert [(e["dataset"], e["method"]) for e in metrics] == runs  # one seed; registry order
    assert all(e["sections"] == list(registry.get(e["method"]).sections) for e in metrics)
    # Train logs of the methods with epochs and a training of their own only.
    logged = {e["method"] for e in entries if e["kind"] == "train_log"}
    assert logged == {m for _, m in runs} - {"mostpop", "random", "pmat_full"}
    components = [e["path"] for e in entries if e["kind"] == "components"]
    assert "results/train/ml-100k/mcrl_user/seed0/extras/loss_components.parquet" in components
    tsne = {(e["dataset"], e["method"]) for e in entries if e["kind"] == "tsne"}
    assert tsne == {(d, m) for d in ("ml-100k", "synthetic") for m in ("mcrl_none", "mcrl_all")}
    inputs = manifest.report_inputs(entries)
    assert "results/train/ml-100k/mcrl_user/seed0/extras" in inputs
    assert not any(p.endswith("loss_components.parquet") for p in inputs)


def test_sections_follow_the_runs(config):
    assert [s[0] for s in manifest.report_sections(config)] == ["Tables", "Figures", "PMAT", "MCRL", "HDNAG"]
    config["pmat"]["datasets"], config["mcrl"]["datasets"], config["hdnag"]["datasets"] = [], [], []
    assert [s[0] for s in manifest.report_sections(config)] == ["Tables", "Figures"]


def test_the_tiger_baseline_joins_the_pmat_table_only_where_pmat_runs(config):
    config["pmat"]["datasets"] = ["synthetic"]
    entries = manifest.report_manifest(config, PATTERNS)
    tiger = {e["dataset"]: e["sections"] for e in entries if e.get("method") == "tiger" and e["kind"] == "metrics"}
    assert tiger == {"synthetic": ["main", "pmat", "hdnag"], "ml-100k": ["main", "hdnag"]}
    config["hdnag"]["datasets"] = []
    entries = manifest.report_manifest(config, PATTERNS)
    tiger = {e["dataset"]: e["sections"] for e in entries if e.get("method") == "tiger" and e["kind"] == "metrics"}
    assert tiger == {"synthetic": ["main", "pmat"], "ml-100k": ["main"]}


def test_model_defaults_are_the_schemas(config):
    """One home for each default: the model code reads the schema's, and
    every key the config sets is one the model code knows."""
    from pmsid.defaults import section_defaults
    from pmsid.train.recipes import SASREC_DEFAULTS, TIGER_DEFAULTS

    for section, defaults in (("tiger", TIGER_DEFAULTS), ("sasrec", SASREC_DEFAULTS)):
        schema = section_defaults(section)
        assert {k: defaults[k] for k in schema} == schema, section
        assert set(config[section]) <= set(defaults), section
    assert TIGER_DEFAULTS["beam_size"] == section_defaults("evaluation")["beam_size"]
    assert TIGER_DEFAULTS["history_cap"] == section_defaults("protocol")["history_cap"]


def test_the_significance_baseline_is_the_first_baseline_that_runs(config):
    assert manifest.report_baseline(config) == "sasrec"
    config["methods"] = ["mostpop", "tiger"]
    assert manifest.report_baseline(config) == "tiger"
    config["methods"], config["pmat"]["datasets"] = ["random"], []
    assert manifest.report_baseline(config) == "random"


def _methods_of(entries: list[dict]) -> set[str]:
    return {e["method"] for e in entries if e["kind"] == "metrics"}


def test_each_slice_reports_its_own_runs_and_the_floors(config):
    floors = {"mostpop", "random"}
    mcrl = {f"mcrl_{a}" for a in config["mcrl"]["ablations"]}
    pmat = {"pmat_global", "pmat_static", "pmat_static_token", "pmat_full"}
    expected = {
        "baselines": floors | {"sasrec", "tiger"},
        "main": floors | {"sasrec", "tiger", "hdnag"} | pmat,
        "pmat": floors | {"tiger", "pmat_oracle"} | pmat,
        "mcrl": floors | mcrl,
        "hdnag": floors | {"tiger", "hdnag"},
    }
    for name, methods in expected.items():
        assert _methods_of(manifest.report_manifest(config, PATTERNS, name)) == methods, name
    every = _methods_of(manifest.report_manifest(config, PATTERNS))
    assert every == set().union(*expected.values())


def test_a_slice_has_only_its_own_report_sections(config):
    def categories(name):
        return [s[0] for s in manifest.report_sections(config, name)]

    assert categories("main") == categories("baselines") == ["Tables", "Figures"]
    assert categories("pmat") == ["Tables", "Figures", "PMAT"]
    assert categories("mcrl") == ["Tables", "Figures", "MCRL"]
    assert categories("hdnag") == ["Tables", "Figures", "HDNAG"]
    entries = manifest.report_manifest(config, PATTERNS, "main")
    assert not {e["kind"] for e in entries} & {"pmat_weights", "id_space", "tsne", "components"}
    assert all(set(e.get("sections", ["main"])) <= {"main"} for e in entries)
    assert manifest.report_baseline(config, "mcrl") == "mostpop"  # the slice's first main-table method


def test_slice_reports_live_apart(config):
    assert manifest.slice_dir("all") == "results/report"
    assert {manifest.slice_dir(s) for s in manifest.SLICES if s != "all"} == {
        f"results/report/{s}" for s in ("main", "baselines", "pmat", "mcrl", "hdnag")
    }
    with pytest.raises(ValueError, match="unknown slice 'hyper'"):
        manifest.slice_runs(config, "hyper")


def test_the_other_history_protocol_is_the_flipped_switch(config):
    assert manifest.other_history(config) == "history_excluded"
    flipped = {**config, "protocol": {**config["protocol"], "exclude_history": True}}
    assert manifest.other_history(flipped) == "history_included"
