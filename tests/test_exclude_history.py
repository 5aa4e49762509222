"""``protocol.exclude_history`` end to end, for every registered method.

Each method trains (one epoch, tiny dimensions) and ranks through the generic
stages the workflow runs (:func:`pmsid.methods.run.train_method` and
:func:`evaluate_method`), on inputs the manifest names for it
(:func:`pmsid.manifest.method_inputs`). Excluded, a user's ranking of a split
must hold no item of the user's history before that split's target (the
valid target is history at test time) and every other item, since the
catalogue is smaller than the lists; not excluded, it holds every item, so
the check can fail. The protocol's ``history_cap`` is shorter than many
histories: the whole history is excluded, not just what the model reads.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_methods import default_config

from pmsid import manifest
from pmsid.data import contracts
from pmsid.data.sequences import Sequences, training_positions
from pmsid.methods import registry
from pmsid.methods.run import evaluate_method, train_method

torch.set_num_threads(1)

N_ITEMS, N_USERS = 12, 16
HISTORY_CAP = 4  # items a model reads; many histories are longer
MODALITIES = ["text", "image"]
EVALUATION = {"ks": [1, 5, 10], "beam_size": N_ITEMS}  # a beam as wide as the catalogue returns every valid item
TINY = {"d_model": 16, "n_heads": 2, "d_ff": 32, "max_epochs": 1, "batch_size": 64, "warmup_steps": 2}
TINY.update({"progress": False, "eval_batch_size": 64})
HYPER = {
    "tiger": {**TINY, "n_encoder_layers": 1, "n_decoder_layers": 1},
    "sasrec": {**TINY, "n_layers": 1},
    "mcrl": {"epochs": 1, "warmup_steps": 2, "d_out": 8},
    "hdnag": {**TINY, "n_encoder_layers": 1, "n_decoder_layers": 1},
}


def sequences() -> list[list[int]]:
    """Users with repeats and histories longer than the protocol's cap; some valid targets are new items."""
    rng = np.random.default_rng(0)
    return [rng.choice(N_ITEMS, size=rng.integers(5, 9)).tolist() for _ in range(N_USERS)]


