"""MCRL stage 2 (pmsid.methods.mcrl.train): the control equals no MCRL, per-step logs, resuming, labels, features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from test_models_personalized import CFG, KS, N_ITEMS, N_USERS, cyclic_sequences, two_tables

from pmsid.data import contracts
from pmsid.data.sequences import training_samples
from pmsid.methods.mcrl import ABLATIONS, joint, stages
from pmsid.methods.mcrl import train as mcrl_train
from pmsid.train import recipes as api

from conftest import REPO, evaluate_tiger

torch.set_num_threads(1)

MODALITIES = ["text", "image"]
STAGE2 = {"epochs": 2, "lr": 1e-3, "warmup_steps": 2, "lambda2": 0.5, "tau": 0.5, "d_out": 8}
USER_TABLES = np.arange(N_USERS) % 2


def item_labels():
    """Pseudo-labels per modality: text by item // 4, image by item % 3."""
    items = np.arange(N_ITEMS)
    return {"text": torch.from_numpy(items // 4), "image": torch.from_numpy(items % 3)}


def item_features():
    """Raw content features per modality: text of width 5 at MiniLM-like scale, image of width 7 at a large offset."""
    rng = np.random.default_rng(3)
    return {
        "text": torch.from_numpy(rng.normal(0.0, 0.05, (N_ITEMS, 5))).float(),
        "image": torch.from_numpy(5.0 + np.abs(rng.normal(0.0, 40.0, (N_ITEMS, 7)))).float(),
    }


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    """A 2-epoch generator over two ID tables: MCRL's stage 1."""
    path = tmp_path_factory.mktemp("stage1")
    seqs, (codes, _) = cyclic_sequences(), two_tables(seed=0)
    paths = [path / name for name in ("model.pt", "log.parquet", "ckpt.pt")]
    api.train_tiger(seqs, codes, {**CFG, "max_epochs": 2}, *paths, seed=0, device="cpu", user_tables=USER_TABLES)
    return seqs, codes, paths[0]


def run(stage1, tmp_path, ablation, tag=None, **cfg):
    seqs, codes, init = stage1
    tag = tag or ablation
    out = {name: tmp_path / f"{tag}_{name}" for name in ("model.pt", "log.parquet", "components.parquet", "ckpt.pt")}
    components = mcrl_train.train_mcrl(
        seqs,
        codes,
        USER_TABLES,
        init,
        item_labels(),
        item_features(),
        ablation,
        {**STAGE2, **cfg},
        out["model.pt"],
        out["log.parquet"],
        out["components.parquet"],
        out["ckpt.pt"],
        seed=0,
        device="cpu",
        progress=False,
    )
    return components, out


def n_samples(seqs):
    return len(training_samples(seqs, CFG["history_cap"])[2])


def steps_per_epoch(seqs):
    return -(-n_samples(seqs) // CFG["batch_size"])


def test_the_control_equals_all_losses_at_zero_weight_bit_for_bit(stage1, tmp_path):
    none, out_none = run(stage1, tmp_path, "none")
    zero, out_zero = run(stage1, tmp_path, "all", tag="zero", lambda2=0.0, a=0.0, b=0.0)
    a = torch.load(out_none["model.pt"], weights_only=True)["state_dict"]
    b = torch.load(out_zero["model.pt"], weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    pd.testing.assert_series_equal(none["id"], zero["id"])
    # The control trains only L_ID: total is L_ID and no MCRL column is filled.
    assert (none["total"] == none["id"]).all()
    assert none[["user", "intra", "inter"]].isna().all().all()
    # ... and it did train: the generator moved away from stage 1.
    init = torch.load(stage1[2], weights_only=True)["state_dict"]
    assert any(not torch.equal(init[k], a[k]) for k in a if k != "codes")


def test_every_step_is_logged_with_its_components(stage1, tmp_path):
    components, out = run(stage1, tmp_path, "all")
    spe = steps_per_epoch(stage1[0])
    assert components["step"].tolist() == list(range(1, 2 * spe + 1))
    assert components["epoch"].tolist() == [1] * spe + [2] * spe
    last = components.groupby("epoch")["step"].transform("max") == components["step"]
    # This data leaves one row in each epoch's last batch: no in-batch negatives, L_ID alone there.
    assert n_samples(stage1[0]) % CFG["batch_size"] == 1
    assert components.loc[~last, ["id", "user", "intra", "inter"]].notna().all().all()
    assert components.loc[last, ["user", "intra", "inter"]].isna().all().all()
    assert (components.loc[last, "total"] == components.loc[last, "id"]).all()
    full = components[~last]
    want = full["id"] + STAGE2["lambda2"] * (full["user"] + full["intra"] + full["inter"])
    np.testing.assert_allclose(full["total"], want, rtol=1e-5)
    # Wall seconds for every step but the last of each epoch (validation runs there).
    assert components.loc[last, "seconds"].isna().all()
    assert (components.loc[~last, "seconds"] > 0).all()
    pd.testing.assert_frame_equal(contracts.read_table(out["components.parquet"], mcrl_train.COMPONENTS), components)
    saved = torch.load(out["model.pt"], weights_only=True)
    assert saved["kind"] == "tiger" and saved["mcrl"]["ablation"] == "all"
    heads = saved["mcrl"]["heads"]
    assert set(heads) >= {"user_proj.weight", "id_repr.proj.weight", "views.heads.text.weight"}
    assert heads["content.encoders.text.weight"].shape == (STAGE2["d_out"], 5)
    assert heads["content.encoders.image.weight"].shape == (STAGE2["d_out"], 7)
    assert not any(k.startswith("generator.") or "features_" in k for k in heads)  # weights only, not the data


@pytest.mark.parametrize("ablation", ["user", "intra_inter"])
def test_an_ablation_logs_only_its_losses(stage1, tmp_path, ablation):
    components, _ = run(stage1, tmp_path, ablation)
    full = components[components.groupby("epoch")["step"].transform("max") != components["step"]]
    for name in ("user", "intra", "inter"):
        assert full[name].notna().all() == (name in ABLATIONS[ablation]), name
        assert full[name].notna().any() == (name in ABLATIONS[ablation]), name


def test_alternating_schedule_turns_the_losses_on_at_odd_steps(stage1, tmp_path):
    components, _ = run(stage1, tmp_path, "user", schedule="alternating")
    components = components[components.groupby("epoch")["step"].transform("max") != components["step"]]
    odd = components["step"] % 2 == 1  # (the one-row last batches, L_ID alone, are left out)
    assert components.loc[odd, "user"].notna().all()
    assert components.loc[~odd, "user"].isna().all()
    assert (components.loc[~odd, "total"] == components.loc[~odd, "id"]).all()


def test_the_saved_model_evaluates_as_a_tiger_model(stage1, tmp_path):
    seqs, codes, _ = stage1
    _, out = run(stage1, tmp_path, "all")
    per_user, metrics = evaluate_tiger(out["model.pt"], seqs, codes, KS, 12, False, "cpu", USER_TABLES)
    values = metrics.set_index(["split", "metric"])["value"]
    assert values[("test", "invalid_id_rate")] == 0.0
    assert values[("test", "n_users")] == N_USERS
    # Evaluated under the training tables, the valid split gives the NDCG@10 stage 2 selected on.
    saved = torch.load(out["model.pt"], weights_only=True)
    assert values[("valid", "NDCG@10")] == pytest.approx(saved["best_valid_ndcg10"], abs=1e-12)


def test_a_killed_run_resumes_to_the_same_model_and_log(stage1, tmp_path, monkeypatch):
    full, out_full = run(stage1, tmp_path, "all", tag="full")
    spe = steps_per_epoch(stage1[0])
    real = mcrl_train.active_terms

    def dies_in_epoch_2(schedule, epoch, step, stage1_epochs):
        if step == spe + 2:
            raise KeyboardInterrupt("killed")
        return real(schedule, epoch, step, stage1_epochs)

    monkeypatch.setattr(mcrl_train, "active_terms", dies_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run(stage1, tmp_path, "all", tag="cut")
    monkeypatch.setattr(mcrl_train, "active_terms", real)
    resumed, out_cut = run(stage1, tmp_path, "all", tag="cut")

    timing = ["seconds"]
    pd.testing.assert_frame_equal(resumed.drop(columns=timing), full.drop(columns=timing))
    a = torch.load(out_full["model.pt"], weights_only=True)
    b = torch.load(out_cut["model.pt"], weights_only=True)
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key


def test_the_intra_positives_are_the_pseudo_labels_of_the_batch_targets(stage1, tmp_path, monkeypatch):
    seen = []
    real = joint.intra_modal_loss_multi

    def recording(views, labels, tau):
        seen.append({m: lab.clone() for m, lab in labels.items()})
        return real(views, labels, tau)

    monkeypatch.setattr(joint, "intra_modal_loss_multi", recording)
    targets = []
    real_loss = joint.JointModel.loss

    def loss_recording_targets(self, history, target, *args, **kwargs):
        if len(target) >= 2:  # one-row batches train L_ID alone
            targets.append(target.clone())
        return real_loss(self, history, target, *args, **kwargs)

    monkeypatch.setattr(joint.JointModel, "loss", loss_recording_targets)
    run(stage1, tmp_path, "intra")
    labels = item_labels()
    assert len(seen) == len(targets) > 0
    for got, target in zip(seen, targets):
        for m in MODALITIES:
            assert torch.equal(got[m], labels[m][target])


def test_read_labels_orders_by_item_and_names_a_bad_file(tmp_path):
    frame = pd.DataFrame({"item_idx": np.arange(5, dtype=np.int32)[::-1], "label": np.array([4, 3, 2, 1, 0], np.int32)})
    contracts.write_table(frame, tmp_path / "text.parquet", contracts.PSEUDOLABELS)
    labels = mcrl_train.read_labels({"text": tmp_path / "text.parquet"}, 5)
    assert labels["text"].tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match=r"text.parquet: item_idx must list 0..5"):
        mcrl_train.read_labels({"text": tmp_path / "text.parquet"}, 6)


def _write_features(path, item_idx, width=3):
    matrix = np.arange(len(item_idx) * width, dtype=np.float32).reshape(len(item_idx), width)
    contracts.write_features(path, np.asarray(item_idx, dtype=np.int32), matrix, stage="test")
    return matrix


def test_read_item_features_orders_by_item_and_names_a_file_that_does_not_cover_the_items(tmp_path):
    matrix = _write_features(tmp_path / "text.parquet", [2, 0, 1])
    got = mcrl_train.read_item_features({"text": tmp_path / "text.parquet"}, 3)
    assert got["text"].dtype == torch.float32 and torch.equal(got["text"], torch.from_numpy(matrix[[1, 2, 0]]))
    with pytest.raises(ValueError, match=r"text.parquet: the text features must cover item_idx 0..3 once each"):
        mcrl_train.read_item_features({"text": tmp_path / "text.parquet"}, 4)  # item 3 missing
    _write_features(tmp_path / "image.parquet", [0, 1, 1, 2])
    with pytest.raises(ValueError, match=r"image.parquet: the image features must cover .*4 rows, 3 distinct"):
        mcrl_train.read_item_features({"image": tmp_path / "image.parquet"}, 3)  # item 1 twice


def test_feature_inputs_must_be_the_datasets_modalities():
    inputs = {"labels_text": "l.parquet", "features_text": "t.parquet", "features_image": "i.parquet"}
    assert stages.feature_paths(inputs, ["text", "image"]) == {"text": "t.parquet", "image": "i.parquet"}
    with pytest.raises(ValueError, match=r"for modalities \['text', 'image'\], .*\['text', 'behaviour'\].*missing "
                       r"\['behaviour'\], unexpected \['image'\]"):  # fmt: skip
        stages.feature_paths(inputs, ["text", "behaviour"])
    with pytest.raises(ValueError, match=r"missing \['image'\]"):
        stages.feature_paths({"features_text": "t.parquet"}, ["text", "image"])


def test_features_of_other_modalities_than_the_labels_are_refused(stage1, tmp_path):
    seqs, codes, init = stage1
    feats = {"text": item_features()["text"], "audio": item_features()["image"]}
    with pytest.raises(ValueError, match=r"features has modalities \['text', 'audio'\], labels \['text', 'image'\]"):
        mcrl_train.train_mcrl(
            seqs, codes, USER_TABLES, init, item_labels(), feats, "inter", STAGE2,
            *[tmp_path / n for n in ("m.pt", "l.parquet", "c.parquet", "k.pt")], seed=0, device="cpu",
        )  # fmt: skip


def test_l_inter_reads_the_items_content_features(stage1, tmp_path, monkeypatch):
    seen = []
    real = joint.inter_modal_loss

    def recording(views, tau, items=None):
        seen.append((list(views), items.clone()))
        return real(views, tau, items)

    monkeypatch.setattr(joint, "inter_modal_loss", recording)
    components, out = run(stage1, tmp_path, "inter")
    assert seen and all(names == [joint.ID_VIEW, *MODALITIES] for names, _ in seen)
    assert components["inter"].notna().any()
    # Other features, same everything else: another model.
    shuffled = {**item_features(), "text": item_features()["text"].flip(0)}
    seqs, codes, init = stage1
    paths = [tmp_path / n for n in ("m.pt", "l.parquet", "c.parquet", "k.pt")]
    other = mcrl_train.train_mcrl(
        seqs, codes, USER_TABLES, init, item_labels(), shuffled, "inter", STAGE2, *paths, seed=0, device="cpu",
        progress=False,
    )  # fmt: skip
    assert not np.allclose(components["inter"].dropna(), other["inter"].dropna())


def test_stage1_of_other_tables_is_refused(stage1, tmp_path):
    seqs, codes, init = stage1
    swapped = codes[::-1].copy()
    with pytest.raises(ValueError, match="stage-1 generator was trained on other ID tables"):
        mcrl_train.train_mcrl(
            seqs, swapped, USER_TABLES, init, item_labels(), item_features(), "all", STAGE2,
            *[tmp_path / n for n in ("m.pt", "l.parquet", "c.parquet", "k.pt")], seed=0, device="cpu",
        )  # fmt: skip


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"schedule": "joint"}, "mcrl.schedule must be one of"),
        ({"epochs": 0}, "mcrl.epochs must be an integer >= 1"),
        ({"lamda2": 0.1}, r"unknown key\(s\) \['lamda2'\]"),
    ],
)
def test_bad_stage2_config_fails_naming_the_key(cfg, message):
    with pytest.raises(ValueError, match=message):
        mcrl_train.resolve_cfg(cfg)


