"""TIGER under personalized IDs (PMAT): P ID tables, each user decoding under its own.

The tables share one code space, so one model serves them all; what differs
per user is which item an ID names. The checks: one table given as (1, N, D)
is exactly the (N, D) model; per-row tables equal rows run alone; beam search
over several tables maps each user's IDs to items through that user's table
(against brute force, and against a mirror user whose table is a permutation
of another's); tries pad to the model's level sizes; bad ``user_tables`` fail
naming the argument; a P = 2 run trains and evaluates end to end.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch
from test_beam import random_codes, random_histories
from test_beam import random_model as _random_model

from pmsid.data import contracts
from pmsid.data.sequences import Sequences, training_samples
from pmsid.models.beam import Trie, beam_search, beam_search_tables, brute_force_topk
from pmsid.models.generator import TigerGenerator
from pmsid.train import recipes as api

from conftest import evaluate_tiger

torch.set_num_threads(1)

N_ITEMS = 12
N_USERS = 30
KS = [1, 5, 10]
CFG = {"d_model": 32, "n_heads": 2, "d_ff": 64, "batch_size": 32, "warmup_steps": 10, "lr": 3e-3}
CFG.update({"progress": False, "ks": KS, "history_cap": 6, "n_encoder_layers": 1, "n_decoder_layers": 1})
CFG.update({"dropout": 0.1, "beam_size": 12})


# ------------------------------------------------------------------ helpers
def cyclic_sequences():
    """User u walks the catalogue in a cycle from item u: the next item is always (last + 1) mod N."""
    items = [np.array([(u + t) % N_ITEMS for t in range(8 + u % 4)]) for u in range(N_USERS)]
    return Sequences(items, N_ITEMS)


def grid_codes():
    """3-token IDs (2 levels + dedup) for the 12 items."""
    return np.array([[i // 4, i % 4, 0] for i in range(N_ITEMS)])


def two_tables(seed=0):
    """Table 0 the grid IDs; table 1 the same ID set dealt to the items in another order."""
    perm = np.random.default_rng(seed).permutation(N_ITEMS)
    table0 = grid_codes()
    return np.stack([table0, table0[perm]]), perm


def random_model(codes, cap, seed, scale=0.5):
    """test_beam's untrained generator, with the larger weight scale these tests use."""
    return _random_model(codes, cap, seed, scale)


def run_paths(tmp_path, tag):
    return [tmp_path / f"{tag}_{name}" for name in ("model.pt", "log.parquet", "ckpt.pt")]


def timing_free(metrics):
    return metrics[metrics["metric"] != "beam_seconds_per_user"].reset_index(drop=True)


def metric(metrics, split, name):
    return float(metrics.set_index(["split", "metric"]).loc[(split, name), "value"])


# ------------------------------------------------------------- one table
def test_one_table_as_3d_equals_the_2d_codes_bit_for_bit(tmp_path):
    seqs, run = cyclic_sequences(), {**CFG, "max_epochs": 2, "patience": 2}
    out = {}
    for tag, codes in (("flat", grid_codes()), ("stacked", grid_codes()[None])):
        paths = run_paths(tmp_path, tag)
        log = api.train_tiger(seqs, codes, run, *paths, seed=0, device="cpu")
        per_user, metrics = evaluate_tiger(paths[0], seqs, codes, KS, 12, False, "cpu")
        out[tag] = log, per_user, timing_free(metrics), torch.load(paths[0], weights_only=True)
    (log_a, users_a, metrics_a, saved_a), (log_b, users_b, metrics_b, saved_b) = out.values()
    pd.testing.assert_frame_equal(log_a, log_b)
    pd.testing.assert_frame_equal(users_a, users_b)
    pd.testing.assert_frame_equal(metrics_a, metrics_b)
    assert saved_a["state_dict"].keys() == saved_b["state_dict"].keys()
    for key, value in saved_a["state_dict"].items():
        assert torch.equal(value, saved_b["state_dict"][key]), key
    assert saved_a["codes"].shape == (1, N_ITEMS, 3)
    assert saved_a["user_tables"].tolist() == [0] * N_USERS


