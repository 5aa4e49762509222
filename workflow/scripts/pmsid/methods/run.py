"""The two stages every method goes through: train and evaluate.

The workflow's generic ``train`` and ``evaluate`` rules call
:func:`train_method` and :func:`evaluate_method` with the method's name; the
registry (:mod:`pmsid.methods.registry`) says which module implements it.
Evaluation is the same for every method: the module ranks, and
:func:`pmsid.evaluate.ranking.evaluate_rankings` turns the lists into
``ranking.parquet``, ``per_user.parquet`` and ``metrics.parquet``.

A training job given several GPUs runs in that many torchrun processes
(:func:`pmsid.train.ddp.launch`); each runs the method's ``train``, and only
rank 0's files are kept.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from pmsid.data import contracts
from pmsid.data.loaders import load_sequences
from pmsid.data.sequences import Sequences
from pmsid.evaluate.ranking import evaluate_rankings, list_length
from pmsid.methods import registry
from pmsid.train import ddp

log = logging.getLogger(__name__)


@dataclass
class TrainJob:
    """Everything a method's ``train`` gets.

    ``inputs`` are the rule's named input files (``interactions``,
    ``catalogue`` and what the method's needs name); ``outputs`` the paths
    ``model``, ``log`` and ``extras`` (a folder for any further files);
    ``cfg`` the method's config section; ``protocol`` and ``evaluation`` the
    config's sections of those names.
    """

    method: str
    dataset: str
    seed: int
    inputs: dict
    outputs: dict
    cfg: dict
    protocol: dict
    evaluation: dict
    modalities: list[str]
    checkpoint: str
    device: str = "auto"
    deterministic: bool = False
    options: dict = field(default_factory=dict)


@dataclass
class RankJob:
    """Everything a method's ``rank`` gets: the trained ``model`` path, the
    rule's inputs, the users' sequences, the list length ``k`` and whether
    to exclude each user's history from the ranking."""

    method: str
    dataset: str
    seed: int
    model: str
    inputs: dict
    seqs: Sequences
    k: int
    exclude_history: bool
    evaluation: dict
    protocol: dict
    device: str = "auto"
    options: dict = field(default_factory=dict)


def train_method(
    method: str, dataset: str, seed: int, inputs: dict, outputs: dict, params: dict, gpus: int = 0
) -> None:
    """Train ``method`` on ``dataset`` for one seed (the generic ``train`` rule).

    ``gpus`` > 1 (the rule's ``gpu`` resource) trains in that many processes
    under DistributedDataParallel, ``cfg["batch_size"]`` staying the global batch.
    """
    spec = registry.get(method)
    if not spec.trains:
        raise ValueError(f"method {method} has no training of its own; it ranks with another method's model")
    Path(outputs["extras"]).mkdir(parents=True, exist_ok=True)
    job = TrainJob(
        method=method,
        dataset=dataset,
        seed=seed,
        inputs=inputs,
        outputs=outputs,
        cfg=dict(params["cfg"]),
        protocol=dict(params["protocol"]),
        evaluation=dict(params["evaluation"]),
        modalities=list(params["modalities"]),
        checkpoint=params["checkpoint"],
        device=params["device"],
        deterministic=params["deterministic"],
        options=dict(spec.options),
    )
    log.info("train %s on %s, seed %d%s", method, dataset, seed, f", {gpus} processes (DDP)" if gpus > 1 else "")
    if gpus > 1:
        ddp.launch(gpus, train_job, replace(job, inputs=_plain(job.inputs), outputs=_plain(job.outputs)))
    else:
        train_job(job)


def train_job(job: TrainJob) -> None:
    """Run the method's ``train``; a torchrun rank other than 0 writes its files to a scratch folder."""
    if ddp.rank() == 0:
        registry.implementation(job.method).train(job)
        return
    with tempfile.TemporaryDirectory(prefix=f"pmsid-rank{ddp.rank()}-") as scratch:
        outputs = {key: str(Path(scratch, key, Path(path).name)) for key, path in job.outputs.items()}
        for path in outputs.values():
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(outputs["extras"]).mkdir()
        registry.implementation(job.method).train(replace(job, outputs=outputs))


def _plain(files: dict) -> dict:
    """Snakemake's file objects as str, lists of them as lists: picklable for the ranks."""
    return {key: [str(f) for f in value] if isinstance(value, list) else str(value) for key, value in files.items()}


def evaluate_method(method: str, dataset: str, seed: int, inputs: dict, outputs: dict, params: dict) -> None:
    """Rank the valid and test targets of every user with ``method``; write
    ``ranking``, ``per_user`` and ``metrics`` (the generic ``evaluate`` rule)."""
    spec = registry.get(method)
    evaluation, protocol = dict(params["evaluation"]), dict(params["protocol"])
    seqs = load_sequences(inputs["interactions"], inputs["catalogue"])
    job = RankJob(
        method=method,
        dataset=dataset,
        seed=seed,
        model=inputs["model"],
        inputs=inputs,
        seqs=seqs,
        k=list_length(evaluation["ks"]),
        exclude_history=protocol["exclude_history"],
        evaluation=evaluation,
        protocol=protocol,
        device=params["device"],
        options=dict(spec.options),
    )
    rankings = registry.implementation(method).rank(job)
    ranking, per_user, metrics = evaluate_rankings(seqs, rankings, evaluation["ks"], protocol["history_cap"])
    # The report refuses to put runs of different protocols in one table.
    meta = {"exclude_history": protocol["exclude_history"], "method": method, "dataset": dataset, "seed": seed}
    contracts.write_table(ranking, outputs["ranking"], contracts.RANKING, metadata=meta)
    contracts.write_table(per_user, outputs["per_user"], contracts.PER_USER, metadata=meta)
    contracts.write_table(metrics, outputs["metrics"], contracts.METRICS, metadata=meta)
    test = metrics[metrics["split"] == "test"].set_index("metric")["value"]
    log.info("%s test: %s", method, ", ".join(f"{k}={v:.4f}" for k, v in test.items()))