def test_every_ablation_is_a_registered_method():
    from pmsid.methods import registry

    for name, losses in ABLATIONS.items():
        spec = registry.get(f"mcrl_{name}")
        assert spec.options["losses"] == list(losses) and spec.sections == ("mcrl",)
        assert spec.role == ("control" if not losses else "ours")


def test_every_ablation_trains_with_the_feature_file_of_every_modality():
    from pmsid import manifest
    from pmsid.methods import registry

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    patterns = {"features": "results/features/{dataset}/{modality}.parquet"}
    for dataset in config["mcrl"]["datasets"]:
        for name in ABLATIONS:
            assert "features" in registry.get(f"mcrl_{name}").train_needs(config, dataset), (dataset, name)
        want = {
            f"features_{m}": f"results/features/{dataset}/{m}.parquet"
            for m in config["dataset_specs"][dataset]["modalities"]
        }
        files = manifest.need_inputs(config, "features", dataset, 0, patterns)
        assert files == want and stages.feature_paths(files, config["dataset_specs"][dataset]["modalities"])


def test_stage1_may_be_plain_tiger_with_one_table(tmp_path, monkeypatch):
    """On a dataset without PMAT, stage 1 is TIGER: one table, no user groups for L_user."""
    groups = []
    real = joint.user_preference_loss

    def recording(user, item, tau, group=None):
        groups.append(group)
        return real(user, item, tau, group)

    monkeypatch.setattr(joint, "user_preference_loss", recording)
    seqs, (codes, _) = cyclic_sequences(), two_tables(seed=0)
    single = codes[0]
    paths = [tmp_path / name for name in ("s1.pt", "s1.parquet", "s1ckpt.pt")]
    api.train_tiger(seqs, single, {**CFG, "max_epochs": 1}, *paths, seed=0, device="cpu")
    out = [tmp_path / name for name in ("m.pt", "l.parquet", "c.parquet", "k.pt")]
    components = mcrl_train.train_mcrl(
        seqs,
        single,
        None,
        paths[0],
        item_labels(),
        item_features(),
        "user",
        STAGE2,
        *out,
        seed=0,
        device="cpu",
        progress=False,
    )
    assert components["user"].notna().any()
    assert groups and all(g is None for g in groups)  # one table: only the row's own item is positive
    saved = torch.load(out[0], weights_only=True)
    assert tuple(saved["codes"].shape) == (1, N_ITEMS, single.shape[1])
    _, metrics = evaluate_tiger(out[0], seqs, single, KS, 12, False, "cpu")
    assert metrics.set_index(["split", "metric"])["value"][("test", "invalid_id_rate")] == 0.0


def test_under_pmat_tables_the_users_prototype_is_the_l_user_group(stage1, tmp_path, monkeypatch):
    seen = []
    real_loss = joint.JointModel.loss

    def recording(self, history, target, table=None, labels=None, groups=None, terms=None):
        seen.append((table.clone(), None if groups is None else groups.clone()))
        return real_loss(self, history, target, table, labels, groups, terms)

    monkeypatch.setattr(joint.JointModel, "loss", recording)
    run(stage1, tmp_path, "user")
    assert seen
    for table, groups in seen:
        assert groups is not None and torch.equal(groups, table)
