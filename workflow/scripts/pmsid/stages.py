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


def prepare_dataset(spec: dict, raw: dict, protocol: dict, out: dict) -> dict:
    """Raw files to the contract tables ``items``, ``users``, ``interactions``
    plus a ``stats.json``; returns the statistics.

    ``raw`` holds the reader's files (ml100k: ``inter``, ``item``; amazon2018:
    ``reviews``, ``meta``); ``out`` the paths ``catalogue``, ``users``,
    ``interactions``, ``stats``.
    """
    from pmsid.data.protocol import build_dataset

    if spec["reader"] == "ml100k":
        from pmsid.data.ml100k import read_ml100k

        raw_interactions, raw_items = read_ml100k(Path(raw["inter"]).parent)
    elif spec["reader"] == "amazon2018":
        from pmsid.data.amazon2018 import read_amazon2018

        raw_interactions, raw_items = read_amazon2018(raw["reviews"], raw["meta"])
    else:
        raise ValueError(f"dataset_specs.reader: unknown reader {spec['reader']!r}; expected ml100k or amazon2018")
    items, users, interactions, stats = build_dataset(
        raw_interactions,
        raw_items,
        text_fields=spec["text_fields"],
        min_interactions=protocol["min_interactions"],
        require_image=spec.get("require_image", False),
    )
    contracts.write_table(items, out["catalogue"], contracts.ITEMS)
    contracts.write_table(users, out["users"], contracts.USERS)
    contracts.write_table(interactions, out["interactions"], contracts.INTERACTIONS)
    write_json(stats, out["stats"])
    log.info("dataset: %s", json.dumps(stats, default=str))
    return stats


def resolve_images(items_path: str, image_dir: str, out_path: str) -> None:
    """A local image file and a status (ok / missing / broken) per item."""
    from pmsid.data.images import resolve_images as resolve

    items = contracts.read_table(items_path, contracts.ITEMS)
    images = resolve(items, image_dir)
    contracts.write_table(images, out_path, contracts.IMAGES)
    log.info("image status counts: %s", images["status"].value_counts().to_dict())


def text_features(items_path: str, out_path: str, text_cfg: dict, device: str) -> None:
    from pmsid.features.text import extract_text_features

    items = contracts.read_table(items_path, contracts.ITEMS)
    extract_text_features(
        items, out_path, model=text_cfg["model"], batch_size=text_cfg["batch_size"], device=device
    )


def image_features(items_path: str, images_path: str, out_path: str, image_cfg: dict, device: str) -> None:
    from pmsid.features.image import extract_image_features

    items = contracts.read_table(items_path, contracts.ITEMS)
    images = contracts.read_table(images_path, contracts.IMAGES)
    extract_image_features(
        items,
        images,
        out_path,
        backend=image_cfg["backend"],
        model=image_cfg["model"],
        checkpoint=image_cfg["checkpoint"],
        batch_size=image_cfg["batch_size"],
        device=device,
        missing=image_cfg["missing"],
    )


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
