"""Stopping a training run cleanly on SIGTERM, so that its requeued job resumes.

SLURM sends SIGTERM some seconds before it kills a job (at the time limit, on
``scancel``, on preemption before a requeue). :class:`StopSignals` turns that
signal (and Ctrl-C's SIGINT) into a flag the training loop reads at its next
optimizer-step boundary; the loop then writes its checkpoint and raises
:class:`Preempted`, a ``SystemExit`` with a nonzero code, so the job counts as
failed and its retry resumes from the checkpoint. A second SIGINT interrupts
at once (a step that hangs can still be stopped).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

# 128 + SIGTERM, what a shell reports for a process that SIGTERM killed: the
# job fails and its retry resumes from the checkpoint.
EXIT_CODE = 128 + signal.SIGTERM
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(SystemExit):
    """A run stopped by a signal after writing its checkpoint; exits with :data:`EXIT_CODE`.

    A ``SystemExit``, so no ``except Exception`` swallows it and the
    interpreter exits with the code and no traceback (the loop has logged why).
    """

    def __init__(self, message: str):
        super().__init__(EXIT_CODE)
        self.message = message

    def __str__(self) -> str:
        return self.message


class StopSignals:
    """A context manager: while inside, SIGTERM and SIGINT set :attr:`received`.

    ``on_signal(signum)``, if given, runs in the handler too (the launcher
    forwards the signal to its child with it). The previous handlers are
    restored on exit. Python handles signals in the main thread only: in any
    other thread nothing is installed and :attr:`installed` is False.
    """

    def __init__(self, on_signal: Callable[[int], None] | None = None):
        self.on_signal = on_signal
        self.received: signal.Signals | None = None
        self.installed = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            log.debug("not in the main thread: no SIGTERM handler, a signal stops the run without a checkpoint")
            return self
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        self.installed = True
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        self.installed = False

    @property
    def requested(self) -> bool:
        return self.received is not None

    def _handle(self, signum, frame) -> None:
        sig = signal.Signals(signum)
        if sig == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, without a checkpoint
        if self.received is None:
            self.received = sig
            again = " (Ctrl-C again stops at once, without a checkpoint)" if sig == signal.SIGINT else ""
            log.warning(
                "%s received: stopping after the optimizer step under way, with a checkpoint%s", sig.name, again
            )
        if self.on_signal is not None:
            self.on_signal(signum)
