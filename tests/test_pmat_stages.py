"""PMAT's workflow stages on a tiny planted dataset: attention -> ID tables -> replay.

Items have two modalities; half of the users pick their next item by the
"image" features, half by the "text" features, so the preference network has
something to recover. Every stage writes contract files that the next reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pmsid.data import contracts
from pmsid.methods.pmat import stages
from pmsid.methods.pmat.attention import project_features
from pmsid.methods.pmat.prototypes import global_fusion_ids

N_ITEMS, N_USERS, LENGTH = 48, 80, 10
MODALITIES = ["text", "image"]
TOKENIZER = {"levels": 2, "codes": 6, "n_init": 1, "seed": 0}
ATTENTION = {"d": 8, "hidden": 8, "epochs": 3, "batch_size": 64, "history_cap": 8, "progress": False}
TOKENIZE_OUTPUTS = ("ids", "prototypes", "assignment", "prefix_tables", "quality")
PMAT = {"window": 3, "theta": 0.2, "lambda_max": 0.5, "sharpness": 2.0, "cons_temperature": 0.1}


def _walk(rng, feats, start, length):
    """A sequence whose next item is a near neighbour of the current one in ``feats``."""
    sims = feats @ feats.T
    seq = [start]
    while len(seq) < length:
        order = np.argsort(-sims[seq[-1]])
        options = [i for i in order[1:12] if i not in seq]
        seq.append(int(rng.choice(options[:4])))
    return seq


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("pmat")
    rng = np.random.default_rng(0)
    text = rng.normal(size=(N_ITEMS, 12)).astype(np.float32)
    image = rng.normal(size=(N_ITEMS, 10)).astype(np.float32)
    unit = [x / np.linalg.norm(x, axis=1, keepdims=True) for x in (text, image)]
    rows, truth = [], []
    for u in range(N_USERS):
        image_led = u % 2 == 0
        seq = _walk(rng, unit[1] if image_led else unit[0], int(rng.integers(N_ITEMS)), LENGTH)
        for pos, item in enumerate(seq):
            split = "train" if pos < LENGTH - 2 else ("valid" if pos == LENGTH - 2 else "test")
            rows.append((u, item, 1000 * u + pos, pos, split))
        truth.append((f"u{u}", "image" if image_led else "text", 0.8 if image_led else 0.2))
    paths = {
        "interactions": root / "interactions.parquet",
        "catalogue": root / "items.parquet",
        "users": root / "users.parquet",
        "features": [str(root / "text.parquet"), str(root / "image.parquet")],
    }
    inter = pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp", "position", "split"])
    contracts.write_table(inter, paths["interactions"], contracts.INTERACTIONS)
    items = pd.DataFrame({"item_idx": np.arange(N_ITEMS), "item_id": [f"i{i}" for i in range(N_ITEMS)],
                          "text": "x", "image_url": None})  # fmt: skip
    contracts.write_table(items, paths["catalogue"], contracts.ITEMS)
    users = pd.DataFrame({"user_idx": np.arange(N_USERS), "user_id": [f"u{u}" for u in range(N_USERS)]})
    contracts.write_table(users, paths["users"], contracts.USERS)
    for path, x in zip(paths["features"], (text, image)):
        contracts.write_features(path, np.arange(N_ITEMS), x, "test")
    truth_path = root / "truth_users.parquet"
    pd.DataFrame(truth, columns=["user_id", "preference", "alpha_image"]).to_parquet(truth_path)

    out = {k: str(root / f"attention_{k}") for k in ("model", "log", "weights", "preference")}
    preference = stages.train_attention(paths, MODALITIES, ATTENTION, 0, out, str(truth_path), "cpu")
    ids = {}
    for variant in ("global", "personalized"):
        files = {k: str(root / f"{variant}_{k}.parquet") for k in TOKENIZE_OUTPUTS}
        ids[variant] = stages.tokenize(variant, {**paths, "attention": out["model"]}, MODALITIES, 3, TOKENIZER, files)
    replay_out = {k: str(root / f"replay_{k}") for k in ("events", "summary", "assignment")}
    personal = {k: str(root / f"personalized_{k}.parquet") for k in ("ids", "prototypes", "assignment")}
    summary = stages.replay({**paths, "attention": out["model"], **personal}, PMAT, 8, replay_out)
    return {"root": root, "paths": paths, "attention": out, "preference": preference, "ids": ids,
            "summary": summary, "replay": replay_out}  # fmt: skip


def test_user_weights_are_on_the_simplex_and_the_preference_is_recovered(planted):
    weights = contracts.read_table(planted["attention"]["weights"], contracts.USER_WEIGHTS)
    per_user = weights.groupby("user_idx")["weight"].sum()
    assert len(per_user) == N_USERS
    np.testing.assert_allclose(per_user, 1.0, atol=1e-6)
    assert (weights["weight"] >= 0).all()
    assert set(weights["planted_preference"]) == {"image", "text"}
    pref = json.loads(Path(planted["attention"]["preference"]).read_text())
    assert pref["available"] and pref["n_users"] == N_USERS
    # Planted two-group users: the learned image weight ranks image-led users higher.
    assert pref["spearman"] > 0.6, pref
    assert pref["accuracy_median_threshold"] > 0.8, pref


def test_global_variant_is_one_table_equal_to_global_fusion_of_the_mean_weights_under_either_fusion(planted):
    from pmsid.methods.pmat.stages import _load_bundle, _load_features

    ids = contracts.read_personalized_ids(planted["root"] / "global_ids.parquet")
    assert ids.shape == (1, N_ITEMS, TOKENIZER["levels"] + 1)
    bundle = _load_bundle(planted["attention"]["model"])
    features = _load_features(planted["paths"]["features"], N_ITEMS)
    protos = contracts.read_table(planted["root"] / "global_prototypes.parquet", contracts.PROTOTYPES)
    w = protos.set_index("modality").loc[MODALITIES, "weight"].to_numpy()
    # The workflow's default fusion: the raw features concatenated, as the TIGER baseline fuses them.
    expected = global_fusion_ids(features, w, TOKENIZER["levels"], TOKENIZER["codes"],
                                 seed=TOKENIZER["seed"], n_init=TOKENIZER["n_init"], fusion="concat")  # fmt: skip
    np.testing.assert_array_equal(ids[0], expected)
    files = {k: str(planted["root"] / f"sum_{k}.parquet") for k in TOKENIZE_OUTPUTS}
    inputs = {**planted["paths"], "attention": planted["attention"]["model"]}
    summed = stages.tokenize("global", inputs, MODALITIES, 3, TOKENIZER, files, fusion="sum")
    expected = global_fusion_ids(project_features(bundle, features), w, TOKENIZER["levels"], TOKENIZER["codes"],
                                 seed=TOKENIZER["seed"], n_init=TOKENIZER["n_init"])  # fmt: skip
    np.testing.assert_array_equal(summed[0], expected)


def test_personalized_tables_are_unique_within_each_table_and_users_are_assigned(planted):
    ids = contracts.read_personalized_ids(planted["root"] / "personalized_ids.parquet")
    assert ids.shape[0] == 3
    for table in ids:
        assert len(np.unique(table, axis=0)) == N_ITEMS
    assignment = stages.read_assignment(planted["root"] / "personalized_assignment.parquet", N_USERS)
    assert set(assignment["train"]) == {0, 1, 2}
    np.testing.assert_array_equal(assignment["train"], assignment["test"])  # no updates in the tokenizer
    quality = contracts.read_table(planted["root"] / "personalized_quality.parquet", contracts.ID_QUALITY)
    whole = quality[quality["level"] == -1].set_index("metric")["value"]
    assert whole["uniqueness"] == 1.0 and whole["n_prototypes"] == 3
    assert "semantic_consistency_gap" in set(quality["metric"])


def test_id_quality_measures_theorem_1_over_user_pairs():
    # Two tables that differ on every item; users 0-29 read table 0 with image weight near 0.2,
    # users 30-59 table 1 near 0.8: ID distance follows weight distance across user pairs.
    rng = np.random.default_rng(0)
    ids = np.stack([rng.integers(0, 4, size=(20, 3)), rng.integers(4, 8, size=(20, 3))])
    ids = np.concatenate([ids, np.zeros((2, 20, 1), dtype=ids.dtype)], axis=2)  # dedup level
    assignment = np.repeat([0, 1], 30)
    image = np.where(assignment == 0, 0.2, 0.8) + rng.normal(0, 0.02, size=60)
    alphas = np.stack([1 - image, image], axis=1)
    features = [rng.normal(size=(20, 4)), rng.normal(size=(20, 4))]
    weights = np.array([[0.8, 0.2], [0.2, 0.8]])
    quality = stages._quality(ids, weights, features, 8, "concat", alphas, assignment)
    whole = quality[quality["level"] == -1].set_index("metric")["value"]
    assert whole["personalization_user_spearman_rho"] > 0.5 and whole["personalization_user_mantel_p"] < 0.01
    assert "personalization_spearman_rho" not in whole  # P = 2: one prototype pair, no correlation
    # Shuffled tables: the user-level correlation is gone.
    shuffled = stages._quality(ids, weights, features, 8, "concat", alphas, rng.permutation(assignment))
    shuffled = shuffled[shuffled["level"] == -1].set_index("metric")["value"]
    assert abs(shuffled["personalization_user_spearman_rho"]) < 0.2


def test_replay_updates_follow_the_gate_and_the_bound(planted):
    summary = planted["summary"]
    events = pd.read_parquet(planted["replay"]["events"])
    assert summary["n_events"] == len(events) == 2 * N_USERS  # valid, then test, per user
    assert summary["n_bound_violations"] == 0
    fired = events["fired"].to_numpy()
    # Updates fire exactly above theta, and only fired events move a user.
    np.testing.assert_array_equal(fired, events["drift"].to_numpy() > PMAT["theta"])
    assert (events.loc[~fired, "lam"] == 0).all()
    assert (events.loc[~fired, "old_prototype"] == events.loc[~fired, "new_prototype"]).all()
    assert (events.loc[fired, "lam"] <= PMAT["lambda_max"]).all()
    assert summary["n_fired"] > 0, "the planted walks should drift for some users at theta 0.2"
    # The table in force at test is the one after the user's second event.
    after = stages.read_assignment(planted["replay"]["assignment"], N_USERS)
    test_events = events.groupby("user").nth(1).sort_values("user")
    np.testing.assert_array_equal(after["test"], test_events["new_prototype"].to_numpy())
    start = stages.read_assignment(planted["root"] / "personalized_assignment.parquet", N_USERS)["train"]
    np.testing.assert_array_equal(after["train"], start)


def test_too_many_prototypes_fail_naming_the_key(planted):
    files = {k: str(planted["root"] / f"bad_{k}.parquet") for k in TOKENIZE_OUTPUTS}
    inputs = {**planted["paths"], "attention": planted["attention"]["model"]}
    with pytest.raises(ValueError, match="pmat.prototypes"):
        stages.tokenize("personalized", inputs, MODALITIES, N_USERS + 1, TOKENIZER, files)


def test_each_training_prefix_is_tokenized_in_a_table_chosen_from_the_items_before_its_target(planted):
    from pmsid.data.loaders import load_prefix_tables, load_sequences
    from pmsid.data.sequences import training_samples
    from pmsid.methods.pmat.attention import histories_weights
    from pmsid.methods.pmat.prototypes import assign_prototypes
    from pmsid.methods.pmat.stages import _load_bundle, _load_features

    paths = planted["paths"]
    seqs = load_sequences(paths["interactions"], paths["catalogue"])
    tables = load_prefix_tables(planted["root"] / "personalized_prefix_tables.parquet", seqs, 3)
    users, hist, _ = training_samples(seqs, ATTENTION["history_cap"])
    assert tables.shape == users.shape
    # Recompute from each prefix's own history alone: the same tables.
    bundle = _load_bundle(planted["attention"]["model"])
    features = _load_features(paths["features"], N_ITEMS)
    protos = contracts.read_table(planted["root"] / "personalized_prototypes.parquet", contracts.PROTOTYPES)
    weights = protos.pivot(index="prototype", columns="modality", values="weight")[MODALITIES].to_numpy()
    np.testing.assert_array_equal(tables, assign_prototypes(histories_weights(bundle, features, hist), weights))
    # Changing a user's later items (the target and after) changes no earlier prefix's table.
    u = 0
    rows = np.flatnonzero(users == u)
    changed = [seq.copy() for seq in seqs.items]
    changed[u][3:] = changed[u + 1][3:]  # prefixes of targets at positions 1, 2 keep their history
    seqs.items[:] = changed
    _, hist_changed, _ = training_samples(seqs, ATTENTION["history_cap"])
    again = assign_prototypes(histories_weights(bundle, features, hist_changed[rows[:2]]), weights)
    np.testing.assert_array_equal(again, tables[rows[:2]])
    # The users' training-sequence tables differ from some prefix tables: the rule matters here.
    user_table = stages.read_assignment(planted["root"] / "personalized_assignment.parquet", N_USERS)["train"]
    assert (user_table[users] != tables).any()


def test_prefix_tables_that_do_not_cover_the_training_prefixes_fail_naming_the_file(planted, tmp_path):
    from pmsid.data.loaders import load_prefix_tables, load_sequences

    paths = planted["paths"]
    seqs = load_sequences(paths["interactions"], paths["catalogue"])
    frame = contracts.read_table(planted["root"] / "personalized_prefix_tables.parquet", contracts.PREFIX_TABLES)
    bad = tmp_path / "prefix_tables.parquet"
    contracts.write_table(frame.iloc[1:], bad, contracts.PREFIX_TABLES)
    with pytest.raises(ValueError, match=r"prefix_tables.parquet.*missing"):
        load_prefix_tables(bad, seqs, 3)
    frame.loc[0, "prototype"] = 7
    contracts.write_table(frame, bad, contracts.PREFIX_TABLES)
    with pytest.raises(ValueError, match="names table 7"):
        load_prefix_tables(bad, seqs, 3)


def test_the_oracle_tables_follow_the_planted_weights(planted):
    files = {k: str(planted["root"] / f"oracle_{k}.parquet") for k in TOKENIZE_OUTPUTS}
    inputs = {**planted["paths"], "attention": planted["attention"]["model"],
              "truth": str(planted["root"] / "truth_users.parquet")}  # fmt: skip
    ids = stages.tokenize("oracle", inputs, MODALITIES, 3, TOKENIZER, files)
    assert ids.shape[0] == 2  # two distinct planted weight vectors: P = min(3, 2)
    protos = contracts.read_table(files["prototypes"], contracts.PROTOTYPES)
    weights = protos.pivot(index="prototype", columns="modality", values="weight")[MODALITIES].to_numpy()
    np.testing.assert_allclose(weights, [[0.2, 0.8], [0.8, 0.2]])  # (text, image), sorted
    assignment = stages.read_assignment(files["assignment"], N_USERS)["train"]
    image_led = np.arange(N_USERS) % 2 == 0
    np.testing.assert_array_equal(assignment, np.where(image_led, 0, 1))
    prefix = contracts.read_table(files["prefix_tables"], contracts.PREFIX_TABLES)
    np.testing.assert_array_equal(prefix["prototype"], assignment[prefix["user_idx"]])
    with pytest.raises(ValueError, match=r"PMAT oracle: inputs \['truth'\] missing"):
        stages.tokenize("oracle", {k: v for k, v in inputs.items() if k != "truth"}, MODALITIES, 3, TOKENIZER, files)
