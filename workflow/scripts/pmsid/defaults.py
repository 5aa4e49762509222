"""Defaults of every hyperparameter, read from the one place that states them:
the workflow's config schema (``workflow/schemas/config.schema.yaml``).

A model file asks for its section here instead of keeping a copy, so a
default cannot be 12 in one place and 6 in another.
"""

from __future__ import annotations

import functools
from pathlib import Path

import yaml

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"


@functools.cache
def _schema() -> dict:
    if not SCHEMA.exists():
        raise FileNotFoundError(f"{SCHEMA}: the config schema, which holds every default, is missing")
    return yaml.safe_load(SCHEMA.read_text())


def section_defaults(*path: str) -> dict:
    """``{key: default}`` of the config section at ``path``, e.g. ``("tiger",)``
    or ``("features", "text")``; keys without a default are left out."""
    node = _schema()
    for i, section in enumerate(path):
        props = node.get("properties", {})
        if section not in props:
            raise KeyError(f"config schema has no section {'.'.join(path[: i + 1])!r}; found {sorted(props)}")
        node = props[section]
    return {key: spec["default"] for key, spec in node.get("properties", {}).items() if "default" in spec}


def run_defaults() -> dict:
    """The protocol and run keys every trained model takes beside its own section."""
    protocol, evaluation = section_defaults("protocol"), section_defaults("evaluation")
    return {
        "history_cap": protocol["history_cap"],
        "exclude_history": protocol["exclude_history"],
        "ks": evaluation["ks"],
        "deterministic": _schema()["properties"]["deterministic"]["default"],
        "bf16": True,  # bf16 autocast on CUDA (ignored on the CPU)
        "progress": True,  # tqdm bars
    }
