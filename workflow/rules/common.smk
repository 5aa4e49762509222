# Config validation and the helpers (get_* / is_*) the rules use. No rule
# lives here.

import importlib.util
import json
import sys
from pathlib import Path

from snakemake.utils import validate

validate(config, schema="../schemas/config.schema.yaml")

PACKAGE = Path(workflow.basedir) / "workflow" / "scripts" / "pmsid"
sys.path.insert(0, str(PACKAGE.parent))
from pmsid.data import (
    releases,
)  # the release catalogue: URLs, files, published statistics

MODELS = ["tiger", "sasrec"]
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


def _check_config():
    """Checks that span several keys, which JSON Schema cannot express."""
    specs = config["dataset_specs"]
    for name in config["datasets"]:
        if name not in specs:
            raise ValueError(
                f"config: datasets lists '{name}' but dataset_specs has no entry for it; "
                f"described datasets: {sorted(specs)}"
            )
        _check_dataset_spec(name, specs[name])
        spec = specs[name]
        weights = spec.get("modality_weights") or {}
        for modality in weights:
            if modality not in spec["modalities"]:
                raise ValueError(
                    f"config: dataset_specs.{name}.modality_weights.{modality}: '{modality}' is not a "
                    f"modality of {name}; its modalities are {spec['modalities']}"
                )
        if weights and not any(weights.values()):
            raise ValueError(
                f"config: dataset_specs.{name}.modality_weights are all zero"
            )
    _check_pmat()
    _check_mcrl()
    ks = config["evaluation"]["ks"]
    if config["evaluation"]["beam_size"] < max(ks):
        raise ValueError(
            f"config: evaluation.beam_size ({config['evaluation']['beam_size']}) must be >= max(evaluation.ks) "
            f"({max(ks)}), or beam search cannot fill the top-{max(ks)} list"
        )


def _check_dataset_spec(name, spec):
    """Reader-specific keys, text fields and modalities of one dataset."""
    reader = spec["reader"]
    for key, readers in READER_KEYS.items():
        if (
            spec.get(key) is not None and reader not in readers
        ):  # schema defaults are null
            raise ValueError(
                f"config: dataset_specs.{name}.{key} is for reader(s) {readers}, not {reader}"
            )
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
                f"config: dataset_specs.{name} gives both a category (download) and local reviews/meta "
                "files; keep one"
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


def _known_user_count(name):
    """Users of a dataset when knowable before any job runs: its stats.json
    from an earlier run, or the synthetic generator's user count (an upper
    bound). None otherwise (the pmat_ids job checks then)."""
    stats = Path(f"results/data/{name}/stats.json")
    if stats.exists():
        return json.loads(stats.read_text())["n_users"]
    if config["dataset_specs"][name].get("reviews") == SYNTHETIC_REVIEWS:
        return config["synthetic"]["n_users"]
    return None


def _check_pmat():
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
        users = _known_user_count(name)
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


MCRL_LOSSES = {
    "none": [],
    "user": ["user"],
    "intra": ["intra"],
    "inter": ["inter"],
    "user_intra": ["user", "intra"],
    "user_inter": ["user", "inter"],
    "intra_inter": ["intra", "inter"],
    "all": ["user", "intra", "inter"],
}  # the ablations' losses, as pmsid.methods.mcrl.ABLATIONS (a test checks they agree)


def _check_mcrl():
    mcrl = config["mcrl"]
    for name in mcrl["datasets"]:
        if name not in config["datasets"]:
            raise ValueError(
                f"config: mcrl.datasets lists '{name}', which is not in datasets {config['datasets']}; "
                "add it there or remove it from mcrl.datasets"
            )
        modalities = config["dataset_specs"][name]["modalities"]
        with_inter = [a for a in mcrl["ablations"] if "inter" in MCRL_LOSSES[a]]
        if len(modalities) < 2 and mcrl["b"] > 0 and with_inter:
            raise ValueError(
                f"config: mcrl.ablations {with_inter} train L_inter on '{name}', whose "
                f"dataset_specs.{name}.modalities is {modalities}; L_inter contrasts two modalities of an "
                "item: drop those ablations, set mcrl.b: 0, or remove the dataset from mcrl.datasets"
            )


SYNTHETIC_REVIEWS = "resources/synthetic/Synthetic_5.json.gz"
_check_config()


def _extra_modalities():
    """Names of the precomputed-feature modalities of the configured datasets."""
    names = set()
    for name in config["datasets"]:
        names.update(config["dataset_specs"][name].get("extra_modalities") or {})
    return sorted(names)


EXTRA_MODALITIES = _extra_modalities()
NEVER = "(?!x)x"  # a regex that matches nothing (a wildcard with no allowed value)


