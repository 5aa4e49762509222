"""SIGTERM during training (SLURM's warning before a kill or requeue): the loop
writes a checkpoint at the next optimizer step, exits with a nonzero code, and
the resumed run ends exactly where an uninterrupted one does.

The runs that receive a signal run in a subprocess (this file is also its
script), so a handler that failed to install could not kill pytest.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from pmsid.train.loop import LoopConfig, train_loop
from pmsid.train.preemption import EXIT_CODE, Preempted, StopSignals

from conftest import REPO

N, BATCH, EPOCHS = 80, 8, 3  # 10 steps per epoch, 30 in all


def train_toy(checkpoint: Path, out: Path | None, kill_at: int | None = None, step_seconds: float = 0.0):
    """A small MLP with dropout (so the restored RNG states matter), deterministic on the CPU.

    ``kill_at``: the loss of that step (counted in this process) raises
    SIGTERM in this process; ``step_seconds``: a pause per step, so that a
    signal from outside lands mid-run. Saves the final and best states and the
    log to ``out``.
    """
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(N, 4, generator=gen), torch.randn(N, 1, generator=gen)
    calls = [0]

    def loss_fn(m, batch):
        calls[0] += 1
        if calls[0] == kill_at:
            signal.raise_signal(signal.SIGTERM)
        time.sleep(step_seconds)
        xb, yb = batch
        return ((m(xb) - yb) ** 2).mean()

    def validate(m):
        return -float(((m(x) - y) ** 2).mean())

    cfg = LoopConfig(lr=1e-2, batch_size=BATCH, max_epochs=EPOCHS, patience=EPOCHS, warmup_steps=3, progress=False)
    result = train_loop(model, loss_fn, (x, y), validate, cfg, checkpoint, "toy-run", seed=3, name="toy")
    if out is not None:
        torch.save({"state": model.state_dict(), "best": result.best_state, "log": result.log}, out)
    return result


def run_child(checkpoint: Path, out: Path, kill_at: int | None = None, step_seconds: float = 0.0):
    """This file as a script: ``train_toy`` in a fresh process, one torch thread."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "workflow" / "scripts"), str(REPO / "tests")])}
    cmd = [sys.executable, __file__, str(checkpoint), str(out), str(kill_at or 0), str(step_seconds)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    output, _ = proc.communicate(timeout=120)
    return proc.returncode, output


def load(path: Path) -> dict:
    return torch.load(path, weights_only=False)


def assert_same_run(a: dict, b: dict) -> None:
    """Bit for bit: every tensor of the final and best states, and the log."""
    for key in ("state", "best"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    assert a["log"].equals(b["log"]), (a["log"], b["log"])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("uninterrupted")
    code, output = finish(run_child(tmp / "last.pt", tmp / "out.pt"))
    assert code == 0, output
    return load(tmp / "out.pt")


@pytest.mark.parametrize(
    "kill_at, epoch, batches",
    [(13, 2, 3), (10, 1, 10)],  # mid-epoch 2; the last step of epoch 1, before its validation
)
def test_sigterm_checkpoints_at_the_next_step_and_the_resumed_run_is_bit_identical(
    tmp_path, uninterrupted, kill_at, epoch, batches
):
    checkpoint, out = tmp_path / "last.pt", tmp_path / "out.pt"
    code, output = finish(run_child(checkpoint, out, kill_at=kill_at))
    assert code == EXIT_CODE, output
    assert f"SIGTERM at epoch {epoch} step {kill_at} (batch {batches} of the epoch): " in output
    assert f"checkpoint written to {checkpoint}, exiting to be requeued" in output
    assert not out.exists()  # no result: the job fails and is retried
    state = load(checkpoint)["state"]
    assert state["step"] == kill_at and state["epoch"] == epoch - 1
    assert state["in_epoch"]["epoch"] == epoch and state["in_epoch"]["batches"] == batches
    assert state["in_epoch"]["count"] == batches * BATCH

    code, output = finish(run_child(checkpoint, out))
    assert code == 0, output
    assert f"resuming from epoch {epoch - 1} (step {kill_at}), inside epoch {epoch} after its batch {batches}" in output
    assert_same_run(load(out), uninterrupted)


def test_a_sigterm_from_outside_at_any_moment_resumes_to_the_same_end(tmp_path, uninterrupted):
    """SIGTERM sent by another process once the first checkpoint exists, wherever the run is then."""
    checkpoint, out = tmp_path / "last.pt", tmp_path / "out.pt"
    proc = run_child(checkpoint, out, step_seconds=0.03)  # about 0.3 s per epoch
    deadline = time.monotonic() + 60
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    code, output = finish(proc)
    assert code == EXIT_CODE, output
    assert "exiting to be requeued" in output
    assert load(checkpoint)["state"]["step"] < EPOCHS * N // BATCH

    code, output = finish(run_child(checkpoint, out))
    assert code == 0, output
    assert "resuming from epoch" in output
    assert_same_run(load(out), uninterrupted)


def test_the_handlers_are_the_loops_only_while_it_runs(tmp_path):
    """In this process: a signal raised only once the loop's handler is checked to be in place."""
    seen = []

    def custom(signum, frame):
        seen.append(signum)

    previous = signal.signal(signal.SIGTERM, custom)
    try:
        sigint = signal.getsignal(signal.SIGINT)
        model = nn.Linear(1, 1)
        calls = [0]

        def loss_fn(m, batch):
            calls[0] += 1
            handler = signal.getsignal(signal.SIGTERM)
            assert isinstance(getattr(handler, "__self__", None), StopSignals), handler
            if calls[0] == 2:
                signal.raise_signal(signal.SIGTERM)
            return (m(batch[0]) ** 2).mean()

        cfg = LoopConfig(batch_size=4, max_epochs=2, patience=2, warmup_steps=0, progress=False)
        data = (torch.arange(12, dtype=torch.float32)[:, None],)
        with pytest.raises(Preempted) as stopped:
            train_loop(model, loss_fn, data, lambda m: 0.0, cfg, tmp_path / "c.pt", "h", seed=0, name="t")
        assert stopped.value.code == EXIT_CODE and "SIGTERM at epoch 1 step 2" in str(stopped.value)
        assert signal.getsignal(signal.SIGTERM) is custom and signal.getsignal(signal.SIGINT) is sigint
        assert seen == []  # the loop's handler took it, not the previous one

        result = train_loop(model, loss_fn, data, lambda m: 0.0, cfg, tmp_path / "c.pt", "h", seed=0, name="t")
        assert list(result.log["step"]) == [3, 6]
        assert signal.getsignal(signal.SIGTERM) is custom
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_outside_the_main_thread_the_loop_runs_without_a_handler(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    results = []

    def work():
        results.append(train_toy(tmp_path / "c.pt", None))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=120)
    assert len(results) == 1 and len(results[0].log) == EPOCHS
    assert signal.getsignal(signal.SIGTERM) is before


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    ckpt, result_path, kill, pause = sys.argv[1:]
    train_toy(Path(ckpt), Path(result_path), int(kill) or None, float(pause))
