"""Every dataset release through the workflow, from download to semantic IDs.

The fixtures of ``tests/fixtures/releases/`` (each release's exact raw
format, a few dozen lines) are served by a local HTTP server on 127.0.0.1;
the workflow downloads them with its own download rule (checksums recorded),
parses and filters them, checks their statistics, downloads and decodes the
item images, extracts text and image features (and takes a precomputed
audio modality for the local-format dataset), reduces the text features by
PCA, and builds RQ-KMeans IDs. Minutes: one Snakemake run of ~50 small jobs.
"""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from httpserver import LocalServer
from mirror import build_mirror

from conftest import REPO, run_snakemake

DEFAULT = REPO / "config" / "config.yaml"
AMAZON_TEXT = ["title", "brand", "categories", "description"]
# Workflow dataset name -> (fixture name in build_mirror, modalities).
DATASETS = {
    "beauty-2014-fx": ("amazon2014", ["text", "image"]),
    "instruments-2018-fx": ("amazon2018", ["text", "image"]),
    "instruments-2023-fx": ("amazon2023", ["text", "image"]),
    "ml-1m-fx": ("ml-1m", ["text", "behaviour"]),
    "ml-25m-fx": ("ml-25m", ["text"]),
    "local-fx": ("local", ["text", "image", "audio"]),
}
DOWNLOADS = [  # <reader>/<file> keys of the checksum table
    "amazon2014/reviews_Beauty_5.json.gz",
    "amazon2014/meta_Beauty.json.gz",
    "amazon2018/Musical_Instruments_5.json.gz",
    "amazon2018/meta_Musical_Instruments.json.gz",
    "amazon2023/Musical_Instruments.train.csv.gz",
    "amazon2023/Musical_Instruments.valid.csv.gz",
    "amazon2023/Musical_Instruments.test.csv.gz",
    "amazon2023/meta_Musical_Instruments.jsonl.gz",
    "movielens/ml-1m.zip",
    "movielens/ml-25m.zip",
]
COUNTS = ("n_users", "n_items", "n_interactions")


def release_config(mirror: dict, base: str) -> dict:
    """A config that runs the six fixture datasets up to their IDs."""
    specs = {}
    for name, (fixture, modalities) in DATASETS.items():
        info = mirror[fixture]
        spec = {
            "reader": info["reader"],
            "text_fields": list(info["text_fields"]),
            "modalities": modalities,
            "require_image": bool(info.get("require_image", False)),
            "expected": {k: int(info["stats"][k]) for k in COUNTS},
        }
        if info["reader"] == "local":
            spec["interactions"] = info["raw"]["interactions"]
            spec["items"] = info["raw"]["items"]
            spec["extra_modalities"] = {"audio": {"path": str(info["audio"]["path"]), "missing": "mean"}}
        else:
            spec["category"] = info["category"]
            spec["base_url"] = f"{base}/{info['reader']}/"
        specs[name] = spec
    return {
        "datasets": list(DATASETS),
        "dataset_specs": specs,
        "pmat": {"datasets": []},
        "mcrl": {"datasets": []},
        "hdnag": {"datasets": []},
        "downloads": {"checksums": "checksums.tsv", "retries": 2, "backoff_s": 0.1, "image_workers": 4},
        "features": {"reduce": {"modalities": ["text"], "dim": 4, "method": "pca"}},
        "pseudolabels": {"n_clusters": 3},
        "tokenizer": {"levels": 2, "codes": 4, "n_init": 1},
    }


def targets() -> list[str]:
    return [f"results/tokenize/{name}/rqkmeans/seed0/ids.parquet" for name in DATASETS] + [
        f"results/data/{name}/stats.json" for name in DATASETS
    ]


@pytest.fixture(scope="module")
def release_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("mirror")
    workdir = tmp_path_factory.mktemp("releases")
    with LocalServer(root=root) as server:
        mirror = build_mirror(root, image_base=server.base)
        config = workdir / "releases.yaml"
        config.write_text(yaml.safe_dump(release_config(mirror, server.base)))
        result = run_snakemake(workdir, "--cores", "2", *targets(), "--configfile", str(DEFAULT), str(config))
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-6000:]
        yield workdir, mirror, server, config


def test_every_raw_file_was_downloaded_and_its_checksum_recorded(release_run):
    workdir, mirror, server, _ = release_run
    table = pd.read_csv(workdir / "checksums.tsv", sep="\t", comment="#")
    assert sorted(table["file"]) == sorted(DOWNLOADS)
    for key in DOWNLOADS:
        assert (workdir / "resources" / "downloads" / key).is_file(), key
    # MovieLens: the official .md5 file was fetched beside the zip.
    assert server.requests_for("movielens/ml-1m.zip.md5")
    assert server.requests_for("movielens/ml-25m.zip.md5")


