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
    _write_json(stats, out["stats"])
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
    """Train ``model`` ("tiger" or "sasrec") for one seed."""
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
    else:
        raise ValueError(f"unknown model {model!r}; expected tiger or sasrec")


def evaluate_model(model: str, inputs: dict, evaluation: dict, protocol: dict, outputs: dict, device: str) -> None:
    """Rank the valid and test targets of every user; write per-user ranks and means."""
    from pmsid.models import api

    seqs = load_sequences(inputs["interactions"], inputs["catalogue"])
    if model == "tiger":
        codes = load_codes(inputs["ids"], seqs.n_items)
        per_user, metrics = api.evaluate_tiger(
            inputs["model"],
            seqs,
            codes,
            ks=evaluation["ks"],
            beam_size=evaluation["beam_size"],
            exclude_history=protocol["exclude_history"],
            device=device,
        )
    elif model == "sasrec":
        per_user, metrics = api.evaluate_sasrec(
            inputs["model"], seqs, ks=evaluation["ks"], exclude_history=protocol["exclude_history"], device=device
        )
    else:
        raise ValueError(f"unknown model {model!r}; expected tiger or sasrec")
    contracts.write_table(per_user, outputs["per_user"], contracts.PER_USER)
    # The report refuses to put runs of different protocols in one table.
    contracts.write_table(
        metrics, outputs["metrics"], contracts.METRICS, metadata={"exclude_history": protocol["exclude_history"]}
    )
    test = metrics[metrics["split"] == "test"].set_index("metric")["value"]
    log.info("%s test: %s", model, ", ".join(f"{k}={v:.4f}" for k, v in test.items()))


def _write_json(obj: dict, path: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value)}")