def test_a_model_saved_with_2d_codes_still_evaluates(tmp_path):
    """Models saved before personalized IDs hold codes (N, D) in the payload and the state dict."""
    seqs, paths = cyclic_sequences(), run_paths(tmp_path, "new")
    api.train_tiger(seqs, grid_codes(), {**CFG, "max_epochs": 2}, *paths, seed=0, device="cpu")
    _, metrics_new = evaluate_tiger(paths[0], seqs, grid_codes(), KS, 12, False, "cpu")
    saved = torch.load(paths[0], weights_only=True)
    saved["codes"] = saved["codes"][0]
    saved["state_dict"]["codes"] = saved["state_dict"]["codes"][0]
    del saved["user_tables"]
    old_path = tmp_path / "old_model.pt"
    torch.save(saved, old_path)
    _, metrics_old = evaluate_tiger(old_path, seqs, grid_codes(), KS, 12, False, "cpu")
    pd.testing.assert_frame_equal(timing_free(metrics_new), timing_free(metrics_old))


# ------------------------------------------------------- per-row tables
@torch.no_grad()
def test_per_row_tables_equal_each_row_alone():
    codes = np.stack([random_codes(20, [3, 4, 3], seed=s) for s in (0, 1, 2)])  # P = 3
    model = random_model(codes, cap=5, seed=0)
    hist = torch.from_numpy(random_histories(7, 20, cap=5, seed=0))
    targets = torch.arange(7) * 2
    table = torch.tensor([0, 1, 2, 1, 0, 2, 1])
    memory, pad = model.encode(hist, table)
    losses = []
    for n in range(len(hist)):
        mem_n, pad_n = model.encode(hist[n : n + 1], int(table[n]))
        torch.testing.assert_close(memory[n : n + 1], mem_n, rtol=0, atol=1e-5)
        assert torch.equal(pad[n : n + 1], pad_n)
        losses.append(model.loss(hist[n : n + 1], targets[n : n + 1], int(table[n])))
    # Each row's loss is a mean over its D tokens, so the batch loss is the mean of the rows'.
    torch.testing.assert_close(model.loss(hist, targets, table), torch.stack(losses).mean())
    # The table matters (so the checks above are not vacuous), and None is table 0.
    assert (model.encode(hist, 1)[0] - model.encode(hist, 0)[0]).abs().max() > 1e-3
    assert torch.equal(model.encode(hist)[0], model.encode(hist, torch.zeros(7, dtype=torch.long))[0])
    assert model.level_sizes == [int(k) for k in codes.max(axis=(0, 1)) + 1]
    assert model.n_tables == 3 and model.codes.shape == (3, 20, 4)


def test_bad_table_argument_fails_naming_table():
    model = random_model(np.stack([grid_codes(), grid_codes()]), cap=4, seed=0)
    hist = torch.zeros(3, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"table must be in \[0, 2\)"):
        model.encode(hist, 2)
    with pytest.raises(ValueError, match=r"table must be None, an int or an integer tensor of shape \(3,\)"):
        model.encode(hist, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="table must hold indices"):
        model.loss(hist, torch.zeros(3, dtype=torch.long), torch.tensor([0, 1, 5]))