def grid_codes() -> np.ndarray:
    """3-token IDs (2 levels + dedup) for the 12 items."""
    return np.array([[i // 4, i % 4, 0] for i in range(N_ITEMS)])


def write_inputs(root, seqs: list[list[int]]) -> dict:
    """Every file a method's train or rank may read; returns the path patterns that name them."""
    patterns = {name: str(root / f"{name}.parquet") for name in manifest.PATTERNS}
    for name in ("pmat_ids", "pmat_assignment", "pmat_prefix_tables"):
        patterns[name] = str(root / "pmat_{variant}" / f"{name.removeprefix('pmat_')}.parquet")
    for name in ("features", "pseudolabels"):
        patterns[name] = str(root / f"{name}_{{modality}}.parquet")
    for name, file in (("model", "model.pt"), ("train_log", "train_log.parquet"), ("extras", "extras")):
        patterns[name] = str(root / "train" / "{method}" / file)

    items = pd.DataFrame({"item_idx": np.arange(N_ITEMS, dtype=np.int32), "item_id": [f"i{i}" for i in range(N_ITEMS)]})
    for name in {f.name for f in contracts.ITEMS} - set(items.columns):
        items[name] = "x"
    rows = [
        {"user_idx": u, "item_idx": item, "timestamp": pos, "position": pos,
         "split": "test" if pos == len(seq) - 1 else "valid" if pos == len(seq) - 2 else "train"}
        for u, seq in enumerate(seqs) for pos, item in enumerate(seq)
    ]  # fmt: skip
    inter = pd.DataFrame(rows).astype(
        {"user_idx": "int32", "item_idx": "int32", "timestamp": "int64", "position": "int32"}
    )
    contracts.write_table(items, patterns["catalogue"], contracts.ITEMS)
    contracts.write_table(inter, patterns["interactions"], contracts.INTERACTIONS)

    codes = grid_codes()
    contracts.write_semantic_ids(patterns["rqkmeans_ids"], np.arange(N_ITEMS), codes)
    # HDNAG's hierarchical IDs: 3 coarse clusters of 2 fine clusters of 2 items each.
    items_ = np.arange(N_ITEMS)
    hierarchical = np.stack([items_ // 4, items_ // 2, items_ % 2], axis=1)
    meta = {"tokenizer": "hkmeans", "parent": [0, 0, 1, 1, 2, 2]}
    contracts.write_semantic_ids(patterns["hkmeans_ids"], items_, hierarchical, meta)
    # PMAT's tables: one global table (P = 1); two tables for the learned and for the planted
    # weights, users split between them; every training prefix in a table of its own.
    two = np.stack([codes, codes[np.random.default_rng(1).permutation(N_ITEMS)]])
    users = np.arange(N_USERS)
    prefix_users, positions = training_positions(Sequences([np.asarray(s) for s in seqs], N_ITEMS))
    for variant, ids, table in [("global", codes[None], 0 * users), ("personalized", two, users % 2),
                                ("oracle", two, 1 - users % 2)]:  # fmt: skip
        where = {"variant": variant, "dataset": "d", "seed": 0}
        Path(patterns["pmat_ids"].format(**where)).parent.mkdir()
        contracts.write_personalized_ids(patterns["pmat_ids"].format(**where), ids)
        write_assignment(patterns["pmat_assignment"].format(**where), {"train": table, "valid": table, "test": table})
        prefix = pd.DataFrame({"user_idx": prefix_users, "position": positions})
        prefix["prototype"] = (prefix_users + positions) % len(ids)
        contracts.write_table(
            prefix.astype("int32"), patterns["pmat_prefix_tables"].format(**where), contracts.PREFIX_TABLES
        )
    # The replay's updates move some users to the other table between the valid and the test target.
    replayed = {"train": users % 2, "valid": users % 2, "test": users // 2 % 2}
    write_assignment(patterns["pmat_replay_assignment"], replayed)

    # MCRL's pseudo-labels and content features of each modality.
    for m, modality in enumerate(MODALITIES):
        labels = pd.DataFrame({"item_idx": np.arange(N_ITEMS), "label": np.arange(N_ITEMS) % (3 + m)}).astype("int32")
        contracts.write_table(labels, patterns["pseudolabels"].format(modality=modality), contracts.PSEUDOLABELS)
        matrix = np.random.default_rng(m).normal(size=(N_ITEMS, 4 + m))
        contracts.write_features(patterns["features"].format(modality=modality), np.arange(N_ITEMS), matrix, "test")
    return patterns


def write_assignment(path: str, tables: dict[str, np.ndarray]) -> None:
    """An assignment file: the ID table of every user at each split."""
    rows = [
        {"user_idx": u, "split": split, "prototype": int(t)} for split, ts in tables.items() for u, t in enumerate(ts)
    ]
    frame = pd.DataFrame(rows).astype({"user_idx": "int32", "prototype": "int32"})
    contracts.write_table(frame, path, contracts.ASSIGNMENT)


def protocol(config: dict, exclude_history: bool) -> dict:
    """The config's protocol section with the test's history cap and exclusion switch."""
    return {**config["protocol"], "history_cap": HISTORY_CAP, "exclude_history": exclude_history}


def workflow_config() -> dict:
    """The default config with the test dataset ``d`` in PMAT's, MCRL's and HDNAG's runs (MCRL then builds on PMAT)."""
    config = copy.deepcopy(default_config())
    config["pmat"]["datasets"] = config["mcrl"]["datasets"] = config["hdnag"]["datasets"] = ["d"]
    config["dataset_specs"] = {"d": {"modalities": MODALITIES}}
    return config


def train_params(config: dict, spec: registry.MethodSpec, root) -> dict:
    """The generic train rule's params, with tiny hyperparameters."""
    cfg = {k: v for k, v in config[spec.hyper].items() if k not in spec.hyper_skip} if spec.hyper else {}
    return {
        "cfg": {**cfg, **HYPER.get(spec.hyper, {})},
        "protocol": protocol(config, exclude_history=True),
        "evaluation": EVALUATION,
        "modalities": MODALITIES,
        "checkpoint": str(root / "checkpoints" / f"{spec.name}.pt"),
        "device": "cpu",
        "deterministic": False,
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Every method that trains, trained once in registry order (MCRL after the generator it starts from)."""
    root = tmp_path_factory.mktemp("exclude_history")
    seqs = sequences()
    patterns = write_inputs(root, seqs)
    config = workflow_config()
    for spec in registry.METHODS.values():
        if spec.trains:
            inputs = manifest.method_inputs(config, spec.name, "d", 0, "train", patterns)
            outputs = {kind: patterns[name].format(method=spec.name) for kind, name in
                       [("model", "model"), ("log", "train_log"), ("extras", "extras")]}  # fmt: skip
            train_method(spec.name, "d", 0, inputs, outputs, train_params(config, spec, root))
    return root, seqs, patterns, config


def rank_lists(trained, method: str, exclude_history: bool) -> pd.DataFrame:
    """ranking.parquet of ``method``, evaluated by the generic evaluate stage."""
    root, _, patterns, config = trained
    inputs = manifest.method_inputs(config, method, "d", 0, "evaluate", patterns)
    tag = "excluded" if exclude_history else "kept"
    outputs = {
        kind: str(root / "evaluate" / method / tag / f"{kind}.parquet") for kind in ("ranking", "per_user", "metrics")
    }
    params = {"evaluation": EVALUATION, "protocol": protocol(config, exclude_history), "device": "cpu"}
    evaluate_method(method, "d", 0, inputs, outputs, params)
    return contracts.read_table(outputs["ranking"], contracts.RANKING)


def history(seq: list[int], split: str) -> set[int]:
    """Every item before the split's target: all but the last two (valid) or the last one (test)."""
    return set(seq[:-2] if split == "valid" else seq[:-1])


def test_the_data_exercises_both_splits_and_the_cap():
    seqs = sequences()
    assert any(seq[-2] not in history(seq, "valid") for seq in seqs)  # test history adds the valid target
    # An item only before the last HISTORY_CAP ones: excluded although no model reads it.
    assert any(set(seq[:-2][:-HISTORY_CAP]) - set(seq[:-2][-HISTORY_CAP:]) for seq in seqs)
    assert all(len(history(seq, "test")) < N_ITEMS for seq in seqs)  # nobody's list is empty


@pytest.mark.parametrize("method", list(registry.METHODS))
def test_an_excluded_history_is_in_no_ranking(trained, method):
    _, seqs, _, _ = trained
    ranking = rank_lists(trained, method, exclude_history=True)
    assert len(ranking) == 2 * N_USERS
    for row in ranking.itertuples():
        items = [int(i) for i in row.items]
        ranked = [i for i in items if i >= 0]
        assert items == ranked + [-1] * (len(items) - len(ranked)), (method, row.split, row.user_idx)
        seen = history(seqs[row.user_idx], row.split)
        leaked = sorted(seen & set(ranked))
        assert not leaked, f"{method}, {row.split}, user {row.user_idx}: history items {leaked} ranked"
        assert sorted(ranked) == sorted(set(range(N_ITEMS)) - seen), (method, row.split, row.user_idx)


@pytest.mark.parametrize("method", list(registry.METHODS))
def test_a_kept_history_is_ranked(trained, method):
    """Without exclusion every item is ranked, history included: the check above can fail."""
    ranking = rank_lists(trained, method, exclude_history=False)
    for row in ranking.itertuples():
        assert sorted(int(i) for i in row.items if i >= 0) == list(range(N_ITEMS)), (method, row.split, row.user_idx)
