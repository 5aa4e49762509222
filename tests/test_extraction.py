"""Extraction at scale: OOM batch halving, resumable chunks, metadata, reduction, external modalities."""

import os

# Never let a test reach the Hugging Face hub (a download attempt without internet hangs).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import dataclasses
import hashlib
import logging
import threading

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from skimage.data import chelsea
from sklearn.datasets import load_sample_image
from sklearn.decomposition import PCA

from pmsid.data.contracts import read_features, read_metadata, write_features
from pmsid.features import image as image_features
from pmsid.features.batching import encode_in_batches
from pmsid.features.external import align_external_features
from pmsid.features.image import load_image_encoder, run_image_features
from pmsid.features.reduce import reduce_features
from pmsid.features.text import build_text_encoder, run_text_features

GENRES = ["Action", "Comedy", "Drama", "Thriller", "Romance", "Sci-Fi", "Animation", "Crime"]


@pytest.fixture(scope="module")
def minilm():
    return build_text_encoder({"model": "bundled:all-MiniLM-L6-v2"}, device="cpu")


@pytest.fixture(scope="module")
def effnet():
    return load_image_encoder("timm", "efficientnet_lite0", "bundled", device="cpu")


def _items(n):
    # Titles of different lengths, so the length order is not the item order.
    texts = [f"Movie {i} ({1950 + i}) " + " ".join(GENRES[: 1 + (i * 5) % len(GENRES)]) for i in range(n)]
    return pd.DataFrame(
        {
            "item_idx": np.arange(n, dtype=np.int32),
            "item_id": [f"m{i}" for i in range(n)],
            "text": texts,
            "image_url": None,
        }
    )


class Counting:
    """Wraps an encode function: counts texts, raises after ``fail_after`` calls (a killed job)."""

    def __init__(self, encode, fail_after=None):
        self.encode, self.fail_after, self.calls, self.texts = encode, fail_after, 0, 0

    def __call__(self, texts):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("killed (simulated)")
        self.calls += 1
        self.texts += len(texts)
        return self.encode(texts)


# --- out-of-memory -------------------------------------------------------------


@pytest.mark.parametrize(
    "error", [torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)"), RuntimeError("CUDA error: out of memory")]
)
def test_out_of_memory_halves_the_text_batch_and_gives_the_same_matrix(minilm, tmp_path, caplog, error):
    items = _items(11)
    seen = []

    def small_gpu(texts):  # fits 2 texts at a time
        seen.append(len(texts))
        if len(texts) > 2:
            raise error
        return minilm.encode(texts)

    with caplog.at_level(logging.WARNING, logger="pmsid.features.text"):
        run_text_features(
            items, tmp_path / "oom.parquet", {"batch_size": 8}, "cpu", dataclasses.replace(minilm, encode=small_gpu)
        )
    assert seen == [8, 4, 2, 2, 2, 2, 2, 1]  # 8 -> 4 -> 2, then every text once at 2
    assert "halved to 4" in caplog.text and "halved to 2" in caplog.text
    run_text_features(items, tmp_path / "two.parquet", {"batch_size": 2}, "cpu", minilm)
    assert np.array_equal(read_features(tmp_path / "oom.parquet")[1], read_features(tmp_path / "two.parquet")[1])


def test_out_of_memory_at_batch_size_one_fails_with_the_fix():
    def no_memory(rows):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(RuntimeError, match="even at batch size 1.*lower dtype"):
        encode_in_batches(np.arange(3), no_memory, batch_size=4)

    def bug(rows):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="^shape mismatch$"):  # other errors are not retried
        encode_in_batches(np.arange(3), bug, batch_size=4)


# --- resume --------------------------------------------------------------------


def test_text_extraction_resumes_after_a_kill(minilm, tmp_path, caplog):
    items = _items(40)
    cfg = {"batch_size": 4, "chunk_items": 8}  # 5 chunks of 2 batches
    out = tmp_path / "text.parquet"
    partial = tmp_path / "text.parquet.partial"

    killed = Counting(minilm.encode, fail_after=7)  # dies in the 4th chunk
    with pytest.raises(RuntimeError, match="killed"):
        run_text_features(items, out, cfg, "cpu", dataclasses.replace(minilm, encode=killed))
    assert not out.exists()
    assert sorted(p.name for p in partial.glob("chunk_*.npy")) == [f"chunk_00000{i}.npy" for i in range(3)]

    again = Counting(minilm.encode)
    with caplog.at_level(logging.INFO, logger="pmsid.features.text"):
        run_text_features(items, out, cfg, "cpu", dataclasses.replace(minilm, encode=again))
    assert again.texts == 16  # only the 2 unfinished chunks
    assert "resuming: 24 of 40 items already encoded (texts" in caplog.text
    assert not partial.exists()

    run_text_features(items, tmp_path / "whole.parquet", cfg, "cpu", minilm)
    assert np.array_equal(read_features(out)[1], read_features(tmp_path / "whole.parquet")[1])


