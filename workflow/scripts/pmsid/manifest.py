"""The files the generic rules and the report read, from the method registry.

The workflow calls these at parse time with ``patterns``: the output path
patterns of its rules (``rules.<rule>.output.<name>``, with wildcards such as
``{dataset}``, ``{method}``, ``{seed}``), so that every path is written once,
in the rule that makes it. Standard library only (no torch, no pandas).

- :func:`method_inputs`: the named inputs of a method's train or evaluate job;
- :func:`report_manifest`: every result file the report reads, each with its
  metadata (``kind``, ``dataset``, ``method``, ``seed``, the report
  ``sections`` it belongs to, ``label``, ``description``, ``role``,
  ``options``);
- :func:`report_sections`: the report's tables and figures per section.

Each report function takes a ``slice`` (:data:`SLICES`): the part of the
config's matrix a named target runs and reports. ``all`` is every run.
"""

from __future__ import annotations

from pmsid.methods import registry

# The patterns the functions below read, by name.
PATTERNS = (
    "interactions",  # prepare_dataset: {dataset}
    "catalogue",
    "stats",
    "images",  # resolve_images: {dataset}
    "features",  # extract / reduce features: {dataset}, {modality}
    "rqkmeans_ids",  # rqkmeans_ids: {dataset}, {seed}
    "rqkmeans_quality",
    "hkmeans_ids",  # hkmeans_ids: {dataset}, {seed}
    "hkmeans_quality",
    "pseudolabels",  # pseudolabels: {dataset}, {seed}, {modality}
    "pmat_ids",  # pmat_ids: {dataset}, {variant}, {seed}
    "pmat_assignment",
    "pmat_prefix_tables",
    "pmat_quality",
    "pmat_weights",  # pmat_attention: {dataset}, {seed}
    "pmat_preference",
    "pmat_replay",  # pmat_replay: {dataset}, {seed}
    "pmat_replay_assignment",
    "model",  # train: {dataset}, {method}, {seed}
    "train_log",
    "extras",
    "ranking",  # evaluate: {dataset}, {method}, {seed}
    "per_user",
    "metrics",
    "mcrl_id_space",  # mcrl_id_space / mcrl_tsne: {dataset}, {method}, {seed}
    "mcrl_tsne",
    "efficiency",  # hdnag_efficiency: {dataset}, {seed}
    "efficiency_sweep",
)
# The methods rule hdnag_efficiency times, where they run.
EFFICIENCY_METHODS = ("tiger", "hdnag", "hdnag_single", "sasrec")
MCRL_COMPONENTS = "loss_components.parquet"  # in an MCRL train job's extras folder

# The named slices of the matrix: slice -> (the report sections whose runs it
# takes, the roles it takes from anywhere). Floors are in every slice, so
# every table has them. The rest of a slice's jobs are what its runs need
# (MCRL's stage-1 generator, for example); they run but get no rows.
SLICES = {
    "all": (("main", "pmat", "mcrl", "hdnag"), ("floor",)),
    "main": (("main",), ("floor",)),
    "baselines": ((), ("floor", "baseline")),
    "pmat": (("pmat",), ("floor",)),
    "mcrl": (("mcrl",), ("floor",)),
    "hdnag": (("hdnag",), ("floor",)),
}


def slice_runs(config: dict, slice: str = "all") -> list[tuple[str, str]]:
    """The ``(dataset, method)`` runs of ``slice``, in registry order."""
    if slice not in SLICES:
        raise ValueError(f"unknown slice {slice!r}; slices are {list(SLICES)}")
    sections, roles = SLICES[slice]
    out = []
    for d, m in registry.runs(config):
        spec = registry.get(m)
        if spec.role in roles or set(spec.sections) & set(sections):
            out.append((d, m))
    return out


def other_history(config: dict) -> str:
    """The folder of the second protocol (``protocol.report_both_histories``):
    ``history_excluded`` when the main protocol keeps history items in the
    ranking, ``history_included`` when it excludes them."""
    return "history_included" if config["protocol"]["exclude_history"] else "history_excluded"


def slice_dir(slice: str) -> str:
    """Where a slice's report goes: ``results/report`` for ``all``, else a subfolder."""
    return "results/report" if slice == "all" else f"results/report/{slice}"


def _check_patterns(patterns: dict) -> None:
    missing = [name for name in PATTERNS if name not in patterns]
    if missing:
        raise ValueError(f"manifest: no path pattern for {missing}; the workflow passes one per name in PATTERNS")


def pseudolabel_inputs(config: dict, dataset: str, seed, patterns: dict) -> dict[str, str]:
    """``labels_{modality}`` -> the seed's pseudo-label file of every modality of ``dataset``."""
    return {
        f"labels_{m}": patterns["pseudolabels"].format(dataset=dataset, seed=seed, modality=m)
        for m in config["dataset_specs"][dataset]["modalities"]
    }


def feature_inputs(config: dict, dataset: str, patterns: dict) -> dict[str, str]:
    """``features_{modality}`` -> the feature file of every modality of ``dataset``."""
    return {
        f"features_{m}": patterns["features"].format(dataset=dataset, modality=m)
        for m in config["dataset_specs"][dataset]["modalities"]
    }


