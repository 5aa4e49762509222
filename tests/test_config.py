"""Parse-time checks: the schema and the cross-key checks reject bad configs
before any job runs, naming the key."""

from __future__ import annotations

import re

import pytest
import yaml
from snakemake.utils import validate

from conftest import REPO, dry_run_jobs, run_snakemake

DEFAULT = REPO / "config" / "config.yaml"
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


# An override that runs no method on the datasets it names (their DAG stops at the baselines).
NO_METHODS = {"pmat": {"datasets": []}, "mcrl": {"datasets": []}, "hdnag": {"datasets": []}}


def default_config() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_default_config_is_valid_and_every_key_is_commented():
    validate(default_config(), str(SCHEMA))
    lines = (REPO / "config" / "config.yaml").read_text().splitlines()
    # Every top-level section is preceded by a comment line saying what it is.
    for i, line in enumerate(lines):
        if line and not line.startswith((" ", "#")):
            assert lines[i - 1].startswith("#"), f"config.yaml: section {line!r} has no comment above it"


def test_omitted_optional_keys_take_documented_defaults():
    cfg = {
        "datasets": ["a"],
        "dataset_specs": {"a": {"reader": "ml100k", "text_fields": ["title"], "modalities": ["text"]}},
    }
    validate(cfg, str(SCHEMA))
    assert cfg["protocol"] == {
        "min_interactions": 5,
        "history_cap": 20,
        "exclude_history": False,
        "report_both_histories": False,
    }
    assert cfg["tokenizer"]["levels"] == 3 and cfg["tokenizer"]["codes"] == 32
    assert cfg["evaluation"]["ks"] == [1, 5, 10, 20]
    assert cfg["features"]["image"]["missing"] == "mean"
    assert cfg["seeds"] == [0]


