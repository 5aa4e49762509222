# Config validation and the helpers (get_* / is_*) the rules use. The checks
# themselves live in the package (pmsid.config, unit-tested); no rule lives
# here.

import importlib.util
import sys
from pathlib import Path

from snakemake.utils import validate

validate(config, schema="../schemas/config.schema.yaml")

PACKAGE = Path(workflow.basedir) / "workflow" / "scripts" / "pmsid"
sys.path.insert(0, str(PACKAGE.parent))
from pmsid import config as checks  # cross-key checks, torch-free
from pmsid import manifest  # the generic rules' inputs and the report's files
from pmsid import sources  # package files a module depends on
from pmsid.data import releases  # the release catalogue: URLs, files, statistics
from pmsid.methods import registry  # every method: needs, training, ranking
from pmsid.report import releases as report_releases  # for captions

checks.check_config(config, lambda name: checks.known_user_count(config, name))
DOWNLOAD_SOURCES = checks.download_sources(config)
EXTRA_MODALITIES = sorted(  # precomputed-feature modalities of the datasets
    {
        m
        for d in config["datasets"]
        for m in config["dataset_specs"][d].get("extra_modalities") or {}
    }
)
REDUCED_MODALITIES = config["features"]["reduce"]["modalities"]
NEVER = "(?!x)x"  # a regex that matches nothing (a wildcard with no allowed value)
# The protocol as the jobs read it: report_both_histories only adds jobs, so
# switching it on reruns nothing already computed.
PROTOCOL = {k: v for k, v in config["protocol"].items() if k != "report_both_histories"}


wildcard_constraints:
    dataset="|".join(config["datasets"]),
    modality="|".join(checks.BUILTIN_MODALITIES + EXTRA_MODALITIES),
    extra_modality="|".join(EXTRA_MODALITIES) or NEVER,
    reader="|".join(releases.READERS_WITH_DOWNLOADS),
    filename=r"[^/]+",
    seed=r"\d+",
    variant="global|personalized|oracle",
    design=r"[a-z_]+",  # pmsid.data.planted.DESIGNS
    method="|".join(registry.METHODS),


# ---------------------------------------------------------------- datasets


def get_spec(dataset):
    """The dataset_specs entry of `dataset`."""
    return config["dataset_specs"][dataset]


def get_modalities(wildcards):
    return get_spec(wildcards.dataset)["modalities"]


def get_stage_code(*modules):
    """The code of a data or feature rule: the package files ``modules``
    import (:func:`get_code`) and pmsid/stages.py, whose function the rule's
    script calls (without stages.py's own imports, which serve other rules)."""
    return sorted({*get_code(*modules), str(PACKAGE / "stages.py")})


def get_ml100k_dir(dataset):
    """Directory of the MovieLens-100K atomic files: the configured path, or
    the copy shipped inside the PyPI package recbole (found without importing
    it)."""
    path = get_spec(dataset).get("path")
    if path:
        return path
    found = importlib.util.find_spec("recbole")
    if found is None or not found.submodule_search_locations:
        raise ValueError(
            f"config: dataset_specs.{dataset}.path is null, which means the ml-100k copy inside the "
            "PyPI package recbole, but recbole is not installed; run `pip install --no-deps recbole==1.2.1` "
            "or set the path to a directory with ml-100k.inter and ml-100k.item"
        )
    return str(
        Path(list(found.submodule_search_locations)[0]) / "dataset_example" / "ml-100k"
    )


def get_download_source(wildcards, output):
    """The source of a file the download rule writes."""
    path = str(output.raw)
    if path not in DOWNLOAD_SOURCES:
        raise ValueError(
            f"{path}: no configured dataset downloads this file; known downloads: {sorted(DOWNLOAD_SOURCES)}"
        )
    return DOWNLOAD_SOURCES[path]


