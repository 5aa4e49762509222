"""Checks of the workflow config that span several keys, which JSON Schema
cannot express.

The Snakefile runs :func:`check_config` at parse time, after the schema has
validated the config and filled its defaults, so this module imports only the
standard library and the torch- and pandas-free :mod:`pmsid.data.releases`
and :mod:`pmsid.methods.mcrl` (a dict of ablations). Every error is a
``ValueError`` whose message names the key and the fix.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from pmsid.data import releases
from pmsid.methods.mcrl import ABLATIONS

BUILTIN_MODALITIES = ["text", "image", "behaviour"]
IMAGE_READERS = ["amazon2014", "amazon2018", "amazon2023", "local"]
# Keys that only some readers take (others are an error naming the key).
READER_KEYS = {
    "path": ["ml100k"],
    "reviews": ["amazon2014", "amazon2018"],
    "meta": ["amazon2014", "amazon2018"],
    "interactions": ["local"],
    "items": ["local"],
    "category": ["amazon2014", "amazon2018", "amazon2023", "movielens"],
    "base_url": ["amazon2014", "amazon2018", "amazon2023", "movielens"],
}
# The text fields each reader provides (local: any column of its items file).
READER_TEXT_FIELDS = {
    "ml100k": ["title", "year", "genres"],
    "amazon2014": ["title", "brand", "categories", "description"],
    "amazon2018": ["title", "brand", "categories", "description"],
    "amazon2023": ["title", "brand", "categories", "description", "features"],
    "movielens": ["title", "year", "genres", "tags"],
}
# The reviews file the `synthetic_dataset` rule writes.
SYNTHETIC_REVIEWS = "resources/synthetic/Synthetic_5.json.gz"
# The 5-core of the ml-100k copy inside recbole 1.2.1 (measured: results/data/ml-100k/stats.json).
ML100K_EXPECTED = {"n_users": 943, "n_items": 1349, "n_interactions": 99287}


def check_config(config: dict, known_users: Callable[[str], int | None] | None = None) -> None:
    """Raise ValueError on the first cross-key error of a schema-validated config.

    ``known_users(name)`` gives the user count of dataset ``name`` when it is
    knowable before any job runs (see :func:`known_user_count`), else None;
    without it the pmat.prototypes-vs-users check is left to the pmat_ids job.
    """
    specs = config["dataset_specs"]
    for name in config["datasets"]:
        if name not in specs:
            raise ValueError(
                f"config: datasets lists '{name}' but dataset_specs has no entry for it; "
                f"described datasets: {sorted(specs)}"
            )
        _check_dataset_spec(name, specs[name])
        _check_modality_weights(name, specs[name])
    _check_methods(config)
    _check_pmat(config, known_users)
    _check_mcrl(config)
    _check_hdnag(config)
    ks = config["evaluation"]["ks"]
    if config["evaluation"]["beam_size"] < max(ks):
        raise ValueError(
            f"config: evaluation.beam_size ({config['evaluation']['beam_size']}) must be >= max(evaluation.ks) "
            f"({max(ks)}), or beam search cannot fill the top-{max(ks)} list"
        )
    download_sources(config)


def _check_methods(config: dict) -> None:
    """Every name in ``methods`` is a registered method with its own list
    entry (PMAT's and MCRL's runs are chosen by their own sections)."""
    from pmsid.methods import registry

    for name in config["methods"]:
        if name not in registry.METHODS:
            raise ValueError(
                f"config: methods lists '{name}', which is not a registered method; "
                f"registered: {sorted(registry.METHODS)}"
            )
        if ("-", name) not in registry.runs({**config, "datasets": ["-"]}):
            raise ValueError(
                f"config: methods lists '{name}', whose runs are chosen by its own config section "
                "(pmat.datasets, mcrl.datasets / mcrl.ablations); remove it from methods"
            )
    registry.check_needs(config)


def _check_dataset_spec(name: str, spec: dict) -> None:
    """Reader-specific keys, text fields and modalities of one dataset."""
    reader = spec["reader"]
    for key, readers in READER_KEYS.items():
        if spec.get(key) is not None and reader not in readers:  # schema defaults are null
            raise ValueError(f"config: dataset_specs.{name}.{key} is for reader(s) {readers}, not {reader}")
    if reader in ("amazon2014", "amazon2018"):
        local = [k for k in ("reviews", "meta") if k in spec]
        if len(local) == 1:
            raise ValueError(
                f"config: dataset_specs.{name} gives {local[0]} but not "
                f"{'meta' if local[0] == 'reviews' else 'reviews'}; local Amazon files come in pairs"
            )
        if not local and "category" not in spec:
            raise ValueError(
                f"config: dataset_specs.{name} (reader {reader}) needs a category to download (e.g. "
                "Musical_Instruments) or local reviews and meta files"
            )
        if local and "category" in spec:
            raise ValueError(
                f"config: dataset_specs.{name} gives both a category (download) and local reviews/meta files; keep one"
            )
    known = READER_TEXT_FIELDS.get(reader)
    if known is not None:
        unknown = [f for f in spec["text_fields"] if f not in known]
        if unknown:
            raise ValueError(
                f"config: dataset_specs.{name}.text_fields {unknown} are not fields of reader "
                f"{reader}; it provides {known}"
            )
    extra = spec.get("extra_modalities") or {}
    for modality in extra:
        if modality in BUILTIN_MODALITIES:
            raise ValueError(
                f"config: dataset_specs.{name}.extra_modalities.{modality}: '{modality}' is a built-in "
                f"modality; give the precomputed features another name (e.g. audio)"
            )
    for modality in spec["modalities"]:
        if modality not in BUILTIN_MODALITIES and modality not in extra:
            raise ValueError(
                f"config: dataset_specs.{name}.modalities lists '{modality}', which is neither built in "
                f"{BUILTIN_MODALITIES} nor under dataset_specs.{name}.extra_modalities (a Parquet of "
                "precomputed per-item features)"
            )
    if "image" in spec["modalities"] and reader not in IMAGE_READERS:
        raise ValueError(
            f"config: dataset_specs.{name}.modalities asks for 'image', but reader '{reader}' has no "
            f"images (readers with images: {IMAGE_READERS}); use modalities: [text] or [text, behaviour]"
        )


def _check_modality_weights(name: str, spec: dict) -> None:
    """The fusion weights name modalities of the dataset, and not all are zero."""
    weights = spec.get("modality_weights") or {}
    for modality in weights:
        if modality not in spec["modalities"]:
            raise ValueError(
                f"config: dataset_specs.{name}.modality_weights.{modality}: '{modality}' is not a "
                f"modality of {name}; its modalities are {spec['modalities']}"
            )
    if weights and not any(weights.values()):
        raise ValueError(f"config: dataset_specs.{name}.modality_weights are all zero")


def known_user_count(config: dict, name: str, stats_dir: str | Path = "results/data") -> int | None:
    """Users of dataset ``name`` when knowable before any job runs.

    Its ``{stats_dir}/{name}/stats.json`` from an earlier run, else the
    synthetic generator's user count (an upper bound: the 5-core drops
    some), else None (the pmat_ids job checks then).
    """
    stats = Path(stats_dir) / name / "stats.json"
    if stats.exists():
        return json.loads(stats.read_text())["n_users"]
    if config["dataset_specs"][name].get("reviews") == SYNTHETIC_REVIEWS:
        return config["synthetic"]["n_users"]
    return None


def _check_pmat(config: dict, known_users: Callable[[str], int | None] | None) -> None:
    pmat = config["pmat"]
    for name in pmat["datasets"]:
        if name not in config["datasets"]:
            raise ValueError(
                f"config: pmat.datasets lists '{name}', which is not in datasets {config['datasets']}; add it there or remove it from pmat.datasets"
            )
        modalities = config["dataset_specs"][name]["modalities"]
        if len(modalities) < 2:
            raise ValueError(
                f"config: pmat.datasets lists '{name}', but dataset_specs.{name}.modalities is {modalities}; "
                "PMAT weighs modalities per user and needs at least two (e.g. add behaviour)"
            )
        users = known_users(name) if known_users is not None else None
        if users is not None and pmat["prototypes"] > users:
            raise ValueError(
                f"config: pmat.prototypes ({pmat['prototypes']}) exceeds the {users} users of '{name}'; "
                "every prototype needs users"
            )
    cap = config["protocol"]["history_cap"]
    if pmat["window"] > cap:
        raise ValueError(
            f"config: pmat.window ({pmat['window']}) exceeds protocol.history_cap ({cap}): the short-term "
            f"window must fit in the history a model sees; set pmat.window <= {cap}"
        )


def _check_mcrl(config: dict) -> None:
    mcrl = config["mcrl"]
    for name in mcrl["datasets"]:
        if name not in config["datasets"]:
            raise ValueError(
                f"config: mcrl.datasets lists '{name}', which is not in datasets {config['datasets']}; "
                "add it there or remove it from mcrl.datasets"
            )
        modalities = config["dataset_specs"][name]["modalities"]
        with_inter = [a for a in mcrl["ablations"] if "inter" in ABLATIONS[a]]
        if len(modalities) < 2 and mcrl["b"] > 0 and with_inter:
            raise ValueError(
                f"config: mcrl.ablations {with_inter} train L_inter on '{name}', whose "
                f"dataset_specs.{name}.modalities is {modalities}; L_inter contrasts two modalities of an "
                "item: drop those ablations, set mcrl.b: 0, or remove the dataset from mcrl.datasets"
            )


def _check_hdnag(config: dict) -> None:
    hdnag = config["hdnag"]
    for name in hdnag["datasets"]:
        if name not in config["datasets"]:
            raise ValueError(
                f"config: hdnag.datasets lists '{name}', which is not in datasets {config['datasets']}; "
                "add it there or remove it from hdnag.datasets"
            )
    if hdnag["fine_size"] < hdnag["coarse_size"]:
        raise ValueError(
            f"config: hdnag.fine_size ({hdnag['fine_size']}) must be >= hdnag.coarse_size ({hdnag['coarse_size']}): "
            "every coarse cluster holds at least one fine cluster"
        )
    if hdnag["coarse_candidates"] > hdnag["coarse_size"]:
        raise ValueError(
            f"config: hdnag.coarse_candidates ({hdnag['coarse_candidates']}) exceeds hdnag.coarse_size "
            f"({hdnag['coarse_size']}); at most every coarse ID can be recalled"
        )


def is_downloaded(config: dict, dataset: str) -> bool:
    """True when the dataset's raw files come from its release's source
    (a category and no local reviews/meta files)."""
    spec = config["dataset_specs"][dataset]
    return spec["reader"] in releases.READERS_WITH_DOWNLOADS and "reviews" not in spec


def download_files(config: dict, dataset: str) -> dict[str, tuple[str, releases.RawFile]]:
    """role -> (local path, releases.RawFile) of a downloaded dataset."""
    spec = config["dataset_specs"][dataset]
    root = config["downloads"]["dir"]
    return {
        f.role: (f"{root}/{spec['reader']}/{f.filename}", f)
        for f in releases.raw_files(spec["reader"], spec["category"], spec.get("base_url"))
    }


def download_sources(config: dict) -> dict[str, dict]:
    """Local path -> its source {url, md5, md5_url} for every configured
    dataset that is downloaded; two datasets asking for one file from two
    sources is an error."""
    sources = {}
    for name in config["datasets"]:
        if not is_downloaded(config, name):
            continue
        for path, raw in download_files(config, name).values():
            source = {"url": raw.url, "md5": raw.md5, "md5_url": raw.md5_url}
            if sources.get(path, source) != source:
                raise ValueError(
                    f"config: {path} would be downloaded from both {sources[path]['url']} and "
                    f"{raw.url} (dataset {name}); give the datasets the same base_url"
                )
            sources[path] = source
    return sources