# ---------------------------------------------------- beam over tables
@pytest.mark.parametrize("exclude", [False, True])
def test_beam_over_tables_equals_brute_force_in_each_users_table(exclude):
    base = random_codes(14, [2, 3, 3], seed=0)
    perm = np.random.default_rng(1).permutation(14)
    other = random_codes(14, [2, 3, 2], seed=5)  # smaller levels: its trie must be padded
    codes = np.stack([base, base[perm], other])  # table 1: table 0's IDs dealt to other items
    model = random_model(codes, cap=4, seed=0)
    hist = random_histories(12, 14, cap=4, seed=0)
    user_tables = np.array([0, 1, 2, 1, 0, 2, 2, 1, 0, 0, 1, 2])
    excluded = hist if exclude else None
    tries = [Trie(table, model.level_sizes) for table in codes]
    beam = 14  # the beam covers the trie: search is exact
    got = beam_search_tables(model, tries, hist, user_tables, beam, excluded, batch_size=3)
    assert got.n_invalid == 0
    for u, p in enumerate(user_tables):
        ex = None if excluded is None else excluded[u : u + 1]
        want = brute_force_topk(model, codes[p], hist[u : u + 1], beam, ex, table=int(p))
        np.testing.assert_array_equal(got.items[u], want.items[0])
        np.testing.assert_allclose(got.scores[u], want.scores[0], rtol=1e-4, atol=1e-4)
    # Ranking every user under table 0 instead gives other lists: the check above has teeth.
    wrong = [brute_force_topk(model, codes[0], hist[u : u + 1], beam, table=0).items[0] for u in range(len(hist))]
    assert any(not np.array_equal(got.items[u], wrong[u]) for u in np.flatnonzero(user_tables > 0))


