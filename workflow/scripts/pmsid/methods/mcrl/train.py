"""Stage 2 of MCRL's schedules: the stage-1 generator fine-tuned under the joint objective.

docs/METHOD.md section 5 trains PMAT first and then the joint objective
(two-stage), or alternates the two after PMAT (alternating). Stage 1 is the
generator the workflow already trains (the ``pmat_static`` method's personalized
generator, or plain TIGER on a dataset without PMAT), so every ablation
starts from the same cached model and only stage 2 runs per ablation:
``epochs`` epochs of

    L_total = L_ID + lambda2 (L_user + a L_intra + b L_inter)

over the active losses (:func:`pmsid.methods.mcrl.joint.active_terms`: every
step for two_stage, odd steps for alternating). The ablation ``none`` runs the
same epochs with no MCRL loss, which is exactly the generator's own loss
(tested), so it is the control: same initial model, same batches, same
optimizer steps.

Each training row is one prefix of a user's training sequence, tokenized in
the ID table stage 1 trained it in (PMAT: the table chosen from the items
before the row's target); with P > 1 tables the table is also the row's
group for L_user (rows of one preference prototype share positives). The items' pseudo-labels per modality come from the pseudo-label
stage (L_intra), their raw content features per modality from the feature
files (L_inter's content views; :func:`read_item_features`).

Every optimizer step appends one row to the loss-component log
(:data:`COMPONENTS`): epoch, step, total, L_ID, L_user, L_intra, L_inter (NaN
when off at that step) and the step's wall seconds (the time until the next
step starts; NaN for an epoch's last step, where validation runs). The rows
of finished epochs are kept beside the loop's checkpoint, so a resumed run
continues the same log.

The saved model is a TIGER model file (``pmsid.methods.tiger.rank``
evaluates it as is) plus an ``"mcrl"`` entry with the joint cfg and the
heads' weights (the content encoders' included; the content features are
data, not saved).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from pmsid.data import contracts
from pmsid.data.sequences import Sequences, eval_samples, training_samples
from pmsid.defaults import section_defaults
from pmsid.evaluate.metrics import mean_metrics
from pmsid.evaluate.ranking import history_items, ranks_in_list
from pmsid.methods.mcrl import ABLATIONS, joint, losses
from pmsid.methods.mcrl.joint import COMPONENT_NAMES, JointModel, active_terms, component_row
from pmsid.models.beam import beam_search_tables
from pmsid.models.generator import build_tiger
from pmsid.runtime import atomic_save
from pmsid.train import recipes
from pmsid.train.loop import LoopConfig, config_hash, train_loop

log = logging.getLogger(__name__)

SCHEDULES = ("two_stage", "alternating")
# Keys of the workflow's `mcrl:` block that configure the joint model.
JOINT_KEYS = ("lambda2", "a", "b", "tau", "d_out", "view_hidden")
DEFAULTS = {
    **{key: joint.DEFAULTS[key] for key in JOINT_KEYS},
    **{key: section_defaults("mcrl")[key] for key in ("schedule", "epochs", "lr", "warmup_steps")},
}

# results/train/{dataset}/mcrl_{ablation}/seed{seed}/loss_components.parquet
COMPONENTS = pa.schema(
    [
        pa.field("epoch", pa.int32(), nullable=False),
        pa.field("step", pa.int64(), nullable=False),
        pa.field("total", pa.float64(), nullable=False),
        *[pa.field(name, pa.float64()) for name in COMPONENT_NAMES],
        pa.field("seconds", pa.float64()),
    ]
)


def resolve_cfg(cfg: Mapping | None) -> dict:
    """``cfg`` over :data:`DEFAULTS`; an unknown key, a bad schedule or epochs < 1 fails naming the key."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"mcrl: unknown key(s) {unknown}; known keys are {sorted(DEFAULTS)}")
    out = {**DEFAULTS, **cfg}
    if out["schedule"] not in SCHEDULES:
        raise ValueError(f"mcrl.schedule must be one of {list(SCHEDULES)}, got {out['schedule']!r}")
    if not isinstance(out["epochs"], int) or out["epochs"] < 1:
        raise ValueError(f"mcrl.epochs must be an integer >= 1, got {out['epochs']!r}")
    return out