def need_inputs(config: dict, need: str, dataset: str, seed, patterns: dict) -> dict[str, str]:
    """The named input files of one need (:data:`pmsid.methods.registry.NEEDS`),
    those of the run's ``seed``: a seed-s job reads the seed-s IDs and labels."""
    where = {"dataset": dataset, "seed": seed}
    if need in ("rqkmeans_ids", "hkmeans_ids"):
        return {"ids": patterns[need].format(**where)}
    if need in ("pmat_global_tables", "pmat_personalized_tables", "pmat_oracle_tables"):
        variant = need.split("_")[1]
        return {
            "ids": patterns["pmat_ids"].format(variant=variant, **where),
            "assignment": patterns["pmat_assignment"].format(variant=variant, **where),
            "prefix_tables": patterns["pmat_prefix_tables"].format(variant=variant, **where),
        }
    if need == "pmat_replayed_tables":
        return {
            "ids": patterns["pmat_ids"].format(variant="personalized", **where),
            "assignment": patterns["pmat_replay_assignment"].format(**where),
        }
    if need == "pseudolabels":
        return pseudolabel_inputs(config, dataset, seed, patterns)
    if need == "features":
        return feature_inputs(config, dataset, patterns)
    if need.startswith("model:"):
        return {"init": patterns["model"].format(method=need.removeprefix("model:"), **where)}
    raise ValueError(f"unknown need {need!r}; needs are {list(registry.NEEDS)}")


def method_inputs(config: dict, method: str, dataset: str, seed, stage: str, patterns: dict) -> dict[str, str]:
    """Inputs of the generic ``train`` or ``evaluate`` job: the dataset's
    tables, what the method's needs name, and (evaluate) the model it ranks
    with (its own, or that of ``model_from``)."""
    _check_patterns(patterns)
    if stage not in ("train", "evaluate"):
        raise ValueError(f"stage must be 'train' or 'evaluate', got {stage!r}")
    spec = registry.get(method)
    files = {
        "interactions": patterns["interactions"].format(dataset=dataset),
        "catalogue": patterns["catalogue"].format(dataset=dataset),
    }
    needs = spec.train_needs if stage == "train" else spec.rank_needs
    for need in needs(config, dataset):
        files.update(need_inputs(config, need, dataset, seed, patterns))
    if stage == "evaluate":
        owner = spec.model_owner(config)
        files["model"] = patterns["model"].format(dataset=dataset, method=owner, seed=seed)
    return files


def efficiency_inputs(config: dict, dataset: str, seed, patterns: dict) -> dict[str, str]:
    """Inputs of rule hdnag_efficiency: the dataset's tables and
    ``model_<method>`` for each of :data:`EFFICIENCY_METHODS` that runs on ``dataset``."""
    _check_patterns(patterns)
    files = {
        "interactions": patterns["interactions"].format(dataset=dataset),
        "catalogue": patterns["catalogue"].format(dataset=dataset),
    }
    running = {m for d, m in registry.runs(config) if d == dataset}
    for method in EFFICIENCY_METHODS:
        if method in running:
            files[f"model_{method}"] = patterns["model"].format(dataset=dataset, method=method, seed=seed)
    return files


def method_entry(spec: registry.MethodSpec) -> dict:
    """The metadata a manifest entry carries for a method's file."""
    return {
        "method": spec.name,
        "label": spec.label,
        "description": spec.description or spec.label,
        "role": spec.role,
        "sections": list(spec.sections),
        "options": dict(spec.options),
    }


def _sections_by_dataset(runs: list[tuple[str, str]]) -> dict[str, set[str]]:
    """The report sections each dataset has: ``main``, and every other
    section where one of its own methods (role ``ours`` or ``control``)
    runs. A baseline listed in a section (TIGER in PMAT's) joins its rows
    only there, so a section never consists of baselines alone."""
    out: dict[str, set[str]] = {}
    for d, m in runs:
        spec = registry.get(m)
        out.setdefault(d, {"main"})
        if spec.role in ("ours", "control"):
            out[d].update(spec.sections)
    return out


def _slice_sections(config: dict, slice: str) -> dict[str, set[str]]:
    """:func:`_sections_by_dataset` of the slice's runs, limited to the
    slice's own sections (and ``main``, which every report has)."""
    allowed = {"main", *SLICES[slice][0]}
    return {d: found & allowed for d, found in _sections_by_dataset(slice_runs(config, slice)).items()}


