"""One function per workflow rule kind: read the rule's input files, call the
domain code, write the outputs through the data contracts.

The scripts in ``workflow/scripts/`` only unpack ``snakemake.*`` and call one
of these, so every stage can be run and tested without Snakemake.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from pmsid.data import contracts
from pmsid.data.sequences import Sequences

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


def load_sequences(interactions_path: str, items_path: str) -> Sequences:
    items = contracts.read_table(items_path, contracts.ITEMS)
    interactions = contracts.read_table(interactions_path, contracts.INTERACTIONS)
    return Sequences.from_interactions(interactions, n_items=len(items))


def load_codes(ids_path: str, n_items: int) -> np.ndarray:
    """Semantic IDs ``(n_items, levels + 1)``, row i = item_idx i."""
    item_idx, codes = contracts.read_semantic_ids(ids_path)
    if not np.array_equal(item_idx, np.arange(n_items)):
        raise ValueError(
            f"{ids_path}: semantic IDs must cover item_idx 0..{n_items - 1} exactly; "
            f"found {len(item_idx)} rows. Rerun the tokenizer on the current items.parquet."
        )
    return codes


# PMAT's generators (trained) and ablations (evaluated): pmat_static and
# pmat_full rank with the pmat_personalized generator, pmat_full with the ID
# tables after drift-triggered updates (workflow/rules/pmat.smk).
PMAT_GENERATORS = ("pmat_global", "pmat_personalized")
PMAT_EVALUATIONS = ("pmat_global", "pmat_static", "pmat_full")


def load_personalized(inputs: dict, seqs: Sequences) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """PMAT ID tables ``(P, N, L + 1)`` and the table of every user per split."""
    from pmsid.methods.pmat.stages import read_assignment

    codes = contracts.read_personalized_ids(inputs["ids"])
    if codes.shape[1] != seqs.n_items:
        raise ValueError(
            f"{inputs['ids']}: ID tables cover {codes.shape[1]} items, the dataset {seqs.n_items}; rerun pmat_ids"
        )
    tables = read_assignment(inputs["assignment"], seqs.n_users)
    for split, table in tables.items():
        if table.max() >= len(codes):
            raise ValueError(f"{inputs['assignment']}: split {split} names table {table.max()} of {len(codes)}")
    return codes, tables


def train_model(
    model: str,
    inputs: dict,
    cfg: dict,
    outputs: dict,
    checkpoint: str,
    seed: int,
    device: str,
    deterministic: bool,
) -> None:
    """Train ``model`` for one seed: "tiger" (RQ-KMeans IDs), "sasrec", or a
    PMAT generator ("pmat_global", "pmat_personalized": the TIGER generator
    under PMAT's ID tables, each user under its prototype's table)."""
    from pmsid.models import api
    from pmsid.train.utils import seed_everything

    seed_everything(seed, deterministic)
    seqs = load_sequences(inputs["interactions"], inputs["catalogue"])
    log.info("%s: %d users, %d items, seed %d", model, seqs.n_users, seqs.n_items, seed)
    if model == "tiger":
        codes = load_codes(inputs["ids"], seqs.n_items)
        api.train_tiger(seqs, codes, cfg, outputs["model"], outputs["log"], checkpoint, seed, device)
    elif model == "sasrec":
        api.train_sasrec(seqs, cfg, outputs["model"], outputs["log"], checkpoint, seed, device)
    elif model in PMAT_GENERATORS:
        codes, tables = load_personalized(inputs, seqs)
        api.train_tiger(
            seqs, codes, cfg, outputs["model"], outputs["log"], checkpoint, seed, device, user_tables=tables["train"]
        )
    else:
        raise ValueError(f"unknown model {model!r}; expected tiger, sasrec or one of {PMAT_GENERATORS}")


def evaluate_model(model: str, inputs: dict, evaluation: dict, protocol: dict, outputs: dict, device: str) -> None:
    """Rank the valid and test targets of every user; write per-user ranks and means."""
    from pmsid.models import api

    seqs = load_sequences(inputs["interactions"], inputs["catalogue"])
    if model == "tiger" or model in PMAT_EVALUATIONS:
        if model == "tiger":
            codes, user_tables = load_codes(inputs["ids"], seqs.n_items), None
        else:
            codes, tables = load_personalized(inputs, seqs)
            user_tables = {"valid": tables["valid"], "test": tables["test"]}
        per_user, metrics = api.evaluate_tiger(
            inputs["model"],
            seqs,
            codes,
            ks=evaluation["ks"],
            beam_size=evaluation["beam_size"],
            exclude_history=protocol["exclude_history"],
            device=device,
            user_tables=user_tables,
        )
    elif model == "sasrec":
        per_user, metrics = api.evaluate_sasrec(
            inputs["model"], seqs, ks=evaluation["ks"], exclude_history=protocol["exclude_history"], device=device
        )
    else:
        raise ValueError(f"unknown model {model!r}; expected tiger, sasrec or one of {PMAT_EVALUATIONS}")
    contracts.write_table(per_user, outputs["per_user"], contracts.PER_USER)
    # The report refuses to put runs of different protocols in one table.
    contracts.write_table(
        metrics, outputs["metrics"], contracts.METRICS, metadata={"exclude_history": protocol["exclude_history"]}
    )
    test = metrics[metrics["split"] == "test"].set_index("metric")["value"]
    log.info("%s test: %s", model, ", ".join(f"{k}={v:.4f}" for k, v in test.items()))


def write_json(obj: dict, path: str) -> None:
    """Write ``obj`` as indented JSON, atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, default=json_default) + "\n")
    os.replace(tmp, path)


def json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value)}")