def read_labels(paths: Mapping[str, str], n_items: int) -> dict[str, torch.Tensor]:
    """``{modality: LongTensor (n_items,)}`` from the pseudo-label stage's files (contract PSEUDOLABELS)."""
    labels = {}
    for modality, path in paths.items():
        frame = contracts.read_table(path, contracts.PSEUDOLABELS).sort_values("item_idx")
        if not np.array_equal(frame["item_idx"].to_numpy(), np.arange(n_items)):
            raise ValueError(f"{path}: item_idx must list 0..{n_items - 1} once each (the dataset's items)")
        labels[modality] = torch.from_numpy(frame["label"].to_numpy(np.int64))
    return labels


def read_item_features(paths: Mapping[str, str], n_items: int) -> dict[str, torch.Tensor]:
    """``{modality: FloatTensor (n_items, d_m)}``, row i = item i, from the feature files (``read_features``).

    Each file must hold item_idx 0..n_items-1 exactly once; otherwise fails
    naming the file.
    """
    features = {}
    for modality, path in paths.items():
        item_idx, matrix = contracts.read_features(path)
        if not np.array_equal(item_idx, np.arange(n_items)):
            raise ValueError(
                f"{path}: the {modality} features must cover item_idx 0..{n_items - 1} once each (the dataset's "
                f"items); found {len(item_idx)} rows, {len(np.unique(item_idx))} distinct items"
            )
        features[modality] = torch.from_numpy(matrix)
    return features