@torch.no_grad()
def test_generated_ids_map_to_items_through_the_users_table():
    """A table-1 user whose history has table-0 user's tokens gets the same IDs, hence permuted items."""
    codes, perm = two_tables(seed=3)
    inverse = np.argsort(perm)  # codes[1][inverse[i]] == codes[0][i]
    model = random_model(codes, cap=5, seed=1)
    hist0 = random_histories(6, N_ITEMS, cap=5, seed=2)
    hist1 = np.where(hist0 >= 0, inverse[hist0.clip(min=0)], -1)  # same token sequences under table 1
    hist = np.concatenate([hist0, hist1])
    user_tables = np.r_[np.zeros(6, np.int64), np.ones(6, np.int64)]
    tries = [Trie(table, model.level_sizes) for table in codes]
    got = beam_search_tables(model, tries, hist, user_tables, beam_size=5)
    items0, items1 = got.items[:6], got.items[6:]
    np.testing.assert_allclose(got.scores[:6], got.scores[6:], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(items1, inverse[items0])
    assert (items1 != items0).any()  # the permutation moves items: one table for all would fail
    # Each returned item's ID in its user's table scores what the beam found for it.
    memory, pad = model.encode(torch.from_numpy(hist), torch.from_numpy(user_tables))
    for slot in range(5):
        ids = model.codes[torch.from_numpy(user_tables), torch.from_numpy(got.items[:, slot])]  # (U, D)
        torch.testing.assert_close(
            model.score_ids(memory, pad, ids), torch.from_numpy(got.scores[:, slot]), rtol=1e-4, atol=1e-4
        )


def test_beam_search_refuses_a_trie_of_another_table_or_size():
    codes = np.stack([random_codes(14, [2, 3, 3], seed=0), random_codes(14, [2, 3, 2], seed=5)])
    model = random_model(codes, cap=4, seed=0)
    hist = random_histories(3, 14, cap=4, seed=0)
    with pytest.raises(ValueError, match="level_sizes=model.level_sizes"):
        beam_search(model, Trie(codes[1]), hist, 4, table=1)  # unpadded: smaller dedup level
    with pytest.raises(ValueError, match="ID table 0"):
        beam_search(model, Trie(codes[1], model.level_sizes), hist, 4, table=0)
    tries = [Trie(table, model.level_sizes) for table in codes]
    with pytest.raises(ValueError, match="user_tables"):
        beam_search_tables(model, tries, hist, np.array([0, 1]), 4)
    with pytest.raises(ValueError, match="tries"):
        beam_search_tables(model, tries[:1], hist, np.zeros(3, np.int64), 4)


# ------------------------------------------------------------------ trie
def test_trie_pads_to_level_sizes_and_refuses_smaller_ones():
    codes = random_codes(20, [3, 4, 3], seed=1)
    plain = Trie(codes)
    sizes = [k + 2 for k in plain.level_sizes]
    padded = Trie(codes, level_sizes=sizes)
    assert padded.level_sizes == sizes
    for depth, (a, b) in enumerate(zip(plain.child, padded.child)):
        k = plain.level_sizes[depth]
        assert b.shape == (a.shape[0], sizes[depth])
        assert torch.equal(b[:, :k], a)  # the real codes lead where they did
        assert (b[:, k:] == -1).all()  # the padding leads nowhere
    too_small = list(plain.level_sizes)
    too_small[1] -= 1
    with pytest.raises(ValueError, match=r"level_sizes .* too small .* level\(s\) \[1\]"):
        Trie(codes, level_sizes=too_small)
    with pytest.raises(ValueError, match="level_sizes must give one size per ID level"):
        Trie(codes, level_sizes=sizes[:-1])


# -------------------------------------------------------- api validation
@pytest.mark.parametrize(
    "user_tables, message",
    [
        (None, "user_tables is required"),
        (np.zeros(N_USERS - 1, np.int64), r"user_tables must be an integer array .* shape \(30,\)"),
        (np.full(N_USERS, 0.0), "user_tables must be an integer array"),
        (np.full(N_USERS, 2), r"user_tables must be in \[0, 2\)"),
        (np.full(N_USERS, -1), r"user_tables must be in \[0, 2\)"),
        ({"valid": np.zeros(N_USERS, np.int64)}, "user_tables as a dict must have the keys"),
        ({"valid": np.zeros(N_USERS, np.int64), "test": np.full(N_USERS, 3)}, r"user_tables must be in \[0, 2\)"),
    ],
)
def test_bad_user_tables_fail_naming_the_argument(tmp_path, user_tables, message):
    seqs, (codes, _) = cyclic_sequences(), two_tables()
    if not isinstance(user_tables, dict):
        with pytest.raises(ValueError, match=message):
            api.train_tiger(seqs, codes, CFG, *run_paths(tmp_path, "t"), seed=0, device="cpu", user_tables=user_tables)
    # evaluate checks its arguments before it opens the model file.
    with pytest.raises(ValueError, match=message):
        evaluate_tiger(tmp_path / "none.pt", seqs, codes, KS, 12, False, "cpu", user_tables=user_tables)


def test_bad_codes_fail_naming_codes(tmp_path):
    seqs, (codes, _) = cyclic_sequences(), two_tables()
    tables = np.arange(N_USERS) % 2
    for bad in (codes[0, :, 0], codes[None], codes[:, :-1]):
        with pytest.raises(ValueError, match=r"codes must be \(n_items=12, D\) or \(P, n_items=12, D\)"):
            api.train_tiger(seqs, bad, CFG, *run_paths(tmp_path, "c"), seed=0, device="cpu", user_tables=tables)
    duplicated = codes.copy()
    duplicated[1, 3] = duplicated[1, 4]
    with pytest.raises(ValueError, match="codes, ID table 1: .*1 duplicate IDs"):
        api.train_tiger(seqs, duplicated, CFG, *run_paths(tmp_path, "d"), seed=0, device="cpu", user_tables=tables)


# ------------------------------------------------------------ end to end
def test_two_tables_train_and_evaluate_with_tables_per_split(tmp_path, caplog):
    seqs, (codes, _) = cyclic_sequences(), two_tables(seed=0)
    train_tables = np.arange(N_USERS) % 2
    test_tables = (np.arange(N_USERS) % 3 == 0).astype(np.int64)  # drift moves some users at test
    split_tables = {"valid": train_tables, "test": test_tables}
    paths = run_paths(tmp_path, "p2")
    cfg = {**CFG, "max_epochs": 20, "patience": 20}
    log = api.train_tiger(seqs, codes, cfg, *paths, seed=0, device="cpu", user_tables=train_tables)
    with caplog.at_level(logging.INFO, logger="pmsid"):
        per_user, metrics = evaluate_tiger(paths[0], seqs, codes, KS, 12, False, "cpu", user_tables=split_tables)
    assert "beam search valid: users per ID table [15, 15]" in caplog.text
    assert "beam search test: users per ID table [20, 10]" in caplog.text
    contracts.write_table(per_user, tmp_path / "per_user.parquet", contracts.PER_USER)
    contracts.write_table(metrics, tmp_path / "metrics.parquet", contracts.METRICS)
    for split in api.SPLITS:
        assert metric(metrics, split, "invalid_id_rate") == 0.0
        assert metric(metrics, split, "n_users") == N_USERS
    assert log["loss"].iloc[-1] < log["loss"].iloc[0]
    # Random ranking gives Recall@1 = 1/12 and Recall@5 = 5/12: the model learned the
    # cycle in both tables (half the data each, so less sharply than with one table).
    for split in api.SPLITS:
        assert metric(metrics, split, "Recall@1") >= 0.4
        assert metric(metrics, split, "Recall@5") >= 0.8
    saved = torch.load(paths[0], weights_only=True)
    assert saved["user_tables"].tolist() == train_tables.tolist()
    assert torch.equal(saved["codes"], torch.from_numpy(codes))
    # Each split decodes under its own tables: its rows equal a run with those tables for both splits.
    for split, tables in split_tables.items():
        alone, _ = evaluate_tiger(paths[0], seqs, codes, KS, 12, False, "cpu", user_tables=tables)
        pd.testing.assert_frame_equal(
            per_user[per_user["split"] == split].reset_index(drop=True),
            alone[alone["split"] == split].reset_index(drop=True),
        )


def test_training_rows_carry_their_users_table(tmp_path, monkeypatch):
    """Over one epoch the loss sees every training prefix once, with its user's table."""
    seqs, (codes, _) = cyclic_sequences(), two_tables()
    tables = (np.arange(N_USERS) % 3 == 1).astype(np.int64)
    seen = []
    real_loss = TigerGenerator.loss

    def recording_loss(model, history, target_items, table=None):
        seen.extend(zip(map(tuple, history.tolist()), target_items.tolist(), table.tolist()))
        return real_loss(model, history, target_items, table)

    monkeypatch.setattr(TigerGenerator, "loss", recording_loss)
    cfg = {**CFG, "max_epochs": 1}
    api.train_tiger(seqs, codes, cfg, *run_paths(tmp_path, "rows"), seed=0, device="cpu", user_tables=tables)
    users, hist, targets = training_samples(seqs, CFG["history_cap"])
    want = list(zip(map(tuple, hist.tolist()), targets.tolist(), tables[users].tolist()))
    assert sorted(seen) == sorted(want)
    assert {t for _, _, t in seen} == {0, 1}


def test_checkpoint_under_other_user_tables_is_not_resumed(tmp_path, caplog):
    seqs, (codes, _) = cyclic_sequences(), two_tables()
    tables = np.arange(N_USERS) % 2
    cfg = {**CFG, "max_epochs": 1}
    api.train_tiger(seqs, codes, cfg, *run_paths(tmp_path, "r"), seed=0, device="cpu", user_tables=tables)
    with caplog.at_level(logging.INFO, logger="pmsid"):
        api.train_tiger(seqs, codes, cfg, *run_paths(tmp_path, "r"), seed=0, device="cpu", user_tables=1 - tables)
    assert "another configuration" in caplog.text
    assert "resuming" not in caplog.text


def test_prefix_tables_give_each_training_row_its_own_table(tmp_path, monkeypatch):
    seqs, (codes, _) = cyclic_sequences(), two_tables(seed=0)
    users, _, _ = training_samples(seqs, CFG["history_cap"])
    user_tables = np.arange(N_USERS) % 2
    prefix_tables = np.arange(len(users)) % 2  # alternates within every user
    seen = {}

    def capture(model, loss_fn, data, *args, **kwargs):
        seen["tables"] = data[2].numpy()
        raise RuntimeError("stop after building the rows")

    monkeypatch.setattr(api, "train_loop", capture)
    for tables, expected in ((None, user_tables[users]), (prefix_tables, prefix_tables)):
        with pytest.raises(RuntimeError, match="stop after"):
            api.train_tiger(seqs, codes, CFG, *run_paths(tmp_path, "pt"), seed=0, device="cpu",
                            user_tables=user_tables, prefix_tables=tables)  # fmt: skip
        np.testing.assert_array_equal(seen["tables"], expected)
    with pytest.raises(ValueError, match=r"prefix_tables must be an integer array .* one entry per training prefix"):
        api.train_tiger(seqs, codes, CFG, *run_paths(tmp_path, "pt"), seed=0, device="cpu",
                        user_tables=user_tables, prefix_tables=prefix_tables[1:])  # fmt: skip
    with pytest.raises(ValueError, match=r"prefix_tables must be in \[0, 2\)"):
        api.train_tiger(seqs, codes, CFG, *run_paths(tmp_path, "pt"), seed=0, device="cpu",
                        user_tables=user_tables, prefix_tables=prefix_tables + 1)  # fmt: skip


def test_the_table_token_tells_the_encoder_which_table_the_row_decodes_in(tmp_path):
    codes, _ = two_tables(seed=0)
    hist = torch.from_numpy(random_histories(4, N_ITEMS, 6, seed=1))
    plain = TigerGenerator(codes, history_cap=6, d_model=16, n_heads=2, d_ff=32, encoder_tokens="item").eval()
    token = TigerGenerator(codes, history_cap=6, d_model=16, n_heads=2, d_ff=32, encoder_tokens="item",
                           table_token=True).eval()  # fmt: skip
    assert plain.table_emb is None and tuple(token.table_emb.weight.shape) == (2, 16)
    memory, pad = token.encode(hist, torch.tensor([0, 1, 0, 1]))
    base, base_pad = plain.encode(hist, torch.tensor([0, 1, 0, 1]))
    assert memory.shape[1] == base.shape[1] + 1 and not pad[:, 0].any()  # one more position, never padding
    # Same history read under the same table: only the table token differs between two rows' inputs.
    same_codes = np.stack([codes[0], codes[0]])  # two tables with identical IDs
    twin = TigerGenerator(same_codes, history_cap=6, d_model=16, n_heads=2, d_ff=32, encoder_tokens="item",
                          table_token=True).eval()  # fmt: skip
    rows = hist[:1].expand(2, -1)
    out, _ = twin.encode(rows, torch.tensor([0, 1]))
    assert not torch.allclose(out[0], out[1])
    no_token = TigerGenerator(same_codes, history_cap=6, d_model=16, n_heads=2, d_ff=32, encoder_tokens="item").eval()
    out, _ = no_token.encode(rows, torch.tensor([0, 1]))
    torch.testing.assert_close(out[0], out[1])
    # The token is trained: L_ID's gradient reaches the embedding of every table used.
    token.train()
    token.loss(hist, torch.tensor([1, 2, 3, 4]), torch.tensor([0, 1, 0, 1])).backward()
    assert (token.table_emb.weight.grad.abs().sum(dim=1) > 0).all()
    # Beam search runs under it (an int table per batch, as beam_search_tables passes).
    tries = api.build_tries(codes, token.level_sizes, torch.device("cpu"))
    got = beam_search_tables(token.eval(), tries, hist.numpy(), np.array([0, 1, 0, 1]), beam_size=5)
    assert got.n_invalid == 0
    with pytest.raises(ValueError, match="table_token must be true or false"):
        TigerGenerator(codes, history_cap=6, table_token="yes")
