"""The report's dataset table: what each dataset is after the protocol, how it
compares with the published statistics, and how many item images were usable.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

DATASETS_CAPTION = (
    "Datasets after the protocol (dedup, 5-core, leave-one-out; Amazon 2023 keeps its official split). "
    "Expected: the published users / items / interactions the dataset was checked against (- when none "
    "are known), and the check's result. Images: items whose image decoded (ok), had none or failed to "
    "download (missing), or did not decode (broken); missing and broken images get the configured "
    "policy's fill (features.image.missing)."
)

STATUSES = ("ok", "missing", "broken")


def _dataset_name(path: str | os.PathLike) -> str:
    """results/data/{dataset}/stats.json -> dataset."""
    return Path(path).parent.name


def _expected_cell(stats: dict) -> tuple[str, str]:
    expected = stats.get("expected")
    if not expected:
        return "-", "-"
    shown = " / ".join(f"{k}={v:,}" for k, v in expected.items())
    check = stats.get("stats_check") or {}
    if check.get("mode") == "skip":
        return shown, "not checked"
    if check.get("mismatches"):
        return shown, "mismatch: " + "; ".join(check["mismatches"])
    return shown, "match"


def dataset_table(
    stats_paths: list[str | os.PathLike], images_paths: list[str | os.PathLike] = (), image_policy: str | None = None
) -> pd.DataFrame:
    """One row per dataset, in the order of ``stats_paths``.

    ``images_paths`` are the ``images.parquet`` files of the datasets that
    have an image modality (matched by their folder name); the others show
    ``-`` in the image columns.
    """
    images = {}
    for path in images_paths:
        status = pd.read_parquet(path, columns=["status"])["status"]
        unknown = sorted(set(status) - set(STATUSES))
        if unknown:
            raise ValueError(f"{path}: unknown image status(es) {unknown}; expected {list(STATUSES)}")
        images[_dataset_name(path)] = {s: int((status == s).sum()) for s in STATUSES}
    rows = []
    for path in stats_paths:
        stats = json.loads(Path(path).read_text(encoding="utf-8"))
        missing = [k for k in ("n_users", "n_items", "n_interactions", "density") if k not in stats]
        if missing:
            raise ValueError(f"{path}: stats lack {missing}; rerun prepare_dataset for this dataset")
        name = _dataset_name(path)
        expected, check = _expected_cell(stats)
        counts = images.get(name)
        rows.append(
            {
                "dataset": name,
                "users": int(stats["n_users"]),
                "items": int(stats["n_items"]),
                "interactions": int(stats["n_interactions"]),
                "density": float(stats["density"]),
                "expected": expected,
                "check": check,
                "images ok": counts["ok"] if counts else "-",
                "images missing": counts["missing"] if counts else "-",
                "images broken": counts["broken"] if counts else "-",
                "image policy": (image_policy or "-") if counts else "-",
            }
        )
    return pd.DataFrame(rows)
