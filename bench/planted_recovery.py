"""Does PMAT's preference network recover planted modality preferences?

For each planted design (``pmsid.data.planted.DESIGNS``) and the bundled
synthetic dataset (``generate_synthetic``, seed 7, 600 users, 400 items, as
the workflow makes it): generate the files, read them with the workflow's own
stages (``prepare_dataset`` with the amazon2018 reader, ``resolve_images``,
``text_features`` with the configured MiniLM, ``image_features`` with timm
efficientnet_lite0), train ``train_modality_attention`` with the config's
``pmat.attention`` (plus history_cap, lambda1, window, lambda_max and cons_temperature as the workflow
passes them), and print per dataset:

- ``nn_image`` / ``nn_text``: 1-NN agreement (cosine on the raw features) of
  the image features on the design's visual attribute and of the text
  features on its textual attribute (chance in brackets);
- Spearman(learned image weight, planted alpha_image), AUC of the image
  weight for image-led vs text-led users, the range of image weights, and the
  best validation InfoNCE.

Features are cached under ``--cache`` (default /tmp/pmsid_planted_cache), so
a rerun only trains. Not a workflow rule: run it by hand, e.g.

    OMP_NUM_THREADS=1 python bench/planted_recovery.py --seeds 0
    OMP_NUM_THREADS=1 python bench/planted_recovery.py --designs disjoint --set lambda1=0
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow" / "scripts"))

from pmsid import stages  # noqa: E402
from pmsid.data import contracts  # noqa: E402
from pmsid.data.loaders import load_sequences  # noqa: E402
from pmsid.data.planted import DESIGNS, generate_planted  # noqa: E402
from pmsid.data.synthetic import generate_synthetic  # noqa: E402
from pmsid.methods.pmat import attention as att  # noqa: E402
from pmsid.methods.pmat.stages import _preference_recovery  # noqa: E402

CONFIG = ROOT / "config" / "config.yaml"
TEXT_FIELDS = ["title", "brand", "categories", "description"]
# The bundled synthetic dataset's attributes that the 1-NN diagnostic reads.
SYNTHETIC_ATTRIBUTES = ("colour", "topic")


def workflow_config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def attention_cfg(config: dict) -> dict:
    """What the workflow's get_pmat_attention_params passes to the trainer."""
    pmat = config["pmat"]
    cfg = {**pmat["attention"], "history_cap": config["protocol"]["history_cap"], "progress": False}
    for key in ("lambda1", "window", "lambda_max", "cons_temperature"):
        if key in pmat and key in att.DEFAULTS:
            cfg[key] = pmat[key]
    return cfg


def build(name: str, seed: int, cache: Path, config: dict) -> dict:
    """Generate (once), prepare and extract features (once); returns the dataset's paths."""
    folder = cache / f"{name}-s{seed}"
    raw_dir = folder / "raw"
    if name == "synthetic":
        attrs = SYNTHETIC_ATTRIBUTES
        if not (raw_dir / "truth_users.parquet").exists():
            generate_synthetic(raw_dir, seed=seed, n_users=600, n_items=400)
        raw = {"reviews": str(raw_dir / "Synthetic_5.json.gz"), "meta": str(raw_dir / "meta_Synthetic.json.gz")}
    else:
        spec = DESIGNS[name]
        attrs = (spec.image_attribute, spec.text_attribute)
        if not (raw_dir / "truth_users.parquet").exists():
            generate_planted(raw_dir, name, seed=seed, n_users=400, n_items=360)
        raw = {"reviews": str(raw_dir / "Planted_5.json.gz"), "meta": str(raw_dir / "meta_Planted.json.gz")}
    data = folder / "data"
    out = {k: str(data / f"{k}.parquet") for k in ("catalogue", "users", "interactions")}
    out["stats"] = str(data / "stats.json")
    if not Path(out["interactions"]).exists():
        data.mkdir(parents=True, exist_ok=True)
        spec = {"reader": "amazon2018", "text_fields": TEXT_FIELDS, "require_image": False}
        stages.prepare_dataset(spec, raw, {"min_interactions": config["protocol"]["min_interactions"]}, out)
    feats = {"text": str(data / "text.parquet"), "image": str(data / "image.parquet")}
    images = str(data / "images.parquet")
    if not Path(images).exists():
        stages.resolve_images(out["catalogue"], str(data / "downloads"), images)
    if not Path(feats["text"]).exists():
        stages.text_features(out["catalogue"], feats["text"], config["features"]["text"], "cpu")
    if not Path(feats["image"]).exists():
        stages.image_features(out["catalogue"], images, feats["image"], config["features"]["image"], "cpu")
    return {
        **out,
        "features": feats,
        "truth_users": str(raw_dir / "truth_users.parquet"),
        "truth_items": str(raw_dir / "truth_items.parquet"),
        "attributes": attrs,
    }


