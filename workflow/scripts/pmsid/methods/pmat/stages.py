"""PMAT's workflow stages: read the rule's files, call the PMAT modules, write the outputs.

Three rules per (dataset, seed), each a function here (the scripts in
``workflow/scripts/pmat_*.py`` only unpack ``snakemake.*``):

1. :func:`train_attention` (rule ``pmat_attention``): the user-modality
   preference network; each user's weights from the training split, and, on
   data with planted preferences (the synthetic dataset), how well they are
   recovered.
2. :func:`tokenize` (rule ``pmat_ids``): preference prototypes and their ID
   tables under shared residual codebooks; ``variant`` "global" is P = 1
   (global fusion, the ablation), "personalized" is P = ``pmat.prototypes``.
3. :func:`replay` (rule ``pmat_replay``): drift-triggered updates over the
   held-out interactions in time order, the table each user decodes under at
   validation and test, update statistics, theorem 2's bound.

The generator then trains and ranks under these tables as the registered
methods ``pmat_global``, ``pmat_static`` and ``pmat_full``
(``pmsid.methods.registry``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata, spearmanr

from pmsid.data import contracts
from pmsid.data.loaders import load_sequences, read_assignment
from pmsid.data.sequences import training_positions, training_samples
from pmsid.defaults import section_defaults
from pmsid.methods.pmat import attention as att
from pmsid.methods.pmat import drift, id_quality, prototypes
from pmsid.runtime import write_json

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
VARIANTS = ("global", "personalized", "oracle")  # pmat_ids' {variant}


def _load_features(feature_paths: list[str], n_items: int) -> list[np.ndarray]:
    features = []
    for path in feature_paths:
        item_idx, matrix = contracts.read_features(path)
        if not np.array_equal(item_idx, np.arange(n_items)):
            raise ValueError(
                f"{path}: features must cover item_idx 0..{n_items - 1} exactly; found {len(item_idx)} rows"
            )
        features.append(matrix)
    return features


def _load_bundle(path: str) -> att.AttentionBundle:
    return _load_attention(path)[0]


def _load_attention(path: str) -> tuple[att.AttentionBundle, list[str]]:
    """The trained preference network and the modality order it was trained with."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "modalities" not in state:
        raise ValueError(f"{path}: no 'modalities' entry; retrain it with the pmat_attention rule")
    return att.AttentionBundle.from_state(state), list(state["modalities"])


