"""What data each dataset of a report is, in a few words, for every table's header.

The workflow calls :func:`describe_release` at parse time (the report rule's
``releases`` parameter), so this module is standard library only.
"""

from __future__ import annotations

_RELEASE_NAMES = {
    "amazon2014": "Amazon 2014 (5-core reviews and metadata)",
    "amazon2018": "Amazon 2018",
    "amazon2023": "Amazon 2023 (its official 5-core leave-one-out split)",
    "movielens": "MovieLens",
}


def describe_release(spec: dict, config: dict) -> str:
    """What a dataset spec (``dataset_specs.<name>``) reads, in a few words.

    The bundled and generated datasets are named by what they are (the
    generated ones with their generator's seed); a release by its name and
    category, with the image filter where it applies; other local files by
    their path.
    """
    reader = spec["reader"]
    reviews = str(spec.get("reviews") or "")
    if reader == "ml100k":
        where = "the copy inside the PyPI package recbole" if spec.get("path") is None else spec["path"]
        return f"MovieLens-100K ({where})"
    if reviews.startswith("resources/synthetic/"):
        return f"generated Amazon-2018-format catalogue (synthetic.seed {config['synthetic']['seed']})"
    if reviews.startswith("resources/planted/"):
        design = reviews.split("/")[2]
        return f"generated planted-preference catalogue, design {design} (planted.seed {config['planted']['seed']})"
    if reader in _RELEASE_NAMES and spec.get("category"):
        text = f"{_RELEASE_NAMES[reader]}, {spec['category']}"
        return text + (", image-filtered (items with metadata and an image)" if spec.get("require_image") else "")
    files = reviews or spec.get("path") or spec.get("train") or "local files"
    return f"{reader} files {files}"