def load(paths: dict):
    """``(features [text, image], seqs, users, item attributes aligned to item_idx)``."""
    seqs = load_sequences(paths["interactions"], paths["catalogue"])
    features = [contracts.read_features(paths["features"][m])[1] for m in ("text", "image")]
    users = contracts.read_table(paths["users"], contracts.USERS)
    items = contracts.read_table(paths["catalogue"], contracts.ITEMS)
    truth_items = pd.read_parquet(paths["truth_items"]).set_index("item_id")
    attrs = truth_items.loc[items.sort_values("item_idx")["item_id"]].reset_index()
    return features, seqs, users, attrs


def nn_agreement(x: np.ndarray, labels: np.ndarray, centre: bool = False) -> float:
    """Share of items whose nearest other item (cosine) has the same label."""
    x = np.asarray(x, dtype=np.float64)
    if centre:
        x = x - x.mean(axis=0)
    x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    return float((labels[sim.argmax(axis=1)] == labels).mean())


def auc(score: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC of ``score`` for ``positive`` (ties count one half)."""
    ranks = pd.Series(score).rank().to_numpy()
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def run_one(name: str, seed: int, train_seed: int, cache: Path, config: dict, overrides: dict) -> dict:
    paths = build(name, seed, cache, config)
    features, seqs, users, attrs = load(paths)
    image_attr, text_attr = paths["attributes"]
    cfg = {**attention_cfg(config), **overrides}
    started = time.perf_counter()
    bundle, frame = att.train_modality_attention(features, seqs, cfg, seed=train_seed, device="cpu")
    alphas = att.user_weights(bundle, features, seqs, "train")
    figures, _ = _preference_recovery(alphas, ["text", "image"], users, paths["truth_users"])
    w = alphas[:, 1]
    img_labels, txt_labels = attrs[image_attr].to_numpy(), attrs[text_attr].to_numpy()
    return {
        "dataset": name,
        "seed": seed,
        "nn_image": nn_agreement(features[1], img_labels),
        "nn_image_chance": float((pd.Series(img_labels).value_counts(normalize=True) ** 2).sum()),
        "nn_text": nn_agreement(features[0], txt_labels),
        "nn_text_chance": float((pd.Series(txt_labels).value_counts(normalize=True) ** 2).sum()),
        "spearman": figures["spearman"],
        "auc": figures["auc"],
        "acc_median": figures["accuracy_median_threshold"],
        "w_min": float(w.min()),
        "w_max": float(w.max()),
        "w_mean": float(w.mean()),
        "valid_infonce": bundle.info["valid_infonce"],
        "best_epoch": bundle.best_epoch,
        "epochs_run": len(frame),
        "train_s": time.perf_counter() - started,
    }


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--designs", nargs="+", default=[*DESIGNS, "synthetic"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="data seeds (synthetic always uses 7)")
    parser.add_argument("--train-seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/pmsid_planted_cache"))
    parser.add_argument("--set", nargs="*", default=[], help="attention cfg overrides key=value (YAML values)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table as CSV")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    config = workflow_config()
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    rows = []
    for name in args.designs:
        for seed in [7] if name == "synthetic" else args.seeds:
            row = run_one(name, seed, args.train_seed, args.cache, config, overrides)
            rows.append(row)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table.round(3).to_string(index=False))
    if args.out:
        table.to_csv(args.out, index=False)
    return table


if __name__ == "__main__":
    main()