def get_raw_files(dataset):
    """Raw files of a dataset, by reader: role -> path (the roles are the
    reader's arguments; see pmsid.stages.read_raw)."""
    spec = get_spec(dataset)
    reader = spec["reader"]
    if reader == "ml100k":
        directory = get_ml100k_dir(dataset)
        return {
            "inter": f"{directory}/ml-100k.inter",
            "item": f"{directory}/ml-100k.item",
        }
    if reader == "local":
        return {"interactions": spec["interactions"], "items": spec["items"]}
    if not checks.is_downloaded(config, dataset):
        return {"reviews": spec["reviews"], "meta": spec["meta"]}
    files = checks.download_files(config, dataset)
    return {role: path for role, (path, _) in files.items()}


def get_raw_inputs(wildcards):
    """The raw files as named inputs raw_<role> (Snakemake reserves some
    names, such as `items`)."""
    return {
        f"raw_{role}": path for role, path in get_raw_files(wildcards.dataset).items()
    }


def get_prepare_params(wildcards):
    """The dataset's spec plus the statistics it is checked against:
    dataset_specs.<name>.expected, else the release's published figures."""
    spec = get_spec(wildcards.dataset)
    expected = spec.get("expected")
    if expected is None and checks.is_downloaded(config, wildcards.dataset):
        expected = releases.expected_stats(spec["reader"], spec["category"])
    if expected is None and spec["reader"] == "ml100k" and not spec.get("path"):
        expected = checks.ML100K_EXPECTED
    return {**spec, "name": wildcards.dataset, "expected": expected}


def get_extra_modality(wildcards):
    """dataset_specs.<name>.extra_modalities.<modality> of the job."""
    extra = get_spec(wildcards.dataset).get("extra_modalities") or {}
    if wildcards.extra_modality not in extra:
        raise ValueError(
            f"config: dataset {wildcards.dataset} has no extra modality '{wildcards.extra_modality}'"
        )
    return extra[wildcards.extra_modality]


def get_extra_source(wildcards):
    return get_extra_modality(wildcards)["path"]


def get_image_dir(wildcards):
    return f"resources/images/{wildcards.dataset}"


# ---------------------------------------------------------------- features and IDs


def get_feature_output(modality):
    """Where a modality's extraction writes: <modality>.parquet, or
    <modality>.full.parquet when features.reduce reduces it."""
    if modality in REDUCED_MODALITIES:
        return f"results/features/{{dataset}}/{modality}.full.parquet"
    return f"results/features/{{dataset}}/{modality}.parquet"


def get_feature_paths(wildcards):
    """Feature files of every modality of the dataset, in config order."""
    return [
        f"results/features/{wildcards.dataset}/{m}.parquet"
        for m in get_spec(wildcards.dataset)["modalities"]
    ]


def get_fusion_weights(wildcards):
    """dataset_specs.<name>.modality_weights in modality order (missing = 0),
    or None for equal weights."""
    spec = get_spec(wildcards.dataset)
    weights = spec.get("modality_weights")
    if not weights:
        return None
    return [float(weights.get(m, 0.0)) for m in spec["modalities"]]


def get_tokenizer_params(wildcards):
    """Config ``tokenizer`` with the job's run seed as the k-means seed: each
    seed fits its own codebooks (RQ-KMeans, and PMAT's prototypes and ID
    tables), so a method's std over seeds includes its tokenizer's."""
    return {**config["tokenizer"], "seed": int(wildcards.seed)}


def get_hkmeans_params(wildcards):
    """HDNAG's tokenizer keys (config hdnag) with the job's run seed."""
    keys = ("coarse_size", "fine_size", "n_init")
    return {**{k: config["hdnag"][k] for k in keys}, "seed": int(wildcards.seed)}


def get_pmat_attention_params():
    """The preference network's cfg: config pmat.attention plus the protocol's cap."""
    return {
        **config["pmat"]["attention"],
        **{
            k: config["pmat"][k]
            for k in ("lambda1", "window", "lambda_max", "cons_temperature")
        },
        "history_cap": config["protocol"]["history_cap"],
    }


def get_truth_input(wildcards):
    """The planted-preference table of the dataset, if it has one."""
    truth = get_spec(wildcards.dataset).get("truth_users")
    return {"truth": truth} if truth else {}


