"""Logging set-up for the workflow's scripts.

Each rule has a ``log:`` file; :func:`setup_logging` sends the package's log
records (and warnings, and an uncaught exception's traceback) there and to
stderr, so the log says what happened even when the job fails.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(log_path: str | None = None, level: int = logging.INFO) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(level=level, format=FORMAT, handlers=handlers, force=True)
    logging.captureWarnings(True)

    def log_uncaught(exc_type, exc, tb):
        logging.getLogger("pmsid").critical("job failed", exc_info=(exc_type, exc, tb))

    sys.excepthook = log_uncaught


def set_threads(threads: int) -> None:
    """Use the rule's thread count for torch's intra-op pool."""
    import torch

    torch.set_num_threads(max(1, int(threads)))
