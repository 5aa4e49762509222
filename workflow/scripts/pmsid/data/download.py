"""Downloading raw data: resumable fetches, archive checks and checksums.

The one call a Snakemake download rule makes is :func:`download_file`::

    download_file(url, "resources/movielens/ml-25m.zip", md5_url=url + ".md5",
                  checksum_table="resources/checksums.tsv")

It fetches ``url`` into ``dest.part`` (resuming a partial file left by an
earlier attempt or run), renames it to ``dest`` only when every byte arrived,
checks that the archive decompresses, verifies the MD5 the source publishes
and the SHA-256 recorded in a checksum table (recording it the first time),
and re-fetches once from scratch when a fresh file fails a check. A source
that stays down ends in :class:`DownloadError`, whose message names the URL
and where to put a file fetched by hand; a ``dest`` that already exists is
checked instead of downloaded (that manual fallback).
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import logging
import os
import re
import tempfile
import time
import zipfile
import zlib
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import requests
import urllib3
from tqdm import tqdm

log = logging.getLogger(__name__)

USER_AGENT = "pmsid/0.1 (research pipeline; dataset download)"
CHUNK = 1 << 16
MAX_SLEEP = 60.0
TABLE_COLUMNS = ("file", "sha256", "bytes", "url", "recorded")


class DownloadError(RuntimeError):
    """The source is down, answered 404, or every retry failed."""


class ChecksumError(ValueError):
    """A file fails its MD5 or SHA-256, is a corrupt archive, or is empty."""


class _Retryable(Exception):
    """A failure worth another attempt (5xx, 408, 429, a cut connection)."""


class _Fatal(Exception):
    """A failure no retry will fix (404 and other 4xx)."""


# ---- fetching ------------------------------------------------------------------------


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """``(first byte, total)`` of a ``Content-Range`` header; ``None`` where absent or ``*``."""
    match = re.fullmatch(r"\s*bytes\s+(\*|(\d+)-\d+)/(\*|\d+)\s*", header or "")
    if match is None:
        return None, None
    first = int(match.group(2)) if match.group(2) is not None else None
    total = int(match.group(3)) if match.group(3) != "*" else None
    return first, total


def _fetch_once(session: requests.Session, url: str, part: Path, timeout: float, progress: bool) -> None:
    """One HTTP request that extends ``part`` (or starts it over) to the whole file.

    Returns only when ``part`` holds the complete file; raises :class:`_Retryable`
    or :class:`_Fatal` otherwise, keeping what arrived in ``part``.
    """
    offset = part.stat().st_size if part.exists() else 0
    # identity: a server that gzips on the fly would make byte counts and ranges meaningless
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with session.get(url, headers=headers, stream=True, timeout=timeout) as response:
        status = f"HTTP {response.status_code} {response.reason}"
        length = response.headers.get("Content-Length")
        length = int(length) if length is not None and length.isdigit() else None
        if response.status_code == 416 and offset:
            # Nothing left after `offset`: the .part is complete, or larger than the file.
            _, total = _content_range(response.headers.get("Content-Range"))
            if total == offset:
                log.info("%s: the partial file %s is already complete (%d bytes)", url, part, offset)
                return
            log.warning("%s: %s for a partial file of %d bytes; starting over", url, status, offset)
            part.unlink()
            return _fetch_once(session, url, part, timeout, progress)
        if response.status_code in (408, 429) or response.status_code >= 500:
            raise _Retryable(status)
        if response.status_code == 200:
            mode, start, total = "wb", 0, length  # no Range sent, or the server ignored it
            if offset:
                log.info("%s: the server ignored the Range request; downloading from byte 0", url)
        elif response.status_code == 206 and offset:
            first, total = _content_range(response.headers.get("Content-Range"))
            if first != offset:
                part.unlink()
                raise _Retryable(f"{status} starts at byte {first}, not {offset}; starting over")
            mode, start = "ab", offset
            if total is None and length is not None:
                total = offset + length
        else:
            raise _Fatal(status)

        with (
            open(part, mode) as f,
            tqdm(
                total=total,
                initial=start,
                unit="B",
                unit_scale=True,
                desc=part.name[: -len(".part")],
                disable=not progress,
            ) as bar,
        ):
            try:
                # raw bytes as sent: a .gz served with Content-Encoding: gzip must stay compressed
                for chunk in response.raw.stream(CHUNK, decode_content=False):
                    f.write(chunk)
                    bar.update(len(chunk))
            except (requests.RequestException, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as e:
                raise _Retryable(f"connection broken after {f.tell()} of {total or '?'} bytes ({e})") from e
    size = part.stat().st_size
    if total is not None and size < total:
        raise _Retryable(f"short read: {size} of {total} bytes")
    if total is not None and size > total:
        part.unlink()
        raise _Retryable(f"got {size} bytes, more than the announced {total}; starting over")


def fetch(
    url: str, dest: str | Path, *, retries: int = 5, backoff: float = 2.0, timeout: float = 60.0, progress: bool = True
) -> Path:
    """Download ``url`` to ``dest`` and return ``dest`` (absolute).

    Bytes go to ``dest.part``, which survives failures and later calls: the
    next attempt asks for the rest with ``Range: bytes=N-``. The file is renamed
    to ``dest`` only when its size matches what the server announced. 5xx, 408,
    429, timeouts and cut connections are retried (``retries`` attempts in all,
    sleeping ``backoff * 2**attempt`` s, at most 60 s); other 4xx fail at once.
    Raises :class:`DownloadError` naming the URL, the last error and where to
    put a file downloaded by hand.
    """
    if retries < 1:
        raise ValueError(f"retries must be >= 1 (the number of attempts), got {retries}")
    dest = Path(dest).absolute()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    # Own retry loop: urllib3's Retry re-sends a request from scratch and cannot
    # resume a partial file, which for multi-GB archives is the case that matters.
    last_error: Exception | None = None
    attempt = 0
    with requests.Session() as session:
        for attempt in range(1, retries + 1):
            try:
                _fetch_once(session, url, part, timeout, progress)
                os.replace(part, dest)
                return dest
            except _Fatal as e:
                last_error = e
                break
            except (_Retryable, requests.RequestException) as e:  # connection refused, timeouts, ...
                last_error = e
            if attempt < retries:
                pause = min(backoff * 2 ** (attempt - 1), MAX_SLEEP)
                kept = part.stat().st_size if part.exists() else 0
                log.warning(
                    "%s: attempt %d/%d failed (%s); retrying in %.1f s (%d bytes kept)",
                    url,
                    attempt,
                    retries,
                    last_error,
                    pause,
                    kept,
                )
                time.sleep(pause)
    message = f"could not download {url} after {attempt} attempt(s): {last_error}. "
    message += f"If the source is down, download it by hand and place it at {dest}"
    if part.exists() and part.stat().st_size:
        message += f" (the partial file {part}, {part.stat().st_size} bytes, is kept: a rerun resumes from it)"
    raise DownloadError(message)


# ---- checks ----------------------------------------------------------------------------


def _digest(path: str | Path, algorithm: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def md5sum(path: str | Path) -> str:
    """Hex MD5 of the file at ``path`` (streamed)."""
    return _digest(path, "md5")


def sha256sum(path: str | Path) -> str:
    """Hex SHA-256 of the file at ``path`` (streamed)."""
    return _digest(path, "sha256")


def parse_md5_file(text: str, filename: str) -> str:
    """The MD5 for ``filename`` in the text of a checksum file, lower-case hex.

    Accepts ``md5sum`` lines (``hash  filename``, ``hash *filename``), BSD lines
    (``MD5 (filename) = hash``) and a file holding only a bare hash.
    """
    name = Path(filename).name
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        bsd = re.fullmatch(r"MD5\s*\((.+)\)\s*=\s*([0-9a-fA-F]{32})", line)
        gnu = re.fullmatch(r"([0-9a-fA-F]{32})\s+\*?(.+)", line)
        if bsd and Path(bsd.group(1).strip()).name == name:
            return bsd.group(2).lower()
        if gnu and Path(gnu.group(2).strip()).name == name:
            return gnu.group(1).lower()
    if len(lines) == 1 and re.fullmatch(r"[0-9a-fA-F]{32}", lines[0]):
        return lines[0].lower()
    raise ValueError(
        f"no MD5 for {name!r} in the checksum file {text[:200]!r}; expected '<md5>  {name}', "
        f"'MD5 ({name}) = <md5>' or a bare 32-digit hash"
    )


def check_archive(path: str | Path) -> None:
    """Raise :class:`ChecksumError` if ``path`` is empty or (for .gz / .zip) does not decompress."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise ChecksumError(f"{path}: empty file (0 bytes)")
    suffix = path.suffix.lower()
    if suffix in (".gz", ".tgz"):
        try:
            with gzip.open(path, "rb") as f:
                while f.read(1 << 20):
                    pass
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:
            raise ChecksumError(f"{path}: truncated or corrupt gzip ({e})") from e
    elif suffix == ".zip":
        if not zipfile.is_zipfile(path):
            raise ChecksumError(f"{path}: not a zip archive (truncated or corrupt)")
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, EOFError, zlib.error) as e:
            raise ChecksumError(f"{path}: truncated or corrupt zip ({e})") from e
        if bad is not None:
            raise ChecksumError(f"{path}: corrupt zip: member {bad!r} fails its CRC")


