"""Batched, resumable encoding shared by the text and image encoders.

Two pieces of machinery every large extraction needs:

- :func:`encode_in_batches`: runs an encoder over items in batches and halves
  the batch size when the GPU runs out of memory, retrying the same items.
- :func:`encode_resumable`: splits the work into chunks that are written to
  ``<out_path>.partial/`` as they finish, so a job killed after hours resumes
  where it stopped instead of starting again. The folder sits beside the
  declared output, not in it: Snakemake deletes a failed job's outputs, and
  the chunks must survive exactly that.

Chunk boundaries are whole batches of the configured size, so a chunked run
groups the items into the same batches as a single pass would, and gives the
same bits.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

log = logging.getLogger("pmsid.features.batching")

DEFAULT_CHUNK_ITEMS = 4096
DTYPES = ("auto", "float32", "float16", "bfloat16")
MANIFEST = "manifest.json"


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``"auto"``: bfloat16 on CUDA where supported, else float16; float32 off CUDA."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype '{dtype}'; choose one of {DTYPES}")
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return getattr(torch, dtype)


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (for metadata and cache keys)."""
    return str(dtype).removeprefix("torch.")


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an accelerator out-of-memory error.

    ``torch.OutOfMemoryError`` (CUDA's) is a RuntimeError; some backends and
    older kernels raise a plain RuntimeError that only says so in its message.
    """
    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and "out of memory" in str(err).lower()
    )


def _free_accelerator_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def encode_in_batches(
    rows: np.ndarray,
    encode_batch: Callable[[np.ndarray], np.ndarray],
    batch_size: int,
    logger: logging.Logger = log,
    what: str = "items",
    progress: Callable[[int], object] | None = None,
) -> tuple[np.ndarray, int]:
    """Apply ``encode_batch`` to ``rows`` in consecutive batches.

    ``encode_batch`` takes an array of row indices and returns their
    embeddings ``(len(batch), dim)``. On an out-of-memory error the batch
    size is halved and the same rows retried; at batch size 1 the error is
    re-raised with the fix. Returns the embeddings in the order of ``rows``
    and the batch size that worked, for the next call to start from.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    outputs = []
    start = 0
    while start < len(rows):
        batch = rows[start : start + batch_size]
        try:
            out = encode_batch(batch)
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not is_out_of_memory(err):
                raise
            if batch_size == 1:
                raise RuntimeError(
                    f"out of GPU memory encoding {what} even at batch size 1 (row {int(batch[0])}); use a smaller "
                    f"model, a lower dtype (float16 / bfloat16), a shorter max_length, or a larger GPU"
                ) from err
            oom = True
        else:
            oom = False
        if oom:
            # Outside the except block, so the traceback no longer pins the batch's tensors.
            _free_accelerator_memory()
            batch_size //= 2
            logger.warning("out of GPU memory: %s batch size halved to %d; retrying the same batch", what, batch_size)
            continue
        outputs.append(np.asarray(out, dtype=np.float32))
        start += len(batch)
        if progress is not None:
            progress(len(batch))
    if not outputs:
        return np.empty((0, 0), dtype=np.float32), batch_size
    return np.concatenate(outputs), batch_size


def cache_key(*parts) -> str:
    """sha256 of JSON-serializable ``parts`` (settings, item texts or file stats)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
        digest.update(b"\0")
    return digest.hexdigest()


def partial_dir(out_path: str | os.PathLike) -> Path:
    """Where the chunks of ``out_path`` collect while it is being computed."""
    return Path(f"{out_path}.partial")


def _atomic_write_bytes(path: Path, write: Callable[[object], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        write(fh)
    os.replace(tmp, path)


class ChunkStore:
    """The finished chunks of one extraction in ``folder``, valid for one cache key.

    ``manifest.json`` records the key; a folder left by a run with another key
    (another model, dtype, chunk size or other item texts) is discarded.
    """

    def __init__(self, folder: str | os.PathLike, key: str, n_items: int, chunk_items: int, dim: int):
        self.folder = Path(folder)
        self.manifest = {"key": key, "n_items": int(n_items), "chunk_items": int(chunk_items), "dim": int(dim)}
        previous = self._read_manifest()
        if previous is not None and previous != self.manifest:
            log.info("discarding %s: it was written for other settings or items", self.folder)
            shutil.rmtree(self.folder)
        if not (self.folder / MANIFEST).exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            _atomic_write_bytes(self.folder / MANIFEST, lambda fh: fh.write(json.dumps(self.manifest).encode()))

    def _read_manifest(self) -> dict | None:
        try:
            return json.loads((self.folder / MANIFEST).read_text())
        except (OSError, ValueError):
            return None if not self.folder.exists() else {}  # {} never equals a manifest: discard

    def _path(self, index: int) -> Path:
        return self.folder / f"chunk_{index:06d}.npy"

    def load(self, index: int, n_rows: int) -> np.ndarray | None:
        """Chunk ``index`` if it was finished (and has ``n_rows`` rows), else None."""
        path = self._path(index)
        if not path.exists():
            return None
        try:
            chunk = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None
        if chunk.shape != (n_rows, self.manifest["dim"]) or chunk.dtype != np.float32:
            return None
        return chunk

    def save(self, index: int, chunk: np.ndarray) -> None:
        _atomic_write_bytes(self._path(index), lambda fh: np.save(fh, chunk, allow_pickle=False))

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def chunk_size(chunk_items: int, batch_size: int) -> int:
    """``chunk_items`` rounded up to whole batches (so chunking never changes the batches)."""
    if chunk_items < 1:
        raise ValueError(f"chunk_items must be >= 1, got {chunk_items}")
    return -(-chunk_items // batch_size) * batch_size


def encode_resumable(
    order: np.ndarray,
    encode_batch: Callable[[np.ndarray], np.ndarray],
    *,
    dim: int,
    batch_size: int,
    store: ChunkStore | None,
    stage: str,
    logger: logging.Logger = log,
    what: str = "items",
) -> np.ndarray:
    """Encode rows ``0..n-1`` in the processing ``order``, chunk by chunk.

    ``order`` is a permutation of ``range(n)`` (e.g. longest text first).
    Chunks of ``store.manifest["chunk_items"]`` consecutive rows of ``order``
    are read from ``store`` when already finished and otherwise encoded with
    :func:`encode_in_batches` and saved. ``store=None`` keeps nothing on disk.
    Returns the ``(n, dim)`` float32 matrix with row ``i`` for row ``i``
    (scattered back from the processing order). A chunk holding NaN or inf
    fails naming ``stage`` and is not saved.
    """
    order = np.asarray(order)
    n = len(order)
    out = np.empty((n, dim), dtype=np.float32)
    size = store.manifest["chunk_items"] if store is not None else max(n, 1)
    starts = range(0, n, size)

    todo = []
    for index, start in enumerate(starts):
        rows = order[start : start + size]
        chunk = store.load(index, len(rows)) if store is not None else None
        if chunk is None:
            todo.append((index, rows))
        else:
            out[rows] = chunk
    n_done = n - sum(len(rows) for _, rows in todo)
    if n_done:
        logger.info("resuming: %d of %d items already encoded (%s, from %s)", n_done, n, what, store.folder)

    with tqdm(total=n, initial=n_done, desc=what, unit="item", mininterval=5) as bar:
        for index, rows in todo:
            chunk, batch_size = encode_in_batches(rows, encode_batch, batch_size, logger, what, bar.update)
            if chunk.shape != (len(rows), dim):
                raise ValueError(f"{stage}: the encoder returned {chunk.shape} for {len(rows)} rows of dim {dim}")
            bad = ~np.isfinite(chunk).all(axis=1)
            if bad.any():
                raise ValueError(
                    f"{stage}: non-finite values (NaN or inf) in the embeddings of {int(bad.sum())} row(s), first "
                    f"rows {rows[bad][:5].tolist()}; check the model's dtype (float16 overflows) and its weights"
                )
            if store is not None:
                store.save(index, chunk)
            out[rows] = chunk  # scatter back to row order
    return out
