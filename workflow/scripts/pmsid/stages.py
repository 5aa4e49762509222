"""One function per data and feature rule: read the rule's input files, call
the domain code, write the outputs through the data contracts. (Methods
train and rank through :mod:`pmsid.methods.run`.)

The scripts in ``workflow/scripts/`` only unpack ``snakemake.*`` and call one
of these, so every stage can be run and tested without Snakemake.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pmsid.data import contracts
from pmsid.runtime import write_json

log = logging.getLogger(__name__)


def download(source: dict, out_path: str, downloads: dict) -> dict:
    """One raw file of a release: resumed, retried, verified (MD5 where the
    release publishes one, SHA-256 against the committed checksum table)."""
    from pmsid.data.download import download_file

    info = download_file(
        source["url"],
        out_path,
        md5=source.get("md5"),
        md5_url=source.get("md5_url"),
        checksum_table=downloads["checksums"],
        table_key=f"{Path(out_path).parent.name}/{Path(out_path).name}",  # <reader>/<file>: names repeat across releases
        retries=downloads["retries"],
        backoff=downloads["backoff_s"],
        timeout=downloads["timeout_s"],
    )
    log.info("download: %s", json.dumps(info, default=str))
    return info


def read_raw(spec: dict, raw: dict):
    """The reader of ``spec["reader"]`` on its raw files: ``(raw_interactions, raw_items)``."""
    if spec["reader"] == "ml100k":
        from pmsid.data.ml100k import read_ml100k

        return read_ml100k(Path(raw["inter"]).parent)
    if spec["reader"] == "amazon2018":  # local files or a download: the same two files
        from pmsid.data.amazon2018 import read_amazon2018

        return read_amazon2018(raw["reviews"], raw["meta"])
    from pmsid.data.releases import read_release

    return read_release(spec["reader"], raw, spec.get("category"))


def prepare_dataset(spec: dict, raw: dict, protocol: dict, out: dict) -> dict:
    """Raw files to the contract tables ``items``, ``users``, ``interactions``
    plus a ``stats.json``; returns the statistics.

    ``raw`` holds the reader's files (ml100k: ``inter``, ``item``; amazon
    2014/2018: ``reviews``, ``meta``; amazon2023: ``train``, ``valid``,
    ``test``, ``meta``; movielens: ``archive``; local: ``interactions``,
    ``items``); ``out`` the paths ``catalogue``, ``users``, ``interactions``,
    ``stats``. When ``spec["expected"]`` holds statistics, they are checked
    (``spec["stats_check"]``: error, warn or skip).
    """
    from pmsid.data.protocol import build_dataset

    raw_interactions, raw_items = read_raw(spec, raw)
    items, users, interactions, stats = build_dataset(
        raw_interactions,
        raw_items,
        text_fields=spec["text_fields"],
        min_interactions=protocol["min_interactions"],
        require_image=spec.get("require_image", False),
    )
    expected = spec.get("expected")
    if expected:
        from pmsid.data.releases import check_stats

        mode = spec.get("stats_check", "error")
        mismatches = check_stats(stats, expected, mode, spec.get("name", "dataset"))
        stats["expected"] = dict(expected)
        stats["stats_check"] = {"mode": mode, "mismatches": mismatches}
        if mode != "skip" and not mismatches:
            log.info("statistics match the expected figures %s", expected)
    contracts.write_table(items, out["catalogue"], contracts.ITEMS)
    contracts.write_table(users, out["users"], contracts.USERS)
    contracts.write_table(interactions, out["interactions"], contracts.INTERACTIONS)
    write_json(stats, out["stats"])
    log.info("dataset: %s", json.dumps(stats, default=str))
    return stats


def resolve_images(items_path: str, image_dir: str, out_path: str, downloads: dict | None = None) -> None:
    """A local image file and a status (ok / missing / broken) per item;
    http(s) images are downloaded concurrently (``downloads``: the config's
    downloads section)."""
    from pmsid.data.images import resolve_images as resolve

    downloads = downloads or {}
    items = contracts.read_table(items_path, contracts.ITEMS)
    images = resolve(
        items,
        image_dir,
        timeout=downloads.get("timeout_s", 10),
        retries=downloads.get("image_retries", 3),
        workers=downloads.get("image_workers", 8),
        backoff=downloads.get("backoff_s", 1.0),
    )
    contracts.write_table(images, out_path, contracts.IMAGES)
    log.info("image status counts: %s", images["status"].value_counts().to_dict())


def text_features(items_path: str, out_path: str, text_cfg: dict, device: str) -> None:
    from pmsid.features.text import run_text_features

    run_text_features(items_path, out_path, text_cfg, device)


def image_features(items_path: str, images_path: str, out_path: str, image_cfg: dict, device: str) -> None:
    from pmsid.features.image import run_image_features

    run_image_features(items_path, images_path, out_path, image_cfg, device)


def external_features(items_path: str, source_path: str, out_path: str, modality: str, extra: dict) -> None:
    """A modality given as precomputed per-item features, aligned to the items."""
    from pmsid.features.external import align_external_features

    align_external_features(items_path, source_path, out_path, modality, missing=extra.get("missing", "error"))


def reduce_features(in_path: str, out_path: str, reduce: dict) -> None:
    """features.reduce: PCA or a random projection to ``reduce["dim"]``."""
    from pmsid.features.reduce import reduce_features as reduce_to

    reduce_to(in_path, out_path, dim=reduce["dim"], method=reduce["method"], seed=reduce["seed"])
