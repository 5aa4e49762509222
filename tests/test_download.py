"""The download layer: resume, retries, clear failures, archive checks and checksums (RELIABILITY 7).

Everything is served by tests/httpserver.py on 127.0.0.1; backoff=0 keeps it fast.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import multiprocessing
import random
import socket
import threading
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from httpserver import LocalServer

from pmsid.data.download import (
    ChecksumError,
    ChecksumTable,
    DownloadError,
    check_archive,
    download_file,
    fetch,
    md5sum,
    parse_md5_file,
    sha256sum,
)

FAST = dict(backoff=0, timeout=5, progress=False)


def payload(n: int = 250_000, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def gz_bytes(n: int = 200_000, seed: int = 0) -> bytes:
    return gzip.compress(payload(n, seed), mtime=0)


def zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("ml/ratings.csv", b"user,item,rating\n" * 2000)
    return buf.getvalue()


@pytest.fixture
def server():
    with LocalServer() as s:
        yield s


# ---- fetch -----------------------------------------------------------------------------


def test_fetch_plain_download(server, tmp_path):
    server.files["/data/x.bin"] = data = payload()
    dest = tmp_path / "deep" / "dir" / "x.bin"
    got = fetch(server.url("data/x.bin"), dest, **FAST)
    assert got == dest.absolute() and dest.read_bytes() == data
    assert not dest.with_name("x.bin.part").exists()
    assert server.requests == [("GET", "/data/x.bin", None)]


def test_fetch_resumes_after_a_cut_connection(server, tmp_path):
    server.files["/x.bin"] = data = payload(250_000)
    server.cut_after["/x.bin"] = 100_000  # every response stops after 100 kB of body
    dest = fetch(server.url("x.bin"), tmp_path / "x.bin", retries=5, **FAST)
    assert dest.read_bytes() == data
    assert [r[2] for r in server.requests] == [None, "bytes=100000-", "bytes=200000-"]


def test_partial_file_survives_a_failed_call_and_the_next_call_resumes(server, tmp_path):
    server.files["/x.bin"] = data = payload(250_000)
    server.cut_after["/x.bin"] = 60_000
    dest = tmp_path / "x.bin"
    with pytest.raises(DownloadError, match="partial file .*60000 bytes, is kept") as err:
        fetch(server.url("x.bin"), dest, retries=1, **FAST)
    assert "connection broken after 60000 of 250000 bytes" in str(err.value)
    assert (tmp_path / "x.bin.part").read_bytes() == data[:60_000] and not dest.exists()
    del server.cut_after["/x.bin"]
    fetch(server.url("x.bin"), dest, **FAST)
    assert dest.read_bytes() == data
    assert server.requests[-1] == ("GET", "/x.bin", "bytes=60000-")


def test_server_that_ignores_range_gives_the_right_file(server, tmp_path):
    server.files["/x.bin"] = data = payload(5000)
    server.ignore_range.add("/x.bin")
    (tmp_path / "x.bin.part").write_bytes(b"stale bytes from another file")
    dest = fetch(server.url("x.bin"), tmp_path / "x.bin", **FAST)
    assert dest.read_bytes() == data
    assert server.requests == [("GET", "/x.bin", "bytes=29-")]


def test_416_with_a_complete_or_oversized_partial_file(server, tmp_path):
    server.files["/x.bin"] = data = payload(5000)
    (tmp_path / "x.bin.part").write_bytes(data)  # complete: 416 says total 5000
    assert fetch(server.url("x.bin"), tmp_path / "x.bin", **FAST).read_bytes() == data
    assert len(server.requests) == 1
    (tmp_path / "y.bin.part").write_bytes(data + b"extra")  # larger than the file: start over
    assert fetch(server.url("x.bin"), tmp_path / "y.bin", **FAST).read_bytes() == data
    assert [r[2] for r in server.requests[1:]] == ["bytes=5005-", None]


def test_503_twice_then_success_and_retries_exhausted(server, tmp_path):
    server.files["/x.bin"] = data = payload(1000)
    server.fail_times["/x.bin"] = 2
    assert fetch(server.url("x.bin"), tmp_path / "x.bin", retries=3, **FAST).read_bytes() == data
    assert len(server.requests) == 3
    server.fail_times["/x.bin"] = 2
    with pytest.raises(DownloadError, match=r"after 2 attempt\(s\): HTTP 503 Service Unavailable"):
        fetch(server.url("x.bin"), tmp_path / "y.bin", retries=2, **FAST)
    assert len(server.requests) == 5


def test_404_fails_at_once_naming_url_and_manual_path(server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = server.url("gone/x.json.gz")
    with pytest.raises(DownloadError) as err:
        fetch(url, "resources/x.json.gz", retries=5, **FAST)
    message = str(err.value)
    assert url in message and "HTTP 404 Not Found" in message
    assert f"download it by hand and place it at {tmp_path / 'resources' / 'x.json.gz'}" in message
    assert len(server.requests) == 1  # not retried
    assert not (tmp_path / "resources" / "x.json.gz.part").exists()


def test_source_down_gives_a_clear_error(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.zip"
    with pytest.raises(DownloadError, match=r"after 3 attempt\(s\)") as err:
        fetch(url, tmp_path / "x.zip", retries=3, **FAST)
    assert url in str(err.value) and str(tmp_path / "x.zip") in str(err.value)


def test_retries_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="retries must be >= 1"):
        fetch("http://127.0.0.1:9/x", tmp_path / "x", retries=0)


# ---- archive checks and MD5 ------------------------------------------------------------


def test_check_archive_gzip_and_empty_files(tmp_path):
    good, bad, empty = tmp_path / "good.json.gz", tmp_path / "bad.json.gz", tmp_path / "empty.csv"
    good.write_bytes(gz_bytes())
    bad.write_bytes(gz_bytes()[:-500])
    empty.write_bytes(b"")
    check_archive(good)
    check_archive(tmp_path / "good.json.gz")
    with pytest.raises(ChecksumError, match=r"bad\.json\.gz: truncated or corrupt gzip"):
        check_archive(bad)
    with pytest.raises(ChecksumError, match=r"empty\.csv: empty file \(0 bytes\)"):
        check_archive(empty)
    (tmp_path / "plain.txt").write_bytes(b"not an archive, not checked")
    check_archive(tmp_path / "plain.txt")


def test_check_archive_zip(tmp_path):
    data = zip_bytes()
    (tmp_path / "good.zip").write_bytes(data)
    check_archive(tmp_path / "good.zip")
    (tmp_path / "cut.zip").write_bytes(data[: len(data) // 2])
    with pytest.raises(ChecksumError, match="cut.zip: not a zip archive"):
        check_archive(tmp_path / "cut.zip")
    flipped = bytearray(data)
    flipped[60] ^= 0xFF  # inside the compressed member: the CRC (or inflate) fails
    (tmp_path / "flip.zip").write_bytes(bytes(flipped))
    with pytest.raises(ChecksumError, match="flip.zip: .*(corrupt zip|CRC)"):
        check_archive(tmp_path / "flip.zip")


def test_parse_md5_file_formats():
    h = "6B51FB2759A8657D3BFCBFC42B592ADA"
    assert parse_md5_file(f"{h}  ml-25m.zip\n", "ml-25m.zip") == h.lower()
    assert parse_md5_file(f"{h} *dir/ml-25m.zip", "resources/ml-25m.zip") == h.lower()
    assert parse_md5_file(f"MD5 (ml-25m.zip) = {h}\n", "ml-25m.zip") == h.lower()
    assert parse_md5_file(f"  {h}\n", "ml-25m.zip") == h.lower()
    assert parse_md5_file(f"{'0' * 32}  other.zip\n{h}  ml-25m.zip\n", "ml-25m.zip") == h.lower()
    with pytest.raises(ValueError, match=r"no MD5 for 'ml-25m.zip'.*'MD5 \(ml-25m.zip\) = <md5>'"):
        parse_md5_file(f"{h}  other.zip\n", "ml-25m.zip")


def test_download_file_with_md5(server, tmp_path):
    server.files["/ml.zip"] = data = zip_bytes()
    md5 = hashlib.md5(data).hexdigest()
    info = download_file(server.url("ml.zip"), tmp_path / "ml.zip", md5=md5, **FAST)
    assert info["md5"] == md5 and info["verified_by"] == ["md5"]
    assert info["sha256"] == hashlib.sha256(data).hexdigest() == sha256sum(tmp_path / "ml.zip")
    assert (
        info["bytes"] == len(data) and info["path"] == str(tmp_path / "ml.zip") and info["url"] == server.url("ml.zip")
    )
    assert md5sum(tmp_path / "ml.zip") == md5


def test_md5_mismatch_is_refetched_once_then_fails(server, tmp_path):
    server.files["/ml.zip"] = data = zip_bytes()
    wrong = "0" * 32
    with pytest.raises(ChecksumError) as err:
        download_file(server.url("ml.zip"), tmp_path / "ml.zip", md5=wrong, **FAST)
    message = str(err.value)
    assert "ml.zip" in message and f"expected {wrong}" in message and f"actual {md5sum_bytes(data)}" in message
    assert "failed its check twice" in message
    assert len(server.requests) == 2  # fetched, then once more from scratch
    assert not (tmp_path / "ml.zip").exists() and (tmp_path / "ml.zip.corrupt").read_bytes() == data


def md5sum_bytes(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_md5_url_and_disagreement(server, tmp_path):
    server.files["/ml.zip"] = data = zip_bytes()
    server.files["/ml.zip.md5"] = f"{md5sum_bytes(data)}  ml.zip\n".encode()
    info = download_file(server.url("ml.zip"), tmp_path / "ml.zip", md5_url=server.url("ml.zip.md5"), **FAST)
    assert info["verified_by"] == ["md5"] and info["md5"] == md5sum_bytes(data)
    assert (tmp_path / "ml.zip.md5").read_text() == f"{md5sum_bytes(data)}  ml.zip\n"
    with pytest.raises(ChecksumError, match=f"MD5 given \\({'1' * 32}\\) disagrees with .*\\({md5sum_bytes(data)}\\)"):
        download_file(
            server.url("ml.zip"), tmp_path / "b" / "ml.zip", md5="1" * 32, md5_url=server.url("ml.zip.md5"), **FAST
        )
    assert not (tmp_path / "b" / "ml.zip").exists()


# ---- the checksum table ----------------------------------------------------------------


def test_checksum_table_record_verify_mismatch(tmp_path):
    table_path = tmp_path / "config" / "checksums.tsv"
    a, b = tmp_path / "a.gz", tmp_path / "b.gz"
    a.write_bytes(gz_bytes(seed=1))
    b.write_bytes(gz_bytes(seed=2))
    table = ChecksumTable(table_path)
    assert table.get("a.gz") is None and not table_path.exists()
    assert table.verify_or_record("z.gz", b, "http://x/z.gz") == "recorded"
    assert table.verify_or_record("a.gz", a, "http://x/a.gz") == "recorded"
    assert table.get("a.gz")["sha256"] == sha256sum(a) and table.get("a.gz")["bytes"] == str(a.stat().st_size)
    # comments survive a rewrite; rows are sorted by file
    table_path.write_text("# raw-data checksums\n" + table_path.read_text())
    assert table.verify_or_record("a.gz", a, "http://x/a.gz") == "verified"
    assert table.verify_or_record("m.gz", a, "http://x/m.gz") == "recorded"
    lines = table_path.read_text().splitlines()
    assert lines[0] == "# raw-data checksums" and lines[1] == "file\tsha256\tbytes\turl\trecorded"
    assert [line.split("\t")[0] for line in lines[2:]] == ["a.gz", "m.gz", "z.gz"]
    with pytest.raises(ChecksumError) as err:
        table.verify_or_record("a.gz", b, "http://x/a.gz")
    message = str(err.value)
    assert message.startswith("a.gz: SHA-256 mismatch")
    assert f"expected {sha256sum(a)}" in message and f"actual {sha256sum(b)}" in message
    assert f"delete the row for a.gz from {table_path}" in message


def _record(args):
    table_path, key, path = args
    return ChecksumTable(table_path).verify_or_record(key, path, f"http://x/{key}")


def test_concurrent_recording_keeps_every_row(tmp_path):
    table_path = tmp_path / "checksums.tsv"
    files = []
    for i in range(24):
        files.append(tmp_path / f"f{i}.bin")
        files[-1].write_bytes(payload(1000, seed=i))
    jobs = [(table_path, f.name, f) for f in files]
    threads = [threading.Thread(target=_record, args=(job,)) for job in jobs[:12]]
    for t in threads:
        t.start()
    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("fork")) as pool:
        assert list(pool.map(_record, jobs[12:])) == ["recorded"] * 12
    for t in threads:
        t.join()
    table = ChecksumTable(table_path)
    assert all(table.get(f.name)["sha256"] == sha256sum(f) for f in files)
    assert len(table_path.read_text().splitlines()) == 1 + 24


# ---- download_file: retries on corruption, the manual fallback -------------------------


def test_corrupt_download_is_refetched_once(server, tmp_path):
    good = gz_bytes()
    server.files["/reviews.json.gz"] = good
    server.serve_first["/reviews.json.gz"] = [good[:-300]]  # the first response is truncated
    table_path = tmp_path / "checksums.tsv"
    dest = tmp_path / "resources" / "reviews.json.gz"
    info = download_file(server.url("reviews.json.gz"), dest, checksum_table=table_path, **FAST)
    assert dest.read_bytes() == good and info["verified_by"] == ["sha256-table:recorded"]
    assert (tmp_path / "resources" / "reviews.json.gz.corrupt").read_bytes() == good[:-300]
    assert [r[2] for r in server.requests] == [None, None]  # the refetch starts from scratch
    assert ChecksumTable(table_path).get("reviews.json.gz")["sha256"] == hashlib.sha256(good).hexdigest()


def test_table_mismatch_fails_after_one_refetch(server, tmp_path):
    table_path = tmp_path / "checksums.tsv"
    old, new = gz_bytes(seed=1), gz_bytes(seed=2)
    (tmp_path / "old.gz").write_bytes(old)
    ChecksumTable(table_path).verify_or_record("x.gz", tmp_path / "old.gz", "u")
    server.files["/x.gz"] = new
    with pytest.raises(ChecksumError, match=f"expected {hashlib.sha256(old).hexdigest()}.*delete the row for x.gz"):
        download_file(server.url("x.gz"), tmp_path / "d" / "x.gz", checksum_table=table_path, **FAST)
    assert len(server.requests) == 2


def test_manual_placement_is_checked_not_downloaded(server, tmp_path):
    dest = tmp_path / "x.json.gz"
    dest.write_bytes(gz_bytes())
    table_path = tmp_path / "checksums.tsv"
    info = download_file(server.url("x.json.gz"), dest, checksum_table=table_path, table_key="amazon/x", **FAST)
    assert info["verified_by"] == ["sha256-table:recorded"] and info["sha256"] == sha256sum(dest)
    assert ChecksumTable(table_path).get("amazon/x")["url"] == server.url("x.json.gz")
    info = download_file(server.url("x.json.gz"), dest, checksum_table=table_path, table_key="amazon/x", **FAST)
    assert info["verified_by"] == ["sha256-table:verified"]
    assert server.requests == []  # nothing was downloaded
    dest.write_bytes(gz_bytes()[:100])
    with pytest.raises(ChecksumError, match="truncated or corrupt gzip.*delete it to download it again"):
        download_file(server.url("x.json.gz"), dest, **FAST)
    assert server.requests == [] and dest.exists()  # a file placed by hand is never moved


def test_download_file_source_down_keeps_nothing_wrong(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(server.url("nope.zip"), tmp_path / "nope.zip", checksum_table=tmp_path / "t.tsv", **FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_downloaded_path_is_absolute_even_for_relative_dest(server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    server.files["/a.txt"] = b"hello"
    info = download_file(server.url("a.txt"), Path("res/a.txt"), **FAST)
    assert info["path"] == str(tmp_path / "res" / "a.txt") and info["md5"] is None and info["verified_by"] == []