def test_each_release_gives_its_fixture_statistics(release_run):
    workdir, mirror, _, _ = release_run
    for name, (fixture, _) in DATASETS.items():
        stats = json.loads((workdir / "results" / "data" / name / "stats.json").read_text())
        for key in COUNTS:
            assert stats[key] == mirror[fixture]["stats"][key], (name, key)
        assert stats["stats_check"] == {"mode": "error", "mismatches": []}, name
    # Amazon 2023 keeps the official split instead of recomputing one.
    assert json.loads((workdir / "results/data/instruments-2023-fx/stats.json").read_text())["given_split"] is True


def test_item_images_were_downloaded_and_classified(release_run):
    workdir, _, _, _ = release_run
    for name in ("beauty-2014-fx", "instruments-2018-fx", "instruments-2023-fx", "local-fx"):
        images = pd.read_parquet(workdir / "results" / "data" / name / "images.parquet")
        items = pd.read_parquet(workdir / "results" / "data" / name / "items.parquet")
        assert len(images) == len(items), name
        assert (images["status"] == "ok").sum() > 0, name
    counts = pd.read_parquet(workdir / "results/data/instruments-2018-fx/images.parquet")["status"].value_counts()
    assert counts.get("missing", 0) == 1 and counts.get("broken", 0) == 1, counts.to_dict()


def test_features_and_ids_cover_every_item(release_run):
    workdir, _, _, _ = release_run
    for name, (_, modalities) in DATASETS.items():
        n_items = len(pd.read_parquet(workdir / "results" / "data" / name / "items.parquet"))
        for modality in modalities:
            features = pd.read_parquet(workdir / "results" / "features" / name / f"{modality}.parquet")
            assert len(features) == n_items, (name, modality)
        ids = pd.read_parquet(workdir / "results" / "tokenize" / name / "rqkmeans" / "seed0" / "ids.parquet")
        assert len(ids) == n_items and ids["codes"].map(tuple).is_unique, name
        # features.reduce: text is PCA-reduced to 4 dims; the extraction is kept in full (MiniLM, 384).
        reduced = pq.read_table(workdir / "results" / "features" / name / "text.parquet")
        full = pq.read_table(workdir / "results" / "features" / name / "text.full.parquet")
        assert len(reduced.column("embedding")[0]) == 4 and len(full.column("embedding")[0]) == 384


def test_extra_modality_is_aligned_with_the_missing_policy(release_run):
    workdir, mirror, _, _ = release_run
    source = pd.read_parquet(mirror["local"]["audio"]["path"])
    items = pd.read_parquet(workdir / "results/data/local-fx/items.parquet")
    audio = pd.read_parquet(workdir / "results/features/local-fx/audio.parquet")
    by_id = dict(zip(source["item_id"], source["embedding"]))
    present = items["item_id"].isin(by_id)
    assert (~present).sum() == 1  # the fixture leaves one item out: it gets the mean
    for item_idx, item_id in zip(items["item_idx"], items["item_id"]):
        row = audio.loc[audio["item_idx"] == item_idx, "embedding"].iloc[0]
        if item_id in by_id:
            assert list(row) == pytest.approx(list(by_id[item_id]))
    mean = pd.DataFrame(audio.loc[present.to_numpy(), "embedding"].tolist()).mean().to_numpy()
    missing_row = audio.loc[~present.to_numpy(), "embedding"].iloc[0]
    assert list(missing_row) == pytest.approx(list(mean), abs=1e-6)


def test_rerun_after_success_has_nothing_to_do(release_run):
    workdir, _, _, config = release_run
    result = run_snakemake(workdir, "-n", *targets(), "--configfile", str(DEFAULT), str(config))
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


def test_a_source_that_is_down_names_the_url_and_the_manual_path(tmp_path):
    with LocalServer(root=tmp_path / "empty") as server:
        override = {
            "datasets": ["games-2018"],
            "dataset_specs": {"games-2018": {"base_url": f"{server.base}/amazon2018/"}},
            "pmat": {"datasets": []},
            "mcrl": {"datasets": []},
            "hdnag": {"datasets": []},
            "downloads": {"checksums": "checksums.tsv", "retries": 1, "backoff_s": 0},
        }
        (tmp_path / "down.yaml").write_text(yaml.safe_dump(override))
        target = "resources/downloads/amazon2018/Video_Games_5.json.gz"
        result = run_snakemake(
            tmp_path, "--cores", "1", target, "--configfile", str(DEFAULT), str(tmp_path / "down.yaml")
        )
    assert result.returncode != 0
    log = (tmp_path / "logs" / "download" / "amazon2018" / "Video_Games_5.json.gz.log").read_text()
    assert f"{server.base}/amazon2018/categoryFilesSmall/Video_Games_5.json.gz" in log
    assert str(tmp_path / target) in log and "place it at" in log
    assert not (tmp_path / target).exists()
