"""MCRL's joint objective (docs/METHOD.md section 5): exact PMAT reduction, gradients, config, schedules, logging."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from test_beam import random_codes, random_histories, random_model

from pmsid.methods.mcrl.joint import (
    COMPONENT_COLUMNS,
    ID_VIEW,
    JointModel,
    active_terms,
    component_row,
)
from pmsid.methods.mcrl.losses import (
    LOSS_NAMES,
    inter_modal_loss,
    intra_modal_loss_multi,
    mcrl_loss,
    user_preference_loss,
)
from pmsid.train.loop import LoopConfig, train_loop

torch.set_num_threads(1)

N_ITEMS, CAP, BATCH = 30, 5, 12
MODALITIES = ["text", "image"]
ALL_ON = {"lambda2": 0.7, "a": 0.5, "b": 2.0, "tau": 0.5, "d_out": 16}


def two_tables():
    """``(2, N_ITEMS, 4)`` codes: two different tables over one code space."""
    return np.stack([random_codes(N_ITEMS, [3, 4, 3], seed=s) for s in (1, 2)])


def generator(p_tables=2, seed=0):
    codes = two_tables() if p_tables == 2 else random_codes(N_ITEMS, [3, 4, 3], seed=1)
    return random_model(codes, CAP, seed)


def batch(seed=0, p_tables=2):
    history = torch.from_numpy(random_histories(BATCH, N_ITEMS, CAP, seed))
    target = torch.from_numpy(np.random.default_rng(seed + 100).integers(0, N_ITEMS, BATCH))
    table = torch.arange(BATCH) % p_tables
    return history, target, table


def labels(seed=0, k=3):
    """Pseudo-labels per modality over the items, few classes so a batch has positives."""
    rng = np.random.default_rng(seed)
    return {m: torch.from_numpy(rng.integers(0, k, N_ITEMS)) for m in MODALITIES}


def features(seed=0, modalities=MODALITIES):
    """Raw content features per modality, of different widths and scales (MiniLM-like text, EfficientNet-like image)."""
    rng = np.random.default_rng(seed)
    shapes = {"text": (12, 0.05, 0.0), "image": (20, 40.0, 5.0), "audio": (6, 1.0, 0.0)}
    out = {}
    for m in modalities:
        width, scale, offset = shapes[m]
        x = rng.normal(0.0, scale, (N_ITEMS, width))
        out[m] = torch.from_numpy(offset + (np.abs(x) if offset else x)).float()
    return out


def model(gen=None, cfg=ALL_ON, modalities=MODALITIES, feats=None, seed=0):
    """A JointModel over ``gen`` with its heads initialized from ``seed``."""
    gen = generator() if gen is None else gen
    torch.manual_seed(seed)
    return JointModel(gen, modalities, cfg, features(modalities=modalities) if feats is None else feats)


def grads(module):
    return {name: None if p.grad is None else p.grad.clone() for name, p in module.named_parameters()}


# --- exact reduction to the generator --------------------------------------------------


@pytest.mark.parametrize("train_mode", [False, True])
@pytest.mark.parametrize(
    ("cfg", "terms"),
    [({**ALL_ON, "lambda2": 0.0}, None), ({**ALL_ON, "a": 0.0, "b": 0.0}, set()), ({**ALL_ON, "a": 0.0}, {"intra"})],
)
def test_no_active_mcrl_term_is_the_generator_bit_for_bit(train_mode, cfg, terms):
    gen = generator()
    joint = model(gen, cfg).train(train_mode)
    history, target, table = batch()

    torch.manual_seed(5)  # same dropout masks in train mode
    total, comps = joint.loss(history, target, table, labels(), torch.zeros(BATCH, dtype=torch.long), terms)
    total.backward()
    got = grads(gen)
    assert set(comps) == {"id"}

    joint.zero_grad(set_to_none=True)
    torch.manual_seed(5)
    ref = gen.loss(history, target, table)
    ref.backward()
    want = grads(gen)

    assert torch.equal(total, ref)
    assert comps["id"] == ref.item()
    for name in want:
        assert (got[name] is None) == (want[name] is None), name
        if want[name] is not None:
            assert torch.equal(got[name], want[name]), name
    # The MCRL heads took no part.
    assert all(p.grad is None for p in joint.user_proj.parameters())
    assert all(p.grad is None for p in joint.id_repr.proj.parameters())
    assert joint.content is None or all(p.grad is None for p in joint.content.parameters())


@pytest.mark.parametrize("train_mode", [False, True])
def test_id_component_with_the_encoder_shared_is_the_generator_loss(train_mode):
    # With L_user on, the encoder runs once for L_ID and the user context; L_ID must not change.
    gen = generator()
    joint = model(gen).train(train_mode)
    history, target, table = batch()
    torch.manual_seed(3)
    comps = joint.loss_components(history, target, table, labels())
    torch.manual_seed(3)
    ref = gen.loss(history, target, table)
    assert set(comps) == {"id", *LOSS_NAMES}
    assert torch.equal(comps["id"], ref)


# --- the weighted total and its gradients ----------------------------------------------


def test_total_is_id_plus_weighted_mcrl_terms():
    joint = model()
    history, target, table = batch()
    total, comps = joint.loss(history, target, table, labels())
    assert set(comps) == {"id", *LOSS_NAMES}
    want = comps["id"] + 0.7 * (comps["user"] + 0.5 * comps["intra"] + 2.0 * comps["inter"])
    assert total.item() == pytest.approx(want, rel=1e-5)
    assert all(comps[name] > 0 for name in LOSS_NAMES)
    assert total.item() > comps["id"] + 0.1


def _target_tokens(gen, target, table):
    return set((gen.item_codes(target, table) + gen.offsets).flatten().tolist())


def test_intra_and_inter_gradients_reach_exactly_the_target_tokens_under_each_rows_table():
    gen = generator()
    joint = model(gen)
    history, target, table = batch()
    comps = joint.loss_components(history, target, table, labels(), terms={"intra", "inter"})
    assert set(comps) == {"id", "intra", "inter"}
    mcrl_loss({k: v for k, v in comps.items() if k != "id"}, 0.7, 0.5, 2.0).backward()
    grad = gen.tok_emb.weight.grad  # (V, d)
    touched = set(torch.nonzero(grad.abs().sum(dim=1)).flatten().tolist())
    want = _target_tokens(gen, target, table)
    assert touched == want
    # The tables differ, so reading every row under table 0 would touch other rows.
    assert _target_tokens(gen, target, 0) != want


def test_user_term_alone_reaches_the_target_token_rows():
    gen = generator()
    joint = model(gen, {**ALL_ON, "terms": ["user"]})
    history, target, table = batch()
    comps = joint.loss_components(history, target, table)
    assert set(comps) == {"id", "user"}
    comps["user"].backward()
    rows = gen.tok_emb.weight.grad.abs().sum(dim=1)  # (V,)
    assert all(rows[t] > 0 for t in _target_tokens(gen, target, table))
    assert joint.user_proj.weight.grad.abs().sum() > 0


def test_user_context_is_the_projected_mean_over_non_padding_positions():
    gen = generator()
    joint = model(gen)
    history, _, table = batch()
    got = joint.user_context(history, table)
    memory, pad = gen.encode(history, table)
    assert pad.any(dim=1).any()  # some rows are padded, so padding matters
    for n in range(BATCH):
        want = joint.user_proj(memory[n][~pad[n]].mean(dim=0))
        assert torch.allclose(got[n], want, atol=1e-6)
    padded = int(torch.nonzero(pad.any(dim=1))[0])
    assert not torch.allclose(got[padded], joint.user_proj(memory[padded].mean(dim=0)), atol=1e-4)


def test_intra_uses_the_labels_given():
    joint = model()
    history, target, table = batch()
    lab = labels(seed=0)
    first = joint.loss_components(history, target, table, lab, terms={"intra"})["intra"]
    other = joint.loss_components(history, target, table, labels(seed=1), terms={"intra"})["intra"]
    assert not torch.isclose(first, other)
    # The labels of the target items, not of the batch positions.
    views = joint.views(joint.id_repr(target, table))
    want = intra_modal_loss_multi(views, {m: lab[m][target] for m in MODALITIES}, 0.5)
    assert torch.equal(first, want)


def test_inter_contrasts_the_id_view_with_each_modalitys_content_view():
    joint = model()
    history, target, table = batch()
    got = joint.loss_components(history, target, table, terms={"inter"})["inter"]
    content = joint.content(target)
    for m, x in features().items():  # each view from its own modality's features, standardized per column
        z = (x - x.mean(dim=0)) / x.std(dim=0, unbiased=False)
        torch.testing.assert_close(content[m], joint.content.encoders[m](z[target]), atol=1e-5, rtol=1e-5)
    views = {ID_VIEW: joint.id_repr(target, table), **content}
    assert torch.equal(got, inter_modal_loss(views, 0.5, items=target))
    # Three views, three pairs: id-text, id-image, text-image.
    pairs = [inter_modal_loss({m: views[m], n: views[n]}, 0.5, items=target) for m, n in
             [(ID_VIEW, "text"), (ID_VIEW, "image"), ("text", "image")]]  # fmt: skip
    assert got.item() == pytest.approx(sum(p.item() for p in pairs) / 3, rel=1e-6)


def _inter_and_grads(feats):
    gen = generator()
    joint = model(gen, feats=feats)
    history, target, table = batch()
    loss = joint.loss_components(history, target, table, terms={"inter"})["inter"]
    loss.backward()
    enc = {m: joint.content.encoders[m].weight.grad.clone() for m in MODALITIES}
    return loss.detach(), enc, gen.tok_emb.weight.grad.clone()


def test_permuting_one_modalitys_feature_rows_changes_l_inter_and_its_gradients():
    feats = features()
    perm = torch.from_numpy(np.roll(np.arange(N_ITEMS), 1))  # every item gets another item's image features
    shuffled = {**feats, "image": feats["image"][perm]}
    loss, enc, tok = _inter_and_grads(feats)
    loss_p, enc_p, tok_p = _inter_and_grads(shuffled)
    # The same initial weights (the standardization is per column, blind to the row order) ...
    again, enc_again, tok_again = _inter_and_grads(feats)
    assert torch.equal(loss, again) and torch.equal(tok, tok_again)
    # ... but the items' image content changed: the loss, the encoders' and the token embedding's gradients move.
    assert not torch.isclose(loss, loss_p)
    for m in MODALITIES:
        assert not torch.allclose(enc[m], enc_p[m]), m
    assert tok.abs().sum() > 0 and not torch.allclose(tok, tok_p)


def test_only_the_id_pairs_of_l_inter_reach_the_generator():
    gen = generator()
    joint = model(gen)
    history, target, table = batch()
    item = joint.id_repr(target, table)
    content = joint.content(target)
    text_image = inter_modal_loss(content, 0.5, items=target)
    text_image.backward(retain_graph=True)
    assert gen.tok_emb.weight.grad is None and joint.id_repr.proj.weight.grad is None
    assert all(joint.content.encoders[m].weight.grad.abs().sum() > 0 for m in MODALITIES)

    joint.zero_grad(set_to_none=True)
    joint.loss_components(history, target, table, terms={"inter"})["inter"].backward()
    full = gen.tok_emb.weight.grad.clone()
    joint.zero_grad(set_to_none=True)
    id_pairs = sum(inter_modal_loss({ID_VIEW: item, m: content[m]}, 0.5, items=target) for m in MODALITIES)
    (id_pairs / 3).backward()  # the mean over the three pairs weighs each by 1/3
    torch.testing.assert_close(full, gen.tok_emb.weight.grad, atol=1e-6, rtol=1e-5)


def test_missing_or_mismatched_features_fail_naming_features():
    gen = generator()
    with pytest.raises(ValueError, match=r"features is required while L_inter is configured \(b = 2.0\)"):
        JointModel(gen, MODALITIES, ALL_ON)
    with pytest.raises(ValueError, match=r"features has modalities \['text'\], the dataset \['text', 'image'\]"):
        JointModel(gen, MODALITIES, ALL_ON, {"text": features()["text"]})
    with pytest.raises(ValueError, match=r"unexpected \['audio'\]"):
        JointModel(gen, MODALITIES, ALL_ON, features(modalities=[*MODALITIES, "audio"]))
    short = {**features(), "image": features()["image"][:-1]}
    with pytest.raises(
        ValueError, match=rf"features\['image'\] must be a floating tensor of shape \(n_items={N_ITEMS}"
    ):
        JointModel(gen, MODALITIES, ALL_ON, short)
    # Checked whenever given, even while L_inter is off.
    with pytest.raises(ValueError, match="features has modalities"):
        JointModel(gen, MODALITIES, {**ALL_ON, "b": 0.0}, {"text": features()["text"]})
    with pytest.raises(ValueError, match="modality name 'id' is L_inter's name for the ID view"):
        JointModel(gen, ["id", "text"], ALL_ON, {"id": features()["text"], "text": features()["text"]})


def test_content_features_stay_out_of_the_state_dict():
    joint = model()
    assert not any("features_" in key for key in joint.state_dict())
    assert any(key.startswith("content.encoders.") for key in joint.state_dict())
    fresh = model(seed=1)
    fresh.load_state_dict(joint.state_dict())  # strict: the features are not expected
    history, target, table = batch()
    a = joint.loss_components(history, target, table, terms={"inter"})["inter"]
    assert torch.equal(a, fresh.loss_components(history, target, table, terms={"inter"})["inter"])


def test_missing_or_mismatched_labels_fail_naming_labels():
    joint = model()
    history, target, table = batch()
    with pytest.raises(ValueError, match="labels is required"):
        joint.loss(history, target, table)
    with pytest.raises(ValueError, match="labels has modalities"):
        joint.loss(history, target, table, {"text": labels()["text"]})
    with pytest.raises(ValueError, match=r"labels\['text'\] must be"):
        joint.loss(history, target, table, {**labels(), "text": torch.zeros(N_ITEMS - 1, dtype=torch.long)})
    # Not needed while L_intra is off.
    joint.loss(history, target, table, terms={"user", "inter"})


def test_groups_change_l_user():
    joint = model()
    history, target, table = batch()

    def user(groups):
        return joint.loss_components(history, target, table, groups=groups, terms={"user"})["user"]

    alone = user(None)
    assert torch.equal(alone, user(torch.arange(BATCH)))  # all groups distinct: only the own item
    grouped = user(table.clone())  # half the batch shares a group
    assert not torch.isclose(alone, grouped)
    item = joint.id_repr(target, table)
    want = user_preference_loss(joint.user_context(history, table), item, 0.5, table)
    assert torch.allclose(grouped, want, atol=1e-6)


def test_one_table_and_int_table():
    gen = generator(p_tables=1)
    joint = model(gen)
    history, target, _ = batch(p_tables=1)
    total, comps = joint.loss(history, target, None, labels())
    assert torch.isfinite(total) and set(comps) == {"id", *LOSS_NAMES}
    total0, _ = joint.loss(history, target, 0, labels())
    assert torch.equal(total, total0)


def test_unknown_terms_fail_naming_terms():
    joint = model()
    history, target, table = batch()
    with pytest.raises(ValueError, match="terms holds unknown"):
        joint.loss(history, target, table, labels(), terms={"usr"})


# --- config ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cfg", "modalities", "match"),
    [
        ({"lamda2": 0.1}, MODALITIES, r"unknown config key\(s\) \['lamda2'\]"),
        ({"a": -0.1}, MODALITIES, r"MCRL: a must be a finite number >= 0"),
        ({"lambda2": -1.0}, MODALITIES, r"MCRL: lambda2 must be"),
        ({"b": float("nan")}, MODALITIES, r"MCRL: b must be"),
        ({"lambda1": 0.0}, MODALITIES, r"unknown config key\(s\) \['lambda1'\]"),
        ({"tau": 0.0}, MODALITIES, r"MCRL: tau .* must be a finite number > 0"),
        ({"tau": -0.5}, MODALITIES, r"MCRL: tau"),
        ({"b": 1.0}, ["text"], r"MCRL: b = 1.0 .*L_inter needs at least two modalities"),
        ({"a": 1.0, "b": 0.0}, [], r"MCRL: a > 0"),
        ({"d_out": 0}, MODALITIES, r"MCRL: d_out must be"),
        ({"terms": ["user", "cross"]}, MODALITIES, r"terms holds unknown .*'cross'"),
    ],
)
def test_bad_config_fails_naming_the_key(cfg, modalities, match):
    with pytest.raises(ValueError, match=match):
        JointModel(generator(), modalities, cfg, features(modalities=modalities))


def test_one_modality_works_without_l_inter():
    joint = JointModel(generator(), ["text"], {**ALL_ON, "b": 0.0})  # no features needed without L_inter
    history, target, table = batch()
    _, comps = joint.loss(history, target, table, {"text": labels()["text"]})
    assert set(comps) == {"id", "user", "intra"}


# --- parameters ----------------------------------------------------------------------------


def test_shared_token_embedding_is_one_parameter():
    gen = generator()
    joint = model(gen)
    params = list(joint.parameters())
    assert len({id(p) for p in params}) == len(params)
    assert joint.id_repr.tok_emb is gen.tok_emb
    assert sum(p is gen.tok_emb.weight for p in params) == 1
    heads = [joint.id_repr.proj, joint.user_proj, joint.views, joint.content]
    assert len(params) == len(list(gen.parameters())) + sum(len(list(h.parameters())) for h in heads)


def test_views_are_built_only_when_used():
    for cfg in ({**ALL_ON, "a": 0.0, "b": 0.0}, {**ALL_ON, "lambda2": 0.0}, {**ALL_ON, "terms": ["user"]}):
        joint = model(cfg=cfg)
        assert joint.views is None and joint.content is None, cfg
    intra_only = model(cfg={**ALL_ON, "b": 0.0})
    assert intra_only.views is not None and intra_only.content is None
    inter_only = model(cfg={**ALL_ON, "a": 0.0})
    assert inter_only.views is None and inter_only.content is not None


# --- schedules -----------------------------------------------------------------------------

ALL = set(LOSS_NAMES)


@pytest.mark.parametrize(
    ("schedule", "epoch", "step", "stage1", "want"),
    [
        ("joint", 1, 1, 2, ALL),
        ("joint", 1, 2, 0, ALL),
        ("two_stage", 1, 1, 2, set()),
        ("two_stage", 2, 40, 2, set()),
        ("two_stage", 3, 41, 2, ALL),
        ("two_stage", 3, 42, 2, ALL),
        ("alternating", 2, 41, 2, set()),
        ("alternating", 3, 41, 2, ALL),
        ("alternating", 3, 42, 2, set()),
        ("alternating", 1, 1, 0, ALL),
        ("alternating", 1, 2, 0, set()),
    ],
)
def test_active_terms(schedule, epoch, step, stage1, want):
    assert active_terms(schedule, epoch, step, stage1) == want


def test_active_terms_rejects_bad_arguments():
    with pytest.raises(ValueError, match="schedule must be one of"):
        active_terms("staged", 1, 1, 0)
    with pytest.raises(ValueError, match="epoch must be"):
        active_terms("joint", 0, 1, 0)
    with pytest.raises(ValueError, match="stage1_epochs must be"):
        active_terms("two_stage", 1, 1, -1)


# --- logging and the training loop -------------------------------------------------------------


def test_component_row_fills_absent_components_with_nan():
    row = component_row(2, 17, torch.tensor(3.5), {"id": 3.0, "user": 0.25})
    assert list(row) == COMPONENT_COLUMNS
    assert row["epoch"] == 2 and row["step"] == 17 and row["total"] == 3.5
    assert row["id"] == 3.0 and row["user"] == 0.25
    assert math.isnan(row["intra"]) and math.isnan(row["inter"])
    frame = pd.DataFrame([row, component_row(2, 18, 1.0, {"id": 1.0})], columns=COMPONENT_COLUMNS)
    assert frame["user"].isna().tolist() == [False, True]
    with pytest.raises(ValueError, match="unknown name"):
        component_row(1, 1, 1.0, {"id": 1.0, "cons": 0.1})


def test_joint_model_trains_in_train_loop_with_a_schedule(tmp_path):
    gen = generator()
    joint = model(gen)
    rng = np.random.default_rng(0)
    n = 48
    data = (
        torch.from_numpy(random_histories(n, N_ITEMS, CAP, 1)),
        torch.from_numpy(rng.integers(0, N_ITEMS, n)),
        torch.arange(n) % 2,
    )
    lab, rows, steps_per_epoch = labels(), [], n // BATCH

    def loss_fn(model, b):
        step = len(rows) + 1
        epoch = (step - 1) // steps_per_epoch + 1
        total, comps = model.loss(*b, labels=lab, terms=active_terms("two_stage", epoch, step, 1))
        rows.append(component_row(epoch, step, total, comps))
        return total

    before = gen.tok_emb.weight.detach().clone()
    cfg = LoopConfig(batch_size=BATCH, max_epochs=2, warmup_steps=1, progress=False)
    train_loop(joint, loss_fn, data, lambda m: 0.0, cfg, tmp_path / "ckpt.pt", "h", seed=0, name="mcrl")
    frame = pd.DataFrame(rows, columns=COMPONENT_COLUMNS)
    assert len(frame) == 2 * steps_per_epoch
    stage1, stage2 = frame[frame.epoch == 1], frame[frame.epoch == 2]
    assert stage1["user"].isna().all() and (stage1["total"] == stage1["id"]).all()
    assert stage2[list(LOSS_NAMES)].notna().all().all() and (stage2["total"] > stage2["id"]).all()
    assert not torch.equal(before, gen.tok_emb.weight)