wildcard_constraints:
    dataset="|".join(config["datasets"]),
    modality="|".join(BUILTIN_MODALITIES + EXTRA_MODALITIES),
    extra_modality="|".join(EXTRA_MODALITIES) or NEVER,
    reader="|".join(releases.READERS_WITH_DOWNLOADS),
    filename=r"[^/]+",
    seed=r"\d+",
    variant="global|personalized",
    ablation="global|static|full",
    mcrl_ablation="|".join(MCRL_LOSSES),


def get_spec(dataset):
    """The dataset_specs entry of `dataset`."""
    return config["dataset_specs"][dataset]


def get_dataset_spec(wildcards):
    """The dataset_specs entry of the job's dataset (for params)."""
    return get_spec(wildcards.dataset)


def is_amazon2018(dataset):
    return get_spec(dataset)["reader"] == "amazon2018"


def get_package_sources(*subpackages):
    """The package modules a rule's code depends on (sub-packages or single
    files relative to the package), declared as inputs so that
    a change to them reruns the rule (Snakemake tracks script changes itself,
    not changes to the modules a script imports)."""
    files = [
        PACKAGE / "__init__.py",
        PACKAGE / "logs.py",
        PACKAGE / "stages.py",
        PACKAGE / "data" / "contracts.py",
    ]
    for sub in subpackages:
        if sub.endswith(".py"):
            files.append(PACKAGE / sub)
        else:
            files += sorted((PACKAGE / sub).glob("*.py"))
    return [str(f) for f in dict.fromkeys(files)]


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


def is_downloaded(dataset):
    """True when the dataset's raw files come from its release's source
    (a category and no local reviews/meta files)."""
    spec = get_spec(dataset)
    return spec["reader"] in releases.READERS_WITH_DOWNLOADS and "reviews" not in spec


def get_download_files(dataset):
    """role -> (local path, releases.RawFile) of a downloaded dataset."""
    spec = get_spec(dataset)
    root = config["downloads"]["dir"]
    return {
        f.role: (f"{root}/{spec['reader']}/{f.filename}", f)
        for f in releases.raw_files(
            spec["reader"], spec["category"], spec.get("base_url")
        )
    }


def _download_sources():
    """Local path -> its source (url, md5, md5_url) for every configured
    dataset; two datasets asking for one file from two sources is an error."""
    sources = {}
    for name in config["datasets"]:
        if not is_downloaded(name):
            continue
        for path, raw in get_download_files(name).values():
            source = {"url": raw.url, "md5": raw.md5, "md5_url": raw.md5_url}
            if sources.get(path, source) != source:
                raise ValueError(
                    f"config: {path} would be downloaded from both {sources[path]['url']} and "
                    f"{raw.url} (dataset {name}); give the datasets the same base_url"
                )
            sources[path] = source
    return sources


DOWNLOAD_SOURCES = _download_sources()


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
    if not is_downloaded(dataset):
        return {"reviews": spec["reviews"], "meta": spec["meta"]}
    return {role: path for role, (path, _) in get_download_files(dataset).items()}


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
    if expected is None and is_downloaded(wildcards.dataset):
        expected = releases.expected_stats(spec["reader"], spec["category"])
    if expected is None and spec["reader"] == "ml100k" and not spec.get("path"):
        expected = ML100K_EXPECTED
    return {**spec, "name": wildcards.dataset, "expected": expected}


# The 5-core of the ml-100k copy inside recbole (../shared/OFFLINE.md, and
# results/data/ml-100k/stats.json of every run so far).
ML100K_EXPECTED = {"n_users": 943, "n_items": 1349, "n_interactions": 99287}


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


def get_feature_output(modality):
    """Where a modality's extraction writes: <modality>.parquet, or
    <modality>.full.parquet when features.reduce reduces it."""
    if modality in config["features"]["reduce"]["modalities"]:
        return f"results/features/{{dataset}}/{modality}.full.parquet"
    return f"results/features/{{dataset}}/{modality}.parquet"


REDUCED_MODALITIES = config["features"]["reduce"]["modalities"]


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


def get_image_dir(wildcards):
    return f"resources/images/{wildcards.dataset}"


def get_train_params(model):
    """Hyperparameters of `model` plus the protocol keys every model needs
    (validation ranks under the same protocol as the evaluation)."""
    params = {
        **config[model],
        "history_cap": config["protocol"]["history_cap"],
        "exclude_history": config["protocol"]["exclude_history"],
        "ks": config["evaluation"]["ks"],
        "deterministic": config["deterministic"],
    }
    if model == "tiger":
        params["beam_size"] = config["evaluation"]["beam_size"]
    return params


