"""The registry of methods: what each needs, how it trains, how it ranks.

A method is a :class:`MethodSpec` here plus a module that implements it. The
workflow's generic ``train`` and ``evaluate`` rules read the spec (at parse
time, so this module imports neither torch nor pandas) and call the module's
two functions (:mod:`pmsid.methods.run`):

- ``train(job: TrainJob) -> None`` writes ``job.outputs["model"]`` and
  ``job.outputs["log"]`` (contract TRAIN_LOG; no rows for a method without
  epochs), and may write more files into ``job.outputs["extras"]``, a folder;
- ``rank(job: RankJob) -> {"valid": Ranking, "test": Ranking}``: the top-K
  items of every user (``pmsid.evaluate.ranking.Ranking``), optionally with
  the user's history excluded. The evaluation computes every metric from
  those lists, the same way for every method.

What a method needs upstream is named by *needs* (:data:`NEEDS`), which the
workflow turns into input files (the run seed's files: every need but ``features``
comes from a stage that runs once per seed): ``rqkmeans_ids`` (one ID table),
``hkmeans_ids`` (HDNAG's hierarchical coarse / fine / dedup IDs),
``pmat_global_tables`` / ``pmat_personalized_tables`` / ``pmat_oracle_tables``
(PMAT's ID tables from the mean, the learned or the planted weights, each
user's table per split and each training prefix's table), ``pmat_replayed_tables`` (the tables
after the drift-triggered updates), ``pseudolabels`` (one k-means label file
per modality, inputs ``labels_{modality}``), ``features`` (the content
features of every modality, inputs ``features_{modality}``) and ``model:<method>`` (another
method's trained model, input ``init``).

Adding a method: its module, one :class:`MethodSpec` in ``_SPECS`` below
(from which :data:`METHODS` is built), its name in the config's ``methods:``
list, and its tests.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

from pmsid.methods.mcrl import ABLATIONS as MCRL_ABLATIONS

# The kinds of upstream files a method may need; anything else is a typo.
NEEDS = (
    "rqkmeans_ids",
    "hkmeans_ids",
    "pmat_global_tables",
    "pmat_personalized_tables",
    "pmat_oracle_tables",
    "pmat_replayed_tables",
    "pseudolabels",
    "features",
    "model:",  # prefix: model:<method>
)


ROLES = ("floor", "baseline", "ours", "control", "oracle")


@dataclass(frozen=True)
class MethodSpec:
    """One method of the thesis or a baseline.

    ``module`` implements ``train`` and ``rank``. ``hyper`` names the config
    section of its hyperparameters (``hyper_skip`` lists that section's keys
    that select runs rather than configure training). ``model_from`` names
    the method whose trained model this one ranks with, for a variant that
    differs only at ranking time (it then has no training of its own); a
    callable ``(config) -> name`` when the config chooses it (see
    :meth:`model_owner`).
    ``datasets(config)`` lists the datasets it runs on; ``train_needs`` and
    ``rank_needs`` ``(config, dataset)`` the needs of each stage. ``sections``
    are the report sections its results appear in; ``role`` is ``floor``,
    ``baseline``, ``ours`` or ``control`` (the row an ablation is tested
    against; ``oracle`` for a reference row that uses planted truth, never
    in the main comparison). ``options`` are fixed settings passed to the module (for
    example MCRL's ablation); ``description`` says in a clause what the
    method is, for the report's captions.
    """

    name: str
    label: str
    module: str
    datasets: Callable[[dict], list[str]]
    sections: tuple[str, ...] = ("main",)
    role: str = "baseline"
    hyper: str | None = None
    hyper_skip: tuple[str, ...] = ()
    model_from: str | Callable[[dict], str] | None = None
    iterative: bool = True
    train_needs: Callable[[dict, str], tuple[str, ...]] = lambda config, dataset: ()
    rank_needs: Callable[[dict, str], tuple[str, ...]] = lambda config, dataset: ()
    options: dict = field(default_factory=dict)
    description: str = ""  # one clause for report captions; the label when empty

    @property
    def trains(self) -> bool:
        """Whether the method has a training job of its own."""
        return self.model_from is None

    def model_owner(self, config: dict) -> str:
        """The method whose trained model this one ranks with: its own, or ``model_from``'s."""
        if self.model_from is None:
            return self.name
        return self.model_from(config) if callable(self.model_from) else self.model_from


def _listed(name: str) -> Callable[[dict], list[str]]:
    """Runs on every dataset when ``name`` is in the config's ``methods``."""
    return lambda config: list(config["datasets"]) if name in config["methods"] else []


def _pmat_datasets(config: dict) -> list[str]:
    return list(config["pmat"]["datasets"])


def _planted_datasets(config: dict) -> list[str]:
    """PMAT's datasets with planted image-vs-text preferences (a ``truth_users`` table)."""
    specs = config["dataset_specs"]
    return [
        d
        for d in config["pmat"]["datasets"]
        if specs[d].get("truth_users") and {"image", "text"} <= set(specs[d]["modalities"])
    ]


def _mcrl_datasets(ablation: str) -> Callable[[dict], list[str]]:
    return lambda config: list(config["mcrl"]["datasets"]) if ablation in config["mcrl"]["ablations"] else []


PMAT_GENERATORS = ("pmat_static", "pmat_static_token")  # the choices of config pmat.generator


def pmat_generator(config: dict) -> str:
    """The personalized generator PMAT's replay (``pmat_full``) and MCRL build
    on: config ``pmat.generator``, one of :data:`PMAT_GENERATORS` (the one
    the validation data prefers; both are reported)."""
    name = config["pmat"]["generator"]
    if name not in PMAT_GENERATORS:
        raise ValueError(f"config pmat.generator must be one of {list(PMAT_GENERATORS)}, got {name!r}")
    return name


def mcrl_base(config: dict, dataset: str) -> str:
    """MCRL's stage-1 generator on ``dataset``: PMAT's personalized one
    (:func:`pmat_generator`) where PMAT runs, TIGER's otherwise."""
    return pmat_generator(config) if dataset in config["pmat"]["datasets"] else "tiger"


def _mcrl_train_needs(config: dict, dataset: str) -> tuple[str, ...]:
    base = mcrl_base(config, dataset)
    tables = "pmat_personalized_tables" if base in PMAT_GENERATORS else "rqkmeans_ids"
    # pseudolabels: L_intra's positives; features: the content L_inter's modality views are computed from.
    return (tables, f"model:{base}", "pseudolabels", "features")


def _mcrl_rank_needs(config: dict, dataset: str) -> tuple[str, ...]:
    # Ranked as pmat_full ranks (the tables after the drift replay), or as TIGER (its one table).
    return ("pmat_replayed_tables",) if mcrl_base(config, dataset) in PMAT_GENERATORS else ("rqkmeans_ids",)


def _fixed(*needs: str) -> Callable[[dict, str], tuple[str, ...]]:
    return lambda config, dataset: needs


_MCRL_LABELS = {"user": "L_user", "intra": "L_intra", "inter": "L_inter"}


def _mcrl_spec(ablation: str) -> MethodSpec:
    losses = MCRL_ABLATIONS[ablation]
    label = (
        "MCRL, no contrastive loss (control)" if not losses else "MCRL + " + " + ".join(_MCRL_LABELS[x] for x in losses)
    )
    return MethodSpec(
        name=f"mcrl_{ablation}",
        label=label,
        module="pmsid.methods.mcrl.method",
        datasets=_mcrl_datasets(ablation),
        sections=("mcrl",),
        role="control" if not losses else "ours",
        hyper="mcrl",
        hyper_skip=("datasets", "ablations", "id_space"),
        train_needs=_mcrl_train_needs,
        rank_needs=_mcrl_rank_needs,
        options={"ablation": ablation, "losses": list(losses)},
    )


# HDNAG's variants: config hdnag.ablations entry -> (method, label, options).
HDNAG_ABLATIONS = {
    "full": ("hdnag", "HDNAG (two-level NAR, two-stage retrieval)", {"levels": "two", "align": True}),
    "no_align": ("hdnag_no_align", "HDNAG without the alignment loss", {"levels": "two", "align": False}),
    "single_level": ("hdnag_single", "HDNAG single-level NAR (one pass)", {"levels": "single", "align": False}),
}


def _hdnag_spec(ablation: str) -> MethodSpec:
    name, label, options = HDNAG_ABLATIONS[ablation]
    return MethodSpec(
        name=name,
        label=label,
        module="pmsid.methods.hdnag",
        datasets=lambda config: list(config["hdnag"]["datasets"]) if ablation in config["hdnag"]["ablations"] else [],
        sections=("main", "hdnag") if ablation == "full" else ("hdnag",),
        role="ours",
        hyper="hdnag",
        hyper_skip=("datasets", "ablations", "efficiency"),
        train_needs=_fixed("hkmeans_ids"),
        rank_needs=_fixed("hkmeans_ids"),
        options={"ablation": ablation, **options},
        description={
            "full": "hierarchical k-means IDs, coarse then fine tokens each in one parallel pass, top-c coarse recall",
            "no_align": "as HDNAG with the alignment weight mu = 0",
            "single_level": "as HDNAG with all three tokens in one pass, nothing conditioned on the coarse prediction",
        }[ablation],
    )


_SPECS = [
    MethodSpec(
        name="mostpop",
        label="MostPop",
        module="pmsid.methods.mostpop",
        datasets=_listed("mostpop"),
        role="floor",
        iterative=False,
    ),
    MethodSpec(
        name="random",
        label="Random",
        module="pmsid.methods.random_ranking",
        datasets=_listed("random"),
        role="floor",
        iterative=False,
    ),
    MethodSpec(
        name="sasrec",
        label="SASRec",
        module="pmsid.methods.sasrec",
        datasets=_listed("sasrec"),
        hyper="sasrec",
    ),
    MethodSpec(
        name="tiger",
        label="TIGER-style (RQ-KMeans IDs)",
        module="pmsid.methods.tiger",
        datasets=_listed("tiger"),
        # In the PMAT table too (the baseline's global IDs beside PMAT's global
        # fusion) and HDNAG's (the autoregressive beam search it is tested against).
        sections=("main", "pmat", "hdnag"),
        hyper="tiger",
        train_needs=_fixed("rqkmeans_ids"),
        rank_needs=_fixed("rqkmeans_ids"),
        description="the baseline: RQ-KMeans IDs of the equally weighted, concatenated raw features",
    ),
    MethodSpec(
        name="pmat_global",
        label="PMAT global fusion (P = 1)",
        module="pmsid.methods.tiger",
        datasets=_pmat_datasets,
        sections=("main", "pmat"),
        role="control",
        hyper="tiger",
        train_needs=_fixed("pmat_global_tables"),
        rank_needs=_fixed("pmat_global_tables"),
        description="one global fusion of the modalities (P = 1), the same IDs for every user",
    ),
    MethodSpec(
        name="pmat_static",
        label="PMAT, no updates (P prototypes)",
        module="pmsid.methods.tiger",
        datasets=_pmat_datasets,
        sections=("main", "pmat"),
        role="ours",
        hyper="tiger",
        train_needs=_fixed("pmat_personalized_tables"),
        rank_needs=_fixed("pmat_personalized_tables"),
        description="personalized IDs (one ID table per preference prototype), no updates after training",
    ),
    MethodSpec(
        name="pmat_static_token",
        label="PMAT, no updates, table token",
        module="pmsid.methods.tiger",
        datasets=_pmat_datasets,
        sections=("main", "pmat"),
        role="ours",
        hyper="tiger",
        train_needs=_fixed("pmat_personalized_tables"),
        rank_needs=_fixed("pmat_personalized_tables"),
        options={"table_token": True},
        description="as pmat_static, and the encoder reads a learned token of the user's ID table",
    ),
    MethodSpec(
        name="pmat_oracle",
        label="PMAT oracle (planted weights)",
        module="pmsid.methods.tiger",
        datasets=_planted_datasets,
        sections=("pmat",),
        role="oracle",
        hyper="tiger",
        train_needs=_fixed("pmat_oracle_tables"),
        rank_needs=_fixed("pmat_oracle_tables"),
        description="as pmat_static with every user's planted modality weights instead of learned ones (uses the truth)",
    ),
    MethodSpec(
        name="pmat_full",
        label="PMAT full (P prototypes + drift updates)",
        module="pmsid.methods.tiger",
        datasets=_pmat_datasets,
        sections=("main", "pmat"),
        role="ours",
        hyper="tiger",
        model_from=pmat_generator,
        rank_needs=_fixed("pmat_replayed_tables"),
        description="personalized IDs plus drift-triggered updates of the user's preference",
    ),
    *(_mcrl_spec(ablation) for ablation in MCRL_ABLATIONS),
    *(_hdnag_spec(ablation) for ablation in HDNAG_ABLATIONS),
]

METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in _SPECS}