@pytest.mark.parametrize(
    "override, expected",
    [
        # unknown (misspelt) top-level key
        ({"tokeniser": {"levels": 3}}, "'tokeniser' was unexpected"),
        # misspelt nested key
        ({"tiger": {"d_modell": 32}}, "'d_modell' was unexpected"),
        # wrong type
        ({"tiger": {"lr": "fast"}}, "On instance['tiger']['lr']"),
        # out of range
        ({"tokenizer": {"levels": 0}}, "On instance['tokenizer']['levels']"),
        # bad enum value
        ({"features": {"image": {"backend": "clip"}}}, "'clip' is not one of ['timm', 'open_clip']"),
        # cross-key: the beam cannot fill the top-K list
        ({"evaluation": {"beam_size": 5}}, "evaluation.beam_size (5) must be >= max(evaluation.ks)"),
        # a dataset without a spec
        ({"datasets": ["nope"]}, "datasets lists 'nope' but dataset_specs has no entry"),
        # PMAT: a fusion weight for a modality the dataset lacks
        (
            {
                "dataset_specs": {
                    "ml-100k": {
                        "reader": "ml100k",
                        "text_fields": ["title"],
                        "modalities": ["text", "behaviour"],
                        "modality_weights": {"text": 1.0, "image": 1.0},
                    }
                }
            },
            "dataset_specs.ml-100k.modality_weights.image: 'image' is not a modality of ml-100k",
        ),
        # PMAT: more prototypes than the synthetic generator has users
        ({"pmat": {"prototypes": 601}}, "pmat.prototypes (601) exceeds the 600 users of 'synthetic'"),
        # PMAT: the short-term window longer than the history a model sees
        ({"pmat": {"window": 21}}, "pmat.window (21) exceeds protocol.history_cap (20)"),
        # PMAT: one modality has nothing to weigh
        (
            {"dataset_specs": {"ml-100k": {"reader": "ml100k", "text_fields": ["title"], "modalities": ["text"]}}},
            "pmat.datasets lists 'ml-100k', but dataset_specs.ml-100k.modalities is ['text']",
        ),
        # PMAT: a dataset that is not run
        ({"datasets": ["synthetic"]}, "pmat.datasets lists 'ml-100k', which is not in datasets"),
        # MCRL: a negative loss weight, a temperature <= 0, an unknown ablation
        ({"mcrl": {"a": -0.5}}, "On instance['mcrl']['a']"),
        ({"mcrl": {"lambda2": -1}}, "On instance['mcrl']['lambda2']"),
        ({"mcrl": {"tau": 0}}, "On instance['mcrl']['tau']"),
        ({"mcrl": {"ablations": ["none", "everything"]}}, "'everything' is not one of"),
        # MCRL: L_inter on a dataset with one modality
        (
            {
                "pmat": {"datasets": ["synthetic"]},
                "mcrl": {"datasets": ["ml-100k", "synthetic"]},
                "dataset_specs": {"ml-100k": {"reader": "ml100k", "text_fields": ["title"], "modalities": ["text"]}},
            },
            "mcrl.ablations ['inter', 'user_inter', 'intra_inter', 'all'] train L_inter on 'ml-100k', whose "
            "dataset_specs.ml-100k.modalities is ['text']",
        ),
        # MCRL: a dataset that is not run
        (
            {"datasets": ["synthetic"], "pmat": {"datasets": ["synthetic"]}, "mcrl": {"datasets": ["ml-100k"]}},
            "mcrl.datasets lists 'ml-100k', which is not in datasets",
        ),
        # releases: a key of another reader
        (
            {"dataset_specs": {"ml-1m": {"path": "somewhere"}}, "datasets": ["ml-1m"], **NO_METHODS},
            "dataset_specs.ml-1m.path is for reader(s) ['ml100k'], not movielens",
        ),
        # releases: a text field the reader does not provide
        (
            {"dataset_specs": {"ml-1m": {"text_fields": ["title", "brand"]}}, "datasets": ["ml-1m"], **NO_METHODS},
            "dataset_specs.ml-1m.text_fields ['brand'] are not fields of reader movielens",
        ),
        # releases: an Amazon dataset with neither a category nor local files
        (
            {
                "dataset_specs": {"x": {"reader": "amazon2018", "text_fields": ["title"], "modalities": ["text"]}},
                "datasets": ["x"],
                **NO_METHODS,
            },
            "dataset_specs.x (reader amazon2018) needs a category to download",
        ),
        # releases: a movielens variant must be named
        (
            {
                "dataset_specs": {"x": {"reader": "movielens", "text_fields": ["title"], "modalities": ["text"]}},
                "datasets": ["x"],
                **NO_METHODS,
            },
            "'category' is a required property",
        ),
        # releases: a category with a path separator
        ({"dataset_specs": {"ml-1m": {"category": "../etc"}}}, "On instance['dataset_specs']['ml-1m']['category']"),
        # releases: a bad stats_check mode
        ({"dataset_specs": {"ml-1m": {"stats_check": "maybe"}}}, "'maybe' is not one of ['error', 'warn', 'skip']"),
        # extra modalities: a modality that is neither built in nor given as a file
        (
            {"dataset_specs": {"ml-1m": {"modalities": ["text", "audio"]}}, "datasets": ["ml-1m"], **NO_METHODS},
            "dataset_specs.ml-1m.modalities lists 'audio', which is neither built in",
        ),
        # extra modalities: the name of a built-in modality
        (
            {
                "dataset_specs": {"ml-1m": {"extra_modalities": {"text": {"path": "t.parquet"}}}},
                "datasets": ["ml-1m"],
                **NO_METHODS,
            },
            "dataset_specs.ml-1m.extra_modalities.text: 'text' is a built-in modality",
        ),
        # local reader: its two files are required
        (
            {
                "dataset_specs": {
                    "x": {"reader": "local", "interactions": "i.csv", "text_fields": ["title"], "modalities": ["text"]}
                },
                "datasets": ["x"],
                **NO_METHODS,
            },
            "'items' is a required property",
        ),
    ],
)
def test_bad_config_fails_at_parse_time_naming_the_key(tmp_path, override, expected):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(override))
    result = run_snakemake(tmp_path, "-n", "--configfile", str(DEFAULT), str(tmp_path / "bad.yaml"), timeout=300)
    assert result.returncode != 0
    assert expected in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def test_missing_required_key_is_named(tmp_path):
    cfg = default_config()
    del cfg["dataset_specs"]["synthetic"]["text_fields"]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    result = run_snakemake(tmp_path, "-n", "--configfile", str(tmp_path / "bad.yaml"), timeout=300)
    assert result.returncode != 0
    assert "'text_fields' is a required property" in result.stdout + result.stderr


def test_image_modality_on_a_text_only_reader_is_rejected(tmp_path):
    override = {
        "dataset_specs": {"ml-100k": {"reader": "ml100k", "text_fields": ["title"], "modalities": ["text", "image"]}}
    }
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(override))
    result = run_snakemake(tmp_path, "-n", "--configfile", str(DEFAULT), str(tmp_path / "bad.yaml"), timeout=300)
    assert result.returncode != 0
    assert "dataset_specs.ml-100k.modalities" in result.stdout + result.stderr


