"""resolve_images: statuses, the download cache, retries, and independence from the worker count."""

from __future__ import annotations

import io

import pandas as pd
import pytest
from httpserver import LocalServer
from PIL import Image

from pmsid.data.contracts import IMAGES, read_table, write_table
from pmsid.data.images import resolve_images

FAST = dict(timeout=5, backoff=0)


def png_bytes(colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def image_server():
    """A good PNG, a file that is not an image, and 404s for everything else."""
    files = {"/good.png": png_bytes(), "/broken.jpg": b"\xff\xd8\xff this is not a jpeg"}
    with LocalServer(files=files) as server:
        yield server


def test_resolve_images_statuses_and_cache(tmp_path, image_server, caplog):
    local = tmp_path / "local dir" / "pic.png"  # a space: file:// URLs percent-encode it
    local.parent.mkdir()
    local.write_bytes(png_bytes((0, 0, 200)))
    bad_local = tmp_path / "bad.png"
    bad_local.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    items = pd.DataFrame(
        {
            "item_idx": pd.array([5, 0, 1, 2, 3, 4, 6, 7], dtype="int32"),
            "image_url": [
                image_server.url("good.png"),
                None,
                local.as_uri(),
                str(bad_local),
                image_server.url("missing.jpg"),
                image_server.url("broken.jpg"),
                str(tmp_path / "nope.png"),
                "",
            ],
        }
    )
    out_dir = tmp_path / "images"
    with caplog.at_level("INFO", logger="pmsid.data.images"):
        out = resolve_images(items, out_dir, retries=2, **FAST)
    assert out["item_idx"].tolist() == list(range(8))
    assert out["status"].tolist() == ["missing", "ok", "broken", "missing", "broken", "ok", "missing", "missing"]
    assert out.loc[1, "path"] == str(local) and out.loc[2, "path"] == str(bad_local)
    assert out.loc[4, "path"] == str(out_dir / "4.jpg")
    assert out.loc[5, "path"] == str(out_dir / "5.png") and (out_dir / "5.png").read_bytes() == png_bytes()
    assert out.loc[[0, 3, 6, 7], "path"].isna().all()
    assert "2 ok, 4 missing, 2 broken of 8 items (2 local, 2 downloaded, 0 already downloaded, 1 downloads failed)" in (
        caplog.text
    )
    assert image_server.url("missing.jpg") in caplog.text and "HTTP 404" in caplog.text
    write_table(out, tmp_path / "images.parquet", IMAGES)
    pd.testing.assert_frame_equal(read_table(tmp_path / "images.parquet", IMAGES), out)
    assert len(image_server.requests_for("missing.jpg")) == 1  # a 404 is not retried

    # A rerun downloads nothing that is already there.
    image_server.requests.clear()
    caplog.clear()
    with caplog.at_level("INFO", logger="pmsid.data.images"):
        again = resolve_images(items, out_dir, retries=2, **FAST)
    pd.testing.assert_frame_equal(again, out)
    assert image_server.requests == [("GET", "/missing.jpg", None)]
    assert "(2 local, 0 downloaded, 2 already downloaded, 1 downloads failed)" in caplog.text


def test_cached_images_make_no_requests(tmp_path, image_server):
    items = pd.DataFrame({"item_idx": pd.array([0, 1], dtype="int32"), "image_url": [image_server.url("good.png")] * 2})
    first = resolve_images(items, tmp_path, **FAST)
    assert first["status"].tolist() == ["ok", "ok"] and len(image_server.requests) == 2
    image_server.requests.clear()
    pd.testing.assert_frame_equal(resolve_images(items, tmp_path, **FAST), first)
    assert image_server.requests == []


def test_results_do_not_depend_on_workers(tmp_path):
    files = {f"/{i}.png": png_bytes((i, 2 * i, 3 * i)) for i in range(0, 60, 2)}
    files.update({f"/{i}.png": b"not a png" for i in range(1, 60, 6)})
    with LocalServer(files=files) as server:
        server.fail_times.update({"/4.png": 1, "/10.png": 2})
        urls = [server.url(f"{i}.png") for i in range(60)]  # odd ones not in files[] are 404s
        items = pd.DataFrame({"item_idx": pd.array(range(59, -1, -1), dtype="int32"), "image_url": urls[::-1]})
        one = resolve_images(items, tmp_path / "w1", workers=1, retries=3, **FAST)
        server.fail_times.update({"/4.png": 1, "/10.png": 2})
        eight = resolve_images(items, tmp_path / "w8", workers=8, retries=3, **FAST)
    counts = one["status"].value_counts().to_dict()
    assert counts == {"ok": 30, "missing": 20, "broken": 10}
    assert one["status"].iloc[4] == "ok" and one["status"].iloc[10] == "ok"  # 503s were retried
    pd.testing.assert_frame_equal(
        one.assign(path=one["path"].str.replace("/w1/", "/")), eight.assign(path=eight["path"].str.replace("/w8/", "/"))
    )


def test_503_then_ok_is_retried_and_exhausted_retries_are_missing(tmp_path, image_server, caplog):
    image_server.fail_times["/good.png"] = 2
    items = pd.DataFrame({"item_idx": pd.array([3], dtype="int32"), "image_url": [image_server.url("good.png")]})
    assert resolve_images(items, tmp_path / "a", retries=3, **FAST)["status"].tolist() == ["ok"]
    assert len(image_server.requests) == 3
    image_server.fail_times["/good.png"] = 5
    with caplog.at_level("WARNING", logger="pmsid.data.images"):
        out = resolve_images(items, tmp_path / "b", retries=2, **FAST)
    assert out["status"].tolist() == ["missing"] and out["path"].isna().all()
    assert "item 3: could not download" in caplog.text and "HTTP 503" in caplog.text


def test_many_failures_are_summarized(tmp_path, image_server, caplog):
    items = pd.DataFrame(
        {
            "item_idx": pd.array(range(25), dtype="int32"),
            "image_url": [image_server.url(f"n{i}.jpg") for i in range(25)],
        }
    )
    with caplog.at_level("WARNING", logger="pmsid.data.images"):
        out = resolve_images(items, tmp_path, **FAST)
    assert (out["status"] == "missing").all()
    item_lines = [r for r in caplog.records if r.getMessage().startswith("item ")]
    assert len(item_lines) == 10 and "15 more items without an image" in caplog.text


@pytest.mark.parametrize("workers", [0, -1, 2.5, True])
def test_bad_workers_value(tmp_path, workers):
    items = pd.DataFrame({"item_idx": pd.array([0], dtype="int32"), "image_url": [None]})
    with pytest.raises(ValueError, match="workers must be an integer >= 1"):
        resolve_images(items, tmp_path, workers=workers)


def test_duplicate_item_idx_is_refused(tmp_path):
    items = pd.DataFrame({"item_idx": pd.array([0, 0], dtype="int32"), "image_url": [None, None]})
    with pytest.raises(ValueError, match=r"item_idx must be unique.*\[0\]"):
        resolve_images(items, tmp_path)