def get(name: str) -> MethodSpec:
    """The spec of method ``name``; an unknown name fails listing the registered ones."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; registered methods: {sorted(METHODS)}")
    return METHODS[name]


def implementation(name: str):
    """The module implementing method ``name`` (imported on first use: it may import torch)."""
    return importlib.import_module(get(name).module)


def runs(config: dict) -> list[tuple[str, str]]:
    """Every ``(dataset, method)`` the config asks for, in registry order."""
    return [(dataset, spec.name) for spec in _SPECS for dataset in spec.datasets(config)]


def check_needs(config: dict) -> None:
    """Fail naming the method when a need is not one of :data:`NEEDS` or
    names an unregistered method, or its role is not one of :data:`ROLES`."""
    for dataset, name in runs(config):
        spec = METHODS[name]
        if spec.role not in ROLES:
            raise ValueError(f"method {name}: role {spec.role!r} is not one of {list(ROLES)}")
        for need in (*spec.train_needs(config, dataset), *spec.rank_needs(config, dataset)):
            other = need.removeprefix("model:") if need.startswith("model:") else None
            if other is not None and other not in METHODS:
                raise ValueError(f"method {name}: needs the model of unknown method {other!r}")
            if other is None and need not in NEEDS:
                raise ValueError(f"method {name}: unknown need {need!r}; needs are {list(NEEDS)}")
        owner = spec.model_owner(config)
        if owner not in METHODS:
            raise ValueError(f"method {name}: model_from names unknown method {owner!r}")