def test_chunks_of_other_texts_or_settings_are_discarded(minilm, tmp_path):
    items = _items(24)
    cfg = {"batch_size": 4, "chunk_items": 8}
    out = tmp_path / "text.parquet"
    with pytest.raises(RuntimeError, match="killed"):
        run_text_features(items, out, cfg, "cpu", dataclasses.replace(minilm, encode=Counting(minilm.encode, 4)))
    assert len(list((tmp_path / "text.parquet.partial").glob("chunk_*.npy"))) == 2

    changed = items.assign(text=items["text"].str.replace("Movie 3 ", "Film 3 "))
    fresh = Counting(minilm.encode)
    run_text_features(changed, out, cfg, "cpu", dataclasses.replace(minilm, encode=fresh))
    assert fresh.texts == 24  # nothing reused

    with pytest.raises(RuntimeError, match="killed"):
        run_text_features(items, out, cfg, "cpu", dataclasses.replace(minilm, encode=Counting(minilm.encode, 4)))
    other_chunking = Counting(minilm.encode)
    run_text_features(items, out, {**cfg, "chunk_items": 12}, "cpu", dataclasses.replace(minilm, encode=other_chunking))
    assert other_chunking.texts == 24


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory):
    """Six images of different sizes and formats."""
    root = tmp_path_factory.mktemp("imgs")
    sources = [chelsea(), load_sample_image("china.jpg"), load_sample_image("flower.jpg")]
    paths = []
    for i in range(6):
        img = Image.fromarray(sources[i % 3]).resize((80 + 40 * i, 260 - 30 * i))
        path = root / f"{i}.{'png' if i % 2 else 'jpg'}"
        img.save(path)
        paths.append(str(path))
    return paths


def _catalogue(paths, extra_missing=True):
    n = len(paths) + int(extra_missing)
    items = _items(n)
    images = pd.DataFrame(
        {
            "item_idx": np.arange(n, dtype=np.int32),
            "path": paths + [None] * int(extra_missing),
            "status": ["ok"] * len(paths) + ["missing"] * int(extra_missing),
        }
    )
    return items, images


def test_image_extraction_resumes_after_a_kill(effnet, photo_files, tmp_path, monkeypatch, caplog):
    items, images = _catalogue(photo_files)
    cfg = {"batch_size": 2, "chunk_items": 2}
    out = tmp_path / "image.parquet"
    real = image_features._features
    calls = []

    def dies_after_two(encoder, batch):
        if len(calls) == 2:
            raise RuntimeError("killed (simulated)")
        calls.append(len(batch))
        return real(encoder, batch)

    monkeypatch.setattr(image_features, "_features", dies_after_two)
    with pytest.raises(RuntimeError, match="killed"):
        run_image_features(items, images, out, cfg, "cpu", effnet)
    assert len(list((tmp_path / "image.parquet.partial").glob("chunk_*.npy"))) == 2

    calls.clear()
    monkeypatch.setattr(image_features, "_features", lambda enc, batch: calls.append(len(batch)) or real(enc, batch))
    with caplog.at_level(logging.INFO, logger="pmsid.features.image"):
        run_image_features(items, images, out, cfg, "cpu", effnet)
    assert calls == [2]  # the last chunk only
    assert "resuming: 4 of 6 items already encoded (images" in caplog.text

    monkeypatch.setattr(image_features, "_features", real)
    run_image_features(items, images, tmp_path / "whole.parquet", cfg, "cpu", effnet)
    assert np.array_equal(read_features(out)[1], read_features(tmp_path / "whole.parquet")[1])

    meta = read_metadata(out)
    expected = {
        "backend": "timm",
        "model": "efficientnet_lite0",
        "dim": 1280,
        "dtype": "float32",
        "device": "cpu",
        "n_ok": 6,
        "n_missing": 1,
        "n_broken": 0,
        "policy": "mean",
        "n_items": 7,
    }
    assert {k: meta[k] for k in expected} == expected
    assert meta["checkpoint"].startswith("bundled:") and "pre-logits" in meta["pooling"]


