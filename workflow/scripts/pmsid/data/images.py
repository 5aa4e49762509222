"""Find each item's image on local disk and check that it decodes.

Input: the items table (``item_idx``, ``image_url``). Output: the ``IMAGES``
contract of :mod:`pmsid.data.contracts`, one row per item:

- ``missing``: no URL in the metadata, a local file that does not exist, or
  a download that failed after all retries (``path`` is null);
- ``ok``: the file exists and Pillow decodes it;
- ``broken``: the file exists but does not decode (``path`` says which).

URLs may be ``file://`` URLs (the synthetic dataset), plain local paths, or
``http(s)://`` URLs (Amazon), which are downloaded to
``image_dir/{item_idx}.{ext}`` once and reused on later runs. Downloads are
deliberately simple here (urllib, a few retries with backoff); hardening
them is separate work.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

log = logging.getLogger("pmsid.data.images")

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
USER_AGENT = "pmsid/0.1 (research pipeline; image fetch)"


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


def download(url: str, dest: Path, timeout: float = 10, retries: int = 3, backoff: float = 1.0) -> None:
    """Fetch ``url`` to ``dest`` (temp file + rename), retrying with
    exponential backoff. Raises ``OSError`` naming the URL after the last try."""
    if retries < 1:
        raise ValueError(f"retries must be >= 1 (the number of attempts), got {retries}")
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    last_error: Exception | None = None
    for attempt in range(1, retries + 1):
        try:
            request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
            with urllib.request.urlopen(request, timeout=timeout) as response, open(tmp, "wb") as f:
                while chunk := response.read(1 << 16):
                    f.write(chunk)
            if tmp.stat().st_size == 0:
                raise OSError("empty response (0 bytes)")
            os.replace(tmp, dest)
            return
        except urllib.error.HTTPError as e:
            last_error = e
            tmp.unlink(missing_ok=True)
            if 400 <= e.code < 500 and e.code != 429:
                break  # the image is not there; asking again will not help
        except (OSError, urllib.error.URLError) as e:  # timeouts, resets, DNS, empty body
            last_error = e
            tmp.unlink(missing_ok=True)
        if attempt < retries:
            time.sleep(backoff * 2 ** (attempt - 1))
    raise OSError(f"could not download {url} after {attempt} attempt(s): {last_error}")


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


def resolve_images(
    items_df: pd.DataFrame, image_dir: str | os.PathLike, timeout: float = 10, retries: int = 3
) -> pd.DataFrame:
    """One ``(item_idx, path, status)`` row per item, matching the IMAGES contract.

    ``items_df`` needs ``item_idx`` and ``image_url``. Local images are used
    where they are; http(s) images are downloaded into ``image_dir`` (kept
    across runs, so a rerun downloads only what is missing). Rows come back
    sorted by ``item_idx``.
    """
    missing_cols = [c for c in ("item_idx", "image_url") if c not in items_df.columns]
    if missing_cols:
        raise ValueError(f"items: missing column(s) {missing_cols}; found {list(items_df.columns)}")
    if retries < 1:
        raise ValueError(f"retries must be >= 1 (the number of download attempts), got {retries}")
    image_dir = Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)

    rows = items_df[["item_idx", "image_url"]].sort_values("item_idx", kind="stable")
    paths: list[str | None] = []
    statuses: list[str] = []
    counts = {"downloaded": 0, "cached": 0, "local": 0, "failed_download": 0}
    for item_idx, url in tqdm(
        zip(rows["item_idx"].to_numpy(), rows["image_url"].to_numpy()),
        total=len(rows),
        desc="images",
        unit="img",
        mininterval=1.0,
    ):
        item_idx = int(item_idx)
        if _is_blank(url):
            paths.append(None)
            statuses.append("missing")
            continue
        url = str(url).strip()
        scheme = urlparse(url).scheme.lower()
        if scheme in ("http", "https"):
            path = _download_target(url, item_idx, image_dir)
            if path.is_file() and path.stat().st_size > 0:
                counts["cached"] += 1
            else:
                try:
                    download(url, path, timeout=timeout, retries=retries)
                    counts["downloaded"] += 1
                except OSError as e:
                    log.warning("item %d: %s", item_idx, e)
                    counts["failed_download"] += 1
                    paths.append(None)
                    statuses.append("missing")
                    continue
        elif scheme in ("file", "") or len(scheme) == 1:  # len 1: a Windows drive letter
            path = local_path(url)
            if not path.is_file():
                log.warning("item %d: image file %s does not exist", item_idx, path)
                paths.append(None)
                statuses.append("missing")
                continue
            counts["local"] += 1
        else:
            log.warning("item %d: unsupported image URL scheme %r in %s", item_idx, scheme, url)
            paths.append(None)
            statuses.append("missing")
            continue
        paths.append(str(path))
        statuses.append("ok" if decodes(path) else "broken")

    out = pd.DataFrame(
        {
            "item_idx": rows["item_idx"].to_numpy(np.int32),
            "path": pd.Series(paths, dtype="str"),
            "status": pd.Series(statuses, dtype="str"),
        }
    )
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
        counts["failed_download"],
    )
    broken = out.loc[out["status"] == "broken", "path"].head(5).tolist()
    if broken:
        log.warning("images: files that do not decode, e.g. %s", broken)
    return out
