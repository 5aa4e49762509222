"""Training under DistributedDataParallel on the CPU (gloo): two torchrun processes against one.

``batch_size`` is the global batch, so 2 ranks with about b/2 rows each must
reproduce 1 process with b rows up to float reduction order. The toy run has
b = 5 (shards of 3 and 2 rows, weighted by their share) and a last batch of one
row per epoch (rank 1 gets none and contributes a zero-weighted row).

Measured on a 2-core CPU: toy MLP, largest parameter difference 6.0e-8 after
60 steps (:data:`TOLERANCE` 1e-5). SASRec through ``train_method``: the
gradients of one batch agree to 6e-8 (largest 0.57), but AdamW divides every
update by the gradient's running RMS, so the float noise of near-zero gradient
components moves a parameter by a fraction of lr = 1e-3 per step: 3.4e-5
after 12 steps (:data:`TOLERANCE_ADAM` 1e-4, 1% of 12 full steps).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

# The ranks import this module to run train_toy: the heavier imports of the
# train_method test sit in its functions.
from pmsid.train import ddp
from pmsid.train.loop import LoopConfig, train_loop
from pmsid.train.preemption import EXIT_CODE

from conftest import REPO, write_contract_dataset

N, BATCH, EPOCHS = 96, 5, 3  # 20 steps per epoch, the last of one row
STEPS = EPOCHS * 20
TOLERANCE = 1e-5  # max abs difference of any parameter, one process vs two (toy MLP)
TOLERANCE_ADAM = 1e-4  # the same for SASRec, whose tiny gradient components AdamW scales up


def train_toy(out_dir: str, step_seconds: float = 0.0) -> None:
    """Every rank (or the one process) trains the toy MLP; writes ``rank{r}.pt``:
    final and best states, the log and the row indices of every step."""
    out = Path(out_dir)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(N, 4, generator=gen), torch.randn(N, 1, generator=gen)
    seen = []

    def loss_fn(m, batch):
        xb, yb, rows = batch
        seen.append(rows.tolist())
        time.sleep(step_seconds)
        return ((m(xb) - yb) ** 2).mean()

    def validate(m):
        return -float(((m(x) - y) ** 2).mean())

    cfg = LoopConfig(lr=1e-2, batch_size=BATCH, max_epochs=EPOCHS, patience=EPOCHS, warmup_steps=3, progress=False)
    data = (x, y, torch.arange(N))
    result = train_loop(model, loss_fn, data, validate, cfg, out / "last.pt", "toy", seed=3, name="toy")
    payload = {"state": model.state_dict(), "best": result.best_state, "log": result.log, "seen": seen}
    torch.save(payload, out / f"rank{ddp.rank()}.pt")


def tests_on_path(monkeypatch) -> None:
    """The ranks unpickle functions of this module: put ``tests/`` on their path."""
    monkeypatch.setenv("PYTHONPATH", str(REPO / "tests"))
    monkeypatch.delenv("WORLD_SIZE", raising=False)


def load(path: Path) -> dict:
    return torch.load(path, weights_only=False)


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def one(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("one")
    train_toy(str(out))
    return load(out / "rank0.pt")


def train_toys(*out_dirs: str) -> None:
    """:func:`train_toy` into each folder in turn, in the same processes (one torchrun start)."""
    for out_dir in out_dirs:
        train_toy(out_dir)


def preempt_launcher(out: Path) -> tuple[int, str]:
    """The launcher in a child process, as in a Snakemake job, the ranks pausing 0.05 s per step
    (1 s per epoch); SIGTERM to it once the first checkpoint exists. Returns its exit code and output."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "workflow" / "scripts"), str(REPO / "tests")])}
    cmd = [sys.executable, __file__, str(out), "0.05"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 90
    while not (out / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    return proc.returncode, output


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """A 2-process run stopped by SIGTERM, then one torchrun start that resumes it and
    trains an uninterrupted 2-process run (three torchrun starts in the module, not five)."""
    stopped, fresh = tmp_path_factory.mktemp("stopped"), tmp_path_factory.mktemp("two")
    code, output = preempt_launcher(stopped)
    at_stop = load(stopped / "last.pt")["state"]
    stop_log = (stopped / "train.log").read_text()
    ranks_before = sorted(p.name for p in stopped.glob("rank*.pt"))
    with pytest.MonkeyPatch.context() as monkeypatch, log_file(fresh / "train.log"):
        tests_on_path(monkeypatch)
        ddp.launch(2, train_toys, str(stopped), str(fresh))
    return {
        "code": code,
        "output": output,
        "at_stop": at_stop,
        "stop_log": stop_log,
        "ranks_before": ranks_before,
        "resume_log": (fresh / "train.log").read_text(),
        "resumed": [load(stopped / f"rank{r}.pt") for r in (0, 1)],
        "two": [load(fresh / f"rank{r}.pt") for r in (0, 1)],
    }


@pytest.fixture(scope="module")
def two(runs) -> list[dict]:
    return runs["two"]


def test_two_processes_match_one_with_the_same_global_batch(one, two):
    rank0 = two[0]
    difference = max_difference(one["state"], rank0["state"])
    print(f"max abs parameter difference, 1 vs 2 processes, after {STEPS} steps: {difference:.2e}")
    assert difference < TOLERANCE
    assert max_difference(one["best"], rank0["best"]) < TOLERANCE
    assert list(rank0["log"]["step"]) == list(one["log"]["step"]) == [20, 40, 60]
    assert np.allclose(rank0["log"]["loss"], one["log"]["loss"], rtol=1e-6, atol=0)
    assert np.allclose(rank0["log"]["valid_ndcg10"], one["log"]["valid_ndcg10"], rtol=1e-6, atol=0)
    # Every rank ends with the same parameters and the same log (the metric is broadcast).
    assert max_difference(rank0["state"], two[1]["state"]) == 0
    assert rank0["log"].equals(two[1]["log"])


def test_each_rank_takes_its_share_of_every_global_batch(one, two):
    assert len(one["seen"]) == len(two[0]["seen"]) == len(two[1]["seen"]) == STEPS
    for step, (batch, r0, r1) in enumerate(zip(one["seen"], two[0]["seen"], two[1]["seen"])):
        if len(batch) == 1:  # the epoch's last batch: rank 1 repeats rank 0's row, at weight 0
            assert r0 == r1 == batch, step
        else:
            assert r0 == batch[0::2] and r1 == batch[1::2], step


def test_a_sigterm_to_the_launcher_stops_both_ranks_and_the_run_resumes(runs):
    """torchrun forwards the launcher's SIGTERM to the ranks; they stop at the same step,
    rank 0 checkpoints, and the resumed run ends exactly as the uninterrupted one."""
    assert runs["code"] == EXIT_CODE, runs["output"]
    state = runs["at_stop"]
    assert 20 <= state["step"] < STEPS and state["in_epoch"] is not None
    text = runs["stop_log"]  # rank 0 appends to the launcher's log file
    assert f"SIGTERM at epoch {state['epoch'] + 1} step {state['step']} (batch" in text
    assert "exiting to be requeued" in text and "forwarded to the 2 training processes" in text
    assert runs["ranks_before"] == []  # no rank finished
    assert f"resuming from epoch {state['epoch']} (step {state['step']}), inside epoch" in runs["resume_log"]
    for rank in (0, 1):
        assert max_difference(runs["resumed"][rank]["state"], runs["two"][rank]["state"]) == 0
        assert runs["resumed"][rank]["log"].equals(runs["two"][rank]["log"])


@contextlib.contextmanager
def log_file(path: Path):
    """The package's INFO records also go to ``path``, as a rule's log file (a FileHandler on the root logger)."""
    root = logging.getLogger()
    level = root.level
    path.parent.mkdir(parents=True, exist_ok=True)
    root.addHandler(logging.FileHandler(path, mode="w"))
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
            handler.close()
            root.removeHandler(handler)
        root.setLevel(level)


def write_dataset(root: Path) -> dict:
    """Twelve users over ten items, in the contract format."""
    rng = np.random.default_rng(0)
    return write_contract_dataset(root, [rng.permutation(10)[: rng.integers(5, 9)] for _ in range(12)], n_items=10)


def test_train_method_with_two_gpus_trains_sasrec_in_two_processes(tmp_path, monkeypatch):
    """The rule's path: ``gpus`` 2 launches torchrun; rank 0 writes the outputs, which
    match one process's. Prefix mode: every row's loss is one target's, so the
    per-rank means weighted by rows are the batch's mean."""
    from pmsid.data import contracts
    from pmsid.methods.run import train_method

    tests_on_path(monkeypatch)
    inputs = write_dataset(tmp_path)
    cfg = {"d_model": 16, "n_layers": 1, "n_heads": 1, "d_ff": 16, "dropout": 0.0, "batch_size": 7, "max_epochs": 2}
    cfg |= {"warmup_steps": 2, "train_mode": "prefix", "progress": False}
    models = {}
    for gpus in (0, 2):
        root = tmp_path / f"gpus{gpus}"
        outputs = {"model": str(root / "model.pt"), "log": str(root / "log.parquet"), "extras": str(root / "extras")}
        params = {
            "cfg": cfg, "protocol": {"history_cap": 5, "exclude_history": True}, "evaluation": {"ks": [5, 10]},
            "modalities": ["text"], "checkpoint": str(root / "ckpt" / "last.pt"), "device": "cpu",
            "deterministic": False,
        }  # fmt: skip
        with log_file(root / "train.log"):
            train_method("sasrec", "toy", 0, inputs, outputs, params, gpus=gpus)
        models[gpus] = torch.load(outputs["model"], weights_only=True)
        assert len(contracts.read_table(outputs["log"], contracts.TRAIN_LOG)) == 2
    assert "torchrun: 2 processes finished" in (tmp_path / "gpus2" / "train.log").read_text()
    assert "sasrec epoch 2/2" in (tmp_path / "gpus2" / "train.log").read_text()  # rank 0's lines
    difference = max_difference(models[0]["state_dict"], models[2]["state_dict"])
    print(f"sasrec: max abs parameter difference, 1 vs 2 processes: {difference:.2e}")
    assert difference < TOLERANCE_ADAM


if __name__ == "__main__":
    # The launcher of the SIGTERM test, as the train rule's script runs it.
    from test_ddp import train_toy as rank_function  # importable by name in the ranks

    from pmsid.logs import setup_logging

    out_dir, pause = sys.argv[1:]
    setup_logging(str(Path(out_dir) / "train.log"))
    ddp.launch(2, rank_function, out_dir, float(pause))
