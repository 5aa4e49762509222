"""Find each item's image on local disk and check that it decodes.

Input: the items table (``item_idx``, ``image_url``). Output: the ``IMAGES``
contract of :mod:`pmsid.data.contracts`, one row per item:

- ``missing``: no URL in the metadata, a local file that does not exist, or
  a download that failed after all retries (``path`` is null);
- ``ok``: the file exists and Pillow decodes it;
- ``broken``: the file exists but does not decode (``path`` says which).

URLs may be ``file://`` URLs (the synthetic dataset), plain local paths, or
``http(s)://`` URLs (Amazon), which are downloaded to
``image_dir/{item_idx}.{ext}`` once and reused on later runs. Downloads and
decode checks run in a thread pool (``workers``), each download through
:func:`pmsid.data.download.fetch` (retries with backoff, resumable ``.part``
files). Each item's result depends only on that item, so the table does not
depend on ``workers``.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from pmsid.data.download import DownloadError, fetch

log = logging.getLogger("pmsid.data.images")

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
MAX_ITEM_WARNINGS = 10  # individual per-item warnings; the rest are counted


def _is_blank(url: object) -> bool:
    if url is None:
        return True
    if isinstance(url, float) and np.isnan(url):
        return True
    return not str(url).strip()


def local_path(url: str) -> Path:
    """The filesystem path of a ``file://`` URL or a plain path."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        # file:///abs/path (percent-encoded by Path.as_uri) -> /abs/path
        return Path(url2pathname(unquote(parsed.path)))
    return Path(url)


def _download_target(url: str, item_idx: int, image_dir: Path) -> Path:
    ext = PurePosixPath(urlparse(url).path).suffix.lower()
    if ext not in IMAGE_EXTENSIONS:
        ext = ".jpg"  # Amazon's image URLs are JPEGs; the decode check catches anything else
    return image_dir / f"{item_idx}{ext}"


def decodes(path: Path) -> bool:
    """True when Pillow can verify and fully load the image at ``path``."""
    try:
        # verify() checks the container without decoding pixels and leaves the
        # image unusable, so open again and load() to decode for real.
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            im.load()
        return True
    except Exception:  # noqa: BLE001 - Pillow raises many types (OSError, SyntaxError, ValueError, ...) on bad files
        return False


def _classify(url: object, item_idx: int, image_dir: Path) -> tuple[str, Path | None, str | None]:
    """``(source, path, reason)`` of one item without touching the network.

    source: ``local`` / ``cached`` / ``download`` (path set) or ``missing``
    (reason set)."""
    if _is_blank(url):
        return "missing", None, None  # no image in the metadata: common, not worth a warning
    url = str(url).strip()
    scheme = urlparse(url).scheme.lower()
    if scheme in ("http", "https"):
        path = _download_target(url, item_idx, image_dir)
        cached = path.is_file() and path.stat().st_size > 0
        return ("cached" if cached else "download"), path, None
    if scheme in ("file", "") or len(scheme) == 1:  # len 1: a Windows drive letter
        path = local_path(url)
        if not path.is_file():
            return "missing", None, f"image file {path} does not exist"
        return "local", path, None
    return "missing", None, f"unsupported image URL scheme {scheme!r} in {url}"


def _resolve_one(url: str, source: str, path: Path, timeout: float, retries: int, backoff: float):
    """Download (if needed) and decode-check one image: ``(path, status, failure)``."""
    if source == "download":
        try:
            fetch(url, path, retries=retries, backoff=backoff, timeout=timeout, progress=False)
        except DownloadError as e:
            return None, "missing", str(e)
    return str(path), ("ok" if decodes(path) else "broken"), None


