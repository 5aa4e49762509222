"""Shared fixtures: paths of the repository and a runner for Snakemake."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

REPO = Path(__file__).resolve().parents[1]

# The files every report has, whatever its sections (pmsid.report.build.build_report).
REPORT_TABLES = ["main_comparison", "significance", "id_quality", "decoding", "training_budget"]
TABLE_FORMATS = ["csv", "md", "tex", "html"]  # pmsid.report.tables.write_table_formats
REPORT_BASE_FILES = [f"{s}.{e}" for s in REPORT_TABLES for e in TABLE_FORMATS]
REPORT_BASE_FILES += ["codebook_utilization.png", "training_curves.png", "metric_comparison.png", "README.md"]


def run_snakemake(workdir: Path, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    """Run the repository's workflow with ``workdir`` as working directory."""
    snakemake = Path(sys.executable).with_name("snakemake")
    cmd = [str(snakemake), "-s", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture
def snakemake_runner():
    return run_snakemake


@pytest.fixture
def http_server():
    """A running :class:`httpserver.LocalServer` on 127.0.0.1; add files with ``http_server.files[path] = bytes``."""
    from httpserver import LocalServer

    with LocalServer() as server:
        yield server


def evaluate_tiger(model_path, seqs, codes, ks, beam_size, exclude_history, device="cpu", user_tables=None):
    """``(per_user, metrics)`` of a saved generator, through the generic evaluation."""
    from pmsid.evaluate.ranking import evaluate_rankings
    from pmsid.methods.tiger import rank_generator

    rankings = rank_generator(model_path, seqs, codes, beam_size, ks, exclude_history, device, user_tables)
    _, per_user, metrics = evaluate_rankings(seqs, rankings, ks, history_cap=20)
    return per_user, metrics


def evaluate_sasrec(model_path, seqs, ks, exclude_history, device="cpu"):
    """``(per_user, metrics)`` of a saved SASRec, through the generic evaluation."""
    from types import SimpleNamespace

    from pmsid.evaluate.ranking import evaluate_rankings, list_length
    from pmsid.methods import sasrec

    job = SimpleNamespace(
        model=str(model_path), seqs=seqs, k=list_length(ks), exclude_history=exclude_history, device=device
    )
    _, per_user, metrics = evaluate_rankings(seqs, sasrec.rank(job), ks, history_cap=20)
    return per_user, metrics


def write_contract_dataset(root: Path, seqs: list, n_items: int) -> dict:
    """Users' item sequences ``seqs`` as items.parquet and interactions.parquet (the last item of each
    sequence is the test target, the one before the valid target); returns the two paths."""
    import numpy as np
    import pandas as pd

    from pmsid.data import contracts

    items = pd.DataFrame({"item_idx": np.arange(n_items, dtype=np.int32), "item_id": [f"i{i}" for i in range(n_items)]})
    for name in {f.name for f in contracts.ITEMS} - set(items.columns):
        items[name] = "x"
    rows = []
    for user, seq in enumerate(seqs):
        for pos, item in enumerate(seq):
            split = "test" if pos == len(seq) - 1 else "valid" if pos == len(seq) - 2 else "train"
            rows.append({"user_idx": user, "item_idx": item, "timestamp": pos, "position": pos, "split": split})
    inter = pd.DataFrame(rows).astype(
        {"user_idx": "int32", "item_idx": "int32", "timestamp": "int64", "position": "int32"}
    )
    paths = {"catalogue": str(Path(root) / "items.parquet"), "interactions": str(Path(root) / "interactions.parquet")}
    contracts.write_table(items, paths["catalogue"], contracts.ITEMS)
    contracts.write_table(inter, paths["interactions"], contracts.INTERACTIONS)
    return paths


def dry_run_jobs(output: str) -> set[str]:
    """Jobs of a dry run's output: the rule name, or ``{rule}_{method}`` for
    the generic train / evaluate rules (e.g. ``train_tiger``, ``evaluate_mcrl_all``)."""
    import re

    jobs = set()
    for block in re.split(r"^\[.*\]$", output, flags=re.MULTILINE):  # each job starts with a [timestamp] line
        rule = re.search(r"^rule (\w+):", block, flags=re.MULTILINE)
        if rule is None:
            continue
        method = re.search(r"method=([\w-]+)", block)
        jobs.add(f"{rule[1]}_{method[1]}" if method and rule[1] in ("train", "evaluate") else rule[1])
    return jobs


def report_manifest(metrics=(), per_user=(), quality=(), train=(), **named) -> list[dict]:
    """A report manifest (``pmsid.report.build.build_report``) from lists of paths:
    the main section's ``metrics`` / ``per_user`` / ``train`` logs, the
    tokenizers' ``quality``, and ``{kind}_paths`` keywords: ``mcrl_*_paths``
    (the MCRL section's metrics, per_user, components, id_space, tsne),
    ``pmat_*_paths`` and ``dataset_*_paths`` (kinds of those names)."""
    entries = [{"kind": "metrics", "path": str(p), "sections": ["main"]} for p in metrics]
    entries += [{"kind": "per_user", "path": str(p), "sections": ["main"]} for p in per_user]
    entries += [{"kind": "train_log", "path": str(p), "sections": ["main"]} for p in train]
    entries += [{"kind": "quality", "path": str(p)} for p in quality]
    for key, paths in named.items():
        kind = key.removesuffix("_paths")
        if kind.startswith("mcrl_"):
            entries += [{"kind": kind.removeprefix("mcrl_"), "path": str(p), "sections": ["mcrl"]} for p in paths]
        else:
            entries += [{"kind": kind, "path": str(p)} for p in paths]
    from pmsid.methods import registry

    merged = []
    for entry in entries:
        meta = _method_metadata(entry["path"])
        sections = list(dict.fromkeys([*entry.get("sections", []), *meta.get("sections", [])]))
        merged.append({**meta, **entry, "sections": sections})
    # The workflow's manifest lists runs in registry order, which is the tables' row order.
    order = {name: i for i, name in enumerate(registry.METHODS)}
    return sorted(merged, key=lambda e: order.get(e.get("method"), -1))


def _method_metadata(path: str) -> dict:
    """The registry's metadata of the method a run path names (as the workflow's manifest has it)."""
    import re

    from pmsid.methods import registry

    m = re.search(r"results/(?:evaluate|train|mcrl)/[^/]+/([^/]+)/seed\d+/", path)
    if m is None or m[1] not in registry.METHODS:
        return {}
    from pmsid.manifest import method_entry

    return method_entry(registry.get(m[1]))


def section_rows(section: str):
    """The report rows of ``section`` for every registered method (registry order)."""
    from pmsid.manifest import method_entry
    from pmsid.methods import registry
    from pmsid.report.tables import SectionRows

    return SectionRows.from_manifest([method_entry(s) for s in registry.METHODS.values()], section)


class Cell(NamedTuple):
    """A table cell read back: ``mean``, ``std`` (None for one seed) and its markers."""

    mean: float
    std: float | None
    best: bool  # **bold**
    second: bool  # <u>underlined</u>
    marked: bool  # the significance marker


def parse_cell(cell) -> Cell:
    """``'**0.1234 ± 0.0100**†'`` -> ``Cell(0.1234, 0.01, best=True, second=False, marked=True)``."""
    from pmsid.report.tables import PM, SIG_MARK

    text = str(cell)
    marked = text.endswith(SIG_MARK)
    text = text.removesuffix(SIG_MARK)
    best = text.startswith("**") and text.endswith("**")
    second = text.startswith("<u>") and text.endswith("</u>")
    text = text.strip("*").removeprefix("<u>").removesuffix("</u>")
    parts = text.split(f" {PM} ")
    return Cell(float(parts[0]), float(parts[1]) if len(parts) > 1 else None, best, second, marked)


def train_budget(epochs_run=2, best_epoch=2, stopped_early=False, max_epochs=2, patience=1, max_samples_per_epoch=None):
    """The budget metadata the training loop writes into a train_log.parquet (``pmsid.report.training``)."""
    return {
        "max_epochs": max_epochs, "patience": patience, "max_samples_per_epoch": max_samples_per_epoch,
        "epochs_run": epochs_run, "best_epoch": best_epoch, "stopped_early": stopped_early,
    }  # fmt: skip