def _tsne_runs(runs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The MCRL runs the t-SNE figure shows: the ablations none and all (or
    the first and last one that runs)."""
    mcrl = [(d, m) for d, m in runs if "mcrl" in registry.get(m).sections]
    names = list(dict.fromkeys(m for _, m in mcrl))
    shown = [m for m in names if registry.get(m).options.get("ablation") in ("none", "all")]
    shown = shown or list(dict.fromkeys(names[:1] + names[-1:]))
    return [(d, m) for d, m in mcrl if m in shown]


def report_manifest(config: dict, patterns: dict, slice: str = "all") -> list[dict]:
    """Every result file the report of ``slice`` reads, with its metadata, in registry order."""
    _check_patterns(patterns)
    runs = slice_runs(config, slice)
    seeds = config["seeds"]
    entries = []

    def add(kind: str, path: str, **meta) -> None:
        entries.append({"kind": kind, "path": path, **meta})

    sections = _slice_sections(config, slice)
    for d, m in runs:
        spec = registry.get(m)
        for s in seeds:
            where = {"dataset": d, "method": m, "seed": s}
            meta = {"dataset": d, "seed": s, **method_entry(spec)}
            meta["sections"] = [x for x in meta["sections"] if x in sections[d]]
            for kind in ("metrics", "per_user", "ranking"):
                add(kind, patterns[kind].format(**where), **meta)
            if spec.trains and spec.iterative:
                add("train_log", patterns["train_log"].format(**where), **meta)
            if "mcrl" in meta["sections"]:
                add("components", f"{patterns['extras'].format(**where)}/{MCRL_COMPONENTS}", **meta)
                add("id_space", patterns["mcrl_id_space"].format(**where), **meta)
    for d, m in _tsne_runs([(d, m) for d, m in runs if "mcrl" in sections[d]]):
        add(
            "tsne",
            patterns["mcrl_tsne"].format(dataset=d, method=m, seed=seeds[0]),
            dataset=d,
            seed=seeds[0],
            **method_entry(registry.get(m)),
        )
    for d in config["datasets"]:
        add("dataset_stats", patterns["stats"].format(dataset=d), dataset=d)
        if "image" in config["dataset_specs"][d]["modalities"]:
            add("dataset_images", patterns["images"].format(dataset=d), dataset=d)
        for s in seeds:
            add("quality", patterns["rqkmeans_quality"].format(dataset=d, seed=s), dataset=d, seed=s)
    hdnag_datasets = [d for d in config["hdnag"]["datasets"] if "hdnag" in sections.get(d, ())]
    for d in hdnag_datasets:
        for s in seeds:
            add("quality", patterns["hkmeans_quality"].format(dataset=d, seed=s), dataset=d, seed=s)
            add("efficiency", patterns["efficiency"].format(dataset=d, seed=s), dataset=d, seed=s)
            add("efficiency_sweep", patterns["efficiency_sweep"].format(dataset=d, seed=s), dataset=d, seed=s)
    pmat_datasets = [d for d in config["pmat"]["datasets"] if "pmat" in sections.get(d, ())]
    for d in pmat_datasets:
        for s in seeds:
            for kind in ("pmat_weights", "pmat_preference", "pmat_replay"):
                add(kind, patterns[kind].format(dataset=d, seed=s), dataset=d, seed=s)
            for variant in ("global", "personalized"):
                add(
                    "pmat_quality",
                    patterns["pmat_quality"].format(dataset=d, seed=s, variant=variant),
                    dataset=d,
                    seed=s,
                )
    return entries


def report_inputs(manifest: list[dict]) -> list[str]:
    """The report job's input files: every manifest path, MCRL's loss
    components through their train job's extras folder (the declared output)."""
    paths = []
    for entry in manifest:
        path = entry["path"]
        if entry["kind"] == "components":
            path = path.removesuffix(f"/{MCRL_COMPONENTS}")
        paths.append(path)
    return list(dict.fromkeys(paths))


def report_baseline(config: dict, slice: str = "all") -> str:
    """The main significance table's reference when the main comparison has
    no method of role ``baseline`` (the report tests against the best
    baseline of each dataset and metric otherwise): the first ``baseline``
    that runs (registry order: SASRec before TIGER), else the first method
    of the main comparison."""
    main = [m for _, m in slice_runs(config, slice) if "main" in registry.get(m).sections]
    if not main:
        raise ValueError(f"config: no method of the main comparison runs in slice {slice!r}; list one in `methods:`")
    baselines = [m for m in main if registry.get(m).role == "baseline"]
    return (baselines or main)[0]


def report_sections(config: dict, slice: str = "all") -> list[tuple[str, list[str], list[str]]]:
    """``(category, table stems, figure stems)`` of every report section ``slice`` produces."""
    sections = [
        ("Tables", ["datasets", "main_comparison", "significance", "id_quality", "decoding", "training_budget"], []),
        ("Figures", [], ["codebook_utilization", "training_curves", "metric_comparison"]),
    ]
    present = set().union(*_slice_sections(config, slice).values())
    if "pmat" in present:
        tables = ["pmat_ablation", "pmat_updates", "pmat_preference", "pmat_id_quality"]
        sections.append(("PMAT", tables, ["pmat_weights", "pmat_semantic_consistency"]))
    if "mcrl" in present:
        sections.append(("MCRL", ["mcrl_ablation", "mcrl_id_space", "mcrl_cost"], ["mcrl_loss_curves", "mcrl_tsne"]))
    if "hdnag" in present:
        sections.append(("HDNAG", ["hdnag_ablation", "hdnag_efficiency", "hdnag_sweep"], ["hdnag_accuracy_latency"]))
    return sections
