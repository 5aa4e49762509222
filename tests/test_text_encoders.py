"""Text encoder backends: the causal-LM (LLaMA-class) path on the bundled SmolLM2-135M GGUF."""

import os

# Never let a test reach the Hugging Face hub (a download attempt without internet hangs).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from pmsid.data.contracts import read_features, read_metadata
from pmsid.features.batching import resolve_dtype
from pmsid.features.text import (
    build_text_encoder,
    encode_texts,
    pool_hidden_states,
    resolve_text_cfg,
    run_text_features,
)

SMOL_CFG = {"backend": "causal_lm", "model": "bundled:SmolLM2-135M"}
TEXTS = [
    "Toy Story (1995) Animation Children's Comedy",
    "Heat (1995)",
    "Wallace & Gromit: The Best of Aardman Animation (1996) Animation",
    "Fargo (1996) Crime Drama Thriller",
    "Air Force One (1997)",
]


@pytest.fixture(scope="module")
def smol():
    """SmolLM2-135M, loaded once (about 20 s: the GGUF is dequantized to float32)."""
    return build_text_encoder(SMOL_CFG, device="cpu")


def _items(texts):
    return pd.DataFrame(
        {
            "item_idx": np.arange(len(texts), dtype=np.int32),
            "item_id": [str(i) for i in range(len(texts))],
            "text": texts,
            "image_url": None,
        }
    )


def test_causal_lm_loads_the_base_llama_model(smol):
    assert smol.backend == "causal_lm" and type(smol.net).__name__ == "LlamaModel"  # no LM head
    assert smol.dim == 576 and smol.dtype == torch.float32 and smol.max_length == 256
    assert smol.tokenizer.padding_side == "right" and smol.tokenizer.pad_token is not None
    emb = smol.encode(TEXTS[:3])
    assert emb.shape == (3, 576) and emb.dtype == np.float32 and np.isfinite(emb).all()
    assert not np.allclose(emb[0], emb[1])


def test_mean_pooling_is_the_masked_mean_of_the_last_hidden_state(smol):
    texts = [TEXTS[1], TEXTS[2]]  # short and long: the short one is padded
    batch = smol.tokenizer(texts, padding=True, return_tensors="pt")
    mask = batch["attention_mask"]
    assert mask[0].sum() < mask[1].sum()
    with torch.inference_mode():
        hidden = smol.net(**batch).last_hidden_state.numpy()  # (2, T, 576)
    n_short = int(mask[0].sum())
    by_hand = np.stack([hidden[0, :n_short].mean(axis=0), hidden[1].mean(axis=0)])
    got = smol.encode(texts)
    np.testing.assert_allclose(got, by_hand, atol=1e-5)
    # Averaging over the padding too would give something else.
    assert np.abs(got[0] - hidden[0].mean(axis=0)).max() > 1e-3


def test_pooling_by_hand_on_a_tiny_tensor():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[1.0, 1.0], [2.0, 2.0], [6.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert pool_hidden_states(hidden, mask, "mean").tolist() == [[2.0, 3.0], [3.0, 1.0]]
    assert pool_hidden_states(hidden, mask, "last").tolist() == [[3.0, 4.0], [6.0, 0.0]]
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        pool_hidden_states(hidden, mask, "max")


def test_padding_does_not_change_an_item(smol):
    alone = smol.encode([TEXTS[1]])[0]
    with_longer = smol.encode([TEXTS[2], TEXTS[1], TEXTS[0]])[1]
    np.testing.assert_allclose(with_longer, alone, atol=1e-4)


def test_length_sorted_batches_give_the_unsorted_result(smol, tmp_path):
    batches = []

    def recording(texts):
        batches.append(list(texts))
        return smol.encode(texts)

    out = tmp_path / "smol.parquet"
    run_text_features(
        _items(TEXTS), out, {**SMOL_CFG, "batch_size": 2}, "cpu", dataclasses.replace(smol, encode=recording)
    )
    _, matrix = read_features(out)
    # Longest first (in tokens), every text once.
    token_counts = [smol.lengths(b).tolist() for b in batches]
    flat = [n for b in token_counts for n in b]
    assert flat == sorted(flat, reverse=True) and sorted(t for b in batches for t in b) == sorted(TEXTS)
    assert batches[0] == [TEXTS[2], TEXTS[0]]
    # Input order, batches of two without sorting: the same embeddings.
    unsorted = np.vstack([smol.encode(TEXTS[i : i + 2]) for i in range(0, len(TEXTS), 2)])
    np.testing.assert_allclose(matrix, unsorted, atol=1e-4)
    np.testing.assert_allclose(encode_texts(TEXTS, smol, batch_size=4), matrix, atol=1e-4)


def test_causal_lm_metadata(smol, tmp_path):
    out = tmp_path / "smol.parquet"
    run_text_features(_items(TEXTS[:3]), out, {**SMOL_CFG, "batch_size": 3}, "cpu", smol)
    meta = read_metadata(out)
    expected = {
        "model": "bundled:SmolLM2-135M",
        "revision": "bundled",
        "backend": "causal_lm",
        "dim": 576,
        "pooling": "mean",
        "max_length": 256,
        "dtype": "float32",
        "device": "cpu",
        "batch_size": 3,
        "n_items": 3,
        "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "stage": "text_features",
    }
    assert {k: meta.get(k) for k in expected} == expected
    assert not (tmp_path / "smol.parquet.partial").exists()


def test_text_cfg_defaults_and_errors():
    cfg = resolve_text_cfg({"model": "x", "max_length": None})
    assert cfg["backend"] == "sentence_transformers" and cfg["batch_size"] == 64 and cfg["dtype"] == "auto"
    assert cfg["pooling"] == "mean" and cfg["revision"] is None and cfg["max_length"] is None
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['batchsize'\]"):
        resolve_text_cfg({"batchsize": 8})
    with pytest.raises(ValueError, match="unknown backend 'llama'"):
        resolve_text_cfg({"backend": "llama"})
    with pytest.raises(ValueError, match="gguf_file needs backend causal_lm"):
        resolve_text_cfg({"gguf_file": "m.gguf"})
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        resolve_text_cfg({"batch_size": 0})
    with pytest.raises(ValueError, match="unknown bundled causal LM 'bundled:Llama-7B'"):
        build_text_encoder({"backend": "causal_lm", "model": "bundled:Llama-7B"}, "cpu")


def test_causal_lm_hub_name_fails_offline_with_the_fix():
    with pytest.raises(RuntimeError, match="not in the Hugging Face cache.*HF_HUB_OFFLINE.*local folder"):
        build_text_encoder({"backend": "causal_lm", "model": "no-such-org/no-such-llama"}, "cpu")


def test_auto_dtype():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        resolve_dtype("fp8", torch.device("cpu"))