def test_decode_threads_give_the_same_matrix(effnet, photo_files, tmp_path, monkeypatch):
    """decode_workers > 0 decodes a batch's images in threads, in row order: the same bits as 0."""
    items, images = _catalogue(photo_files)
    threads = []
    real = image_features._load_or_fail

    def load(path):
        threads.append(threading.current_thread().name)
        return real(path)

    monkeypatch.setattr(image_features, "_load_or_fail", load)
    run_image_features(items, images, tmp_path / "serial.parquet", {"batch_size": 4}, "cpu", effnet)
    assert set(threads) == {threading.main_thread().name}
    threads.clear()
    run_image_features(
        items, images, tmp_path / "threads.parquet", {"batch_size": 4, "decode_workers": 3}, "cpu", effnet
    )
    assert len(threads) == 6 and threading.main_thread().name not in threads
    assert np.array_equal(read_features(tmp_path / "serial.parquet")[1], read_features(tmp_path / "threads.parquet")[1])
    with pytest.raises(ValueError, match="decode_workers must be an integer >= 0"):
        run_image_features(items, images, tmp_path / "x.parquet", {"decode_workers": -1}, "cpu", effnet)


def test_bfloat16_autocast_changes_the_bits_but_not_the_features(effnet, photo_files):
    half = dataclasses.replace(effnet, dtype=torch.bfloat16)
    full, low = (
        image_features.encode_images(photo_files[:2], effnet),
        image_features.encode_images(photo_files[:2], half),
    )
    assert low.dtype == np.float32 and not np.array_equal(full, low)  # autocast really ran in bf16
    cos = (full * low).sum(1) / np.linalg.norm(full, axis=1) / np.linalg.norm(low, axis=1)
    assert cos.min() > 0.98


def test_open_clip_pipeline_random_init(photo_files, tmp_path):
    items, images = _catalogue(photo_files[:2], extra_missing=False)
    out = tmp_path / "clip.parquet"
    cfg = {"backend": "open_clip", "model": "ViT-B-32", "checkpoint": "random", "batch_size": 2, "missing": "zeros"}
    run_image_features(items, images, out, cfg, "cpu")
    item_idx, matrix = read_features(out)
    assert matrix.shape == (2, 512) and np.isfinite(matrix).all() and not np.allclose(matrix[0], matrix[1])
    meta = read_metadata(out)
    assert meta["backend"] == "open_clip" and meta["revision"] == "random" and "encode_image" in meta["pooling"]
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['size'\]"):
        run_image_features(items, images, out, {**cfg, "size": 224}, "cpu")


# --- reduction -----------------------------------------------------------------


def _features_file(path, n=50, d=16, seed=0):
    rng = np.random.default_rng(seed)
    matrix = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))  # correlated columns
    write_features(path, np.arange(n), matrix, stage="text_features", metadata={"model": "m", "n_items": n})
    return matrix.astype(np.float32)


def test_pca_reduction_matches_sklearn(tmp_path):
    matrix = _features_file(tmp_path / "in.parquet")
    reduce_features(tmp_path / "in.parquet", tmp_path / "out.parquet", dim=4, method="pca", seed=0)
    item_idx, out = read_features(tmp_path / "out.parquet")
    pca = PCA(n_components=4, whiten=False, random_state=0)
    np.testing.assert_allclose(out, pca.fit_transform(matrix), atol=1e-4)
    meta = read_metadata(tmp_path / "out.parquet")
    assert meta["method"] == "pca" and meta["dim"] == 4 and item_idx.tolist() == list(range(50))
    assert meta["explained_variance"] == pytest.approx(pca.explained_variance_ratio_.sum(), abs=1e-6)
    assert meta["source"]["model"] == "m" and meta["source"]["dim"] == 16


def test_random_projection_is_fixed_by_the_seed(tmp_path):
    matrix = _features_file(tmp_path / "in.parquet", n=60, d=32)
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        reduce_features(tmp_path / "in.parquet", tmp_path / f"{name}.parquet", dim=24, method="random", seed=seed)
    a, b, c = (read_features(tmp_path / f"{x}.parquet")[1] for x in "abc")
    assert a.shape == (60, 24) and np.array_equal(a, b) and not np.allclose(a, c)
    # Distances survive roughly (Johnson-Lindenstrauss): the ratio is near 1 on average.
    ratio = np.linalg.norm(a[1:] - a[0], axis=1) / np.linalg.norm(matrix[1:] - matrix[0], axis=1)
    assert 0.7 < np.median(ratio) < 1.3
    assert "explained_variance" not in read_metadata(tmp_path / "a.parquet")