def get_evaluate_inputs(model):
    def inputs(wildcards):
        files = {
            "interactions": f"results/data/{wildcards.dataset}/interactions.parquet",
            "catalogue": f"results/data/{wildcards.dataset}/items.parquet",
            "model": f"results/train/{wildcards.dataset}/{model}/seed{wildcards.seed}/model.pt",
        }
        if model == "tiger":
            files["ids"] = f"results/tokenize/{wildcards.dataset}/rqkmeans/ids.parquet"
        return files

    return inputs


def get_runs(kind):
    """Paths of one file kind for every (dataset, model, seed) run, PMAT's
    included (its generators for train logs, its ablations otherwise)."""
    patterns = {
        "metrics": "results/evaluate/{dataset}/{model}/seed{seed}/metrics.parquet",
        "per_user": "results/evaluate/{dataset}/{model}/seed{seed}/per_user.parquet",
        "train_log": "results/train/{dataset}/{model}/seed{seed}/train_log.parquet",
    }
    pmat_models = PMAT_GENERATORS if kind == "train_log" else PMAT_ABLATIONS
    paths = expand(
        patterns[kind], dataset=config["datasets"], model=MODELS, seed=config["seeds"]
    )
    paths += expand(
        patterns[kind],
        dataset=config["pmat"]["datasets"],
        model=pmat_models,
        seed=config["seeds"],
    )
    return paths


PMAT_GENERATORS = ["pmat_global", "pmat_personalized"]
PMAT_ABLATIONS = ["pmat_global", "pmat_static", "pmat_full"]


def get_pmat_files(kind):
    """PMAT's per-(dataset, seed) files the report reads."""
    patterns = {
        "weights": "results/pmat/{dataset}/seed{seed}/weights.parquet",
        "preference": "results/pmat/{dataset}/seed{seed}/preference.json",
        "replay": "results/pmat/{dataset}/seed{seed}/replay/summary.json",
        "quality": "results/tokenize/{dataset}/pmat_{variant}/seed{seed}/quality.parquet",
    }
    return expand(
        patterns[kind],
        dataset=config["pmat"]["datasets"],
        seed=config["seeds"],
        variant=["global", "personalized"],
    )


def get_pmat_report_outputs():
    """The report's PMAT tables and figures (none when no dataset runs PMAT)."""
    if not config["pmat"]["datasets"]:
        return {}
    outputs = {}
    for stem in ["pmat_ablation", "pmat_updates", "pmat_preference", "pmat_id_quality"]:
        outputs[f"{stem}_csv"] = report(
            f"results/report/{stem}.csv",
            caption=f"../report/{stem}.rst",
            category="PMAT",
        )
        outputs[f"{stem}_md"] = f"results/report/{stem}.md"
        outputs[f"{stem}_tex"] = f"results/report/{stem}.tex"
    for stem in ["pmat_weights", "pmat_semantic_consistency"]:
        outputs[stem] = report(
            f"results/report/{stem}.png",
            caption=f"../report/{stem}.rst",
            category="PMAT",
        )
    return outputs


def get_pmat_attention_params():
    """The preference network's cfg: config pmat.attention plus the protocol's cap."""
    return {
        **config["pmat"]["attention"],
        "history_cap": config["protocol"]["history_cap"],
    }


def get_truth_input(wildcards):
    """The planted-preference table of the dataset, if it has one."""
    truth = get_spec(wildcards.dataset).get("truth_users")
    return {"truth": truth} if truth else {}


def get_pmat_evaluate_inputs(wildcards):
    """Generator, ID tables and the per-split table of every user for one
    PMAT ablation: global and static use the tokenizer's assignment (no
    updates), full the replay's."""
    generator = "global" if wildcards.ablation == "global" else "personalized"
    tokens = (
        f"results/tokenize/{wildcards.dataset}/pmat_{generator}/seed{wildcards.seed}"
    )
    if wildcards.ablation == "full":
        assignment = f"results/pmat/{wildcards.dataset}/seed{wildcards.seed}/replay/assignment.parquet"
    else:
        assignment = f"{tokens}/assignment.parquet"
    return {
        "interactions": f"results/data/{wildcards.dataset}/interactions.parquet",
        "catalogue": f"results/data/{wildcards.dataset}/items.parquet",
        "model": f"results/train/{wildcards.dataset}/pmat_{generator}/seed{wildcards.seed}/model.pt",
        "ids": f"{tokens}/ids.parquet",
        "assignment": assignment,
    }


def get_dataset_image_files():
    """images.parquet of every dataset with an image modality (the report counts statuses)."""
    return [
        f"results/data/{d}/images.parquet"
        for d in config["datasets"]
        if "image" in get_spec(d)["modalities"]
    ]


def get_quality_files():
    return expand(
        "results/tokenize/{dataset}/rqkmeans/quality.parquet",
        dataset=config["datasets"],
    )