def test_default_dag_builds_and_lint_is_clean(tmp_path):
    result = run_snakemake(tmp_path, "-n", "--configfile", str(DEFAULT), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for rule in [
        "synthetic_dataset",
        "prepare_dataset",
        "text_features",
        "image_features",
        "pseudolabels",
        "rqkmeans_ids",
        "train_tiger",
        "train_sasrec",
        "train_mostpop",
        "train_random",
        "evaluate_tiger",
        "evaluate_sasrec",
        "evaluate_mostpop",
        "evaluate_random",
        "report",
        "behaviour_features",
        "pmat_attention",
        "pmat_ids",
        "pmat_replay",
        "train_pmat_global",
        "train_pmat_static",
        "evaluate_pmat_global",
        "evaluate_pmat_static",
        "evaluate_pmat_full",
        "train_mcrl_none",
        "evaluate_mcrl_all",
        "mcrl_id_space",
        "mcrl_tsne",
    ]:
        assert rule in dry_run_jobs(result.stdout), f"job {rule} missing from the default DAG"
    assert "train_pmat_full" not in dry_run_jobs(result.stdout), "pmat_full ranks with pmat.generator's model"
    lint = run_snakemake(tmp_path, "--lint", "--configfile", str(DEFAULT), timeout=300)
    assert lint.returncode == 0, lint.stdout[-3000:] + lint.stderr[-3000:]
    assert "Congratulations" in lint.stdout + lint.stderr


def test_mcrl_on_a_one_modality_dataset_without_l_inter_starts_from_tiger(tmp_path):
    """A dataset outside PMAT with one modality: L_user and L_intra run, on top of TIGER's generator."""
    override = {
        "pmat": {"datasets": ["synthetic"]},
        "dataset_specs": {"ml-100k": {"reader": "ml100k", "text_fields": ["title"], "modalities": ["text"]}},
        "mcrl": {"datasets": ["ml-100k", "synthetic"], "ablations": ["none", "user", "intra"]},
    }
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(override))
    result = run_snakemake(tmp_path, "-n", "--configfile", str(DEFAULT), str(tmp_path / "ok.yaml"), timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = re.split(r"^\[.*\]$", result.stdout, flags=re.MULTILINE)  # each job starts with a [timestamp] line
    ml100k = [j for j in jobs if "rule train:" in j and "method=mcrl_" in j and "dataset=ml-100k" in j]
    synthetic = [j for j in jobs if "rule train:" in j and "method=mcrl_" in j and "dataset=synthetic" in j]
    assert len(ml100k) == len(synthetic) == 3
    assert all("results/train/ml-100k/tiger/seed0/model.pt" in j for j in ml100k)
    assert all("results/train/synthetic/pmat_static_token/seed0/model.pt" in j for j in synthetic)


REAL_DATASETS = [
    "beauty-2014",
    "sports-2014",
    "toys-2014",
    "instruments-2018",
    "arts-2018",
    "games-2018",
    "instruments-2023",
    "scientific-2023",
    "games-2023",
    "ml-1m",
    "ml-20m",
    "ml-25m",
]


def test_every_release_builds_a_dag_from_its_downloads(tmp_path):
    """Each real dataset of the default config: download jobs for its release's files (official URLs),
    then the protocol, features and IDs."""
    override = {"datasets": REAL_DATASETS, **NO_METHODS}
    (tmp_path / "real.yaml").write_text(yaml.safe_dump(override))
    result = run_snakemake(
        tmp_path,
        "-n",
        "-p",
        "--configfile",
        str(DEFAULT),
        str(tmp_path / "real.yaml"),
        "--",
        *[f"results/tokenize/{d}/rqkmeans/seed0/ids.parquet" for d in REAL_DATASETS],
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    downloads = set(re.findall(r"output: (resources/downloads/\S+)", out))
    assert len(downloads) == 3 * 2 + 3 * 2 + 3 * 4 + 3, sorted(downloads)
    for path in [
        "resources/downloads/amazon2014/reviews_Beauty_5.json.gz",
        "resources/downloads/amazon2018/meta_Video_Games.json.gz",
        "resources/downloads/amazon2023/Musical_Instruments.valid.csv.gz",
        "resources/downloads/movielens/ml-25m.zip",
    ]:
        assert path in downloads
    for rule in ["resolve_images", "image_features", "text_features", "behaviour_features", "rqkmeans_ids"]:
        assert f"rule {rule}:" in out
    # MovieLens has no images, so only the nine Amazon datasets resolve images.
    assert out.count("rule resolve_images:") == 9