def train_mcrl(
    seqs: Sequences,
    codes: np.ndarray,
    user_tables: np.ndarray | None,
    init_model_path: str | os.PathLike,
    labels: Mapping[str, torch.Tensor],
    features: Mapping[str, torch.Tensor],
    ablation: str,
    cfg: Mapping | None,
    model_path: str | os.PathLike,
    log_path: str | os.PathLike,
    components_path: str | os.PathLike,
    checkpoint_path: str | os.PathLike,
    seed: int | None,
    device: str = "auto",
    progress: bool = True,
    prefix_tables: np.ndarray | None = None,
) -> pd.DataFrame:
    """Fine-tune the stage-1 generator in ``init_model_path`` with the losses of ``ablation``.

    ``codes (n_items, D)`` or ``(P, n_items, D)`` and ``user_tables (U,)``
    must be the ones stage 1 trained on (checked against the model file);
    ``prefix_tables (S,)``, when given, the table of each training prefix
    as stage 1 used it (PMAT: chosen from the items before the target);
    ``labels`` maps each modality of the dataset to the items' pseudo-labels
    (its keys are the modalities the views are built for), ``features`` the
    same modalities to the items' raw content features ``(n_items, d_m)``
    (:func:`read_item_features`); ``cfg`` see
    :data:`DEFAULTS`. The generator's own hyperparameters (batch size, weight
    decay, schedule, clipping, beam) come from the stage-1 model file.

    Writes the model, the per-epoch train log (contract TRAIN_LOG) and the
    per-step loss components (:data:`COMPONENTS`); returns the components.
    """
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown MCRL ablation {ablation!r}; expected one of {list(ABLATIONS)}")
    cfg = resolve_cfg(cfg)
    if set(features) != set(labels):
        raise ValueError(
            f"features has modalities {list(features)}, labels {list(labels)}: pass both for the dataset's modalities"
        )
    saved = recipes.load_model(init_model_path, "tiger")
    gen_cfg = {**recipes.TIGER_DEFAULTS, **saved["cfg"], "progress": progress}
    codes = recipes.check_codes(codes, seqs.n_items)
    user_tables = recipes.check_user_tables(user_tables, seqs.n_users, len(codes))
    saved_codes = saved["codes"].numpy()
    saved_codes = saved_codes[None] if saved_codes.ndim == 2 else saved_codes
    if not np.array_equal(codes, saved_codes) or not np.array_equal(user_tables, saved["user_tables"].numpy()):
        raise ValueError(
            f"{init_model_path}: the stage-1 generator was trained on other ID tables or user tables than the "
            "ones given; retrain it or pass its own"
        )

    dev = recipes.start(model_path, seed, gen_cfg, device)
    generator = build_tiger(codes, gen_cfg)
    state = dict(saved["state_dict"])
    if state["codes"].ndim == 2:
        state["codes"] = state["codes"][None]
    generator.load_state_dict(state)
    joint_cfg = {key: cfg[key] for key in JOINT_KEYS} | {"terms": list(ABLATIONS[ablation])}
    model = JointModel(generator, list(labels), joint_cfg, features).to(dev)
    labels = {m: lab.to(dev) for m, lab in labels.items()}
    log.info(
        "mcrl_%s: losses %s, schedule %s, %d epochs from %s; %d ID tables, users per table %s",
        ablation,
        sorted(model.configured) or "none",
        cfg["schedule"],
        cfg["epochs"],
        init_model_path,
        len(codes),
        np.bincount(user_tables, minlength=len(codes)).tolist(),
    )

    tries = recipes.build_tries(codes, generator.level_sizes, dev)
    _, hist, targets = eval_samples(seqs, "valid", gen_cfg["history_cap"])
    exclude = history_items(seqs, "valid") if gen_cfg["exclude_history"] else None
    users, inputs, train_targets = training_samples(seqs, gen_cfg["history_cap"])
    prefix_tables = recipes.check_prefix_tables(prefix_tables, seqs, len(codes))
    rows = user_tables[users] if prefix_tables is None else prefix_tables  # (S,) the ID table of each row
    data = (torch.from_numpy(inputs), torch.from_numpy(train_targets), torch.from_numpy(rows))
    loop_cfg = LoopConfig.from_cfg(
        {
            **gen_cfg,
            "lr": cfg["lr"],
            "warmup_steps": cfg["warmup_steps"],
            "max_epochs": cfg["epochs"],
            "patience": cfg["epochs"],  # every stage-2 epoch runs; the best one is kept
        }
    )
    run_key = recipes.training_key("mcrl", {"generator": gen_cfg, "mcrl": cfg, "ablation": ablation}, seed, seqs, codes)
    run_key.update(
        user_tables=hashlib.sha256(user_tables.tobytes()).hexdigest(),
        row_tables=hashlib.sha256(rows.tobytes()).hexdigest(),
        init=hashlib.sha256(Path(init_model_path).read_bytes()).hexdigest(),
        labels={m: hashlib.sha256(lab.cpu().numpy().tobytes()).hexdigest() for m, lab in labels.items()},
        features={m: hashlib.sha256(x.cpu().numpy().tobytes()).hexdigest() for m, x in features.items()},
        mcrl_code=_code_hash(),
    )
    run_hash = config_hash(run_key)
    steps_per_epoch = loop_cfg.steps_per_epoch(len(train_targets))
    step_loss = _StepLoss(
        schedule=cfg["schedule"],
        steps_per_epoch=steps_per_epoch,
        labels=labels,
        grouped=len(codes) > 1,
        checkpoint_path=checkpoint_path,
        run_hash=run_hash,
    )

    def validate(m: JointModel) -> float:
        step_loss.end_epoch()
        result = beam_search_tables(
            m.generator, tries, hist, user_tables, gen_cfg["beam_size"], exclude, gen_cfg["eval_batch_size"]
        )
        return mean_metrics(ranks_in_list(result.items, targets), [10])["NDCG@10"]

    name = f"mcrl_{ablation}"
    log.info("%s: %d training samples, %d steps per epoch", name, len(train_targets), steps_per_epoch)
    result = train_loop(model, step_loss, data, validate, loop_cfg, checkpoint_path, run_hash, seed, name)

    components = step_loss.frame()
    model.load_state_dict(result.best_state)
    gen_state = {k.removeprefix("generator."): v for k, v in result.best_state.items() if k.startswith("generator.")}
    heads = {k: v for k, v in result.best_state.items() if not k.startswith(("generator.", "id_repr.tok_emb."))}
    payload = {
        "kind": "tiger",  # evaluated as a TIGER model under the same tables
        "cfg": {k: v for k, v in gen_cfg.items() if k != "progress"},
        "state_dict": gen_state,
        "codes": torch.from_numpy(codes),
        "user_tables": torch.from_numpy(user_tables),
        "n_items": seqs.n_items,
        "best_epoch": result.best_epoch,
        "best_valid_ndcg10": result.best_metric,
        "mcrl": {
            "ablation": ablation,
            "cfg": cfg,
            "joint_cfg": model.cfg,
            "modalities": list(labels),
            "heads": heads,
        },
    }
    contracts.write_table(result.log, log_path, contracts.TRAIN_LOG, metadata=result.budget)
    contracts.write_table(components, components_path, COMPONENTS)
    atomic_save(payload, model_path)
    _log_summary(name, components, result)
    return components