class ChecksumTable:
    """A TSV of SHA-256 sums recorded the first time each file was downloaded.

    Columns: ``file, sha256, bytes, url, recorded`` (UTC date). Lines starting
    with ``#`` are comments and survive rewrites. A missing file is an empty
    table; the first :meth:`verify_or_record` creates it.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    def _read(self) -> tuple[list[str], dict[str, dict]]:
        if not self.path.exists():
            return [], {}
        comments, rows, header = [], {}, None
        for number, line in enumerate(self.path.read_text().splitlines(), start=1):
            if line.startswith("#"):
                comments.append(line)
            elif not line.strip():
                continue
            elif header is None:
                header = tuple(line.split("\t"))
                if header != TABLE_COLUMNS:
                    raise ValueError(f"{self.path}: header must be {'<TAB>'.join(TABLE_COLUMNS)}; found {line!r}")
            else:
                values = line.split("\t")
                if len(values) != len(TABLE_COLUMNS):
                    raise ValueError(f"{self.path}:{number}: expected {len(TABLE_COLUMNS)} tab-separated fields")
                row = dict(zip(TABLE_COLUMNS, values))
                rows[row["file"]] = row
        return comments, rows

    def _write(self, comments: list[str], rows: dict[str, dict]) -> None:
        lines = comments + ["\t".join(TABLE_COLUMNS)]
        lines += ["\t".join(str(rows[key][c]) for c in TABLE_COLUMNS) for key in sorted(rows)]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write("\n".join(lines) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @contextmanager
    def _locked(self):
        # flock on a sibling file (not the table, which os.replace swaps out); each
        # open() is its own lock owner, so threads exclude each other as processes do
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def get(self, key: str) -> dict | None:
        """The row recorded for ``key``, or ``None``."""
        return self._read()[1].get(key)

    def verify_or_record(self, key: str, path: str | Path, url: str, *, sha256: str | None = None) -> str:
        """Check ``path`` against the row for ``key`` ("verified") or add one ("recorded").

        ``sha256``: the file's digest if already computed. Raises
        :class:`ChecksumError` on a mismatch.
        """
        for value in (key, url):
            if "\t" in value or "\n" in value:
                raise ValueError(f"checksum table fields cannot hold tabs or newlines: {value!r}")
        path = Path(path)
        digest = sha256 if sha256 is not None else sha256sum(path)  # outside the lock: hashing takes a while
        size = path.stat().st_size
        with self._locked():
            comments, rows = self._read()
            row = rows.get(key)
            if row is not None:
                if row["sha256"] != digest:
                    raise ChecksumError(
                        f"{key}: SHA-256 mismatch for {path}: expected {row['sha256']} ({row['bytes']} bytes, "
                        f"recorded {row['recorded']}), actual {digest} ({size} bytes). If the source legitimately "
                        f"changed the file, delete the row for {key} from {self.path.absolute()} to record the new one"
                    )
                return "verified"
            recorded = datetime.now(UTC).date().isoformat()
            rows[key] = {"file": key, "sha256": digest, "bytes": size, "url": url, "recorded": recorded}
            self._write(comments, rows)
        log.info("%s: recorded SHA-256 %s in %s", key, digest, self.path)
        return "recorded"


# ---- the download step -----------------------------------------------------------------


def _expected_md5(
    dest: Path, md5: str | None, md5_url: str | None, placed: bool, retries: int, backoff: float, timeout: float
) -> str | None:
    """The MD5 ``dest`` should have: given, or read from the checksum file at ``md5_url``."""
    expected = md5.strip().lower() if md5 is not None else None
    if md5_url is None:
        return expected
    md5_path = dest.with_name(dest.name + ".md5")
    try:
        fetch(md5_url, md5_path, retries=retries, backoff=backoff, timeout=timeout, progress=False)
    except DownloadError as e:
        if not placed:
            raise
        if not md5_path.exists():
            log.warning("%s: cannot fetch its MD5 (%s); checking it without MD5", dest, e)
            return expected
        log.warning("%s: cannot fetch its MD5 (%s); using the earlier copy %s", dest, e, md5_path)
    published = parse_md5_file(md5_path.read_text(), dest.name)
    if expected is not None and expected != published:
        raise ChecksumError(f"{dest.name}: the MD5 given ({expected}) disagrees with {md5_url} ({published})")
    return published


def _verify(dest: Path, url: str, md5: str | None, table: ChecksumTable | None, key: str) -> tuple[list[str], str]:
    """Archive check, MD5 and the SHA-256 table; the checks passed and the SHA-256."""
    check_archive(dest)
    digest = sha256sum(dest)
    verified_by = []
    if md5 is not None:
        actual = md5sum(dest)
        if actual != md5:
            raise ChecksumError(f"{dest}: MD5 mismatch: expected {md5}, actual {actual}")
        verified_by.append("md5")
    if table is not None:
        verified_by.append(f"sha256-table:{table.verify_or_record(key, dest, url, sha256=digest)}")
    return verified_by, digest


def download_file(
    url: str,
    dest: str | Path,
    *,
    md5: str | None = None,
    md5_url: str | None = None,
    checksum_table: str | Path | None = None,
    table_key: str | None = None,
    retries: int = 5,
    backoff: float = 2.0,
    timeout: float = 60.0,
    progress: bool = True,
) -> dict:
    """Download, check and verify one raw file; return its provenance.

    A fresh file that fails the archive check or a checksum is moved to
    ``dest.corrupt`` and fetched once more from scratch; a second failure
    raises :class:`ChecksumError`. An existing ``dest`` (placed by hand) is
    only checked. Returns ``{url, path, bytes, sha256, md5, verified_by, seconds}``.
    """
    started = time.monotonic()
    dest = Path(dest).absolute()
    placed = dest.exists()
    expected_md5 = _expected_md5(dest, md5, md5_url, placed, retries, backoff, timeout)
    table = ChecksumTable(checksum_table) if checksum_table is not None else None
    key = table_key if table_key is not None else dest.name
    fetch_args = dict(retries=retries, backoff=backoff, timeout=timeout, progress=progress)

    if placed:
        log.info("%s already exists (placed by hand?): checking it instead of downloading %s", dest, url)
        try:
            verified_by, digest = _verify(dest, url, expected_md5, table, key)
        except ChecksumError as e:
            raise ChecksumError(f"{e}. {dest} was not downloaded by this run: delete it to download it again") from e
    else:
        fetch(url, dest, **fetch_args)
        corrupt = dest.with_name(dest.name + ".corrupt")
        try:
            verified_by, digest = _verify(dest, url, expected_md5, table, key)
        except ChecksumError as first:
            os.replace(dest, corrupt)
            log.warning("%s; moved it to %s and downloading it again from scratch", first, corrupt)
            fetch(url, dest, **fetch_args)
            try:
                verified_by, digest = _verify(dest, url, expected_md5, table, key)
            except ChecksumError as second:
                os.replace(dest, corrupt)  # so that a rerun downloads again instead of trusting it
                raise ChecksumError(
                    f"{dest.name} from {url} failed its check twice (kept as {corrupt}): {second}"
                ) from second

    info = {
        "url": url,
        "path": str(dest),
        "bytes": dest.stat().st_size,
        "sha256": digest,
        "md5": expected_md5,
        "verified_by": verified_by,
        "seconds": round(time.monotonic() - started, 3),
    }
    log.info("%s: %d bytes, sha256 %s, verified by %s", dest, info["bytes"], info["sha256"], verified_by or "nothing")
    return info