def get_pseudolabel_inputs(wildcards):
    """Pseudo-labels of every modality for the job's seed, as inputs labels_{modality}."""
    return manifest.pseudolabel_inputs(
        config, wildcards.dataset, wildcards.seed, get_patterns()
    )


# ---------------------------------------------------------------- methods and report


def get_patterns(history=None):
    """The output path patterns pmsid.manifest builds inputs from (each path
    is written once, in the rule that makes it); with `history` (the other
    protocol's folder), the evaluation and retrieval-cost files are those of
    that protocol."""
    evaluate = rules.evaluate_other_history if history else rules.evaluate
    efficiency = (
        rules.hdnag_efficiency_other_history if history else rules.hdnag_efficiency
    )
    return {
        name: str(pattern)
        for name, pattern in {
            "interactions": rules.prepare_dataset.output.interactions,
            "catalogue": rules.prepare_dataset.output.catalogue,
            "stats": rules.prepare_dataset.output.stats,
            "images": rules.resolve_images.output.images,
            "features": "results/features/{dataset}/{modality}.parquet",
            "rqkmeans_ids": rules.rqkmeans_ids.output.ids,
            "rqkmeans_quality": rules.rqkmeans_ids.output.quality,
            "hkmeans_ids": rules.hkmeans_ids.output.ids,
            "hkmeans_quality": rules.hkmeans_ids.output.quality,
            "pseudolabels": rules.pseudolabels.output.labels,
            "pmat_ids": rules.pmat_ids.output.ids,
            "pmat_assignment": rules.pmat_ids.output.assignment,
            "pmat_prefix_tables": rules.pmat_ids.output.prefix_tables,
            "pmat_quality": rules.pmat_ids.output.quality,
            "pmat_weights": rules.pmat_attention.output.weights,
            "pmat_preference": rules.pmat_attention.output.preference,
            "pmat_replay": rules.pmat_replay.output.summary,
            "pmat_replay_assignment": rules.pmat_replay.output.assignment,
            "model": rules.train.output.model,
            "train_log": rules.train.output.log,
            "extras": rules.train.output.extras,
            "ranking": evaluate.output.ranking,
            "per_user": evaluate.output.per_user,
            "metrics": evaluate.output.metrics,
            "mcrl_id_space": rules.mcrl_id_space.output.summary,
            "mcrl_tsne": rules.mcrl_tsne.output.tsne,
            "efficiency": efficiency.output.table,
            "efficiency_sweep": efficiency.output.sweep,
        }.items()
    }


def get_efficiency_inputs(wildcards):
    """The dataset's tables and the seed's trained models that rule
    hdnag_efficiency times: TIGER, SASRec, HDNAG and HDNAG single-level,
    those the config runs on the dataset (inputs model_<method>)."""
    return manifest.efficiency_inputs(
        config, wildcards.dataset, wildcards.seed, get_patterns()
    )


def get_method_inputs(stage):
    """Input function of the generic train / evaluate rule."""

    def inputs(wildcards):
        return manifest.method_inputs(
            config,
            wildcards.method,
            wildcards.dataset,
            wildcards.seed,
            stage,
            get_patterns(),
        )

    return inputs


def get_code(*modules):
    """The package files `modules` import, transitively: a change to any of
    them reruns the rule, a change elsewhere does not."""
    return sources.closure("pmsid.logs", *modules)


def get_method_sources(wildcards):
    """The package files the method's train / evaluate code imports."""
    spec = registry.get(wildcards.method)
    return get_code("pmsid.methods.run", spec.module)


def get_method_params(wildcards):
    """The method's hyperparameters: its config section, less the keys that
    select runs rather than configure training."""
    spec = registry.get(wildcards.method)
    cfg = config[spec.hyper] if spec.hyper else {}
    return {k: v for k, v in cfg.items() if k not in spec.hyper_skip}


