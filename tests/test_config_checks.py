"""The cross-key config checks of pmsid.config, called directly (no Snakemake
run): each error branch names its key, and the default config passes."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys

import pytest
import yaml
from snakemake.utils import validate

from pmsid import config as pc
from pmsid.methods.mcrl import ABLATIONS

from conftest import REPO

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
_DEFAULT = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
ONE_TEXT = {"reader": "ml100k", "text_fields": ["title"], "modalities": ["text"]}


@pytest.fixture
def cfg() -> dict:
    """A fresh copy of config/config.yaml (not yet validated)."""
    return copy.deepcopy(_DEFAULT)


def valid(cfg: dict) -> dict:
    """The config after the schema (defaults filled), as the Snakefile sees it."""
    validate(cfg, str(SCHEMA))
    return cfg


def only(cfg: dict, *names: str) -> dict:
    """Run just `names`, with no method on them."""
    cfg["datasets"] = list(names)
    cfg["pmat"]["datasets"] = []
    cfg["mcrl"]["datasets"] = []
    cfg["hdnag"]["datasets"] = []
    return cfg


def fails(cfg: dict, message: str, known_users=None) -> None:
    """check_config rejects the (validated) config with `message` in its error."""
    with pytest.raises(ValueError, match=re.escape(message)):
        pc.check_config(valid(cfg), known_users)


def test_default_config_passes(cfg):
    assert pc.check_config(valid(cfg)) is None


def test_default_config_passes_with_the_workflows_user_counts(cfg, tmp_path):
    cfg = valid(cfg)
    pc.check_config(cfg, lambda name: pc.known_user_count(cfg, name, tmp_path))


def test_module_imports_without_torch_pandas_or_numpy():
    code = "import sys, pmsid.config; print(sorted({'torch', 'pandas', 'numpy'} & set(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow" / "scripts")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"


def test_every_schema_ablation_has_losses():
    schema = yaml.safe_load(SCHEMA.read_text())
    enum = schema["properties"]["mcrl"]["properties"]["ablations"]["items"]["enum"]
    assert set(enum) == set(ABLATIONS)


# ---- datasets and their specs


def test_dataset_without_a_spec(cfg):
    cfg["datasets"] = ["nope"]
    fails(cfg, "config: datasets lists 'nope' but dataset_specs has no entry for it; described datasets: [")


def test_reader_key_on_another_reader(cfg):
    cfg["dataset_specs"]["ml-1m"]["path"] = "somewhere"
    fails(only(cfg, "ml-1m"), "config: dataset_specs.ml-1m.path is for reader(s) ['ml100k'], not movielens")


@pytest.mark.parametrize("given, missing", [("reviews", "meta"), ("meta", "reviews")])
def test_amazon_local_files_come_in_pairs(cfg, given, missing):
    cfg["dataset_specs"]["x"] = {
        "reader": "amazon2018",
        given: "f.json.gz",
        "text_fields": ["title"],
        "modalities": ["text"],
    }
    fails(
        only(cfg, "x"),
        f"config: dataset_specs.x gives {given} but not {missing}; local Amazon files come in pairs",
    )


def test_amazon_needs_a_category_or_local_files(cfg):
    cfg["dataset_specs"]["x"] = {"reader": "amazon2014", "text_fields": ["title"], "modalities": ["text"]}
    fails(only(cfg, "x"), "config: dataset_specs.x (reader amazon2014) needs a category to download")


def test_amazon_category_and_local_files_together(cfg):
    cfg["dataset_specs"]["games-2018"].update(reviews="r.json.gz", meta="m.json.gz")
    fails(
        only(cfg, "games-2018"),
        "config: dataset_specs.games-2018 gives both a category (download) and local reviews/meta files; keep one",
    )


def test_text_field_the_reader_lacks(cfg):
    cfg["dataset_specs"]["ml-1m"]["text_fields"] = ["title", "brand"]
    fails(
        only(cfg, "ml-1m"),
        "config: dataset_specs.ml-1m.text_fields ['brand'] are not fields of reader movielens; "
        "it provides ['title', 'year', 'genres', 'tags']",
    )


def test_local_reader_takes_any_text_field(cfg):
    cfg["dataset_specs"]["x"] = {
        "reader": "local", "interactions": "i.csv", "items": "t.csv",
        "text_fields": ["whatever"], "modalities": ["text", "image"],
    }  # fmt: skip
    pc.check_config(valid(only(cfg, "x")))


def test_extra_modality_named_like_a_built_in(cfg):
    cfg["dataset_specs"]["ml-1m"]["extra_modalities"] = {"text": {"path": "t.parquet"}}
    fails(only(cfg, "ml-1m"), "config: dataset_specs.ml-1m.extra_modalities.text: 'text' is a built-in modality")


def test_unknown_modality(cfg):
    cfg["dataset_specs"]["ml-1m"]["modalities"] = ["text", "audio"]
    fails(
        only(cfg, "ml-1m"),
        "config: dataset_specs.ml-1m.modalities lists 'audio', which is neither built in "
        "['text', 'image', 'behaviour'] nor under dataset_specs.ml-1m.extra_modalities",
    )


def test_extra_modality_given_as_a_file_passes(cfg):
    cfg["dataset_specs"]["ml-1m"]["modalities"] = ["text", "audio"]
    cfg["dataset_specs"]["ml-1m"]["extra_modalities"] = {"audio": {"path": "a.parquet"}}
    pc.check_config(valid(only(cfg, "ml-1m")))


def test_image_on_a_reader_without_images(cfg):
    cfg["dataset_specs"]["ml-100k"]["modalities"] = ["text", "image"]
    fails(cfg, "config: dataset_specs.ml-100k.modalities asks for 'image', but reader 'ml100k' has no images")


def test_weight_of_a_modality_the_dataset_lacks(cfg):
    cfg["dataset_specs"]["ml-100k"]["modality_weights"] = {"text": 1.0, "image": 1.0}
    fails(
        cfg,
        "config: dataset_specs.ml-100k.modality_weights.image: 'image' is not a modality of ml-100k; "
        "its modalities are ['text', 'behaviour']",
    )


def test_all_zero_weights(cfg):
    cfg["dataset_specs"]["ml-100k"]["modality_weights"] = {"text": 0, "behaviour": 0.0}
    fails(cfg, "config: dataset_specs.ml-100k.modality_weights are all zero")


# ---- PMAT


def test_pmat_dataset_not_run(cfg):
    cfg["datasets"] = ["synthetic"]
    fails(
        cfg,
        "config: pmat.datasets lists 'ml-100k', which is not in datasets ['synthetic']; "
        "add it there or remove it from pmat.datasets",
    )


def test_pmat_on_one_modality(cfg):
    cfg["dataset_specs"]["ml-100k"] = dict(ONE_TEXT)
    fails(
        cfg,
        "config: pmat.datasets lists 'ml-100k', but dataset_specs.ml-100k.modalities is ['text']; "
        "PMAT weighs modalities per user and needs at least two",
    )


def test_more_prototypes_than_known_users(cfg):
    fails(
        cfg,
        "config: pmat.prototypes (4) exceeds the 3 users of 'ml-100k'; every prototype needs users",
        known_users=lambda name: 3,
    )


def test_unknown_user_counts_skip_the_prototype_check(cfg):
    cfg["pmat"]["prototypes"] = 10_000
    pc.check_config(valid(cfg), lambda name: None)


def test_more_prototypes_than_synthetic_users(cfg, tmp_path):
    cfg["pmat"]["prototypes"] = 601
    cfg = valid(cfg)
    with pytest.raises(ValueError, match=re.escape("pmat.prototypes (601) exceeds the 600 users of 'synthetic'")):
        pc.check_config(cfg, lambda name: pc.known_user_count(cfg, name, tmp_path))


def test_known_user_count(cfg, tmp_path):
    cfg = valid(cfg)
    assert pc.known_user_count(cfg, "ml-100k", tmp_path) is None
    assert pc.known_user_count(cfg, "synthetic", tmp_path) == 600  # the generator's upper bound
    for name, users in [("ml-100k", 943), ("synthetic", 512)]:  # an earlier run's stats.json wins
        (tmp_path / name).mkdir()
        (tmp_path / name / "stats.json").write_text(json.dumps({"n_users": users}))
        assert pc.known_user_count(cfg, name, tmp_path) == users


def test_pmat_window_longer_than_history(cfg):
    cfg["pmat"]["window"] = 21
    fails(
        cfg,
        "config: pmat.window (21) exceeds protocol.history_cap (20): the short-term window must fit in the "
        "history a model sees; set pmat.window <= 20",
    )


# ---- MCRL and evaluation


def test_mcrl_dataset_not_run(cfg):
    cfg["datasets"] = ["synthetic"]
    cfg["mcrl"]["datasets"] = ["ml-100k"]
    cfg["pmat"]["datasets"] = ["synthetic"]
    fails(
        cfg,
        "config: mcrl.datasets lists 'ml-100k', which is not in datasets ['synthetic']; "
        "add it there or remove it from mcrl.datasets",
    )


def test_mcrl_inter_on_one_modality(cfg):
    cfg["pmat"]["datasets"] = ["synthetic"]
    cfg["mcrl"]["datasets"] = ["ml-100k", "synthetic"]
    cfg["dataset_specs"]["ml-100k"] = dict(ONE_TEXT)
    fails(
        cfg,
        "config: mcrl.ablations ['inter', 'user_inter', 'intra_inter', 'all'] train L_inter on 'ml-100k', whose "
        "dataset_specs.ml-100k.modalities is ['text']; L_inter contrasts two modalities of an item",
    )


@pytest.mark.parametrize(
    "override", [{"ablations": ["none", "user", "intra"]}, {"b": 0}], ids=["no-inter-ablation", "b-zero"]
)
def test_mcrl_on_one_modality_without_l_inter_passes(cfg, override):
    cfg["pmat"]["datasets"] = ["synthetic"]
    cfg["dataset_specs"]["ml-100k"] = dict(ONE_TEXT)
    cfg["mcrl"].update(override)
    pc.check_config(valid(cfg))


def test_beam_narrower_than_the_top_k(cfg):
    cfg["evaluation"]["beam_size"] = 5
    fails(
        cfg,
        "config: evaluation.beam_size (5) must be >= max(evaluation.ks) (20), "
        "or beam search cannot fill the top-20 list",
    )


# ---- downloads


def test_one_file_from_two_sources(cfg):
    cfg["dataset_specs"]["mirror"] = {**cfg["dataset_specs"]["ml-1m"], "base_url": "http://mirror.test/ml"}
    fails(
        only(cfg, "ml-1m", "mirror"),
        "config: resources/downloads/movielens/ml-1m.zip would be downloaded from both "
        "https://files.grouplens.org/datasets/movielens/ml-1m.zip and http://mirror.test/ml/ml-1m.zip "
        "(dataset mirror); give the datasets the same base_url",
    )


def test_download_sources(cfg):
    cfg["dataset_specs"]["ml-1m-again"] = dict(cfg["dataset_specs"]["ml-1m"])  # same file, same source
    cfg = valid(only(cfg, "ml-1m", "ml-1m-again", "ml-100k", "synthetic", "games-2018"))
    url = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
    base = "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/"
    assert pc.download_sources(cfg) == {
        "resources/downloads/movielens/ml-1m.zip": {"url": url, "md5": None, "md5_url": url + ".md5"},
        "resources/downloads/amazon2018/Video_Games_5.json.gz": {
            "url": base + "categoryFilesSmall/Video_Games_5.json.gz", "md5": None, "md5_url": None
        },
        "resources/downloads/amazon2018/meta_Video_Games.json.gz": {
            "url": base + "metaFiles2/meta_Video_Games.json.gz", "md5": None, "md5_url": None
        },
    }  # fmt: skip


def test_is_downloaded_and_download_files(cfg):
    cfg = valid(cfg)
    assert [pc.is_downloaded(cfg, d) for d in ("ml-100k", "synthetic", "ml-25m", "games-2023")] == [
        False,
        False,
        True,
        True,
    ]
    files = pc.download_files(cfg, "ml-25m")
    assert list(files) == ["archive"]
    path, raw = files["archive"]
    assert path == "resources/downloads/movielens/ml-25m.zip"
    assert raw.md5 == "6b51fb2759a8657d3bfcbfc42b592ada"
    assert list(pc.download_files(cfg, "games-2023")) == ["train", "valid", "test", "meta"]