def _finite_or_none(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


# --------------------------------------------------------------------------- 1. attention


def train_attention(
    inputs: dict,
    modalities: list[str],
    cfg: dict,
    seed: int,
    outputs: dict,
    truth_path: str | None = None,
    device: str = "auto",
) -> dict:
    """Train the preference network; write model, log, per-user weights, preference recovery.

    ``inputs``: ``features`` (one path per modality, in ``modalities``
    order), ``interactions``, ``catalogue``, ``users``. ``outputs``:
    ``model``, ``log``, ``weights``, ``preference``. ``truth_path``: a
    Parquet of planted preferences (``user_id``, ``preference`` image/text,
    ``alpha_image``), or None. Returns the preference figures.
    """
    if len(modalities) < 2:
        raise ValueError(f"PMAT needs >= 2 modalities; the dataset has {modalities}")
    seqs = load_sequences(inputs["interactions"], inputs["catalogue"])
    features = _load_features(inputs["features"], seqs.n_items)
    bundle, frame = att.train_modality_attention(features, seqs, cfg, seed, device)
    alphas = att.user_weights(bundle, features, seqs, "train")  # (U, M)

    users = contracts.read_table(inputs["users"], contracts.USERS)
    planted = pd.Series([None] * len(users), dtype=object)
    preference = {"available": False, "reason": "the dataset has no planted preferences"}
    if truth_path is not None:
        preference, planted = _preference_recovery(alphas, modalities, users, truth_path)

    weights = pd.DataFrame(
        {
            "user_idx": np.repeat(np.arange(len(alphas), dtype=np.int32), len(modalities)),
            "modality": np.tile(modalities, len(alphas)),
            "weight": alphas.reshape(-1),
            "planted_preference": np.repeat(planted.to_numpy(), len(modalities)),
        }
    )
    Path(outputs["model"]).parent.mkdir(parents=True, exist_ok=True)
    state = bundle.state()
    state["modalities"] = list(modalities)
    torch.save(state, outputs["model"])
    contracts.write_table(frame, outputs["log"], contracts.ATTENTION_LOG)
    contracts.write_table(weights, outputs["weights"], contracts.USER_WEIGHTS, metadata={"modalities": modalities})
    write_json({**preference, "seed": seed, "train_seconds": bundle.info["seconds"]}, outputs["preference"])
    means = dict(zip(modalities, alphas.mean(axis=0).round(4).tolist()))
    log.info("PMAT attention: mean weights %s, best epoch %d", means, bundle.best_epoch)
    return preference


def _preference_recovery(alphas, modalities, users, truth_path) -> tuple[dict, pd.Series]:
    """Rank correlation and accuracy of the learned image weight against the planted preference."""
    if "image" not in modalities:
        return {"available": False, "reason": "planted preferences are image-vs-text; no image modality"}, pd.Series(
            [None] * len(users), dtype=object
        )
    truth = pd.read_parquet(truth_path)
    missing = [c for c in ("user_id", "preference", "alpha_image") if c not in truth.columns]
    if missing:
        raise ValueError(f"{truth_path}: missing column(s) {missing}; expected user_id, preference, alpha_image")
    merged = users.merge(truth, on="user_id", how="left", validate="one_to_one").sort_values("user_idx")
    known = merged["alpha_image"].notna().to_numpy()
    if known.sum() < 3:
        raise ValueError(f"{truth_path}: only {known.sum()} of the dataset's users have a planted preference")
    learned = alphas[known, modalities.index("image")]
    planted_alpha = merged.loc[known, "alpha_image"].to_numpy()
    image_led = (merged.loc[known, "preference"] == "image").to_numpy()
    rho, p = spearmanr(learned, planted_alpha)
    # AUC of the learned image weight for image-led vs text-led users: the
    # chance that a random image-led user gets a higher weight than a random
    # text-led one (ties count one half); 0.5 = no separation, < 0.5 = reversed.
    n_image, n_text = int(image_led.sum()), int((~image_led).sum())
    auc = float("nan")
    if n_image and n_text:
        ranks = rankdata(learned)
        auc = float((ranks[image_led].sum() - n_image * (n_image + 1) / 2) / (n_image * n_text))
    figures = {
        "available": True,
        "reason": None,
        "modality": "image",
        "n_users": int(known.sum()),
        "spearman": float(rho),
        "spearman_p": float(p),
        # Image-led iff the learned image weight is above the median over users
        # (the planted split is about half-half), or above 1/2.
        "accuracy_median_threshold": float(((learned > np.median(learned)) == image_led).mean()),
        "accuracy_half_threshold": float(((learned > 0.5) == image_led).mean()),
        "auc": _finite_or_none(auc),
        "image_weight_min": float(learned.min()),
        "image_weight_max": float(learned.max()),
    }
    log.info(
        "PMAT attention: planted preference recovered with Spearman %.3f (p %.1e), AUC %.3f, "
        "accuracy %.3f (median threshold)",
        rho,
        p,
        auc,
        figures["accuracy_median_threshold"],
    )
    planted = merged["preference"].astype(object).where(merged["preference"].notna(), None).reset_index(drop=True)
    return figures, planted


# --------------------------------------------------------------------------- 2. ID tables


def tokenize(
    variant: str,
    inputs: dict,
    modalities: list[str],
    n_prototypes: int,
    tokenizer: dict,
    outputs: dict,
    max_fit_rows: int | None = None,
    fusion: str = section_defaults("pmat")["fusion"],
) -> np.ndarray:
    """Prototypes, assignment and personalized ID tables; writes ids, prototypes, assignment, quality.

    ``variant`` "global": one prototype, the mean of the users' weights
    (global fusion); "personalized": ``n_prototypes`` (config
    ``pmat.prototypes``) from the learned weights; "oracle": the same from
    the users' *planted* weights (inputs ``truth`` and ``users``,
    :func:`planted_weights`), every prefix in its user's planted table: the
    mechanism with perfect preferences, a reference row, not a method. ``fusion`` (config ``pmat.fusion``): "sum" fuses
    the preference network's projected features, "concat" the raw features
    as the TIGER baseline does (``prototypes`` module docstring). ``inputs``: ``attention`` (the trained network),
    ``features``, ``interactions``, ``catalogue``. ``outputs``: ``ids``,
    ``prototypes``, ``assignment`` (each user's table from its training
    items), ``prefix_tables`` (each training prefix's table from the items
    before its target, :func:`prefix_tables`), ``quality``. Returns ids
    (P, N, L + 1).
    """
    if variant not in VARIANTS:
        raise ValueError(f"PMAT tokenize: variant must be one of {list(VARIANTS)}, got {variant!r}")
    seqs = load_sequences(inputs["interactions"], inputs["catalogue"])
    features = _load_features(inputs["features"], seqs.n_items)
    bundle = _load_bundle(inputs["attention"])
    f = att.project_features(bundle, features)
    if variant == "oracle":
        alphas = planted_weights(inputs, modalities, seqs.n_users)
    else:
        alphas = att.user_weights(bundle, features, seqs, "train")
    P = 1 if variant == "global" else int(n_prototypes)
    if seqs.n_users < P:
        raise ValueError(f"config: pmat.prototypes = {P} exceeds the dataset's {seqs.n_users} users; lower it")
    if variant == "oracle":
        P = min(P, len(np.unique(alphas, axis=0)))  # pure planted preferences have few distinct weights
    weights, assignment = prototypes.cluster_prototypes(alphas, P, seed=tokenizer["seed"])
    tok = prototypes.PersonalizedTokenizer(
        tokenizer["levels"],
        tokenizer["codes"],
        seed=tokenizer["seed"],
        n_init=tokenizer["n_init"],
        max_fit_rows=max_fit_rows,
        fusion=fusion,
    )
    fused_inputs = f if fusion == "sum" else features
    ids = tok.fit_encode(fused_inputs, weights)

    contracts.write_personalized_ids(
        outputs["ids"], ids, metadata={"variant": variant, "levels": tokenizer["levels"], "codes": tokenizer["codes"]}
    )
    contracts.write_table(
        pd.DataFrame(
            {
                "prototype": np.repeat(np.arange(P, dtype=np.int32), len(modalities)),
                "modality": np.tile(modalities, P),
                "weight": weights.reshape(-1),
            }
        ),
        outputs["prototypes"],
        contracts.PROTOTYPES,
    )
    _write_assignment({split: assignment for split in SPLITS}, outputs["assignment"])
    if variant == "oracle":  # the planted preference does not depend on the history
        users, positions = training_positions(seqs)
        prefix = pd.DataFrame({"user_idx": users.astype(np.int32), "position": positions.astype(np.int32),
                               "prototype": assignment[users].astype(np.int32)})  # fmt: skip
    else:
        prefix = prefix_tables(bundle, features, seqs, weights)
    contracts.write_table(prefix, outputs["prefix_tables"], contracts.PREFIX_TABLES)
    quality = _quality(ids, weights, fused_inputs, tokenizer["codes"], fusion, alphas, assignment)
    contracts.write_table(quality, outputs["quality"], contracts.ID_QUALITY)
    whole = quality[quality["level"] == -1].set_index("metric")["value"]
    log.info(
        "PMAT %s IDs (%s fusion): P = %d, prototype sizes %s, uniqueness before dedup %.3f (mean over tables)",
        variant,
        fusion,
        P,
        np.bincount(assignment, minlength=P).tolist(),
        whole["uniqueness_before_dedup"],
    )
    return ids


def planted_weights(inputs: dict, modalities: list[str], n_users: int) -> np.ndarray:
    """Each user's planted modality weights ``(U, M)``: ``alpha_image`` on
    image, ``1 - alpha_image`` on text, 0 on any other modality (inputs
    ``users``, contract USERS, and ``truth``, the planted-preference table
    with ``user_id`` and ``alpha_image``)."""
    missing = [name for name in ("users", "truth") if name not in inputs]
    if missing:
        raise ValueError(f"PMAT oracle: inputs {missing} missing; the oracle needs a dataset with planted preferences")
    if "image" not in modalities or "text" not in modalities:
        raise ValueError(
            f"PMAT oracle: planted preferences are image vs text; the dataset's modalities are {modalities}"
        )
    users = contracts.read_table(inputs["users"], contracts.USERS)
    truth = pd.read_parquet(inputs["truth"])
    if not {"user_id", "alpha_image"} <= set(truth.columns):
        raise ValueError(f"{inputs['truth']}: expected columns user_id and alpha_image, got {list(truth.columns)}")
    merged = users.merge(truth, on="user_id", how="left", validate="one_to_one").sort_values("user_idx")
    if len(merged) != n_users or merged["alpha_image"].isna().any():
        raise ValueError(f"{inputs['truth']}: {int(merged['alpha_image'].isna().sum())} users have no planted weight")
    alpha = merged["alpha_image"].to_numpy(np.float64)
    weights = np.zeros((n_users, len(modalities)))
    weights[:, modalities.index("image")] = alpha
    weights[:, modalities.index("text")] = 1.0 - alpha
    return weights


def prefix_tables(
    bundle: att.AttentionBundle, features: list[np.ndarray], seqs, prototype_weights: np.ndarray
) -> pd.DataFrame:
    """The ID table of every training prefix, chosen from the items before its target only.

    A prefix of user u predicting item ``s_u[t]`` is tokenized in the table
    of the prototype nearest to the weights the preference network gives its
    history ``s_u[:t]`` (its last ``history_cap`` items): the rule a user's
    table follows at evaluation, where the weights come from the items
    before the ranked target. Choosing it from the whole training sequence
    instead would let the target, and later items, pick the table it is
    predicted in. Returns a PREFIX_TABLES frame, one row per row of
    ``training_samples``.
    """
    users, positions = training_positions(seqs)
    _, hist, _ = training_samples(seqs, bundle.cfg["history_cap"])
    if len(prototype_weights) == 1:
        tables = np.zeros(len(users), np.int64)
    else:
        tables = prototypes.assign_prototypes(att.histories_weights(bundle, features, hist), prototype_weights)
    log.info(
        "PMAT prefix tables: %d training prefixes, per table %s",
        len(tables),
        np.bincount(tables, minlength=len(prototype_weights)).tolist(),
    )
    return pd.DataFrame(
        {
            "user_idx": users.astype(np.int32),
            "position": positions.astype(np.int32),
            "prototype": tables.astype(np.int32),
        }
    )


def _write_assignment(per_split: dict, path: str) -> None:
    frames = [
        pd.DataFrame({"user_idx": np.arange(len(a), dtype=np.int32), "split": split, "prototype": a.astype(np.int32)})
        for split, a in per_split.items()
    ]
    contracts.write_table(pd.concat(frames, ignore_index=True), path, contracts.ASSIGNMENT)


# Users Theorem 1's user-level test draws at most (its cost grows as users^2).
MAX_THEOREM1_USERS = 1000


def _quality(
    ids: np.ndarray,
    weights: np.ndarray,
    f: list[np.ndarray],
    codebook_size: int,
    fusion: str = "sum",
    alphas: np.ndarray | None = None,
    assignment: np.ndarray | None = None,
) -> pd.DataFrame:
    """ID quality in ID_QUALITY form: per-table figures averaged over the P tables, plus Theorem 1's.

    Semantic consistency is measured on the rows each table was quantized
    from (``f`` fused by ``fusion`` under the table's weights). Theorem 1 is
    measured over prototype pairs (P >= 3) and, given the users' weights
    ``alphas`` and tables ``assignment``, over user pairs (P >= 2; at most
    :data:`MAX_THEOREM1_USERS` users, a fixed sample beyond)."""
    per_table = id_quality.table_id_quality(ids, codebook_size)
    consistency = pd.concat(
        [
            id_quality.semantic_consistency_frame(ids[p], prototypes.fuse(f, weights[p], fusion)).assign(table=p)
            for p in range(len(ids))
        ],
        ignore_index=True,
    )
    frames = [per_table, consistency]
    mean = pd.concat(frames, ignore_index=True).groupby(["metric", "level"], as_index=False)["value"].mean()
    extra = [pd.DataFrame({"metric": ["n_prototypes"], "level": [-1], "value": [float(len(ids))]})]
    if len(ids) >= 3:
        extra.append(id_quality.personalization_discrimination(ids, weights)["quality"])
    if len(ids) >= 2 and alphas is not None:
        users = np.arange(len(alphas))
        if len(users) > MAX_THEOREM1_USERS:
            users = np.sort(np.random.default_rng(0).choice(users, MAX_THEOREM1_USERS, replace=False))
        extra.append(id_quality.user_personalization(ids, assignment[users], alphas[users])["quality"])
    out = pd.concat([mean, *extra], ignore_index=True)
    return out.astype({"level": np.int32, "value": np.float64})[["metric", "level", "value"]]


# --------------------------------------------------------------------------- 3. replay


def replay(inputs: dict, cfg: dict, history_cap: int, outputs: dict, seed: int = 0) -> dict:
    """Replay the valid and test interactions with drift-triggered updates.

    ``inputs``: ``attention``, ``features``, ``interactions``, ``catalogue``,
    and the personalized tokenizer's ``ids``, ``prototypes``, ``assignment``.
    ``cfg``: ``window``, ``theta``, ``lambda_max``, ``sharpness``,
    ``cons_temperature``. Writes ``events`` (Parquet, one row per event),
    ``summary`` (JSON) and ``assignment`` (the table in force at each split).
    """
    seqs = load_sequences(inputs["interactions"], inputs["catalogue"])
    features = _load_features(inputs["features"], seqs.n_items)
    bundle, modalities = _load_attention(inputs["attention"])
    f = att.project_features(bundle, features)
    tables = contracts.read_personalized_ids(inputs["ids"])
    proto_frame = contracts.read_table(inputs["prototypes"], contracts.PROTOTYPES)
    proto_weights = proto_frame.pivot(index="prototype", columns="modality", values="weight")
    missing = [m for m in modalities if m not in proto_weights.columns]
    if missing:
        raise ValueError(
            f"{inputs['prototypes']}: no weights for modality(ies) {missing}; the preference network "
            f"{inputs['attention']} was trained on {modalities}. Rerun pmat_ids."
        )
    proto_weights = proto_weights[modalities].to_numpy()
    start = read_assignment(inputs["assignment"], seqs.n_users)["train"]
    alphas = att.user_weights(bundle, features, seqs, "train")
    gate = drift.DriftGate(cfg["theta"], cfg["lambda_max"], cfg["sharpness"])

    def weights_fn(window_items: np.ndarray) -> np.ndarray:
        return att.histories_weights(bundle, features, window_items[None])[0]

    result = drift.replay_updates(
        seqs,
        split_start=-2,
        tables=tables,
        prototype_weights=proto_weights,
        assignment=start,
        alphas=alphas,
        weights_fn=weights_fn,
        features=f,
        window=cfg["window"],
        gate=gate,
        history_cap=history_cap,
        seed=seed,
    )
    events = result.events
    # The table each user decodes under when a split's target is ranked: the
    # state after the event at that target's position (it has seen only
    # earlier items).
    valid_rows = events.groupby("user").nth(0).sort_values("user")
    test_rows = events.groupby("user").nth(1).sort_values("user")
    per_split = {
        "train": start,
        "valid": valid_rows["new_prototype"].to_numpy(np.int64),
        "test": test_rows["new_prototype"].to_numpy(np.int64),
    }
    _write_assignment(per_split, outputs["assignment"])

    summary = dict(result.summary)
    summary["mean_consistency_loss"] = _consistency(seqs, events, result.event_alphas, alphas, f, cfg)
    summary["n_users_valid_table_changed"] = int((per_split["valid"] != start).sum())
    summary["n_users_test_table_changed"] = int((per_split["test"] != start).sum())
    Path(outputs["events"]).parent.mkdir(parents=True, exist_ok=True)
    events.to_parquet(outputs["events"], index=False)
    write_json(summary, outputs["summary"])
    return summary


def _consistency(seqs, events, event_alphas, start_alphas, f, cfg) -> float | None:
    """Mean L_cons (theorem 3) over the fired updates of the replay.

    Per fired event: h_t and h_{t+1} are the mean fused feature of the
    user's history under the weights before and after the update, the
    interest is the mean fused feature of the last W items under the new
    weights, lam the event's gate value; the other fired events' interests
    are the in-batch negatives. None when fewer than two updates fired.
    """
    fired = np.flatnonzero(events["fired"].to_numpy())
    if len(fired) < 2:
        return None
    before = np.empty_like(event_alphas)
    users = events["user"].to_numpy()
    for e in range(len(events)):
        first = e == 0 or users[e - 1] != users[e]
        before[e] = start_alphas[users[e]] if first else event_alphas[e - 1]
    h_t, h_next, interest = [], [], []
    for e in fired:
        history = np.asarray(seqs.items[users[e]][: events["position"].iat[e]], dtype=np.int64)
        h_t.append(drift.fused_features(f, before[e], history).mean(axis=0))
        h_next.append(drift.fused_features(f, event_alphas[e], history).mean(axis=0))
        interest.append(drift.short_term_interest(f, event_alphas[e], history, cfg["window"]))
    lam = torch.as_tensor(events["lam"].to_numpy()[fired])
    loss = drift.consistency_loss(
        torch.as_tensor(np.stack(h_next)),
        torch.as_tensor(np.stack(h_t)),
        torch.as_tensor(np.stack(interest)),
        lam,
        temperature=cfg["cons_temperature"],
    )
    return _finite_or_none(float(loss))