def resolve_images(
    items_df: pd.DataFrame,
    image_dir: str | os.PathLike,
    timeout: float = 10,
    retries: int = 3,
    *,
    workers: int = 8,
    backoff: float = 1.0,
) -> pd.DataFrame:
    """One ``(item_idx, path, status)`` row per item, matching the IMAGES contract.

    ``items_df`` needs ``item_idx`` (unique) and ``image_url``. Local images
    are used where they are; http(s) images are downloaded into ``image_dir``
    (kept across runs, so a rerun downloads only what is missing) by
    ``workers`` threads, each download tried ``retries`` times with
    exponential ``backoff`` (seconds). A 404 or a download that fails every
    try gives ``missing``; a file that does not decode gives ``broken``.
    Rows come back sorted by ``item_idx``.
    """
    missing_cols = [c for c in ("item_idx", "image_url") if c not in items_df.columns]
    if missing_cols:
        raise ValueError(f"items: missing column(s) {missing_cols}; found {list(items_df.columns)}")
    if retries < 1:
        raise ValueError(f"retries must be >= 1 (the number of download attempts), got {retries}")
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1 (download threads), got {workers!r}")
    duplicated = items_df["item_idx"][items_df["item_idx"].duplicated()].unique()
    if len(duplicated):
        raise ValueError(f"items: item_idx must be unique (one image file per item); duplicated: {duplicated[:5]}")
    image_dir = Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)

    rows = items_df[["item_idx", "image_url"]].sort_values("item_idx", kind="stable")
    item_ids = rows["item_idx"].to_numpy(np.int32)
    urls = rows["image_url"].to_numpy()
    paths: list[str | None] = [None] * len(rows)
    statuses: list[str] = ["missing"] * len(rows)
    counts = {"downloaded": 0, "cached": 0, "local": 0, "failed": 0}
    warnings = 0

    def warn(item_idx: int, reason: str) -> None:
        nonlocal warnings
        warnings += 1
        if warnings <= MAX_ITEM_WARNINGS:
            log.warning("item %d: %s", item_idx, reason)

    bar = tqdm(total=len(rows), desc="images", unit="img", mininterval=1.0)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="images")
    pending: dict[concurrent.futures.Future, tuple[int, str]] = {}

    def collect(done) -> None:
        for future in done:
            i, source = pending.pop(future)
            paths[i], statuses[i], failure = future.result()
            if failure is not None:
                counts["failed"] += 1
                warn(int(item_ids[i]), failure)
            else:
                counts[{"download": "downloaded"}.get(source, source)] += 1
            bar.update()

    try:
        for i, (item_idx, url) in enumerate(zip(item_ids, urls)):
            source, path, reason = _classify(url, int(item_idx), image_dir)
            if source == "missing":
                if reason is not None:
                    warn(int(item_idx), reason)
                bar.update()
                continue
            # A bounded window of pending work: memory stays flat on catalogues of 10^6 items.
            if len(pending) >= 4 * workers:
                done, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
                collect(done)
            future = pool.submit(_resolve_one, str(url).strip(), source, path, timeout, retries, backoff)
            pending[future] = (i, source)
        collect(concurrent.futures.as_completed(list(pending)))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()

    out = pd.DataFrame(
        {
            "item_idx": item_ids,
            "path": pd.Series(paths, dtype="str"),
            "status": pd.Series(statuses, dtype="str"),
        }
    )
    if warnings > MAX_ITEM_WARNINGS:
        log.warning("images: %d more items without an image (not listed)", warnings - MAX_ITEM_WARNINGS)
    n = out["status"].value_counts()
    log.info(
        "images: %d ok, %d missing, %d broken of %d items (%d local, %d downloaded, %d already downloaded, "
        "%d downloads failed)",
        n.get("ok", 0),
        n.get("missing", 0),
        n.get("broken", 0),
        len(out),
        counts["local"],
        counts["downloaded"],
        counts["cached"],
        counts["failed"],
    )
    broken = out.loc[out["status"] == "broken", "path"].head(5).tolist()
    if broken:
        log.warning("images: files that do not decode, e.g. %s", broken)
    return out
