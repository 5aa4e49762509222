"""MCRL's stages, from the workflow's files to :mod:`pmsid.methods.mcrl` and back.

- :func:`train`: the generic ``train`` rule for ``mcrl_*`` (stage 2 of the
  schedule on top of the stage-1 generator; see :mod:`pmsid.methods.mcrl.train`
  and :mod:`pmsid.methods.mcrl.method`).
- :func:`id_space`: rule ``mcrl_id_space`` (alignment and uniformity of the
  trained model's ID representations).
- :func:`tsne`: rule ``mcrl_tsne`` (a 2-D map of them for the report's figure).

Evaluation needs no stage of its own: an MCRL model file is a TIGER model
file, ranked exactly as its stage-1 generator is (``pmat_full``'s replayed
tables, or TIGER's single table) by the generic ``evaluate`` rule.
"""

from __future__ import annotations

import logging

import pyarrow as pa

from pmsid.data import contracts
from pmsid.data.loaders import load_id_tables, load_sequences
from pmsid.methods.mcrl import id_space as space
from pmsid.methods.mcrl.train import read_item_features, read_labels, train_mcrl
from pmsid.runtime import seed_everything, write_json
from pmsid.train import recipes

log = logging.getLogger(__name__)


def label_paths(inputs: dict, modalities: list[str]) -> dict[str, str]:
    """``{modality: pseudo-label file}`` from a rule's inputs named ``labels_{modality}``."""
    missing = [m for m in modalities if f"labels_{m}" not in inputs]
    if missing:
        raise ValueError(f"no pseudo-label input for modality(ies) {missing}; expected inputs labels_{{modality}}")
    return {m: inputs[f"labels_{m}"] for m in modalities}


def feature_paths(inputs: dict, modalities: list[str]) -> dict[str, str]:
    """``{modality: feature file}`` from a rule's inputs named ``features_{modality}``.

    The inputs' modalities must be the dataset's ``modalities``, no more and
    no fewer; otherwise fails naming both.
    """
    given = [name.removeprefix("features_") for name in inputs if name.startswith("features_")]
    missing = [m for m in modalities if m not in given]
    extra = [m for m in given if m not in modalities]
    if missing or extra:
        raise ValueError(
            f"the feature inputs are for modalities {given}, the dataset's are {list(modalities)} "
            f"(missing {missing}, unexpected {extra}); expected one input features_{{modality}} per modality"
        )
    return {m: inputs[f"features_{m}"] for m in modalities}


def train(
    inputs: dict,
    outputs: dict,
    modalities: list[str],
    ablation: str,
    cfg: dict,
    checkpoint: str,
    seed: int,
    device: str,
    deterministic: bool,
) -> None:
    """Fine-tune ``inputs["init"]`` (the stage-1 generator) with the losses of ``ablation``.

    Reads the pseudo-labels (inputs ``labels_{modality}``) and the content
    features (inputs ``features_{modality}``) of every modality. With an
    ``assignment`` input the generator is PMAT's personalized one (each
    training prefix in the table stage 1 used, ``prefix_tables``); without,
    TIGER's single table of ``ids``.
    """
    seed_everything(seed, deterministic)
    seqs = load_sequences(inputs["interactions"], inputs["catalogue"])
    codes, tables = load_id_tables(inputs, seqs)
    user_tables = None if tables is None else tables["train"]
    labels = read_labels(label_paths(inputs, modalities), seqs.n_items)
    features = read_item_features(feature_paths(inputs, modalities), seqs.n_items)
    log.info(
        "mcrl_%s: %d users, %d items, modalities %s, seed %d", ablation, seqs.n_users, seqs.n_items, modalities, seed
    )
    train_mcrl(
        seqs,
        codes,
        user_tables,
        inputs["init"],
        labels,
        features,
        ablation,
        cfg,
        outputs["model"],
        outputs["log"],
        outputs["components"],
        checkpoint,
        seed,
        device,
        prefix_tables=None if tables is None else tables.get("prefix"),
    )


def tsne_schema(modalities: list[str]) -> pa.Schema:
    """results/mcrl/{dataset}/mcrl_{ablation}/seed{seed}/tsne.parquet: 2-D map and pseudo-labels per item."""
    fields = [pa.field("item_idx", pa.int32(), nullable=False)]
    fields += [pa.field(axis, pa.float32(), nullable=False) for axis in ("x", "y")]
    fields += [pa.field(f"label_{m}", pa.int32(), nullable=False) for m in modalities]
    return pa.schema(fields)


def _generator_and_labels(inputs: dict, modalities: list[str]):
    generator = recipes.load_generator(inputs["model"])
    paths = label_paths(inputs, modalities)
    labels = {m: lab.numpy() for m, lab in read_labels(paths, generator.n_items).items()}
    return generator, labels


def id_space(inputs: dict, outputs: dict, modalities: list[str], cfg: dict, seed: int) -> None:
    """Write the ID-space measures of one trained model (JSON): alignment per modality, uniformity."""
    generator, labels = _generator_and_labels(inputs, modalities)
    summary = space.summarize(generator, labels, max_items=cfg["max_items"], seed=seed)
    write_json(summary, outputs["summary"])
    log.info(
        "ID space: alignment ratio %s, uniformity %.3f, over %d tables",
        {m: round(v, 3) for m, v in summary["alignment_ratio"].items()},
        summary["uniformity"],
        summary["n_tables"],
    )


def tsne(inputs: dict, outputs: dict, modalities: list[str], cfg: dict, seed: int) -> None:
    """Write the t-SNE map of one trained model's ID representations (table 0) with the pseudo-labels."""
    generator, labels = _generator_and_labels(inputs, modalities)
    frame = space.tsne_frame(
        generator, labels, seed=seed, perplexity=cfg["perplexity"], max_items=cfg["tsne_max_items"]
    )
    contracts.write_table(frame, outputs["tsne"], tsne_schema(modalities))
    log.info("t-SNE of %d items written to %s", len(frame), outputs["tsne"])