def test_reduction_dim_errors_name_both_sizes(tmp_path):
    _features_file(tmp_path / "in.parquet", n=10, d=16)
    with pytest.raises(ValueError, match="dim 32: the input has dim 16 and 10 items"):
        reduce_features(tmp_path / "in.parquet", tmp_path / "o.parquet", dim=32)
    with pytest.raises(ValueError, match="dim 12: the input has dim 16 and 10 items"):
        reduce_features(tmp_path / "in.parquet", tmp_path / "o.parquet", dim=12, method="random")
    with pytest.raises(ValueError, match="unknown method 'umap'"):
        reduce_features(tmp_path / "in.parquet", tmp_path / "o.parquet", dim=4, method="umap")


# --- external modality ---------------------------------------------------------


def _source(path, ids, rows):
    pq.write_table(pa.table({"item_id": pa.array(ids, pa.string()), "embedding": pa.array(rows)}), path)
    return path


def test_external_features_align_by_item_id(tmp_path):
    items = _items(4)  # item_id m0..m3
    src = _source(
        tmp_path / "audio.parquet", ["m2", "zz", "m0", "m1", "m3"], [[2, 2.5], [9, 9], [0, 0.5], [1, 1.5], [3, 3.5]]
    )
    align_external_features(items, src, tmp_path / "audio_features.parquet", "audio")
    item_idx, matrix = read_features(tmp_path / "audio_features.parquet")
    assert matrix.tolist() == [[0, 0.5], [1, 1.5], [2, 2.5], [3, 3.5]]  # the unknown 'zz' row is ignored
    meta = read_metadata(tmp_path / "audio_features.parquet")
    assert meta["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert (meta["modality"], meta["dim"], meta["n_missing"], meta["policy"]) == ("audio", 2, 0, "error")
    assert meta["source"] == str(src) and meta["stage"] == "audio_features"


def test_external_missing_items_follow_the_policy(tmp_path):
    items = _items(5)
    src = _source(tmp_path / "a.parquet", ["m0", "m3", "m4"], [[1.0, 0.0], [3.0, 2.0], [5.0, 4.0]])
    with pytest.raises(ValueError, match=r"2 of 5 item\(s\) have no row in .*a.parquet, e.g. item_id \['m1', 'm2'\]"):
        align_external_features(items, src, tmp_path / "o.parquet", "audio")
    align_external_features(items, src, tmp_path / "mean.parquet", "audio", missing="mean")
    assert read_features(tmp_path / "mean.parquet")[1][[1, 2]].tolist() == [[3.0, 2.0], [3.0, 2.0]]
    align_external_features(items, src, tmp_path / "zeros.parquet", "audio", missing="zeros")
    zeros = read_features(tmp_path / "zeros.parquet")[1]
    assert zeros[[1, 2]].tolist() == [[0, 0], [0, 0]] and zeros[4].tolist() == [5.0, 4.0]
    assert read_metadata(tmp_path / "zeros.parquet")["n_missing"] == 2


@pytest.mark.parametrize(
    "ids, rows, message",
    [
        (["m0", "m0", "m1"], [[1.0], [2.0], [3.0]], r"a.parquet: 1 item_id\(s\) appear more than once, e.g. \['m0'\]"),
        (
            ["m0", "m1", "m2"],
            [[1.0, 2.0], [3.0], [4.0, 5.0]],
            r"a.parquet: embeddings have different lengths.*\['m1'\]",
        ),
        (["m0", "m1", "m2"], [[1.0], [float("nan")], [2.0]], r"a.parquet: 1 embedding\(s\) hold NaN or inf.*\['m1'\]"),
        (["m0", "m1", "m2"], [[1.0], [2.0], [float("inf")]], r"a.parquet: 1 embedding\(s\) hold NaN or inf.*\['m2'\]"),
    ],
)
def test_external_bad_sources_fail_naming_the_file(tmp_path, ids, rows, message):
    src = _source(tmp_path / "a.parquet", ids, rows)
    with pytest.raises(ValueError, match=message):
        align_external_features(_items(3), src, tmp_path / "o.parquet", "audio", missing="zeros")


def test_external_ids_must_be_strings(tmp_path):
    src = tmp_path / "a.parquet"
    pq.write_table(pa.table({"item_id": pa.array([0, 1]), "embedding": pa.array([[1.0], [2.0]])}), src)
    with pytest.raises(ValueError, match="a.parquet: column 'item_id' must hold the raw item ids as strings"):
        align_external_features(_items(2), src, tmp_path / "o.parquet", "audio")
    pq.write_table(pa.table({"id": pa.array(["m0"]), "embedding": pa.array([[1.0]])}), src)
    with pytest.raises(ValueError, match="a.parquet: lacks column 'item_id'"):
        align_external_features(_items(2), src, tmp_path / "o.parquet", "audio")