def get_pseudolabel_files():
    return [
        f"results/pseudolabels/{d}/{m}.parquet"
        for d in config["datasets"]
        for m in get_spec(d)["modalities"]
    ]


def mcrl_base(dataset):
    """MCRL's stage-1 generator on `dataset`: PMAT's personalized one where
    PMAT runs, TIGER's otherwise."""
    return "pmat_personalized" if dataset in config["pmat"]["datasets"] else "tiger"


def get_mcrl_train_inputs(wildcards):
    """Stage-1 generator, its ID tables (and users' tables under PMAT), and
    the pseudo-labels of every modality (inputs labels_{modality})."""
    d, s = wildcards.dataset, wildcards.seed
    base = mcrl_base(d)
    files = {
        "interactions": f"results/data/{d}/interactions.parquet",
        "catalogue": f"results/data/{d}/items.parquet",
        "init": f"results/train/{d}/{base}/seed{s}/model.pt",
    }
    if base == "tiger":
        files["ids"] = f"results/tokenize/{d}/rqkmeans/ids.parquet"
    else:
        files["ids"] = f"results/tokenize/{d}/pmat_personalized/seed{s}/ids.parquet"
        files["assignment"] = (
            f"results/tokenize/{d}/pmat_personalized/seed{s}/assignment.parquet"
        )
    for m in get_spec(d)["modalities"]:
        files[f"labels_{m}"] = f"results/pseudolabels/{d}/{m}.parquet"
    return files


def get_mcrl_evaluate_inputs(wildcards):
    """An MCRL model with the tables its stage-1 generator is evaluated
    under: pmat_full's replayed tables, or TIGER's single table."""
    d, s = wildcards.dataset, wildcards.seed
    files = {
        "interactions": f"results/data/{d}/interactions.parquet",
        "catalogue": f"results/data/{d}/items.parquet",
        "model": f"results/train/{d}/mcrl_{wildcards.mcrl_ablation}/seed{s}/model.pt",
    }
    if mcrl_base(d) == "tiger":
        files["ids"] = f"results/tokenize/{d}/rqkmeans/ids.parquet"
    else:
        files["ids"] = f"results/tokenize/{d}/pmat_personalized/seed{s}/ids.parquet"
        files["assignment"] = f"results/pmat/{d}/seed{s}/replay/assignment.parquet"
    return files


def get_mcrl_label_inputs(wildcards):
    return {
        f"labels_{m}": f"results/pseudolabels/{wildcards.dataset}/{m}.parquet"
        for m in get_spec(wildcards.dataset)["modalities"]
    }


def get_mcrl_files(kind):
    """One file kind of every MCRL run, for the report."""
    patterns = {
        "metrics": "results/evaluate/{dataset}/mcrl_{ablation}/seed{seed}/metrics.parquet",
        "per_user": "results/evaluate/{dataset}/mcrl_{ablation}/seed{seed}/per_user.parquet",
        "components": "results/train/{dataset}/mcrl_{ablation}/seed{seed}/loss_components.parquet",
        "id_space": "results/mcrl/{dataset}/mcrl_{ablation}/seed{seed}/id_space.json",
        "tsne": "results/mcrl/{dataset}/mcrl_{ablation}/seed{seed}/tsne.parquet",
    }
    ablations, seeds = config["mcrl"]["ablations"], config["seeds"]
    if (
        kind == "tsne"
    ):  # the figure's runs only: first seed, none and all (or the first and last run)
        shown = [a for a in ("none", "all") if a in ablations]
        ablations, seeds = (
            shown or list(dict.fromkeys([ablations[0], ablations[-1]])),
            seeds[:1],
        )
    return expand(
        patterns[kind],
        dataset=config["mcrl"]["datasets"],
        ablation=ablations,
        seed=seeds,
    )


def get_mcrl_report_outputs():
    """The report's MCRL tables and figures (none when no dataset runs MCRL)."""
    if not (config["mcrl"]["datasets"] and config["mcrl"]["ablations"]):
        return {}
    outputs = {}
    for stem in ["mcrl_ablation", "mcrl_id_space", "mcrl_cost"]:
        outputs[f"{stem}_csv"] = report(
            f"results/report/{stem}.csv",
            caption=f"../report/{stem}.rst",
            category="MCRL",
        )
        outputs[f"{stem}_md"] = f"results/report/{stem}.md"
        outputs[f"{stem}_tex"] = f"results/report/{stem}.tex"
    for stem in ["mcrl_loss_curves", "mcrl_tsne"]:
        outputs[stem] = report(
            f"results/report/{stem}.png",
            caption=f"../report/{stem}.rst",
            category="MCRL",
        )
    return outputs


def get_final_outputs():
    return [
        "results/report/README.md",
        *get_pseudolabel_files(),
    ]