class _StepLoss:
    """The loss the training loop calls once per optimizer step, with the step's MCRL losses.

    The loop does not tell a loss which step it is, so this object counts
    steps itself; epoch = (step - 1) // steps_per_epoch + 1 since every epoch
    has the same number of steps. On a resumed run it starts from the step of
    the loop's checkpoint (when that checkpoint belongs to this run) and
    reloads the component rows of the finished epochs, which
    :meth:`end_epoch` keeps beside the checkpoint.
    """

    def __init__(self, schedule, steps_per_epoch, labels, grouped, checkpoint_path, run_hash):
        self.schedule = schedule
        self.steps_per_epoch = steps_per_epoch
        self.labels = labels
        self.grouped = grouped
        self.rows_path = Path(f"{checkpoint_path}.components.parquet")
        self.step, self.rows = _resume_rows(Path(checkpoint_path), self.rows_path, run_hash)
        self.last_started = None  # perf_counter of the previous step of this epoch

    def __call__(self, model: JointModel, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        now = time.perf_counter()
        if self.last_started is not None:
            self.rows[-1]["seconds"] = now - self.last_started
        self.last_started = now
        history, target, table = batch
        step = self.step + 1
        epoch = (step - 1) // self.steps_per_epoch + 1
        # Stage 1 is the generator's own training, already done: stage 2 starts at epoch 1.
        terms = active_terms(self.schedule, epoch, step, stage1_epochs=0)
        if len(target) < 2:
            terms = set()  # a one-row last batch has no in-batch negatives: L_ID alone
        groups = table if self.grouped else None
        total, components = model.loss(history, target, table, self.labels, groups, terms)
        self.rows.append(component_row(epoch, step, total, components) | {"seconds": math.nan})
        self.step = step
        return total

    def end_epoch(self) -> None:
        """Close the epoch's timing and keep its rows beside the checkpoint (atomically)."""
        self.last_started = None
        contracts.write_table(self.frame(), self.rows_path, COMPONENTS)

    def frame(self) -> pd.DataFrame:
        columns = [f.name for f in COMPONENTS]
        frame = pd.DataFrame(self.rows, columns=columns)
        return frame.astype({"epoch": "int32", "step": "int64"} | {c: "float64" for c in columns[2:]})


def _resume_rows(checkpoint_path: Path, rows_path: Path, run_hash: str) -> tuple[int, list[dict]]:
    """The step the loop will resume after and the component rows up to it; ``(0, [])`` for a fresh run."""
    if not checkpoint_path.exists():
        return 0, []
    ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    if ckpt.get("config_hash") != run_hash:
        return 0, []  # the loop starts afresh too
    step = int(ckpt["state"]["step"])
    rows = contracts.read_table(rows_path, COMPONENTS) if rows_path.exists() else pd.DataFrame(columns=["step"])
    # A kill between writing the rows and the checkpoint leaves one epoch too many.
    rows = rows[rows["step"] <= step]
    if len(rows) != step:
        log.warning("%s holds %d rows for the %d finished steps; earlier rows are lost", rows_path, len(rows), step)
    return step, rows.to_dict("records")


def _code_hash() -> str:
    """SHA-256 of the MCRL modules, so a checkpoint never resumes under edited losses."""
    digest = hashlib.sha256()
    for module in (losses, joint):
        digest.update(Path(module.__file__).read_bytes())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()


def _log_summary(name: str, components: pd.DataFrame, result) -> None:
    last = components[components["epoch"] == components["epoch"].max()]
    means = {c: last[c].mean() for c in ("total", *COMPONENT_NAMES) if last[c].notna().any()}
    log.info(
        "%s: best epoch %d, valid NDCG@10 %.4f; last epoch mean losses %s; median step %.3f s",
        name,
        result.best_epoch,
        result.best_metric,
        ", ".join(f"{k} {v:.4f}" for k, v in means.items()),
        float(components["seconds"].median()),
    )
