"""Multi-GPU training: torchrun processes running the shared loop under DistributedDataParallel.

A job that asks for several GPUs (the train rule's resource ``gpu``) calls
:func:`launch`, which writes the call to run (a picklable function and its
arguments) to a temporary file and starts

    python -m torch.distributed.run --standalone --nproc-per-node N -m pmsid.train.ddp <job file>

Every one of the N processes (ranks) unpickles the call and runs it on its own
GPU (``LOCAL_RANK``); the training loop (:func:`pmsid.train.loop.train_loop`)
sees the process group through :func:`context` and wraps the model in
``torch.nn.parallel.DistributedDataParallel``. The backend follows the
training device: nccl on CUDA, gloo on the CPU (which the tests use). One
process, or ``WORLD_SIZE`` 1, is the plain single-process loop.

Signals: the launcher forwards SIGTERM/SIGINT to torchrun, which forwards them
to the ranks and waits ``TORCH_ELASTIC_SHUTDOWN_TIMEOUT`` seconds (30 by
default) before killing them; the ranks agree on the stop at the next step,
rank 0 writes the checkpoint and every rank exits with
:data:`pmsid.train.preemption.EXIT_CODE`; the launcher then raises
:class:`~pmsid.train.preemption.Preempted`.

Logging: rank 0 appends its records to the job's log file (the parent's
logging file handlers are closed while the ranks run and reopened in append
mode afterwards); other ranks log warnings to stderr only.
"""

from __future__ import annotations

import datetime
import logging
import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pmsid.logs import FORMAT
from pmsid.train.preemption import Preempted, StopSignals

log = logging.getLogger(__name__)

# Ranks other than 0 wait in a collective while rank 0 validates (a beam search
# can take many minutes on a large catalogue): a generous collective timeout
# instead of the default 10 minutes.
TIMEOUT = datetime.timedelta(hours=2)
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # workflow/scripts, which holds pmsid


@dataclass(frozen=True)
class Context:
    """This process's place in the process group: ``world`` processes, this one ``rank``."""

    world: int = 1
    rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def rank() -> int:
    """This process's global rank: ``RANK`` under torchrun with ``WORLD_SIZE`` > 1, else 0."""
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return 0
    return int(os.environ.get("RANK", 0))


def context(device) -> Context:
    """The process group of a torchrun rank (``WORLD_SIZE`` > 1), initialized here for
    ``device`` (nccl on CUDA, gloo on the CPU) if it is not yet; else one process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Context(dist.get_world_size(), dist.get_rank())
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world <= 1:
        return Context()
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE is {world} but this torch build has no torch.distributed; run one process")
    backend = "nccl" if device.type == "cuda" else "gloo"
    # MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE come from torchrun (env://).
    dist.init_process_group(backend, timeout=TIMEOUT)
    return Context(dist.get_world_size(), dist.get_rank())


def launch(nproc: int, function: Callable, *args, shutdown_timeout: int | None = None) -> None:
    """Run ``function(*args)`` in ``nproc`` torchrun processes on this node; return when all finish.

    ``function`` and ``args`` must be picklable (a module-level function of an
    importable module). The ranks share the torch threads this process has.
    Raises :class:`~pmsid.train.preemption.Preempted` when a SIGTERM/SIGINT
    reached this process (it is forwarded to the ranks, which checkpoint), and
    RuntimeError when a rank failed (its traceback is in the log).
    """
    import torch

    if nproc < 2:
        raise ValueError(f"launch needs nproc >= 2, got {nproc}; call the function directly for one process")
    if torch.cuda.is_available() and torch.cuda.device_count() < nproc:
        raise ValueError(
            f"{nproc} processes asked for but {torch.cuda.device_count()} GPU(s) visible; "
            "lower the rule's gpu resource or check CUDA_VISIBLE_DEVICES"
        )
    threads = max(1, torch.get_num_threads() // nproc)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH")) if p)
    if shutdown_timeout is not None:
        env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] = str(shutdown_timeout)
    log_files = _release_log_files()
    running: list[subprocess.Popen] = []  # torchrun, once started

    def forward(signum: int) -> None:
        for proc in running:
            proc.send_signal(signum)

    code = None
    try:
        with (
            tempfile.TemporaryDirectory(prefix="pmsid-ddp-") as tmp,
            StopSignals(on_signal=forward) as stop,
        ):
            job = Path(tmp) / "job.pkl"
            call = {"function": function, "args": args, "threads": threads, "log_files": log_files}
            job.write_bytes(pickle.dumps(call))
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
            cmd += ["-m", "pmsid.train.ddp", str(job)]
            if not stop.requested:
                # A session of its own: a signal to this job's process group
                # reaches torchrun once, through forward().
                running.append(subprocess.Popen(cmd, env=env, start_new_session=True))
                try:
                    code = running[0].wait()
                finally:
                    if running[0].poll() is None:  # interrupted here (a second Ctrl-C): stop torchrun too
                        running[0].terminate()
                        running[0].wait(timeout=60)
    finally:
        _reopen_log_files(log_files)
    if stop.requested:
        message = f"{stop.received.name} forwarded to the {nproc} training processes (torchrun exit code {code})"
        log.warning(message)
        raise Preempted(message)
    if code != 0:
        raise RuntimeError(
            f"torchrun with {nproc} processes exited with code {code}; the failing rank's error is above"
        )
    log.info("torchrun: %d processes finished", nproc)


def _release_log_files() -> list[str]:
    """Close the root logger's file handlers (rank 0 appends to the files) and name them."""
    root = logging.getLogger()
    files = []
    for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        handler.close()
        root.removeHandler(handler)
        files.append(handler.baseFilename)
    return files


def _reopen_log_files(files: list[str]) -> None:
    root = logging.getLogger()
    for path in files:
        handler = logging.FileHandler(path, mode="a")
        handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(handler)


def _setup_rank_logging(rank_: int, log_files: list[str]) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if rank_ == 0:
        handlers += [logging.FileHandler(path, mode="a") for path in log_files]
    fmt = FORMAT.replace("%(name)s", f"[rank {rank_}] %(name)s")
    logging.basicConfig(
        level=logging.INFO if rank_ == 0 else logging.WARNING, format=fmt, handlers=handlers, force=True
    )
    logging.captureWarnings(True)


def main(argv: list[str] | None = None) -> None:
    """One torchrun rank: run the pickled call of :func:`launch` on this rank's GPU."""
    import torch
    import torch.distributed as dist

    (job,) = sys.argv[1:] if argv is None else argv
    call = pickle.loads(Path(job).read_bytes())
    rank_ = rank()
    _setup_rank_logging(rank_, call["log_files"])
    torch.set_num_threads(call["threads"])
    if torch.cuda.is_available():
        # "cuda" without an index now means this rank's GPU (pmsid.runtime.resolve_device).
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    try:
        call["function"](*call["args"])
    except Exception:
        log.critical("rank %d failed", rank_, exc_info=True)
        raise
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