# The reports the workflow writes: one per named slice (pmsid.manifest.SLICES)
# under the main protocol, and with protocol.report_both_histories the whole
# report under the other history switch. Each is (slice, history), history
# None for the main protocol.
REPORTS = [(slice, None) for slice in manifest.SLICES]
if config["protocol"]["report_both_histories"]:
    REPORTS.append(("all", manifest.other_history(config)))


def get_report_name(slice, history=None):
    """The report rule's name: report, report_<slice>, report_<history>."""
    return (
        f"report_{history}"
        if history
        else ("report" if slice == "all" else f"report_{slice}")
    )


def get_report_dir(slice, history=None):
    return f"results/report/{history}" if history else manifest.slice_dir(slice)


def get_report_manifest(slice="all", history=None):
    return manifest.report_manifest(config, get_patterns(history), slice)


def get_report_exclude_history(history=None):
    """The protocol of a report's evaluations: the config's, flipped for the other one."""
    return config["protocol"]["exclude_history"] != bool(history)


def get_report_note(history=None):
    """What the other protocol's report says of its models, in every caption."""
    if not history:
        return None
    main = config["protocol"]["exclude_history"]
    return (
        f"The models were trained and selected under exclude_history = {str(main).lower()} "
        f"(the main report's protocol) and are evaluated here with it flipped."
    )


def get_report_baseline(slice="all"):
    return manifest.report_baseline(config, slice)


def get_report_releases(slice="all"):
    """{dataset: what data it is} for every dataset the slice's report holds, for its captions."""
    datasets = dict.fromkeys(d for d, _ in manifest.slice_runs(config, slice))
    return {
        d: report_releases.describe_release(config["dataset_specs"][d], config)
        for d in datasets
    }


def get_report_inputs(slice="all", history=None):
    return manifest.report_inputs(get_report_manifest(slice, history))


def get_report_outputs(slice="all", history=None):
    """The report's tables (csv/md/tex/html) and figures (png) of each section
    the slice has, wrapped in report() for `snakemake --report` (a named
    slice's, or the other protocol's, under its own category)."""
    directory = get_report_dir(slice, history)
    outputs = {}
    for category, tables, figures in manifest.report_sections(config, slice):
        if history:
            category = f"Protocol {history}: {category}"
        elif slice != "all":
            category = f"Slice {slice}: {category}"
        for stem in tables:
            # The HTML table renders in `snakemake --report`; a CSV would only download.
            outputs[f"{stem}_html"] = report(
                f"{directory}/{stem}.html",
                caption=f"../report/{stem}.rst",
                category=category,
            )
            outputs[f"{stem}_csv"] = f"{directory}/{stem}.csv"
            outputs[f"{stem}_md"] = f"{directory}/{stem}.md"
            outputs[f"{stem}_tex"] = f"{directory}/{stem}.tex"
        for stem in figures:
            outputs[stem] = report(
                f"{directory}/{stem}.png",
                caption=f"../report/{stem}.rst",
                category=category,
            )
    return outputs


def get_final_outputs():
    """The report, and every pseudo-label file of every seed (positives for
    later methods)."""
    patterns = get_patterns()
    labels = [
        path
        for d in config["datasets"]
        for s in config["seeds"]
        for path in manifest.pseudolabel_inputs(config, d, s, patterns).values()
    ]
    others = [f"{get_report_dir(sl, h)}/README.md" for sl, h in REPORTS if h]
    return ["results/report/README.md", *others, *labels]


# ---------------------------------------------------------------- cluster resources


def get_cpus_per_task(wildcards, threads):
    """SLURM's --cpus-per-task: the job's threads, so that --set-threads
    changes both."""
    return threads


def get_gpus(wildcards):
    """GPUs a job asks for (resource `gpu`, which the SLURM executor passes as
    --gpus): none when features.device is cpu or when the job's method trains
    no network (the floors), else one, which the job then uses (device auto
    or cuda)."""
    if config["features"]["device"] == "cpu":
        return 0
    method = wildcards.get("method")
    if method is not None and not registry.get(method).iterative:
        return 0
    return 1
